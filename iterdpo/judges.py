"""Other judges: every evaluated model's stored samples, scored again by scorers that neither training nor the
controller uses.

A gain the oracle sees could be one scorer's quirk (VADER, the sentiment world's oracle, counts words from its
lexicon). A second scorer that agrees is evidence that the replies really changed; one that does not is a
warning to read before trusting the oracle's figures. Nothing is sampled again: the judges read the samples
each evaluation stored (``round_<r>/eval/samples.jsonl``), so every model is judged on the same prompts.

A judge is called like a world's oracle, ``judge(prompt, response, ended) -> float``. Built in:
- ``oracle``: the score the run's world stored with each sample;
- ``vader``: VADER's compound score, recomputed (``vadersentiment``, in requirements.txt);
- ``afinn``: AFINN's word valences (-5..5), averaged over the reply's words so that length does not count;
- ``textblob``: TextBlob's pattern-lexicon polarity, in [-1, 1].
AFINN and TextBlob ship their lexicons in their PyPI packages and download nothing (PINS). A world may offer
its own (``World.judges()``: the toy world's ``exact`` and ``coverage``); ``for_run`` collects them.

    from iterdpo import judges
    judges.table(["runs/sentiment-s1", "runs/sentiment-s2"], ["oracle", "afinn", "textblob"])
"""

from __future__ import annotations

from pathlib import Path
import pandas as pd
import torch

from .data import check_records
from .losses import win_rate, win_rate_se
from .lexicons import BUILTIN, PINS, Judge, installed, scorer  # noqa: F401 (the judges this module reads)
from .runfolder import OFFLINE, OFFLINE_ARM, SFT, RunFolder
from .worlds import world_of
from .metrics import N, se, win_rate_vs

COLUMNS = ["run", "judge", "model", "round", "mean", N.win_rate_vs_sft, se(N.win_rate_vs_sft),
           win_rate_vs(OFFLINE_ARM), se(win_rate_vs(OFFLINE_ARM))]


def for_run(cfg) -> list:
    """The judges worth reading for the run `cfg` (its RunConfig): the oracle and its world's own judges;
    none for a world without an oracle."""
    world = world_of(cfg)
    if not world.has_oracle:
        print(f"data.source {cfg.data.source!r} has no oracle: the reward model is the only judge")
        return []
    return ["oracle", *world.judges()]


def _scores(samples: list[dict], name: str, judge: Judge | None, where: Path) -> torch.Tensor:
    """One judge's scores of samples already checked for prompt, response and ended (see table)."""
    if judge is None:
        check_records(samples, ("oracle",), str(where))
        return torch.tensor([float(s["oracle"]) for s in samples])
    out = []
    for i, s in enumerate(samples, 1):
        try:
            out.append(float(judge(s["prompt"], s["response"], s["ended"])))
        except Exception as e:
            raise ValueError(f"{where}:{i}: judge {name!r} cannot score this sample: {e}") from e
    return torch.tensor(out)


def _same_prompts(a: list[dict], b: list[dict], path_a: Path, path_b: Path) -> None:
    if len(a) != len(b):
        raise ValueError(f"{path_a}: {len(a)} samples, {path_b}: {len(b)}; win rates need the same prompts")
    for i, (x, y) in enumerate(zip(a, b), 1):
        if x["prompt"] != y["prompt"]:
            raise ValueError(f"{path_a}:{i}: prompt differs from {path_b}:{i}; win rates need the same prompts")


def table(runs, judges=("oracle",)) -> pd.DataFrame:
    """One row per run, judge and evaluated model (SFT, each round, offline DPO): the judge's mean score, and
    the win rate (ties counting half) of the model's sample over SFT's and over offline DPO's on the same
    prompt, each with its standard error. Rounds without an evaluation (a failed round) are left out.

    Args:
        runs: a run folder or a list of them.
        judges: built-in names (see the module notes) or (name, judge(prompt, response, ended)) pairs.
    """
    judges = [judges] if isinstance(judges, str) else list(judges)
    named = [(j, scorer(j)) if isinstance(j, str) else (j[0], j[1]) for j in judges]
    rows = []
    for run in [runs] if isinstance(runs, (str, Path)) else list(runs):
        rf = RunFolder(run)
        models = [(label, rnd, rf.samples(rnd), rf.eval(rnd) / "samples.jsonl") for label, rnd, _ in rf.models()]
        models = [(label, rnd, check_records(samples, ("prompt", "response", "ended"), str(path)), path)
                  for label, rnd, samples, path in models if samples]
        if not models:
            raise FileNotFoundError(f"{run}: no evaluated models (round_*/eval/samples.jsonl)")
        where = {label: (samples, path) for label, _, samples, path in models}
        for label, _, samples, path in models:
            for other in (SFT, OFFLINE):
                if other in where and other != label:
                    _same_prompts(samples, where[other][0], path, where[other][1])
        for name, judge in named:
            scores = {label: _scores(samples, name, judge, path) for label, _, samples, path in models}
            for label, rnd, _, _ in models:
                row = {"run": str(run), "judge": name, "model": label, "round": rnd, "mean": scores[label].mean().item()}
                for other, col in ((SFT, "sft"), (OFFLINE, "offline_dpo")):
                    if other in scores and other != label:
                        row[f"win_rate_vs_{col}"] = win_rate(scores[label], scores[other])
                        row[f"win_rate_vs_{col}_se"] = win_rate_se(scores[label], scores[other])
                rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS[:5] + [c for c in COLUMNS[5:] if any(c in r for r in rows)])
