"""The verl and OpenRLHF engines against those releases' own code (no GPU, none of their training stack):
the launch arguments compose with verl 0.9.1's Hydra config and parse with OpenRLHF 0.11.2's argument
parser, and a trial reads the metrics that verl's `Tracking` file logger and OpenRLHF's logger write,
converts their per-token KL to the reference, and stops the trainer at the report past the KL limit.
The wheels come from the package registry (tests/engine_packages.py); without it these tests skip."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.engine_packages import check_python, source
from tests.tuner.trial.test_command_sweep import processes_under
from tests.tuner.trial.test_external import run
from trials import PPOConfig
from trials import metrics as K
from tuner.export import engine_launch
from tuner.spec import load_spec, trial_config
from tuner.trial import StopReason, launch, read_result
from tuner.trial._task import TrialTask

TRAINERS = Path(__file__).resolve().parents[2] / "engine_trainers.py"
CONFIGS = {  # configs whose launch covers every setting the mappings write
    "default": {},
    "adaptive-lora": {"kl_mode": "adaptive", "lora_rank": 8, "lora_alpha": 16.5, "lora_target_modules": "q_proj,v_proj",
                      "lr_schedule": "linear", "warmup_steps": 8, "gradient_checkpointing": True, "ent_coef": 0.01,
                      "value_backbone": "shared", "top_k": 20, "whiten_advantages": False},
}

pytestmark = pytest.mark.slow  # a virtualenv and two wheels on first use; about 20 s after


def config(**changes) -> PPOConfig:
    return PPOConfig.from_dict({"num_iterations": 6, "rollout_batch_size": 16, "mini_batch_size": 8, **changes})


@pytest.mark.parametrize("name", list(CONFIGS))
def test_verl_overrides_compose_with_verls_own_config(name):
    c = config(**CONFIGS[name])
    argv, _, _ = launch("verl", ["python", "-m", "verl.trainer.main_ppo"], c.to_dict(),
                        Path("/tmp/trial 1"))
    overrides = argv[3:]
    proc = subprocess.run([str(check_python()), str(TRAINERS), "compose", str(source("verl")), *overrides],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    composed = json.loads(proc.stdout.strip().splitlines()[-1])
    words, _ = engine_launch(c, "verl")
    path = "ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH"
    assert words == overrides[:len(words)] and overrides[len(words):] == [
        "trainer.logger=[console,file]", f"+{path}='/tmp/trial 1/verl_metrics.jsonl'",
        "trainer.default_local_dir='/tmp/trial 1/checkpoints'"]
    assert composed[path] == "/tmp/trial 1/verl_metrics.jsonl"  # for verl's TaskRunner actor, in a Ray worker
    assert composed["trainer.default_local_dir"] == "/tmp/trial 1/checkpoints"  # the trial's own checkpoints
    assert composed["actor_rollout_ref.actor.optim.lr"] == c.policy_lr and composed["critic.optim.lr"] == c.value_lr
    assert composed["trainer.total_training_steps"] == 6 and composed["trainer.logger"] == ["console", "file"]
    if name != "default":
        assert composed["algorithm.kl_ctrl.type"] == "adaptive" and composed["actor_rollout_ref.model.lora_rank"] == 8
        assert composed["actor_rollout_ref.model.target_modules"] == ["q_proj", "v_proj"]


def test_verl_takes_the_users_rollout_engine():
    argv, _, _ = launch("verl", ["py", "actor_rollout_ref.rollout.name=sglang"], config().to_dict())
    assert [a for a in argv if a.startswith("actor_rollout_ref.rollout.name=")] == [
        "actor_rollout_ref.rollout.name=sglang"]
    argv, _, _ = launch("verl", ["py"], config().to_dict())
    assert "actor_rollout_ref.rollout.name=vllm" in argv  # verl's own default is '???' (required)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_openrlhf_flags_parse_with_openrlhfs_own_parser(name):
    c = config(**CONFIGS[name])
    argv, _, _ = launch("openrlhf", ["python", "--ckpt.load_enable"], c.to_dict(), Path("/tmp/trial 1"), 1)
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); import engine_trainers as t; "
            "from pathlib import Path; "
            "a = vars(t.openrlhf_parser(Path(sys.argv[2])).parse_args(sys.argv[3:])); "
            "print(json.dumps(a, default=str))")
    proc = subprocess.run([str(check_python()), "-c", code, str(TRAINERS.parent), str(source("openrlhf")), *argv[1:]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    args = json.loads(proc.stdout)
    assert args["actor.adam.lr"] == c.policy_lr and args["critic.adam.lr"] == c.value_lr
    assert args["actor.adam.betas"] == [0.9, 0.95] and args["data.max_samples"] == 6 * 16  # OpenRLHF's own betas
    assert args["ckpt.path"] == "/tmp/trial 1/checkpoints" and args["ckpt.load_enable"] is True  # its own
    if name != "default":
        assert args["algo.kl.target"] == pytest.approx(c.kl_target / c.response_length)
        assert args["ds.lora.rank"] == 8 and args["ds.lora.target_modules"] == ["q_proj", "v_proj"]
        assert args["actor.gradient_checkpointing_enable"] is True


def task(engine: str, lr: float, fixed: list[str], env: dict | None = None, ray: str = "private") -> TrialTask:
    c = config(policy_lr=lr, num_iterations=5)
    return TrialTask(number=0, engine=c.to_dict(), params={"policy_lr": lr}, kl_limit=15.0,
                     objective={"metric": K.SCORES, "direction": "maximize", "score": "final", "last_k": 3},
                     engine_kind=engine, external={"command": [str(check_python()), str(TRAINERS), engine,
                                                               str(source(engine)), *fixed],
                                                   "env": env or {}, "report_timeout": 60, "stop_grace": 1, "ray": ray})


@pytest.mark.parametrize("engine", ["verl", "openrlhf"])
def test_a_trial_reads_what_the_engines_own_loggers_write(tmp_path, engine):
    done = run(task(engine, 1e-4, []), tmp_path)  # KL per token 0.1 * step, 10 tokens: 1..5 nats
    assert [r.metrics[K.KL] for r in done] == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])  # never actor/ppo_kl's 100 x 10
    assert done[-1].stop_reason == StopReason.COMPLETED
    assert done[-1].metrics[K.SCORES] == pytest.approx(0.5) and done[-1].metrics[K.RESPONSE_LENGTH] == 10.0
    own = done[-1].trainer
    if engine == "verl":  # verl's names kept; its validation before training came with the first report
        assert own["actor/reward_kl_penalty"] == pytest.approx(0.5) and own["actor/ppo_kl"] == 100.0
        assert done[0].trainer["val-core/demo/reward/mean@1"] == pytest.approx(0.1)
    else:
        assert own["kl"] == pytest.approx(0.5) and own["timing/step_total"] == 0.05


@pytest.mark.parametrize("engine", ["verl", "openrlhf"])
def test_the_kl_limit_stops_the_engine_at_the_report_that_crossed(tmp_path, engine):
    reports = run(task(engine, 6e-4, []), tmp_path)  # 0.6 * 10 nats per step: 18 > 15 at the third
    assert [r.metrics[K.KL] for r in reports] == pytest.approx([6.0, 12.0, 18.0])
    assert reports[-1].stop_reason == StopReason.KL_LIMIT
    seen = time.time() - reports[-1].trainer["t"]
    assert seen < 5.0  # read as it was written (the trainer logs every 0.05 s; the poll is 0.02 s)


def test_a_verl_trial_gets_only_its_searched_and_base_keys_and_keeps_the_users_own(tmp_path):
    command = [str(check_python()), str(TRAINERS), "verl", str(source("verl")), "trainer.n_gpus_per_node=1",
               "actor_rollout_ref.rollout.temperature=1.0", "trainer.logger=[console,wandb]"]
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "x", "workdir": str(tmp_path), "resources": {"gpus_per_trial": 1},
        "trial": {"engine": "verl", "command": command, "report_timeout": 60, "stop_grace": 1},
        "base": {"rollout_batch_size": 16, "mini_batch_size": 8, "micro_batch_size": 2},
        "search_space": {"policy_lr": {"low": 1e-4, "high": 2e-4, "log": True}},
        "budget": {"trials": 2, "iterations": 3, "promote": {"top_k": 0}}}))
    spec = load_spec(spec_file)
    task = TrialTask(number=0, engine=trial_config(spec, {"policy_lr": 1e-4}).to_dict(), params={"policy_lr": 1e-4},
                     kl_limit=15.0, objective={"metric": K.SCORES, "direction": "maximize", "score": "final",
                                               "last_k": 3}, engine_kind="verl", external=spec.launch())
    reports = run(task, tmp_path)
    assert [r.metrics[K.KL] for r in reports] == pytest.approx([1.0, 2.0, 3.0])  # the file logger still read
    log = (tmp_path / "trainer.log").read_text()
    received = json.loads(re.search(r"^overrides (.*)$", log, re.M).group(1))
    ours = ["actor_rollout_ref.actor.optim.lr=0.0001", "data.train_batch_size=16",
            "actor_rollout_ref.actor.ppo_mini_batch_size=8", "critic.ppo_mini_batch_size=8",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "critic.ppo_micro_batch_size_per_gpu=2",
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
            "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2", "critic.forward_micro_batch_size_per_gpu=2",
            "trainer.total_training_steps=3", "trainer.total_epochs=3", "algorithm.adv_estimator=gae",
            "algorithm.use_kl_in_reward=True", "actor_rollout_ref.actor.use_kl_loss=False",
            "actor_rollout_ref.rollout.n=1", "actor_rollout_ref.rollout.name=vllm",
            "actor_rollout_ref.actor.shuffle=True", "critic.shuffle=True"]
    path = f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={tmp_path / 'verl_metrics.jsonl'}"
    assert received == ["trainer.n_gpus_per_node=1", "actor_rollout_ref.rollout.temperature=1.0",
                        "trainer.logger=[console,wandb,file]", *ours, path,
                        f"trainer.default_local_dir={tmp_path / 'checkpoints'}"]  # the trial's own checkpoints


def test_a_trainer_that_starts_ray_gets_a_private_one_and_leaves_nothing(tmp_path):
    reports = run(task("verl", 6e-4, [], env={"START_RAY": "1"}), tmp_path)  # stopped by the KL limit at report 3
    assert reports[-1].stop_reason == StopReason.KL_LIMIT and len(reports) == 3
    session = re.search(r"ray session (\S+) in (\S+)", (tmp_path / "trainer.log").read_text())
    assert session is not None, (tmp_path / "trainer.log").read_text()[-2000:]
    folder = session.group(2)
    assert Path(folder).name.startswith("ray-trial-") and not Path(folder).exists()  # its own, and removed
    left, deadline = processes_under(Path(folder)), time.monotonic() + 10
    while left and time.monotonic() < deadline:  # Ray's processes die with their parent (kill-on-parent-death)
        time.sleep(0.2)
        left = processes_under(Path(folder))
    assert left == [], [Path(f"/proc/{p}/cmdline").read_bytes()[:200] for p in left]


def test_on_a_cluster_the_trainer_joins_it_as_a_driver_and_its_job_and_actors_end_with_the_trial(tmp_path):
    """`ray.address` set: the trainer's Ray is the sweep's cluster (RAY_ADDRESS, no private one), its
    TaskRunner actor runs there, and the KL limit's stop ends its driver's job and that actor."""
    import ray
    from ray._private import state

    from tuner.trial._external import run_command

    folder = Path(tempfile.mkdtemp(prefix="ray-c-", dir="/tmp"))  # Ray's socket paths stay short
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(folder))
    try:
        gcs = ray.get_runtime_context().gcs_address
        reports: list = []
        run_command(task("verl", 6e-4, [], env={"START_RAY": "1"}, ray="cluster"),
                    lambda result: reports.append(read_result(result)), tmp_path, ray_address=gcs)
        assert reports[-1].stop_reason == StopReason.KL_LIMIT and len(reports) == 3
        log = (tmp_path / "trainer.log").read_text()
        session = re.search(r"ray session (\S+) in (\S+) job (\S+)", log)
        assert session is not None and session.group(1) == gcs, log[-2000:]  # joined, not a Ray of its own
        job = session.group(3)
        runner = int(re.search(r"task runner pid (\d+)", log).group(1))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the driver's death ends its job and its actors
            jobs = {j["JobID"]: j for j in state.jobs()}
            actors = [a for a in state.actors().values() if a["JobID"] == job]
            if (jobs[job]["IsDead"] and all(a["State"] == "DEAD" for a in actors)
                    and not Path(f"/proc/{runner}").exists()):
                break
            time.sleep(0.5)
        assert jobs[job]["IsDead"] and actors and all(a["State"] == "DEAD" for a in actors), (jobs[job], actors)
        assert not Path(f"/proc/{runner}").exists()
        assert processes_under(tmp_path) == []
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
