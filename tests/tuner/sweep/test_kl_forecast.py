"""kl_limit.forecast in a real sweep (local Ray, the study, MLflow) of an external trainer whose KL rises
5 nats a step (tests/external_trainer.py): stopped at step 2, recorded infeasible as kl_forecast."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from tests.sweep_helpers import tuner
from tuner.spec import load_spec
from tuner.sweep import best_feasible, load_study, trial_rows

SCRIPT = Path(__file__).resolve().parents[2] / "external_trainer.py"

pytestmark = pytest.mark.slow  # one real `tuner run`: about 40 s


def test_a_forecast_stop_is_infeasible_with_its_own_reason(tmp_path):
    spec = {"name": "forecast",
            "trial": {"engine": "command", "report_timeout": "10s", "stop_grace": 1,
                      "command": [sys.executable, str(SCRIPT), "--lr", "{policy_lr}", "--steps", "{num_iterations}",
                                  "--step-seconds", "0.05"]},
            "search_space": {"policy_lr": {"choices": [5e-4, 1e-5]}},  # KL 5 nats a step; 0.1 a step
            "kl_limit": {"nats": 15, "forecast": True},
            "budget": {"trials": 2, "iterations": 4}, "scheduler": {"type": "none"}, "sampler": {"type": "grid"},
            "resources": {"max_concurrent": 2}, "ray": {"num_cpus": 2}, "workdir": str(tmp_path / "sweeps")}
    path = tmp_path / "forecast.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = tuner("run", path, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = load_study(load_spec(path))
    rows = {r.params["policy_lr"]: r for r in trial_rows(study)}
    rising, calm = rows[5e-4], rows[1e-5]
    assert (rising.state, rising.stop_reason, rising.iterations, rising.kl_max) == (
        "INFEASIBLE", "kl_forecast", 2, 10.0)
    assert {t.number: t for t in study.trials}[rising.number].constraints["kl"] > 0
    assert (calm.state, calm.stop_reason, calm.iterations) == ("COMPLETE", "completed", 4)
    assert best_feasible(study).number == calm.number
    assert f"trial {rising.number}: forecast to pass the 15-nat limit at iteration 2" in proc.stdout
