"""The ``arc`` suite (ARC-Challenge): multiple choice, the choices listed in the prompt as ``A. ...``."""

from __future__ import annotations

from ..data import DataError
from ..registry import SUITES
from .base import Suite, mc_item, read_jsonl_items, score_mc


def _arc_hub_item(r: dict, loc: str) -> dict:
    opts = [{"label": lab, "text": t} for lab, t in zip(r["choices"]["label"], r["choices"]["text"])]
    return _arc_item({"question": r["question"], "options": opts, "answer": r["answerKey"]}, loc)


def _arc_item(rec: dict, loc: str) -> dict:
    opts, q, ans = rec.get("options"), rec.get("question"), rec.get("answer")
    if not isinstance(q, str) or not isinstance(opts, list) or not all(isinstance(o, dict) and {"label", "text"} <= set(o) for o in opts):
        raise DataError(f"{loc}: expected {{'question': str, 'options': [{{'label', 'text'}}], 'answer': label}}")
    labels = [str(o["label"]) for o in opts]
    if ans not in labels:
        raise DataError(f"{loc}: answer {ans!r} is not among the labels {labels}")
    return mc_item("arc", q, [o["text"] for o in opts], labels.index(ans), "science")


SUITES.register("arc", Suite(score=score_mc, read_local=read_jsonl_items(_arc_item), hub=("ARC-Challenge", "test"),
                             hub_item=_arc_hub_item))
