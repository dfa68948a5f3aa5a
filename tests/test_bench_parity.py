"""The parity check of bench/engine_vs_trl.py against trl 1.12's PPOTrainer (bench/_parity.py) passes when
both engines run the same settings and fails when one setting differs on one side only; where the engines
differ on purpose (TRL's score one position after the EOS) it sees the difference.

Slow: makes bench/.venv-trl with bench/setup_trl.sh when it is missing (about 50 s; 5 s when present),
then runs TRL's side once per case and ours once per case and per changed setting, each in a process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SAMPLES = 32


def test_versions_that_differ_are_named_in_one_line():
    sys.path.insert(0, str(ROOT / "bench"))
    from _common import version_mismatch

    ours = {"torch": "2.13.0+cpu", "transformers": "5.24.0", "tokenizers": "0.23.3", "numpy": "2.4.6"}
    assert version_mismatch(ours, dict(ours)) is None
    line = version_mismatch(ours, {**ours, "torch": "2.14.0"})
    assert "torch 2.14.0 (ours 2.13.0+cpu)" in line and "setup_trl.sh" in line and "\n" not in line
    assert "transformers" not in line


@pytest.fixture(scope="module")
def parity():
    subprocess.run(["bash", str(ROOT / "bench" / "setup_trl.sh")], check=True, timeout=900,
                   env={**os.environ, "PYTHON": sys.executable})
    sys.path.insert(0, str(ROOT / "bench"))
    import _parity

    return _parity


@pytest.fixture(scope="module")
def matched(parity):
    from _common import Workload

    return parity.parity(Workload(), SAMPLES)


def _disagreeing(result: dict, case: str) -> set[str]:
    return {r["metric"] for r in result["cases"][case]["rows"] if not r["agree"]}


@pytest.mark.slow
def test_parity_holds_when_both_sides_run_the_same_settings(parity, matched):
    assert matched["ok"], "\n".join(parity.summary(matched))
    for case in matched["cases"].values():
        assert all(case["exercised"].values())  # the ratio moved and both clips acted


@pytest.mark.slow
def test_trl_puts_the_score_one_position_after_the_eos(matched):
    eos = matched["cases"]["eos"]
    rewards = eos["rewards"][0]
    assert rewards["max_abs_diff"] > 0.01  # as they are, the per-token rewards differ by a score
    assert rewards["max_abs_diff_trl_score_moved_back"] <= 1e-5  # with TRL's score moved back to the EOS, they agree
    # and TRL's value loss also counts the position after the EOS, so it differs from the first step on
    first = eos["value_loss_first_step"]
    assert abs(first["ours"] - first["trl"]) > 1e-3 * abs(first["trl"])


@pytest.mark.slow
@pytest.mark.parametrize(("change", "case", "seen_in"), [
    ({"vf_coef": 5.0}, "full", {"grad_norm_value"}),
    ({"cliprange": 0.1}, "eos", {"clipfrac"}),
    ({"gamma": 0.9}, "eos", {"policy_loss", "grad_norm_policy"}),
    ({"kl_estimator": "k3"}, "full", {"objective/kl"}),
])
def test_parity_fails_when_one_setting_differs_on_one_side(parity, matched, change, case, seen_in):
    from _common import Workload

    result = parity.parity(Workload(), SAMPLES, cases=(case,), ours_changes=change, trl_results=matched["trl_results"])
    assert not result["ok"]
    assert seen_in <= _disagreeing(result, case), "\n".join(parity.summary(result))
