"""The sweep's plots, saved as PNG artifacts of the parent run.

- KL trajectories of all trials, coloured by beta (log scale), with the KL limit drawn;
- final score against final KL, with the limit and the Pareto front (score up, KL down);
- parameter importance (fANOVA over the feasible completed trials).
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

__all__ = ["kl_trajectories", "pareto_front", "param_importance", "reward_vs_kl"]

log = logging.getLogger(__name__)


def kl_trajectories(curves: list[dict[str, Any]], kl_limit: float, path: Path) -> Path:
    """curves: [{"number", "beta", "kl": [(iteration, kl), ...], "state"}]"""
    fig, ax = plt.subplots(figsize=(8, 5))
    betas = [c["beta"] for c in curves if c["beta"] and c["beta"] > 0]
    norm = matplotlib.colors.LogNorm(min(betas), max(betas)) if betas and min(betas) < max(betas) else None
    cmap = matplotlib.colormaps["viridis"]
    for c in curves:
        if not c["kl"]:
            continue
        xs, ys = zip(*c["kl"], strict=True)
        color = cmap(norm(c["beta"])) if norm and c["beta"] else cmap(0.5)
        ax.plot(xs, ys, color=color, alpha=0.85, lw=1.5, ls="--" if c["state"] == "PRUNED" else "-")
        if c["state"] == "INFEASIBLE":
            ax.plot(xs[-1], ys[-1], "x", color="crimson", ms=9, mew=2)
    ax.axhline(kl_limit, color="crimson", lw=1.5, ls=":", label=f"KL limit {kl_limit:g} nats")
    if norm:
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="beta (initial kl_coef)")
    ax.set(xlabel="iteration", ylabel="objective/kl (nats, summed over the response)",
           title="KL to the reference, every trial (x: stopped at the limit, dashed: pruned)")
    ax.set_yscale("symlog", linthresh=1.0)
    top = max([kl_limit] + [y for c in curves for _, y in c["kl"]])
    bottom = min([0.0] + [y for c in curves for _, y in c["kl"]])
    ax.set_ylim(bottom, top * 1.6)
    ax.legend(loc="upper left")
    fig.tight_layout()
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


def reward_vs_kl(rows: list[dict[str, Any]], kl_limit: float, path: Path, metric: str) -> Path:
    """rows: [{"number", "kl", "score", "state"}] with the final KL and the trial's score."""
    pts = [(r["kl"], r["score"]) for r in rows]
    front = set(pareto_front(pts))
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        infeasible = r["kl"] > kl_limit
        ax.scatter(r["kl"], r["score"], marker="x" if infeasible else "o", s=50,
                   color="crimson" if infeasible else ("tab:blue" if r["state"] == "COMPLETE" else "tab:gray"))
        ax.annotate(str(r["number"]), (r["kl"], r["score"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if front:
        fp = sorted(pts[i] for i in front)
        ax.plot([p[0] for p in fp], [p[1] for p in fp], color="orange", lw=1.5, label="Pareto front")
    ax.axvline(kl_limit, color="crimson", ls=":", label=f"KL limit {kl_limit:g}")
    ax.set(xlabel="final objective/kl (nats)", ylabel=f"score ({metric})", title="Final score against final KL")
    if pts and max(p[0] for p in pts) > 50 * max(1.0, min(p[0] for p in pts)):
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(min(0.0, *(p[0] for p in pts)), max(p[0] for p in pts) * 1.6)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    names, values = zip(*sorted(importances.items(), key=lambda kv: kv[1]), strict=True)
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    ax.barh(names, values, color="tab:blue")
    ax.set(xlabel="importance (fANOVA)", title="Parameter importance for the objective")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
