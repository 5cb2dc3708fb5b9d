"""Supervised fine-tuning: LoRA on the base model, trained on the seed pairs' chosen responses.

The loss is the negative log-likelihood of the completion tokens only (TRL's SFTTrainer with
``completion_only_loss``): ``L = -sum_t log pi(y_t | x, y_<t)`` over the chosen response y of prompt x.
The merged policy goes to ``sft/policy``, its LoRA adapter to ``sft/adapter``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .guard import NonFiniteGuard
from .models import check_lora_targets, free, load_causal_lm, load_tokenizer, lora_config, resolve_precision
from .runfolder import StageFiles
from .training import common_args, last_logged, save_log, save_trained, sft_train
from .metrics import N


def train_stage(cfg, run, dest: Path) -> dict:
    """LoRA SFT of the run's base model on the chosen responses, into `dest`. Returns the metrics."""
    from transformers import set_seed

    set_seed(cfg.seed_for("sft"))
    f = StageFiles(dest)
    precision = resolve_precision(cfg.model.precision)
    base = run.base_source()
    tok = load_tokenizer(base, cfg.model)
    model = load_causal_lm(base, cfg.model, precision, four_bit=cfg.model.load_in_4bit)
    check_lora_targets(model, cfg.model.lora_targets, base)
    rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in run.pairs("train_pairs")]
    s = cfg.sft
    max_len = cfg.data.max_prompt_tokens + cfg.data.max_response_tokens + 1
    args = common_args(f.work, precision, s.max_steps, s.learning_rate, s.batch_size, s.grad_accum, cfg.seed,
                       report_to=cfg.export.report_to, logging_dir=run.log_dir("sft"))
    trainer = sft_train(model, tok, rows, args, max_length=max_len, peft_config=lora_config(cfg.model),
                        callbacks=[NonFiniteGuard("sft", precision.fp16)])
    log = save_log(trainer, f.train_log)
    save_trained(trainer, tok, f.policy, f.adapter, base, cfg.model, precision, cfg.model.load_in_4bit)
    shutil.rmtree(f.work, ignore_errors=True)
    del trainer, model
    free()
    return {N.train_loss: last_logged(log, "loss"), N.pairs: len(rows), "precision": precision.name}
