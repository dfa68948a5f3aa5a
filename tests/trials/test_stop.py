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


def _stops(limit: KLLimit, kls: list[float]) -> int | None:
    """The iteration at which `limit` stops a run reporting `kls` (None: it runs to its end)."""
    return next((i for i, kl in enumerate(kls, start=1) if limit(i, {K.KL: kl})), None)


def test_the_forecast_stops_a_rising_kl_before_it_crosses():
    rising = [0.0, 4.0, 8.0, 12.0, 16.0, 20.0]  # line: 4 nats an iteration, past 15 by iteration 6
    plain, forecast = KLLimit(15.0), KLLimit(15.0, forecast=True, last_iteration=6)
    assert _stops(plain, rising) == 5 and plain.reason().startswith(f"{K.KL} 16.0 passed")
    assert _stops(forecast, rising) == 3 and forecast.forecast_stop and forecast.kl_max == 8.0
    assert forecast.kl_forecast == pytest.approx(20.0) and "forecast to reach 20.0 by iteration 6" in forecast.reason()


@pytest.mark.parametrize("kls", [
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],        # rising, but below half the limit: no forecast drawn
    [12.0, 12.0, 11.0, 10.0, 9.0, 8.0],    # high but level, then falling
    [6.0, 7.0, 8.0, 9.0, 10.0, 11.0],      # rising 1 nat an iteration: ends at 11, the line says so
])
def test_the_forecast_leaves_a_kl_that_stays_within_the_limit(kls):
    limit = KLLimit(15.0, forecast=True, last_iteration=len(kls))
    assert _stops(limit, kls) is None and not limit.stopped and limit.reason() == ""


def test_the_forecast_never_judges_the_last_iteration_and_needs_it():
    # at iteration 4 the line through 8, 12, 14.9 reads 15.1, but the last iteration's own KL is what counts
    assert _stops(KLLimit(15.0, forecast=True, last_iteration=4), [8.0, 8.0, 12.0, 14.9]) is None
    with pytest.raises(ValueError, match="last_iteration=None"):
        KLLimit(15.0, forecast=True)


def test_grace_iterations_let_an_early_spike_fall_back():
    spike = [0.0, 45.0, 30.0, 13.0, 12.0, 11.0]  # the recorded shape of the best high-lr trials (bench/README.md)
    assert _stops(KLLimit(15.0), spike) == 2
    graced = KLLimit(15.0, grace_iterations=3)
    assert _stops(graced, spike) is None and graced.kl_max == 13.0  # iterations 1-3 are not judged
    still_high = KLLimit(15.0, grace_iterations=3)
    assert _stops(still_high, [0.0, 45.0, 30.0, 20.0, 12.0]) == 4 and still_high.crossed_at == 4
    assert _stops(KLLimit(15.0, grace_iterations=3), [0.0, math.nan]) == 2  # not finite: stopped all the same
