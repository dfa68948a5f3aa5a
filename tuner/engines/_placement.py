"""The GPUs an engine with a Ray of its own reserves on a cluster, read from trial.command: its placement
groups' shape (`Placement`), and whether a cluster's nodes can ever hold it (`fits`).

verl 0.9.1 (`RayResourcePool.get_placement_groups`, verl/single_controller/ray/base.py) makes one
STRICT_PACK placement group per node, `trainer.nnodes` of them, each of `trainer.n_gpus_per_node`
one-GPU bundles. OpenRLHF 0.11.2 (`RayActorGroup`, openrlhf/trainer/ray/launcher.py) makes one PACK
group of `--actor.num_nodes` x `--actor.num_gpus_per_node` one-GPU bundles for its actor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PACK", "STRICT_PACK", "Placement", "fits"]

STRICT_PACK = "STRICT_PACK"  # each group's bundles on one node
PACK = "PACK"  # a group's bundles on as few nodes as Ray can


@dataclass(frozen=True)
class Placement:
    """`groups` placement groups of `per_group` one-GPU bundles each, placed with `strategy`, as the
    trainer asks Ray for them; `source`: the arguments they were read from, as the user wrote them."""

    groups: int
    per_group: int
    strategy: str
    source: str

    @property
    def gpus(self) -> int:
        return self.groups * self.per_group

    def bundles(self) -> list[list[dict[str, float]]]:
        """Each group's bundles, one GPU each (the trainer's own bundles also hold CPUs; GPUs are what
        trials wait for)."""
        return [[{"GPU": 1.0} for _ in range(self.per_group)] for _ in range(self.groups)]

    def describe(self) -> str:
        """'6 GPUs on one node (trainer.n_gpus_per_node=6 x trainer.nnodes=1)'."""
        if self.strategy == STRICT_PACK:
            where = "on one node" if self.groups == 1 else f"on each of {self.groups} nodes"
            return f"{self.per_group} GPUs {where} ({self.source})"
        return f"{self.gpus} GPUs ({self.source})"


def fits(placement: Placement, node_gpus: Sequence[float]) -> bool:
    """Whether nodes with these GPU counts (all of each node's GPUs, or those free now) hold every group of
    `placement`. STRICT_PACK: each group on one node, first fit from the largest node; PACK: any nodes."""
    if placement.strategy != STRICT_PACK:
        return sum(int(g) for g in node_gpus) >= placement.gpus
    groups = sum(int(g) // placement.per_group for g in node_gpus) if placement.per_group else placement.groups
    return groups >= placement.groups
