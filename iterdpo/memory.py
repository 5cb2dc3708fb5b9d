"""The memory planner: micro-batch, accumulation, the reference pass's batch and 4-bit loading from a model's size
and the free GPU memory, a retry that halves the micro-batch on out-of-memory while keeping the effective batch, a
measure of how far memory rose during a block (peak_memory, read by the benchmark and the device check), and the
DPO step's settings that cost nothing in the loss (StepSettings).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
from pathlib import Path

import torch

from transformers import TrainerCallback

from .models import free


# Activation bytes kept per token, per layer and per unit of hidden size by one transformer layer in 16-bit
# without recomputation: 34 (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
# Models", sec. 4.1; the 5·heads·seq/hidden term is left out because SDPA keeps no attention matrix). It is an
# upper bound for LoRA, where frozen linear layers keep no input for a weight gradient.
ACT_BYTES = 34
FOUR_BIT_BYTES = 0.5625  # NF4 weights with double-quantised constants, about 4.5 bits per parameter
# TRL 1.16's DPO trainer never builds the (batch, seq, vocab) logits: its fused LM head (trl/trainer/utils.py
# add_fused_lm_head, trl/kernels/chunked_logprob.py) projects at most TOKEN_CHUNK_SIZE tokens by VOCAB_CHUNK
# columns at a time into one reused 16-bit tile, keeps a few fp32 numbers per token, and its backward an fp32
# gradient of the hidden states (4 x hidden bytes per token).
LM_HEAD_TOKENS, LM_HEAD_VOCAB = 4096, 32768
# A forward-only pass (the reference log-probs) holds about one layer's activations at a time: ACT_BYTES over
# the layers is what the training step keeps, so a batch REF_BATCH_FACTOR times the micro-batch stays well inside.
REF_BATCH_FACTOR = 4


def estimate_bytes(n_params: int, seq_len: int, micro_batch: int, precision_bytes: int, layers: int, hidden: int,
                   vocab: int, *, four_bit: bool = False, seqs_per_example: int = 2,
                   lora_fraction: float = 0.01) -> dict:
    """The planner's estimate of a LoRA DPO step's memory, by part (bytes): weights, adapters (fp32 with gradient
    and two Adam moments), activations (seqs x seq_len x (ACT_BYTES x layers x hidden x precision_bytes / 2 +
    4 x hidden) per example) and the fused LM head's tile (min(tokens, LM_HEAD_TOKENS) x min(vocab,
    LM_HEAD_VOCAB) x precision_bytes, once). 'total' is their sum."""
    tokens = micro_batch * seqs_per_example * seq_len
    parts = {"weights": n_params * (FOUR_BIT_BYTES if four_bit else precision_bytes),
             "adapters": 16 * lora_fraction * n_params,
             "activations": tokens * (ACT_BYTES * layers * hidden * precision_bytes / 2 + 4 * hidden),
             "lm_head_tile": min(tokens, LM_HEAD_TOKENS) * min(vocab, LM_HEAD_VOCAB) * precision_bytes}
    return {**parts, "total": sum(parts.values())}


def plan_memory(n_params: int, gpu_free_bytes: int, seq_len: int, target_batch: int, precision_bytes: int, *,
                layers: int | None = None, hidden: int | None = None, vocab: int = 0, seqs_per_example: int = 2,
                lora_fraction: float = 0.01, headroom: float = 0.9) -> dict:
    """The largest micro-batch that fits, the accumulation that keeps ``target_batch`` exactly, and the batch of the
    reference pass.

    Estimate: ``estimate_bytes`` (weights, adapters with their optimizer state, activations per example, the fused
    LM head's one tile) within ``headroom`` of the free memory. Without layers and hidden, they come from
    n_params ~ 12·layers·hidden² at hidden = 64·layers. 4-bit is chosen only when 16-bit weights leave no room for
    one example (bitsandbytes: CUDA only). ref_batch: the reference log-probs, computed once without gradients,
    run at up to REF_BATCH_FACTOR micro-batches, never more than target_batch. Returns {"micro_batch",
    "grad_accum", "ref_batch", "load_in_4bit", "estimate_bytes", "reason"}; raises ValueError when nothing fits.
    """
    if min(n_params, gpu_free_bytes, seq_len, target_batch, precision_bytes) <= 0:
        raise ValueError("plan_memory: every size must be positive")
    if not (layers and hidden):
        hidden = round((64 * n_params / 12) ** (1 / 3))
        layers = max(1, round(hidden / 64))
    gib = 2 ** 30
    usable = headroom * gpu_free_bytes
    est = lambda micro, four_bit: estimate_bytes(n_params, seq_len, micro, precision_bytes, layers, hidden, vocab,
                                                 four_bit=four_bit, seqs_per_example=seqs_per_example,
                                                 lora_fraction=lora_fraction)
    for four_bit in (False, True):
        fits = [d for d in range(1, target_batch + 1) if target_batch % d == 0 and est(d, four_bit)["total"] <= usable]
        if fits:
            micro, e = fits[-1], est(fits[-1], four_bit)
            kind = "4-bit" if four_bit else f"{precision_bytes}-byte"
            why = (f"{kind} weights {e['weights'] / gib:.2f} GiB + adapters and optimizer {e['adapters'] / gib:.2f} GiB + "
                   f"activations {e['activations'] / gib:.3f} GiB + LM-head tile {e['lm_head_tile'] / gib:.3f} GiB at "
                   f"micro-batch {micro}: {e['total'] / gib:.2f} GiB of {usable / gib:.2f} GiB usable")
            if four_bit:
                why = f"{precision_bytes}-byte weights leave no room for one example; {why}"
            return {"micro_batch": micro, "grad_accum": target_batch // micro, "load_in_4bit": four_bit,
                    "ref_batch": min(target_batch, REF_BATCH_FACTOR * micro), "estimate_bytes": e["total"], "reason": why}
    raise ValueError(f"plan_memory: {n_params / 1e9:.2f}B parameters at seq_len={seq_len} do not fit in "
                     f"{gpu_free_bytes / gib:.2f} GiB even in 4 bit at micro-batch 1; shorten seq_len or use a "
                     "larger GPU")


def is_oom(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or another backend's RuntimeError that says it ran out of memory."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def with_oom_retry(fn, micro_batch: int, grad_accum: int):
    """``fn(micro_batch, grad_accum)``; on out-of-memory, halve the micro-batch, raise accumulation, retry.

    The effective batch micro_batch x grad_accum never changes (the new micro-batch is the largest divisor
    of it at most half the old one). Re-raises at micro-batch 1 and on any other error.
    Returns (fn's result, micro_batch, grad_accum) as finally used.
    """
    effective = micro_batch * grad_accum
    while True:
        try:
            return fn(micro_batch, grad_accum), micro_batch, grad_accum
        except Exception as e:
            if not is_oom(e) or micro_batch == 1:
                raise
            smaller = max(d for d in range(1, micro_batch // 2 + 1) if effective % d == 0)
            print(f"WARNING: out of memory at micro_batch={micro_batch}, grad_accum={grad_accum}; retrying with "
                  f"micro_batch={smaller}, grad_accum={effective // smaller} (effective batch {effective} kept)",
                  file=sys.stderr)
            micro_batch, grad_accum = smaller, effective // smaller
            free()


def config_size(config) -> dict:
    """{n_params, layers, hidden, vocab} of a decoder from its transformers config (an estimate of n_params:
    attention 4·h², MLP 3·h·intermediate per layer, plus the embedding)."""
    h, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    inter = getattr(config, "intermediate_size", None) or 4 * h
    return {"n_params": layers * (4 * h * h + 3 * h * inter) + vocab * h, "layers": layers, "hidden": h, "vocab": vocab}


def plan_for(model_path: str, seq_len: int, target_batch: int, precision_bytes: int) -> dict | None:
    """plan_memory for a model on the current GPU (its free memory now); None without CUDA."""
    if not torch.cuda.is_available():
        return None
    from transformers import AutoConfig

    size = config_size(AutoConfig.from_pretrained(model_path))
    free_bytes, _ = torch.cuda.mem_get_info()
    return plan_memory(size["n_params"], free_bytes, seq_len, target_batch, precision_bytes,
                       layers=size["layers"], hidden=size["hidden"], vocab=size["vocab"])


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@contextlib.contextmanager
def peak_memory(out: dict):
    """out["peak_bytes"]: how far memory rose above its level at entry (GPU allocations, or the process RSS)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        yield
        torch.cuda.synchronize()
        out["peak_bytes"] = torch.cuda.max_memory_allocated() - start
        out["memory_measure"] = "cuda max_memory_allocated growth"
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so reuse of it counts as growth
    try:
        start = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident set, to the current RSS
    except OSError:  # not Linux: the process's lifetime peak, which a peak before the run can hide
        import resource  # Unix only: imported where it is needed, so this module still loads on Windows

        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        yield
        end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        out["peak_bytes"], out["memory_measure"] = end - start, "lifetime peak RSS growth"
        return
    yield
    out["peak_bytes"], out["memory_measure"] = (_status_kib("VmHWM") - start) * 1024, "process peak RSS growth"


class StepSettings(TrainerCallback):
    """Settings of a LoRA DPO step that leave its loss alone, applied when training begins (public APIs only).

    - Under 16-bit mixed precision, LoRA layers stop casting their input to the adapters' fp32 (peft's
      ``cast_input_dtype_enabled``, what ``peft.helpers.disable_input_dtype_casting`` turns off): autocast casts
      a linear layer's input to 16 bit anyway, so the cast is an extra copy of every adapted layer's input.
    - A separate reference model (``dpo.reference: sft``) whose log-probs were precomputed is moved off the GPU:
      the trainer keeps it but never reads it again.
    """

    def __init__(self, reference=None):
        self.reference = reference
        self.input_casting_off = 0

    def on_train_begin(self, args, state, control, model=None, **kw):
        from peft.tuners.tuners_utils import BaseTunerLayer

        if (args.fp16 or args.bf16) and model is not None:
            for m in model.modules():
                if isinstance(m, BaseTunerLayer):
                    m.cast_input_dtype_enabled = False
                    self.input_casting_off += 1
        if (self.reference is not None and args.precompute_ref_log_probs and torch.cuda.is_available()
                and not getattr(self.reference, "is_loaded_in_4bit", False)):  # bitsandbytes weights stay put
            self.reference.to("cpu")  # in place: every holder of the module lets go of its GPU memory
            free()
