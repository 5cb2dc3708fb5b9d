"""The device check's dry run at quick size (what CI runs without a GPU), and its formulas. No timing thresholds."""

from __future__ import annotations

import json

import pytest
import torch

from iterdpo import devicecheck as dc

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("device-check")
    r = dc.device_check(str(out), quick=True)
    assert json.loads((out / dc.REPORT).read_text())["checks"].keys() == r["checks"].keys()
    return r


def test_every_check_ran_or_says_why_not(report):
    assert set(report["checks"]) | set(report["not_checked"]) == set(dc.CHECKS)
    for name, c in report["checks"].items():
        assert c["status"] in ("pass", "not checked"), (name, c.get("error"), c.get("failures"))
    assert report["passed"]
    assert {"versions", "python", "sizes", "emulation", "qwen2.5_0.5b_config"} <= set(report)


@pytest.mark.skipif(CUDA, reason="on a GPU these parts run")
def test_cuda_only_parts_say_no_cuda(report):
    assert report["emulation"] == "not checked: no CUDA"
    for name in ("oom", "fourbit"):
        assert report["not_checked"][name].startswith("not checked: no CUDA")
    assert report["checks"]["device"]["status"] == "not checked"
    assert "no CUDA" in report["checks"]["tiny_pipeline"]["not_checked"]
    assert "no CUDA" in report["checks"]["t4_shapes"]["memory"]["not_checked"]


def test_tiny_pipeline_bars(report):
    t = report["checks"]["tiny_pipeline"]
    assert t["bars"]["summary_written"] and t["bars"]["one_decision_per_round"] and t["bars"]["no_non_finite_metric"]
    assert t["decisions"] == t["rounds_run"] == 2
    assert t["non_finite_metrics"] == [] and t["non_finite_train_losses"] == 0 and t["train_losses"] > 0
    assert "oracle_win_rate_vs_sft>=0.6" in t["bars"] and not t["win_rate_bar_enforced"]  # quick size trains too little


def test_qwen_shapes_measured(report):
    cfg = report["qwen2.5_0.5b_config"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["intermediate_size"], cfg["vocab_size"]) == (896, 24, 14, 2, 4864, 151936)
    assert cfg["tie_word_embeddings"] and cfg["rope_theta"] == 1e6 and cfg["rms_norm_eps"] == 1e-6
    assert cfg["max_position_embeddings"] == 32768
    t = report["checks"]["t4_shapes"]
    used = t["config"]
    assert used["num_attention_heads"] == 14 and used["num_key_value_heads"] == 2 and used["rope_theta"] == 1e6
    assert t["bf16_parameters"] == [] and t["precision"] == ("float16" if CUDA else "float32")
    g, d = t["generation"], t["dpo"]
    assert g["ours_tokens"] > 0 and g["baseline_tokens"] > 0 and g["speedup"] > 0
    assert g["static_cache_same_records"] or CUDA  # on a CPU the fast path's records are the plain path's
    assert t["scoring"]["tokens_per_s"] > 0
    assert d["timed_steps"] >= 1 and d["real_tokens"] > 0 and d["tokens_per_s"] > 0 and d["flops_per_token"] > 0
    assert d["fp16_health"]["healthy"] and d["losses"] and all(map(dc._finite, d["losses"]))
    assert {"load", "generate", "score", "dpo"} <= set(t["memory"]["stages"])


def test_nan_guard_trips(report):
    g = report["checks"]["nan_guard"]
    assert g["tripped"] and g["stopped_at_step"] < g["max_steps"]
    assert "project_guard" in g and g["guard_used"]


def test_table_lists_every_check(report):
    text = dc.table(report)
    for name in dc.CHECKS:
        assert name in text


def test_flops_formula_by_hand():
    from transformers import Qwen2Config

    cfg = Qwen2Config(**dc.QWEN25_05B)
    # per layer: q, o 896^2 each, k, v 896*128 each, MLP 3*896*4864; plus the 151936 x 896 output head
    n = 24 * (2 * 896 ** 2 + 2 * 896 * 128 + 3 * 896 * 4864) + 151936 * 896
    assert dc.matmul_params(cfg) == n
    assert dc.dpo_flops_per_token(n, 1000, 24, 896, 500) == 4 * n + 6000 + 12 * 24 * 896 * 500
    assert dc.bandwidth_bound_tokens_per_s(10 ** 9, 64, 3350) == pytest.approx(64 * 3350)


def test_gpu_table_and_bf16_guard():
    assert dc.known_gpu("NVIDIA H100 80GB HBM3")["fp16_tflops"] == 989.4
    assert dc.known_gpu("NVIDIA H100 PCIe")["fp16_tflops"] == 756.0
    assert dc.known_gpu("Tesla T4")["fp16_tflops"] == 65.0
    assert dc.known_gpu("NVIDIA H100 NVL")["fp16_tflops"] is None  # not in the table: measured instead
    assert dc.known_gpu("Some GPU")["label"] is None
    with pytest.raises(dc.BF16Error):
        with dc.NoBF16():
            torch.ones(2).to(torch.bfloat16)
    with dc.NoBF16():
        assert torch.ones(2).half().dtype == torch.float16


def test_emulated_t4_refuses_bf16(monkeypatch):
    from iterdpo import models

    monkeypatch.setenv(models.EMULATE_T4, "1")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert models.gpu_capability() == (7, 5)
    assert models.resolve_precision("auto", "cuda").dtype == torch.float16
    with pytest.raises(ValueError, match="bfloat16"):
        models.resolve_precision("bfloat16", "cuda")
    monkeypatch.delenv(models.EMULATE_T4)
    assert models.resolve_precision("auto", "cuda").dtype == torch.bfloat16
