"""Checks of single spec values: names, durations, database URLs, addresses, reward references.

Each raises `spec_error(message, fix)` (inside a pydantic validator) or returns the parsed value.
Database and tracking URLs may name environment variables, `${PGPASSWORD}` or `${NAME:-default}`,
so that no password is written in a spec: `expand_env` replaces them where the URL is used.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from trials import ConfigError, Problem, TunerError, parse_reward
from tuner.spec._errors import spec_error

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DURATION = re.compile(
    r"^\s*(\d+(?:\.\d*)?)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hr|hrs|hours?|d|days?)?\s*$",
    re.I,
)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_STORAGE_DRIVERS = {"sqlite": {None, "pysqlite"}, "postgresql": {None, "psycopg", "psycopg2"}}
_TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "http", "https")
_RAY_ADDRESS = re.compile(r"^(auto|local|(ray|http|https)://[^\s/:]+(:\d+)?/?|[^\s/:]+:\d+)$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")  # ${NAME} or ${NAME:-default}


def env_references(value: str | None) -> list[str]:
    """The environment variables a URL refers to, in order, each once."""
    return list(dict.fromkeys(m.group(1) for m in _ENV_REF.finditer(value or "")))


def _userinfo_end(url: str) -> int:
    """Index of the '@' that ends the user:password part of a URL, or -1."""
    start = url.find("://")
    if start < 0:
        return -1
    slash = url.find("/", start + 3)
    return url.rfind("@", start + 3, len(url) if slash < 0 else slash)


def expand_env(value: str, path: str, environ: dict[str, str] | None = None) -> str:
    """The URL with each ${NAME} (or ${NAME:-default}) replaced by its value from the environment.

    A value in the user:password part is percent-encoded, so a password may hold '@', ':' or '/'.
    A variable that is not set (and has no default) is the user's mistake: a ConfigError naming it.
    """
    env = os.environ if environ is None else environ
    at = _userinfo_end(value)
    missing = [m.group(1) for m in _ENV_REF.finditer(value) if m.group(1) not in env and m.group(2) is None]
    if missing:
        raise ConfigError([Problem(path, value, f"refers to ${{{missing[0]}}}, which is not set in the environment",
                                   f"export {missing[0]}=... before running (tuner submit passes it on to the job)")])

    def replace(match: re.Match[str]) -> str:
        default = match.group(2)  # as in the shell, ${NAME:-default} also replaces an empty value
        found = (env.get(match.group(1)) or default) if default is not None else env[match.group(1)]
        return quote(found, safe="") if match.start() < at else found

    return _ENV_REF.sub(replace, value)


def _checkable(value: str) -> str | None:
    """The URL with placeholders for its ${...} references, to check its form; None when the whole
    URL is one reference (it can only be checked once expanded)."""
    if _ENV_REF.fullmatch(value.strip()):
        return None
    return _ENV_REF.sub(lambda m: m.group(2) or "1", value)


def check_name(value: str) -> str:
    if not _NAME.match(value) or len(value) > 100:
        raise spec_error("must be letters, digits, '-', '_' or '.', starting with a letter or digit "
                         "(it names the study and the sweep's folder)", "use a name such as 'ppo-sweep-1'")
    return value


def parse_duration(value: Any) -> float | None:
    """Seconds from a number of seconds or a string such as '90s', '30m', '2h' or '1d'."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise spec_error("must be a duration", "write seconds (3600) or a string such as '30m' or '2h'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise spec_error("must be a duration", "write seconds (3600) or a string such as '90s', '30m' or '2h'")
        unit = (match.group(2) or "s")[0].lower()
        seconds = float(match.group(1)) * _UNIT_SECONDS[unit]
    if not seconds > 0 or seconds == float("inf"):
        raise spec_error("must be a positive duration", "write seconds (3600) or a string such as '30m'")
    return seconds


def check_storage_url(value: str | None) -> str | None:
    """An Optuna storage URL: SQLite or PostgreSQL, as SQLAlchemy parses it."""
    if value is None or _checkable(value) is None:
        return value
    fix = ("use sqlite:///path/to/study.db or postgresql+psycopg://user:${PGPASSWORD}@host:5432/dbname, "
           "or leave it empty for study.db in the sweep's folder")
    try:
        url = make_url(_checkable(value))
    except (ArgumentError, ValueError):
        raise spec_error("is not a database URL", fix) from None
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if backend not in _STORAGE_DRIVERS:
        raise spec_error(f"database backend {backend!r} is not supported (SQLite and PostgreSQL are)", fix)
    if driver not in _STORAGE_DRIVERS[backend] and driver != backend:
        raise spec_error(f"driver {driver!r} is not supported for {backend}", fix)
    if backend == "sqlite" and url.database in (None, "", ":memory:"):
        raise spec_error("an in-memory SQLite database is lost when the sweep ends", fix)
    if backend == "postgresql" and not url.database:
        raise spec_error("names no database", fix)
    return value


def check_tracking_uri(value: str | None) -> str | None:
    """An MLflow tracking URI: a database or a tracking server (MLflow 3 refuses plain ./mlruns stores)."""
    if value is None or _checkable(value) is None:
        return value
    checked = _checkable(value) or ""
    scheme = checked.split(":", 1)[0].split("+", 1)[0].lower() if "://" in checked else ""
    if scheme in ("", "file"):
        raise spec_error("a file store is not supported (MLflow 3 refuses ./mlruns file stores by default)",
                         "use sqlite:///path/to/mlflow.db, a server such as http://mlflow-host:5000, "
                         "or leave it empty for mlflow.db in the sweep's folder")
    if scheme not in _TRACKING_SCHEMES:
        raise spec_error(f"scheme {scheme!r} is not supported",
                         "use sqlite:///..., postgresql://..., mysql://..., or http(s)://host:port")
    if scheme == "sqlite" and not checked.lower().startswith("sqlite:///"):
        raise spec_error("a SQLite URI needs a file path", "use sqlite:///path/to/mlflow.db")
    return value


def check_ray_address(value: str | None) -> str | None:
    if value is None or _RAY_ADDRESS.match(value.strip()):
        return value
    raise spec_error("is not a Ray address",
                     "use 'auto' (a cluster started on this machine), 'host:6379', 'ray://host:10001' "
                     "or 'http://host:8265', or leave it empty for a local Ray")


def check_reward(value: str) -> str:
    """'module:function', 'file.py:function', or a reward-model directory (its files are checked before launch)."""
    try:
        parse_reward(value)
    except TunerError as exc:
        problem = exc.problems[0]
        raise spec_error(problem.message, problem.fix) from None
    return value
