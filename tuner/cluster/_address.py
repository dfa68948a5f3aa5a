"""Reaching a Ray cluster's jobs API: its address, its authentication token, the client.

The jobs API is served by the dashboard of the cluster's head node (`http://HEAD:8265`). Clusters
run with Ray token authentication (`RAY_AUTH_MODE=token`); the token is found as Ray finds it:
`RAY_AUTH_TOKEN`, else the file named by `RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token`.
Every failure to reach or use the API becomes a ConfigError: one line, exit code 2.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trials import ConfigError, Problem

__all__ = ["api_errors", "auth_token", "connect", "dashboard_address", "shown"]

_ADDRESS_FIX = "give the cluster's dashboard, e.g. --address http://HEAD:8265, or set RAY_ADDRESS to it"
_TOKEN_FIX = ("set RAY_AUTH_TOKEN to the cluster's token (on the head: ray get-auth-token), "
              "or write it to ~/.ray/auth_token")
_CONNECT_SECONDS = 5.0
_CHATTY = ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk", "ray._private.runtime_env.packaging")


def shown(address: str) -> str:
    """The address as it may be printed: a password in it (http://user:pw@head:8265) becomes ***."""
    parts = urlsplit(address)
    if parts.password is None:
        return address
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def dashboard_address(given: str | None) -> str:
    """The jobs API address from --address, else RAY_ADDRESS: http(s)://HOST[:PORT], no trailing '/'."""
    field, value = ("--address", given) if given else ("RAY_ADDRESS", os.environ.get("RAY_ADDRESS", "").strip())
    if not value:
        raise ConfigError([Problem("--address", None, "no Ray cluster given", _ADDRESS_FIX)])
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError([Problem(field, shown(value), "is not the address of a Ray dashboard (the jobs API)",
                                   "write it as http://HEAD:8265 (the head's dashboard port, not the GCS port 6379)")])
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ConfigError([Problem(field, shown(value), "has a port that is not a number",
                                   "write it as http://HEAD:8265")]) from None
    return value.rstrip("/")


def auth_token() -> str | None:
    """The Ray authentication token on this machine, as Ray itself looks for it; None where there is none."""
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
        return None
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError:
            token = ""
        if not token:
            raise ConfigError([Problem("RAY_AUTH_TOKEN_PATH", path, "names no readable, non-empty token file",
                                       "point it at the file that holds the cluster's token, or unset it")])
        return token
    default = Path.home() / ".ray" / "auth_token"
    if not default.is_file():
        return None
    return default.read_text().strip() or None


def _reachable(address: str) -> None:
    parts = urlsplit(address)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=_CONNECT_SECONDS):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError([Problem(
            "--address", shown(address), f"no Ray dashboard answers there ({reason})",
            "start the cluster (its head serves the jobs API on port 8265), or " + _ADDRESS_FIX,
        )]) from None


@contextlib.contextmanager
def api_errors(address: str, job_id: str | None = None, hide: Iterable[str] = ()) -> Iterator[None]:
    """Turn the jobs API's failures into one-line ConfigErrors; `hide`: values never to show (secrets)."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        what = "rejected the token" if "403" in str(exc) or "invalid" in str(exc).lower() else "needs a token"
        raise ConfigError([Problem("--address", shown(address), f"the Ray cluster {what}", _TOKEN_FIX)]) from None
    except OSError:  # ConnectionError, and aiohttp's errors while following a log
        raise ConfigError([Problem("--address", shown(address), "the Ray dashboard stopped answering",
                                   "check that the cluster's head is up (tuner jobs)")]) from None
    except RuntimeError as exc:
        text = " ".join(str(exc).split())
        for secret in hide:
            text = text.replace(secret, "***") if len(secret) >= 4 else text
        if job_id is not None and ("404" in text or "does not exist" in text):
            raise ConfigError([Problem("JOB", job_id, f"no such job on the cluster at {shown(address)}",
                                       "list the jobs with 'tuner jobs'")]) from None
        raise ConfigError([Problem("--address", shown(address), f"the Ray jobs API refused the request: {text[:300]}",
                                   "check the address and the cluster's logs")]) from None


def connect(address: str) -> Any:
    """A JobSubmissionClient for the cluster at `address`, checked to answer, with the token if there is one."""
    from ray.job_submission import JobSubmissionClient

    for name in _CHATTY:  # "Uploading package ...", "WebSocket closed ...": not for the user
        logging.getLogger(name).setLevel(logging.WARNING)
    _reachable(address)
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with api_errors(address):
        client = JobSubmissionClient(address, headers=headers)
        client.get_version()  # the dashboard answers as a jobs API, and the token is accepted
    return client
