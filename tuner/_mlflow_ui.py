"""`tuner ui`'s MLflow server: `mlflow server` with MLflow's own app plus one page, OPEN.

MLflow 3.17's frontend opens its assistant panel (a third of the width) on a browser's first visit to a
server on localhost/127.0.0.1, and records in the browser's localStorage that it did. Only a page of
the server's own origin can set that record, so the app adds one: OPEN sets it and goes on to the page
named in its URL fragment (`/ppo-tuner/open#/experiments/1/runs?...` opens `/#/experiments/1/runs?...`;
a fragment never reaches the server, and the page goes nowhere but this server's own root). The panel
stays one click away.

The app is given to `mlflow server` through MLflow's app plugins (`--app-name`, entry-point group
`mlflow.app`); `python -m tuner._mlflow_ui ARGS` runs `mlflow server ARGS --app-name ppo-tuner` with
that entry point provided in the process, so that it works from a source tree too. The module stands
outside tuner.sweep and imports nothing of the controller: it runs in the MLflow server's processes.
`tuner ui` starts it as the leader of a process group (mlflow server starts uvicorn as a child); it
kills that group once `tuner ui` is gone, even when `tuner ui` was killed outright.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from typing import Any

APP = "ppo-tuner"  # the --app-name
_MODULE = "tuner._mlflow_ui"  # this module's name (as __main__, __name__ is not)
OPEN = "/ppo-tuner/open"
SEEN = "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"  # MLflow 3.17's record (key_v<version>: JSON)
_PAGE = ("<!doctype html><meta charset='utf-8'><title>MLflow</title><script>"
         f"try {{ localStorage.setItem({json.dumps(SEEN)}, 'true'); }} catch (e) {{}}"
         "location.replace('/' + location.hash);</script>")


def open_link(page: str) -> str:
    """The link that opens `page` (http://host:port/#/...) on this app with the assistant panel closed."""
    base, _, fragment = page.partition("/#")
    return f"{base}{OPEN}#{fragment}"


def create_app() -> Any:
    """MLflow's app (the one `mlflow server` runs, configured by the environment it sets) with OPEN first."""
    from mlflow.server.fastapi_app import app
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    async def open_page(request: Any) -> HTMLResponse:
        return HTMLResponse(_PAGE)

    app.router.routes.insert(0, Route(OPEN, open_page, methods=["GET"]))  # before MLflow's catch-all mount
    return app


class _Plugin(importlib.metadata.Distribution):
    """This module as an `mlflow.app` entry point, for the `mlflow server` of this process."""

    def read_text(self, filename: str) -> str | None:
        if filename == "METADATA":
            return f"Metadata-Version: 2.1\nName: {APP}-mlflow-app\nVersion: 0\n"
        if filename == "entry_points.txt":
            return f"[mlflow.app]\n{APP} = {_MODULE}:create_app\n"
        return None

    def locate_file(self, path: Any) -> Any:
        return path


class _Finder(importlib.metadata.DistributionFinder):
    def find_spec(self, *args: Any) -> None:  # finds no modules, only the distribution
        return None

    def find_distributions(self, context: Any = None) -> Any:
        name = getattr(context, "name", None)
        return iter([_Plugin()]) if name in (None, f"{APP}-mlflow-app") else iter([])


def main(argv: list[str]) -> None:
    from trials.process import watch_parent

    watch_parent()  # uvicorn, a child of this process, goes with it
    sys.meta_path.append(_Finder())  # before mlflow.cli, which reads the app names when imported
    from mlflow.cli import cli

    cli.main(["server", *argv, "--app-name", APP], prog_name="mlflow")


if __name__ == "__main__":
    main(sys.argv[1:])
