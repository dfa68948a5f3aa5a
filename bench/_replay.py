"""Sweeps replayed on the recorded learning-curve table (bench/_curves.py), in simulated compute time.

The controller's decisions, as it makes them:
- sampling: the spec's Optuna sampler through the controller's own `ask_trial`, asked when a slot
  frees (at most `workers` trials at once), told as tuner/sweep/_searcher.py tells (constraint
  kl = kl_max - limit; PRUNED for a scheduler cut; intermediate values reported every iteration;
  a config already run is told that run's outcome and the sampler asked again, `ask_trial`);
- the score: the controller's Scorer (tuner.trial; the initial evaluation first);
- the KL limit: the engine's stopper (trials.KLLimit, with the spec's forecast and grace): a trial
  whose objective/kl passes the limit (or is forecast to) stops at that iteration, is infeasible, and
  scores the worst possible value for the scheduler (tuner.trial.scheduler_score);
- ASHA: ray.tune's AsyncHyperBandScheduler with one bracket (rungs at grace * rf^k below max_t; a trial
  reaching a rung stops if its score is below the (1 - 1/rf) percentile of the scores recorded there
  before it; every trial stops at max_t).
Compute is the recorded seconds of what ran: each trial's start (loading, initial evaluation) and
its iterations (evaluations included).

A sweep's result is judged two ways (`JUDGED`), from the same replay: by the controller's rule (a
trial is feasible when it ran its iterations and its KL never passed the limit after the grace
iterations) and by its final KL (feasible when it was not stopped by the KL rule and its KL at its
last iteration is within the limit: the final policy, as a user judging it would). The two differ
only for trials the limit did not stop whose KL passed it and came back, i.e. without the limit or
within its grace iterations.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from _curves import Curve, key

EVER, FINAL = "ever", "final"
JUDGED = {EVER: "its KL never passed the limit (the controller's rule)",
          FINAL: "its KL at its end within the limit (the final policy)"}


class Asha:
    """ray.tune.schedulers.AsyncHyperBandScheduler (brackets=1, stop_last_trials=True), mode max."""

    def __init__(self, grace: int, rf: float, max_t: int):
        n = int(np.log(max_t / grace) / np.log(rf) + 1)
        self.rf, self.max_t = rf, max_t
        self.rungs: list[tuple[float, dict[int, float]]] = [(grace * rf ** k, {}) for k in reversed(range(n))]

    def on_result(self, trial: int, iteration: int, score: float) -> bool:
        """True: stop the trial."""
        if iteration >= self.max_t:
            return True
        return self._bracket(trial, iteration, score)

    def on_complete(self, trial: int, iteration: int, score: float) -> None:
        self._bracket(trial, iteration, score)

    def _bracket(self, trial: int, iteration: int, score: float) -> bool:
        for milestone, recorded in self.rungs:
            if iteration < milestone or trial in recorded:
                continue
            cutoff = np.nanpercentile(list(recorded.values()), (1 - 1 / self.rf) * 100) if recorded else None
            recorded[trial] = score
            return cutoff is not None and score < cutoff
        return False


@dataclass
class Trial:
    number: int
    params: dict[str, Any]
    curve: Curve
    started: float  # simulated time
    iterations: int = 0
    compute: float = 0.0
    kl_max: float = -math.inf
    value: float | None = None
    state: str = "RUNNING"  # COMPLETE, INFEASIBLE, PRUNED
    stop_reason: str = ""
    ended: float = math.nan

    @property
    def kl_final(self) -> float:
        """objective/kl at the last iteration it ran (nats)."""
        return self.curve.kl[self.iterations - 1] if self.iterations else math.nan

    def feasible(self, judged: str = EVER, limit: float = math.inf) -> bool:
        """Feasible by the rule `judged` (JUDGED), against the KL limit (nats)."""
        from trials import passes_kl_limit
        from tuner.trial import StopReason

        if judged == EVER:
            return self.state == "COMPLETE"
        return (self.state != "PRUNED" and self.value is not None and self.stop_reason not in StopReason.KL
                and not passes_kl_limit(self.kl_final, limit))


@dataclass
class Sweep:
    limit: float
    trials: list[Trial] = field(default_factory=list)
    copies: int = 0  # sampled configs already run: told their outcome, not run
    # each trial as it ends: (compute so far, iterations so far, the trial)
    timeline: list[tuple[float, int, Trial]] = field(default_factory=list)

    def bests(self, judged: str = EVER) -> list[tuple[float, float]]:
        """After each trial's end: (compute so far, best value so far of the trials feasible by `judged`)."""
        best, out = -math.inf, []
        for compute, _, t in self.timeline:
            if t.feasible(judged, self.limit) and t.value is not None:
                best = max(best, t.value)
            out.append((compute, best))
        return out

    def compute_to_reach(self, target: float, judged: str = EVER) -> float:
        """Compute spent when the best feasible value first reached target (inf if never)."""
        return next((c for c, best in self.bests(judged) if best >= target), math.inf)

    def best_within(self, compute: float, judged: str = EVER) -> float:
        """The best feasible value among the trials that ended with at most `compute` spent."""
        return max((b for c, b in self.bests(judged) if c <= compute), default=-math.inf)

    @property
    def compute(self) -> float:
        return sum(t.compute for t in self.trials)

    def best(self, judged: str = EVER) -> float:
        return max((t.value for t in self.trials if t.feasible(judged, self.limit) and t.value is not None),
                   default=-math.inf)


def simulate(table: dict[str, Curve], spec: Any, sampler: Any, *, asha: bool, kl_limit: bool, workers: int,
             max_trials: int | None = None, max_compute: float | None = None,
             snap: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Sweep:
    """One sweep of `spec` over the table with `sampler`; ASHA and the KL limit on or off (the limit
    with the spec's kl_limit.forecast and grace_iterations, as the trials apply them).

    New trials start while fewer than max_trials have started and the compute spent is below
    max_compute; running trials always finish (or are stopped) as they would be. `snap`: the table's
    config for a sampled one (a spec whose space is not the table's grid); default: the grid's keys."""
    import optuna

    from trials import KLLimit
    from trials import metrics as K
    from tuner.sweep.study import ATTR, ask_trial
    from tuner.trial import Scorer, StopReason, scheduler_score

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=spec.directions(), sampler=sampler)
    max_t, limit, objective = spec.iterations(), spec.kl_limit, spec.objective
    scheduler = Asha(spec.scheduler.grace_period, spec.scheduler.reduction_factor, max_t) if asha else None
    grid_keys = [k for k, v in spec.search_space.items() if hasattr(v, "choices")]
    sweep, events, live = Sweep(limit), [], {}
    spent = [0.0, 0]  # compute, iterations

    def start(now: float) -> None:
        trial, sampled, _ = ask_trial(study, spec)  # as StudySearcher.suggest
        params = snap(sampled) if snap else {k: v for k, v in sampled.items() if k in grid_keys}
        sim = Trial(number=trial.number, params=params, curve=table[key(params)], started=now)
        scorer = Scorer(objective.metric, objective.direction, objective.score, objective.last_k,
                        sim.curve.initial_eval)
        rule = spec.kl_rule
        live[sim.number] = (trial, scorer, KLLimit(limit, forecast=rule.forecast,
                                                   grace_iterations=rule.grace_iterations,
                                                   last_iteration=max_t))
        sweep.trials.append(sim)
        heapq.heappush(events, (now + sim.curve.start_seconds + sim.curve.seconds[0], sim.number, sim))

    def may_start() -> bool:
        return ((max_trials is None or len(sweep.trials) < max_trials)
                and (max_compute is None or spent[0] < max_compute))

    for _ in range(workers):
        if may_start():
            start(0.0)
    while events:
        now, _, sim = heapq.heappop(events)
        trial, scorer, stopper = live[sim.number]
        sim.iterations += 1
        i = sim.iterations - 1
        cost = sim.curve.seconds[i] + (sim.curve.start_seconds if i == 0 else 0.0)
        sim.compute += cost
        spent[0] += cost
        spent[1] += 1
        kl = sim.curve.kl[i]
        metrics = {K.KL: kl} if sim.curve.eval[i] is None else {K.KL: kl, K.EVAL_SCORES: sim.curve.eval[i]}
        crossed = stopper(sim.iterations, metrics)
        sim.kl_max = stopper.kl_max
        score = scorer.update(metrics)
        over = kl_limit and crossed
        done = over or sim.iterations == max_t
        if math.isfinite(score):
            trial.report(score, step=sim.iterations)
        sched = scheduler_score(score, over, objective.direction)
        cut = scheduler.on_result(sim.number, sim.iterations, sched) if scheduler else False
        if not (done or cut):
            heapq.heappush(events, (now + sim.curve.seconds[sim.iterations], sim.number, sim))
            continue
        if scheduler:
            scheduler.on_complete(sim.number, sim.iterations, sched)
        reason = StopReason.of_kl(stopper) if over else StopReason.COMPLETED if done else StopReason.PRUNED
        _finish(study, trial, sim, score, limit, reason, now)
        sweep.timeline.append((spent[0], spent[1], sim))
        if may_start():
            start(now)
    sweep.copies = sum(ATTR["duplicate"] in t.user_attrs for t in study.get_trials(deepcopy=False))
    return sweep


def _finish(study: Any, trial: Any, sim: Trial, score: float, limit: float, reason: str, now: float) -> None:
    """What the searcher tells the study (tuner.trial.verdict), and the trial's end state."""
    from optuna.trial import TrialState

    from trials import passes_kl_limit
    from tuner.trial import StopReason, kl_constraint

    trial.set_constraint("kl", kl_constraint(sim.kl_max, limit, reason))
    sim.ended, sim.stop_reason = now, reason
    if reason == StopReason.PRUNED or not math.isfinite(score):
        study.tell(trial, state=TrialState.PRUNED)
        sim.state = "PRUNED"
        return
    study.tell(trial, score)
    sim.value = score
    sim.state = "INFEASIBLE" if passes_kl_limit(sim.kl_max, limit) or reason in StopReason.KL else "COMPLETE"
