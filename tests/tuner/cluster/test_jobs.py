"""Sweeps as Ray jobs on the compose cluster: two at once on one database, cancel and resume, and the
one-line errors of `tuner logs | cancel | jobs` against a real cluster."""

from __future__ import annotations

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.cluster_helpers import cluster_spec, submit, tuner, wait_for
from tests.sweep_helpers import sweep_runs

pytestmark = pytest.mark.slow


def _study(cluster, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=cluster.storage_url("optuna"))


def _follow(cluster, job_id: str, cwd) -> str:
    done = tuner("logs", job_id, "--follow", "--address", cluster.dashboard, env=cluster.client_env(), cwd=cwd)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return done.stdout


def test_two_sweeps_at_once_on_one_database_both_complete(compose_cluster, tmp_path):
    names = ["twin-a", "twin-b"]
    jobs = [submit(compose_cluster, cluster_spec(compose_cluster, tmp_path / n, n,
                                                 resources={"max_concurrent": 1})) for n in names]
    for job_id in jobs:
        _follow(compose_cluster, job_id, tmp_path)
    client = MlflowClient(compose_cluster.tracking_uri)
    for name in names:
        trials = [t for t in _study(compose_cluster, name).trials if "duplicate_of" not in t.user_attrs]
        assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials), name
        runs = sweep_runs(client, name, "trial")
        assert len(runs) == 4
    summaries = optuna.get_all_study_summaries(compose_cluster.storage_url("optuna"))
    assert set(names) <= {s.study_name for s in summaries}


def _done(cluster, name: str) -> int:
    try:
        return sum(t.state == TrialState.COMPLETE for t in _study(cluster, name).get_trials(deepcopy=False))
    except KeyError:
        return 0


def _cancel(cluster, job_id: str, name: str, cwd) -> dict[int, TrialState]:
    """`tuner cancel`, then check that its trials stopped and were recorded; returns the trials' states."""
    done = tuner("cancel", job_id, "--address", cluster.dashboard, env=cluster.client_env(), cwd=cwd)
    assert done.returncode == 0 and f"job {job_id}: STOPPED" in done.stdout, done.stdout + done.stderr
    log = tuner("logs", job_id, "--address", cluster.dashboard, env=cluster.client_env(), cwd=cwd).stdout
    # the driver stopped as on Ctrl-C: what ran is recorded (the stop may come after the last trial)
    assert "tuner resume" in log or "nothing is left to run" in log, log[-3000:]
    states = {t.number: t.state for t in _study(cluster, name).trials}
    assert TrialState.RUNNING not in states.values(), states
    experiment = MlflowClient(cluster.tracking_uri).get_experiment_by_name(name)
    runs = MlflowClient(cluster.tracking_uri).search_runs([experiment.experiment_id], max_results=100)
    assert all(r.info.status != "RUNNING" for r in runs)
    return states


def test_a_cancelled_sweep_continues_when_submitted_again_or_resumed(compose_cluster, tmp_path):
    cluster, name = compose_cluster, "cancel-me"
    spec = cluster_spec(cluster, tmp_path, name, budget={"trials": 6, "iterations": 6})
    job_id = submit(cluster, spec)
    wait_for(lambda: _done(cluster, name) >= 1, 300, "a first finished trial")
    first = _cancel(cluster, job_id, name, tmp_path)
    finished = sum(s == TrialState.COMPLETE for s in first.values())
    assert finished < 6

    # submitted again, it continues the same study; stopped once more
    job_id = submit(cluster, spec)
    wait_for(lambda: _done(cluster, name) > finished, 300, "one more finished trial")
    second = _cancel(cluster, job_id, name, tmp_path)
    assert all(second[n] == TrialState.COMPLETE for n, s in first.items() if s == TrialState.COMPLETE)

    # resumed from this machine, joining the same cluster (the driver here, the trials on its worker)
    password = cluster.secrets["POSTGRES_PASSWORD"]
    env = cluster.client_env(RAY_ADDRESS=cluster.gcs, RAY_AUTH_MODE="token", PGPASSWORD=password)
    resumed = tuner("resume", spec, env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    study = _study(cluster, name)
    counted = [t for t in study.trials if t.user_attrs.get("stop_reason") != "interrupted"
               and "duplicate_of" not in t.user_attrs]  # a repeat of a config is told, not run, not counted
    assert len(counted) == 6 and all(t.state == TrialState.COMPLETE for t in counted)
    assert all(study.trials[n].state == s for n, s in second.items() if s == TrialState.COMPLETE)  # kept, not rerun
    client = MlflowClient(cluster.tracking_uri)
    runs = sweep_runs(client, name)
    assert len(sweep_runs(client, name, "sweep")) == 1  # the parent run is reused
    assert all(r.info.status != "RUNNING" for r in runs)


def test_jobs_commands_report_bad_input_in_one_line(compose_cluster, tmp_path):
    cluster, env = compose_cluster, compose_cluster.client_env()
    for command in (["logs", "no-such-job"], ["cancel", "no-such-job"]):
        done = tuner(*command, "--address", cluster.dashboard, env=env, cwd=tmp_path)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "JOB: no such job" in done.stderr and "Traceback" not in done.stderr
    wrong = tuner("jobs", "--address", cluster.dashboard, env={**env, "RAY_AUTH_TOKEN": "not-the-token"}, cwd=tmp_path)
    assert wrong.returncode == 2 and "rejected the token" in wrong.stderr and wrong.stderr.count("\n") == 1
    spec = cluster_spec(cluster, tmp_path, "bad-spec", kl_limit=-1)
    bad = tuner("submit", spec, "--address", cluster.dashboard, env=env, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: kl_limit:") and bad.stdout == ""
