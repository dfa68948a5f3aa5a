"""The ready rewards: VADER and TextBlob sentiment, and one line (exit 2) when their extra is missing."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT
from tests.trials.test_builtin import _tuner_without
from trials.rewards import textblob_sentiment, vader_sentiment

TEXTS = ["What a lovely, wonderful day.", "This is awful.", "The table is brown.", ""]


def test_vader_scores_each_response_by_its_compound_score():
    pytest.importorskip("vaderSentiment", reason="the examples extra is not installed")
    assert vader_sentiment(["p"] * 4, TEXTS) == [0.8176, -0.4588, 0.0, 0.0]


def test_textblob_scores_each_response_by_its_polarity_without_any_download():
    pytest.importorskip("textblob", reason="the examples extra is not installed")
    assert textblob_sentiment(["p"] * 4, TEXTS) == [0.75, -1.0, 0.0, 0.0]


@pytest.mark.parametrize("field,reward,blocked,package", [
    ("reward", "vader_sentiment", "vaderSentiment", "vadersentiment"),
    ("eval_reward", "textblob_sentiment", "textblob", "textblob"),
])
def test_a_reward_without_its_extra_is_one_line_naming_the_field(tmp_path, demo_model, field, reward, blocked,
                                                                 package):
    proc = _tuner_without(blocked, "train", str(ROOT / "configs" / "demo.yaml"), "--set",
                          f"{field}=trials.rewards:{reward}", "--save", str(tmp_path / "out"),
                          cache=demo_model.parent)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr
    assert errors == [f"error: {field}: needs the {package} package, which is not installed "
                      f"(got 'trials.rewards:{reward}'); install the examples extra: pip install "
                      "'ppo-tuner[examples]' (or pip install -e '.[examples]')"], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
