"""Promotion: the search's best feasible configs run again at full length with fresh seeds, in a study of
their own; the export, the summary, `tuner status` and MLflow take the best mean over seeds; an interrupted
promotion resumes with only its missing runs. The fixture's sweep also names a held-out reward."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.sweep_helpers import start_tuner, stop_sweep, sweep_runs, tuner, write_spec
from trials import metrics as K
from tuner.spec import load_spec, parse_spec
from tuner.sweep import load_study
from tuner.sweep._promotion import choose, fresh_seeds, promoted_configs, promotion_name
from tuner.sweep.study import ATTR, open_storage
from tuner.trial import overoptimized

SEARCH = {"trials": 3, "iterations": 3, "promote": {"top_k": 2, "seeds": 2, "iterations": 4}}
GOLD = {"model": "demo", "reward": "trials.demo:reward", "eval_reward": "trials.demo:gold_reward", "prompts": "demo"}
SPACE = {"policy_lr": {"choices": [3.0e-5, 3.0e-4]}, "kl_coef": {"choices": [0.05, 0.01]}}


def _promotion_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    if not Path(url.removeprefix("sqlite:///")).is_file():
        return []
    try:
        return optuna.load_study(study_name=promotion_name(name), storage=open_storage(url)).get_trials(deepcopy=False)
    except KeyError:
        return []


@pytest.fixture(scope="module")
def promoted(tmp_path_factory, demo_model):
    """A small sweep with a held-out reward and its promotion: 3 search trials, then the best 2 configs x 2
    fresh seeds."""
    folder = tmp_path_factory.mktemp("promote")
    spec_path = write_spec(folder, "prom", budget=SEARCH, search_space=SPACE, scheduler={"type": "none"}, trial=GOLD)
    proc = tuner("run", spec_path, cwd=folder)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"spec": load_spec(spec_path), "folder": folder, "proc": proc}


@pytest.mark.slow
def test_an_interrupted_promotion_resumes_with_its_missing_runs_only(tmp_path, demo_model):
    spec_path = write_spec(tmp_path, "halt", budget={**SEARCH, "trials": 2}, search_space=SPACE,
                           scheduler={"type": "none"})
    spec = load_spec(spec_path)
    proc = start_tuner("run", spec_path, cwd=tmp_path, log=tmp_path / "run.log")
    code, log, _ = stop_sweep(proc, tmp_path / "run.log", within=900, ready=lambda: any(
        t.state.is_finished() for t in _promotion_trials(spec.storage_url(), "halt")))
    assert code == 130, log[-3000:]
    assert "promotion runs still to run" in log and "tuner resume" in log
    before = {(t.number, t.user_attrs[ATTR["seed"]]) for t in _promotion_trials(spec.storage_url(), "halt")
              if t.state == TrialState.COMPLETE}
    assert 1 <= len(before) < 4
    exported = tuner("export", "halt", "--workdir", spec.workdir, cwd=tmp_path)  # promotion unfinished: the search's
    assert exported.returncode == 0 and "note: exporting the search's best trial" in exported.stderr
    assert "stage=search" in exported.stdout

    resumed = tuner("resume", "halt", "--workdir", spec.workdir, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"for {4 - len(before)} promotion run" in resumed.stderr  # only the missing ones
    trials = _promotion_trials(spec.storage_url(), "halt")
    ran = [t for t in trials if t.user_attrs.get(ATTR["stop"]) != "interrupted"]
    assert len(ran) == 4 and all(t.state == TrialState.COMPLETE for t in ran)
    assert before <= {(t.number, t.user_attrs[ATTR["seed"]]) for t in ran}  # kept, not run again
    assert len({(t.user_attrs[ATTR["source"]], t.user_attrs[ATTR["seed"]]) for t in ran}) == 4
    exported = tuner("export", "halt", "--workdir", spec.workdir, cwd=tmp_path)
    assert exported.returncode == 0 and "stage=promotion" in exported.stdout and "note:" not in exported.stderr
    assert len(load_study(spec).trials) == 2  # the search was not run again


@pytest.mark.slow  # the promoted sweep (module fixture): 50 s for the four
def test_promotion_runs_the_top_configs_at_full_length_with_unused_seeds(promoted):
    spec = promoted["spec"]
    search = load_study(spec)
    assert len(search.trials) == 3  # the search's study holds the search alone
    search_seeds = {json.loads(t.user_attrs[ATTR["engine"]])["seed"] for t in search.trials}
    feasible = sorted((t for t in search.trials if t.state == TrialState.COMPLETE and t.constraints["kl"] <= 0),
                      key=lambda t: -t.values[0])
    ran = _promotion_trials(spec.storage_url(), "prom")
    assert len(ran) == 4 and all(t.state == TrialState.COMPLETE for t in ran)
    assert "promotion: the best 2 configs x 2 fresh seeds, 4 iterations each" in promoted["proc"].stderr
    assert {t.user_attrs[ATTR["source"]] for t in ran} == {t.number for t in feasible[:2]}
    for t in ran:
        engine = json.loads(t.user_attrs[ATTR["engine"]])
        source = json.loads(search.trials[t.user_attrs[ATTR["source"]]].user_attrs[ATTR["engine"]])
        assert engine["seed"] not in search_seeds and engine["seed"] == t.user_attrs[ATTR["seed"]]
        assert engine["num_iterations"] == 4 and t.user_attrs[ATTR["iterations"]] == 4
        assert {k: v for k, v in engine.items() if k not in ("seed", "num_iterations")} == \
               {k: v for k, v in source.items() if k not in ("seed", "num_iterations")}
        assert t.user_attrs[ATTR["stage"]] == "promotion" and "kl" in t.constraints


@pytest.mark.slow  # with the promoted sweep
def test_export_status_and_summary_take_the_best_mean_over_seeds(promoted):
    spec, folder = promoted["spec"], promoted["folder"]
    search = load_study(spec)
    configs = promoted_configs(spec, search, optuna.load_study(study_name="prom-promotion", storage=spec.storage_url()))
    for c in configs:
        assert c.mean == pytest.approx(statistics.fmean(r.value for r in c.runs)) and len(c.runs) == 2
    best = max((c for c in configs if c.eligible), key=lambda c: c.mean)
    exported = tuner("export", "prom", "--workdir", spec.workdir, "--format", "json", cwd=folder)
    assert exported.returncode == 0, exported.stderr
    source = json.loads(exported.stdout)["source"]
    assert source["stage"] == "promotion" and source["trial"] == best.source
    assert source["mean"] == pytest.approx(best.mean) and "note:" not in exported.stderr
    status = tuner("status", "prom", "--workdir", spec.workdir, cwd=folder)
    assert status.returncode == 0 and "promotion runs (" in status.stdout and "search rank" in status.stdout
    assert f"answer: trial {best.source}'s config, mean {best.mean:.4f}" in status.stdout
    assert f"answer: trial {best.source}'s config" in promoted["proc"].stdout  # the end summary
    assert "search rank" in promoted["proc"].stdout


@pytest.mark.slow  # with the promoted sweep
def test_mlflow_has_tagged_promotion_runs_and_the_table(promoted):
    spec = promoted["spec"]
    client = MlflowClient(spec.tracking_uri())
    (parent,) = sweep_runs(client, spec.experiment_name(), "sweep")
    children = sweep_runs(client, spec.experiment_name(), "promotion")
    promotion = _promotion_trials(spec.storage_url(), "prom")
    assert len(children) == len(promotion) == 4  # one run per promotion trial
    assert all(r.data.tags["ppo_tuner.stage"] == "promotion" and r.info.status != "RUNNING" for r in children)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert {r.data.tags["ppo_tuner.seed"] for r in children} == {str(t.user_attrs[ATTR["seed"]]) for t in promotion}
    configs = promoted_configs(spec, load_study(spec), optuna.load_study(study_name="prom-promotion",
                                                                         storage=spec.storage_url()))
    best = next(c for c in configs if c.rank == 1)
    assert parent.data.metrics["promotion/best_trial"] == best.source
    assert parent.data.metrics[f"promotion/trial_{best.source}/mean"] == pytest.approx(best.mean)
    assert parent.data.tags["ppo_tuner.best_trial"] == str(best.source)
    assert "promotion.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_fresh_seeds_skip_the_used_ones():
    assert fresh_seeds({0}, 0, 2) == [1, 2]
    assert fresh_seeds({0, 1, 2, 5}, 0, 3) == [3, 4, 6]


def _study_with(spec, values: dict[int, float]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for number, value in values.items():
        trial = optuna.trial.create_trial(value=value, system_attrs={"constraints:kl": -1.0},
                                          user_attrs={ATTR["engine"]: json.dumps({"seed": spec.seed})})
        study.add_trial(trial)
        assert study.trials[number].constraints == {"kl": -1.0}
    return study


def _promotion_with(results: list[tuple[int, int, float, float]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for source, seed, value, kl in results:
        study.add_trial(optuna.trial.create_trial(value=value, system_attrs={"constraints:kl": kl},
                                                  user_attrs={ATTR["source"]: source, ATTR["seed"]: seed}))
    return study


def test_a_config_infeasible_in_one_seed_cannot_be_the_answer():
    spec = parse_spec({"name": "rank", "budget": {"trials": 3, "promote": {"top_k": 2, "seeds": 2}}})
    search = _study_with(spec, {0: 0.9, 1: 0.5, 2: 0.1})
    # trial 0 (search rank 1) passes the KL limit in seed 2; trial 1 holds in both
    promotion = _promotion_with([(0, 1, 0.95, -1.0), (0, 2, 0.97, 3.0), (1, 1, 0.6, -1.0), (1, 2, 0.4, -2.0)])
    configs = promoted_configs(spec, search, promotion)
    assert [c.source for c in configs] == [0, 1] and [c.search_rank for c in configs] == [1, 2]
    assert configs[0].rank is None and "seed 2 INFEASIBLE" in configs[0].verdict
    assert (configs[1].rank == 1 and configs[1].mean == pytest.approx(0.5)
            and configs[1].spread == pytest.approx(math.sqrt(0.02)))
    choice = choose(spec, search, configs)
    assert choice.stage == "promotion" and choice.trial.number == 1


def test_the_answer_falls_back_to_the_search_only_where_promotion_did_not_finish():
    spec = parse_spec({"name": "rank", "budget": {"trials": 3, "promote": {"top_k": 1, "seeds": 2}}})
    search = _study_with(spec, {0: 0.9, 1: 0.5})
    half = promoted_configs(spec, search, _promotion_with([(0, 1, 0.9, -1.0)]))
    choice = choose(spec, search, half)
    assert choice.stage == "search" and "tuner resume rank" in choice.note
    none_feasible = promoted_configs(spec, search, _promotion_with([(0, 1, 0.9, -1.0), (0, 2, 0.9, 2.0)]))
    assert choose(spec, search, none_feasible) is None
    off = parse_spec({"name": "rank", "budget": {"trials": 3, "promote": {"top_k": 0}}})
    assert promoted_configs(off, search, None) == [] and "promotion is off" in choose(off, search, []).note


def test_promotion_defaults_and_a_bad_value(tmp_path, run_cli):
    assert parse_spec({"name": "a", "budget": {"trials": 20}}).promote_top_k() == 3
    assert parse_spec({"name": "a", "budget": {"trials": 8}}).promote_top_k() == 2
    assert parse_spec({"name": "a", "budget": {"trials": 2}}).promote_top_k() == 0
    spec = parse_spec({"name": "a", "budget": {"iterations": 9, "promote": None}})
    assert spec.promote_iterations() == 9 and spec.budget.promote.seeds == 2
    assert spec.resolved()["budget"]["promote"] == {"top_k": 2, "iterations": 9, "seeds": 2}
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nbudget:\n  promote:\n    seeds: 0\n")
    code, out, err = run_cli("validate", bad)
    assert code == 2 and "budget.promote.seeds" in err and "Traceback" not in err


@pytest.mark.slow  # with the promoted sweep
def test_the_held_out_reward_is_the_objective_and_is_plotted_against_kl(promoted):
    spec = promoted["spec"]
    assert spec.objective.metric == K.EVAL_GOLD  # the default where trial.eval_reward is set
    search = load_study(spec)
    client = MlflowClient(spec.tracking_uri())
    for t in (t for t in search.trials if t.user_attrs[ATTR["iterations"]] == 3):  # ran to its end
        evals = t.user_attrs[ATTR["evals"]]
        assert [e[0] for e in evals] == [0, 2, 3]  # before any update, every eval_interval (2), the last
        assert t.values[0] == evals[-1][2] == t.user_attrs[ATTR["gold"]]  # score: the final held-out reward
        assert t.user_attrs[ATTR["eval"]] == evals[-1][1]
        history = client.get_metric_history(t.user_attrs[ATTR["mlflow_run"]], K.EVAL_GOLD)
        assert sorted(m.step for m in history) == [0, 2, 3]
    (parent,) = sweep_runs(client, spec.experiment_name(), "sweep")
    assert "heldout_vs_kl.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    flagged = [t.number for t in search.trials if overoptimized(t.user_attrs[ATTR["evals"]])]
    assert parent.data.metrics["trials_overoptimized"] == len(flagged)
    assert "held-out" in promoted["proc"].stderr + promoted["proc"].stdout  # the table's column


def test_over_optimization_is_a_rise_of_the_training_reward_past_the_held_out_peak():
    assert overoptimized([[0, 0.1, 0.2], [3, 0.3, 0.4], [6, 0.5, 0.3]])  # held-out peaked at 3, then fell
    assert overoptimized([[0, 0.1, 0.2], [3, 0.3, 0.1]])  # fell from the start while training rose
    assert not overoptimized([[0, 0.1, 0.2], [3, 0.3, 0.4], [6, 0.5, 0.5]])  # both rose
    assert not overoptimized([[0, 0.1, 0.2], [3, 0.05, 0.1]])  # both fell: worse, not over-optimized
    assert not overoptimized([[0, 0.1, 0.2]])  # one evaluation says nothing
    assert not overoptimized([[0, math.nan, 0.2], [3, 0.3, 0.1]])
