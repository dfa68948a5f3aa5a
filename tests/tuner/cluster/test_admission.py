"""GPU admission on a cluster (tuner/trial/_admission.py), on a real Ray cluster that declares 8 GPUs it does
not have (tests/gpu_cluster.py), with a trainer that takes its GPUs as verl 0.9.1 does: it fails when too few
are free, and waits in `pg.ready()` with no timeout for STRICT_PACK groups (tests/verl_like_trainer.py)."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.gpu_cluster import GpuCluster
from tests.sweep_helpers import tuner
from trials import metrics as K
from tuner.engines import TrainerError
from tuner.spec import load_spec
from tuner.sweep import load_study, trial_rows
from tuner.trial import TrialTask, read_result
from tuner.trial._admission import trial_admission
from tuner.trial._external import LOG_FILE, run_command

TRAINER = Path(__file__).resolve().parents[2] / "verl_like_trainer.py"


@pytest.fixture(scope="module")
def cluster():
    cluster = GpuCluster(gpus=8, cpus=2).start()
    try:
        yield cluster
    finally:
        assert cluster.stop_and_wait() == []  # no raylet, gcs_server


@pytest.fixture
def connected(cluster, monkeypatch):
    """This process as a driver of the cluster (as a trial's Ray worker is)."""
    import ray

    for name, value in cluster.env().items():
        if name.startswith("RAY_AUTH"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.init(address=cluster.gcs)
    try:
        yield cluster
    finally:
        ray.shutdown()


def task(folder: Path, gpus: int, env: dict[str, str] | None = None, report_timeout: float = 60) -> TrialTask:
    engine = {"num_iterations": 2, "rollout_batch_size": 16, "mini_batch_size": 8, "policy_lr": 1e-5}
    from trials import PPOConfig

    return TrialTask(number=7, engine=PPOConfig.from_dict(engine).to_dict(), params={}, kl_limit=1000.0,
                     objective={"metric": K.SCORES, "direction": "maximize", "score": "final", "last_k": 1},
                     engine_kind="verl", folder=str(folder / "sweeps" / "s" / "trials" / "7"),
                     external={"command": [sys.executable, str(TRAINER), f"trainer.n_gpus_per_node={gpus}"],
                               "env": {"STEP_SECONDS": "0.2", **(env or {})}, "report_timeout": report_timeout,
                               "stop_grace": 2, "ray": "cluster"})


def run(t: TrialTask, gcs: str, stop=lambda: False) -> list:
    folder = Path(t.folder)
    folder.mkdir(parents=True, exist_ok=True)
    reports: list = []
    run_command(t, lambda r: reports.append(read_result(r)), folder, stop_requested=stop, ray_address=gcs,
                admission=trial_admission(t, folder / LOG_FILE, stop))
    return reports


def test_a_trial_that_wants_more_gpus_than_any_node_has_fails_at_once_and_is_not_retried(connected, tmp_path):
    t = task(tmp_path, gpus=16)
    started = time.monotonic()
    with pytest.raises(TrainerError) as failed:
        run(t, connected.gcs)
    assert time.monotonic() - started < 10  # no wait: 16 GPUs on one node never fit 8
    assert str(failed.value) == ("NotPlaceable: the trainer needs 16 GPUs on one node (trainer.n_gpus_per_node=16 "
                                 "x trainer.nnodes=1); the cluster's GPUs per node: 8. Lower them in trial.command "
                                 "or add larger nodes")
    assert not failed.value.retryable
    assert not (Path(t.folder) / "verl_metrics.jsonl").exists()  # the trainer never started


def test_a_waiting_trial_says_what_it_waits_for_and_a_stop_ends_it_before_its_trainer_starts(connected, tmp_path):
    from ray.util.placement_group import placement_group, remove_placement_group

    other = placement_group([{"GPU": 1}] * 4, strategy="STRICT_PACK")  # another job's 4 GPUs
    assert other.wait(30)
    t, stop, out = task(tmp_path, gpus=6), threading.Event(), {}
    log = Path(t.folder) / LOG_FILE
    waiter = threading.Thread(target=lambda: out.setdefault("reports", run(t, connected.gcs, stop.is_set)))
    try:
        waiter.start()
        deadline = time.monotonic() + 20
        while not (log.exists() and "waiting for GPUs" in log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ("waiting for GPUs: this trial needs 6 GPUs on one node (trainer.n_gpus_per_node=6 x "
                "trainer.nnodes=1); GPUs free per node: 4") in log.read_text()
        stop.set()
        waiter.join(10)
        assert not waiter.is_alive() and out["reports"] == []
        assert not (Path(t.folder) / "verl_metrics.jsonl").exists()  # its trainer never started
    finally:
        stop.set()
        remove_placement_group(other)


def test_a_trial_waits_for_the_lease_of_the_trial_being_admitted_and_takes_it_once_that_expires(connected, tmp_path):
    from ray.experimental import internal_kv

    from tuner.trial._admission import LEASE_KEY

    holder = json.dumps({"holder": "trial 3 of sweep other", "until": time.time() + 4})  # its holder died 26 s ago
    internal_kv._internal_kv_put(LEASE_KEY, holder)
    try:
        t = task(tmp_path, gpus=6)
        reports = run(t, connected.gcs)
        log = (Path(t.folder) / LOG_FILE).read_text()
        assert len(reports) == 2, log
        assert ("waiting for GPUs: trial 3 of sweep other is being admitted first; this trial needs 6 GPUs on one "
                "node (trainer.n_gpus_per_node=6 x trainer.nnodes=1); GPUs free per node: 8") in log
        assert re.search(r"admitted after [45] s: 6 GPUs on one node", log), log
        assert internal_kv._internal_kv_get(LEASE_KEY) is None  # released: the next trial may be admitted
    finally:
        internal_kv._internal_kv_del(LEASE_KEY)


def test_a_trainer_stuck_in_pg_ready_names_the_group_it_waits_for(connected, tmp_path):
    t = task(tmp_path, gpus=6, env={"EXTRA_GPUS": "4"}, report_timeout=6)  # a role trial.command does not count
    with pytest.raises(TrainerError) as failed:
        run(t, connected.gcs)
    message = str(failed.value)
    log = (Path(t.folder) / LOG_FILE).read_text()  # said before the timeout, at half of it
    assert "no report yet. The trainer waits for Ray to place its placement groups: fake_verl_extra" in log, log
    assert message.startswith("TrainerTimeout: no report for 6 s (trial.report_timeout) after 0 reports. The trainer "
                              "waits for Ray to place its placement groups: fake_verl_extra (4 bundles of {GPU: 1}, "
                              "STRICT_PACK). GPUs free per node: 2; all GPUs per node: 8."), message


@pytest.mark.slow  # a real sweep on the cluster: about 60 s
def test_two_trials_that_each_want_6_of_8_gpus_run_one_after_the_other_and_neither_fails(cluster, tmp_path):
    hold = tmp_path / "hold.log"
    spec = {"name": "admit",
            "trial": {"engine": "verl", "report_timeout": "60s", "stop_grace": "5s",
                      "command": [sys.executable, str(TRAINER), "trainer.n_gpus_per_node=6"],
                      "env": {"HOLD_LOG": str(hold), "STEP_SECONDS": "1"}},
            "search_space": {"policy_lr": {"choices": [1e-5, 2e-5]}}, "kl_limit": 1000,
            "base": {"rollout_batch_size": 96, "mini_batch_size": 48, "micro_batch_size": 8},  # verl's rules on 6 GPUs
            "objective": {"metric": K.SCORES},
            "budget": {"trials": 2, "iterations": 3, "max_failures": 0, "promote": {"top_k": 0}},
            "scheduler": {"type": "none"}, "sampler": {"type": "grid"},
            "resources": {"max_concurrent": 2, "gpus_per_trial": 0}, "ray": {"address": cluster.gcs},
            "workdir": str(tmp_path / "sweeps")}
    path = tmp_path / "admit.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    done = tuner("run", path, cwd=tmp_path, timeout=300, env=cluster.env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    study = load_study(load_spec(path))
    rows = trial_rows(study)
    assert sorted(r.state for r in rows) == ["COMPLETE", "COMPLETE"], [(t.state, t.user_attrs) for t in study.trials]
    assert all("retries" not in t.user_attrs for t in study.trials)  # no attempt was used up
    spans = sorted(tuple(map(float, line.split())) for line in hold.read_text().split("\n") if line)
    assert len(spans) == 2 and spans[0][1] <= spans[1][0], spans  # one trainer held the GPUs after the other
    logs = [(tmp_path / "sweeps" / "admit" / "trials" / str(r.number) / LOG_FILE).read_text() for r in rows]
    waited = [log for log in logs if "waiting for GPUs" in log]
    assert len(waited) == 1 and "admitted after" in waited[0], logs
