"""Capability: does alignment cost the model what it could already do?

Each suite is one module of this package, registered in ``iterdpo.registry.SUITES`` (its items and how they
are scored to an accuracy in [0, 1]): ``probes`` (generated here, offline), ``gsm8k`` (greedy generation, the
last number must match), ``mmlu`` and ``arc`` (multiple choice, the letters scored), ``humaneval`` (greedy code,
run in the sandbox). A suite says which world styles it can serve (iterdpo.worlds.World.style); the config
refuses one the run's world cannot serve. A suite may also return one row per item beside its accuracy
(``capability_results``); the evaluation keeps them as ``capability_<suite>.jsonl``.
"""

from __future__ import annotations

import math

from ..config import EvalConfig
from ..metrics import N
from ..registry import SUITES
from .base import Suite, read_suite  # noqa: F401 (Suite: the seam's type)
from .probes import capability_pairs  # noqa: F401 (the capability pairs a round may add)


def suite_items(name: str, cfg: EvalConfig, style: str, seed: int) -> list[dict]:
    """The items suite `name` scores: generated here, or a seeded sample of its file or hub dataset."""
    suite = SUITES[name]
    if style not in suite.styles:
        raise ValueError(f"eval.capability: suite {name!r} serves {sorted(suite.styles)} worlds, not this {style} world")
    if suite.make is not None:
        return suite.make(cfg, style, seed)
    if name not in cfg.capability_paths:
        raise ValueError(f"eval.capability includes {name!r} but eval.capability_paths has no {name!r} key; "
                         f"set eval.capability_paths.{name} to a local file/folder or a hub dataset name")
    return load_suite(name, str(cfg.capability_paths[name]), cfg.capability_n, seed)


def load_suite(name: str, source: str, n: int, seed: int) -> list[dict]:
    """n items of the file-backed suite `name` from a local file/folder or a hub dataset name (a seeded sample;
    a malformed record raises DataError naming file and line)."""
    return read_suite(SUITES[name], name, source, n, seed)


def capability_results(model, tokenizer, cfg: EvalConfig, style: str,
                       seed: int) -> tuple[dict, dict[str, list[dict]]]:
    """({suite: accuracy for each suite in cfg.capability, N.capability_score: their mean}, {suite: its rows} for
    each suite whose score returns (accuracy, one row per item) rather than the accuracy alone)."""
    scores, rows = {}, {}
    for name in cfg.capability:
        got = SUITES[name].score(model, tokenizer, suite_items(name, cfg, style, seed), cfg)
        if isinstance(got, tuple):
            got, rows[name] = got
        scores[name] = got
    scores[N.capability_score] = sum(scores.values()) / len(scores) if scores else float("nan")
    return scores, rows


def capability_scores(model, tokenizer, cfg: EvalConfig, style: str, seed: int) -> dict:
    """{suite: accuracy for each suite in cfg.capability, N.capability_score: their mean}."""
    return capability_results(model, tokenizer, cfg, style, seed)[0]


def score_se(scores: dict, n: int) -> float:
    """Standard error of capability_score, the mean of the suites' accuracies, each a binomial share of n items."""
    accs = [v for k, v in scores.items() if k != N.capability_score]
    return math.sqrt(sum(p * (1 - p) / n for p in accs)) / len(accs) if accs and n > 0 else 0.0


def retention_se(score: float, score_se_: float, baseline: float, baseline_se: float) -> float:
    """Standard error of retention(score, baseline) by the delta method, the two scores taken as independent.
    They are read on the same items, so this overstates the noise: a gate that waits for a drop clear of it
    errs on the side of not rejecting a round."""
    if baseline <= 0 or score <= 0:
        return 0.0
    return (score / baseline) * math.sqrt((score_se_ / score) ** 2 + (baseline_se / baseline) ** 2)


def retention(score: float, baseline: float) -> float:
    """score / baseline; 1.0 when baseline is 0 (a capability the baseline lacked cannot regress)."""
    if math.isnan(score) or math.isnan(baseline) or score < 0 or baseline < 0:
        raise ValueError(f"retention needs non-negative scores, got score={score}, baseline={baseline}")
    return 1.0 if baseline == 0 else score / baseline
