"""A panel of saved reward models scoring the same texts: the labelling ensemble's members and the held-out
judge. With a frozen body (``reward.backbone: frozen``) they differ only in their heads, so members whose
saved bodies are byte-identical share one pass through it, and only the heads run for each: the sentiment
preset's evaluation scores 256 samples with three 12-layer models for the price of one (docs/results.md,
issue 27). Models with different bodies still load one at a time, as evaluation loads everything else.
The scores are those of scoring each model alone: the same batches reach the same body.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from torch import nn

from . import migrate, reward
from .models import free


def body_digest(path: str | Path) -> str | None:
    """sha256 of a saved reward model's body (its weight files and config) and its pooling; None for a model
    saved as a LoRA adapter, whose body is merged from its base on loading."""
    p = Path(path)
    meta_file = p / reward.POOLING_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else None
    if meta and "base" in meta:
        return None
    h = hashlib.sha256(migrate.reward_pooling(meta).encode())
    for f in sorted(p.glob("*.safetensors")) + [p / "config.json"]:
        if f.name == reward.HEAD_FILE or not f.exists():
            continue
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


def groups(paths: list) -> list[list[int]]:
    """Indices of `paths` grouped by identical body, in order of first appearance (an adapter stands alone)."""
    by_body: dict[str, list[int]] = {}
    out: list[list[int]] = []
    for i, path in enumerate(paths):
        key = body_digest(path)
        if key is None:
            out.append([i])
        elif key in by_body:
            by_body[key].append(i)
        else:
            by_body[key] = [i]
            out.append(by_body[key])
    return out


def head_of(path: str | Path, head_hidden: int, like: nn.Module) -> nn.Module:
    """The head saved at `path`, on the device and in the dtype of `like` (a loaded model's head)."""
    from safetensors.torch import load_file

    hidden = like[0].in_features
    head = nn.Sequential(nn.Linear(hidden, head_hidden), nn.ReLU(), nn.Dropout(0.0), nn.Linear(head_hidden, 1))
    head.load_state_dict(load_file(str(Path(path) / reward.HEAD_FILE)))
    return head.to(device=like[0].weight.device, dtype=like[0].weight.dtype).eval()


def score(paths: list, head_hidden: int, dtype, tok, prompts: list[str], responses: list[str], ended: list[bool],
          batch_size: int, desc: str = "scoring") -> list[list[float]]:
    """reward.score by every model in `paths`: [model][text]; a body shared by several runs once for all."""
    out: list = [None] * len(paths)
    for group in groups(paths):
        rm = reward.load(paths[group[0]], head_hidden, dtype)
        heads = [rm.head] + [head_of(paths[i], head_hidden, rm.head) for i in group[1:]]
        scores = reward.score(rm, tok, prompts, responses, ended, batch_size, desc=desc, heads=heads)
        for i, s in zip(group, scores):
            out[i] = s
        del rm, heads
        free()
    return out
