"""The PPO math against cases worked by hand or known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from trials import _math as M


def test_gae_hand_worked_case():
    # gamma 1, lambda 0.5, V = 0.5 everywhere, reward 1 on the last token:
    # t2: delta = 1 + 0 - 0.5 = 0.5            A2 = 0.5
    # t1: delta = 0 + 0.5 - 0.5 = 0            A1 = 0 + 0.5 * 0.5 = 0.25
    # t0: delta = 0                             A0 = 0.5 * 0.25 = 0.125
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.full((1, 3), 0.5)
    adv, ret = M.compute_gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[0.125, 0.25, 0.5]]))
    assert torch.allclose(ret, torch.tensor([[0.625, 0.75, 1.0]]))


def test_gae_stops_at_the_end_of_a_shorter_response():
    # Response of 2 tokens (third is padding): the last real token bootstraps from 0.
    # gamma 0.9, lambda 0.5: t1: delta = 1 - 0.5 = 0.5; t0: delta = 0.9 * 0.5 - 0.5 = -0.05,
    # A0 = -0.05 + 0.9 * 0.5 * 0.5 = 0.175
    rewards = torch.tensor([[0.0, 1.0, 7.0]])  # 7.0 sits on padding and must be ignored
    values = torch.tensor([[0.5, 0.5, 3.0]])
    adv, ret = M.compute_gae(rewards, values, torch.tensor([[1.0, 1.0, 0.0]]), gamma=0.9, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[0.175, 0.5, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[0.675, 1.0, 0.0]]))


def test_gae_lambda_one_is_monte_carlo_return_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 1.0, 0.3]])
    values = torch.tensor([[0.4, 0.1, 0.9, -0.5]])
    adv, _ = M.compute_gae(rewards, values, torch.ones(1, 4), gamma=1.0, lam=1.0)
    mc = torch.flip(torch.cumsum(torch.flip(rewards, [1]), 1), [1])
    assert torch.allclose(adv, mc - values)


def test_masked_whiten_ignores_masked_entries():
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    # mean 2, unbiased variance 1 over the three real entries
    assert torch.allclose(M.masked_whiten(x, mask)[:3], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6)
    assert torch.allclose(M.masked_whiten(x, mask, shift_mean=False)[:3], torch.tensor([1.0, 2.0, 3.0]), atol=1e-6)
    assert M.masked_mean(x, mask).item() == pytest.approx(2.0)
    assert M.masked_var(x, mask).item() == pytest.approx(1.0)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_estimators_are_unbiased_for_the_analytic_kl(estimator):
    # E_{x~p}[k(x)] equals KL(p || q) exactly for both k1 and k3 (k3 adds sum(q) - 1 = 0).
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.25, 0.25, 0.25, 0.25])
    analytic = (p * (p / q).log()).sum()
    per_token = M.kl_per_token(p.log(), q.log(), estimator)
    assert (p * per_token).sum().item() == pytest.approx(analytic.item(), rel=1e-5)


def test_k3_is_never_negative_and_k1_can_be():
    logp = torch.log(torch.tensor([0.1, 0.6]))
    logq = torch.log(torch.tensor([0.3, 0.2]))
    assert (M.kl_per_token(logp, logq, "k3") >= 0).all()
    assert (M.kl_per_token(logp, logq, "k1") < 0).any()


def test_kl_of_identical_distributions_is_zero():
    logp = torch.log_softmax(torch.randn(3, 5), -1)
    for estimator in ("k1", "k3"):
        assert torch.allclose(M.kl_per_token(logp, logp, estimator), torch.zeros(3, 5))


@pytest.mark.parametrize("kl,expected_error", [(12.0, 0.2), (3.0, -0.2), (6.6, 0.1), (6.0, 0.0)])
def test_adaptive_kl_controller_follows_its_formula(kl, expected_error):
    ctl = M.AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    ctl.update(kl, n_samples=64)
    assert ctl.value == pytest.approx(0.1 * (1 + expected_error * 64 / 10000))


def test_adaptive_kl_controller_raises_beta_while_kl_stays_above_target():
    ctl = M.AdaptiveKLController(value=0.05, target=6.0, horizon=1000)
    for _ in range(10):
        ctl.update(30.0, n_samples=100)
    assert ctl.value == pytest.approx(0.05 * 1.02**10)


def test_fixed_kl_controller_never_moves():
    ctl = M.FixedKLController(0.05)
    ctl.update(100.0, 64)
    assert ctl.value == 0.05


def _loss_for_ratio(ratio: float, advantage: float, eps: float = 0.2):
    old = torch.zeros(1, 1)
    new = torch.full((1, 1), math.log(ratio))
    return M.policy_loss(new, old, torch.full((1, 1), advantage), torch.ones(1, 1), eps)


@pytest.mark.parametrize("ratio,advantage,loss,clipped", [
    (1.5, 1.0, -1.2, 1.0),   # positive advantage, ratio above 1 + eps: clipped, no more gain
    (0.5, 1.0, -0.5, 0.0),   # positive advantage, ratio below 1 - eps: the unclipped (worse) term
    (1.5, -1.0, 1.5, 0.0),   # negative advantage, ratio above: the unclipped (worse) term
    (0.5, -1.0, 0.8, 1.0),   # negative advantage, ratio below 1 - eps: clipped
    (1.1, 2.0, -2.2, 0.0),   # inside the clip range: plain surrogate
])
def test_clipped_policy_loss(ratio, advantage, loss, clipped):
    value, stats = _loss_for_ratio(ratio, advantage)
    assert value.item() == pytest.approx(loss, rel=1e-5)
    assert stats["clipfrac"].item() == clipped
    assert stats["approxkl"].item() == pytest.approx(0.5 * math.log(ratio) ** 2, rel=1e-5)


def test_clipped_value_loss_takes_the_pessimistic_term():
    old, ret, mask = torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1)
    # V moved 0 -> 1 (the return): unclipped error 0, clipped prediction 0.2 -> error 0.64
    loss, stats = M.value_loss(torch.ones(1, 1), old, ret, mask, cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.5 * 0.64)
    assert stats["clipfrac"].item() == 1.0
    # inside the clip range both terms agree
    loss, stats = M.value_loss(torch.full((1, 1), 0.1), old, ret, mask, cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.5 * 0.81)
    assert stats["clipfrac"].item() == 0.0


def test_value_inside_the_clip_range_is_not_counted_as_clipped():
    # V crossed zero within the range: old + (V - old) rounds to a float next to V, not to V
    old, value = torch.tensor([[0.12037420272827148]]), torch.tensor([[-0.0332915298640728]])
    assert (old + (value - old)).item() != value.item()
    loss, stats = M.value_loss(value, old, torch.zeros(1, 1), torch.ones(1, 1), cliprange_value=0.2)
    assert stats["clipfrac"].item() == 0.0
    assert loss.item() == 0.5 * (value**2).item()


def test_losses_ignore_masked_tokens():
    mask = torch.tensor([[1.0, 0.0]])
    loss, _ = M.policy_loss(torch.tensor([[0.0, 5.0]]), torch.zeros(1, 2), torch.tensor([[1.0, 100.0]]), mask, 0.2)
    assert loss.item() == pytest.approx(-1.0)


def test_entropy_of_uniform_logits_is_log_vocab():
    assert M.entropy_from_logits(torch.zeros(2, 7)).tolist() == pytest.approx([math.log(7)] * 2)
