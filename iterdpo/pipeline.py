"""The stages as atomic, resumable folders, and the round loop.

Data flows one way: config -> stage function -> output folder -> the next stage reads that folder.
Every stage function takes the RunConfig (the run folder is ``cfg.out``), skips itself when its
folder is finished (unless ``force``), and returns its metrics.

    base/  data/  sft/  reward/  round_0/eval/                       once
    round_r/generate/  round_r/dpo/  round_r/eval/                   per round
    offline_dpo/dpo/  offline_dpo/eval/                              the baseline arm
    decisions.jsonl  summary.json                                    the controller's record
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from . import capability, controller, reward
from .config import RunConfig
from .data import GEN_KEYS, PAIR_KEYS, as_completion, check_records, load_pairs, split_heldout, unique
from .dpo import train_round
from .evaluate import EvalInputs, collapse_check, compare, evaluate
from .folder import append_jsonl, is_done, read_json, read_jsonl, stage_folder, write_json, write_jsonl
from .gate import wait_turn
from .generate import sample
from .memory import with_oom_retry
from .models import (Precision, device, free, import_base, inference_precision, load_causal_lm, load_tokenizer, lora_config,
                     merge_and_save, resolve_precision)
from .pairs import make_pairs
from .toyworld import ToyWorld, tiny_llama_config, train_tokenizer
from .training import common_args, last_logged, save_log, sft_train


# paths ---------------------------------------------------------------------------------------------
def run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.out)


def policy_path(cfg: RunConfig, rnd: int | str) -> Path:
    """The merged policy of round `rnd` (0 = SFT, 'offline_dpo' = the baseline arm)."""
    if rnd == 0:
        return run_dir(cfg) / "sft" / "policy"
    return run_dir(cfg) / (f"round_{rnd}" if isinstance(rnd, int) else str(rnd)) / "dpo" / "policy"


def eval_dir(cfg: RunConfig, rnd: int | str) -> Path:
    return run_dir(cfg) / (f"round_{rnd}" if isinstance(rnd, int) else str(rnd)) / "eval"


def world(cfg: RunConfig) -> ToyWorld | None:
    return ToyWorld(cfg.toy) if cfg.is_toy else None


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


class Loaders:
    """Loads one model at a time in the run's precision (or `precision`); evaluate() takes this."""

    def __init__(self, cfg: RunConfig, precision: Precision | None = None):
        self.cfg = cfg
        self.precision = precision or resolve_precision(cfg.model.precision)

    def policy(self, path):
        return load_causal_lm(str(path), self.cfg.model, self.precision), load_tokenizer(str(path), self.cfg.model)

    def reward(self, path):
        return reward.load(Path(path), self.cfg.reward.head_hidden, self.precision.dtype, device())

    @staticmethod
    def free(*objs):
        free(*objs)


# stage: base model -----------------------------------------------------------------------------------
def base_source(cfg: RunConfig) -> str:
    """Where the base model loads from: inside the run folder (toy, converted GGUF) or a hub name/path."""
    m = read_json(run_dir(cfg) / "base" / "metrics.json")
    return str(run_dir(cfg) / m["path"]) if m.get("in_run") else m["path"]


def prepare(cfg: RunConfig, force: bool = False) -> dict:
    """Write the run's config, then the base model (trained, converted or referenced) and the data split."""
    wait_turn()
    root = run_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "config.json", cfg.to_dict())
    _base(cfg, force)
    return _data(cfg, force)


def _base(cfg: RunConfig, force: bool) -> dict:
    dest = run_dir(cfg) / "base"
    with stage_folder(dest, cfg.to_dict(), force) as tmp:
        if tmp is None:
            return read_json(dest / "metrics.json")
        t0 = time.perf_counter()
        if cfg.is_toy:
            m = _pretrain_toy(cfg, tmp)
        else:
            m = import_base(cfg.model, tmp / "model")
            if m["path"] == str(tmp / "model"):  # converted into the run folder: record it relative to the run
                m.update(path="base/model", in_run=True)
        m["wall_seconds"] = time.perf_counter() - t0
        write_json(tmp / "metrics.json", m)
    return read_json(dest / "metrics.json")


def _pretrain_toy(cfg: RunConfig, tmp: Path) -> dict:
    """The toy world's base model: a tiny Llama trained from scratch, full parameters."""
    from transformers import LlamaForCausalLM, set_seed

    w = ToyWorld(cfg.toy)
    docs = w.pretrain_docs(cfg.toy.pretrain_docs, cfg.seed + 101)
    tok = train_tokenizer(w, [d["prompt"] + " " + d["completion"] for d in docs])
    rows = [{"prompt": tok.apply_chat_template([{"role": "user", "content": d["prompt"]}], tokenize=False,
                                               add_generation_prompt=True), "completion": " " + d["completion"]} for d in docs]
    set_seed(cfg.seed)
    model = LlamaForCausalLM(tiny_llama_config(cfg.toy, tok))
    precision = resolve_precision(cfg.model.precision)
    args = common_args(tmp / "trainer", precision, cfg.toy.pretrain_steps, cfg.toy.pretrain_lr, 64, 1, cfg.seed)
    trainer = sft_train(model, tok, rows, args, max_length=64)
    log = save_log(trainer, tmp / "train_log.jsonl")
    model.save_pretrained(tmp / "model", safe_serialization=True)
    tok.save_pretrained(tmp / "model")
    shutil.rmtree(tmp / "trainer", ignore_errors=True)
    free(trainer, model)
    return {"path": "base/model", "in_run": True, "gguf_file": "", "train_loss": last_logged(log, "loss"), "docs": len(docs),
            "vocab_size": len(tok)}


# stage: data ---------------------------------------------------------------------------------------------
def _data(cfg: RunConfig, force: bool) -> dict:
    dest = run_dir(cfg) / "data"
    with stage_folder(dest, cfg.to_dict(), force) as tmp:
        if tmp is None:
            return read_json(dest / "metrics.json")
        tok = load_tokenizer(base_source(cfg), cfg.model)
        d = cfg.data
        m: dict = {}
        if cfg.is_toy:
            w = ToyWorld(cfg.toy)
            render = lambda p: tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            raw = w.seed_pairs(d.train_pairs + d.heldout_pairs, cfg.seed + 202)
            pairs = [dict(r, prompt=render(r["prompt"]), chosen=" " + r["chosen"], rejected=" " + r["rejected"],
                          source="seed") for r in raw]
            heldout, train = pairs[: d.heldout_pairs], pairs[d.heldout_pairs:]
            held_prompts = [render(p) for p in w.prompts(d.heldout_prompts, cfg.seed + 303)]
            gen_prompts = [render(p) for p in w.prompts(d.gen_prompts, cfg.seed + 404)]
            m["seed_label_oracle_agreement"] = 1 - sum(p["flipped"] for p in heldout) / len(heldout)
            m["skipped"] = {"total": 0, "by_reason": {}, "examples": {}}
        else:
            pairs, skips = load_pairs(d.source, d.path, tok, d.max_prompt_tokens, d.max_response_tokens, d.hub_split,
                                      limit=(d.train_pairs + d.heldout_pairs) * 2)
            train, heldout = split_heldout(pairs, d.heldout_pairs, d.train_pairs, cfg.seed, skips)
            held_prompts = unique([p["prompt"] for p in heldout])[: d.heldout_prompts]
            gen_prompts = unique([p["prompt"] for p in train])[: d.gen_prompts]
            m["skipped"] = skips.to_dict()
            if skips.total:
                print(f"data: skipped {skips.total} pairs: {dict(skips.counts)} (first: {skips.where})")
        write_jsonl(tmp / "train_pairs.jsonl", train)
        write_jsonl(tmp / "heldout_pairs.jsonl", heldout)
        write_jsonl(tmp / "heldout_prompts.jsonl", [{"prompt": p} for p in held_prompts])
        write_jsonl(tmp / "gen_prompts.jsonl", [{"prompt": p} for p in gen_prompts])
        m.update(train_pairs=len(train), heldout_pairs=len(heldout), heldout_prompts=len(held_prompts),
                 gen_prompts=len(gen_prompts))
        write_json(tmp / "metrics.json", m)
    return read_json(dest / "metrics.json")


def _pairs(cfg: RunConfig, name: str) -> list[dict]:
    path = run_dir(cfg) / "data" / f"{name}.jsonl"
    return check_records(read_jsonl(path), PAIR_KEYS, str(path))


def _prompts(cfg: RunConfig, name: str) -> list[str]:
    return [r["prompt"] for r in read_jsonl(run_dir(cfg) / "data" / f"{name}.jsonl")]


# stage: SFT ---------------------------------------------------------------------------------------------
def run_sft(cfg: RunConfig, force: bool = False) -> dict:
    """LoRA SFT of the base model on the chosen responses; the merged policy goes to sft/policy."""
    wait_turn()
    from transformers import set_seed

    dest = run_dir(cfg) / "sft"
    with stage_folder(dest, cfg.to_dict(), force) as tmp:
        if tmp is None:
            return read_json(dest / "metrics.json")
        t0 = time.perf_counter()
        set_seed(cfg.seed)
        precision = resolve_precision(cfg.model.precision)
        base = base_source(cfg)
        tok = load_tokenizer(base, cfg.model)
        model = load_causal_lm(base, cfg.model, precision, four_bit=cfg.model.load_in_4bit)
        rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in _pairs(cfg, "train_pairs")]
        s = cfg.sft
        max_len = cfg.data.max_prompt_tokens + cfg.data.max_response_tokens + 1
        args = common_args(tmp / "trainer", precision, s.max_steps, s.learning_rate, s.batch_size, s.grad_accum, cfg.seed)
        trainer = sft_train(model, tok, rows, args, max_length=max_len, peft_config=lora_config(cfg.model))
        log = save_log(trainer, tmp / "train_log.jsonl")
        from .dpo import save_policy

        save_policy(trainer.model, tok, tmp / "policy", base, cfg.model, precision, cfg.model.load_in_4bit)
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        free(trainer, model)
        write_json(tmp / "metrics.json", {"train_loss": last_logged(log, "loss"), "pairs": len(rows),
                                          "precision": precision.name, "wall_seconds": time.perf_counter() - t0})
    return read_json(dest / "metrics.json")


# stage: reward model --------------------------------------------------------------------------------------
def run_reward(cfg: RunConfig, force: bool = False) -> dict:
    """Bradley-Terry training of the reward model on the seed pairs, then the SFT baseline's evaluation."""
    wait_turn()
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, set_seed

    dest = run_dir(cfg) / "reward"
    with stage_folder(dest, cfg.to_dict(), force) as tmp:
        if tmp is not None:
            t0 = time.perf_counter()
            set_seed(cfg.seed + 1)
            precision = resolve_precision(cfg.model.precision)
            base = base_source(cfg)
            tok = load_tokenizer(base, cfg.model)
            r = cfg.reward
            rm = reward.build(base, r.head_hidden, r.head_dropout, precision.dtype if r.backbone != "full" else torch.float32,
                              device(), r.backbone, lora_config(cfg.model, "FEATURE_EXTRACTION"))
            train = [{k: p[k] for k in PAIR_KEYS} for p in _pairs(cfg, "train_pairs")]
            args = common_args(tmp / "trainer", precision, r.max_steps, r.learning_rate, r.batch_size, r.grad_accum, cfg.seed)
            trainer = Trainer(model=rm, args=TrainingArguments(**args, remove_unused_columns=False),
                              train_dataset=Dataset.from_list(train), data_collator=reward.PairCollator(tok))
            trainer.train()
            log = save_log(trainer, tmp / "train_log.jsonl")
            heldout = _pairs(cfg, "heldout_pairs")
            m = {"train_loss": last_logged(log, "loss")}
            acc = reward.pair_accuracy(rm, tok, heldout, r.score_batch_size)
            m.update(heldout_accuracy=acc["accuracy"], heldout_margin=acc["margin"])
            m.update(train_accuracy=reward.pair_accuracy(rm, tok, train[:500], r.score_batch_size)["accuracy"])
            if cfg.is_toy:
                by_oracle = [dict(p, chosen=p["rejected"], rejected=p["chosen"]) if p.get("flipped") else p for p in heldout]
                m["oracle_accuracy"] = reward.pair_accuracy(rm, tok, by_oracle, r.score_batch_size)["accuracy"]
                m["seed_label_oracle_agreement"] = read_json(run_dir(cfg) / "data" / "metrics.json")["seed_label_oracle_agreement"]
                m["rm_beats_seed_labels"] = m["oracle_accuracy"] > m["seed_label_oracle_agreement"]
                if not m["rm_beats_seed_labels"]:
                    print(f"WARNING: the reward model agrees with the oracle on {m['oracle_accuracy']:.3f} of held-out pairs, "
                          f"no better than the seed labels ({m['seed_label_oracle_agreement']:.3f})")
            reward.save(rm, tok, tmp / "model")
            shutil.rmtree(tmp / "trainer", ignore_errors=True)
            free(trainer, rm)
            m["wall_seconds"] = time.perf_counter() - t0
            write_json(tmp / "metrics.json", m)
    evaluate_round(cfg, 0, force)
    return read_json(dest / "metrics.json")


# evaluation -------------------------------------------------------------------------------------------------
def _eval_inputs(cfg: RunConfig) -> EvalInputs:
    return EvalInputs(_pairs(cfg, "heldout_pairs"), _prompts(cfg, "heldout_prompts"), world(cfg), cfg.seed)


def _samples(cfg: RunConfig, rnd) -> list[dict] | None:
    path = eval_dir(cfg, rnd) / "samples.jsonl"
    return read_jsonl(path) if path.exists() else None


def evaluate_round(cfg: RunConfig, rnd: int | str, force: bool = False, ref: str | None = None, beta: float | None = None,
                   extra: dict | None = None) -> dict:
    dest = eval_dir(cfg, rnd)
    with stage_folder(dest, cfg.to_dict(), force) as tmp:
        if tmp is None:
            return read_json(dest / "metrics.json")
        t0 = time.perf_counter()
        base_cap = read_json(eval_dir(cfg, 0) / "metrics.json")["capability_score"] if rnd != 0 else None
        prev = _samples(cfg, rnd - 1) if isinstance(rnd, int) and rnd > 0 else None
        m, samples = evaluate(str(policy_path(cfg, rnd)), ref, beta or cfg.dpo.beta, str(run_dir(cfg) / "reward" / "model"),
                              _eval_inputs(cfg), cfg, Loaders(cfg), sft_samples=_samples(cfg, 0) if rnd != 0 else None,
                              prev_samples=prev, baseline_capability=base_cap)
        m.update(extra or {})
        m["wall_seconds"] = time.perf_counter() - t0
        write_jsonl(tmp / "samples.jsonl", samples)
        write_json(tmp / "metrics.json", m)
    return read_json(dest / "metrics.json")


# the controller's state ---------------------------------------------------------------------------------------
def decisions(cfg: RunConfig) -> dict[int, dict]:
    path = run_dir(cfg) / "decisions.jsonl"
    return {d["round"]: d for d in read_jsonl(path)} if path.exists() else {}


def round_plan(cfg: RunConfig, rnd: int) -> dict:
    """Where round `rnd` starts, its hyper-parameters and targeted data, from the decision after rnd-1."""
    prev = decisions(cfg).get(rnd - 1)
    carried = dict(prev["next_params"]) if prev else {"beta": cfg.dpo.beta, "learning_rate": cfg.dpo.learning_rate,
                                                      "max_steps": cfg.dpo.max_steps}
    # A schedule entry changes this round only; the controller adjusts the carried values.
    params = {**carried, **cfg.dpo.schedule.get(rnd, cfg.dpo.schedule.get(str(rnd), {}))}
    return {"start": prev["next_start_round"] if prev else 0, "params": params, "carried": carried,
            "targeted": prev["targeted"] if prev else {}}


def next_round(cfg: RunConfig) -> int | None:
    """The next round to run, or None when the controller (or the round budget) says stop."""
    done = decisions(cfg)
    if not done:
        return 1
    last = max(done)
    if done[last]["stop"] or last >= cfg.max_rounds:
        return None
    return last + 1


def _elapsed(cfg: RunConfig) -> float:
    root = run_dir(cfg)
    return sum(read_json(p).get("wall_seconds", 0.0) for p in root.glob("**/metrics.json")
               if "offline_dpo" not in p.parts)


# stage: synthetic preferences -----------------------------------------------------------------------------------
def run_generation(cfg: RunConfig, rnd: int, force: bool = False) -> dict:
    """Sample K responses per prompt from the round's start policy, score them, and build pairs."""
    wait_turn()
    dest = run_dir(cfg) / f"round_{rnd}" / "generate"
    plan = round_plan(cfg, rnd)
    with stage_folder(dest, {"run": cfg.to_dict(), "plan": plan}, force) as tmp:
        if tmp is None:
            return read_json(dest / "metrics.json")
        t0 = time.perf_counter()
        g = cfg.generation
        rng = random.Random(cfg.seed * 1000 + rnd)
        pool = _prompts(cfg, "gen_prompts")
        prompts = rng.sample(pool, min(g.prompts_per_round, len(pool)))
        hard = plan["targeted"].get("hard_prompts") or []
        n_hard = int(len(prompts) * g.targeted_share) if hard else 0
        prompts = prompts[: len(prompts) - n_hard] + [rng.choice(hard) for _ in range(n_hard)]
        loaders = Loaders(cfg, inference_precision(g.precision, resolve_precision(cfg.model.precision)))
        model, tok = loaders.policy(policy_path(cfg, plan["start"]))
        records = sample(model, tok, prompts, g.k, g.max_new_tokens, g.temperature, g.top_p, g.batch_size,
                         seed=cfg.seed * 1000 + rnd, desc=f"round {rnd}: sampling")
        free(model)
        rm = loaders.reward(run_dir(cfg) / "reward" / "model")
        scores = reward.score_grouped(rm, tok, [r["prompt"] for r in records], [r["responses"] for r in records],
                                      [r["ended"] for r in records], cfg.reward.score_batch_size, desc=f"round {rnd}: scoring")
        free(rm)
        w = world(cfg)
        for r, s in zip(records, scores):
            r["rewards"] = s
            if w:
                r["oracle"] = [w.oracle(r["prompt"], x, e) for x, e in zip(r["responses"], r["ended"])]
        check_records(records, GEN_KEYS, str(dest / "samples.jsonl"))
        pairs, dropped = make_pairs(records, g.strategy, g.min_reward_gap, g.require_eos, g.length_penalty,
                                    cfg.seed + rnd, source=f"round_{rnd}")
        m = _label_diagnostics(pairs, dropped, len(records), cfg)
        if plan["targeted"].get("capability_pairs"):
            cap = capability.capability_pairs("toy" if cfg.is_toy else "chat", max(8, len(pairs) // 4), cfg.seed + rnd)
            render = lambda msgs: tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            for c in cap:
                prompt = render(c["messages"])
                pairs.append({"prompt": prompt, "chosen": as_completion(prompt, c["chosen"]),
                              "rejected": as_completion(prompt, c["rejected"]), "source": "capability"})
            m["capability_pairs"] = len(cap)
        m.update(start_round=plan["start"], precision=loaders.precision.name, prompts=len(records), hard_prompts=n_hard,
                 samples=sum(len(r["responses"]) for r in records), wall_seconds=time.perf_counter() - t0)
        write_jsonl(tmp / "samples.jsonl", records)
        write_jsonl(tmp / "pairs.jsonl", pairs)
        write_json(tmp / "metrics.json", m)
    return read_json(dest / "metrics.json")


def _label_diagnostics(pairs: list[dict], dropped, n_prompts: int, cfg: RunConfig) -> dict:
    """Pair success rate, why pairs were dropped, the reward-gap distribution, and (toy) oracle agreement."""
    gaps = torch.tensor([p["gap"] for p in pairs]) if pairs else torch.zeros(0)
    q = [0.1, 0.25, 0.5, 0.75, 0.9]
    m = {"pairs": len(pairs), "pair_success_rate": len(pairs) / max(n_prompts, 1),
         "dropped": dict(dropped), "dropped_share": {k: v / max(n_prompts, 1) for k, v in dropped.items()},
         "reward_gap_quantiles": dict(zip(map(str, q), torch.quantile(gaps, torch.tensor(q)).tolist())) if len(gaps) else {},
         "reward_gap_mean": gaps.mean().item() if len(gaps) else 0.0}
    if cfg.is_toy and pairs:
        agree = [1.0 if p["oracle_chosen"] > p["oracle_rejected"] else 0.5 if p["oracle_chosen"] == p["oracle_rejected"] else 0.0
                 for p in pairs]
        m["synthetic_pair_oracle_agreement"] = sum(agree) / len(agree)
        seed_agree = read_json(run_dir(cfg) / "data" / "metrics.json")["seed_label_oracle_agreement"]
        m["seed_label_oracle_agreement"] = seed_agree
        m["labels_worse_than_seed"] = m["synthetic_pair_oracle_agreement"] < seed_agree
        if m["labels_worse_than_seed"]:
            print(f"WARNING: synthetic labels agree with the oracle on {m['synthetic_pair_oracle_agreement']:.3f} of pairs, "
                  f"below the seed labels' {seed_agree:.3f}")
    return m


# stage: DPO round -------------------------------------------------------------------------------------------------
def _training_pairs(cfg: RunConfig, rnd: int) -> list[dict]:
    """Seed pairs (optional) plus the synthetic sets of rounds 1..rnd (or the last `synthetic_window`)."""
    pairs = [{k: p[k] for k in PAIR_KEYS} | {"source": "seed"} for p in _pairs(cfg, "train_pairs")] if cfg.dpo.include_seed else []
    first = 1 if not cfg.dpo.synthetic_window else max(1, rnd - cfg.dpo.synthetic_window + 1)
    for r in range(first, rnd + 1):
        path = run_dir(cfg) / f"round_{r}" / "generate" / "pairs.jsonl"
        pairs += check_records(read_jsonl(path), PAIR_KEYS, str(path))
    return pairs


def _train(start: str, ref: str | None, pairs: list[dict], dcfg, cfg: RunConfig, dest: Path, seed: int) -> dict:
    """dpo.train_round; on out-of-memory, again at half the micro-batch, the effective batch kept."""
    def attempt(micro: int, accum: int) -> dict:
        shutil.rmtree(dest / "trainer", ignore_errors=True)
        return train_round(start, ref, pairs, replace(dcfg, batch_size=micro, grad_accum=accum), cfg.model,
                           resolve_precision(cfg.model.precision), dest, seed)

    out, micro, accum = with_oom_retry(attempt, dcfg.batch_size, dcfg.grad_accum)
    if (micro, accum) != (dcfg.batch_size, dcfg.grad_accum):
        out["memory_plan"] += f"; out of memory at micro_batch={dcfg.batch_size}, retried at {micro} x {accum}"
    return out


def _batch_record(out: dict) -> dict:
    return {k: out[k] for k in ("rows", "sampling", "micro_batch", "grad_accum", "load_in_4bit", "memory_plan")}


def run_dpo_round(cfg: RunConfig, rnd: int, force: bool = False) -> dict:
    """Train round `rnd`, evaluate it, and record the controller's decision. Returns the eval metrics."""
    wait_turn()
    from collections import Counter

    from transformers import set_seed

    plan = round_plan(cfg, rnd)
    p = plan["params"]
    dcfg = cfg.dpo.__class__.from_dict({**cfg.dpo.to_dict(), **p})
    ref = str(policy_path(cfg, 0)) if cfg.dpo.reference == "sft" and plan["start"] != 0 else None
    dest = run_dir(cfg) / f"round_{rnd}" / "dpo"
    with stage_folder(dest, {"run": cfg.to_dict(), "plan": plan}, force) as tmp:
        if tmp is not None:
            t0 = time.perf_counter()
            set_seed(cfg.seed + rnd)
            pairs = _training_pairs(cfg, rnd)
            out = _train(str(policy_path(cfg, plan["start"])), ref, pairs, dcfg, cfg, tmp, cfg.seed + rnd)
            log = out["log"]
            write_json(tmp / "metrics.json", {
                "start_round": plan["start"], "reference_round": 0 if ref else plan["start"],
                "reference": ref or str(policy_path(cfg, plan["start"])),
                "reference_kind": cfg.dpo.reference, "params": p, "loss_type": dcfg.loss_type,
                "pairs_by_source": dict(Counter(x.get("source", "seed") for x in pairs)), "max_length": out["max_length"],
                **_batch_record(out), "train_loss": last_logged(log, "loss"), "train_reward_accuracy": last_logged(log, "rewards/accuracies"),
                "train_reward_margin": last_logged(log, "rewards/margins"), "wall_seconds": time.perf_counter() - t0})
    dm = read_json(dest / "metrics.json")
    m = evaluate_round(cfg, rnd, force, ref=str(policy_path(cfg, dm["reference_round"])), beta=p["beta"])
    log = read_jsonl(dest / "train_log.jsonl")
    sft_len = read_json(eval_dir(cfg, 0) / "metrics.json")["mean_length"]
    m = {**m, **collapse_check([r["rewards/chosen"] / p["beta"] for r in log if "rewards/chosen" in r],
                               [r["rewards/rejected"] / p["beta"] for r in log if "rewards/rejected" in r],
                               m["mean_length"], sft_len)}
    record_decision(cfg, rnd, m, plan)
    return m


def record_decision(cfg: RunConfig, rnd: int, m: dict, plan: dict) -> dict:
    """Append the controller's decision for `rnd` to decisions.jsonl (once) and print the iteration log."""
    done = decisions(cfg)
    if rnd in done:
        return done[rnd]
    history = {0: read_json(eval_dir(cfg, 0) / "metrics.json")}
    for r in range(1, rnd):
        history[r] = {**read_json(eval_dir(cfg, r) / "metrics.json"), **_collapse_of(done.get(r))}
    history[rnd] = m
    gen_path = run_dir(cfg) / f"round_{rnd}" / "generate" / "samples.jsonl"
    gen = read_jsonl(gen_path) if gen_path.exists() else None
    if cfg.controller.enabled:
        d = controller.decide(history, rnd, plan["carried"], cfg.controller, cfg.max_rounds, _elapsed(cfg), gen)
    else:
        d = {"round": rnd, "decision": "continue", "triggers": [], "changes": {}, "params": plan["carried"],
             "next_params": plan["carried"], "targeted": {}, "best_round": rnd, "next_start_round": rnd,
             "stop": rnd >= cfg.max_rounds, "score": controller.score(m), "degrading": False, "elapsed_seconds": _elapsed(cfg)}
    d["collapsing"] = m.get("collapsing", False)
    d.update(used_params=plan["params"], start_round=plan["start"])
    append_jsonl(run_dir(cfg) / "decisions.jsonl", d)
    print(iteration_report(cfg, rnd))
    return d


def iteration_reports(cfg: RunConfig) -> str:
    """Every round's iteration log, in order."""
    return "\n\n".join(iteration_report(cfg, r) for r in sorted(decisions(cfg)))


def iteration_report(cfg: RunConfig, rnd: int) -> str:
    """The design's iteration log for round `rnd`, rebuilt from decisions.jsonl and the round's metrics."""
    d = decisions(cfg)[rnd]
    used = {"start_round": d["start_round"], **d["used_params"], "reference": cfg.dpo.reference}
    return controller.iteration_log(d, read_json(eval_dir(cfg, rnd) / "metrics.json"), used)


def _collapse_of(d: dict | None) -> dict:
    return {"collapsing": d.get("collapsing", False)} if d else {}


# the offline-DPO baseline arm ---------------------------------------------------------------------------------------
def run_offline_baseline(cfg: RunConfig, force: bool = False) -> dict:
    """Seed pairs only, from the SFT policy, for as many DPO steps as all iterative rounds together."""
    wait_turn()
    from transformers import set_seed

    rounds = sorted(decisions(cfg))
    steps = sum(read_json(run_dir(cfg) / f"round_{r}" / "dpo" / "metrics.json")["params"]["max_steps"] for r in rounds)
    if not steps:
        raise RuntimeError("run the iterative rounds first: the baseline matches their total steps")
    dcfg = cfg.dpo.__class__.from_dict({**cfg.dpo.to_dict(), "max_steps": steps})
    dest = run_dir(cfg) / "offline_dpo" / "dpo"
    with stage_folder(dest, {"run": cfg.to_dict(), "max_steps": steps}, force) as tmp:
        if tmp is not None:
            t0 = time.perf_counter()
            set_seed(cfg.seed + 1)
            pairs = [{k: p[k] for k in PAIR_KEYS} for p in _pairs(cfg, "train_pairs")]
            out = _train(str(policy_path(cfg, 0)), None, pairs, dcfg, cfg, tmp, cfg.seed + 1)
            write_json(tmp / "metrics.json", {"max_steps": steps, "rounds_matched": rounds, "pairs": len(pairs),
                                              "train_loss": last_logged(out["log"], "loss"), "max_length": out["max_length"],
                                              **_batch_record(out), "wall_seconds": time.perf_counter() - t0})
    return evaluate_round(cfg, "offline_dpo", force, ref=str(policy_path(cfg, 0)), beta=cfg.dpo.beta)


# summary ---------------------------------------------------------------------------------------------------------------
def write_summary(cfg: RunConfig) -> dict:
    """summary.json: every round's metrics (eval + generation + training), the best round, the baselines."""
    wait_turn()
    root = run_dir(cfg)
    done = decisions(cfg)
    offline = _samples(cfg, "offline_dpo")
    rounds = [{"round": 0, "metrics": read_json(eval_dir(cfg, 0) / "metrics.json")}]
    for r in sorted(done):
        m = dict(read_json(eval_dir(cfg, r) / "metrics.json"))
        gen = read_json(root / f"round_{r}" / "generate" / "metrics.json")
        dpo = read_json(root / f"round_{r}" / "dpo" / "metrics.json")
        m.update({k: gen[k] for k in ("pair_success_rate", "pairs", "dropped", "reward_gap_mean",
                                      "synthetic_pair_oracle_agreement", "labels_worse_than_seed") if k in gen})
        m.update({f"train_{k}" if not k.startswith("train") else k: dpo[k] for k in ("train_loss", "train_reward_accuracy")})
        m["collapsing"] = done[r].get("collapsing", False)
        m["wall_seconds"] = m["wall_seconds"] + gen["wall_seconds"] + dpo["wall_seconds"]
        if offline:
            m.update(compare(read_jsonl(eval_dir(cfg, r) / "samples.jsonl"), offline, "offline_dpo", world(cfg)))
        rounds.append({"round": r, "params": dpo["params"], "start_round": dpo["start_round"],
                       "decision": done[r]["decision"], "metrics": m})
    summary = {"preset": cfg.preset, "seed": cfg.seed, "rounds": rounds,
               "best_round": done[max(done)]["best_round"] if done else 0,
               "baselines": {}, "reward_model": read_json(root / "reward" / "metrics.json"),
               "data": read_json(root / "data" / "metrics.json")}
    if offline:
        summary["baselines"]["offline_dpo"] = read_json(eval_dir(cfg, "offline_dpo") / "metrics.json")
    write_json(root / "summary.json", summary)
    return summary


def run_all(cfg: RunConfig, force: bool = False) -> dict:
    """Every stage in-process: prepare, SFT, reward model, rounds until the controller stops, baseline, summary."""
    prepare(cfg, force)
    run_sft(cfg, force)
    run_reward(cfg, force)
    rnd = next_round(cfg)
    while rnd is not None:
        run_generation(cfg, rnd, force)
        run_dpo_round(cfg, rnd, force)
        rnd = next_round(cfg)
    if cfg.baseline.offline_dpo:
        run_offline_baseline(cfg, force)
    return write_summary(cfg)
