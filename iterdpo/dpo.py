"""One DPO round with TRL's DPOTrainer and a fresh LoRA adapter on the policy the round starts from.

The reference is explicit: ``previous`` means the policy this round starts from (the adapter
disabled gives it back, so no second model is loaded); ``sft`` loads the SFT policy as a separate,
frozen reference. Reference log-probs are computed once per round, before training
(``precompute_ref_log_probs``), and max_length is set from the data, not a fixed 1024.

Batches (``batch_plan``): when the data holds more pairs than the round's steps consume
(max_steps x batch x accumulation), the round draws exactly that many, at random, so the reference
pass reads no pair that is never trained on; those pairs are sorted by length, cut into
micro-batches, and the micro-batches shuffled, so each batch pads little, and the trainer reads them
in that order (``train_sampling_strategy="sequential"``). The reference pass uses the same
micro-batches. When the steps go round the data more than once, every pair is kept, in length order
for the reference pass, and the trainer samples at random as usual.
"""

from __future__ import annotations

import math

import random
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

from . import dist
from .config import DPORoundConfig, ModelConfig
from .data import PAIR_KEYS
from .guard import NonFiniteGuard
from .memory import StepSettings, plan_for, with_oom_retry
from .models import Precision, check_lora_targets, free, load_causal_lm, load_tokenizer, lora_config, resolve_precision
from .runfolder import StageFiles
from .training import common_args, fp16_safe_adapters, last_logged, quiet_logging, save_log, save_trained
from .metrics import N


def pair_lengths(tokenizer, pairs: list[dict]) -> list[int]:
    """Tokens of each pair's prompt + longer response + EOS: the width it pads a batch to."""
    out = []
    for p in pairs:
        n_prompt = len(tokenizer(p["prompt"], add_special_tokens=False)["input_ids"])
        n_resp = max(len(tokenizer(p[k], add_special_tokens=False)["input_ids"]) for k in ("chosen", "rejected"))
        out.append(n_prompt + n_resp + 1)
    return out


def batch_plan(lengths: list[int], batch: int, consumed: int, seed: int) -> tuple[list[int], bool]:
    """(row indices in the order the trainer should see them, whether it reads them in that order).

    consumed = max_steps x batch x accumulation. With at least that many pairs: `consumed` of them drawn at
    random, sorted by length, cut into micro-batches of `batch`, the micro-batches shuffled -> (order, True).
    With fewer: every index sorted by length -> (order, False), for a random sampler (several epochs).
    """
    rng = random.Random(seed)
    if len(lengths) < consumed:
        return sorted(range(len(lengths)), key=lambda i: lengths[i]), False
    chosen = sorted(rng.sample(range(len(lengths)), consumed), key=lambda i: (lengths[i], i))
    chunks = [chosen[i:i + batch] for i in range(0, consumed, batch)]
    rng.shuffle(chunks)
    return [i for c in chunks for i in c], True


def round_rows(tokenizer, pairs: list[dict], dcfg: DPORoundConfig, seed: int,
               lengths: list[int] | None = None) -> tuple[list[dict], dict]:
    """The round's training rows in batch_plan order, and the DPOConfig settings that go with them.

    max_length is the longest pair (nothing truncated, nothing over-padded). `lengths`: pair_lengths,
    when the caller has them already.
    """
    lengths = lengths or pair_lengths(tokenizer, pairs)
    consumed = dcfg.max_steps * dcfg.batch_size * dcfg.grad_accum
    order, in_order = (batch_plan(lengths, dcfg.batch_size, consumed, seed) if dcfg.length_grouped
                       else (list(range(len(pairs))), False))
    rows = [{k: pairs[i][k] for k in ("prompt", "chosen", "rejected")} for i in order]
    settings = {"max_length": max(lengths), "train_sampling_strategy": "sequential" if in_order else "random"}
    return rows, settings


def dpo_args(dcfg: DPORoundConfig, precision: Precision, out_dir: Path, seed: int, max_length: int,
             sampling: str = "random", tracking: dict | None = None) -> dict:
    """DPOConfig's arguments; `tracking`: common_args' report_to and logging_dir."""
    args = common_args(out_dir, precision, dcfg.max_steps, dcfg.learning_rate, dcfg.batch_size, dcfg.grad_accum,
                       seed, checkpointing=dcfg.gradient_checkpointing, **(tracking or {}))
    # the reference pass reads the data in order, in the training micro-batches (length-grouped by round_rows)
    return dict(args, beta=dcfg.beta, loss_type=list(dcfg.loss_type), loss_weights=list(dcfg.loss_weights) or None,
                max_length=max_length, precompute_ref_log_probs=dcfg.precompute_ref,
                precompute_ref_batch_size=dcfg.ref_batch_size or dcfg.batch_size, disable_dropout=True,
                train_sampling_strategy=sampling)


def train_round(start_path: str, ref_path: str | None, pairs: list[dict], dcfg: DPORoundConfig, mcfg: ModelConfig,
                precision: Precision, dest: Path, seed: int, callbacks=None, tracking: dict | None = None) -> dict:
    """Train on `pairs`, save the merged policy to `dest/policy`; return {"log", "max_length", "rows", "sampling", ...}.

    rows: the pairs the round reads (its reference pass included); sampling: the trainer's sampling strategy.
    On a GPU, memory.plan_for picks the micro-batch (and 4-bit loading) for the effective batch; the
    micro-batch, accumulation and the plan's reason are returned.

    ref_path None: the reference is the start policy itself.
    """
    from trl import DPOConfig, DPOTrainer

    tok = load_tokenizer(start_path, mcfg)
    lengths = pair_lengths(tok, pairs)
    max_length = max(lengths)
    four_bit, fit = mcfg.load_in_4bit, plan_for(start_path, max_length, dcfg.batch_size * dcfg.grad_accum,
                                                 precision.dtype.itemsize)
    if fit is not None:  # on a GPU: the largest micro-batch that fits, the effective batch kept
        dcfg = replace(dcfg, batch_size=fit["micro_batch"], grad_accum=fit["grad_accum"],
                       ref_batch_size=dcfg.ref_batch_size or fit["ref_batch"])
        four_bit = four_bit or fit["load_in_4bit"]
        print(f"memory plan: micro_batch={fit['micro_batch']} grad_accum={fit['grad_accum']} 4-bit={four_bit}: "
              f"{fit['reason']}")
    model = load_causal_lm(start_path, mcfg, precision, four_bit=four_bit)
    check_lora_targets(model, mcfg.lora_targets, start_path)
    ref = load_causal_lm(ref_path, mcfg, precision, four_bit=four_bit) if ref_path else None
    if ref is not None:
        ref.requires_grad_(False)
    rows, plan = round_rows(tok, pairs, dcfg, seed, lengths)
    f = StageFiles(dest)
    work = f.work
    conf = DPOConfig(**dpo_args(dcfg, precision, work, seed, max_length, plan["train_sampling_strategy"], tracking))
    trainer = DPOTrainer(model=model, ref_model=ref, args=conf, train_dataset=dist.shared_dataset(rows, work),
                         processing_class=tok, peft_config=lora_config(mcfg),
                         callbacks=[*(callbacks or []), StepSettings(ref)])
    fp16_safe_adapters(trainer)
    quiet_logging(trainer, "DPO")
    trainer.train()
    log = save_log(trainer, f.train_log)
    save_trained(trainer, tok, f.policy, f.adapter, start_path, mcfg, precision, four_bit)
    shutil.rmtree(work, ignore_errors=True)
    del trainer, model, ref
    free()
    return {"log": log, "max_length": max_length, "rows": len(rows), "sampling": plan["train_sampling_strategy"],
            "micro_batch": dcfg.batch_size, "grad_accum": dcfg.grad_accum, "load_in_4bit": four_bit,
            "memory_plan": fit["reason"] if fit else "no GPU: the configured batch"}



# the round stage and the offline arm ----------------------------------------------------------------
def training_pairs(cfg, run, rnd: int) -> list[dict]:
    """Seed pairs (optional) plus the synthetic sets of rounds 1..rnd (or the last `synthetic_window`), the
    synthetic ones repeated up to dpo.synthetic_share of the list."""
    seed = [{k: p[k] for k in PAIR_KEYS} | {"source": "seed"} for p in run.pairs("train_pairs")] if cfg.dpo.include_seed else []
    first = 1 if not cfg.dpo.synthetic_window else max(1, rnd - cfg.dpo.synthetic_window + 1)
    synthetic = [p for r in range(first, rnd + 1) for p in run.synthetic_pairs(r)]
    share = cfg.dpo.synthetic_share
    copies = math.ceil(share * len(seed) / ((1 - share) * len(synthetic))) if share and seed and synthetic else 1
    return seed + synthetic * max(1, copies)


def train_with_retry(start: str, ref: str | None, pairs: list[dict], dcfg: DPORoundConfig, cfg, dest: Path,
                     seed: int, where: str = "dpo", logs: Path | None = None, callbacks: tuple = ()) -> dict:
    """train_round under the non-finite guard (named `where`) and `callbacks`, tracked into `logs`; on
    out-of-memory, again at half the micro-batch, the effective batch kept."""
    precision = resolve_precision(cfg.model.precision)
    tracking = {"report_to": cfg.export.report_to, "logging_dir": logs} if logs is not None else None

    def attempt(micro: int, accum: int) -> dict:
        shutil.rmtree(StageFiles(dest).work, ignore_errors=True)
        return train_round(start, ref, pairs, replace(dcfg, batch_size=micro, grad_accum=accum), cfg.model,
                           precision, dest, seed, callbacks=[NonFiniteGuard(where, precision.fp16), *callbacks],
                           tracking=tracking)

    out, micro, accum = with_oom_retry(attempt, dcfg.batch_size, dcfg.grad_accum)
    if (micro, accum) != (dcfg.batch_size, dcfg.grad_accum):
        out["memory_plan"] += f"; out of memory at micro_batch={dcfg.batch_size}, retried at {micro} x {accum}"
    return out


def _batch_record(out: dict) -> dict:
    return {k: out[k] for k in ("rows", "sampling", "micro_batch", "grad_accum", "load_in_4bit", "memory_plan")}


def reference_round(cfg, plan: dict) -> int:
    """The round whose policy is the reference: SFT (0) for reference=sft, else the round's start policy."""
    return 0 if cfg.dpo.reference == "sft" else plan["start"]


def round_stage(cfg, run, rnd: int, plan: dict, dest: Path) -> dict:
    """Round `rnd`'s DPO training, from its plan's start policy, into `dest`. Returns the metrics."""
    from transformers import set_seed

    p = plan["params"]
    dcfg = DPORoundConfig.from_dict({**cfg.dpo.to_dict(), **p})
    ref_round = reference_round(cfg, plan)
    ref = str(run.policy(0)) if ref_round != plan["start"] else None  # None: the start policy is its own reference
    set_seed(cfg.seed_for("dpo", rnd))
    pairs = training_pairs(cfg, run, rnd)
    out = train_with_retry(str(run.policy(plan["start"])), ref, pairs, dcfg, cfg, dest, cfg.seed_for("dpo", rnd),
                           where=f"dpo_round_{rnd}", logs=run.log_dir(f"dpo_round_{rnd}"))
    log = out["log"]
    return {"start_round": plan["start"], "reference_round": ref_round, "reference": str(run.policy(ref_round)),
            "reference_kind": cfg.dpo.reference, "params": p, "loss_type": dcfg.loss_type,
            "pairs_by_source": dict(Counter(x.get("source", "seed") for x in pairs)), "max_length": out["max_length"],
            **_batch_record(out), N.train_loss: last_logged(log, "loss"),
            N.train_reward_accuracy: last_logged(log, "rewards/accuracies"),
            "train_reward_margin": last_logged(log, "rewards/margins")}


def offline_steps(run) -> tuple[int, list[int]]:
    """(the total DPO steps of every iterative round, those rounds): the offline arm trains as long."""
    rounds = sorted(r for r, d in run.decisions().items() if not d.get("failed"))
    return sum(run.metrics(run.dpo(r))["params"]["max_steps"] for r in rounds), rounds


def offline_stage(cfg, run, dest: Path, beta: float | None = None, callbacks: tuple = ()) -> dict:
    """The offline-DPO arm: seed pairs only, from the SFT policy, as many steps as all rounds together, at
    `beta` (None: dpo.beta; the frontier's arms, iterdpo.frontier, take others)."""
    from transformers import set_seed

    steps, rounds = offline_steps(run)
    dcfg = DPORoundConfig.from_dict({**cfg.dpo.to_dict(), "max_steps": steps, **({"beta": beta} if beta else {})})
    set_seed(cfg.seed_for("offline_dpo"))
    pairs = [{k: p[k] for k in PAIR_KEYS} for p in run.pairs("train_pairs")]
    out = train_with_retry(str(run.policy(0)), None, pairs, dcfg, cfg, dest, cfg.seed_for("offline_dpo"),
                           where="offline_dpo", logs=None if beta else run.log_dir("offline_dpo"), callbacks=callbacks)
    return {"max_steps": steps, "rounds_matched": rounds, N.pairs: len(pairs), N.train_loss: last_logged(out["log"], "loss"),
            "max_length": out["max_length"], "beta": dcfg.beta, **_batch_record(out)}
