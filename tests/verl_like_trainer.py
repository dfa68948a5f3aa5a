"""A trainer that takes verl's GPUs as verl 0.9.1's main_ppo does, for the admission tests
(tests/tuner/cluster/test_admission.py); none of verl's training stack:

    python verl_like_trainer.py [verl's hydra overrides...]

It joins the Ray cluster that $RAY_ADDRESS names, checks the free GPUs as verl's
`ResourcePoolManager._check_resource_available` does (too few: a ValueError, exit code 1), makes one
STRICT_PACK placement group per node (`trainer.nnodes`) of `trainer.n_gpus_per_node` one-GPU bundles,
as `RayResourcePool.get_placement_groups` does, and waits for them with no timeout (`ray.get(pg.ready())`).
It then logs `trainer.total_training_steps` steps through verl's file-logger format to the path the
`VERL_FILE_LOGGER_PATH` override names, one each $STEP_SECONDS, and exits (Ray frees its groups with its
job). $HOLD_LOG: a file it appends "start END_TIME" spans to, the times it held its GPUs. $EXTRA_GPUS:
a second STRICT_PACK group of that many GPUs, requested after the first (a role trial.command does not
count).
"""

from __future__ import annotations

import json
import os
import sys
import time

import ray
from ray.util.placement_group import placement_group


def overrides(argv: list[str]) -> dict[str, str]:
    """key=value Hydra overrides, keys without '+', values unquoted."""
    return {k.lstrip("+"): v.strip("'\"") for k, v in (a.split("=", 1) for a in argv if "=" in a)}


def main(argv: list[str]) -> None:
    args = overrides(argv)
    per_node, nodes = int(args.get("trainer.n_gpus_per_node", 8)), int(args.get("trainer.nnodes", 1))
    steps = int(args["trainer.total_training_steps"])
    lr = float(args["actor_rollout_ref.actor.optim.lr"])
    metrics = args["ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH"]
    ray.init()  # RAY_ADDRESS: the cluster
    free = sum(r.get("GPU", 0) for r in ray._private.state.available_resources_per_node().values())
    if free < per_node * nodes:
        raise ValueError(f"Total available GPUs {free} is less than total desired GPUs {per_node * nodes}")
    groups = [placement_group([{"GPU": 1} for _ in range(per_node)], strategy="STRICT_PACK",
                              name=f"fake_verl_group_{per_node}:{i}") for i in range(nodes)]
    ray.get([g.ready() for g in groups])
    if os.environ.get("EXTRA_GPUS"):
        extra = placement_group([{"GPU": 1} for _ in range(int(os.environ["EXTRA_GPUS"]))], strategy="STRICT_PACK",
                                name="fake_verl_extra")
        ray.get(extra.ready())
    started = time.time()
    with open(metrics, "a") as out:
        for step in range(1, steps + 1):
            time.sleep(float(os.environ.get("STEP_SECONDS", "0.5")))
            data = {"actor/reward_kl_penalty": lr * 1e3 * step, "response_length/mean": 10.0,
                    "critic/score/mean": 0.1 * step}
            out.write(json.dumps({"step": step, "data": data}) + "\n")
            out.flush()
    if os.environ.get("HOLD_LOG"):
        with open(os.environ["HOLD_LOG"], "a") as log:
            log.write(f"{started} {time.time()}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
