"""What a sweep takes to the cluster: the spec, the files it names beside it, the environment.

The Ray job's working_dir is a fresh folder holding the spec file as written (comments and
`${NAME}` references kept) and each file of its `trial` section that is given relative to it (a
reward .py, prompt files, a small local model), at the same relative place, so that the spec
resolves them on the cluster as it does here. Absolute paths, module names and hub names are left
to the cluster. The job's env_vars carry the variables that the storage and tracking URLs refer
to; their values are never printed.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trials import REWARD_FIELDS, ConfigError, Problem, TunerError, is_builtin_model, parse_reward
from tuner.spec import TRIAL_FIELDS, CompiledSpec, load_spec

__all__ = ["RUN_ADDRESS", "STOP_ENV", "JobPackage", "package_sweep"]

RUN_ADDRESS = "auto"  # the job's driver runs on a cluster node and joins that cluster
_MAX_BYTES = 100 * 2**20  # the Ray dashboard accepts working_dir uploads up to 100 MiB
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# `tuner cancel`: the job's driver gets SIGINT, as from Ctrl-C, and a minute to stop its trials and
# record them interrupted before Ray kills it (Ray's defaults: SIGTERM, then SIGKILL after 3 s).
STOP_ENV = {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "60"}
# the job's log is read later, in a terminal: unbuffered, tables at full width, no MLflow link per run
_LOG_ENV = {"PYTHONUNBUFFERED": "1", "COLUMNS": "140", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


@dataclass
class JobPackage:
    """A sweep made ready for submission: its working_dir, its spec, and the job's environment."""

    folder: Path  # the working_dir to upload
    spec_file: str  # the spec's file name in it
    spec: CompiledSpec
    files: list[str] = field(default_factory=list)  # files copied beside the spec, relative to it
    env_vars: dict[str, str] = field(default_factory=dict)  # the job's environment (values are secrets)
    unset: list[str] = field(default_factory=list)  # variables the URLs refer to that are not set here

    def secrets(self) -> list[str]:
        """The values of the variables passed for the URLs and by --env: never to be shown."""
        return [v for k, v in self.env_vars.items() if k not in STOP_ENV and k not in _LOG_ENV]

    def runtime_env(self) -> dict[str, Any]:
        return {"working_dir": str(self.folder), "env_vars": dict(self.env_vars)}

    def entrypoint(self) -> str:
        """`tuner run` on the cluster, joining it (the job's driver runs on the head node)."""
        import shlex

        return f"tuner run {shlex.quote(self.spec_file)} --address {RUN_ADDRESS}"


def package_sweep(spec_path: str | Path, folder: Path, env: list[str] | None = None) -> JobPackage:
    """Check the spec as it will run (joining the cluster, whatever its ray.address), then fill `folder`
    with it and its relative files; `env` adds NAME or NAME=VALUE."""
    spec_path = Path(spec_path)
    spec = load_spec(spec_path, ray_address=RUN_ADDRESS)  # every problem at once, before anything is sent
    raw = yaml.safe_load(spec_path.read_text(encoding="utf-8")) or {}
    trial = raw.get("trial") if isinstance(raw.get("trial"), dict) else {}
    base = spec_path.parent.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(spec_path, folder / spec_path.name)
    package = JobPackage(folder=folder, spec_file=spec_path.name, spec=spec)
    for engine_field, key in TRIAL_FIELDS.items():  # the trial section's file and folder values
        relative = _relative_path(engine_field, key, trial.get(key), base)
        if relative is not None:
            _copy(base / relative, folder / relative)
            package.files.append(relative.as_posix())
    _check_size(folder)
    package.env_vars, package.unset = _job_env(spec, env or [])
    return package


def _relative_path(engine_field: str, key: str, value: Any, base: Path) -> Path | None:
    """The file part of a trial value, where it is a relative path that exists beside the spec."""
    if not isinstance(value, str) or value.strip() in ("", "demo") or is_builtin_model(value.strip()):
        return None
    text = value.strip()
    if engine_field in REWARD_FIELDS:
        try:
            text = parse_reward(text).local_path
        except TunerError:
            return None  # the spec's checks report it
        if text is None:
            return None  # module:function
    path = Path(text).expanduser()
    if path.is_absolute() or not (base / path).exists():
        return None  # a path on the cluster, a hub name, or a module
    try:
        return (base / path).resolve().relative_to(base)
    except ValueError:
        raise ConfigError([Problem(
            f"trial.{key}", value,
            "lies outside the spec's folder, so it cannot travel with the job",
            "move it beside the spec (or below it),"
            " or give a path that every cluster node can read",
        )]) from None


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target)


def _check_size(folder: Path) -> None:
    sizes = {p: p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    total = sum(sizes.values())
    if total > _MAX_BYTES:
        biggest = max(sizes, key=sizes.__getitem__).relative_to(folder)
        raise ConfigError([Problem(
            "trial", str(biggest),
            f"the files beside the spec come to {total / 2**20:.0f} MiB, "
            f"more than the {_MAX_BYTES // 2**20} MiB a Ray job can take along",
            "put large models on storage every cluster node can read and give their absolute paths",
        )])


def _job_env(spec: CompiledSpec, extra: list[str]) -> tuple[dict[str, str], list[str]]:
    """The job's env_vars: stop handling, the URLs' variables that are set here, and --env entries."""
    env = {**_LOG_ENV, **STOP_ENV}
    unset = []
    for name in spec.env_references():
        if name in os.environ:
            env[name] = os.environ[name]
        else:
            unset.append(name)
    for item in extra:
        name, sep, value = item.partition("=")
        if not _ENV_NAME.match(name):
            raise ConfigError([Problem("--env", name, "is not an environment variable name",
                                       "write --env NAME (its value here) or --env NAME=VALUE")])
        if not sep and name not in os.environ:
            raise ConfigError([Problem("--env", name, "is not set here",
                                       f"export {name}=... first, or write --env {name}=VALUE")])
        env[name] = value if sep else os.environ[name]
        if name in unset:
            unset.remove(name)
    return env, unset
