"""Each engine's reading of its trainer's numbers, without the trainers: the KL to the reference in our
unit, the reward, the engine's own names kept (tests/tuner/trial/test_engines_real.py runs the real writers)."""

from __future__ import annotations

import json

import pytest

from trials import PPOConfig
from trials import metrics as K
from tuner.sweep._tracking import _metric_name
from tuner.trial._engines import ENGINES
from tuner.trial._protocol import PREFIX, TrainerError


def test_verl_kl_is_the_reward_penalty_times_the_response_length_never_ppo_kl():
    verl = ENGINES["verl"]
    raw = verl.decode(json.dumps({"step": 3, "data": {"actor/reward_kl_penalty": 0.25, "actor/ppo_kl": 9.0,
                                                      "response_length/mean": 40.0, "critic/score/mean": 0.7}}))
    ours, own = verl.units.convert(raw)
    assert ours[K.KL] == 10.0 and ours[K.SCORES] == 0.7 and ours[K.RESPONSE_LENGTH] == 40.0
    assert own["actor/ppo_kl"] == 9.0 and own["step"] == 3.0
    kl_loss = {"actor/kl_loss": 0.5, "actor/ppo_kl": 9.0, "response_length/mean": 10.0}  # use_kl_loss instead
    assert verl.units.convert(kl_loss)[0][K.KL] == 5.0
    assert verl.units.kl_of({"actor/ppo_kl": 9.0, "response_length/mean": 10.0}) is None


def test_openrlhf_reads_its_step_line_after_its_loggers_prefix():
    openrlhf = ENGINES["openrlhf"]
    status = {"kl": 0.02, "rollout/response_length_mean": 120.0, "rollout/reward_mean": 0.4, "policy_loss": 0.1}
    line = f"[2026-11-30 00:00:00,000] [INFO] [ppo_trainer.py:551:fit] ✨ Global step 7: {status}\n"
    assert openrlhf.marker in line
    ours, own = openrlhf.units.convert(openrlhf.decode(line))
    assert ours[K.KL] == pytest.approx(2.4) and ours[K.SCORES] == 0.4 and ours[K.POLICY_LOSS] == 0.1
    assert own["kl"] == 0.02 and own["step"] == 7.0
    forwarded = f"\x1b[36m(PPOTrainer pid=4242)\x1b[0m {line}"  # the actor's output, as Ray forwards it to the driver
    assert openrlhf.units.convert(openrlhf.decode(forwarded))[0] == ours
    numpy_repr = "✨ Global step 2: {'kl': np.float64(0.5), 'rollout/response_length_mean': 4.0}"  # not a literal
    assert openrlhf.units.convert(openrlhf.decode(numpy_repr))[0][K.KL] == pytest.approx(2.0)
    assert openrlhf.decode("Saved at Global step 3 of 10") is None


def test_trl_keeps_its_summed_kl_and_its_summed_entropy_as_its_own():
    trl = ENGINES["trl"]
    line = PREFIX + json.dumps({"objective/kl": 12.5, "objective/entropy": 31.0, "objective/scores": 0.2, "lr": 1e-5})
    ours, own = trl.units.convert(trl.decode(line))
    assert ours == {K.KL: 12.5, K.SCORES: 0.2} and own == {"objective/entropy": 31.0, "lr": 1e-5}


def test_a_report_without_kl_is_an_error_for_the_protocol():
    with pytest.raises(TrainerError, match="'kl' or 'kl_per_token with response_length'"):
        ENGINES["command"].units.convert({"reward": 1.0})


def test_launch_appends_the_exported_hyperparameters_to_the_users_command():
    c = PPOConfig.from_dict({"policy_lr": 3e-6, "num_iterations": 7})
    argv, args, _ = ENGINES["verl"].launch(["py", "-m", "verl.trainer.main_ppo",
                                            "trainer.n_gpus_per_node=1"], c.to_dict())
    assert argv[:4] == ["py", "-m", "verl.trainer.main_ppo", "trainer.n_gpus_per_node=1"]
    assert "actor_rollout_ref.actor.optim.lr=3e-06" in argv and argv[-1] == "trainer.logger=[console,file]"
    argv, _, _ = ENGINES["openrlhf"].launch(["py", "--lr-{policy_lr}"], c.to_dict())
    assert argv[1] == "--lr-3e-06" and argv[argv.index("--actor.adam.lr") + 1] == "3e-06"
    argv, args, lost = ENGINES["trl"].launch(["/venv/bin/python"], c.to_dict())
    assert argv[0] == "/venv/bin/python" and argv[1].endswith("launchers/trl_ppo.py")
    assert args["ppo"]["learning_rate"] == 3e-6 and args["ppo"]["total_episodes"] == 7 * c.rollout_batch_size
    assert any(w.startswith("value_lr") for w in lost)  # TRL's single learning rate


def test_a_private_ray_per_trial_locally_and_the_sweeps_cluster_otherwise(tmp_path):
    local = ENGINES["verl"].environ(tmp_path, "private")
    assert local["RAY_ADDRESS"] == "local" and len(local["RAY_TMPDIR"]) < 40
    assert local["VERL_FILE_LOGGER_PATH"] == str(tmp_path / "verl_metrics.jsonl")
    ENGINES["verl"].cleanup(local)
    cluster = ENGINES["openrlhf"].environ(tmp_path, "cluster", "10.0.0.1:6379")
    assert cluster == {"RAY_ADDRESS": "10.0.0.1:6379"}
    assert "RAY_ADDRESS" not in ENGINES["command"].environ(tmp_path, "private")


def test_engine_metric_names_are_made_acceptable_to_mlflow():
    assert _metric_name("trainer/val-core/gsm8k/reward/mean@1") == "trainer/val-core/gsm8k/reward/mean_1"
