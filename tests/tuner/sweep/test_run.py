"""A real sweep: local Ray, an Optuna study in SQLite, an MLflow store in SQLite, the demo model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.sweep_helpers import sweep_runs, tuner, write_spec
from trials import metrics as K
from tuner.spec import load_spec
from tuner.sweep import best_feasible, load_study, trial_rows


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, demo_model):
    folder = tmp_path_factory.mktemp("sweep")
    spec_path = write_spec(folder, "grid6", base={"checkpoint_every": 2})  # trials save after 2 and 4 of 6
    proc = tuner("run", spec_path, cwd=folder)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    spec = load_spec(spec_path)
    return {"folder": folder, "spec": spec, "spec_path": spec_path, "proc": proc, "study": load_study(spec)}


def test_the_sweep_finishes_every_trial(sweep):
    rows = trial_rows(sweep["study"])
    assert len(rows) == 6
    assert all(r.state in ("COMPLETE", "INFEASIBLE", "PRUNED") for r in rows), [
        (r.number, r.state, r.stop_reason) for r in rows]
    assert "Traceback" not in sweep["proc"].stderr
    assert "best feasible: trial" in sweep["proc"].stdout and "controller overhead" in sweep["proc"].stdout


def test_no_trial_leaves_a_checkpoint_behind(sweep):
    """Every trial saved checkpoints (unless it stopped before iteration 2) and ended: ASHA ends a trial at
    its last report, a cut or the KL limit at another; none keeps a checkpoint or its emptied folder."""
    assert any(r.iterations >= 2 for r in trial_rows(sweep["study"]))
    trials = sweep["spec"].sweep_dir() / "trials"
    assert sorted(str(p.relative_to(trials)) for p in trials.rglob("checkpoints*")) == []


def test_kl_limit_trials_are_infeasible_and_never_best(sweep):
    study = sweep["study"]
    rows = trial_rows(study)
    stopped = [r for r in rows if r.stop_reason == "kl_limit"]
    assert stopped, [(r.number, r.state, r.kl_max) for r in rows]
    for r in stopped:
        assert r.state == "INFEASIBLE" and r.kl_max > 15
        assert r.iterations < 6  # stopped within the iteration that passed the limit
    assert all(r.stop_reason == "kl_limit" for r in rows if r.params["policy_lr"] == 3e-3)
    frozen = {t.number: t for t in study.trials}
    assert all(frozen[r.number].constraints["kl"] > 0 for r in stopped)
    best = best_feasible(study)
    assert best is not None and best.user_attrs["kl_max"] <= 15
    assert best.number not in {r.number for r in stopped}


def test_asha_cuts_are_pruned_not_complete(sweep):
    for r in trial_rows(sweep["study"]):
        if r.state == "PRUNED":
            assert r.stop_reason == "pruned" and r.iterations < 6
        if r.state == "COMPLETE":
            assert r.iterations == 6 and r.stop_reason == "completed"


def test_mlflow_has_one_parent_and_one_child_run_per_trial(sweep):
    spec = sweep["spec"]
    client = MlflowClient(spec.tracking_uri())
    parents = sweep_runs(client, spec.experiment_name(), "sweep")
    children = sweep_runs(client, spec.experiment_name(), "trial")
    assert len(parents) == 1 and len(children) == 6
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    states = {r.number: r.state for r in trial_rows(sweep["study"])}
    for child in children:
        number = int(child.data.tags["ppo_tuner.trial_number"])
        assert child.data.tags["ppo_tuner.state"] == states[number]
        assert "policy_lr" in child.data.params and "kl_coef" in child.data.params
        history = client.get_metric_history(child.info.run_id, K.KL)
        iterations = {r.number: r.iterations for r in trial_rows(sweep["study"])}[number]
        assert sorted(m.step for m in history) == list(range(1, iterations + 1))
    assert parent.data.metrics["trials_infeasible"] >= 1 and parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"spec.yaml", "kl_trajectories.png", "reward_vs_kl.png", "best_config.yaml"} <= artifacts


def test_yaml_export_goes_back_into_the_engine(sweep, tmp_path):
    from trials import train
    from tuner.cli._config_file import load_config_file

    out = tmp_path / "best.yaml"
    proc = tuner("export", sweep["spec_path"], "--format", "yaml", "-o", out, cwd=sweep["folder"])
    assert proc.returncode == 0, proc.stderr
    best = best_feasible(sweep["study"])
    config = load_config_file(out)
    assert config.to_dict() == json.loads(best.user_attrs["engine_config"])
    assert train(config.replace(num_iterations=1)).iterations == 1


def test_other_exports_run_from_the_cli(sweep):
    for fmt in ("json", "openrlhf", "verl", "trl"):
        proc = tuner("export", "grid6", "--workdir", sweep["spec"].workdir, "--format", fmt, cwd=sweep["folder"])
        assert proc.returncode == 0 and proc.stdout.strip(), (fmt, proc.stderr)
    proc = tuner("export", "grid6", "--workdir", sweep["spec"].workdir, "--format", "docx", cwd=sweep["folder"])
    assert proc.returncode == 2 and "--format" in proc.stderr and "Traceback" not in proc.stderr


def test_status_and_list_read_the_study(sweep):
    workdir = sweep["spec"].workdir
    status = tuner("status", "grid6", "--workdir", workdir, cwd=sweep["folder"])
    assert status.returncode == 0 and "INFEASIBLE" in status.stdout
    listing = tuner("list", "--workdir", workdir, cwd=sweep["folder"])
    assert listing.returncode == 0 and "grid6" in listing.stdout and "best=" in listing.stdout
    missing = tuner("status", "nope", "--workdir", workdir, cwd=sweep["folder"])
    assert missing.returncode == 2 and "grid6" in missing.stderr


def test_the_saved_spec_reloads_with_absolute_paths(sweep):
    saved = yaml.safe_load((sweep["spec"].sweep_dir() / "spec.yaml").read_text())
    assert saved["workdir"].startswith("/")
    assert load_spec(sweep["spec"].sweep_dir() / "spec.yaml").storage_url() == sweep["spec"].storage_url()


def test_running_the_same_spec_again_runs_nothing_new(sweep):
    proc = tuner("run", sweep["spec_path"], cwd=sweep["folder"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sweep grid6 is already complete: its 6 trials have run, nothing to do" in proc.stdout
    assert "starting a local Ray" not in proc.stderr  # nothing is checked or started for a finished sweep
    assert len(optuna.load_study(study_name="grid6", storage=sweep["spec"].storage_url()).trials) == 6


def _live_scores(stderr: str) -> dict[int, float]:
    """trial number -> the score its 'trial N: STATE ... score X' line showed while the sweep ran."""
    return {int(m.group(1)): float(m.group(2))
            for m in re.finditer(r"^trial (\d+): \w+ +iter \d+ +score (\S+)", stderr, re.M)}


def test_one_score_per_trial_the_one_the_scheduler_judged(sweep):
    """A pruned trial's value in the study (status, plots, the final table) is the score of its last
    report, as the live table showed it, not the evaluation before."""
    study, live = sweep["study"], _live_scores(sweep["proc"].stderr)
    client = MlflowClient(sweep["spec"].tracking_uri())
    ran = [t for t in study.trials if t.values]
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in ran), "the grid should have ASHA cuts"
    for t in ran:
        history = sorted((m.step, m.value)
                         for m in client.get_metric_history(
                             t.user_attrs["mlflow_run_id"], "objective"))
        assert t.values[0] == pytest.approx(history[-1][1]), (t.number, t.state)
        assert f"{t.values[0]:.3f}" == f"{live[t.number]:.3f}", (t.number, t.state)


def test_status_shows_reward_and_eval_and_a_piped_table_is_not_cut(sweep):
    status = tuner("status", "grid6", "--workdir", sweep["spec"].workdir, cwd=sweep["folder"])
    rows = [line.split("│")[1:-1] for line in status.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 6
    for cells in rows:
        reward, evaluation = cells[3].strip(), cells[4].strip()
        assert reward != "-" and evaluation != "-", cells
    for out in (status.stdout, sweep["proc"].stderr):  # both went to a pipe
        assert "INFEASIBLE" in out and "reward" in out and "…" not in out


def test_the_run_says_what_it_does_before_the_first_trial(sweep):
    err = sweep["proc"].stderr
    assert "checking the model, tokenizer, prompts and reward" in err
    assert "starting a local Ray for 6 trials, 2 at a time" in err
    assert "loss_type" not in err
    lines = err.splitlines()  # piped: between Ray's start and the first result, lines say what happens
    ray_up = lines.index("Ray is up: starting the trials' workers (each loads torch and its model before its "
                         "first report) ...")
    first_result = next(i for i, line in enumerate(lines) if line.startswith("trial ") and " iter " in line)
    assert ray_up < first_result and any(line.startswith("trial 0: started (policy_lr=")
                                         for line in lines[ray_up:first_result]), err[:3000]


def test_each_trial_run_shows_its_state_and_its_curves_start_at_step_0(sweep):
    client = MlflowClient(sweep["spec"].tracking_uri())
    experiment = client.get_experiment_by_name("grid6")
    children = sweep_runs(client, "grid6", "trial")
    status = {"COMPLETE": "FINISHED", "INFEASIBLE": "FAILED", "PRUNED": "KILLED"}
    for run in children:
        state = run.data.tags["ppo_tuner.state"]
        assert run.info.run_name == f"trial-{run.data.tags['ppo_tuner.trial_number']} {state}"
        assert run.info.status == status[state], (run.info.run_name, run.info.status)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, K.EVAL_SCORES)]
        assert 0 in steps  # the evaluation before any update
        assert K.LR_POLICY not in run.data.metrics and 1 < run.data.metrics[f"{K.LR_POLICY}_x1e6"] < 1e5
    view = json.loads(experiment.tags["mlflow.sharedViewState.ppo-tuner-trials"])
    assert "metrics.`objective`" in view["selectedColumns"] and "params.`policy_lr`" in view["selectedColumns"]
    assert view["orderByKey"] == "attributes.start_time" and view["orderByAsc"] is True  # trials in launch order


def test_the_run_ends_with_the_diagnosis_and_tuner_diagnose_repeats_it(sweep, run_cli):
    out = sweep["proc"].stdout
    assert "## Diagnosis" in out, out[-3000:]
    section = out[out.index("## Diagnosis"):out.index("\nsweep folder:")]
    stopped = sorted(r.number for r in trial_rows(sweep["study"]) if r.stop_reason == "kl_limit")
    line = next(x for x in section.splitlines() if x.startswith("- KL exploding"))
    assert line.endswith(f"of 6 trials ({', '.join(map(str, stopped))})"), section
    assert "where: policy_lr >= " in section and "do: raise beta (kl_coef)" in section
    code, out, err = run_cli("diagnose", "grid6", "--workdir", sweep["spec"].workdir)  # in process: no second start-up
    assert code == 0 and out == f"sweep grid6\n\n{section}", out + err
    spec = sweep["spec"]
    client = MlflowClient(spec.tracking_uri())
    parent = sweep["study"].user_attrs["mlflow_parent_run_id"]
    saved = Path(client.download_artifacts(parent, "diagnosis.md", str(sweep["folder"])))
    assert saved.read_text() == f"# Sweep grid6\n\n{section}"
    tag = client.get_run(parent).data.tags["ppo_tuner.diagnosis"]
    assert tag.startswith(f"KL exploding: {len(stopped)} of 6 trials"), tag
    code, out, err = run_cli("diagnose", "nope", "--workdir", spec.workdir)
    assert code == 2 and "grid6" in err and "Traceback" not in err
