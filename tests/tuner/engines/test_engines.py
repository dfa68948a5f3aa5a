"""Each engine's reading of its trainer's numbers, without the trainers: the KL to the reference in our
unit, the reward, the engine's own names kept (tests/tuner/trial/test_engines_real.py runs the real writers)."""

from __future__ import annotations

import json

import pytest

from trials import PPOConfig
from trials import metrics as K
from tuner.engines import ENGINES, PREFIX, TrainerError
from tuner.sweep._tracking import _metric_name
from tuner.trial import launch


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
    argv, args, _ = launch("verl", ["py", "-m", "verl.trainer.main_ppo", "trainer.n_gpus_per_node=1"],
                           c.to_dict())
    assert argv[:4] == ["py", "-m", "verl.trainer.main_ppo", "trainer.n_gpus_per_node=1"]
    assert "actor_rollout_ref.actor.optim.lr=3e-06" in argv and argv[-1] == "trainer.logger=[console,file]"
    argv, _, _ = launch("openrlhf", ["py", "--lr-{policy_lr}"], c.to_dict())
    assert argv[1] == "--lr-3e-06" and argv[argv.index("--actor.adam.lr") + 1] == "3e-06"
    argv, args, lost = launch("trl", ["/venv/bin/python"], c.to_dict())
    assert argv[0] == "/venv/bin/python" and argv[1].endswith("launchers/trl_ppo.py")
    assert args["ppo"]["learning_rate"] == 3e-6 and args["ppo"]["total_episodes"] == 7 * c.rollout_batch_size
    assert any(w.startswith("value_lr") for w in lost)  # TRL's single learning rate


FORCED = ["algorithm.adv_estimator=gae", "algorithm.use_kl_in_reward=True", "actor_rollout_ref.actor.use_kl_loss=False"]


def test_a_verl_launch_passes_only_its_fields_and_leaves_the_users_own_keys():
    c = PPOConfig.from_dict({"policy_lr": 3e-6, "num_iterations": 7, "temperature": 0.7, "ppo_epochs": 4})
    mine = ["py", "actor_rollout_ref.rollout.temperature=1.0", "actor_rollout_ref.rollout.n=2"]
    argv, args, _ = launch("verl", mine, c.to_dict(), fields={"policy_lr", "num_iterations"})
    assert args == ["actor_rollout_ref.actor.optim.lr=3e-06", "trainer.total_training_steps=7",
                    "trainer.total_epochs=7", *FORCED, "actor_rollout_ref.rollout.name=vllm",
                    "actor_rollout_ref.actor.shuffle=True", "critic.shuffle=True"]  # rollout.n: the user's
    assert argv == [*mine, *args, "trainer.logger=[console,file]"]


def test_an_openrlhf_launch_leaves_its_adam_betas_and_score_clip_to_openrlhf():
    c = PPOConfig.from_dict({"policy_lr": 3e-6, "num_iterations": 7, "rollout_batch_size": 16, "mini_batch_size": 8})
    argv, _, _ = launch("openrlhf", ["py", "--rollout.n_samples_per_prompt", "4"], c.to_dict(),
                        fields={"policy_lr", "num_iterations", "rollout_batch_size"})
    assert argv == ["py", "--rollout.n_samples_per_prompt", "4", "--actor.adam.lr", "3e-06", "--rollout.batch_size",
                    "16", "--data.max_samples", "112", "--train.num_episodes", "1", "--algo.advantage.estimator", "gae"]
    exported, _, _ = launch("openrlhf", ["py"], c.to_dict())  # every field, as the export writes them
    assert "--actor.adam.betas" not in exported and "--train.max_epochs" in exported


@pytest.mark.parametrize(("mine", "merged"), [
    ("trainer.logger=[console,wandb]", "trainer.logger=[console,wandb,file]"),
    ("trainer.logger=['console', 'wandb']", "trainer.logger=[console,wandb,file]"),
    ("trainer.logger=[file,tensorboard]", "trainer.logger=[file,tensorboard,console]"),
    ("trainer.logger=console", "trainer.logger=[console,file]"),
])
def test_the_users_verl_loggers_are_kept_with_the_file_logger(mine, merged):
    argv, _, _ = launch("verl", ["py", mine], PPOConfig().to_dict(), fields={"num_iterations"})
    assert [a for a in argv if "trainer.logger" in a] == [merged] and argv[1] == merged
    assert ENGINES["verl"].check(["py", "trainer.n_gpus_per_node=1", mine], 1, cluster=False,
                                 fields={"num_iterations", "micro_batch_size"}) == []


def test_a_command_key_that_a_passed_field_sets_is_refused_naming_the_field():
    verl = ENGINES["verl"]
    command = ["py", "trainer.n_gpus_per_node=1", "actor_rollout_ref.rollout.temperature=1.0",
               "algorithm.lam=0.9", "algorithm.adv_estimator=grpo"]
    problems = verl.check(command, 1, cluster=False, fields={"num_iterations", "gae_lambda", "micro_batch_size"})
    assert [(p.path, p.value) for p in problems] == [("trial.command[3]", "algorithm.lam=0.9"),
                                                     ("trial.command[4]", "algorithm.adv_estimator=grpo")]
    assert "from gae_lambda" in problems[0].message and "remove gae_lambda" in problems[0].fix
    assert verl.check(command[:3], 1, cluster=False, fields={"num_iterations", "gae_lambda", "micro_batch_size"}) == []


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


def test_the_per_token_kl_times_the_mean_length_misses_the_summed_kl_by_their_covariance():
    per_token, lengths = [0.1, 0.3], [10.0, 30.0]  # two responses; the longer drifts further per token
    summed = sum(m * n for m, n in zip(per_token, lengths, strict=True)) / 2  # 5.0 nats, the mean summed KL
    logged = {"actor/reward_kl_penalty": sum(per_token) / 2, "response_length/mean": sum(lengths) / 2}  # as verl
    covariance = sum((m - 0.2) * (n - 20.0) for m, n in zip(per_token, lengths, strict=True)) / 2
    assert ENGINES["verl"].units.kl_of(logged) == pytest.approx(summed - covariance) == pytest.approx(4.0)
    equal = {"actor/reward_kl_penalty": 0.2, "response_length/mean": 20.0}  # equal lengths: exact
    assert ENGINES["verl"].units.kl_of(equal) == pytest.approx(0.2 * 20.0)
