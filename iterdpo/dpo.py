"""One DPO round with TRL's DPOTrainer and a fresh LoRA adapter on the policy the round starts from.

The reference is explicit: ``previous`` means the policy this round starts from (the adapter
disabled gives it back, so no second model is loaded); ``sft`` loads the SFT policy as a separate,
frozen reference. Reference log-probs are computed once per round, before training
(``precompute_ref_log_probs``), and max_length is set from the data, not a fixed 1024.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .config import DPORoundConfig, ModelConfig
from .models import Precision, free, load_causal_lm, load_tokenizer, lora_config, merge_and_save
from .training import common_args, save_log


def data_max_length(tokenizer, pairs: list[dict]) -> int:
    """Longest prompt + response (+ EOS) in tokens, so nothing is truncated and nothing is over-padded."""
    longest = 0
    for p in pairs:
        n_prompt = len(tokenizer(p["prompt"], add_special_tokens=False)["input_ids"])
        n_resp = max(len(tokenizer(p[k], add_special_tokens=False)["input_ids"]) for k in ("chosen", "rejected"))
        longest = max(longest, n_prompt + n_resp + 1)
    return longest


def dpo_args(dcfg: DPORoundConfig, precision: Precision, out_dir: Path, seed: int, max_length: int) -> dict:
    args = common_args(out_dir, precision, dcfg.max_steps, dcfg.learning_rate, dcfg.batch_size, dcfg.grad_accum,
                       seed, checkpointing=dcfg.gradient_checkpointing)
    return dict(args, beta=dcfg.beta, loss_type=list(dcfg.loss_type), loss_weights=list(dcfg.loss_weights) or None,
                max_length=max_length, precompute_ref_log_probs=dcfg.precompute_ref,
                precompute_ref_batch_size=dcfg.batch_size * 4, disable_dropout=True)


def train_round(start_path: str, ref_path: str | None, pairs: list[dict], dcfg: DPORoundConfig, mcfg: ModelConfig,
                precision: Precision, dest: Path, seed: int, callbacks=None) -> dict:
    """Train on `pairs`, save the merged policy to `dest/policy`, return {"log": [...], "max_length": n}.

    ref_path None: the reference is the start policy itself.
    """
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tok = load_tokenizer(start_path, mcfg)
    model = load_causal_lm(start_path, mcfg, precision, four_bit=mcfg.load_in_4bit)
    ref = load_causal_lm(ref_path, mcfg, precision, four_bit=mcfg.load_in_4bit) if ref_path else None
    if ref is not None:
        ref.requires_grad_(False)
    max_length = data_max_length(tok, pairs)
    work = dest / "trainer"
    conf = DPOConfig(**dpo_args(dcfg, precision, work, seed, max_length))
    rows = [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    trainer = DPOTrainer(model=model, ref_model=ref, args=conf, train_dataset=Dataset.from_list(rows),
                         processing_class=tok, peft_config=lora_config(mcfg), callbacks=callbacks)
    trainer.train()
    log = save_log(trainer, dest / "train_log.jsonl")
    save_policy(trainer.model, tok, dest / "policy", start_path, mcfg, precision)
    shutil.rmtree(work, ignore_errors=True)
    free(trainer, model, ref)
    return {"log": log, "max_length": max_length}


def save_policy(model, tok, dest: Path, start_path: str, mcfg: ModelConfig, precision: Precision) -> None:
    """Merged weights as safetensors; a 4-bit base is merged into a half-precision reload of the start policy."""
    if not mcfg.load_in_4bit:
        merge_and_save(model, tok, dest)
        return
    from peft import PeftModel

    adapter = dest.with_name(dest.name + "-adapter")
    model.save_pretrained(adapter)
    base = load_causal_lm(start_path, mcfg, precision)
    merge_and_save(PeftModel.from_pretrained(base, adapter), tok, dest)
    shutil.rmtree(adapter, ignore_errors=True)
    free(base)

