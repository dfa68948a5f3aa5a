"""Stand-ins for verl's and OpenRLHF's PPO that log through those releases' own code, for the engine
checks (tests/tuner/trial/test_engines_real.py). Run by .engines/venv-checks' python:

    python engine_trainers.py verl SRC [hydra overrides...]       # SRC: the unpacked verl 0.9.1
    python engine_trainers.py openrlhf SRC [flags...]             # SRC: the unpacked openrlhf 0.11.2
    python engine_trainers.py compose SRC [hydra overrides...]    # verl's config composed, the
                                                                  # overrides' values as JSON

verl: the arguments are composed with verl's own Hydra config (verl/trainer/config/ppo_trainer.yaml) and
the metrics logged by verl's own `Tracking` with the `file` backend (verl/utils/tracking.py), at the
path $VERL_FILE_LOGGER_PATH names; with $START_RAY set, it first starts a Ray as main_ppo does (ray.init()),
or joins the cluster $RAY_ADDRESS names and starts an actor there, as main_ppo's TaskRunner.
OpenRLHF: the flags are parsed by its own argument parser (the
argparse statements of openrlhf/cli/train_ppo_ray.py, run without its heavy imports) and each step is
logged by its own logger (openrlhf/utils/logging_utils.py) with its own per-step line (the f-string of
openrlhf/trainer/ppo_trainer.py). The per-token KL to the reference grows with the learning rate, as in
tests/external_trainer.py; `actor/ppo_kl` (the policy against its rollout) is logged far above it.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import importlib.util
import json
import os
import sys
import time
from pathlib import Path


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def verl_config(src: Path, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(src / "verl" / "trainer" / "config"), version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def openrlhf_parser(src: Path) -> argparse.ArgumentParser:
    """train_ppo_ray.py's parser: the statements of its `__main__` block before `parse_args`."""
    tree = ast.parse((src / "openrlhf" / "cli" / "train_ppo_ray.py").read_text())
    main = next(n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test))
    body = []
    for stmt in main.body:
        if "parse_args" in ast.unparse(stmt):
            break
        body.append(stmt)
    scope = {"argparse": argparse, "datetime": datetime.datetime, "os": os}
    exec(compile(ast.Module(body=body, type_ignores=[]), "train_ppo_ray.py", "exec"), scope)
    return scope["parser"]


STEP_SECONDS = float(os.environ.get("STEP_SECONDS", "0.05"))  # a training step's wall time


def kl_per_token(lr: float, step: int) -> float:
    return lr * 1e3 * step


class TaskRunner:
    """As verl's main_ppo runs its training loop: in an actor of the Ray it started or joined."""

    def pid(self) -> int:
        return os.getpid()


def verl(src: Path, argv: list[str]) -> None:
    from omegaconf import OmegaConf

    config = verl_config(src, argv)
    print(f"overrides {json.dumps(argv)}", flush=True)
    lr, steps = OmegaConf.select(config, "actor_rollout_ref.actor.optim.lr"), config.trainer.total_training_steps
    if os.environ.get("START_RAY"):  # as main_ppo does: ray.init() unless a Ray is running in this process
        import ray

        if os.environ.get("RAY_ADDRESS", "local") == "local":
            ray.init(num_cpus=1, include_dashboard=False)
        else:  # a cluster: joined as a driver of its own, which runs its TaskRunner actor there
            ray.init()
            runner = ray.remote(num_cpus=1)(TaskRunner).remote()
            print(f"task runner pid {ray.get(runner.pid.remote())}", flush=True)
        print(f"ray session {ray.get_runtime_context().gcs_address} in {os.environ.get('RAY_TMPDIR')} "
              f"job {ray.get_runtime_context().get_job_id()}", flush=True)
    tracking = load(src / "verl" / "utils" / "tracking.py", "verl_tracking")
    backends = [b for b in config.trainer.logger if b == "file"]  # console needs verl, the user's their packages
    logger = tracking.Tracking("ppo", "trial", default_backend=backends)
    logger.log({"val-core/demo/reward/mean@1": 0.1}, step=0)  # validation before training: no KL
    for step in range(1, steps + 1):
        time.sleep(STEP_SECONDS)
        logger.log({"actor/reward_kl_penalty": kl_per_token(lr, step), "actor/ppo_kl": 100.0,
                    "response_length/mean": 10.0, "critic/score/mean": 0.1 * step, "actor/pg_loss": 1.0 / step,
                    "timing_s/step": 0.05, "t": time.time()}, step=step)
    logger.finish()


def openrlhf(src: Path, argv: list[str]) -> None:
    args = vars(openrlhf_parser(src).parse_args(argv))
    lr, steps = args["actor.adam.lr"], args["data.max_samples"] // args["rollout.batch_size"]
    logging_utils = load(src / "openrlhf" / "utils" / "logging_utils.py", "openrlhf_logging")
    logger = logging_utils.init_logger("openrlhf.trainer.ppo_trainer")
    trainer = (src / "openrlhf" / "trainer" / "ppo_trainer.py").read_text()
    line = next(node for node in ast.walk(ast.parse(trainer))
                if isinstance(node, ast.JoinedStr) and "Global step" in ast.unparse(node))
    for global_step in range(1, steps + 1):
        time.sleep(STEP_SECONDS)
        log_status = {"policy_loss": 1.0 / global_step, "kl": kl_per_token(lr, global_step), "response_length": 10.0,
                      "rollout/reward_mean": 0.1 * global_step, "rollout/response_length_mean": 10.0,
                      "timing/step_total": 0.05, "t": time.time()}
        logger.info(eval(compile(ast.Expression(line), "ppo_trainer.py", "eval"), {"global_step": global_step,
                                                                                      "log_status": log_status}))


def compose(src: Path, argv: list[str]) -> None:
    from omegaconf import OmegaConf

    config = verl_config(src, argv)
    keys = [a.split("=", 1)[0].lstrip("+") for a in argv]
    print(json.dumps({k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
                      for k in keys for v in [OmegaConf.select(config, k)]}))


if __name__ == "__main__":
    {"verl": verl, "openrlhf": openrlhf, "compose": compose}[sys.argv[1]](Path(sys.argv[2]), sys.argv[3:])
