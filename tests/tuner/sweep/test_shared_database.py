"""Two sweeps at once on one study database (SQLite, PostgreSQL) and one MLflow store: no
'database is locked', nothing lost."""

from __future__ import annotations

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.sweep_helpers import start_tuner, sweep_runs, write_spec


@pytest.mark.slow  # two sweeps at once: 59 s on SQLite, 38 s on PostgreSQL
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_sweeps_share_one_database(tmp_path, demo_model, backend, request):
    if backend == "sqlite":
        storage = f"sqlite:///{tmp_path / 'shared-study.db'}"
    else:
        storage = request.getfixturevalue("postgres").create_db("shared_study")
    tracking = f"sqlite:///{tmp_path / 'shared-mlflow.db'}"
    procs = []
    for name in ("left", "right"):
        path = write_spec(tmp_path, name, storage=storage, mlflow={"tracking_uri": tracking},
                          budget={"trials": 4, "iterations": 4}, scheduler={"type": "none"},
                          resources={"cpus_per_trial": 1, "max_concurrent": 1}, ray={"num_cpus": 1})
        procs.append((name, start_tuner("run", path, cwd=tmp_path, log=tmp_path / f"{name}.log")))
    for name, proc in procs:
        code = proc.wait(timeout=900)
        log = (tmp_path / f"{name}.log").read_text()
        assert code == 0, log[-3000:]
        assert "database is locked" not in log and "Traceback" not in log
    client = MlflowClient(tracking)
    for name, _ in procs:
        trials = optuna.load_study(study_name=name, storage=storage).trials
        assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
        children = {int(r.data.tags["ppo_tuner.trial_number"]): r
                    for r in sweep_runs(client, name, "trial")}
        assert sorted(children) == [t.number for t in trials]
        for t in trials:  # every iteration a trial ran is in its run (KL-limit stops end early)
            history = client.get_metric_history(children[t.number].info.run_id, "objective/kl")
            assert sorted(m.step for m in history) == list(range(1, t.user_attrs["iterations"] + 1))
