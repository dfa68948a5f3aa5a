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
    ("verl-no-command", "trial: {engine: verl}", "trial.command", "is needed with engine: verl"),
    ("verl-sets-searched", "trial: {engine: verl, command: [py, -m, verl.trainer.main_ppo, trainer.n_gpus_per_node=1, "
     "'actor_rollout_ref.actor.optim.lr=1e-6']}\nresources: {gpus_per_trial: 1}\n"
     "search_space: {policy_lr: {low: 1.0e-6, high: 1.0e-5, log: true}}", "trial.command[4]",
     "sets actor_rollout_ref.actor.optim.lr, which each trial sets from policy_lr (searched, or in base:) "
     "(got 'actor_rollout_ref.actor.optim.lr=1e-6'); remove it from trial.command, or remove policy_lr from "
     "search_space and base: to keep your value"),
    ("verl-sets-fixed", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=1, algorithm.adv_estimator=grpo]}"
     "\nresources: {gpus_per_trial: 1}", "trial.command[2]",
     "sets algorithm.adv_estimator, which every trial sets to run ppo-tuner's PPO"),
    ("verl-sets-the-length", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=1, "
     "trainer.total_training_steps=9]}\nresources: {gpus_per_trial: 1}", "trial.command[2]",
     "which each trial sets from num_iterations"),
    ("verl-needs", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=1]}\nresources: {gpus_per_trial: 1}\n"
     "base: {kl_mode: adaptive}\nsearch_space: {kl_target: {low: 3, high: 9}}", "base.response_length",
     "is unset, and kl_target needs it: verl's algorithm.kl_ctrl.target_kl is computed from it"),
    ("openrlhf-sets-base", "trial: {engine: openrlhf, command: [py, --actor.num_gpus_per_node, '2', --actor.adam.lr, "
     "'1e-6']}\nresources: {gpus_per_trial: 2}\nbase: {policy_lr: 1.0e-6, rollout_batch_size: 64}", "trial.command[3]",
     "which each trial sets from policy_lr"),
    ("openrlhf-needs-rollout", "trial: {engine: openrlhf, command: [py, --actor.num_gpus_per_node, '2']}\n"
     "resources: {gpus_per_trial: 2}", "base.rollout_batch_size",
     "num_iterations needs it: openrlhf's --data.max_samples is computed from it"),
    ("openrlhf-adaptive-needs-target", "trial: {engine: openrlhf, command: [py, --actor.num_gpus_per_node, '2']}\n"
     "resources: {gpus_per_trial: 2}\nbase: {rollout_batch_size: 64, kl_mode: adaptive, response_length: 64}",
     "base.kl_target", "is unset, and kl_mode needs it: openrlhf's --algo.kl.target is computed from it"),
    ("verl-no-gpu", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=1]}", "resources.gpus_per_trial",
     "must be a whole number of GPUs for verl"),
    ("verl-gpus-differ", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=4]}\n"
     "resources: {gpus_per_trial: 2}", "trial.command", "must equal resources.gpus_per_trial (2)"),
    ("openrlhf-default-gpus", "trial: {engine: openrlhf, command: [py]}\nresources: {gpus_per_trial: 1}\n"
     "base: {rollout_batch_size: 64}",
     "trial.command", "--actor.num_gpus_per_node (its default, 8)"),
    ("verl-two-nodes", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=1, trainer.nnodes=2]}\n"
     "resources: {gpus_per_trial: 1}", "trial.command", "needs more than one node"),
    ("verl-cluster-gpus", "trial: {engine: verl, command: [py, trainer.n_gpus_per_node=8]}\n"
     "resources: {gpus_per_trial: 1}\nray: {address: auto}", "resources.gpus_per_trial",
     "would hold GPUs that verl's own workers then cannot get"),
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
             "resources: {gpus_per_trial: 2}"),
    ("verl", "command: [py, -m, verl.trainer.main_ppo, trainer.n_gpus_per_node=8, trainer.nnodes=2]}\n"
             "ray: {address: auto}"),
    ("verl", "command: [py, trainer.n_gpus_per_node=1, actor_rollout_ref.rollout.temperature=1.0, "
             "actor_rollout_ref.rollout.n=1, 'trainer.logger=[console,wandb]']}\nresources: {gpus_per_trial: 1}"),
    ("openrlhf", "command: [py, -m, openrlhf.cli.train_ppo_ray, --actor.num_gpus_per_node, '1', --actor.adam.lr, "
                 "'1e-6', --actor.adam.betas, '0.9', '0.95']}\n"
                 "resources: {gpus_per_trial: 1}\nbase: {rollout_batch_size: 64}"),
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
    argv, _, _ = launch(engine, task.external["command"], task.engine, trial_folder(spec, 0),
                        task.external.get("fields"))  # as the trial's launch (tuner.trial._external) makes it
    assert printed == argv and argv[:len(spec.trial.command)] == spec.trial.command
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
                         "resources: {gpus_per_trial: 1}\nbase: {rollout_batch_size: 64}\n"
                         f"search_space: {{policy_lr: {{low: 1.0e-6, high: 1.0e-5, log: true}}}}\n{extra}\n")
    spec = load_spec(spec_file)
    expected = ["num_iterations", "policy_lr", "rollout_batch_size", *(["seed"] if seed else [])]
    assert spec.launch()["fields"] == expected
    saved = tmp_path / "saved.yaml"  # the spec a resumed sweep reads: every default written out
    saved.write_text(yaml.safe_dump(spec.resolved()))
    assert load_spec(saved).launch()["fields"] == expected
