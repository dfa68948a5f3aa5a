"""Load: four sweeps submitted at once to one compose cluster (tests/compose_cluster.py), sharing its
PostgreSQL and its MLflow server. Every job succeeds, no log of a driver or a service shows a lock or
connection error, and the real stores account for every trial: its study in PostgreSQL, a parent run
and one child run per trial on the MLflow server, nothing left RUNNING."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import optuna
import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.cluster_helpers import cluster_spec, submit, tuner
from tuner.cluster import list_jobs
from tuner.sweep._tracking import TAG
from tuner.sweep.study import ATTR
from tuner.trial import OBJECTIVE

SWEEPS = 4
TRIALS = 3
# what a lock or a connection problem prints, in a driver's log, MLflow's or PostgreSQL's
TROUBLE = re.compile(r"database is locked|deadlock|could not obtain lock|lock timeout|too many (clients|connections)"
                     r"|remaining connection slots|connection refused|server closed the connection|could not connect"
                     r"|connection (reset|timed out|aborted)|OperationalError|QueuePool limit|Max retries exceeded"
                     r"|Traceback|error:", re.I)
MLFLOW_STATUS = {"COMPLETE": "FINISHED", "INFEASIBLE": "FAILED", "PRUNED": "KILLED"}


# PostgreSQL logs, as ERROR, a unique violation that its client catches and handles: Optuna's create_study with
# load_if_exists (the study exists: it is loaded) and MLflow's batch insert of metrics (a retried request's
# rows exist: MLflow inserts the others). Neither is a lock or a connection problem, and nothing is lost.
HANDLED = re.compile(r'duplicate key value violates unique constraint "(ix_studies_study_name|metric_pk)"')


def _trouble(text: str) -> list[str]:
    return [line for line in text.splitlines() if TROUBLE.search(line) and not HANDLED.search(line)]


def test_the_trouble_pattern_finds_what_a_lock_or_connection_problem_prints():
    for line in ('sqlalchemy.exc.OperationalError: (psycopg.OperationalError) connection failed',
                 '2026-11-30 00:01:02 UTC [123] FATAL:  sorry, too many clients already',
                 '2026-11-30 00:01:02 UTC [123] ERROR:  deadlock detected',
                 'sqlite3.OperationalError: database is locked',
                 "urllib3 ... Max retries exceeded with url: /api/2.0/mlflow/runs/create",
                 'error: the study database did not answer for 120 s'):
        assert _trouble(f"trial 1: COMPLETE\n{line}\n") == [line]
    assert not _trouble("trial 3: COMPLETE   iter 3  score 0.41  KL max 0.02  (budget)")
    assert not _trouble('2026-11-30 01:46:45.208 UTC [9875] ERROR:  duplicate key value violates '
                        'unique constraint "metric_pk"')
    unhandled = ('2026-11-30 01:46:45.208 UTC [9875] ERROR:  duplicate key value violates unique '
                 'constraint "trials_pkey"')
    assert _trouble(unhandled) == [unhandled]


class _Connections(threading.Thread):
    """The most client connections PostgreSQL held at once, polled every second until stop()."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        self.peak, self.done = 0, threading.Event()

    def run(self) -> None:
        query = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
        while not self.done.wait(1.0):
            with self.engine.connect() as conn:
                self.peak = max(self.peak, conn.execute(query).scalar() - 1)  # less this query's own

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak


@pytest.mark.slow
def test_four_sweeps_at_once_share_one_database_and_one_tracking_server(compose_cluster, tmp_path, monkeypatch):
    cluster = compose_cluster
    names = [f"load-{i}" for i in range(SWEEPS)]
    specs = [cluster_spec(cluster, tmp_path / name, name, budget={"trials": TRIALS, "iterations": 3},
                          resources={"cpus_per_trial": 1, "max_concurrent": 2}) for name in names]
    env = cluster.client_env()
    connections = _Connections(cluster.storage_url("optuna"))
    with connections.engine.connect() as conn:  # the server runs with the compose service's settings
        assert f"max_connections={conn.execute(sqlalchemy.text('SHOW max_connections')).scalar()}" in \
            cluster.services["postgres"]["command"]
    connections.start()
    with ThreadPoolExecutor(SWEEPS) as pool:  # submitted at once, followed at once
        jobs = list(pool.map(lambda spec: submit(cluster, spec), specs))
        follows = list(pool.map(lambda job: tuner("logs", job, "--follow", "--address", cluster.dashboard,
                                                  env=env, cwd=tmp_path, timeout=900), jobs))
    print(f"PostgreSQL: at most {connections.stop()} client connections at once (all databases)")
    monkeypatch.setenv("RAY_AUTH_TOKEN", cluster.secrets["RAY_AUTH_TOKEN"])
    rows = [row for row in list_jobs(cluster.dashboard) if row.job_id in jobs]
    # 4 drivers at once
    assert (len(rows) == SWEEPS
            and max(r.start_time for r in rows) < min(r.end_time for r in rows)), rows
    for name, job, follow in zip(names, jobs, follows, strict=True):
        assert follow.returncode == 0 and f"job {job}: SUCCEEDED" in follow.stderr, \
            f"{name}:\n{follow.stdout[-4000:]}\n{follow.stderr[-2000:]}"
        assert f"sweep {name}: {TRIALS} trials run" in follow.stdout, follow.stdout[-3000:]
        assert not _trouble(follow.stdout), f"{name}: {_trouble(follow.stdout)}"
    services = {log.name: log.read_text(errors="replace") for log in
                (cluster.folder / "mlflow.log", cluster.pg.folder / "log")}
    for log, text in services.items():
        assert not _trouble(text), f"{log}: {_trouble(text)[:20]}"

    storage = cluster.storage_url("optuna")
    studies = [s.study_name for s in optuna.get_all_study_summaries(storage)]  # the cluster's other tests' too
    assert sorted(n for n in studies if n.startswith("load-")) == names
    client = MlflowClient(cluster.tracking_uri)
    windows = []
    for name in names:
        trials = optuna.load_study(study_name=name, storage=storage).trials
        windows.append((min(t.datetime_start for t in trials), max(t.datetime_complete for t in trials)))
        ran = [t for t in trials if ATTR["duplicate"] not in t.user_attrs]  # repeats are told, not run
        assert len(ran) == TRIALS and all(t.state == TrialState.COMPLETE for t in ran), \
            [(t.number, t.state) for t in trials]
        experiment = client.get_experiment_by_name(name)
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
        parents = [r for r in runs if r.data.tags.get(TAG["kind"]) == "sweep"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        children = [r for r in runs if r.data.tags.get(TAG["kind"]) == "trial"]
        assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
        by_number = {int(r.data.tags[TAG["number"]]): r for r in children}
        assert len(by_number) == len(children) == TRIALS and set(by_number) == {t.number for t in ran}
        for trial in ran:
            child = by_number[trial.number]
            assert child.info.status == MLFLOW_STATUS[child.data.tags[TAG["state"]]]
            assert len(client.get_metric_history(child.info.run_id, OBJECTIVE)) >= 1
    print("the sweeps' trials ran from/to:", [(a.strftime("%T"), b.strftime("%T")) for a, b in windows])
