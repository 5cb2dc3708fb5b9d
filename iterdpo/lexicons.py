"""Sentiment lexicons that score a reply without a model: VADER (the sentiment world's oracle), AFINN and
TextBlob. Each ships its lexicon inside its PyPI package and downloads nothing (PINS); each is a judge,
``judge(prompt, response, ended) -> float``, like a world's oracle."""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

Judge = Callable[[str, str, bool], float]  # (prompt, response, ended) -> score, like a world's oracle
BUILTIN = ("oracle", "vader", "afinn", "textblob")
PINS = {"vader": "vadersentiment==3.3.2", "afinn": "afinn==0.1", "textblob": "textblob==0.20.1"}


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment(text: str) -> float:
    """VADER's compound score of `text` in [-1, 1] (0 for an empty text)."""
    return float(_analyzer().polarity_scores(text.strip())["compound"]) if text.strip() else 0.0


def _afinn() -> Judge:
    from afinn import Afinn

    lexicon = Afinn()
    return lambda prompt, text, ended=True: lexicon.score(text) / max(len(text.split()), 1)


def _textblob() -> Judge:
    from textblob import TextBlob

    return lambda prompt, text, ended=True: TextBlob(text).sentiment.polarity


def _vader() -> Judge:
    return lambda prompt, text, ended=True: sentiment(text)


def scorer(name: str) -> Judge | None:
    """The built-in judge `name` (None for ``oracle``, whose scores are stored with the samples)."""
    if name == "oracle":
        return None
    makers = {"vader": _vader, "afinn": _afinn, "textblob": _textblob}
    if name not in makers:
        raise ValueError(f"unknown judge {name!r}; built in: {', '.join(BUILTIN)}, or pass (name, judge)")
    try:
        return makers[name]()
    except ImportError as e:
        raise ImportError(f"judge {name!r} needs `pip install {PINS[name]}` ({e})") from None


def installed(names) -> list[tuple[str, Judge]]:
    """(name, judge) for each built-in judge in `names` whose package is installed; one line names the others."""
    out, missing = [], []
    for name in names:
        try:
            out.append((name, scorer(name)))
        except ImportError:
            missing.append(name)
    if missing:
        print(f"judges: {', '.join(missing)} not installed, so not asked "
              f"(pip install {' '.join(PINS[m] for m in missing)})")
    return out
