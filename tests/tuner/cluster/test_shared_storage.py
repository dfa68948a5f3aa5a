"""A verl sweep on a cluster needs its folder on storage every node shares (verl's actors write each
trial's metrics and checkpoints there from any node): checked before anything runs, on a real Ray
cluster of three nodes on this machine, one of which sees another folder at the same path (a node
in a mount namespace of its own, an empty tmpfs mounted over the sweeps' folder)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.gpu_cluster import GpuCluster
from tests.sweep_helpers import tuner

pytestmark = pytest.mark.slow


def _private_mount(folder: Path) -> tuple[str, ...]:
    """A command prefix that runs the rest with an empty tmpfs over `folder`, seen by it alone."""
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount -t tmpfs none "$0" && exec "$@"',
            str(folder))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    sweeps = tmp_path_factory.mktemp("shared") / "sweeps"
    sweeps.mkdir()
    probe = subprocess.run([*_private_mount(sweeps), "true"], capture_output=True, text=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip(f"a mount namespace cannot be made here (unshare --mount: {probe.stderr.strip()[:200]})")
    cluster = GpuCluster(gpus=0, cpus=1).start()
    try:
        cluster.add_node()  # shares this machine's folders
        cluster.add_node(resources='{"private_sweeps": 1}', wrap=_private_mount(sweeps))
        cluster.sweeps = sweeps
        yield cluster
    finally:
        assert cluster.stop_and_wait() == []  # no raylet, gcs_server


def test_the_nodes_that_see_another_folder_are_found(cluster, monkeypatch):
    import ray

    from tuner.cluster import unshared_nodes

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.init(address=cluster.gcs)
    try:
        private = next(n for n in ray.nodes() if n["Alive"] and "private_sweeps" in n["Resources"])
        assert sum(n["Alive"] for n in ray.nodes()) == 3
        assert unshared_nodes(cluster.sweeps) == [f"{private['NodeManagerAddress']} ({private['NodeID'][:12]})"]
        assert unshared_nodes(cluster.sweeps.parent) == []  # above the mount: one folder everywhere
        assert list(cluster.sweeps.iterdir()) == []  # the check's file is gone
    finally:
        ray.shutdown()


def test_a_verl_sweep_on_a_cluster_whose_nodes_do_not_share_its_folder_is_refused(cluster):
    spec = cluster.sweeps.parent / "verl.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "unshared", "workdir": str(cluster.sweeps),
        "trial": {"engine": "verl", "command": ["python3", "-m", "verl.trainer.main_ppo"]},
        "search_space": {"policy_lr": {"low": 1e-6, "high": 5e-5, "log": True}},
        "base": {"micro_batch_size": 4}, "budget": {"trials": 2, "iterations": 2}, "ray": {"address": cluster.gcs},
    }, sort_keys=False))
    done = tuner("run", spec, cwd=cluster.sweeps.parent, env=cluster.env(), timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert lines[-1].startswith("error: workdir: is not one storage on every node: 1 of the cluster's nodes see "
                                f"another folder at {cluster.sweeps / 'unshared'} (")
    assert f"(got '{cluster.sweeps}'); put workdir on storage every node mounts" in lines[-1]
    assert "Traceback" not in done.stderr
    assert list(cluster.sweeps.iterdir()) == []  # nothing written: no sweep folder, no study
