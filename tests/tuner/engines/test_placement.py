"""The GPUs a trainer with a Ray of its own reserves on a cluster, read from trial.command (`Engine.placement`),
and whether nodes can hold them (`fits`)."""

from __future__ import annotations

import pytest

from tuner.engines import PACK, STRICT_PACK, Placement, engine, fits


@pytest.mark.parametrize(("command", "expected"), [
    ([], Placement(1, 8, STRICT_PACK, "trainer.n_gpus_per_node=8 x trainer.nnodes=1")),  # verl's defaults
    (["trainer.n_gpus_per_node=6"], Placement(1, 6, STRICT_PACK, "trainer.n_gpus_per_node=6 x trainer.nnodes=1")),
    (["trainer.nnodes=2", "trainer.n_gpus_per_node=4"],
     Placement(2, 4, STRICT_PACK, "trainer.n_gpus_per_node=4 x trainer.nnodes=2")),
    (["trainer.n_gpus_per_node={x}"], None),  # not a number before the trial's values are known
])
def test_verl_asks_one_strict_pack_group_per_node(command, expected):
    assert engine("verl").placement(["python", "-m", "verl.trainer.main_ppo", *command]) == expected


def test_openrlhf_asks_one_pack_group_of_every_role_that_does_not_share_the_actors_gpus():
    placement = engine("openrlhf").placement(["python", "--actor.num_nodes", "2", "--actor.num_gpus_per_node", "4"])
    assert placement == Placement(1, 24, PACK, "actor 2x4 + ref 1x8 + reward 1x8")  # OpenRLHF's defaults: 1 x 8
    assert placement.describe() == "24 GPUs (actor 2x4 + ref 1x8 + reward 1x8)"
    colocated = ["python", "--train.colocate_all", "--actor.num_gpus_per_node", "4", "--ref.num_gpus_per_node", "4",
                 "--critic.model_name_or_path", "c", "--vllm.num_engines", "2", "--vllm.tensor_parallel_size", "2"]
    assert engine("openrlhf").placement(colocated).gpus == 4  # vLLM and every role on the actor's GPUs


def test_engines_without_a_ray_of_their_own_reserve_nothing():
    assert engine("command").placement(["python", "train.py"]) is None
    assert engine("trl").placement(["python"]) is None


@pytest.mark.parametrize(("placement", "nodes", "expected"), [
    (Placement(1, 6, STRICT_PACK, ""), [8], True),
    (Placement(1, 16, STRICT_PACK, ""), [8, 8], False),  # 16 GPUs exist, but not on one node
    (Placement(2, 4, STRICT_PACK, ""), [8], True),  # both groups on one 8-GPU node
    (Placement(2, 6, STRICT_PACK, ""), [8, 4], False),  # fragmented: 12 free, one group of 6 fits
    (Placement(1, 12, PACK, ""), [8, 4], True),
    (Placement(1, 12, PACK, ""), [8, 3.5], False),  # a fraction of a GPU holds no bundle
])
def test_fits(placement, nodes, expected):
    assert fits(placement, nodes) is expected


def test_describe_says_where():
    assert Placement(2, 4, STRICT_PACK, "a").describe() == "4 GPUs on each of 2 nodes (a)"
    assert Placement(2, 4, STRICT_PACK, "a").bundles() == [[{"GPU": 1.0}] * 4] * 2
