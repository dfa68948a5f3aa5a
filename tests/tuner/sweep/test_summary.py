"""The sweep's summary record, tallied in one pass over the study's trials, says what the study's
own readers say: the states' counts, the best feasible trial, the trials still missing."""

from __future__ import annotations

from optuna.trial import TrialState

from tuner.spec import parse_spec
from tuner.sweep import best_feasible, count_states, load_study, trial_rows
from tuner.sweep._searcher import ask_trial
from tuner.sweep._stage import StageRun
from tuner.sweep._study import ATTR, open_storage
from tuner.sweep._summary import summarise
from tuner.trial import StopReason


def test_the_summary_agrees_with_the_study(tmp_path):
    spec = parse_spec({"name": "tally", "workdir": str(tmp_path / "sweeps"),
                       "search_space": {"policy_lr": {"low": 1e-6, "high": 1e-4, "log": True}},
                       "budget": {"trials": 8, "promote": {"top_k": 0}}})
    spec.sweep_dir().mkdir(parents=True)
    study = load_study(spec, create=True)
    # (value, kl constraint, state, stop reason): feasible, two tied feasible, past the KL limit,
    # cut by the scheduler, interrupted (runs again: not counted), still running
    done = TrialState.COMPLETE
    plan = [(0.2, -1.0, done, "completed"), (0.7, -0.5, done, "completed"),
            (0.7, -0.2, done, "completed"), (0.9, 0.4, done, "kl_limit"),
            (0.1, -1.0, TrialState.PRUNED, "pruned"),
            (None, 0.0, TrialState.FAIL, StopReason.INTERRUPTED),
            (None, None, None, "")]
    for value, kl, state, stop in plan:
        trial, _, _ = ask_trial(study, spec)
        if state is None:
            continue
        trial.set_constraint("kl", kl)
        trial.set_user_attr(ATTR["stop"], stop)
        trial.set_user_attr(ATTR["kl_max"], 3.0 + kl)
        if state == TrialState.PRUNED:
            trial.report(value, 1)
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)

    summary = summarise(spec, study, open_storage(spec.storage_url()), "parent", StageRun(),
                        StageRun(), wall=1.0)

    best = best_feasible(study)
    assert summary.counts == count_states(study)
    assert summary.counts["COMPLETE"] == 3 and summary.counts["INFEASIBLE"] == 1
    assert (summary.best_number, summary.best_value, summary.best_kl) == (1, 0.7, 2.5)
    assert summary.best_number == best.number and summary.best_value == best.values[0]
    assert summary.missing == 8 - 5  # 4 COMPLETE and 1 PRUNED count; interrupted, running: not
    assert [r.number for r in summary.trials] == [r.number for r in trial_rows(study)]
    assert summary.choice is not None and summary.choice.trial.number == 1
    assert summary.parent_run_id == "parent" and summary.ran == 0 and summary.wall_seconds == 1.0
