"""Small sweep specs on the demo model, a runner for `tuner` in a subprocess, and a sweep's MLflow
runs by kind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

FAST_BASE = {"response_length": 12, "eval_interval": 2, "device": "cpu", "num_threads": 1,
             "rollout_batch_size": 32, "num_eval_prompts": 32}


def write_spec(folder: Path, name: str, **overrides) -> Path:
    """A grid over policy_lr x kl_coef: the 3e-3 column drives KL past the limit for certain."""
    spec = {
        "name": name,
        "trial": {"model": "demo", "reward": "trials.demo:reward", "prompts": "demo"},
        "base": {**FAST_BASE, "ppo_epochs": 2, "mini_batch_size": 16},
        "search_space": {"policy_lr": {"choices": [3.0e-5, 3.0e-4, 3.0e-3]},
                         "kl_coef": {"choices": [0.05, 0.005]}},
        "kl_limit": 15,
        # promotion: tests/tuner/sweep/test_promotion.py
        "budget": {"trials": 6, "iterations": 6, "promote": {"top_k": 0}},
        "scheduler": {"type": "asha", "grace_period": 2},
        "sampler": {"type": "grid"},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
        "ray": {"num_cpus": 2},
        "workdir": str(folder / "sweeps"),
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def unrun_sweep(folder: Path, name: str) -> Path:
    """A sweep folder under folder/sweeps with its spec and an empty study, as `tuner run` leaves it before
    its first trial (for the commands that read a sweep, without running one); `folder`."""
    from tuner.spec import load_spec
    from tuner.sweep import open_study

    spec = load_spec(write_spec(folder, name))
    spec.sweep_dir().mkdir(parents=True)
    spec.spec_file().write_text(yaml.safe_dump(spec.resolved(), sort_keys=False))
    open_study(spec, create=True)
    return folder


def tuner(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None, **popen) -> subprocess.CompletedProcess:
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "tuner.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, **popen)


def start_tuner(*args: str, cwd: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "tuner.cli", *map(str, args)], cwd=cwd, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_while_running(predicate: Callable[[], Any], seconds: float, proc: subprocess.Popen, log: Path) -> Any:
    """The first truthy value of `predicate()`, polled while the sweep `proc` runs (its log on failure)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out; log:\n{log.read_text()[-3000:]}")


def stop_sweep(proc: subprocess.Popen, log: Path, ready: Callable[[], bool], sig: int = signal.SIGINT,
               within: float = 300, settle: float = 0.0) -> tuple[int, str, float]:
    """Once `ready()` holds (checked while the sweep `proc` runs, for `within` seconds) and `settle` seconds
    later, send `sig` as Ctrl-C or an orchestrator does: the exit code, the log, and the seconds to exit."""
    deadline = time.time() + within
    while not ready() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None and ready(), log.read_text()[-3000:]
    time.sleep(settle)
    sent = time.monotonic()
    proc.send_signal(sig)
    code = proc.wait(timeout=300)
    return code, log.read_text(), time.monotonic() - sent


def sweep_runs(client: Any, experiment: str, kind: str | None = None) -> list[Any]:
    """The MLflow runs of `experiment` (newest first, as MLflow lists them) through the MlflowClient
    `client`: all of them, or those whose `ppo_tuner.kind` tag is `kind` ("sweep": the parent run,
    "trial": a search trial's, "promotion": a promoted config's). The tag's name is spelled out, not
    imported from the product, so that a renamed tag (a changed record) fails the tests."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    where = f"tags.`ppo_tuner.kind` = '{kind}'" if kind is not None else ""
    return client.search_runs([experiment_id], where, max_results=1000)
