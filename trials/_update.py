"""The PPO update of one iteration (step 5 of trials._engine's `_iteration`): epochs x mini-batches x
micro-batches of the clipped surrogate, the clipped value loss and the entropy bonus."""

from __future__ import annotations

import torch

from trials import _math as M
from trials import metrics as K
from trials._errors import NonFiniteError
from trials._rollout import forward_logits, logprobs_of
from trials._run import _Rollout, _Run

__all__ = ["explained_variance", "update"]


def update(run: _Run, ro: _Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
    """ppo_epochs passes over the rollout in a seeded order, one optimizer step per mini-batch (its
    micro-batches' gradients accumulated, each weighted by its share, both norms clipped); the
    mini-batch steps' mean of each statistic. The vLLM server's weights are stale afterwards."""
    c = run.config
    B, P = len(ro.scores), ro.prompt_len
    micro = c.micro_batch_size or c.mini_batch_size
    sums: dict[str, float] = {}
    steps = 0
    run.policy.train()  # dropout is off; training mode turns on gradient checkpointing and LoRA dropout
    run.value.train()
    for _ in range(c.ppo_epochs):
        order = torch.randperm(B, generator=run.prompt_gen).to(run.device)
        for start in range(0, B, c.mini_batch_size):
            run.optimizer.zero_grad(set_to_none=True)
            mb = order[start:start + c.mini_batch_size]
            for m0 in range(0, len(mb), micro):
                idx = mb[m0:m0 + micro]
                stats = _micro_step(run, ro, advantages, returns, idx, P, weight=len(idx) / len(mb))
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value * len(idx) / len(mb)
            torch.nn.utils.clip_grad_norm_(run.policy_params, c.max_grad_norm)
            torch.nn.utils.clip_grad_norm_(run.value_params, c.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            steps += 1
    run.policy.eval()
    run.value.eval()
    if run.vllm:
        run.vllm.stale = True
    return {key: value / steps for key, value in sums.items()}


def _micro_step(run: _Run, ro: _Rollout, advantages: torch.Tensor, returns: torch.Tensor,
                idx: torch.Tensor, P: int, weight: float) -> dict[str, float]:
    """Policy forward and backward, then value forward and backward: the loss is
    pg_loss - ent_coef * entropy + vf_coef * vf_loss, its two parts touch disjoint parameters, and the
    policy's activations are freed before the value's forward (a lower peak)."""
    c = run.config
    mask = ro.mask[idx]
    ids, attn, pos = ro.sequences[idx], ro.attention_mask[idx], ro.position_ids[idx]
    with run.autocast():
        logits = forward_logits(run.policy, ids, attn, pos, P)
    logits = logits.float() / c.temperature
    logprobs = logprobs_of(logits, ids[:, P:], 1.0)
    with torch.set_grad_enabled(c.ent_coef != 0):  # without an entropy bonus it is only reported: no backward
        entropy = M.masked_mean(M.entropy_from_logits(logits), mask)
    pg_loss, pg_stats = M.policy_loss(logprobs, ro.logprobs[idx], advantages[idx], mask, c.cliprange)
    policy_loss = pg_loss - c.ent_coef * entropy
    if not torch.isfinite(policy_loss):
        raise NonFiniteError(f"the PPO loss became {policy_loss.item()} (policy {pg_loss.item()})")
    (policy_loss * weight).backward()
    del logits, logprobs
    with run.value.active():  # a shared base runs the value adapter, in the forward and its backward
        with run.autocast():
            vpred = run.value(ids, attn, pos)[:, P - 1:-1]
        vf_loss, vf_stats = M.value_loss(vpred, ro.values[idx], returns[idx], mask, c.cliprange_value)
        if not torch.isfinite(vf_loss):
            raise NonFiniteError(f"the value loss became {vf_loss.item()}")
        (c.vf_coef * vf_loss * weight).backward()
    return {K.POLICY_LOSS: pg_loss.item(), K.VALUE_LOSS: vf_loss.item(), K.CLIPFRAC: pg_stats["clipfrac"].item(),
            K.APPROXKL: pg_stats["approxkl"].item(), K.VALUE_CLIPFRAC: vf_stats["clipfrac"].item(),
            K.ENTROPY: entropy.item()}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the response tokens (0 when the returns do not vary)."""
    var_returns = M.masked_var(returns, mask)
    if var_returns.item() == 0:
        return 0.0
    return (1.0 - M.masked_var(returns - values, mask) / var_returns).item()
