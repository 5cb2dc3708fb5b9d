"""2. A DPO round: ours (reference once, length-grouped, the pairs the steps read) against DPOConfig's defaults."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import statistics
import time
import traceback
from dataclasses import replace
from pathlib import Path

import datasets
import transformers
from torch.utils.flop_counter import FlopCounterMode
from trl import DPOConfig, DPOTrainer

from ..config import DPORoundConfig, load_preset
from ..dpo import dpo_args, round_rows
from ..memory import peak_memory
from ..metrics import N
from ..models import Precision, free, load_causal_lm, lora_config
from .setup import Setup, Sizes, _paired
from .generation import count_cpu_attention


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


def _dpo_run(arm: str, st: Setup, dcfg: DPORoundConfig, work: Path, seed: int, count_flops: bool) -> dict:
    model = load_causal_lm(st.model_dir, st.mcfg, st.precision)
    args, rows = arm_data(arm, st, dcfg, st.precision, work / arm, seed)
    conf = DPOConfig(**args)
    data = datasets.Dataset.from_list(rows)
    count_cpu_attention()
    counters = [FlopCounterMode(display=False) if count_flops else contextlib.nullcontext() for _ in range(2)]
    out: dict = {}
    transformers.set_seed(seed)  # the LoRA initialisation
    with peak_memory(out):
        t0 = time.perf_counter()
        with counters[0]:
            trainer = DPOTrainer(model=model, args=conf, train_dataset=data, processing_class=st.tok,
                                 peft_config=lora_config(st.mcfg))
        trainer.data_collator = rec = _Recorder(trainer.data_collator)
        t1 = time.perf_counter()
        with counters[1]:
            trainer.train()
        out[N.wall_seconds], out["init_seconds"] = time.perf_counter() - t0, t1 - t0
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
    """Ours against TRL's defaults, each in its own worker process: FLOPs and warm-up, the loss check on the same
    batches, then `s.repeats` paired timed runs."""
    dcfg = replace(st.dcfg, max_steps=s.dpo_steps, batch_size=s.dpo_batch, grad_accum=s.dpo_accum)
    workers = _start_workers(st, dcfg, work, seed)
    runs: dict = {"ours": [], "baseline": []}
    try:
        flops = {arm: _run_arm(workers, arm, count_flops=True) for arm in ("ours", "baseline")}  # also the warm-up, untimed
        same = _run_arm(workers, "same_batches")  # untimed: the loss check
        _paired([lambda: runs["ours"].append(_run_arm(workers, "ours")),
                 lambda: runs["baseline"].append(_run_arm(workers, "baseline"))], s.repeats)
    finally:
        for proc, conn in workers.values():
            with contextlib.suppress(OSError):
                conn.send(None)
            proc.join(timeout=30)
    return _dpo_record(st, s, flops, same, runs)


def _start_workers(st: Setup, dcfg: DPORoundConfig, work: Path, seed: int) -> dict:
    """{arm: (process, connection)} for 'ours' and 'baseline', each ready (its imports done)."""
    ctx = mp.get_context("spawn")
    workers = {}
    for arm in ("ours", "baseline"):
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_dpo_worker, args=(there, st, dcfg, str(work), seed), daemon=True)
        proc.start()
        workers[arm] = (proc, here)
    for _, conn in workers.values():
        conn.recv()
    return workers


def _run_arm(workers: dict, arm: str, count_flops: bool = False) -> dict:
    """One run of `arm` in its worker; same_batches runs in the baseline's process."""
    conn = workers["ours" if arm == "ours" else "baseline"][1]
    conn.send((arm, count_flops))
    got = conn.recv()
    if "error" in got:
        raise RuntimeError(f"DPO arm {arm!r} failed in its worker:\n{got['error']}")
    return got


def _dpo_record(st: Setup, s: Sizes, flops: dict, same: dict, runs: dict) -> dict:
    """bench.json's dpo section from the FLOP-counting runs, the same-batches run and the timed runs."""
    ours_s, base_s = [r[N.wall_seconds] for r in runs["ours"]], [r[N.wall_seconds] for r in runs["baseline"]]
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
