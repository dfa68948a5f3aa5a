"""docker/compose.yaml run without Docker: each service's own command as a local process on loopback.

`compose_file()` parses the compose file and interpolates it as `docker compose` would (`${VAR}`,
`${VAR:-default}`, `${VAR:?error}`, `$$`). `ComposeCluster` then starts, from that parsed file:
PostgreSQL (a private server made with initdb, tests/pg.py, given the postgres service's user,
password, database, init script and `-c` settings), the mlflow service's command, the ray-head service's command
and the ray-worker service's command, each adapted only where a process on this machine must differ
from a container: service names become 127.0.0.1, each service's container ports become free local
ports, 0.0.0.0 becomes 127.0.0.1, volumes become temporary folders, one MLflow worker, small CPU
counts and a private temp dir per Ray node. `stop()` ends every process it started, and each of their
descendants, by process id (never `ray stop`, which kills every Ray process on the machine).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation, applied to every string in `value`."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = (m.group(1), m.group(2), m.group(3)) if m.group(1) else (m.group(4), None, None)
        found = env.get(name)
        empty = found is None or (found == "" and op is not None and op.startswith(":"))
        if op and op.endswith("-") and empty:
            return arg
        if op and op.endswith("?") and empty:
            raise KeyError(f"compose needs {name}: {arg}")
        return found or ""

    return _VAR.sub(one, value)


def compose_file(env: dict[str, str] | None = None) -> dict[str, Any]:
    """docker/compose.yaml, parsed (YAML merge keys included) and interpolated with `env`."""
    data = yaml.safe_load(COMPOSE.read_text())
    return interpolate(data, env) if env is not None else data


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of each published port, from '127.0.0.1:5000:5000'."""
    out = []
    for entry in service.get("ports", []):
        ip, host, container = str(entry).rsplit(":", 2) if str(entry).count(":") >= 2 else ("", *str(entry).split(":"))
        out.append((ip, int(host), int(container)))
    return out


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def end_process(proc: subprocess.Popen, also: Callable[[], Iterable[int]] = tuple) -> None:
    """SIGTERM `proc` (a `ray start --block` then stops its node), wait up to 30 s, then SIGKILL whatever
    of it, or below it, or of `also()`, is left."""
    family = _descendants(proc.pid) | {proc.pid}
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    for pid in family | _descendants(proc.pid) | set(also()):
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def processes_naming(folder: Path) -> list[int]:
    """Live processes, other than this one, whose argv names `folder` (a Ray node's temp folder)."""
    mine = str(folder).encode()
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if mine in cmdline.read_bytes() and int(cmdline.parent.name) != os.getpid():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return [pid for pid in found if _alive(pid)]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


class ComposeCluster:
    """The compose services as local processes; `start()`, then `stop()` (always, in a finally)."""

    def __init__(self, worker_cpus: int = 2) -> None:
        from tests.pg import PrivatePostgres

        self.folder = Path(tempfile.mkdtemp(prefix="ptc", dir="/tmp"))  # short: Ray's socket paths are limited
        self.secrets = {"POSTGRES_PASSWORD": "pg-" + os.urandom(8).hex(), "RAY_AUTH_TOKEN": os.urandom(16).hex()}
        self.compose = compose_file(dict(self.secrets))
        self.services: dict[str, dict[str, Any]] = self.compose["services"]
        self.worker_cpus = worker_cpus
        command = [str(token) for token in self.services["postgres"].get("command", [])]
        self.pg = PrivatePostgres([value for flag, value in zip(command, command[1:], strict=False) if flag == "-c"])
        self.ports = self._port_map()
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    # -- addresses, as a client on this machine sees them --------------------------------------
    def _port_map(self) -> dict[tuple[str, int], int]:
        """(service, container port) -> local port: published ports and those other services name."""
        ports = {(name, container): free_port() for name, svc in self.services.items()
                 for _, _, container in published(svc)}
        names = "|".join(re.escape(n) for n in self.services)
        for match in re.finditer(rf"\b({names}):(\d+)\b", yaml.safe_dump(self.services)):
            ports.setdefault((match.group(1), int(match.group(2))), free_port())
        ports[("postgres", 5432)] = self.pg.port
        return ports

    def local(self, service: str, container_port: int) -> str:
        return f"127.0.0.1:{self.ports[(service, container_port)]}"

    @property
    def dashboard(self) -> str:
        return f"http://{self.local('ray-head', 8265)}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.local('mlflow', 5000)}"

    @property
    def gcs(self) -> str:
        return self.local("ray-head", 6379)

    def localize(self, text: str, own: str | None = None) -> str:
        """A compose string as a local process needs it (see the module's docstring)."""
        for (svc, port), local in self.ports.items():
            text = re.sub(rf"\b{re.escape(svc)}:{port}\b", f"127.0.0.1:{local}", text)
        text = text.replace("0.0.0.0", "127.0.0.1")
        if own is None:
            return text
        mine = {port: local for (svc, port), local in self.ports.items() if svc == own}
        flag = re.fullmatch(r"(--[\w-]+=)?(\d+)", text)
        if flag and int(flag.group(2)) in mine:
            text = f"{flag.group(1) or ''}{mine[int(flag.group(2))]}"
        for volume in self.services[own].get("volumes", []):
            source, target = str(volume).split(":")[:2]
            if text == target or text.startswith(target + "/"):
                text = str(self.folder / own / source.strip("./")) + text[len(target):]
        return text

    def client_env(self, **extra: str) -> dict[str, str]:
        """The environment of a `tuner` command on this machine: the cluster's token, no RAY_ADDRESS."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
        return {**env, "RAY_AUTH_TOKEN": self.secrets["RAY_AUTH_TOKEN"], "PYTHONUNBUFFERED": "1", **extra}

    # -- processes ---------------------------------------------------------------------------------
    def command(self, service: str) -> list[str]:
        cmd = [self.localize(str(token), own=service) for token in self.services[service]["command"]]
        if "--workers" in cmd:
            cmd[cmd.index("--workers") + 1] = "1"
        if cmd[:2] == ["ray", "start"]:
            cmd = [c for c in cmd if not (service != "ray-head" and c.startswith("--num-cpus="))]
            cmd += [f"--temp-dir={self.folder / service}", f"--dashboard-agent-listen-port={free_port()}",
                    "--object-store-memory=100000000"]
            cmd += ([f"--ray-client-server-port={free_port()}"] if "--head" in cmd
                    else [f"--num-cpus={self.worker_cpus}"])
        return [shutil.which(cmd[0]) or cmd[0], *cmd[1:]]

    def _spawn(self, service: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update({k: self.localize(str(v)) for k, v in (self.services[service].get("environment") or {}).items()})
        for volume in self.services[service].get("volumes", []):
            (self.folder / service / str(volume).split(":")[0].strip("./")).mkdir(parents=True, exist_ok=True)
        log = self.folder / f"{service}.log"
        proc = subprocess.Popen(self.command(service), env=env, cwd=self.folder, stdout=log.open("w"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((service, proc, log))
        return proc

    def _postgres(self) -> None:
        """The postgres image's first start: POSTGRES_USER (a superuser), POSTGRES_DB, init scripts."""
        env = self.services["postgres"]["environment"]
        user, password, db = env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]
        self.pg.start()
        psql = [str(self.pg_bin("psql")), "-h", str(self.pg.folder), "-p", str(self.pg.port), "-v", "ON_ERROR_STOP=1"]
        self.pg._as_postgres(*psql, "-d", "postgres", "-c", f"CREATE ROLE {user} LOGIN SUPERUSER PASSWORD '{password}'")
        self.pg._as_postgres(*psql, "-d", "postgres", "-c", f"CREATE DATABASE {db} OWNER {user}")
        for volume in self.services["postgres"].get("volumes", []):
            source, target = str(volume).split(":")[:2]
            if target.startswith("/docker-entrypoint-initdb.d/"):
                script = self.pg.folder / Path(target).name
                shutil.copy(COMPOSE.parent / source, script)
                shutil.chown(script, "postgres")
                self.pg._as_postgres(*psql, "-U", user, "-d", db, "-f", str(script))

    @staticmethod
    def pg_bin(name: str) -> Path:
        from tests.pg import BIN

        return BIN / name

    def storage_url(self, db: str) -> str:
        env = self.services["postgres"]["environment"]
        return (f"postgresql+psycopg://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}"
                f"@{self.local('postgres', 5432)}/{db}")

    def start(self) -> ComposeCluster:
        self._postgres()
        proc = self._spawn("mlflow")
        _wait_http(f"{self.tracking_uri}/health", 120, proc, self.folder / "mlflow.log")
        proc = self._spawn("ray-head")
        auth = {"Authorization": f"Bearer {self.secrets['RAY_AUTH_TOKEN']}"}
        _wait_http(f"{self.dashboard}/api/version", 120, proc, self.folder / "ray-head.log", auth)
        proc = self._spawn("ray-worker")
        self._wait_nodes(2, proc, auth)
        return self

    def _wait_nodes(self, count: int, proc: subprocess.Popen, auth: dict[str, str], timeout: float = 120) -> None:
        import json

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"ray worker exited:\n{(self.folder / 'ray-worker.log').read_text()[-3000:]}")
            try:
                req = urllib.request.Request(f"{self.dashboard}/api/v0/nodes?detail=false", headers=auth)
                nodes = json.loads(urllib.request.urlopen(req, timeout=5).read())["data"]["result"]["result"]
                if sum(n.get("state") == "ALIVE" for n in nodes) >= count:
                    return
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(1.0)
        raise RuntimeError(f"the Ray cluster did not reach {count} nodes in {timeout:.0f} s")

    def stop(self) -> None:
        """SIGTERM each process started here (`ray start --block` then stops its node), then SIGKILL
        whatever of it, or below it, is left."""
        for _, proc, _ in reversed(self.procs):
            end_process(proc)
        for stray in self._strays():  # Ray processes of this cluster whose parent died first
            os.kill(stray, signal.SIGKILL)
        self.pg.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _strays(self) -> list[int]:
        return processes_naming(self.folder)
