"""The demo reward, as a file beside the spec (docker/sweep-demo.yaml names it `demo_reward.py:reward`).

`tuner submit` copies the files a spec names relative to itself into the job's working folder, so a
reward of your own, written next to your spec, runs on the cluster as it does here.
"""

from __future__ import annotations

from trials.demo import reward as demo_reward


def reward(prompts: list[str], responses: list[str]) -> list[float]:
    """One float per response: the demo's count of positive adjectives."""
    return demo_reward(prompts, responses)
