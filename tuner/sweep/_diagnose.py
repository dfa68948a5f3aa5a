"""The sweep's diagnosis from what it recorded: each trial's trajectory from its MLflow child run
(every iteration's metrics), its searched values and stop reason from the study; the rules and the
wording are in tuner/diagnosis.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna

from tuner.diagnosis import READS, Finding, Trajectory, diagnose, render
from tuner.spec import CompiledSpec
from tuner.sweep._study import ATTR

__all__ = ["DIAGNOSIS_FILE", "diagnosis_text", "trajectories", "write_diagnosis"]

DIAGNOSIS_FILE = "diagnosis.md"  # in the sweep's artifacts folder and on its MLflow parent run


def trajectories(study: optuna.Study, tracker: Any) -> tuple[list[Trajectory], int]:
    """The finished trials that have a child run, as Trajectories; and how many finished trials have none
    (the tracking server was away while they ran: `tuner sync` gives them a run with the objective only)."""
    runs = {r.info.run_id for r in tracker.child_runs()}
    out, missing = [], 0
    for t in study.get_trials(deepcopy=False):
        if not t.state.is_finished() or ATTR["duplicate"] in t.user_attrs or ATTR["unlaunched"] in t.user_attrs:
            continue
        run_id = t.user_attrs.get(ATTR["mlflow_run"])
        if run_id not in runs:
            missing += 1
            continue
        metrics = {name: _by_iteration(tracker.metric_history(run_id, name)) for name in READS}
        out.append(Trajectory(number=t.number, params=dict(t.params), metrics=metrics,
                              stop_reason=t.user_attrs.get(ATTR["stop"], ""),
                              engine=json.loads(t.user_attrs.get(ATTR["engine"], "{}"))))
    return out, missing


def _by_iteration(history: list[tuple[int, float]]) -> list[float]:
    """(step, value) pairs -> value per iteration 1..n (step 0, the initial evaluation, left out)."""
    steps = [(s, v) for s, v in history if s >= 1]
    series = [math.nan] * max((s for s, _ in steps), default=0)
    for s, v in steps:
        series[s - 1] = v
    return series


def diagnosis_text(spec: CompiledSpec, study: optuna.Study, tracker: Any) -> tuple[str, list[Finding]]:
    """The diagnosis section of the sweep (see tuner.diagnosis.render), and its findings."""
    found, missing = trajectories(study, tracker)
    findings = diagnose(found, spec.kl_limit)
    text = render(findings, len(found))
    if missing:
        text += (f"\n({missing} finished trials have no trajectory in MLflow (the tracking server was away while "
                 "they ran) and are not read.)\n")
    return text, findings


def write_diagnosis(spec: CompiledSpec, study: optuna.Study, tracker: Any, out_dir: Path) -> tuple[str, Path]:
    """The diagnosis, written to out_dir/diagnosis.md and logged to the sweep's parent run, with a tag that
    names its findings (a column in MLflow's runs table)."""
    from tuner.sweep._tracking import TAG

    text, findings = diagnosis_text(spec, study, tracker)
    path = out_dir / DIAGNOSIS_FILE
    path.write_text(f"# Sweep {spec.name}\n\n{text}")
    tracker.log_file(path)
    named = "; ".join(f"{f.title}: {len(f.trials)} of {f.of} trials" for f in findings) or "none"
    tracker.client.set_tag(tracker.parent_id, TAG["diagnosis"], named)
    return text, path
