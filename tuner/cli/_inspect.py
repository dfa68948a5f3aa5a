"""`tuner diagnose | export | ui | dashboard`: what a sweep's trials show, its answer, its pages."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from trials import ConfigError, Problem
from trials.process import stop_group
from tuner.cli._sweep import SWEEP_HELP, WORKDIR_HELP, on_sweep
from tuner.spec import CompiledSpec


def register(sub: argparse._SubParsersAction) -> None:
    on_sweep(
        sub,
        "diagnose",
        "what the trials' trajectories show (KL exploding or near zero, value, clipping, "
        "negative KL), where in the search space, and what the guidance says to do",
        cmd_diagnose,
    )

    p = sub.add_parser(
        "export",
        help="write the sweep's answer: the promoted config with the best mean over "
        "fresh seeds (where promotion is off or unfinished: the best feasible "
        "trial's config)",
    )
    p.add_argument("sweep", help=SWEEP_HELP)
    p.add_argument(
        "--format",
        default=None,
        help="our engine's sweep: yaml (default), json, openrlhf, verl or trl; a sweep "
        "of your own trainer (trial.engine: command): command (default: your "
        "command line with the values filled in), yaml or json (the searched "
        "values); verl, openrlhf, trl: that engine's own (default), yaml or json",
    )
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    p.add_argument("--workdir", default="sweeps", help=WORKDIR_HELP)
    p.set_defaults(func=cmd_export)

    _server(
        sub,
        "ui",
        "start the MLflow UI on 127.0.0.1 on a sweep's tracking store (for a sweep that logs to "
        "an MLflow server: print its page)",
        "the MLflow server",
        5000,
        cmd_ui,
    )
    _server(
        sub,
        "dashboard",
        "start optuna-dashboard on 127.0.0.1 on a sweep's Optuna study, with KL-infeasible "
        "trials shown infeasible (needs optuna-dashboard 0.21)",
        "optuna-dashboard",
        8080,
        cmd_dashboard,
    )


def _server(
    sub: argparse._SubParsersAction, name: str, help: str, server: str, port: int, func: Any
) -> None:
    """A subcommand that serves a page on one sweep (default: the most recent) on --host:--port."""
    p = sub.add_parser(name, help=help)
    p.add_argument(
        "sweep", nargs="?", help="sweep name, folder or spec (default: the only/most recent sweep)"
    )
    p.add_argument("--workdir", default="sweeps", help=WORKDIR_HELP)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help=f"address {server} listens on (default: 127.0.0.1, this machine only)",
    )
    p.add_argument("--port", type=int, default=port, help=f"port of {server} (default: {port})")
    p.set_defaults(func=func)


def cmd_diagnose(args: argparse.Namespace) -> int:
    from tuner.sweep import SweepTracker, diagnosis_text, find_sweep, load_study

    spec = find_sweep(args.sweep, args.workdir)
    study = load_study(spec)
    tracker = SweepTracker.existing(spec, study)
    if tracker is None:
        print(
            f"sweep {spec.name} has no MLflow runs yet: nothing to diagnose "
            "(run it with 'tuner run')"
        )
        return 0
    print(f"sweep {spec.name}\n\n{diagnosis_text(spec, study, tracker)[0]}", end="")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tuner.export import check_format, formats_for
    from tuner.sweep import (
        choose,
        export_choice,
        find_sweep,
        open_study,
        promoted_configs,
        promotion_study,
    )

    spec = find_sweep(args.sweep, args.workdir)
    fmt = check_format(args.format or formats_for(spec.trial.engine)[0], spec.trial.engine)
    study, storage = open_study(spec)
    configs = promoted_configs(spec, study, promotion_study(spec, storage))
    choice = choose(spec, study, configs)
    if choice is None and configs:
        raise ConfigError(
            [
                Problem(
                    "SWEEP",
                    spec.name,
                    "has no promoted config that ran within the KL limit in every seed",
                    "see 'tuner status' for each seed's result; lower the learning rates or "
                    "raise beta in the search space, or raise budget.promote.top_k and resume",
                )
            ]
        )
    if choice is None:
        raise ConfigError(
            [
                Problem(
                    "SWEEP",
                    spec.name,
                    "has no completed trial within the KL limit",
                    "run more trials (tuner resume) or widen the search space",
                )
            ]
        )
    if choice.note:
        print(f"note: exporting {choice.note}", file=sys.stderr)
    text, warnings = export_choice(spec, choice, fmt)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.output:
        Path(args.output).write_text(text)
        print(
            f"wrote trial {choice.trial.number}'s config ({fmt}, chosen by the "
            f"{choice.stage}) to {args.output}",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return 0


def mlflow_server_command(
    tracking_uri: str, host: str, port: int, artifacts: Path | None = None, ui: bool = False
) -> list[str]:
    """`mlflow server` on one worker, without its job runner (a few hundred MB instead of GBs);
    with `ui`, `tuner ui`'s (tuner/_mlflow_ui.py: its link opens with MLflow's assistant panel
    closed)."""
    server = (
        [sys.executable, "-m", "tuner._mlflow_ui"]
        if ui
        else [shutil.which("mlflow") or "mlflow", "server"]
    )
    cmd = [
        *server,
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if artifacts is not None:
        cmd += ["--artifacts-destination", str(artifacts)]
    return cmd


def _named_or_latest(args: argparse.Namespace) -> CompiledSpec:
    """The sweep named on the command line, else the most recent one under --workdir."""
    from tuner.sweep import find_sweep, list_sweeps

    if args.sweep:
        return find_sweep(args.sweep, args.workdir)
    sweeps = list_sweeps(args.workdir)
    if not sweeps:
        raise ConfigError(
            [
                Problem(
                    "SWEEP",
                    None,
                    f"no sweeps under {args.workdir}/",
                    "run one with 'tuner run SPEC'",
                )
            ]
        )
    return max(sweeps, key=lambda s: s.spec_file().stat().st_mtime)


def cmd_ui(args: argparse.Namespace) -> int:
    from tuner.sweep import redact

    spec = _named_or_latest(args)
    from mlflow.tracking import MlflowClient

    from tuner._mlflow_ui import open_link
    from tuner.sweep import sweep_page

    uri = spec.tracking_uri()
    experiment = MlflowClient(uri).get_experiment_by_name(spec.experiment_name())
    server = (
        redact(uri)
        if uri.startswith(("http://", "https://"))
        else f"http://{args.host}:{args.port}"
    )
    page = sweep_page(server, experiment.experiment_id) if experiment else server
    if uri.startswith(("http://", "https://")):  # the sweep logs to a server already: show its page
        print(f"MLflow UI for sweep {spec.name}: {page}", flush=True)
        return 0
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = mlflow_server_command(
        uri, args.host, args.port, spec.sweep_dir() / "mlartifacts", ui=True
    )
    page = open_link(page)
    log_path = (
        spec.sweep_dir() / "mlflow-ui.log"
    )  # the server's requests and notices, not the terminal's
    _stop_on_signals()
    with log_path.open(
        "a"
    ) as log:  # the server leads a group of its own: stop_group ends all of it
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        print(
            f"starting the MLflow server on {args.host}:{args.port} ...",
            file=sys.stderr,
            flush=True,
        )
        if _answers(f"http://{_local(args.host)}:{args.port}/health", lambda: proc.poll() is None):
            print(f"MLflow UI for sweep {spec.name}: {page}  (Ctrl-C stops it)", flush=True)
            print(f"the server's log: {log_path}", flush=True)
            print(
                f"the Optuna study: tuner dashboard {spec.name} (optuna-dashboard), storage "
                f"{redact(spec.storage_url())}",
                flush=True,
            )
            while proc.poll() is None:
                time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        stop_group(proc, grace=10)
    print(
        f"error: the MLflow server exited with code {proc.returncode}; see {log_path}",
        file=sys.stderr,
    )
    return 1


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP stop `tuner ui` / `tuner dashboard` as Ctrl-C does, and their server
    with them."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def _local(host: str) -> str:
    """The address (in a URL) to reach a server listening on `host` from this machine."""
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _answers(url: str, alive: Any, every: float = 0.2) -> bool:
    """Whether `url` answers HTTP (any status), asked every `every` s while `alive()`."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({})
    )  # a local server: no proxy
    while alive():
        try:
            with opener.open(url, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            time.sleep(every)
    return False


def cmd_dashboard(args: argparse.Namespace) -> int:
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from tuner.sweep import dashboard_app, dashboard_page, load_study

    spec = _named_or_latest(args)
    load_study(spec)  # must exist
    app = dashboard_app(spec)
    log_path = spec.sweep_dir() / "optuna-dashboard.log"  # its requests, not the terminal's
    log = log_path.open("a")

    class Handler(WSGIRequestHandler):
        def log_message(self, format: str, *values: Any) -> None:
            log.write(
                f"{self.address_string()} [{self.log_date_time_string()}] {format % values}\n"
            )
            log.flush()

        def get_stderr(self):  # the app's tracebacks go to the log too
            return log

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    try:
        server = make_server(args.host, args.port, app, server_class=Server, handler_class=Handler)
    except OSError as exc:
        raise ConfigError(
            [
                Problem(
                    "--port",
                    args.port,
                    f"cannot listen on {args.host}:{args.port} ({exc.strerror})",
                    "choose a free port with --port",
                )
            ]
        ) from None
    _stop_on_signals()
    serving = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    serving.start()
    try:
        if _answers(f"http://{_local(args.host)}:{args.port}/", serving.is_alive):
            print(
                f"optuna-dashboard for sweep {spec.name}: "
                f"{dashboard_page(f'http://{args.host}:{args.port}', spec)}  (Ctrl-C stops it)",
                flush=True,
            )
            print(f"its log: {log_path}", flush=True)
        while serving.is_alive():
            serving.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
        log.close()
    return 0
