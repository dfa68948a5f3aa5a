"""optuna-dashboard through FeasibleView: a real SQLite study, the dashboard's real WSGI app."""

from __future__ import annotations

import json
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna.trial import TrialState

from tests.sweep_helpers import write_spec
from tuner.spec import load_spec
from tuner.sweep import best_feasible, dashboard_app

pytest.importorskip("optuna_dashboard")

# (objective, kl constraint = max KL - limit, state): the highest objective is the one past the KL limit
TRIALS = [(0.30, -4.0, TrialState.COMPLETE), (0.90, 6.5, TrialState.COMPLETE), (0.50, -1.0, TrialState.COMPLETE),
          (0.20, -9.0, TrialState.PRUNED)]


def _study(tmp_path, trials):
    spec = load_spec(write_spec(tmp_path, "dash"))
    spec.sweep_dir().mkdir(parents=True)
    study = optuna.create_study(study_name=spec.name, storage=spec.storage_url(), direction="maximize")
    for value, kl, state in trials:
        trial = study.ask()
        trial.report(value, step=1)
        trial.set_constraint("kl", kl)  # as the sweep records it
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    return spec, study


def _get(app, path: str) -> tuple[str, dict]:
    environ: dict = {}
    setup_testing_defaults(environ)
    environ.update(PATH_INFO=path, REQUEST_METHOD="GET")
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], json.loads(body)


def _detail(app, study) -> dict:
    study_id = study._study_id
    status, detail = _get(app, f"/api/studies/{study_id}")
    assert status.startswith("200"), detail
    return detail


def test_the_dashboard_reads_the_kl_constraint_and_picks_the_best_feasible_trial(tmp_path):
    spec, study = _study(tmp_path, TRIALS)
    detail = _detail(dashboard_app(spec), study)
    shown = {t["number"]: t["constraints"] for t in detail["trials"]}
    assert shown == {0: [-4.0], 1: [6.5], 2: [-1.0], 3: [-9.0]}  # the list optuna-dashboard 0.21 reads
    assert [t["number"] for t in detail["best_trials"]] == [best_feasible(study).number] == [2]


def test_the_study_itself_keeps_one_kl_constraint_per_trial(tmp_path):
    spec, study = _study(tmp_path, TRIALS)
    _detail(dashboard_app(spec), study)  # reading through the dashboard writes nothing
    for trial in optuna.load_study(study_name=spec.name, storage=spec.storage_url()).trials:
        assert list(trial.constraints) == ["kl"]
        assert "constraints" not in trial.system_attrs


def test_a_study_without_a_feasible_complete_trial_has_no_best_trial_there(tmp_path):
    spec, study = _study(tmp_path, [(0.9, 3.0, TrialState.COMPLETE), (0.2, -1.0, TrialState.PRUNED)])
    assert _detail(dashboard_app(spec), study)["best_trials"] == []


def test_plain_optuna_dashboard_shows_every_trial_feasible(tmp_path):
    """Why the view exists (and what the README says of plain optuna-dashboard): it fails once a release reads
    Optuna 5's named constraints, and the view can go."""
    from optuna_dashboard import wsgi

    spec, study = _study(tmp_path, TRIALS)
    detail = _detail(wsgi(spec.storage_url()), study)
    assert all(t["constraints"] == [] for t in detail["trials"])
    assert [t["number"] for t in detail["best_trials"]] == [1]  # the infeasible one


def test_a_port_in_use_is_one_line_and_exit_code_2(tmp_path, capsys):
    import socket

    from tuner.cli import main

    _study(tmp_path, TRIALS)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["dashboard", str(tmp_path / "dash.yaml"), "--port", str(port)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --port: ") and f"(got {port})" in err[0], err
