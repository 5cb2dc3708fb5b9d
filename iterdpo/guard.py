"""The non-finite guard: training stops at the first non-finite loss, gradient or weight; nothing is saved.

``NonFiniteGuard`` is a ``transformers.TrainerCallback`` (public API) given to every trainer. It raises
:class:`NonFiniteError` out of ``trainer.train()``:

- before an optimizer step, when a gradient is non-finite (full precision and bf16; under fp16 the
  gradient scaler skips overflowing steps itself, so there the guard leaves gradients to it);
- after an optimizer step, when a trainable weight is non-finite (a step that got through anyway);
- at a logging step, when the logged loss or gradient norm is non-finite (the trainers' own filter,
  which hides a NaN loss behind the running mean, is switched off in ``training.common_args``).

The stage's folder is then not written (``folder.stage_folder`` removes it), so the stage is not done and
no non-finite weight reaches the disk. The DPO stage turns the error into a ``non_finite`` trigger for
the controller (rollback to the best round, lower learning rate); other stages stop the run with one line.

Fault injection, for tests and the device check: ``ITERDPO_FAULT=nan@<where>:<step>`` (``where`` as the
guard is named, e.g. ``dpo_round_1``, ``sft``; steps count from 1) sets one trainable weight to NaN before
that optimizer step, so the
next forward pass produces a NaN loss.
"""

from __future__ import annotations

import math
import os

import torch
from transformers import TrainerCallback

FAULT_ENV = "ITERDPO_FAULT"


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss, gradient or weight; `where` names the stage, `step` the step."""

    def __init__(self, where: str, step: int, what: str):
        super().__init__(f"{where}: non-finite {what} at step {step}; nothing of this stage was saved")
        self.where, self.step, self.what = where, step, what


def _trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _first_bad(tensors) -> str | None:
    for name, t in tensors:
        if t is not None and not torch.isfinite(t).all():
            return name
    return None


class NonFiniteGuard(TrainerCallback):
    def __init__(self, where: str, fp16: bool = False):
        self.where, self.fp16 = where, fp16
        self.fault_step = self._fault_step()

    def _fault_step(self) -> int | None:
        spec = os.environ.get(FAULT_ENV, "")
        if not spec.startswith("nan@"):
            return None
        where, _, step = spec[4:].rpartition(":")
        return int(step) if where == self.where and step.isdigit() else None

    def on_step_begin(self, args, state, control, model=None, **kw):
        if self.fault_step is not None and state.global_step + 1 == self.fault_step and model is not None:
            name, p = _trainable(model)[0]
            with torch.no_grad():
                p.view(-1)[0] = float("nan")
            print(f"{FAULT_ENV}: set {name}[0] to NaN before step {self.fault_step} of {self.where}")

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        if model is not None and not self.fp16:
            bad = _first_bad((n, p.grad) for n, p in _trainable(model))
            if bad:
                raise NonFiniteError(self.where, state.global_step + 1, f"gradient ({bad})")

    def on_optimizer_step(self, args, state, control, model=None, **kw):
        if model is not None:
            bad = _first_bad(_trainable(model))
            if bad:
                raise NonFiniteError(self.where, state.global_step + 1, f"weight ({bad})")

    def on_log(self, args, state, control, logs=None, **kw):
        for key in ("loss", "grad_norm"):
            v = (logs or {}).get(key)
            if key == "grad_norm" and self.fp16:
                continue
            if isinstance(v, (int, float)) and not math.isfinite(v):
                raise NonFiniteError(self.where, state.global_step, f"{key} ({v})")
