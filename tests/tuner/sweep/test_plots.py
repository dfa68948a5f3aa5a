"""The sweep's plots, read back from their matplotlib figures (what a user would see in the PNGs)."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import pytest
from matplotlib.text import Text

from tuner.sweep._plots import FEW_TRIALS, importance_figure, kl_figure, reward_figure

CURVES = [{"number": n, "beta": b, "state": s, "kl": [(t, min(k * t * t, 200.0)) for t in range(1, last + 1)]}
          for n, (b, k, last, s) in enumerate([(0.005, 20, 2, "INFEASIBLE"), (0.05, 0.01, 12, "COMPLETE"),
                                               (0.01, 0.05, 3, "PRUNED"), (0.002, 30, 2, "INFEASIBLE")])]
CLUSTER = [{"number": n, "kl": kl, "score": score, "state": state} for n, (kl, score, state) in enumerate(
    [(0.05, 0.028, "PRUNED"), (0.06, 0.0281, "PRUNED"), (0.12, 0.0279, "PRUNED"), (0.9, 0.089, "COMPLETE"),
     (47.0, 0.028, "INFEASIBLE"), (3.3, 0.16, "COMPLETE"), (0.5, 0.031, "PRUNED")])]


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_the_infeasible_markers_are_inside_the_axes_and_clear_of_the_legend():
    fig = kl_figure(CURVES, 15.0)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = fig.legends[0].get_window_extent()
    low, high = ax.get_ylim()
    for c in CURVES:
        if c["state"] == "INFEASIBLE":
            x, y = c["kl"][-1]
            assert low < y < high / 2  # headroom above the highest marker
            px, py = ax.transData.transform((x, y))
            assert not legend.contains(px, py)


def test_every_kl_line_carries_its_trial_number():
    fig = kl_figure(CURVES, 15.0)
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert {str(c["number"]) for c in CURVES} <= labels


def test_reward_vs_kl_has_every_kind_of_point_in_its_legend():
    fig = reward_figure(CLUSTER, 15.0, "eval/scores")
    legend = " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert "pruned" in legend and "complete" in legend and "infeasible" in legend


def test_clustered_labels_do_not_overlap():
    fig = reward_figure(CLUSTER, 15.0, "eval/scores")
    fig.canvas.draw()
    boxes = [Text.get_window_extent(t) for t in fig.axes[0].texts]  # the label alone, without its leader line
    assert len(boxes) == len(CLUSTER)
    overlapping = [(a, b) for a, b in itertools.combinations(range(len(boxes)), 2) if boxes[a].overlaps(boxes[b])]
    assert not overlapping


@pytest.mark.parametrize("completed,caveat", [(3, True), (FEW_TRIALS + 5, False)])
def test_importance_says_how_many_trials_it_rests_on(completed, caveat):
    fig = importance_figure({"policy_lr": 0.7, "kl_coef": 0.3}, completed)
    title = fig.axes[0].get_title()
    assert f"{completed} completed trials" in title
    assert ("few trials" in title) == caveat
