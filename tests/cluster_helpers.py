"""Shared by the cluster tests: the compose cluster fixture's prerequisites, fast cluster specs, `tuner`."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compose_cluster import ComposeCluster

DOCKER = Path(__file__).resolve().parents[1] / "docker"
FAST_BASE = {"response_length": 12, "eval_interval": 2, "num_eval_prompts": 32}


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run the compose services as processes."""
    from tests.pg import available

    missing = [] if available() else ["PostgreSQL server binaries (apt-get install postgresql)"]
    if importlib.util.find_spec("aiohttp_cors") is None or importlib.util.find_spec("opencensus") is None:
        missing.append("Ray's dashboard and jobs API (pip install 'ray[default]')")
    if shutil.which("mlflow") is None or shutil.which("ray") is None:
        missing.append("the mlflow and ray commands")
    return missing


def start_cluster(worker_cpus: int = 2) -> ComposeCluster:
    """A started ComposeCluster; skipped where this machine cannot run one (failed in CI)."""
    missing = missing_prerequisites()
    if missing:
        message = "the compose cluster needs " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    cluster = ComposeCluster(worker_cpus=worker_cpus)
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()
        raise


def cluster_spec(cluster: ComposeCluster, folder: Path, name: str, **overrides: Any) -> Path:
    """docker/sweep-demo.yaml for this cluster: its service addresses made local, shrunk to run in
    seconds, and written with its reward file beside it (so `tuner submit` takes that along)."""
    data = yaml.safe_load((DOCKER / "sweep-demo.yaml").read_text())
    data["name"] = name
    data["storage"] = cluster.localize(data["storage"])
    data["mlflow"]["tracking_uri"] = cluster.localize(data["mlflow"]["tracking_uri"])
    data["base"].update(FAST_BASE)
    data["budget"] = {"trials": 4, "iterations": 4, "promote": {"top_k": 0}}
    data["scheduler"] = {"type": "none"}
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(DOCKER / "demo_reward.py", folder / "demo_reward.py")
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tuner(*args: Any, env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuner.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def submit(cluster: ComposeCluster, spec: Path, **env: str) -> str:
    """`tuner submit` to the cluster; returns the job id it printed."""
    done = tuner("submit", spec, "--address", cluster.dashboard, env=cluster.client_env(**env), cwd=spec.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def wait_for(predicate: Any, timeout: float, what: str, step: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
