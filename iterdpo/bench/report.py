"""3. End to end, the table, and the command line."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ..config import load_preset
from ..devicecheck.report import device_check
from ..devicecheck.report import table as check_table
from ..folder import read_json
from ..metrics import N
from ..pipeline import run_all
from .setup import PRESETS, SIZES, Sizes, setup_smollm2, setup_tiny
from .generation import bench_generation
from .dpo_round import bench_dpo
from .t4 import predict as predict_t4


# 3. end to end ---------------------------------------------------------------------------------------------
QUICK_E2E = {"rounds": 1, "toy.pretrain_docs": 200, "toy.pretrain_steps": 10, "data.train_pairs": 64,
             "data.heldout_pairs": 16, "data.heldout_prompts": 16, "data.gen_prompts": 32, "sft.max_steps": 4,
             "sft.batch_size": 8, "reward.max_steps": 4, "reward.batch_size": 8, "generation.prompts_per_round": 16,
             "dpo.max_steps": 4, "dpo.batch_size": 8, "eval.capability_n": 16, "baseline.offline_dpo": False}


def bench_e2e(mode: str, work: Path) -> dict:
    """pipeline.run_all on the tiny preset ('full', or 'quick': QUICK_E2E) and each stage's wall_seconds."""
    root = work / "e2e"
    cfg = load_preset("tiny", {**(QUICK_E2E if mode == "quick" else {}), "out": str(root)})
    t0 = time.perf_counter()
    run_all(cfg)
    total = time.perf_counter() - t0
    stages = {str(p.parent.relative_to(root)): read_json(p).get(N.wall_seconds)
              for p in sorted(root.glob("**/metrics.json"))}
    stages = {k: v for k, v in stages.items() if v is not None}  # the data split records no time
    stages["other (data split, summary, loading between stages)"] = total - sum(stages.values())
    return {"mode": mode, "seconds": total,
            "stages": {k: {"seconds": v, "share": v / total} for k, v in stages.items()}}


# command line -------------------------------------------------------------------------------------------------
def _versions() -> dict:
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
    if r.get("t4_predicted_seconds"):
        t4 = r["t4_predicted_seconds"]
        lines.append("t4 preset, 2 rounds, predicted on a T4 (iterdpo/bench/t4.py): " + ", ".join(
            f"{k} {v / 60:.1f}" for k, v in t4["stages"].items()) + f" min; loop {t4['total'] / 60:.1f} min, offline arm "
            f"+{t4['offline_arm'] / 60:.1f} min")
    if r.get("e2e"):
        lines.append("e2e stage shares: " + ", ".join(f"{k} {v['share']:.0%}" for k, v in r["e2e"]["stages"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if a.device_check:
        return _device_check(a)
    a.out = a.out or "bench.json"
    s = SIZES[(a.model, a.quick)]
    s = replace(s, repeats=a.repeats) if a.repeats else s
    e2e_mode = a.e2e or ("full" if a.model == "tiny" and not a.quick else "quick")
    result: dict = {"model": a.model, "quick": a.quick, "seed": a.seed, "sizes": asdict(s), "versions": _versions(),
                    "device": "cuda" if torch.cuda.is_available() else "cpu", "torch_threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg()[0]}
    t0 = time.perf_counter()
    _run_sections(a, s, e2e_mode, result, t0)
    g, d = result.get("generation", {}), result.get("dpo", {})
    result.update(
        generation_speedup=g.get("speedup"), dpo_wall_ratio=d.get("wall_ratio"), dpo_flops_ratio=d.get("flops_ratio"),
        dpo_peak_mem_ratio=d.get("peak_mem_ratio"), e2e_tiny_seconds=result["e2e"]["seconds"] if "e2e" in result else None,
        bench_seconds=time.perf_counter() - t0, load_average_end=os.getloadavg()[0], t4_predicted_seconds=predict_t4())
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"wrote {a.out}")
    return 0


def _parser() -> argparse.ArgumentParser:
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
    return p


def _device_check(a: argparse.Namespace) -> int:
    """--device-check: the report in a.out (default device_check/), its table printed; 1 when a check failed."""
    out = a.out or "device_check"
    report = device_check(out, a.quick, a.checks.split(",") if a.checks else None, a.budget, a.seed)
    print(check_table(report))
    print(f"wrote {Path(out) / 'device_check.json'}")
    return 0 if report["passed"] else 1


def _run_sections(a: argparse.Namespace, s: Sizes, e2e_mode: str, result: dict, t0: float) -> None:
    """Each benchmark asked for into `result`, written to a.out after each, so a later failure keeps what was measured."""
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
            Path(a.out).write_text(json.dumps(result, indent=2))
            print(f"bench: {name} done after {time.perf_counter() - t0:.0f} s", flush=True)
