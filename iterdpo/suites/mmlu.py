"""The ``mmlu`` suite: multiple choice, the choices listed in the prompt as ``A. ...`` and the letters scored;
drawn round-robin over shuffled subjects."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from ..data import DataError
from ..registry import SUITES
from .base import Suite, mc_item, score_mc

MMLU_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


def _read_mmlu_folder(path: Path) -> list[dict]:
    files = sorted((path / "test").glob("*.csv"))
    if not files:
        raise DataError(f"{path}: no test/*.csv files (expected the MMLU folder with dev/ and test/)")
    return [item for f in files for item in _read_mmlu_csv(f)]


def _mmlu_hub_item(r: dict, loc: str) -> dict:
    return _mmlu_item(r["question"], list(r["choices"]), int(r["answer"]), r["subject"], loc)


def _read_mmlu_csv(path: Path) -> list[dict]:
    subject = path.stem.removesuffix("_test").replace("_", " ")
    items = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        if next(reader, None) != MMLU_HEADER:
            raise DataError(f"{path}:1: expected the header {','.join(MMLU_HEADER)}")
        for row in reader:
            loc = f"{path}:{reader.line_num}"  # the row's last line: a quoted field may span lines
            if len(row) != 6 or row[5] not in ("0", "1", "2", "3"):
                raise DataError(f"{loc}: expected 6 fields with answer 0-3, got {row!r}")
            items.append(_mmlu_item(row[0], row[1:5], int(row[5]), subject, loc))
    return items


def _mmlu_item(question: str, choices: list[str], answer: int, subject: str, loc: str) -> dict:
    if not 0 <= answer < len(choices):
        raise DataError(f"{loc}: answer {answer} out of range for {len(choices)} choices")
    return mc_item("mmlu", question, choices, answer, subject)


def _round_robin(rows: list[dict], n: int, rng: random.Random) -> list[dict]:
    """Up to n rows, one subject at a time in a shuffled order, each subject's rows shuffled."""
    by_subject: dict[str, list[dict]] = {}
    for r in rows:
        by_subject.setdefault(r["subject"], []).append(r)
    queues = [by_subject[s] for s in sorted(by_subject)]
    rng.shuffle(queues)
    for q in queues:
        rng.shuffle(q)
    out = []
    while len(out) < n and any(queues):
        out += [q.pop() for q in queues if q][: n - len(out)]
    return out


SUITES.register("mmlu", Suite(score=score_mc, read_local=_read_mmlu_folder, hub=("all", "test"), hub_item=_mmlu_hub_item,
                              draw=_round_robin))
