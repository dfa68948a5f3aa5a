"""The GPUs an engine with a Ray of its own reserves for one trial, read from trial.command: its roles'
(`Layout`, which a local trial's GPUs must equal), the shape of its placement groups on a cluster
(`Placement`), and whether a cluster's nodes can ever hold it (`fits`).

verl 0.9.1 (`RayResourcePool.get_placement_groups`, verl/single_controller/ray/base.py) makes one
STRICT_PACK placement group per node, `trainer.nnodes` of them, each of `trainer.n_gpus_per_node`
one-GPU bundles, shared by all its roles. OpenRLHF 0.11.2 (`RayActorGroup`, openrlhf/trainer/ray/launcher.py;
cli/train_ppo_ray.py; trainer/ray/vllm_engine.py) makes a PACK group for each role that does not share
another's GPUs and for its vLLM engines: a trial asks for one PACK group of them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PACK", "STRICT_PACK", "Layout", "Placement", "fits", "whole"]

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

    @classmethod
    def of(cls, layout: Layout, strategy: str) -> Placement:
        """The groups a trainer with this GPU layout asks for: STRICT_PACK, one per node of the GPUs per
        node (its roles share them: verl); PACK, one of them all (a group per role: OpenRLHF)."""
        if strategy == PACK:
            return cls(1, layout.gpus, PACK, layout.roles)
        return cls(layout.nodes, layout.gpus // layout.nodes, STRICT_PACK, layout.roles)

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


@dataclass(frozen=True)
class Layout:
    """The GPUs a trainer with a Ray of its own reserves for one trial, as trial.command sets it up."""

    gpus: int  # in all, over every role that does not share another's
    nodes: int  # the most nodes one role spans
    roles: str  # how they add up, as trial.command gives them
    fix: str  # how to make them `{gpus}`
    error: str = ""  # a layout the trainer refuses at start-up, and why ...
    error_fix: str = ""  # ... and how to mend it


def whole(value: str | None, default: int) -> int | None:
    """A count trial.command gives (its default where it gives none); None where it is no whole number."""
    if value is None:
        return default
    return int(value) if value.strip().isdigit() else None
