"""What `tuner run` says before its trials: the real folders, the spec's own words."""

from __future__ import annotations

from tuner.cli._sweep import _preflight_message
from tuner.spec import parse_spec

SPEC = {"name": "m", "trial": {"model": "demo", "reward": "trials.demo:reward", "prompts": "demo"},
        "search_space": {"policy_lr": {"low": 1e-6, "high": 5e-5, "log": True}}, "budget": {"trials": 2}}


def test_the_demo_build_names_the_cache_that_ppo_tuner_cache_points_at(tmp_path, monkeypatch):
    monkeypatch.setenv("PPO_TUNER_CACHE", str(tmp_path / "cache"))  # empty: the demo model is not built there
    message = _preflight_message(parse_spec(SPEC))
    assert f"cached in {tmp_path / 'cache'})" in message and "~/.cache" not in message
