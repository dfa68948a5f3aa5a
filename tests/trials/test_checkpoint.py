"""A run's checkpoint (checkpoint_every, checkpoint_dir): a run stopped after a checkpoint and started again
continues after it as the same run, on the demo model and a tiny LoRA Llama."""

from __future__ import annotations

import math

import pytest
import torch

from trials import CHECKPOINT_FILE, PPOConfig, PPOTrainer
from trials import metrics as K

BASE = dict(policy_lr=3e-4, value_lr=1e-3, kl_mode="adaptive", kl_coef=0.05, kl_target=1.0, kl_horizon=200.0,
            rollout_batch_size=16, mini_batch_size=8, ppo_epochs=2, response_length=8, eval_interval=2,
            num_eval_prompts=16, lr_schedule="linear", warmup_steps=2, num_iterations=5, checkpoint_every=2,
            num_threads=2, device="cpu", seed=3)


class Killed(Exception):
    """Stands for the process dying after an iteration was reported."""


def config(folder, **changes) -> PPOConfig:
    return PPOConfig.from_dict({**BASE, "checkpoint_dir": str(folder), **changes})


def numbers(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if not k.startswith("perf/")} for h in history]


def snapshot(trainer: PPOTrainer) -> dict:
    """What the next iteration reads, copied: trainable weights, optimizer and schedule, KL coefficient, RNGs."""
    run = trainer.state
    return {"policy": [p.detach().clone() for p in run.policy_params],
            "value": [p.detach().clone() for p in run.value_params],
            "adam": [run.optimizer.state[p][k].clone() for g in run.optimizer.param_groups for p in g["params"]
                     for k in ("step", "exp_avg", "exp_avg_sq")],
            "lr": [g["lr"] for g in run.optimizer.param_groups], "kl_coef": run.kl_ctl.value,
            "rng": torch.get_rng_state().clone(), "prompts": run.prompt_gen.get_state().clone(),
            "order": list(run._order)}


def assert_same_state(a: dict, b: dict) -> None:
    for key in ("policy", "value", "adam"):
        assert len(a[key]) == len(b[key]) > 0, key
        assert all(torch.equal(x, y) for x, y in zip(a[key], b[key], strict=True)), key
    assert a["lr"] == b["lr"] and a["kl_coef"] == b["kl_coef"] and a["order"] == b["order"]
    assert torch.equal(a["rng"], b["rng"]) and torch.equal(a["prompts"], b["prompts"])


def killed_after(trainer: PPOTrainer, iteration: int) -> dict:
    """Train until `iteration` is reported, then die there; returns the state the run had at that report."""
    seen = {}

    def report(i, metrics):
        if i == iteration:
            seen.update(snapshot(trainer))
            raise Killed
        return False

    with pytest.raises(Killed):
        trainer.train(report)
    return seen


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_run_resumed_from_its_checkpoint_is_the_run_never_stopped(demo_model, tiny_model, tmp_path, lora):
    extra = dict(model_path=str(tiny_model("llama")), lora_rank=4, value_backbone="shared") if lora else {}
    whole = PPOTrainer(config(tmp_path / "whole", **extra)).train()
    assert not (tmp_path / "whole" / CHECKPOINT_FILE).exists()  # a run that ended keeps none

    killed_after(PPOTrainer(config(tmp_path / "cut", **extra)), 3)  # its checkpoint: iteration 2
    again = PPOTrainer(config(tmp_path / "cut", **extra))
    assert again.resumed is not None and again.resumed.iteration == 2
    reported = []
    result = again.train(lambda i, m: reported.append((i, m)) and False)

    assert [i for i, _ in reported] == [1, 2, 3, 4, 5]  # the restored iterations are reported again, first
    assert numbers([m for _, m in reported[:2]]) == numbers(whole.history[:2])
    assert result.iterations == 5 and result.initial_eval == whole.initial_eval
    for ours, theirs in zip(numbers(result.history), numbers(whole.history), strict=True):
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert math.isclose(ours[name], theirs[name], rel_tol=1e-4, abs_tol=1e-6), (name, ours, theirs)
    assert result.history[2][K.KL_COEF] != BASE["kl_coef"]  # the adaptive coefficient moved, and was restored


def test_the_restored_state_is_the_state_saved(demo_model, tmp_path):
    """The state at the checkpoint (reported at iteration 2, after the save) equals the restored one."""
    trainer = PPOTrainer(config(tmp_path, checkpoint_every=2))
    at_save = killed_after(trainer, 2)
    restored = PPOTrainer(config(tmp_path, checkpoint_every=2))
    assert restored.resumed is not None and restored.resumed.iteration == 2
    assert_same_state(snapshot(restored), at_save)
    fresh = PPOTrainer(config(tmp_path / "fresh")).state.policy_params  # what it would start from
    assert not all(torch.equal(x, y) for x, y in zip(fresh, at_save["policy"], strict=True))


def test_under_lora_the_checkpoint_holds_the_adapters_not_the_base(tiny_model, demo_model, tmp_path):
    trainer = PPOTrainer(config(tmp_path, model_path=str(tiny_model("llama")), lora_rank=4))
    killed_after(trainer, 2)
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)
    adapter = sum(p.numel() for n, p in trainer.policy.named_parameters() if "lora_" in n)
    assert sum(t.numel() for t in state["policy"]) == adapter > 0
    assert adapter < sum(p.numel() for p in trainer.policy.parameters()) / 4


@pytest.mark.parametrize("change,loaded", [({"policy_lr": 1e-4}, False), ({"seed": 4}, False),
                                           ({"num_threads": 1}, True), ({"checkpoint_every": 3}, True)])
def test_only_a_checkpoint_of_the_same_config_is_loaded(demo_model, tmp_path, change, loaded):
    killed_after(PPOTrainer(config(tmp_path)), 3)
    other = PPOTrainer(config(tmp_path, **change))
    assert (other.resumed is not None) == loaded


def test_a_save_that_dies_midway_leaves_the_previous_checkpoint(demo_model, tmp_path, monkeypatch):
    from trials import _checkpoint  # its torch.save fails midway

    trainer = PPOTrainer(config(tmp_path, num_iterations=6))
    real_save = torch.save

    def dies_midway(state, f):
        if state["iteration"] == 4:
            f.write(b"half a checkpoint")
            raise Killed
        real_save(state, f)

    monkeypatch.setattr(_checkpoint.torch, "save", dies_midway)
    with pytest.raises(Killed):
        trainer.train()
    monkeypatch.setattr(_checkpoint.torch, "save", real_save)
    assert [p.name for p in tmp_path.iterdir() if p.name != CHECKPOINT_FILE] != []  # the cut-short save's file
    again = PPOTrainer(config(tmp_path, num_iterations=6))
    assert again.resumed is not None and again.resumed.iteration == 2
    again.train()
    assert list(tmp_path.iterdir()) == []  # the run ended: its checkpoint and the partial file are gone


def test_no_checkpoint_dir_or_checkpoint_every_0_writes_nothing(demo_model, tmp_path):
    killed_after(PPOTrainer(config(tmp_path, checkpoint_every=0)), 3)
    assert not list(tmp_path.iterdir())
    trainer = PPOTrainer(PPOConfig.from_dict({**BASE}))
    assert trainer.resumed is None


def test_the_checkpoint_is_gone_by_the_last_report(demo_model, tmp_path):
    """A sweep may end a trial at its last report (ASHA at max_t): nothing of the run executes after that
    report returns, so the checkpoint is removed before it, not after."""
    seen = {}

    def report(iteration, metrics):
        seen[iteration] = (tmp_path / CHECKPOINT_FILE).exists()
        if iteration == 5:
            raise Killed  # as the sweep ending the trial there: the run never gets past this call
        return False

    with pytest.raises(Killed):
        PPOTrainer(config(tmp_path, num_iterations=5, checkpoint_every=2)).train(report)
    assert seen[4] and not seen[5], seen  # saved after 2 and 4, gone by the report of 5, the last
