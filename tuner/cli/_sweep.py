"""`tuner run | resume | sync | list | status`: sweeps, from the terminal."""

from __future__ import annotations

import argparse
import math
import signal
import sys
from typing import Any

from trials import ConfigError
from tuner.spec import CompiledSpec, load_spec

DEMO_BUILD = "about 20 s, minutes on heavily loaded cores"  # the demo model's first-use build (README)
FAILED_ALIKE = 4  # exit code: the sweep's first trials all failed with one error, and it stopped
WORKDIR_HELP = "folder that holds the sweeps, one subfolder per sweep (default: sweeps)"
SWEEP_HELP = "sweep name (under --workdir), sweep folder, or spec file"


def on_sweep(sub: argparse._SubParsersAction, name: str, help: str, func: Any) -> argparse.ArgumentParser:
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

    on_sweep(sub, "resume", "continue an interrupted sweep without re-running finished trials", cmd_resume)
    on_sweep(sub, "sync", "write to MLflow what the study holds and MLflow lacks (after the tracking server was away)",
              cmd_sync)

    p = sub.add_parser("list", help="list the sweeps under a folder, from their study storage")
    p.add_argument("--workdir", default="sweeps", help=WORKDIR_HELP)
    p.set_defaults(func=cmd_list)

    on_sweep(sub, "status", "the trials of a sweep and their states, from the study storage", cmd_status)


def _print_summary(summary) -> None:
    c = summary.counts
    plural = "s" if summary.promotion_ran != 1 else ""
    runs = f" and {summary.promotion_ran} promotion run{plural}" if summary.promotion_ran else ""
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
        print(f"answer: trial {src['trial']}'s config, mean {src['mean']:.4f} "
              f"(spread {src['spread']:.4f}) over seeds {', '.join(map(str, src['seeds']))}, "
              f"KL max {src['kl_max']:.2f} nats (search rank {src['search_rank']})")
    else:
        print(f"answer: trial {src['trial']}'s config: {choice.note}")


def _start(spec: CompiledSpec) -> int:
    from tuner.cli._table import LiveTable, console, render_rows, row_of
    from tuner.sweep import preflight, run_sweep, stop_on_sigterm, trial_rows, trials_to_run

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
    from tuner.sweep import stop_signal

    if stop_signal() is not None:  # the stop came after the last trial: what it would stop had all run
        print(f"sweep {summary.name} was stopped after its last run had ended: nothing is left to run",
              file=sys.stderr)
    return 0


def stopped_code() -> int:
    """The exit code of a sweep that was stopped before its budget: 143 after SIGTERM, else 130 (Ctrl-C)."""
    from tuner.sweep import stop_signal

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
    return _start(load_spec(args.spec, ray_address=args.address))  # checked as it will run


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
