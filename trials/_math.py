"""Pure PPO math: masked statistics, KL estimators, GAE, the clipped losses, the adaptive KL controller.

Shapes: B = samples, T = response tokens. `mask` is 1.0 on real response tokens and 0.0 on padding
after the EOS token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "compute_gae",
    "entropy_from_logits",
    "kl_per_token",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "value_loss",
]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries; with shift_mean=False the mean is added back."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi, in nats. (B, T)

    k1 = log pi - log pi_ref (unbiased, can be negative); k3 = (r - 1) - log r with r = pi_ref / pi
    (unbiased, never negative, lower variance).
    """
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"kl estimator must be 'k1' or 'k3', but got {estimator=}")


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution of each position, in nats. (..., V) -> (...)"""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each response. Returns (advantages, returns), (B, T).

    Values and rewards past the end of a response are treated as 0, so the last real token
    bootstraps from 0: delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}.
    """
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, advantages + values


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (to minimise) and its diagnostics: clipfrac and approxkl."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    stats = {
        "clipfrac": masked_mean((clipped > unclipped).float(), mask),
        "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
    }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, cliprange_value: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped kept within cliprange_value of the old value."""
    # clamp V itself (not old + clamp(V - old), which is V only up to rounding when V and old differ in
    # sign): inside the range V_clipped is V, so a token counts as clipped only when it is
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(loss_unclipped, loss_clipped), mask)
    return loss, {"clipfrac": masked_mean((loss_clipped > loss_unclipped).float(), mask)}


@dataclass
class FixedKLController:
    value: float

    def update(self, kl: float, n_samples: int) -> None:
        pass


@dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019): beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon).

    `kl` is the batch mean of the KL summed over each response (nats); `n_samples` the batch size.
    """

    value: float
    target: float
    horizon: float

    def update(self, kl: float, n_samples: int) -> None:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon
