"""trial.engine and an external trainer's launch keys: checked like the rest, one line each, exit 2."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from tuner.cli import main
from tuner.spec import load_spec, make_sampler, sample_params, trial_config
from tuner.sweep import trial_folder
from tuner.trial import TrialTask, launch

CASES = [
    ("no-command", "trial: {engine: command}", "trial.command", "is needed with engine: command"),
    ("placeholder", "trial: {engine: command, command: [python, t.py, '--lr={policy_lrr}']}", "trial.command[2]",
     "'{policy_lrr}' is not an engine field"),
    ("trial-placeholder", "trial: {engine: command, command: [python, t.py, '--out={trial_dirr}/ckpt']}",
     "trial.command[2]",
     "nor one of trial_dir, trial_number (got '--out={trial_dirr}/ckpt'); did you mean 'trial_dir'"),
    ("verl-no-command", "trial: {engine: verl}", "trial.command", "is needed with engine: verl"),
    ("verl-sets-searched", "trial: {engine: verl, command: [py, -m, verl.trainer.main_ppo, trainer.n_gpus_per_node=1, "
     "'actor_rollout_ref.actor.optim.lr=1e-6']}\nresources: {gpus_per_trial: 1}\nbase: {micro_batch_size: 1}\n"
     "search_space: {policy_lr: {low: 1.0e-6, high: 1.0e-5, log: true}}", "trial.command[4]",
     "sets actor_rollout_ref.actor.optim.lr, which each trial sets from policy_lr (searched, or in base:) "
     "(got 'actor_rollout_ref.actor.optim.lr=1e-6'); remove it from trial.command, or remove policy_lr from "
     "search_space and base: to keep your value"),
    ("verl-sets-fixed", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=1, algorithm.adv_estimator=grpo]}"
     "\nresources: {gpus_per_trial: 1}\nbase: {micro_batch_size: 1}", "trial.command[2]",
     "sets algorithm.adv_estimator, which every trial sets to run ppo-tuner's PPO"),
    ("verl-sets-the-length", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=1, "
     "trainer.total_training_steps=9]}\nresources: {gpus_per_trial: 1}\nbase: {micro_batch_size: 1}",
     "trial.command[2]",
     "which each trial sets from num_iterations"),
    ("verl-needs", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=1]}\nresources: {gpus_per_trial: 1}\n"
     "base: {kl_mode: adaptive, micro_batch_size: 1}\nsearch_space: {kl_target: {low: 3, high: 9}}",
     "base.response_length",
     "is unset, and kl_target needs it: verl's algorithm.kl_ctrl.target_kl is computed from it"),
    ("openrlhf-sets-base", "trial: {engine: openrlhf, command: [py, --train.colocate_all, --actor.num_gpus_per_node, "
     "'2', --ref.num_gpus_per_node, '2', --actor.adam.lr, '1e-6']}\nresources: {gpus_per_trial: 2}\n"
     "base: {policy_lr: 1.0e-6, rollout_batch_size: 64}", "trial.command[6]", "which each trial sets from policy_lr"),
    ("openrlhf-needs-rollout", "trial: {engine: openrlhf, command: [py, --train.colocate_all, "
     "--actor.num_gpus_per_node, '2', --ref.num_gpus_per_node, '2']}\nresources: {gpus_per_trial: 2}",
     "base.rollout_batch_size", "num_iterations needs it: openrlhf's --data.max_samples is computed from it"),
    ("openrlhf-adaptive-needs-target", "trial: {engine: openrlhf, command: [py, --train.colocate_all, "
     "--actor.num_gpus_per_node, '2', --ref.num_gpus_per_node, '2']}\nresources: {gpus_per_trial: 2}\n"
     "base: {rollout_batch_size: 64, kl_mode: adaptive, response_length: 64}",
     "base.kl_target", "is unset, and kl_mode needs it: openrlhf's --algo.kl.target is computed from it"),
    ("verl-no-gpu", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=1]}\nbase: {micro_batch_size: 1}",
     "resources.gpus_per_trial",
     "must be a whole number of GPUs for verl"),
    ("verl-gpus-differ", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=4]}\n"
     "resources: {gpus_per_trial: 2}\nbase: {micro_batch_size: 1}", "trial.command",
     "must equal resources.gpus_per_trial (2)"),
    ("openrlhf-default-gpus", "trial: {engine: openrlhf, command: [py]}\nresources: {gpus_per_trial: 1}\n"
     "base: {rollout_batch_size: 64}", "trial.command",
     "reserves 24 GPUs, which must equal resources.gpus_per_trial (1): the trial's private Ray has "
     "that many GPUs, and openrlhf waits for the rest forever (got 'actor 1x8 + ref 1x8 + reward 1x8')"),
    ("openrlhf-roles", "trial: {engine: openrlhf, command: [py, --actor.num_gpus_per_node, '2', "
     "--ref.num_gpus_per_node, '2', --critic.model_name_or_path, c, --critic.num_gpus_per_node, '2', "
     "--reward.remote_url, 'http://r', --vllm.num_engines, '2']}\nresources: {gpus_per_trial: 2}\n"
     "base: {rollout_batch_size: 64}", "trial.command",
     "reserves 8 GPUs, which must equal resources.gpus_per_trial (2)"),
    ("openrlhf-colocated-vllm", "trial: {engine: openrlhf, command: [py, --train.colocate_all, "
     "--actor.num_gpus_per_node, '2', --ref.num_gpus_per_node, '2', --vllm.num_engines, '1']}\n"
     "resources: {gpus_per_trial: 2}\nbase: {rollout_batch_size: 64}", "trial.command",
     "so the engines' GPUs (1) must equal the actor's (2), as OpenRLHF asserts (got 'actor 1x2 (colocated: "
     "--train.colocate_all)'); set --vllm.num_engines x --vllm.tensor_parallel_size to 2"),
    ("openrlhf-cluster", "trial: {engine: openrlhf, command: [py]}\nray: {address: auto}\n"
     "base: {rollout_batch_size: 64}", "ray.address",
     "cannot work for openrlhf: its release pins ray==2.55.0, and a driver of that Ray cannot join this cluster's "
     "Ray 2.6"),
    ("verl-two-nodes", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=1, trainer.nnodes=2]}\n"
     "resources: {gpus_per_trial: 1}\nbase: {micro_batch_size: 1}", "trial.command", "needs more than one node"),
    ("verl-cluster-gpus", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=8]}\n"
     "resources: {gpus_per_trial: 1}\nray: {address: auto}\nbase: {micro_batch_size: 1}", "resources.gpus_per_trial",
     "would hold GPUs that verl's own workers then cannot get"),
    ("verl-world-size", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=8, "
     "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2]}\n"
     "resources: {gpus_per_trial: 8}\nsearch_space: {rollout_batch_size: {choices: [64, 96, 36]}}\n"
     "base: {mini_batch_size: 4, micro_batch_size: 1}", "search_space.rollout_batch_size",
     "rollout_batch_size 36 x rollout.n 1 is not divisible by the world size 8 (trainer.n_gpus_per_node 8 x "
     "trainer.nnodes 1): verl refuses this at start-up, and a trial could sample it (got {'choices': [64, 96, 36]}); "
     "use rollout_batch_size values that are multiples of 8, or change trial.command's GPU layout"),
    ("verl-data-parallel", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=4, trainer.nnodes=2]}\n"
     "ray: {address: auto}\nsearch_space: {mini_batch_size: {choices: [8, 16, 4]}}\n"
     "base: {rollout_batch_size: 64, micro_batch_size: 1}",
     "search_space.mini_batch_size", "mini_batch_size 4 x rollout.n 1 is not divisible by the data-parallel size 8"),
    ("verl-micro-per-gpu", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=2]}\n"
     "resources: {gpus_per_trial: 2}\nsearch_space: {micro_batch_size: {choices: [2, 4]}}\n"
     "base: {rollout_batch_size: 64, mini_batch_size: 4}", "search_space.micro_batch_size",
     "the per-GPU mini-batch 2 (mini_batch_size 4 x rollout.n 1 / 2 GPUs) is not divisible by micro_batch_size 4"),
    ("verl-num-mini-batches", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=8]}\n"
     "resources: {gpus_per_trial: 8}\nsearch_space: {num_mini_batches: {choices: [1, 2, 16]}}\n"
     "base: {rollout_batch_size: 64, micro_batch_size: 1}", "search_space.num_mini_batches",
     "mini_batch_size 4 x rollout.n 1 is not divisible by the data-parallel size 8"),
    ("verl-default-micro", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=1]}\n"
     "resources: {gpus_per_trial: 1}", "base.micro_batch_size",
     "is unset, and trial.command leaves verl's actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu, "
     "critic.ppo_micro_batch_size_per_gpu, actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu, "
     "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu at their default, null"),
    ("verl-default-mini", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=1]}\n"
     "resources: {gpus_per_trial: 1}\nbase: {rollout_batch_size: 64, micro_batch_size: 1}", "base.rollout_batch_size",
     "actor_rollout_ref.actor.ppo_mini_batch_size 256 (verl's default) is above rollout_batch_size 64"),
    ("verl-command-batch", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=8, data.train_batch_size=36]}\n"
     "resources: {gpus_per_trial: 8}\nbase: {mini_batch_size: 8, micro_batch_size: 1}", "base.mini_batch_size",
     "data.train_batch_size 36 (trial.command's) x rollout.n 1 is not divisible by the world size 8"),
    ("trl-no-command", "trial: {engine: trl}", "trial.command", "an environment with trl 1.12"),
    ("ours-with-command", "trial: {command: [python, t.py]}", "trial.command", "applies only to an external engine"),
    ("timeout", "trial: {engine: command, command: [t], report_timeout: soon}", "trial.report_timeout", "duration"),
    ("unknown-engine", "trial: {engine: deepspeed}", "trial.engine", ""),
]


@pytest.mark.parametrize(("text", "path", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_engine_key_is_one_line_and_exit_2(tmp_path, capsys, text, path, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: x\n{text}\n")
    assert main(["validate", str(spec)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and message in lines[0], lines


def test_an_external_trainer_is_launched_from_the_spec(tmp_path):
    (tmp_path / "train.py").write_text("")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\ntrial: {engine: command, command: [python, train.py, --lr, '{policy_lr}'], "
                    "env: {WANDB_MODE: offline}, report_timeout: 2m}\n"
                    "search_space: {policy_lr: {low: 1.0e-6, high: 1.0e-5}}\n")
    launch = load_spec(spec).trial.launch()
    assert launch["command"] == ["python", str(tmp_path / "train.py"), "--lr", "{policy_lr}"]
    assert launch["env"] == {"WANDB_MODE": "offline"} and launch["report_timeout"] == 120.0
    assert load_spec(spec).trial.engine == "command"


def test_a_venv_interpreter_named_relative_to_the_spec_stays_the_venvs(tmp_path):
    """`trial.command: [../env/bin/python]`: bin/python is a symlink to the base interpreter, and
    the launched interpreter must be the venv's (its sys.prefix), not the one the link points at."""
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True,
                   timeout=120)
    assert (env / "bin" / "python").is_symlink()
    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "spec.yaml"
    spec.write_text("name: x\ntrial: {engine: command, command: [../env/bin/python, -c, "
                    "'import sys; print(sys.prefix)']}\n")
    argv = load_spec(spec).trial.launch()["command"]
    assert argv[0] == str(env / "bin" / "python")
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == str(env)


@pytest.mark.parametrize(("engine", "text"), [
    ("verl", "command: [py, -m, verl.trainer.main_ppo, trainer.n_gpus_per_node=2, data.train_files=d.parquet, "
             "actor_rollout_ref.rollout.name=sglang]}\n"
             "resources: {gpus_per_trial: 2}\nbase: {micro_batch_size: 2}"),
    ("verl", "command: [py, -m, verl.trainer.main_ppo, trainer.n_gpus_per_node=8, trainer.nnodes=2]}\n"
             "ray: {address: auto}\nbase: {rollout_batch_size: 64, mini_batch_size: 32, micro_batch_size: 2}"),
    ("openrlhf", "command: [py, -m, openrlhf.cli.train_ppo_ray, --actor.num_gpus_per_node, '1', "
                 "--ref.num_gpus_per_node, '1', --train.colocate_all]}\nresources: {gpus_per_trial: 1}\n"
                 "base: {rollout_batch_size: 64}"),
    ("openrlhf", "command: [py, --actor.num_gpus_per_node, '2', --ref.num_gpus_per_node, '2', "
                 "--critic.model_name_or_path, c, --critic.num_gpus_per_node, '2', --reward.remote_url, 'http://r', "
                 "--vllm.num_engines, '2']}\nresources: {gpus_per_trial: 8}\nbase: {rollout_batch_size: 64}"),
    ("openrlhf", "command: [py, --actor.num_gpus_per_node, '4', --train.colocate_actor_ref, "
                 "--ref.num_gpus_per_node, '4', "
                 "--critic.model_name_or_path, c, --critic.num_gpus_per_node, '2', --train.colocate_critic_reward, "
                 "--reward.num_gpus_per_node, '2', --vllm.num_engines, '1', --vllm.tensor_parallel_size, '2']}\n"
                 "resources: {gpus_per_trial: 8}\nbase: {rollout_batch_size: 64}"),
    ("verl", "command: [py, trainer.n_gpus_per_node=8]}\nresources: {gpus_per_trial: 8}\n"
             "search_space: {rollout_batch_size: {choices: [64, 128]}, mini_batch_size: {choices: [16, 32, 64]}, "
             "micro_batch_size: {choices: [1, 2]}}"),
    ("verl", "command: [py, -m, verl.trainer.main_ppo, trainer.n_gpus_per_node=1, "
             "'trainer.default_local_dir={trial_dir}/ckpt', 'trainer.experiment_name=t{trial_number}']}\n"
             "resources: {gpus_per_trial: 1}\nbase: {micro_batch_size: 1}"),
    ("verl", "command: [py, trainer.n_gpus_per_node=1, actor_rollout_ref.rollout.temperature=1.0, "
             "actor_rollout_ref.rollout.n=1, 'trainer.logger=[console,wandb]']}\nresources: {gpus_per_trial: 1}\n"
             "base: {micro_batch_size: 1}"),
    ("openrlhf", "command: [py, -m, openrlhf.cli.train_ppo_ray, --actor.num_gpus_per_node, '1', "
                 "--ref.num_gpus_per_node, '1', --train.colocate_all, --actor.adam.lr, "
                 "'1e-6', --actor.adam.betas, '0.9', '0.95']}\n"
                 "resources: {gpus_per_trial: 1}\nbase: {rollout_batch_size: 64}"),
    ("verl", "command: [py, trainer.n_gpus_per_node=1, actor_rollout_ref.actor.use_dynamic_bsz=True]}\n"
             "resources: {gpus_per_trial: 1}"),  # verl's own batch sizes, by token count
    ("trl", "command: [py]}"),
])
def test_an_engine_spec_whose_resources_work_is_valid(tmp_path, engine, text):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: x\ntrial: {{engine: {engine}, {text}\n")
    assert load_spec(spec).trial.launch(cluster=False)["command"][0] == "py"


UNSET = {"verl": ("actor_rollout_ref.rollout.temperature", "algorithm.lam", "critic.cliprange_value",
                  "actor_rollout_ref.actor.ppo_epochs", "actor_rollout_ref.model.enable_gradient_checkpointing",
                  "actor_rollout_ref.actor.optim.weight_decay"),
         "openrlhf": ("--rollout.temperature", "--algo.advantage.lambd", "--critic.value_clip",
                      "--actor.adam.weight_decay", "--actor.adam.betas", "--reward.clip_range")}
LR = {"verl": "actor_rollout_ref.actor.optim.lr", "openrlhf": "--actor.adam.lr"}


@pytest.mark.parametrize("engine", ["verl", "openrlhf"])
def test_validate_prints_the_argv_that_a_sampled_trial_launches(capsys, engine):
    path = Path(__file__).resolve().parents[3] / "search_spaces" / f"{engine}_example.yaml"
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    lines = out[out.index("# launch of trial 0 (sampled: "):].splitlines()
    printed = [word for line in lines[1:] for word in shlex.split(line.removeprefix("#"))]
    spec = load_spec(path)
    study = optuna.create_study(directions=spec.directions(), sampler=make_sampler(spec))
    params = sample_params(study.ask(), spec)
    task = TrialTask(number=0, engine=trial_config(spec, params).to_dict(), params=params, kl_limit=spec.kl_limit,
                     objective={}, engine_kind=engine, external=spec.launch())
    argv, _, _ = launch(engine, task.external["command"], task.engine, trial_folder(spec, 0), task.number,
                        task.external.get("fields"))  # as the trial's launch (tuner.trial._external) makes it
    assert printed == argv and argv[:len(spec.trial.command)] == spec.trial.command
    assert argv[-1].endswith(str(trial_folder(spec, 0) / "checkpoints"))  # the trial's own checkpoint folder
    assert f"policy_lr={params['policy_lr']!r}" in lines[0]
    names = [word.split("=", 1)[0] for word in argv]
    lr = names.index(LR[engine])
    assert (argv[lr] if engine == "verl" else argv[lr + 1]).endswith(repr(params["policy_lr"]))
    assert not set(UNSET[engine]) & set(names)  # neither searched nor in base: the engine's own defaults


@pytest.mark.parametrize(("extra", "seed"), [("budget: {trials: 2, promote: {top_k: 0}}", False),
                                             ("budget: {trials: 2, promote: {top_k: 0}}\nseed: 3", True),
                                             ("budget: {trials: 6}", True)])  # promotes: each run its own seed
def test_a_launch_passes_the_fields_the_spec_sets_its_length_and_its_seed_also_when_resumed(tmp_path, extra, seed):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("name: x\ntrial: {engine: verl, command: [py, trainer.n_gpus_per_node=1]}\n"
                         "resources: {gpus_per_trial: 1}\n"
                         "base: {rollout_batch_size: 64, mini_batch_size: 16, micro_batch_size: 1}\n"
                         f"search_space: {{policy_lr: {{low: 1.0e-6, high: 1.0e-5, log: true}}}}\n{extra}\n")
    spec = load_spec(spec_file)
    expected = ["micro_batch_size", "mini_batch_size", "num_iterations", "policy_lr", "rollout_batch_size",
                *(["seed"] if seed else [])]
    assert spec.launch()["fields"] == expected
    saved = tmp_path / "saved.yaml"  # the spec a resumed sweep reads: every default written out
    saved.write_text(yaml.safe_dump(spec.resolved()))
    assert load_spec(saved).launch()["fields"] == expected
