"""T4 emulation and the guards: no bf16, non-finite losses, the fp16 loss-scale history."""

from __future__ import annotations

import importlib
import math
import os
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import TrainerCallback

from ..models import EMULATE_T4
from .formulas import GIB

# T4 emulation and guards -----------------------------------------------------------------------------------
class BF16Error(RuntimeError):
    """Something produced a bfloat16 tensor while a T4 was emulated (a T4 has no bf16)."""


class NoBF16(torch.overrides.TorchFunctionMode):
    """Raises BF16Error when a torch function returns a bfloat16 tensor."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16:
                raise BF16Error(f"{getattr(func, '__name__', func)} returned a bfloat16 tensor under T4 emulation")
        return out


def emulate_t4(cap_gib: float) -> dict:
    """In this process: a T4's precision (fp16, never bf16) and its memory (cap_gib) on a bigger GPU."""
    os.environ[EMULATE_T4] = "1"
    total = torch.cuda.get_device_properties(0).total_memory
    cap = int(min(cap_gib * GIB, total))
    torch.cuda.set_per_process_memory_fraction(cap / total, 0)
    real = torch.cuda.mem_get_info

    def capped(device=None):
        free, _ = real(device)
        return min(free, max(0, cap - torch.cuda.memory_reserved())), cap

    torch.cuda.mem_get_info = capped
    torch.cuda.is_bf16_supported = lambda *a, **k: False
    # a T4 (sm_75) has neither flash attention nor cuDNN's fused attention: SDPA picks memory-efficient or math
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_cudnn_sdp(False)
    return {"cap_bytes": cap, "total_bytes": total, "fraction": cap / total, "sdpa": "flash and cuDNN off"}


def bf16_params(model) -> list[str]:
    return sorted({n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.dtype == torch.bfloat16})[:5]


def bf16_in_saved(root: Path) -> list[str]:
    """Safetensors files under root that hold a bfloat16 tensor."""
    bad = []
    for f in sorted(Path(root).glob("**/*.safetensors")):
        with safe_open(str(f), "pt") as st:
            if any(st.get_slice(k).get_dtype() == "BF16" for k in st.keys()):
                bad.append(str(f.relative_to(root)))
    return bad


def _finite(v) -> bool:
    return not isinstance(v, float) or math.isfinite(v)


class NonFiniteGuard(TrainerCallback):
    """Stops training when a logged loss is non-finite. It turns off logging_nan_inf_filter, which otherwise
    logs the logging window's mean loss in place of a NaN or inf one, so a guard reading the log never sees it."""

    tripped: dict | None = None

    def on_train_begin(self, args, state, control, **kw):
        args.logging_nan_inf_filter = False

    def on_log(self, args, state, control, logs=None, **kw):
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            self.tripped = {"step": state.global_step, "loss": str(loss)}
            print(f"non-finite guard: loss {loss} at step {state.global_step}; training stopped", file=sys.stderr)
            control.should_training_stop = True


def project_guard():
    """(name, class) of the project's own non-finite guard: a TrainerCallback in a training module whose name
    says 'finite'; (None, None) while it has none. The modules are probed by name: any of them may lack one."""
    for mod in ("iterdpo.guard", "iterdpo.training", "iterdpo.dpo", "iterdpo.sft", "iterdpo.reward"):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        for name, obj in vars(m).items():
            if (isinstance(obj, type) and issubclass(obj, TrainerCallback) and "finite" in name.lower()
                    and obj.__module__ == mod):
                return f"{mod}.{name}", obj
    return None, None


class StepProbe(TrainerCallback):
    """Records a training run: seconds per optimizer step (CUDA-synchronised), real and padded tokens of the
    training forwards, GradScaler's scale and skipped steps, bf16 parameters, 4-bit layers."""

    def __init__(self):
        self.steps, self.tokens, self.scale, self.skipped = [], [0, 0], [], []
        self.bf16, self.linear4bit, self.fp16, self.bf16_flag, self.t = [], 0, None, None, 0.0

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.bf16 = bf16_params(model)
        self.linear4bit = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
        self.fp16, self.bf16_flag = args.fp16, args.bf16
        model.register_forward_pre_hook(self._count, with_kwargs=True)
        self.t = self._now()

    def _count(self, module, args, kwargs):
        ids, att = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if module.training and torch.is_grad_enabled() and ids is not None:  # not the reference pass
            self.tokens[0] += int(att.sum()) if att is not None else ids.numel()
            self.tokens[1] += ids.numel()

    def on_step_end(self, args, state, control, optimizer=None, **kw):
        now = self._now()
        self.steps.append({"seconds": now - self.t, "real_tokens": self.tokens[0], "padded_tokens": self.tokens[1]})
        self.tokens, self.t = [0, 0], now
        scaler = getattr(optimizer, "scaler", None)  # accelerate's AcceleratedOptimizer holds GradScaler under fp16
        if scaler is not None:
            self.scale.append(float(scaler.get_scale()))
            if optimizer.step_was_skipped:
                self.skipped.append(state.global_step)

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()


def fp16_health(log: list[dict], probe) -> dict:
    """Finite losses; non-finite gradient norms only on steps the scaler skipped (an fp16 overflow it handled)."""
    losses = [r["loss"] for r in log if "loss" in r]
    norms = [(r.get("step"), r["grad_norm"]) for r in log if "grad_norm" in r]
    bad_norm_steps = [s for s, g in norms if g is None or not _finite(g)]
    return {"losses": len(losses), "non_finite_losses": sum(x is None or not _finite(x) for x in losses),
            "non_finite_grad_norm_steps": bad_norm_steps, "scaler_skipped_steps": probe.skipped,
            "loss_scale_history": probe.scale,
            "healthy": all(x is not None and _finite(x) for x in losses)
                       and len(bad_norm_steps) <= len(probe.skipped)}
