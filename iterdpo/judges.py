"""Judges the loop never saw: every evaluated model's stored samples, scored again by other scorers.

A gain the oracle sees could be one scorer's quirk (VADER, the sentiment world's oracle, counts words from its
lexicon). A second scorer that agrees is evidence that the replies really changed; one that does not is a
warning to read before trusting the oracle's figures. Nothing is sampled again: the judges read the samples
each evaluation stored (``round_<r>/eval/samples.jsonl``), so every model is judged on the same prompts.

Built-in judges (the three lexicons read the reply text alone):
- ``oracle``: the score the run's world stored with each sample (VADER in the sentiment world);
- ``vader``: VADER's compound score, recomputed (``vadersentiment``, in requirements.txt);
- ``afinn``: AFINN's word valences (-5..5), averaged over the reply's words so that length does not count;
- ``textblob``: TextBlob's pattern-lexicon polarity, in [-1, 1].
The last two ship their lexicons in their PyPI packages and download nothing: ``pip install afinn textblob``.
Any other judge is a (name, function) pair, the function called like a world's oracle:
``judge(prompt, response, ended) -> float`` (for example a stricter rule for the toy world).

    from iterdpo import judges
    judges.table(["runs/sentiment-s1", "runs/sentiment-s2"], ["oracle", "afinn", "textblob"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from .losses import win_rate, win_rate_se
from .plots.frames import OFFLINE, SFT, model_folders
from .runfolder import RunFolder

Judge = Callable[[str, str, bool], float]  # (prompt, response, ended) -> score, like a world's oracle
BUILTIN = ("oracle", "vader", "afinn", "textblob")


def _afinn() -> Judge:
    from afinn import Afinn

    lexicon = Afinn()
    return lambda prompt, text, ended=True: lexicon.score(text) / max(len(text.split()), 1)


def _textblob() -> Judge:
    from textblob import TextBlob

    return lambda prompt, text, ended=True: TextBlob(text).sentiment.polarity


def _vader() -> Judge:
    from .sentiment import sentiment

    return lambda prompt, text, ended=True: sentiment(text)


def scorer(name: str) -> Judge | None:
    """The built-in judge `name` (None for ``oracle``, whose scores are stored with the samples)."""
    if name == "oracle":
        return None
    makers = {"vader": (_vader, "vadersentiment==3.3.2"), "afinn": (_afinn, "afinn"), "textblob": (_textblob, "textblob")}
    if name not in makers:
        raise ValueError(f"unknown judge {name!r}; built in: {', '.join(BUILTIN)}, or pass (name, function)")
    make, package = makers[name]
    try:
        return make()
    except ImportError as e:
        raise ImportError(f"judge {name!r} needs `pip install {package}` ({e})") from None


def for_run(cfg) -> list:
    """The judges worth reading for the run `cfg` (its RunConfig): the oracle and its world's other readings
    (toy: ``exact`` and ``coverage``; sentiment: AFINN and TextBlob where installed, with a line naming any that
    are not); none for a source without a world."""
    if cfg.data.source == "toy":
        from .toyworld import ToyWorld

        world = ToyWorld(cfg.toy)
        return ["oracle", ("exact", world.exact), ("coverage", world.coverage)]
    if cfg.data.source != "sentiment":
        return []
    out, missing = ["oracle"], []
    for name in ("afinn", "textblob"):
        try:
            out.append((name, scorer(name)))
        except ImportError:
            missing.append(name)
    if missing:
        print(f"judges: {', '.join(missing)} not installed, so not asked (pip install {' '.join(missing)})")
    return out


def _scores(samples: list[dict], name: str, judge: Judge | None, where: Path) -> list[float]:
    if judge is None:
        missing = next((i for i, s in enumerate(samples) if "oracle" not in s), None)
        if missing is not None:
            raise ValueError(f"{where}:{missing + 1}: no 'oracle' score stored (a world without an oracle); "
                             f"use another judge")
        return [float(s["oracle"]) for s in samples]
    return [float(judge(s["prompt"], s["response"], s["ended"])) for s in samples]


def table(runs, judges=("oracle",)) -> pd.DataFrame:
    """One row per run, judge and evaluated model (SFT, each round, offline DPO): the judge's mean score, and
    the win rate (ties counting half) of the model's sample over SFT's and over offline DPO's on the same
    prompt, each with its standard error.

    Args:
        runs: a run folder or a list of them.
        judges: built-in names (see the module notes) or (name, judge(prompt, response, ended)) pairs.
    """
    named = [(j, scorer(j)) if isinstance(j, str) else (j[0], j[1]) for j in judges]
    rows = []
    for run in [runs] if isinstance(runs, (str, Path)) else list(runs):
        rf = RunFolder(run)
        models = [(label, rnd, rf.samples(rnd), rf.eval(rnd) / "samples.jsonl") for label, rnd, _ in model_folders(run)]
        models = [m for m in models if m[2]]
        prompts = {label: [s["prompt"] for s in ss] for label, _, ss, _ in models}
        for name, judge in named:
            scores = {label: torch.tensor(_scores(ss, name, judge, path)) for label, _, ss, path in models}
            for label, rnd, _, _ in models:
                row = {"run": str(run), "judge": name, "model": label, "round": rnd, "mean": scores[label].mean().item()}
                for other, col in ((SFT, "vs_sft"), (OFFLINE, "vs_offline")):
                    if other in scores and other != label:
                        if prompts[other] != prompts[label]:
                            raise ValueError(f"{run}: {label} and {other} were evaluated on different prompts")
                        row[f"win_rate_{col}"] = win_rate(scores[label], scores[other])
                        row[f"win_rate_{col}_se"] = win_rate_se(scores[label], scores[other])
                rows.append(row)
    return pd.DataFrame(rows)
