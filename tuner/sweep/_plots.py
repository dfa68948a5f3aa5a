"""The sweep's plots, saved as PNG artifacts of the parent run.

- KL trajectories of all trials, coloured by beta (log scale), with the KL limit drawn;
- final score against final KL, with the limit and the Pareto front (score up, KL down);
- parameter importance (fANOVA over the feasible completed trials);
- with a held-out reward: the training and the held-out reward against final KL, trial by trial (the
  over-optimization picture: past some KL the held-out reward falls while the training reward rises).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from tuner.trial import State  # noqa: E402

__all__ = ["importance_figure", "kl_figure", "kl_trajectories", "pareto_front", "param_importance",
           "reward_figure", "reward_vs_kl", "heldout_figure", "heldout_vs_kl"]

log = logging.getLogger(__name__)


def kl_trajectories(curves: list[dict[str, Any]], kl_limit: float, path: Path) -> Path:
    """curves: [{"number", "beta", "kl": [(iteration, kl), ...], "state"}]"""
    return _save(kl_figure(curves, kl_limit), path)


def kl_figure(curves: list[dict[str, Any]], kl_limit: float) -> Figure:
    """Every trial's KL by iteration, its number at the line's end; the limit and the legend sit outside
    the data (above the highest marker, below the axes) so that no stopped trial's x is hidden."""
    fig, ax = plt.subplots(figsize=(8, 5.6))
    betas = [c["beta"] for c in curves if c["beta"] and c["beta"] > 0]
    norm = matplotlib.colors.LogNorm(min(betas), max(betas)) if betas and min(betas) < max(betas) else None
    cmap = matplotlib.colormaps["viridis"]
    for c in curves:
        if not c["kl"]:
            continue
        xs, ys = zip(*c["kl"], strict=True)
        color = cmap(norm(c["beta"])) if norm and c["beta"] else cmap(0.5)
        ax.plot(xs, ys, color=color, alpha=0.85, lw=1.5,
                ls="--" if c["state"] == State.PRUNED else "-")
        if c["state"] == State.INFEASIBLE:
            ax.plot(xs[-1], ys[-1], "x", color="crimson", ms=10, mew=2.5, zorder=5, clip_on=False)
        ax.annotate(str(c["number"]), (xs[-1], ys[-1]), xytext=(5, 0), textcoords="offset points", fontsize=8,
                    va="center", color="crimson" if c["state"] == State.INFEASIBLE else "black")
    ax.axhline(kl_limit, color="crimson", lw=1.5, ls=":")
    if norm:
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="beta (initial kl_coef)")
    ax.set(xlabel="iteration", ylabel="objective/kl (nats, summed over the response)",
           title="KL to the reference, every trial (labels: trial numbers)")
    ax.set_yscale("symlog", linthresh=1.0)
    top = max([kl_limit] + [y for c in curves for _, y in c["kl"]])
    bottom = min([0.0] + [y for c in curves for _, y in c["kl"]])
    ax.set_ylim(bottom, top * 4)  # a factor of 4 is headroom on the log part of the axis
    xmax = max([1] + [x for c in curves for x, _ in c["kl"]])
    ax.set_xlim(0, xmax * 1.08)  # room for the end labels
    handles = [Line2D([], [], color="crimson", ls=":", lw=1.5, label=f"KL limit {kl_limit:g} nats"),
               Line2D([], [], color="crimson", marker="x", ls="", mew=2.5, label="stopped at the limit (infeasible)"),
               Line2D([], [], color="gray", ls="--", label="pruned (ASHA)"),
               Line2D([], [], color="gray", ls="-", label="ran to the end")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (kl, score) not dominated by another (lower KL and higher score)."""
    front = []
    for i, (kl_i, s_i) in enumerate(points):
        dominated = any((kl_j <= kl_i and s_j >= s_i) and (kl_j < kl_i or s_j > s_i)
                        for j, (kl_j, s_j) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


_KIND = {  # a point of reward_vs_kl: (marker, colour, legend label)
    State.INFEASIBLE: ("x", "crimson", "past the KL limit (infeasible)"),
    State.COMPLETE: ("o", "tab:blue", "complete, within the limit"),
    State.PRUNED: ("o", "tab:gray", "pruned (ASHA): score when cut"),
}


def reward_vs_kl(rows: list[dict[str, Any]], kl_limit: float, path: Path, metric: str) -> Path:
    """rows: [{"number", "kl", "score", "state"}] with the final KL and the trial's score."""
    return _save(reward_figure(rows, kl_limit, metric), path)


def reward_figure(rows: list[dict[str, Any]], kl_limit: float, metric: str) -> Figure:
    pts = [(r["kl"], r["score"]) for r in rows]
    front = set(pareto_front(pts))
    fig, ax = plt.subplots(figsize=(7, 5))
    for state, (marker, color, label) in _KIND.items():
        mine = [r for r in rows if _kind(r) == state]
        if mine:
            ax.scatter([r["kl"] for r in mine], [r["score"] for r in mine], marker=marker, s=50,
                       color=color, label=label)
    if front:
        fp = sorted(pts[i] for i in front)
        ax.plot([p[0] for p in fp], [p[1] for p in fp], color="orange", lw=1.5, label="Pareto front")
    ax.axvline(kl_limit, color="crimson", ls=":", label=f"KL limit {kl_limit:g}")
    ax.set(xlabel="final objective/kl (nats)", ylabel=f"score ({metric})", title="Final score against final KL")
    if pts and max(p[0] for p in pts) > 50 * max(1.0, min(p[0] for p in pts)):
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(min(0.0, *(p[0] for p in pts)), max(p[0] for p in pts) * 1.6)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _label_points(ax, rows)
    return fig


def heldout_vs_kl(rows: list[dict[str, Any]], kl_limit: float, path: Path) -> Path:
    """rows: [{"number", "kl", "train", "gold", "overoptimized"}]: each trial's final KL, its last training
    reward and held-out reward on the held-out prompts, and whether the first rose while the second fell."""
    return _save(heldout_figure(rows, kl_limit), path)


def heldout_figure(rows: list[dict[str, Any]], kl_limit: float) -> Figure:
    fig, ax = plt.subplots(figsize=(7.5, 5))
    rows = sorted(rows, key=lambda r: r["kl"])
    for r in rows:  # each trial's two rewards, joined
        ax.plot([r["kl"], r["kl"]], [r["train"], r["gold"]], color="lightgray", lw=1, zorder=1)
    ax.plot([r["kl"] for r in rows], [r["train"] for r in rows], "o-", color="tab:blue", ms=6, lw=0.8,
            label="training reward (eval/scores)", zorder=2)
    ax.plot([r["kl"] for r in rows], [r["gold"] for r in rows], "s-", color="tab:orange", ms=6, lw=0.8,
            label="held-out reward (eval/gold_scores)", zorder=2)
    flagged = [r for r in rows if r["overoptimized"]]
    if flagged:
        ax.scatter([r["kl"] for r in flagged], [r["gold"] for r in flagged], s=160, facecolors="none",
                   edgecolors="crimson", lw=1.5, label="training reward rose, held-out fell", zorder=3)
    for r in rows:
        ax.annotate(str(r["number"]), (r["kl"], r["gold"]), fontsize=7, xytext=(4, -10), textcoords="offset points")
    ax.axvline(kl_limit, color="crimson", ls=":", label=f"KL limit {kl_limit:g}")
    ax.set(xlabel="final objective/kl (nats)", ylabel="reward on the held-out prompts",
           title="Training and held-out reward against KL, one point pair per trial")
    kls = [r["kl"] for r in rows]
    if kls and max(kls) > 50 * max(1.0, min(kls)):
        ax.set_xscale("symlog", linthresh=1.0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _kind(row: dict[str, Any]) -> str:
    """The point's kind in `_KIND`: the trial's recorded state (`tuner.trial.recorded_state`, which
    judges the KL limit), a state with no kind of its own drawn as pruned."""
    return row["state"] if row["state"] in (State.INFEASIBLE, State.COMPLETE) else State.PRUNED


def _label_points(ax: Any, rows: list[dict[str, Any]], gap: float = 11.0) -> None:
    """Trial numbers beside their points; a label that would overlap one already placed moves up a line
    (pixels), with a leader line to its point, so clustered trials stay readable."""
    placed: list[tuple[float, float]] = []
    to_px = ax.transData.transform
    for r in sorted(rows, key=lambda r: (r["score"], r["kl"])):
        x, y = to_px((r["kl"], r["score"]))
        dy = 3.0
        while any(abs(x - px) < 2.2 * gap and abs((y + dy) - py) < gap for px, py in placed):
            dy += gap
        placed.append((x, y + dy))
        ax.annotate(str(r["number"]), (r["kl"], r["score"]), fontsize=7, xytext=(4, dy), textcoords="offset points",
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "gray"} if dy > gap / 2 else None)


def param_importance(study: optuna.Study, path: Path) -> Path | None:
    """fANOVA importances of the sampled parameters; None when there are too few trials to say."""
    try:
        importances = optuna.importance.get_param_importances(
            study, target=(lambda t: t.values[0]) if len(study.directions) > 1 else None)
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        log.info("no parameter importance: %s", exc)
        return None
    if not importances or any(not math.isfinite(v) for v in importances.values()):
        return None
    completed = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    return _save(importance_figure(importances, completed), path)


FEW_TRIALS = 20  # below this many completed trials, fANOVA's ranking is a hint, not a finding


def importance_figure(importances: dict[str, float], completed: int) -> Figure:
    """The importances as bars, titled with how many completed trials they rest on (a caveat when few)."""
    names, values = zip(*sorted(importances.items(), key=lambda kv: kv[1]), strict=True)
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 2.0))
    ax.barh(names, values, color="tab:blue")
    note = f"fANOVA over {completed} completed trial{'s' if completed != 1 else ''} (pruned ones are not counted)"
    if completed < FEW_TRIALS:
        note += f"\nfew trials: a hint only; rerun with more than {FEW_TRIALS} before trusting the ranking"
    ax.set_xlabel("importance (fANOVA)")
    fig.suptitle("Parameter importance for the objective")
    ax.set_title(note, fontsize=8, color="dimgray" if completed >= FEW_TRIALS else "crimson")
    fig.tight_layout()
    return fig
