"""The KL limit as a stopper, and reporters chained into one."""

from __future__ import annotations

import math

import pytest

from trials import KLLimit, chain, passes_kl_limit
from trials import metrics as K


def test_the_limit_stops_in_the_iteration_that_passes_it():
    limit = KLLimit(15.0)
    kls = [1.0, 14.9, 15.0, 15.1, 3.0]
    stops = [limit(i, {K.KL: kl}) for i, kl in enumerate(kls, start=1)]
    assert stops == [False, False, False, True, True]  # equal to the limit is within it; once past, it stays stopped
    assert limit.crossed_at == 4 and limit.kl_max == 15.1
    assert "15.1" in limit.reason() and "limit 15" in limit.reason() and "iteration 4" in limit.reason()


@pytest.mark.parametrize("kl", [math.nan, math.inf, -math.inf])
def test_a_kl_that_is_not_finite_passes_the_limit(kl):
    assert passes_kl_limit(kl, 15.0)
    limit = KLLimit(15.0)
    assert limit(1, {K.KL: kl}) and limit.kl_max == math.inf


def test_a_limit_must_be_positive():
    with pytest.raises(ValueError, match="limit=0"):
        KLLimit(0)


def test_chain_calls_every_reporter_and_stops_when_any_asks():
    seen: list[int] = []

    def record(iteration: int, metrics: dict[str, float]) -> bool:
        seen.append(iteration)
        return False

    report = chain(KLLimit(10.0), None, record)
    assert report(1, {K.KL: 5.0}) is False
    assert report(2, {K.KL: 11.0}) is True
    assert seen == [1, 2]  # the reporter after the stopper still saw the report that stopped the run


def test_a_run_stops_at_the_crossing(demo_model):
    from trials import PPOConfig, train

    config = PPOConfig(model_path=str(demo_model), num_iterations=8, policy_lr=3e-3, kl_coef=0.001,
                       rollout_batch_size=16, mini_batch_size=8, num_eval_prompts=8, eval_interval=100)
    limit = KLLimit(15.0)
    result = train(config, limit)
    assert limit.stopped and result.stopped and result.iterations == limit.crossed_at
    assert result.history[-1][K.KL] > 15.0 and all(h[K.KL] <= 15.0 for h in result.history[:-1])
