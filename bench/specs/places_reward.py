"""A second reward over the demo model, for the second curve table (bench/specs/places_grid.yaml):
the fraction of response words that lie inside a complete place phrase ("near the river", ...).

The grammar puts a place phrase after 40% of its sentences, so the SFT model scores about 0.1;
raising it means phrases the grammar never chains, which moves the policy away from its start
differently from the demo reward (one rare adjective word at a time).
"""

from __future__ import annotations

from trials.demo import PLACES

_PHRASES = [tuple(p.split()) for p in PLACES]


def reward(prompts: list[str], responses: list[str]) -> list[float]:
    """In [0, 1]: words covered by place phrases over all words of the response."""
    scores = []
    for response in responses:
        words = response.split()
        covered, i = 0, 0
        while i < len(words):
            match = next((p for p in _PHRASES if tuple(words[i:i + len(p)]) == p), None)
            covered += len(match) if match else 0
            i += len(match) if match else 1
        scores.append(covered / max(len(words), 1))
    return scores
