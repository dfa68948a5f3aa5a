"""Ready-made rewards, in the form `reward` and `eval_reward` name ('trials.rewards:vader_sentiment'):
each takes (prompts, responses) and returns one float per response.

Two sentiment judges built on different lexicons, so that one can be the reward and the other the
held-out judge. Both lexicons ship inside their wheels (nothing is downloaded); they come with the
examples extra: pip install 'ppo-tuner[examples]'.
"""

from __future__ import annotations

import functools
from typing import Any

from trials._builtin import EXTRA_FIX
from trials._errors import MissingExtra

__all__ = ["textblob_sentiment", "vader_sentiment"]


def _missing(package: str) -> MissingExtra:
    return MissingExtra(f"needs the {package} package, which is not installed", EXTRA_FIX)


@functools.cache
def _vader() -> Any:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise _missing("vadersentiment") from None
    return SentimentIntensityAnalyzer()


@functools.cache
def _pattern() -> Any:
    try:  # TextBlob's default analyzer (pattern's lexicon, en-sentiment.xml in the wheel; no NLTK corpus)
        from textblob.en import sentiment
    except ImportError:
        raise _missing("textblob") from None
    return sentiment


def vader_sentiment(prompts: list[str], responses: list[str]) -> list[float]:
    """VADER's compound score of each response, in [-1, 1] (0 for an empty or neutral response)."""
    analyzer = _vader()
    return [float(analyzer.polarity_scores(r)["compound"]) for r in responses]


def textblob_sentiment(prompts: list[str], responses: list[str]) -> list[float]:
    """TextBlob's polarity of each response, in [-1, 1] (the mean over its sentiment words; 0 without any)."""
    sentiment = _pattern()
    return [float(sentiment(r)[0]) for r in responses]
