"""A one-node Ray cluster that declares GPUs it does not have (`ray start --head --num-gpus 8`), for
tests of what reserves GPUs on a cluster: started on free ports in a short temp folder of its own;
`add_node()` adds another node on this machine; `stop()` ends their processes by id and the test checks
none of them survives."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.compose_cluster import end_process, processes_naming
from tests.conftest import free_port


class GpuCluster:
    def __init__(self, gpus: int = 8, cpus: int = 2):
        self.folder = Path(tempfile.mkdtemp(prefix="ptg", dir="/tmp"))  # Ray's socket paths stay short
        self.port, self.gpus = free_port(), gpus
        self.gcs = f"127.0.0.1:{self.port}"
        self.argv = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                     f"--num-gpus={gpus}", f"--num-cpus={cpus}", f"--port={self.port}",
                     "--node-ip-address=127.0.0.1", f"--temp-dir={self.folder}", "--include-dashboard=false",
                     f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                     "--object-store-memory=100000000"]
        self.proc: subprocess.Popen | None = None
        self.nodes: list[subprocess.Popen] = []  # add_node's

    def env(self, **extra: str) -> dict[str, str]:
        """An environment for the cluster and its clients: no token (a test's process joins it in-process
        too), no other Ray's address."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
        return {**env, "RAY_AUTH_MODE": "disabled", **extra}

    def start(self, timeout: float = 120) -> GpuCluster:
        log = self.folder / "head.log"
        self.proc = subprocess.Popen(self.argv, env=self.env(), stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            done = subprocess.run([self.argv[0], "status", f"--address={self.gcs}"], env=self.env(),
                                  capture_output=True, text=True)
            if done.returncode == 0 and ("GPU" if self.gpus else "CPU") in done.stdout:
                return self
            time.sleep(1.0)
        raise RuntimeError(f"the cluster did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")

    def add_node(self, cpus: int = 1, resources: str = "", wrap: tuple[str, ...] = (), timeout: float = 120) -> None:
        """Another node of this cluster on this machine (`ray start --address`), its argv behind `wrap` (a
        command that runs the rest, e.g. in a mount namespace of its own); waits until it is alive."""
        import json

        argv = [self.argv[0], "start", f"--address={self.gcs}", "--block", f"--num-cpus={cpus}", "--num-gpus=0",
                "--node-ip-address=127.0.0.1", f"--temp-dir={self.folder}",
                f"--dashboard-agent-listen-port={free_port()}", "--object-store-memory=100000000",
                *([f"--resources={resources}"] if resources else [])]
        log = self.folder / f"node-{len(self.nodes)}.log"
        self.nodes.append(subprocess.Popen([*wrap, *argv], env=self.env(), stdout=log.open("w"),
                                           stderr=subprocess.STDOUT, start_new_session=True))
        count = len(self.nodes) + 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nodes[-1].poll() is not None:
                raise RuntimeError(f"ray start exited with {self.nodes[-1].returncode}:\n{log.read_text()[-3000:]}")
            done = subprocess.run([sys.executable, "-c", "import ray, json; ray.init(); "
                                   "print(json.dumps(sum(n['Alive'] for n in ray.nodes())))"],
                                  env=self.env(RAY_ADDRESS=self.gcs), capture_output=True, text=True)
            if done.returncode == 0 and json.loads(done.stdout.strip().splitlines()[-1]) >= count:
                return
            time.sleep(1.0)
        raise RuntimeError(f"the node did not join within {timeout:.0f} s:\n{log.read_text()[-3000:]}")

    def processes(self) -> list[int]:
        """Live processes whose argv names this cluster's folder (its raylet, gcs_server, workers)."""
        return processes_naming(self.folder)

    def stop_and_wait(self, timeout: float = 10) -> list[bytes]:
        """stop(), then the command lines of this cluster's processes still alive after `timeout` s."""
        self.stop()
        deadline = time.monotonic() + timeout
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        return [Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in self.processes()]

    def stop(self) -> None:
        """SIGTERM to `ray start --block` (it stops its node), then SIGKILL what is left of it."""
        for proc in [*self.nodes, *([self.proc] if self.proc is not None else [])]:
            end_process(proc, self.processes)
        shutil.rmtree(self.folder, ignore_errors=True)
