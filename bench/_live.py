"""The live check of the sweep replay: one real `tuner run` of the demo grid spec in a scratch directory,
its logged curves against the recorded table, and the replay of the same sweep against its trials."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT
from _curves import SPEC, grid, key
from _replay import simulate


def live_check(spec: Any, table: dict, timeout: float) -> dict[str, Any]:
    """`tuner run` of the grid spec in a scratch directory; its trials against the table and the replay."""
    import optuna
    from mlflow.tracking import MlflowClient

    from tuner.spec import make_sampler

    work = Path(tempfile.mkdtemp(prefix="ppo-live-"))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", "run", str(SPEC)], cwd=work, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"ok": False, "error": proc.stderr[-2000:]}
    sweep_dir = work / "sweeps" / spec.name
    study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{sweep_dir / 'study.db'}")
    client = MlflowClient(tracking_uri=f"sqlite:///{sweep_dir / 'mlflow.db'}")
    runs = {r.data.tags.get("ppo_tuner.trial_number"): r for r in client.search_runs(
        [client.get_experiment_by_name(spec.name).experiment_id], max_results=500)}
    replay = simulate(table, spec, make_sampler(spec), asha=True, kl_limit=True, workers=spec.resources.max_concurrent,
                      max_trials=spec.budget.trials)
    rows, worst_kl, worst_eval = [], 0.0, 0.0
    replayed = {t.number: t for t in replay.trials}
    copies = sum("duplicate_of" in t.user_attrs for t in study.get_trials(deepcopy=False))
    for t in study.get_trials(deepcopy=False):
        if "duplicate_of" in t.user_attrs:  # a config already run: told its outcome, not run (no MLflow run)
            continue
        params = {k: t.params[k] for k in grid(spec)[0]}
        curve = table[key(params)]
        run_id = runs[str(t.number)].info.run_id
        kl = {m.step: m.value for m in client.get_metric_history(run_id, "objective/kl")}
        ev = {m.step: m.value for m in client.get_metric_history(run_id, "eval/scores")}
        worst_kl = max([worst_kl, *(abs(v - curve.kl[s - 1]) for s, v in kl.items())])
        worst_eval = max([worst_eval, *(abs(v - curve.eval[s - 1]) for s, v in ev.items())])
        sim = replayed.get(t.number)
        rows.append({"number": t.number, "params": params, "live_stop": t.user_attrs.get("stop_reason"),
                     "live_iterations": t.user_attrs.get("iterations"),
                     "replay_params_same": sim is not None and sim.params == params,
                     "replay_stop": sim.stop_reason if sim else None,
                     "replay_iterations": sim.iterations if sim else None})
    same = sum(r["replay_params_same"] and r["replay_stop"] == r["live_stop"]
               and r["replay_iterations"] == r["live_iterations"] for r in rows)
    return {"ok": worst_kl < 1e-4 and worst_eval < 1e-6, "wall_seconds": wall, "max_abs_kl_diff": worst_kl,
            "max_abs_eval_diff": worst_eval, "trials": rows, "replay_agrees_on": same,
            "duplicates_told": {"live": copies, "replay": replay.copies}}


def report_live(lv: dict[str, Any]) -> None:
    if "error" in lv:
        print(f"live check FAILED: {lv['error']}")
        return
    print(f"live `tuner run` ({lv['wall_seconds']:.0f} s): curves against the table: "
          f"max |dKL| {lv['max_abs_kl_diff']:.2e}, "
          f"max |d eval| {lv['max_abs_eval_diff']:.2e} ({'match' if lv['ok'] else 'DIFFER'}); the replay of the same "
          f"sweep agrees on params, stop reason and iterations for {lv['replay_agrees_on']}/{len(lv['trials'])} trials")
    for r in lv["trials"]:
        print(f"    trial {r['number']}: live {r['live_stop']} at {r['live_iterations']}, replay {r['replay_stop']} at "
              f"{r['replay_iterations']}{'' if r['replay_params_same'] else ' (other params)'}")

