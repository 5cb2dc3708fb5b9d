"""Training with TRL's SFTTrainer and DPOTrainer, and transformers' Trainer, through their public API.

TRL's configs default to bf16 and activation checkpointing; every config built here sets precision
and checkpointing explicitly (fp16 on a T4, fp32 on the CPU).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from transformers import PrinterCallback, ProgressCallback, TrainerCallback
from transformers.utils.notebook import NotebookProgressCallback

from .dist import split_batch
from .folder import write_jsonl
from .models import Precision, load_causal_lm, merge_and_save, save_policy
from .progress import quiet


def resolve_report_to(report_to: str) -> str:
    """config `export.report_to` for transformers: 'auto' is tensorboard when it is installed, else none."""
    if report_to != "auto":
        return report_to
    return "tensorboard" if importlib.util.find_spec("tensorboard") else "none"


def common_args(out_dir: Path, precision: Precision, max_steps: int, lr: float, batch: int, accum: int, seed: int,
                checkpointing: bool = False, report_to: str = "none", logging_dir: Path | None = None) -> dict:
    """TrainingArguments shared by every stage; nothing is checkpointed mid-stage (stages are atomic).

    batch x accum is the effective batch: with N processes, the per-device batch and accumulation come from
    dist.split_batch (batch/N per device when N divides it).
    report_to: config `export.report_to` ('auto', 'none', 'tensorboard', ...); logging_dir: where TensorBoard
    writes, e.g. RunFolder(out).logs / "sft" (transformers 5 takes it only from TENSORBOARD_LOGGING_DIR,
    read when the trainer is built, so it is set here, just before).
    """
    batch, accum = split_batch(batch, accum)  # several processes: batch x accum per optimizer step, kept
    report_to = resolve_report_to(report_to)
    if logging_dir is not None and "tensorboard" in report_to:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(logging_dir)
    import torch

    return dict(
        output_dir=str(out_dir), max_steps=max_steps, learning_rate=lr, per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum, seed=seed, data_seed=seed, fp16=precision.fp16, bf16=precision.bf16,
        activation_checkpointing=checkpointing, logging_steps=max(1, min(10, max_steps // 20)), save_strategy="no",
        report_to=report_to, lr_scheduler_type="cosine", warmup_steps=max(1, max_steps // 20), dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(), disable_tqdm=False,
        logging_nan_inf_filter=False,  # a NaN loss must show in the log (iterdpo.guard), not be averaged away
    )


def fp16_safe_adapters(trainer) -> int:
    """Under fp16 mixed precision, put trainable weights back in fp32; returns how many were recast.

    TRL 1.16's SFT and DPO trainers cast QLoRA adapters (4-bit base) to bf16, which a T4 lacks and fp16's
    gradient scaler cannot unscale ("_amp_foreach_non_finite_check_and_unscale_cuda not implemented for
    'BFloat16'", seen on the device check). fp32 master weights are what fp16 autocast expects; under bf16
    the trainer's choice stands. Call it after the trainer is built and before train() makes the optimizer.
    """
    import torch

    if not trainer.args.fp16:
        return 0
    recast = [p for p in trainer.model.parameters() if p.requires_grad and p.dtype != torch.float32]
    for p in recast:
        p.data = p.data.float()
    return len(recast)


class _Bar(ProgressCallback):
    """transformers' progress bar without the log dict it writes under the bar at every logging step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class SummaryLine(TrainerCallback):
    """One line when training ends: steps and the first and last logged loss (the rest is in train_log.jsonl)."""

    def __init__(self, name: str):
        self.name = name

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            print(summary_line(self.name, state.global_step, state.log_history))


def summary_line(name: str, steps: int, rows: list[dict]) -> str:
    loss = [r["loss"] for r in rows if "loss" in r]
    return f"{name}: {steps} steps" + (f", loss {loss[0]:.3f} -> {loss[-1]:.3f}" if loss else "")


def quiet_logging(trainer, name: str):
    """A summary line instead of transformers' per-step printing: the log dicts (PrinterCallback,
    ProgressCallback) and the Step/Loss table (NotebookProgressCallback), which would fill a saved notebook.
    A terminal or a watched notebook keeps a progress bar; a headless kernel none (iterdpo.progress.quiet).
    Call it after the trainer is built, before train(). Returns the trainer."""
    for printer in (PrinterCallback, ProgressCallback, NotebookProgressCallback):
        trainer.remove_callback(printer)
    if not trainer.args.disable_tqdm and not quiet():
        trainer.add_callback(_Bar())
    trainer.add_callback(SummaryLine(name))
    return trainer


def sft_train(model, tokenizer, rows: list[dict], args: dict, max_length: int, peft_config=None, callbacks=None,
              name: str = "SFT"):
    """Supervised fine-tuning on {prompt, completion} rows, loss on the completion only (`name` heads its summary
    line). Returns the trainer."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    conf = SFTConfig(**args, max_length=max_length, completion_only_loss=True, packing=False,
                     dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=conf, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft_config, callbacks=callbacks)
    fp16_safe_adapters(trainer)
    quiet_logging(trainer, name)
    trainer.train()
    return trainer


def save_trained(trainer, tok, dest: Path, adapter: Path, start_path: str, mcfg, precision: Precision,
                 four_bit: bool = False) -> None:
    """models.save_policy for a trained LoRA model (merged weights to `dest`, the adapter to `adapter`), written once.

    Several processes: under DDP (and ZeRO-2) every process holds the same full weights, so the main process
    alone merges and saves (merging is local: no collective, no deadlock). Under ZeRO-3 or FSDP the weights
    are sharded: every process calls the trainer's save_model, which gathers them and lets the main process
    write the adapter, which the main process then merges into a fresh load of the start policy.
    """
    zero3 = trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3
    if trainer.is_fsdp_enabled or zero3:
        trainer.save_model(str(adapter))
        if trainer.accelerator.is_main_process and mcfg.merged == "best":
            tok.save_pretrained(adapter)  # no merged weights: iterdpo.weights rebuilds them where needed
        elif trainer.accelerator.is_main_process:
            from peft import PeftModel

            merge_and_save(PeftModel.from_pretrained(load_causal_lm(start_path, mcfg, precision), str(adapter)), tok, dest)
    elif trainer.accelerator.is_main_process:
        save_policy(trainer.model, tok, dest, adapter, start_path, mcfg, precision, four_bit)


def save_log(trainer, path: Path) -> list[dict]:
    """The trainer's log history as JSONL (loss, rewards/*, logps/* per logging step)."""
    rows = [dict(r) for r in trainer.state.log_history]
    write_jsonl(path, rows)
    return rows


def last_logged(rows: list[dict], key: str):
    vals = [r[key] for r in rows if key in r]
    return vals[-1] if vals else None
