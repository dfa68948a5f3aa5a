"""The sweep's diagnosis, in the guidance's words: pure rules over the trials' trajectories.

Each rule reads every trial's per-iteration metrics (`Trajectory`) and returns a `Finding`: which
trials show the problem, with their numbers, the parameter region where those trials concentrate
(against the other trials), and what the guidance (shared/guidance/ppo-hyperparameters-for-llms.txt)
says to do. `diagnose` runs them all; `render` writes the section that `tuner diagnose`, the end of
`tuner run` and the sweep's MLflow run (diagnosis.md) show. No Ray, Optuna or MLflow here: the
readers are in tuner/sweep/_diagnose.py.

The thresholds are in the units the engine reports (trials/metrics.py) and are named below.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trials import metrics as K
from tuner.trial import StopReason

__all__ = ["FLAT_REWARD", "HIGH_CLIPFRAC", "NEAR_ZERO_KL", "NEGATIVE_KL", "READS", "RULES",
           "VALUE_JUMP", "Finding", "Trajectory", "diagnose", "region", "render"]

NEAR_ZERO_KL = 0.1  # nats (summed over the response): a KL that never passes this stayed at the reference
FLAT_REWARD = 0.25  # reward gain (mean of the last 3 iterations minus the first 3) below this many batch stds is flat
VALUE_JUMP = 10.0  # loss/value_avg this many times its lowest earlier value (after iteration 1) is unstable
HIGH_CLIPFRAC = 0.2  # median policy/clipfrac_avg over the trial's second half above this is high
# objective/kl below this (nats) under k1 is the estimator's bias, not noise: in 360 recorded runs that sample
# exactly from the policy (bench/data/demo_curves.jsonl) the most negative batch mean is -0.07
NEGATIVE_KL = -0.5
SHOWN = 8  # evidence lines shown per finding
READS = (K.KL, K.SCORES, K.SCORES_STD, K.VALUE_LOSS, K.EXPLAINED_VARIANCE, K.CLIPFRAC)  # the metrics the rules read


@dataclass(frozen=True)
class Trajectory:
    """One trial: its searched values, why it ended, and its metrics per iteration (index i is
    iteration i + 1; NaN where the metric was not reported)."""

    number: int
    params: Mapping[str, Any]
    metrics: Mapping[str, Sequence[float]]
    stop_reason: str = ""
    engine: Mapping[str, Any] = field(default_factory=dict)  # the trial's full engine config, where known

    def series(self, name: str) -> list[float]:
        """The metric's reported values, in order (iterations that did not report it left out)."""
        return [v for v in self.metrics.get(name, ()) if v is not None and math.isfinite(v)]


@dataclass(frozen=True)
class Finding:
    rule: str  # the rule's key in RULES
    title: str
    trials: tuple[int, ...]  # the trials that show it
    evidence: tuple[str, ...]  # one line per trial: the numbers
    region: tuple[str, ...]  # where those trials concentrate, one parameter a line
    advice: str  # what to change
    guidance: str  # the guidance's own words ("" where it does not cover the problem)
    of: int = 0  # trials read


# -- the rules: one predicate per problem, each returning its evidence for one trial ("" = not shown) --

def _kl_exploding(t: Trajectory, limit: float) -> str:
    kl = t.series(K.KL)
    if t.stop_reason in StopReason.KL:
        how = "forecast to pass" if t.stop_reason == StopReason.KL_FORECAST else "passed"
        return (f"{how} the {limit:g}-nat limit at iteration {len(t.metrics.get(K.KL, ()))} "
                f"(KL max {max(kl, default=math.nan):.1f})")
    if kl and max(kl) > limit:
        return f"KL max {max(kl):.1f} nats, above the {limit:g}-nat limit"
    return ""


def _kl_near_zero(t: Trajectory, limit: float) -> str:
    kl, reward, spread = t.series(K.KL), t.series(K.SCORES), t.series(K.SCORES_STD)
    if len(kl) < 3 or len(reward) < 6 or max(kl) >= NEAR_ZERO_KL:
        return ""
    gain = statistics.fmean(reward[-3:]) - statistics.fmean(reward[:3])
    std = statistics.fmean(spread) if spread else 0.0
    if gain >= FLAT_REWARD * std:
        return ""
    return (f"KL max {max(kl):.3f} nats; reward {statistics.fmean(reward[:3]):.3f} -> "
            f"{statistics.fmean(reward[-3:]):.3f} (batch std {std:.3f})")


def _value_unstable(t: Trajectory, limit: float) -> str:
    loss, ev = t.series(K.VALUE_LOSS), t.series(K.EXPLAINED_VARIANCE)
    said = []
    for i in range(2, len(loss)):  # iteration 1's loss is the untrained value's
        low = min(loss[1:i])
        if low > 0 and loss[i] > VALUE_JUMP * low:
            said.append(f"value loss {loss[i]:.3g} at iteration {i + 1}, {loss[i] / low:.0f}x its "
                        f"earlier low {low:.3g}")
            break
    half = ev[len(ev) // 2:]
    if len(ev) >= 4 and statistics.median(half) < 0:
        said.append(f"explained variance {statistics.median(half):.2f} (median of the second half)")
    return "; ".join(said)


def _high_clipfrac(t: Trajectory, limit: float) -> str:
    clip = t.series(K.CLIPFRAC)
    half = clip[len(clip) // 2:]
    if len(clip) < 4 or statistics.median(half) <= HIGH_CLIPFRAC:
        return ""
    return f"clip fraction {statistics.median(half):.2f} (median of the second half)"


def _negative_kl(t: Trajectory, limit: float) -> str:
    kl = t.series(K.KL)
    if t.engine.get("kl_estimator", "k1") != "k1" or not kl or min(kl) >= NEGATIVE_KL:
        return ""
    i = kl.index(min(kl))
    return f"KL {min(kl):.2f} nats at iteration {i + 1} (k1 estimator)"


@dataclass(frozen=True)
class Rule:
    title: str
    shows: Callable[[Trajectory, float], str]
    advice: str
    guidance: str


RULES: dict[str, Rule] = {
    "kl_exploding": Rule(
        "KL exploding", _kl_exploding,
        "raise beta (kl_coef), lower the policy learning rate (policy_lr), add learning-rate warmup (warmup_steps) "
        "or switch to the adaptive KL controller (kl_mode: adaptive, kl_target about 6 nats)",
        "Prioritize KL Control: ... Adjust β or the adaptive KL target first if the policy diverges too quickly. / "
        "A rate that's too high can cause the policy to diverge drastically from the initial SFT model, leading to "
        "high KL divergence, nonsensical outputs, and training collapse."),
    "kl_near_zero": Rule(
        "KL near zero, reward flat", _kl_near_zero,
        "lower beta (kl_coef) or raise the policy learning rate (policy_lr)",
        "Monitor the actual KL divergence during training – if it consistently exceeds a desired threshold (e.g., "
        "10-15 nats) or collapses to zero, adjust β accordingly. / A rate that's too low results in slow learning. / "
        "If training is stable but slow, consider slightly increasing the learning rate or adjusting batch sizes "
        "(if memory permits)."),
    "value_unstable": Rule(
        "Value loss unstable or explained variance negative", _value_unstable,
        "lower the value learning rate (value_lr) or change vf_coef (0.5 or 1.0)",
        "instability in the value function can negatively impact advantage estimation and policy updates. / "
        "A typical value for c1 is 0.5 or 1.0."),
    "high_clipfrac": Rule(
        "High clip fractions", _high_clipfrac,
        "fewer PPO epochs (ppo_epochs) or a smaller clip epsilon (cliprange)",
        "If experiencing instability with multiple epochs, try reducing the number of epochs or tightening the "
        "clipping range (ϵ)."),
    "negative_kl": Rule(
        "Negative KL (k1 estimator)", _negative_kl,
        "check the generation settings (top_k, top_p, temperature: the KL's log-probs are over the whole "
        "vocabulary, so truncated sampling biases k1) or use kl_estimator: k3, which is never negative",
        ""),  # the guidance does not speak of KL estimators
}


def diagnose(trajectories: Sequence[Trajectory], kl_limit: float) -> list[Finding]:
    """Every rule's finding over the trials (rules no trial shows are left out)."""
    found = []
    for key, rule in RULES.items():
        shown = [(t, rule.shows(t, kl_limit)) for t in trajectories]
        hits = [(t, why) for t, why in shown if why]
        if not hits:
            continue
        numbers = {t.number for t, _ in hits}
        found.append(Finding(rule=key, title=rule.title, trials=tuple(t.number for t, _ in hits),
                             evidence=tuple(f"trial {t.number}: {why}" for t, why in hits),
                             region=tuple(region(trajectories, numbers)), advice=rule.advice,
                             guidance=rule.guidance, of=len(trajectories)))
    return found


def region(trajectories: Sequence[Trajectory], flagged: set[int], top: int = 3) -> list[str]:
    """Where the flagged trials concentrate: for each numeric searched parameter, the one-sided split
    (>= v or <= v) that holds the largest share of the flagged trials minus the share of the others;
    the `top` best, each as "policy_lr >= 0.0003 (5 of 5 of these trials, 1 of 6 others)"."""
    ours = [t for t in trajectories if t.number in flagged]
    others = [t for t in trajectories if t.number not in flagged]
    if not ours or not others:
        return []
    names = sorted({n for t in trajectories for n, v in t.params.items() if _numeric(v)})
    best = []
    for name in names:
        values = sorted({t.params[name] for t in trajectories if _numeric(t.params.get(name))})
        if len(values) < 2:
            continue
        splits = [(op, v) for v in values for op in (">=", "<=")]
        gain, op, v = max((_share(ours, name, op, v) - _share(others, name, op, v), op, v) for op, v in splits)
        if gain > 0:
            inside = sum(_inside(t, name, op, v) for t in ours), sum(_inside(t, name, op, v) for t in others)
            best.append((gain, f"{name} {op} {_shown(v, op)} ({inside[0]} of {len(ours)} of these "
                               f"trials, {inside[1]} of {len(others)} others)"))
    return [text for _, text in sorted(best, key=lambda b: -b[0])[:top]]


def _shown(v: float, op: str) -> str:
    """v to 3 digits where the rounded bound still holds v, else to 6."""
    short = f"{v:.3g}"
    return short if (float(short) <= v if op == ">=" else float(short) >= v) else f"{v:.6g}"


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _inside(t: Trajectory, name: str, op: str, v: float) -> bool:
    x = t.params.get(name)
    return _numeric(x) and (x >= v if op == ">=" else x <= v)


def _share(trials: list[Trajectory], name: str, op: str, v: float) -> float:
    return sum(_inside(t, name, op, v) for t in trials) / len(trials)


def render(findings: Sequence[Finding], trials: int) -> str:
    """The diagnosis section, as plain text (also Markdown)."""
    if trials == 0:
        return "## Diagnosis\n\nNo trial has a recorded trajectory yet.\n"
    if not findings:
        return (f"## Diagnosis\n\nNone of the problems the guidance names shows in the trajectories of the {trials} "
                f"trials ({', '.join(r.title for r in RULES.values())}).\n")
    out = ["## Diagnosis", ""]
    for f in findings:
        named = ", ".join(map(str, f.trials[:3 * SHOWN])) + (", ..." if len(f.trials) > 3 * SHOWN else "")
        out.append(f"- {f.title}: {len(f.trials)} of {f.of} trials ({named})")
        out.extend(f"    {line}" for line in f.evidence[:SHOWN])
        if len(f.evidence) > SHOWN:
            out.append(f"    ... and {len(f.evidence) - SHOWN} more")
        if f.region:
            out.append(f"    where: {'; '.join(f.region)}")
        out.append(f"    do: {f.advice}")
        if f.guidance:
            out.append(f"    the guidance: \"{f.guidance}\"")
    return "\n".join(out) + "\n"
