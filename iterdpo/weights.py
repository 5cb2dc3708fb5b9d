"""A policy's merged weights: kept in its stage folder, or rebuilt from LoRA adapters outside the run.

With ``model.merged: all`` every stage that trains a policy (SFT, each round, the offline arm, a repair) keeps its
merged weights in ``policy/``. With ``model.merged: best`` it keeps only its LoRA adapter (and the tokenizer beside
it): a merged fp16 copy of Qwen2.5-0.5B is about 1 GB, and on Google Drive every stage would hold one. Only
``best/`` then holds merged weights. Where a stage needs a policy (the next round's start, the reference, an
evaluation, a repair, ``best/``), ``RunFolder.policy`` asks :func:`rebuilt`, which makes them in a local cache:

    <temp dir>/iterdpo-merged/<run id>/<policy>-<key>/     (TMPDIR moves it; one folder per policy of the run)

A trained policy is its start policy with its adapter merged in, in the run's dtype, as the stage merged it after
training (the same weights); a repaired one is its start plus alpha of its step (:func:`interpolate`, as the repair
made it). The key hashes the stage's metrics.json and where its start came from, so a retrained stage is rebuilt,
and a fresh machine (a Colab reconnect) rebuilds from the adapters on Drive.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .folder import is_done, remove_stale_temporaries
from .models import Precision, free, load_causal_lm, load_tokenizer, resolve_precision

CACHE = "iterdpo-merged"


def holds_weights(folder: Path) -> bool:
    """Whether `folder` is a merged policy (a model's config.json beside its safetensors)."""
    return (Path(folder) / "config.json").exists()


def cache_dir(root: Path) -> Path:
    """The run's folder in the local cache: one per run folder (resolved, so a link to Drive is the same run)."""
    return Path(tempfile.gettempdir()) / CACHE / hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]


def loadable(run, rnd, files, repaired: bool) -> Path:
    """Where round `rnd`'s policy loads from (`run`: a RunFolder; `files`: the StageFiles of the stage that made it;
    `repaired`: a repair stage, else the training stage): its stage's policy/, unless the finished stage kept only
    its adapter; then the policy rebuilt in the local cache."""
    if files.policy.exists() or not (is_done(files.folder) and files.adapter.exists()):
        return files.policy
    return rebuilt(run, rnd, files, repaired)


def rebuilt(run, rnd, files, repaired: bool) -> Path:
    """Round `rnd`'s policy rebuilt in the local cache (see loadable), unless it is there already."""
    m = run.metrics(files.folder)
    m.setdefault("start_round", 0)  # the offline arm starts from SFT
    if repaired:
        start, trained = run.policy(m["start_round"]), run.trained_policy(rnd)
    else:
        start, trained = (run.base_source() if rnd == 0 else str(run.policy(m["start_round"]))), None
    label = ("sft" if rnd == 0 else f"round_{rnd}" if isinstance(rnd, int) else str(rnd)) + ("-repair" if repaired else "")
    key = hashlib.sha256(b"\0".join([files.metrics.read_bytes(), str(start).encode(), str(trained).encode()]))
    dest = cache_dir(run.root) / f"{label}-{key.hexdigest()[:16]}"
    if holds_weights(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest)  # an interrupted rebuild's (never a live process's)
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    mcfg = run.config().model
    if repaired:
        interpolate(Path(start), trained, m["alpha"], tmp)
    else:
        merge_adapter(str(start), files.adapter, mcfg, resolve_precision(mcfg.precision), tmp)
    try:
        os.replace(tmp, dest)
    except OSError:  # another process of the run made it first (os.replace does not replace a full folder)
        shutil.rmtree(tmp, ignore_errors=True)
    for old in dest.parent.iterdir():  # the same policy of an earlier training
        if old != dest and old.name.rsplit("-", 1)[0] == label:
            shutil.rmtree(old, ignore_errors=True)
    return dest


def merge_adapter(start: str, adapter: Path, mcfg, precision: Precision, dest: Path) -> Path:
    """`start` (a folder or hub name) with the LoRA adapter at `adapter` merged in, saved to `dest` with the tokenizer
    kept beside the adapter (else `start`'s). On the CPU: the GPU may be holding a trainer's model."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_causal_lm(start, mcfg, precision, on="cpu"), str(adapter)).merge_and_unload()
    model.save_pretrained(dest, safe_serialization=True)
    has_tokenizer = (Path(adapter) / "tokenizer_config.json").exists()
    load_tokenizer(str(adapter) if has_tokenizer else start, mcfg).save_pretrained(dest)
    del model
    free()
    return dest


def interpolate_state(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """start + alpha * (end - start), tensor by tensor, computed in float32 and stored in `end`'s dtypes.

    Args:
        start, end: state dicts with the same keys and shapes (any shapes; tensors that are not floating
            point, e.g. integer buffers, are taken from `end`).
        alpha: 0 gives `start`, 1 gives `end`.
    Returns:
        a state dict with `end`'s keys, shapes and dtypes.
    """
    if set(start) != set(end):
        raise ValueError(f"the two policies differ in tensors: {sorted(set(start) ^ set(end))[:5]}")
    out = {}
    for k, e in end.items():
        s = start[k]
        if s.shape != e.shape:
            raise ValueError(f"tensor {k}: shape {tuple(s.shape)} at the start, {tuple(e.shape)} at the end")
        if not e.is_floating_point():
            out[k] = e.clone()
            continue
        v = torch.lerp(s.float(), e.float(), alpha)  # exact at both ends
        if not torch.isfinite(v).all():
            raise ValueError(f"tensor {k}: non-finite values after interpolation at alpha {alpha:g}")
        out[k] = v.to(e.dtype).contiguous()
    return out


def interpolate(start: Path, end: Path, alpha: float, dest: Path) -> Path:
    """The policy start + alpha (end - start), written to `dest` (safetensors; config and tokenizer from `end`)."""
    from safetensors.torch import load_file, save_file

    shards = sorted(Path(end).glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{end}: no *.safetensors weights to interpolate")
    shutil.copytree(end, dest)
    for shard in shards:
        other = Path(start) / shard.name
        if not other.exists():
            raise FileNotFoundError(f"{other}: the start policy has no {shard.name} (its weights are sharded differently)")
        save_file(interpolate_state(load_file(str(other)), load_file(str(shard)), alpha), str(dest / shard.name),
                  metadata={"format": "pt"})
    return dest
