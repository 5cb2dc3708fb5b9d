"""Training with TRL's SFTTrainer and DPOTrainer, and transformers' Trainer, through their public API.

TRL's configs default to bf16 and activation checkpointing; every config built here sets precision
and checkpointing explicitly (fp16 on a T4, fp32 on the CPU).
"""

from __future__ import annotations

from pathlib import Path

from .folder import write_jsonl
from .models import Precision


def common_args(out_dir: Path, precision: Precision, max_steps: int, lr: float, batch: int, accum: int, seed: int,
                checkpointing: bool = False) -> dict:
    """TrainingArguments shared by every stage; nothing is checkpointed mid-stage (stages are atomic)."""
    return dict(
        output_dir=str(out_dir), max_steps=max_steps, learning_rate=lr, per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum, seed=seed, data_seed=seed, fp16=precision.fp16, bf16=precision.bf16,
        gradient_checkpointing=checkpointing, logging_steps=max(1, min(10, max_steps // 20)), save_strategy="no",
        report_to="none", lr_scheduler_type="cosine", warmup_steps=max(1, max_steps // 20), dataloader_num_workers=0,
        disable_tqdm=False,
    )


def sft_train(model, tokenizer, rows: list[dict], args: dict, max_length: int, peft_config=None):
    """Supervised fine-tuning on {prompt, completion} rows, loss on the completion only. Returns the trainer."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    conf = SFTConfig(**args, max_length=max_length, completion_only_loss=True, packing=False,
                     dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=conf, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft_config)
    trainer.train()
    return trainer


def save_log(trainer, path: Path) -> list[dict]:
    """The trainer's log history as JSONL (loss, rewards/*, logps/* per logging step)."""
    rows = [dict(r) for r in trainer.state.log_history]
    write_jsonl(path, rows)
    return rows


def last_logged(rows: list[dict], key: str):
    vals = [r[key] for r in rows if key in r]
    return vals[-1] if vals else None
