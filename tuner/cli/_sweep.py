"""`tuner run | resume | list | status | export | ui | dashboard`: sweeps, from the terminal."""

from __future__ import annotations

import argparse
import math
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
from tuner._process import stop_group
from tuner.spec import CompiledSpec, load_spec

DEMO_BUILD = "about 20 s, minutes on heavily loaded cores"  # the demo model's first-use build (README)
FAILED_ALIKE = 4  # exit code: the sweep's first trials all failed with one error, and it stopped
WORKDIR_HELP = "folder that holds the sweeps, one subfolder per sweep (default: sweeps)"
SWEEP_HELP = "sweep name (under --workdir), sweep folder, or spec file"


def _on_sweep(sub: argparse._SubParsersAction, name: str, help: str, func: Any) -> argparse.ArgumentParser:
    """A subcommand that takes one sweep (name, folder or spec file) and --workdir."""
    p = sub.add_parser(name, help=help)
    p.add_argument("sweep", help=SWEEP_HELP)
    p.add_argument("--workdir", default="sweeps", help=WORKDIR_HELP)
    p.set_defaults(func=func)
    return p


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a sweep from a spec file (loads its study if it exists)")
    p.add_argument("spec", help="sweep spec YAML (see search_spaces/)")
    p.add_argument("--address", help="Ray cluster address (overrides ray.address in the spec)")
    p.set_defaults(func=cmd_run)

    _on_sweep(sub, "resume", "continue an interrupted sweep without re-running finished trials", cmd_resume)
    _on_sweep(sub, "sync", "write to MLflow what the study holds and MLflow lacks (after the tracking server was away)",
              cmd_sync)

    p = sub.add_parser("list", help="list the sweeps under a folder, from their study storage")
    p.add_argument("--workdir", default="sweeps", help=WORKDIR_HELP)
    p.set_defaults(func=cmd_list)

    _on_sweep(sub, "status", "the trials of a sweep and their states, from the study storage", cmd_status)
    _on_sweep(sub, "diagnose", "what the trials' trajectories show (KL exploding or near zero, value, clipping, "
                               "negative KL), where in the search space, and what the guidance says to do", cmd_diagnose)

    p = sub.add_parser("export", help="write the sweep's answer: the promoted config with the best mean over "
                                      "fresh seeds (where promotion is off or unfinished: the best feasible "
                                      "trial's config)")
    p.add_argument("sweep", help=SWEEP_HELP)
    p.add_argument("--format", default=None,
                   help="our engine's sweep: yaml (default), json, openrlhf, verl or trl; a sweep "
                        "of your own trainer (trial.engine: command): command (default: your "
                        "command line with the values filled in), yaml or json (the searched "
                        "values); verl, openrlhf, trl: that engine's own (default), yaml or json")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    p.add_argument("--workdir", default="sweeps", help=WORKDIR_HELP)
    p.set_defaults(func=cmd_export)

    _server(sub, "ui", "start the MLflow UI on 127.0.0.1 on a sweep's tracking store (for a sweep that logs to "
                       "an MLflow server: print its page)", "the MLflow server", 5000, cmd_ui)
    _server(sub, "dashboard", "start optuna-dashboard on 127.0.0.1 on a sweep's Optuna study, with KL-infeasible "
                              "trials shown infeasible (needs optuna-dashboard 0.21)", "optuna-dashboard", 8080, cmd_dashboard)


def _server(sub: argparse._SubParsersAction, name: str, help: str, server: str, port: int, func: Any) -> None:
    """A subcommand that serves a page on one sweep (default: the most recent) on --host:--port."""
    p = sub.add_parser(name, help=help)
    p.add_argument("sweep", nargs="?", help="sweep name, folder or spec (default: the only/most recent sweep)")
    p.add_argument("--workdir", default="sweeps", help=WORKDIR_HELP)
    p.add_argument("--host", default="127.0.0.1",
                   help=f"address {server} listens on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=port, help=f"port of {server} (default: {port})")
    p.set_defaults(func=func)


def _print_summary(summary) -> None:
    c = summary.counts
    runs = f" and {summary.promotion_ran} promotion run{'s' if summary.promotion_ran != 1 else ''}" if summary.promotion_ran else ""
    print(f"sweep {summary.name}: {summary.ran} trials{runs} run in {summary.wall_seconds:.1f} s")
    print("trials: " + ", ".join(f"{k.lower()} {v}" for k, v in c.items() if v))
    if summary.best_number is not None:
        print(f"best feasible: trial {summary.best_number}, score {summary.best_value:.4f}, "
              f"KL max {summary.best_kl:.2f} nats")
    else:
        print("best feasible: none (every trial failed, was pruned, or passed the KL limit)")
    print(_overoptimization(summary))
    _print_answer(summary.promoted, summary.choice, summary.name)
    if summary.promotion_note:
        print(f"promotion did not run: {summary.promotion_note}")
    # no ratio where no trial computed anything
    if summary.ran + summary.promotion_ran and summary.trial_compute_seconds > 0:
        print(f"controller overhead: wall {summary.wall_seconds:.1f} s vs ideal {summary.ideal_seconds:.1f} s "
              f"(trial compute {summary.trial_compute_seconds:.1f} s / concurrency "
              f"{min(summary.concurrency, summary.ran + summary.promotion_ran)}) = {summary.overhead:.2f}x")
    if summary.diagnosis:
        print(f"\n{summary.diagnosis}")
    print(f"sweep folder: {summary.sweep_dir}   MLflow parent run: {summary.parent_run_id}")
    print(f"next: tuner export {summary.name} --format yaml   |   tuner ui {summary.name}")


def _overoptimization(summary) -> str:
    """The summary's over-optimization line: the trials it flags, none, or why it could not be told."""
    flagged = summary.overoptimized
    if flagged:
        return (f"over-optimization: in trial{'s' if len(flagged) > 1 else ''} {', '.join(map(str, flagged))} "
                "the training reward rose while the held-out reward fell (see heldout_vs_kl.png on the "
                "sweep's MLflow run)")
    if not any(t.gold is not None and math.isfinite(t.gold) for t in summary.trials):
        return "over-optimization: not checked (no held-out reward: trial.eval_reward is not set)"
    return "over-optimization: none (no trial's training reward rose while its held-out reward fell)"


def _print_answer(configs: list, choice: Any, name: str) -> None:
    """The promotion's table and the config `tuner export` exports."""
    from tuner.cli._table import console, render_promotion

    if configs:
        console().print(render_promotion(configs, f"sweep {name}: promotion (each config at full length, fresh seeds)"))
    if choice is None:
        if configs:
            print("answer: none (no promoted config ran within the KL limit in every seed; 'tuner status' shows "
                  "each seed's result)")
        return
    src = choice.source
    if choice.stage == "promotion":
        print(f"answer: trial {src['trial']}'s config, mean {src['mean']:.4f} (spread {src['spread']:.4f}) over seeds "
              f"{', '.join(map(str, src['seeds']))}, KL max {src['kl_max']:.2f} nats (search rank {src['search_rank']})")
    else:
        print(f"answer: trial {src['trial']}'s config: {choice.note}")


def _start(spec: CompiledSpec) -> int:
    from tuner.cli._table import LiveTable, console, render_rows, row_of
    from tuner.sweep import preflight, run_sweep, trial_rows, trials_to_run
    from tuner.sweep._signals import stop_on_sigterm

    stop_on_sigterm()  # SIGTERM stops the sweep as Ctrl-C does (exit code 143)
    for warning in spec.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    if trials_to_run(spec) == 0:
        from tuner.sweep import choose, open_study, promoted_configs, promotion_study

        study, storage = open_study(spec)
        console(sys.stderr).print(render_rows([row_of(r) for r in trial_rows(study)], f"sweep {spec.name}: all trials"))
        configs = promoted_configs(spec, study, promotion_study(spec, storage))
        _print_answer(configs, choose(spec, study, configs), spec.name)
        print(f"sweep {spec.name} is already complete: its {spec.budget.trials} trials have run, nothing to do "
              f"(raise budget.trials in the spec to run more; tuner export {spec.name} for the best config)")
        return 0
    _say(_preflight_message(spec))
    preflight(spec)  # model, prompts and reward are checked before any trial is launched
    from ray.tune.error import TuneError

    from tuner.sweep import StudyOutage

    table = LiveTable(f"sweep {spec.name}")
    try:
        summary = run_sweep(spec, callbacks=[table])
    except StudyOutage as exc:  # stopped as on Ctrl-C: what finished is kept
        print(f"error: {exc}; continue with: tuner resume {spec.sweep_dir()}", file=sys.stderr)
        return stopped_code()
    except TuneError as exc:  # Ray Tune itself failed; the study and MLflow keep what finished
        reason = str(exc).strip().splitlines()[-1][:300]
        print(f"error: the sweep stopped: {reason}; what finished is kept: continue with "
              f"tuner resume {spec.sweep_dir()}", file=sys.stderr)
        return 1
    finally:
        table.stop()
    table.console.print(render_rows([row_of(t) for t in summary.trials], f"sweep {spec.name}: all trials"))
    _print_summary(summary)
    if summary.failed_alike:
        print("error: the sweep stopped, as its first trials all failed with the same error: "
              f"{summary.failed_alike} (tuner status {summary.name} shows each trial's error); "
              f"fix it, then: tuner resume {summary.sweep_dir}", file=sys.stderr)
        return FAILED_ALIKE
    if summary.missing:
        print(f"sweep stopped with {summary.missing} of {spec.budget.trials} trials still to run; "
              f"continue with: tuner resume {summary.sweep_dir}", file=sys.stderr)
        return stopped_code()
    if summary.promotion_missing:
        print(f"sweep stopped with {summary.promotion_missing} promotion runs still to run; "
              f"continue with: tuner resume {summary.sweep_dir}", file=sys.stderr)
        return stopped_code()
    return 0


def stopped_code() -> int:
    """The exit code of a sweep that was stopped before its budget: 143 after SIGTERM, else 130 (Ctrl-C)."""
    from tuner.sweep._signals import stop_signal

    return 128 + (stop_signal() or signal.SIGINT)


def _say(message: str) -> None:
    """What `tuner run` is doing, before its table appears (stderr, like the table)."""
    print(f"{message} ...", file=sys.stderr, flush=True)


def _preflight_message(spec: CompiledSpec) -> str:
    from trials.demo import demo_cache_dir, demo_model_built

    if spec.trial.engine != "ppo-tuner":
        return f"engine {spec.trial.engine}: each trial starts {spec.trial.command[0]}, which loads its own model"

    uses_demo = "demo" in (spec.base.model_path, spec.base.value_model_path)
    build = (f"building the demo model on first use ({DEMO_BUILD}; cached in {demo_cache_dir().parent}), "
             "then " if uses_demo and not demo_model_built() else "")
    return f"{build}checking the model, tokenizer, prompts and reward once before any trial"


def cmd_run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    if args.address:
        spec = spec.with_ray_address(args.address)
    return _start(spec)


def cmd_resume(args: argparse.Namespace) -> int:
    from tuner.sweep import find_sweep, load_study

    spec = find_sweep(args.sweep, args.workdir)
    load_study(spec)  # must exist
    return _start(spec)


def cmd_sync(args: argparse.Namespace) -> int:
    from tuner.sweep import find_sweep, sync_tracking

    spec = find_sweep(args.sweep, args.workdir)
    counts = sync_tracking(spec)
    print(f"sweep {spec.name}: MLflow synced from the study: {counts['created']} child runs created, "
          f"{counts['closed']} closed, {counts['restored']} objective values restored")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from tuner.sweep import best_feasible, count_states, list_sweeps, load_study, redact

    sweeps = list_sweeps(args.workdir)
    if not sweeps:
        print(f"no sweeps under {args.workdir}/")
        return 0
    for spec in sweeps:
        try:
            study = load_study(spec)
        except ConfigError:
            print(f"{spec.name:<24} (no study yet in {redact(spec.storage_url())})")
            continue
        counts = count_states(study)
        best = best_feasible(study)
        states = " ".join(f"{k.lower()}={v}" for k, v in counts.items() if v)
        print(f"{spec.name:<24} {states:<50} best={best.values[0]:.4f}" if best else f"{spec.name:<24} {states}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from tuner.cli._table import console, render_rows, row_of
    from tuner.sweep import (
        choose,
        find_sweep,
        open_study,
        promoted_configs,
        promotion_study,
        trial_rows,
    )

    spec = find_sweep(args.sweep, args.workdir)
    study, storage = open_study(spec)
    rows = [row_of(r) for r in trial_rows(study)]
    console().print(render_rows(rows, f"sweep {spec.name} ({len(rows)} of {spec.budget.trials} trials)"))
    promotion = promotion_study(spec, storage)
    if promotion is not None:
        runs = [{**row_of(r), "label": f"trial {r.source}, seed {r.seed}"} for r in trial_rows(promotion)]
        console().print(render_rows(runs, f"sweep {spec.name}: promotion runs ({len(runs)})"))
    configs = promoted_configs(spec, study, promotion)
    _print_answer(configs, choose(spec, study, configs), spec.name)
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from tuner.sweep import find_sweep, load_study
    from tuner.sweep._diagnose import diagnosis_text
    from tuner.sweep._tracking import SweepTracker

    spec = find_sweep(args.sweep, args.workdir)
    study = load_study(spec)
    tracker = SweepTracker.existing(spec, study)
    if tracker is None:
        print(f"sweep {spec.name} has no MLflow runs yet: nothing to diagnose (run it with 'tuner run')")
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
        raise ConfigError([Problem("SWEEP", spec.name, "has no promoted config that ran within the KL limit in every seed",
                                   "see 'tuner status' for each seed's result; lower the learning rates or raise beta "
                                   "in the search space, or raise budget.promote.top_k and resume")])
    if choice is None:
        raise ConfigError([Problem("SWEEP", spec.name, "has no completed trial within the KL limit",
                                   "run more trials (tuner resume) or widen the search space")])
    if choice.note:
        print(f"note: exporting {choice.note}", file=sys.stderr)
    text, warnings = export_choice(spec, choice, fmt)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote trial {choice.trial.number}'s config ({fmt}, chosen by the "
              f"{choice.stage}) to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def mlflow_server_command(tracking_uri: str, host: str, port: int, artifacts: Path | None = None,
                          ui: bool = False) -> list[str]:
    """`mlflow server` on one worker, without its job runner (a few hundred MB instead of GBs); with `ui`,
    `tuner ui`'s (tuner/_mlflow_ui.py: its link opens with MLflow's assistant panel closed)."""
    server = [sys.executable, "-m", "tuner._mlflow_ui"] if ui else [shutil.which("mlflow") or "mlflow", "server"]
    cmd = [*server, "--backend-store-uri", tracking_uri, "--host", host, "--port", str(port), "--workers", "1"]
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
        raise ConfigError([Problem("SWEEP", None, f"no sweeps under {args.workdir}/", "run one with 'tuner run SPEC'")])
    return max(sweeps, key=lambda s: s.spec_file().stat().st_mtime)


def cmd_ui(args: argparse.Namespace) -> int:
    from tuner.sweep import redact

    spec = _named_or_latest(args)
    from mlflow.tracking import MlflowClient

    from tuner._mlflow_ui import open_link
    from tuner.sweep._tracking import sweep_page

    uri = spec.tracking_uri()
    experiment = MlflowClient(uri).get_experiment_by_name(spec.experiment_name())
    server = redact(uri) if uri.startswith(("http://", "https://")) else f"http://{args.host}:{args.port}"
    page = sweep_page(server, experiment.experiment_id) if experiment else server
    if uri.startswith(("http://", "https://")):  # the sweep logs to a server already: show its page
        print(f"MLflow UI for sweep {spec.name}: {page}", flush=True)
        return 0
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = mlflow_server_command(uri, args.host, args.port, spec.sweep_dir() / "mlartifacts", ui=True)
    page = open_link(page)
    log_path = spec.sweep_dir() / "mlflow-ui.log"  # the server's requests and notices, not the terminal's
    _stop_on_signals()
    with log_path.open("a") as log:  # the server leads a group of its own: stop_group ends all of it
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        print(f"starting the MLflow server on {args.host}:{args.port} ...", file=sys.stderr, flush=True)
        if _answers(f"http://{_local(args.host)}:{args.port}/health", lambda: proc.poll() is None):
            print(f"MLflow UI for sweep {spec.name}: {page}  (Ctrl-C stops it)", flush=True)
            print(f"the server's log: {log_path}", flush=True)
            print(f"the Optuna study: tuner dashboard {spec.name} (optuna-dashboard), storage "
                  f"{redact(spec.storage_url())}", flush=True)
            while proc.poll() is None:
                time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        stop_group(proc, grace=10)
    print(f"error: the MLflow server exited with code {proc.returncode}; see {log_path}", file=sys.stderr)
    return 1


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP stop `tuner ui` / `tuner dashboard` as Ctrl-C does, and their server with them."""
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

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local server: no proxy
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

    from tuner.sweep import load_study
    from tuner.sweep._dashboard import dashboard_app, dashboard_page

    spec = _named_or_latest(args)
    load_study(spec)  # must exist
    app = dashboard_app(spec)
    log_path = spec.sweep_dir() / "optuna-dashboard.log"  # its requests, not the terminal's
    log = log_path.open("a")

    class Handler(WSGIRequestHandler):
        def log_message(self, format: str, *values: Any) -> None:
            log.write(f"{self.address_string()} [{self.log_date_time_string()}] {format % values}\n")
            log.flush()

        def get_stderr(self):  # the app's tracebacks go to the log too
            return log

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    try:
        server = make_server(args.host, args.port, app, server_class=Server, handler_class=Handler)
    except OSError as exc:
        raise ConfigError([Problem("--port", args.port, f"cannot listen on {args.host}:{args.port} ({exc.strerror})",
                                   "choose a free port with --port")]) from None
    _stop_on_signals()
    serving = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    serving.start()
    try:
        if _answers(f"http://{_local(args.host)}:{args.port}/", serving.is_alive):
            print(f"optuna-dashboard for sweep {spec.name}: "
                  f"{dashboard_page(f'http://{args.host}:{args.port}', spec)}  (Ctrl-C stops it)", flush=True)
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
