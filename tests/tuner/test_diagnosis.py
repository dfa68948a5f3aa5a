"""The diagnosis rules on recorded trajectories: real runs of our engine (tests/tuner/diagnosis/, recorded
by its record.py) and the 360 recorded learning curves of bench/data/demo_curves.jsonl. Each rule is
shown a trajectory that has its problem and ones that must not trigger it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trials import KLLimit
from trials import metrics as K
from tuner.diagnosis import RULES, Trajectory, diagnose, region, render

HERE = Path(__file__).resolve().parent
RUNS = json.loads((HERE / "diagnosis" / "trajectories.json").read_text())
TABLE = HERE.parents[1] / "bench" / "data" / "demo_curves.jsonl"


def run(name: str, number: int = 0, **engine) -> Trajectory:
    """A recorded engine run as a trial that ran to its end."""
    rec = RUNS[name]
    metrics = {k: [float("nan") if v is None else v for v in vs] for k, vs in rec["metrics"].items()}
    return Trajectory(number=number, params={}, metrics=metrics, stop_reason="completed",
                      engine={**rec["engine"], **engine})


def table(limit: float = 15.0) -> list[Trajectory]:
    """Every recorded curve as a trial of a sweep would record it: stopped by the KL limit where it passed."""
    out = []
    for number, line in enumerate(TABLE.read_text().splitlines()):
        row = json.loads(line)
        stopper, kl = KLLimit(limit), []
        for i, value in enumerate(row["kl"], start=1):
            kl.append(value)
            if stopper(i, {K.KL: value}):
                break
        out.append(Trajectory(number=number, params=row["params"], metrics={K.KL: kl},
                              stop_reason="kl_limit" if stopper.stopped else "completed"))
    return out


def shows(rule: str, trajectory: Trajectory, limit: float = 15.0) -> str:
    return RULES[rule].shows(trajectory, limit)


@pytest.mark.parametrize(("rule", "showing", "not_showing"), [
    ("kl_exploding", ["aggressive"], ["sane", "tame", "value_lr_high"]),
    ("kl_near_zero", ["tame"], ["sane", "aggressive", "many_epochs_tight_clip"]),
    ("value_unstable", ["top_k_3", "value_lr_high"], ["aggressive", "greedy_k1"]),
    ("high_clipfrac", ["many_epochs_tight_clip", "aggressive"], ["sane", "tame", "greedy_k1"]),
    ("negative_kl", ["greedy_entropy_k1"], ["sane", "tame", "greedy_k1", "aggressive"]),
])
def test_each_rule_shows_on_the_runs_that_have_its_problem_only(rule, showing, not_showing):
    assert all(shows(rule, run(name)) for name in showing), [(n, shows(rule, run(n))) for n in showing]
    assert not any(shows(rule, run(name)) for name in not_showing), [(n, shows(rule, run(n))) for n in not_showing]


def test_the_evidence_names_the_numbers():
    assert ("192x" in shows("value_unstable", run("top_k_3"))
            and "iteration 3" in shows("value_unstable", run("top_k_3")))
    assert shows("negative_kl", run("greedy_entropy_k1")) == "KL -0.68 nats at iteration 3 (k1 estimator)"
    assert "clip fraction 0.41" in shows("high_clipfrac", run("many_epochs_tight_clip"))


def test_negative_kl_is_a_k1_problem_only():
    assert not shows("negative_kl", run("greedy_entropy_k1", kl_estimator="k3"))


def test_kl_exploding_on_the_recorded_table_names_where_the_stopped_trials_are():
    trials = table()
    stopped = {t.number for t in trials if t.stop_reason == "kl_limit"}
    finding = next(f for f in diagnose(trials, 15.0) if f.rule == "kl_exploding")
    assert set(finding.trials) == stopped and len(stopped) == 107  # bench/README.md: the limit stops 107 of 360
    assert finding.region[0] == "policy_lr >= 0.0003 (97 of 107 of these trials, 47 of 253 others)"
    assert "raise beta" in finding.advice and "adaptive" in finding.advice


def test_kl_exploding_stays_quiet_where_no_trial_passes_the_limit():
    calm = [t for t in table() if t.params["policy_lr"] <= 3e-5]
    assert calm and not any(t.stop_reason == "kl_limit" for t in calm)
    assert [f.rule for f in diagnose(calm, 15.0)] == []


def test_a_region_needs_flagged_trials_and_others():
    trials = table()[:20]
    assert region(trials, set()) == [] and region(trials, {t.number for t in trials}) == []


def test_render_says_what_to_do_in_the_guidance_words():
    sweep = [run("aggressive", 0), run("tame", 1), run("sane", 2)]
    sweep = [Trajectory(t.number, {"policy_lr": lr}, t.metrics, t.stop_reason, t.engine)
             for t, lr in zip(sweep, (3e-3, 1e-6, 3e-5), strict=True)]
    text = render(diagnose(sweep, 15.0), len(sweep))
    assert text.startswith("## Diagnosis")
    assert ("- KL exploding: 1 of 3 trials (0)" in text
            and "policy_lr >= 0.003 (1 of 1 of these trials, 0 of 2 others)" in text)
    assert "- KL near zero, reward flat: 1 of 3 trials (1)" in text and "policy_lr <= 1e-06" in text
    assert "Adjust β or the adaptive KL target first if the policy diverges too quickly." in text
    assert "None of the problems" in render([], 3) and "No trial" in render([], 0)
