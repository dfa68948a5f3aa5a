"""What the KL limit saves, and whether it stops trials that would have been among the best.

    python bench/_curves.py && python bench/_curves.py --calibrate   # once: the table and its cost model
    python bench/kl_pruning.py                                       # under a minute

On the recorded table (every config of bench/specs/demo_grid.yaml run to its end: what "running
every trial to its end" costs). The controller's rule: a trial stops at the first iteration whose
objective/kl passes the limit (15 nats) and is infeasible. A doomed trial is one whose KL is above
the limit at its end, when run to its end with no limit (whatever any stopping rule does); saved:
the iterations (and cost-model seconds) a rule spares the doomed trials, against all they would
spend. False prunes are counted in the view of a user who judges the final policy: the top-3 trials
by final eval/scores among those whose KL is within the limit at their end, that the rule stops on
the way. The same per replayed default sweep (TPE + ASHA + the limit): how often the limit stops a
trial that would have ended within the limit and been in that sweep's own top-3, as a count and as
a share of sweeps. Then other stopping rules (patience, a grace period, a moving mean), to show the
trade-off. Then the KL forecast (kl_limit.forecast; the engine's own stopper, trials.KLLimit, replayed
on each curve): the iterations it saves beyond the first crossing, and the trials it stops wrongly
(final KL within the limit) against the plain rule, on the table and in replayed default sweeps with
it on. Last, the top-3 are run again with Adam warmup, live (what causes their early KL spike).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from typing import Any

from _common import load, machine, save
from _curves import COSTS, Curve, best_never_crossing, costed, grid, load_grid_spec, load_table
from _replay import simulate

Rule = Callable[[list[float], float], "int | None"]  # (kl per iteration, limit) -> iteration it stops at


def consecutive(p: int) -> Rule:
    def rule(kl: list[float], limit: float) -> int | None:
        run = 0
        for i, value in enumerate(kl):
            run = run + 1 if not math.isfinite(value) or value > limit else 0
            if run >= p:
                return i + 1
        return None
    return rule


def stopper(**options: Any) -> Rule:
    """The engine's stopper (trials.KLLimit) with `options` (forecast, grace_iterations, window, floor)."""
    from trials import KLLimit
    from trials import metrics as K

    def rule(kl: list[float], limit: float) -> int | None:
        s = KLLimit(limit, last_iteration=len(kl), **options)
        return next((i for i, v in enumerate(kl, start=1) if s(i, {K.KL: v})), None)
    return rule


def moving_mean(w: int) -> Rule:
    return lambda kl, limit: next((i + 1 for i in range(w - 1, len(kl)) if sum(kl[i + 1 - w:i + 1]) / w > limit), None)


CONTROLLER = "first crossing (the controller)"
RULES: dict[str, Rule] = {CONTROLLER: stopper(), "2 in a row": consecutive(2), "3 in a row": consecutive(3),
                          "5 in a row": consecutive(5), "not before iteration 4": stopper(grace_iterations=3),
                          "not before iteration 7": stopper(grace_iterations=6), "mean of the last 3": moving_mean(3)}
FORECAST = "forecast (the default options: window 3, floor 0.5)"
# the forecast's options, with kl_limit.grace_iterations 3, and the window and floor it could have had
FORECASTS: dict[str, dict[str, Any]] = {
    FORECAST: {"forecast": True}, "forecast + grace_iterations 3": {"forecast": True, "grace_iterations": 3},
    "grace_iterations 3 alone": {"grace_iterations": 3},
    **{f"forecast, window {w}, floor {f}": {"forecast": True, "window": w, "floor": f}
       for w in (2, 3, 4) for f in (0.0, 0.25, 0.5, 0.75) if (w, f) != (3, 0.5)}}


def doomed(curve: Curve, limit: float) -> bool:
    """Above the limit at its end, when run to its end: infeasible whatever a stopping rule does."""
    return not curve.kl[-1] <= limit  # a NaN KL is doomed too


# the earliest iteration a rule judging the KL can stop at: iteration 1's rollout comes before any update,
# from a policy equal to the reference, so its KL is 0 up to rounding (5.6e-7 nats on every curve of the table)
EARLIEST = 2


def savings(curves: list[Curve], limit: float, rule: Rule) -> dict[str, Any]:
    """Saved iterations on the doomed trials, and the most any rule could save on them (stopping each at
    EARLIEST); the trials the rule stops that would end within the limit. A doomed trial's KL
    passes the limit at its last iteration at the latest, so the first crossing stops every one of them."""
    stops = [(c, rule(c.kl, limit)) for c in curves]
    doomed_stops = [(c, s) for c, s in stops if doomed(c, limit)]
    spent = sum(c.iterations for c, _ in doomed_stops)
    saved = sum(c.iterations - s for c, s in doomed_stops if s is not None)
    ceiling = sum(max(c.iterations - EARLIEST, 0) for c, _ in doomed_stops)
    spent_s = sum(sum(c.seconds) for c, _ in doomed_stops)
    saved_s = sum(sum(c.seconds[s:]) for c, s in doomed_stops if s is not None)
    return {"trials": len(curves), "doomed": len(doomed_stops), "stopped": sum(s is not None for _, s in stops),
            "doomed_stopped": sum(s is not None for _, s in doomed_stops),
            "first_kl_max": max(c.kl[0] for c in curves),  # nats: 0 up to rounding
            "best_possible_saved_fraction": ceiling / spent if spent else math.nan,
            "stopped_not_doomed": sum(s is not None and not doomed(c, limit) for c, s in stops),
            # what those would have run after the stop: the iterations the cost is paid in
            "iterations_cut_not_doomed": sum(c.iterations - s for c, s in stops
                                             if s is not None and not doomed(c, limit)),
            "iterations_doomed_would_spend": spent,
            "iterations_saved": saved, "saved_fraction": saved / spent if spent else math.nan,
            "seconds_saved_fraction": saved_s / spent_s if spent_s else math.nan,
            "share_of_all_iterations": saved / sum(c.iterations for c in curves),
            "stop_iterations": sorted(s for _, s in doomed_stops if s is not None)}


def false_prunes(curves: list[Curve], limit: float, rule: Rule, k: int = 3) -> dict[str, Any]:
    """The top-k by final eval among trials within the limit at their end, and which the rule stops."""
    ending_within = sorted((c for c in curves if c.eval[-1] is not None and c.kl[-1] <= limit),
                           key=lambda c: c.eval[-1], reverse=True)
    top = ending_within[:k]
    stopped = [(rank, c) for rank, c in enumerate(ending_within, start=1) if rule(c.kl, limit) is not None]
    return {"ending_within": len(ending_within),
            # the cost: trials that end within the limit and the rule stops, best first, with their
            # rank among all that end within it by final eval/scores
            "stopped_within": [{"rank": rank, "final_eval": c.eval[-1], "kl_max": max(c.kl)} for rank, c in stopped],
            "top": [{"params": c.params, "final_eval": c.eval[-1], "kl_max": max(c.kl), "kl_final": c.kl[-1],
                     "stopped_at": rule(c.kl, limit)} for c in top],
            "false_prunes": sum(rule(c.kl, limit) is not None for c in top),
            "ending_within_but_stopped": sum(rule(c.kl, limit) is not None for c in ending_within),
            "best_never_crossing": best_never_crossing(curves, limit)}


def against_plain(curves: list[Curve], limit: float, rule: Rule) -> dict[str, Any]:
    """`rule` against the first crossing: iterations (and cost-model seconds) saved beyond it, on the
    trials the first crossing stops and on all; the trials each stops whose final KL is within the limit."""
    plain = RULES[CONTROLLER]
    rows = [(c, plain(c.kl, limit) or c.iterations, rule(c.kl, limit) or c.iterations) for c in curves]
    stopped = [(c, p, r) for c, p, r in rows if plain(c.kl, limit) is not None]
    spent = sum(p for _, p, _ in stopped)

    def wrong(stops: Rule) -> int:
        return sum(stops(c.kl, limit) is not None and c.kl[-1] <= limit for c in curves)

    new = [(c, r) for c, p, r in rows if plain(c.kl, limit) is None and rule(c.kl, limit) is not None]
    return {"iterations_plain_spends_on_its_stopped": spent,
            "saved_beyond_plain_on_its_stopped": sum(p - r for _, p, r in stopped),
            "saved_fraction_of_plain_on_its_stopped": sum(p - r for _, p, r in stopped) / spent if spent else math.nan,
            "seconds_saved_fraction_of_plain_on_its_stopped": sum(
                sum(c.seconds[r:p]) - sum(c.seconds[p:r]) for c, p, r in stopped)
            / sum(sum(c.seconds[:p]) for c, p, _ in stopped),
            "saved_beyond_plain_all": sum(p - r for _, p, r in rows),
            "iterations_plain_all": sum(p for _, p, _ in rows),
            "newly_stopped": len(new), "newly_stopped_final_eval": sorted(c.eval[-1] for c, _ in new),
            "wrongly_stopped": {"plain": wrong(plain), "rule": wrong(rule)},
            "false_prunes_top3": false_prunes(curves, limit, rule)["false_prunes"]}


def replayed(spec: Any, table: dict, seeds: int, trials: int, kl: dict[str, Any] | None = None) -> dict[str, Any]:
    """The default sweep per seed (with kl_limit options `kl`): what its KL stops saved on its doomed
    trials, the trials they stopped that are not doomed, how many of its own top-3 (by final eval/scores
    among its trials that would end within the limit) they stopped, and its best feasible value."""
    from tuner.spec import derive_spec, make_sampler
    from tuner.trial import StopReason

    rows, limit = [], spec.kl_limit
    for seed in range(seeds):
        s = derive_spec(spec, sampler={"seed": seed}, budget={"trials": trials}, kl_limit=kl or {})
        sweep = simulate(table, s, make_sampler(s), asha=True, kl_limit=True, workers=spec.resources.max_concurrent,
                         max_trials=trials)
        by_limit = {t.number for t in sweep.trials if t.stop_reason in StopReason.KL}
        lost = [t for t in sweep.trials if doomed(t.curve, limit)]
        within = [t for t in sweep.trials if not doomed(t.curve, limit) and t.curve.eval[-1] is not None]
        top = sorted(within, key=lambda t: t.curve.eval[-1], reverse=True)[:3]
        rows.append({"seed": seed, "kl_stopped": len(by_limit), "doomed": len(lost),
                     "iterations_doomed_would_spend": sum(t.curve.iterations for t in lost),
                     "iterations_saved": sum(t.curve.iterations - t.iterations for t in lost if t.number in by_limit),
                     "wrongly_stopped": sum(t.number in by_limit and not doomed(t.curve, limit) for t in sweep.trials),
                     "false_prunes": sum(t.number in by_limit for t in top),
                     "best_stopped": bool(top) and top[0].number in by_limit,
                     "all_iterations": sum(t.iterations for t in sweep.trials), "all_seconds": sweep.compute,
                     "best_feasible": sweep.best()})
    would, saved = sum(r["iterations_doomed_would_spend"] for r in rows), sum(r["iterations_saved"] for r in rows)
    return {"seeds": seeds, "trials": trials, "kl_limit": kl or {}, "per_seed": rows,
            "saved_fraction": saved / would if would else math.nan,
            "all_iterations": sum(r["all_iterations"] for r in rows),
            "all_seconds": sum(r["all_seconds"] for r in rows),
            "wrongly_stopped": sum(r["wrongly_stopped"] for r in rows),
            "false_prunes": sum(r["false_prunes"] for r in rows),  # a sweep's own top-3 stopped by the limit
            "sweeps_with_false_prunes": sum(r["false_prunes"] > 0 for r in rows),
            "sweeps_with_best_stopped": sum(r["best_stopped"] for r in rows)}


def with_warmup(spec: Any, top: list[dict[str, Any]], warmup: int) -> list[dict[str, Any]]:
    """The top trials run again, live, with `warmup` optimizer steps of learning-rate warmup."""
    from trials import PPOTrainer
    from trials import metrics as K
    from tuner.spec import trial_config

    out = []
    for t in top:
        history = PPOTrainer(trial_config(spec, t["params"]).replace(warmup_steps=warmup)).train().history
        out.append({"params": t["params"], "kl_max": max(h[K.KL] for h in history),
                    "final_eval": history[-1][K.EVAL_SCORES], "warmup_steps": warmup})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--trials", type=int, default=32, help="trials per replayed sweep")
    parser.add_argument("--warmup", type=int, default=8, help="warmup steps for the live re-run of the top-3 (0: skip)")
    args = parser.parse_args()
    spec, table = load_grid_spec(), load_table()
    if len(table) < len(grid(spec)) or not COSTS.exists():
        print("run `python bench/_curves.py` (resumable) and `python bench/_curves.py --calibrate` "
              "first", file=sys.stderr)
        return 2
    table = costed(table)
    started = time.perf_counter()
    curves, limit = list(table.values()), spec.kl_limit
    res: dict[str, Any] = {"machine": machine(), "load": load(), "kl_limit": limit,
                           "table": savings(curves, limit, RULES[CONTROLLER]),
                           "top3": false_prunes(curves, limit, RULES[CONTROLLER]),
                           "replayed": replayed(spec, table, args.seeds, args.trials),
                           "rules": {name: {**savings(curves, limit, rule),
                                            **false_prunes(curves, limit, rule)} for name, rule in RULES.items()},
                           "forecast": {name: against_plain(curves, limit, stopper(**options))
                                        for name, options in FORECASTS.items()},
                           "forecast_replayed": replayed(spec, table, args.seeds, args.trials, {"forecast": True})}
    if args.warmup:
        res["warmup"] = with_warmup(spec, res["top3"]["top"], args.warmup)
    res["seconds"] = time.perf_counter() - started
    report(res)
    print(f"\nwrote {save('kl_pruning', res)} in {res['seconds']:.0f} s")
    return 0


def report(res: dict[str, Any]) -> None:
    t, top, rp = res["table"], res["top3"], res["replayed"]
    within = top["stopped_within"]
    print(f"every grid config run to its end ({t['trials']} trials), the limit ({res['kl_limit']:g} nats) "
          f"stops {t['stopped']}")
    ranks = ", ".join(f"#{w['rank']}" for w in within[:3])
    scores = ", ".join(f"{w['final_eval']:.3f}" for w in within[:3])
    print(f"THE COST: {len(within)} of them end within the limit if run on ({top['ending_within']} trials do; "
          f"{t['iterations_cut_not_doomed']} iterations they would run after the stop); "
          f"among them the table's {ranks} by final eval/scores ({scores}; {sum(w['rank'] <= 10 for w in within)} "
          f"of its top 10), against {top['best_never_crossing']:.3f} for the best whose KL never passes the limit")
    print(f"  false prunes: {top['false_prunes']} of the top-3 by final eval/scores among trials within the "
          f"limit at their end")
    for c in top["top"]:
        print(f"    eval {c['final_eval']:.3f}, KL max {c['kl_max']:.1f}, final {c['kl_final']:.1f}, stopped at "
              f"{c['stopped_at']}: {c['params']}")
    stops = dict(sorted((i, t['stop_iterations'].count(i)) for i in set(t['stop_iterations'])))
    print(f"THE SAVING: {t['doomed']} are doomed (KL above the limit at their end); the limit stops "
          f"{t['doomed_stopped']} of them, by construction (a final KL above the limit is a crossing)")
    print(f"  it saves {t['iterations_saved']} of the {t['iterations_doomed_would_spend']} "
          f"iterations the doomed would spend: {t['saved_fraction']:.1%} "
          f"({t['seconds_saved_fraction']:.1%} of their seconds; "
          f"{t['share_of_all_iterations']:.1%} of all iterations); stops at iterations {stops}")
    print(f"  iteration 1's KL is 0 (at most {t['first_kl_max']:.1g} nats: its rollout comes before any update), "
          f"so no rule judging the KL can stop before iteration {EARLIEST} nor save more than "
          f"{t['best_possible_saved_fraction']:.1%}")
    print(f"replayed default sweeps ({rp['seeds']} seeds x {rp['trials']} trials): the limit saves "
          f"{rp['saved_fraction']:.1%} of the iterations their doomed trials would spend, "
          f"and stops {rp['wrongly_stopped']} trials that are not doomed")
    print(f"  it stops a trial that would have ended within the limit in its sweep's top-3 "
          f"{rp['false_prunes']} times, in {rp['sweeps_with_false_prunes']} of {rp['seeds']} "
          f"sweeps; the sweep's best such trial in {rp['sweeps_with_best_stopped']} of "
          f"{rp['seeds']} sweeps")
    print("other stopping rules:")
    for name, r in res["rules"].items():
        print(f"  {name:32s} saves {r['saved_fraction']:6.1%}, false prunes {r['false_prunes']}, "
              f"stops {r['ending_within_but_stopped']} trials that end within the limit")
    for w in res.get("warmup", []):
        print(f"  with warmup_steps {w['warmup_steps']}: KL max {w['kl_max']:.1f}, final eval "
              f"{w['final_eval']:.3f}: {w['params']}")
    print("the KL forecast against the first crossing (table; 'its stopped' = the trials the first crossing stops):")
    for name, f in res["forecast"].items():
        w = f["wrongly_stopped"]
        print(f"  {name:42s} saves {f['saved_beyond_plain_on_its_stopped']:4d} of their "
              f"{f['iterations_plain_spends_on_its_stopped']} iterations "
              f"({f['saved_fraction_of_plain_on_its_stopped']:6.1%}, "
              f"{f['seconds_saved_fraction_of_plain_on_its_stopped']:6.1%} of seconds), "
              f"{f['saved_beyond_plain_all']:4d} of all {f['iterations_plain_all']}; "
              f"stops {f['newly_stopped']:2d} more; "
              f"wrongly stopped {w['rule']} (plain {w['plain']}); false prunes {f['false_prunes_top3']}")
    fr = res["forecast_replayed"]
    same = [(a["best_feasible"], b["best_feasible"]) for a, b in zip(rp["per_seed"], fr["per_seed"], strict=True)]
    print(f"replayed default sweeps with the forecast on: {fr['all_iterations']} iterations "
          f"against {rp['all_iterations']} "
          f"({fr['all_seconds'] / rp['all_seconds'] - 1:+.1%} seconds); "
          f"trials wrongly stopped {fr['wrongly_stopped']} against {rp['wrongly_stopped']}; "
          f"best feasible value lower in {sum(b < a for a, b in same)}, "
          f"higher in {sum(b > a for a, b in same)} of {len(same)} seeds")
    ok = t["saved_fraction"] >= 0.5 and top["false_prunes"] == 0
    print(f"target (>= 50% saved, no false prunes): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    raise SystemExit(main())
