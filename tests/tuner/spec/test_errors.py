"""Malformed specs: each problem is one line with its YAML path, the value and the fix; exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from trials import ConfigError
from tuner.cli import main
from tuner.spec import load_spec, parse_spec

OK_BATCHES = "  rollout_batch_size: {choices: [64, 128]}\n"

# (id, spec text, a YAML path that an error line must name, text that line must contain)
CASES = [
    ("missing-name", "budget: {trials: 2}\n", "name", "is required"),
    ("bad-name", "name: my sweep/1\n", "name", "letters, digits"),
    ("name-not-a-string", "name: [a, b]\n", "name", "must be a string"),
    ("trials-zero", "name: x\nbudget: {trials: 0}\n", "budget.trials", ">= 1"),
    ("trials-wrong-type", "name: x\nbudget: {trials: many}\n", "budget.trials", "must be an integer"),
    ("unknown-top-level-key", "name: x\nserach_space: {}\n", "serach_space", "did you mean 'search_space'"),
    ("unknown-nested-key", "name: x\nbudget: {trails: 3}\n", "budget.trails", "did you mean 'trials'"),
    ("unknown-range-key", "name: x\nsearch_space:\n  policy_lr: {low: 1.0e-6, high: 1.0e-5, lgo: true}\n",
     "search_space.policy_lr.lgo", "or 'log'?"),
    ("low-above-high", "name: x\nsearch_space:\n  policy_lr: {low: 1.0e-4, high: 1.0e-5}\n",
     "search_space.policy_lr.low", "must be <= high"),
    ("log-with-low-zero", "name: x\nsearch_space:\n  kl_coef: {low: 0, high: 0.2, log: true}\n",
     "search_space.kl_coef.low", "log-scale range needs low > 0"),
    ("below-hard-limit", "name: x\nsearch_space:\n  cliprange: {low: 0.1, high: 1.5}\n",
     "search_space.cliprange.high", "must be < 1"),
    ("int-range-float-bound", "name: x\nsearch_space:\n  ppo_epochs: {low: 1.5, high: 4}\n",
     "search_space.ppo_epochs.low", "must be an integer"),
    ("step-zero", "name: x\nsearch_space:\n  ppo_epochs: {low: 1, high: 4, step: 0}\n",
     "search_space.ppo_epochs.step", "must be > 0"),
    ("range-bound-not-a-number", "name: x\nsearch_space:\n  policy_lr: {low: small, high: 1.0e-5}\n",
     "search_space.policy_lr.low", "must be a number"),
    ("empty-choices", "name: x\nsearch_space:\n  vf_coef: {choices: []}\n",
     "search_space.vf_coef.choices", "at least one value"),
    ("bad-choice", "name: x\nsearch_space:\n  kl_mode: {choices: [fixed, adaptve]}\n",
     "search_space.kl_mode.choices[1]", "did you mean 'adaptive'"),
    ("range-on-bool-field", "name: x\nsearch_space:\n  whiten_rewards: {low: 0, high: 1}\n",
     "search_space.whiten_rewards", "a range needs a numeric field"),
    ("unknown-search-space-key", "name: x\nsearch_space:\n  policy_lrr: {low: 1.0e-6, high: 1.0e-5}\n",
     "search_space.policy_lrr", "did you mean 'policy_lr'"),
    ("search-space-list", "name: x\nsearch_space:\n  ppo_epochs: [2, 4]\n", "search_space.ppo_epochs", "choices"),
    ("mini-batch-not-dividing", "name: x\nsearch_space:\n" + OK_BATCHES + "  mini_batch_size: {choices: [8, 24]}\n",
     "search_space.mini_batch_size", "does not divide rollout_batch_size"),
    ("mini-batch-int-range", "name: x\nsearch_space:\n  mini_batch_size: {low: 4, high: 64}\n",
     "search_space.mini_batch_size", "powers of two"),
    ("num-mini-batches-not-dividing",
     "name: x\nsearch_space:\n" + OK_BATCHES + "  num_mini_batches: {choices: [2, 3]}\n",
     "search_space.num_mini_batches", "does not divide rollout_batch_size"),
    ("micro-batch-not-dividing", "name: x\nbase: {micro_batch_size: 3}\n", "base.micro_batch_size",
     "does not divide mini_batch_size"),
    ("kl-target-without-adaptive", "name: x\nsearch_space:\n  kl_target: {low: 3, high: 10}\n",
     "search_space.kl_target", "only when kl_mode is adaptive"),
    ("kl-limit-zero", "name: x\nkl_limit: 0\n", "kl_limit", "must be > 0"),
    ("kl-limit-negative", "name: x\nkl_limit: -5\n", "kl_limit", "must be > 0"),
    ("kl-limit-nats-zero", "name: x\nkl_limit: {nats: 0, forecast: true}\n", "kl_limit.nats", "must be > 0"),
    ("kl-limit-misspelt-key", "name: x\nkl_limit: {forecats: true}\n", "kl_limit.forecats", "did you mean 'forecast'"),
    ("kl-limit-negative-grace", "name: x\nkl_limit: {grace_iterations: -1}\n", "kl_limit.grace_iterations", ">= 0"),
    ("bad-scheduler", "name: x\nscheduler: {type: hyperband}\n", "scheduler.type", "must be one of asha, median, none"),
    ("misspelt-scheduler", "name: x\nscheduler: {type: ash}\n", "scheduler.type", "did you mean 'asha'"),
    ("reduction-factor-one", "name: x\nscheduler: {reduction_factor: 1}\n",
     "scheduler.reduction_factor", "must be > 1"),
    ("bad-sampler", "name: x\nsampler: {type: bayes}\n", "sampler.type", "must be one of"),
    ("negative-cpus", "name: x\nresources: {cpus_per_trial: -1}\n", "resources.cpus_per_trial", "must be > 0"),
    ("zero-concurrency", "name: x\nresources: {max_concurrent: 0}\n", "resources.max_concurrent", ">= 1"),
    ("storage-mysql", "name: x\nstorage: mysql://u:p@h/db\n", "storage", "sqlite:///"),
    ("storage-not-a-url", "name: x\nstorage: my database\n", "storage", "not a database URL"),
    ("storage-in-memory", "name: x\nstorage: 'sqlite://'\n", "storage", "in-memory"),
    ("tracking-file-store", "name: x\nmlflow: {tracking_uri: ./mlruns}\n", "mlflow.tracking_uri", "use sqlite:///"),
    ("tracking-file-uri", "name: x\nmlflow: {tracking_uri: 'file:///tmp/mlruns'}\n",
     "mlflow.tracking_uri", "use sqlite:///"),
    ("grid-over-continuous-float",
     "name: x\nsampler: {type: grid}\nsearch_space:\n  cliprange: {low: 0.1, high: 0.3}\n",
     "search_space.cliprange", "grid_points"),
    ("unknown-metric", "name: x\nobjective: {metric: eval/score}\n", "objective.metric", "did you mean 'eval/scores'"),
    ("unknown-base-field", "name: x\nbase: {ppo_epoch: 4}\n", "base.ppo_epoch", "did you mean 'ppo_epochs'"),
    ("impossible-base-value", "name: x\nbase: {gae_lambda: 1.5}\n", "base.gae_lambda", "must be <= 1"),
    ("trial-field-in-base", "name: x\nbase: {model_path: gpt2}\n", "base.model_path", "trial.model"),
    ("checkpoint-dir-in-base", "name: x\nbase: {checkpoint_dir: ckpt}\n", "base.checkpoint_dir", "in its own"),
    ("searched-and-fixed", "name: x\nbase: {cliprange: 0.2}\nsearch_space:\n  cliprange: {low: 0.1, high: 0.3}\n",
     "search_space.cliprange", "also fixed in base"),
    ("ray-num-cpus-with-address", "name: x\nray: {address: auto, num_cpus: 4}\n", "ray.num_cpus", "local Ray"),
    ("bad-ray-address", "name: x\nray: {address: 'not an address'}\n", "ray.address", "ray://"),
    ("bad-wall-clock", "name: x\nbudget: {wall_clock: 3 weeks}\n", "budget.wall_clock", "30m"),
    ("bad-reward", "name: x\ntrial: {reward: 'my reward:'}\n", "trial.reward", "module:function"),
    ("section-not-a-mapping", "name: x\nbudget: 8\n", "budget", "must be a mapping"),
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert out == ""  # nothing resolved is printed for a wrong spec
    assert "Traceback" not in err
    return code, err.splitlines()


@pytest.mark.parametrize(("text", "path", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_spec_is_one_line_per_problem_naming_its_path(tmp_path, capsys, text, path, message):
    spec_path = write(tmp_path, text)
    code, lines = validate(spec_path, capsys)
    assert code == 2
    with pytest.raises(ConfigError) as caught:
        load_spec(spec_path)
    assert len(lines) == len(caught.value.problems)
    assert all(line.startswith("error: ") for line in lines)
    named = [line for line in lines if line.startswith(f"error: {path}: ")]
    assert named, lines
    assert message in named[0]
    assert "pydantic" not in " ".join(lines).lower()


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    text = ("name: x\nbudget: {trials: 0}\nkl_limit: -1\nstorage: mysql://a/b\nextra_key: 1\n"
            "scheduler: {type: hyperband}\nsearch_space:\n  policy_lr: {low: 1.0e-4, high: 1.0e-5}\n"
            "  kl_target: {low: 3, high: 10}\n  bogus: 3\n")
    code, lines = validate(write(tmp_path, text), capsys)
    assert code == 2
    paths = {line.removeprefix("error: ").split(": ")[0] for line in lines}
    assert paths == {"budget.trials", "kl_limit", "storage", "extra_key", "scheduler.type",
                     "search_space.policy_lr.low", "search_space.kl_target", "search_space.bogus"}


def test_problem_carries_path_value_and_fix():
    with pytest.raises(ConfigError) as caught:
        parse_spec({"name": "x", "budget": {"trials": 0}})
    (problem,) = caught.value.problems
    assert (problem.path, problem.value) == ("budget.trials", 0)
    assert (problem.message, problem.fix) == ("must be >= 1", "use a value >= 1")


@pytest.mark.parametrize(("text", "message"), [
    ("name: x\nsearch_space: {policy_lr: {low: 1\n", "not valid YAML at line"),
    ("name: x\n\tbudget: 3\n", "not valid YAML"),
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("- name: x\n", "top level must be a mapping"),
    ("just a string\n", "top level must be a mapping"),
    ("name: x\nname: y\n", "written twice"),
], ids=["syntax-error", "tab-indent", "empty-file", "only-comments", "top-level-list",
        "top-level-string", "duplicate-key"])
def test_unreadable_spec_file_is_one_line(tmp_path, capsys, text, message):
    code, lines = validate(write(tmp_path, text), capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]


def test_missing_spec_file_is_one_line(tmp_path, capsys):
    code, lines = validate(tmp_path / "nope.yaml", capsys)
    assert code == 2 and len(lines) == 1 and "not found" in lines[0]


def test_parse_spec_refuses_a_non_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        parse_spec(["name", "x"])  # type: ignore[arg-type]
