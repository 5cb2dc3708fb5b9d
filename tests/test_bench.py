"""The benchmark: the memory planner, the OOM retry, and one quick run on the tiny model (no timing thresholds)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from iterdpo import bench, memory

GIB = 2 ** 30


# plan_memory -----------------------------------------------------------------------------------------------
def test_plan_keeps_the_effective_batch_and_shrinks_with_memory():
    roomy = memory.plan_memory(135_000_000, 16 * GIB, 256, 16, 2, layers=30, hidden=576)
    tight = memory.plan_memory(135_000_000, 1 * GIB, 256, 16, 2, layers=30, hidden=576)
    for plan in (roomy, tight):
        assert plan["micro_batch"] * plan["grad_accum"] == 16
        assert not plan["load_in_4bit"] and plan["reason"]
    assert roomy["micro_batch"] == 16 and roomy["grad_accum"] == 1
    assert tight["micro_batch"] < roomy["micro_batch"]


def test_plan_follows_the_documented_estimate():
    # weights 2e8 B + adapters 16*0.01*1e8 = 1.6e7 B; one example = 2 seqs * 100 tokens * (34*2*64*2/2 + 4*64) B
    # = 921,600 B; no vocabulary, so no LM-head tile.
    free = (2e8 + 1.6e7 + 5.5 * 921_600) / 0.9
    plan = memory.plan_memory(100_000_000, int(free), 100, 12, 2, layers=2, hidden=64)
    assert plan["micro_batch"] == 4 and plan["grad_accum"] == 3  # 5 fit; the largest divisor of 12 up to 5 is 4


def test_plan_falls_back_to_4bit_then_refuses():
    n = 1_000_000_000  # 2 GB of 16-bit weights
    plan = memory.plan_memory(n, int(2.2 * GIB), 128, 8, 2, layers=24, hidden=2048)
    assert plan["load_in_4bit"] and "4-bit" in plan["reason"]
    assert plan["micro_batch"] * plan["grad_accum"] == 8
    with pytest.raises(ValueError, match="do not fit"):
        memory.plan_memory(n, int(0.3 * GIB), 128, 8, 2, layers=24, hidden=2048)


def test_plan_estimates_the_shape_and_checks_inputs():
    plan = memory.plan_memory(500_000_000, 8 * GIB, 512, 8, 2)
    assert plan["micro_batch"] * plan["grad_accum"] == 8
    with pytest.raises(ValueError, match="positive"):
        memory.plan_memory(0, 8 * GIB, 512, 8, 2)


# with_oom_retry ------------------------------------------------------------------------------------------
def test_oom_error_type_exists_on_this_build():
    assert issubclass(torch.cuda.OutOfMemoryError, RuntimeError)  # also on CPU-only wheels


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("MPS backend out of memory")])
def test_oom_retry_halves_micro_batch_and_keeps_effective_batch(error, capsys):
    calls = []

    def fn(micro, accum):
        calls.append((micro, accum))
        if micro > 2:
            raise error
        return "trained"

    assert memory.with_oom_retry(fn, 8, 2) == ("trained", 2, 8)
    assert calls == [(8, 2), (4, 4), (2, 8)]
    err = capsys.readouterr().err
    assert "out of memory at micro_batch=8, grad_accum=2" in err and "micro_batch=4, grad_accum=4" in err


def test_oom_retry_keeps_an_odd_effective_batch():
    calls = []

    def fn(micro, accum):
        calls.append((micro, accum))
        if micro > 1:
            raise torch.cuda.OutOfMemoryError("out of memory")
        return micro * accum

    assert memory.with_oom_retry(fn, 6, 1) == (6, 1, 6)
    assert calls == [(6, 1), (3, 2), (1, 6)]


def test_oom_retry_gives_up_at_one_and_passes_other_errors():
    def always_oom(micro, accum):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        memory.with_oom_retry(always_oom, 4, 1)

    def broken(micro, accum):
        raise ValueError("bad config")

    with pytest.raises(ValueError, match="bad config"):
        memory.with_oom_retry(broken, 4, 1)


# FLOPs ------------------------------------------------------------------------------------------------------
def test_attention_flops_are_counted_on_cpu():
    q = torch.randn(1, 2, 16, 8)
    flops = bench._flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True))
    assert flops == 2 * (2 * 2 * 16 * 16 * 8)  # QK^T and AV, 2 FLOPs per multiply-add, causality not discounted


# arms --------------------------------------------------------------------------------------------------------
def test_baseline_arm_differs_only_in_what_costs_compute(tmp_path, toy_tokenizer):
    from iterdpo.config import DPORoundConfig
    from iterdpo.models import resolve_precision

    prec = resolve_precision("float32", "cpu")
    pairs = [{"prompt": "user: list 2 fruit\nassistant:", "chosen": " apple" + " pear" * (i % 5), "rejected": " rain"}
             for i in range(12)]
    st = bench.Setup("", None, prec, toy_tokenizer, [], pairs, 1.0, DPORoundConfig(), 8, [], "tiny", prec)
    dcfg = DPORoundConfig(max_steps=2, batch_size=2, grad_accum=1)
    ours, ours_rows = bench.arm_data("ours", st, dcfg, prec, tmp_path, 0)
    base, base_rows = bench.arm_data("baseline", st, dcfg, prec, tmp_path, 0)
    same, same_rows = bench.arm_data("same_batches", st, dcfg, prec, tmp_path, 0)
    assert ours["precompute_ref_log_probs"] and not ours["activation_checkpointing"]
    assert ours["max_length"] == max(len(toy_tokenizer(p["prompt"] + p["chosen"])["input_ids"]) + 1 for p in pairs)
    assert ours["train_sampling_strategy"] == "sequential" and len(ours_rows) == 4  # 2 steps x 2 pairs, of 12
    assert not {"max_length", "precompute_ref_log_probs", "activation_checkpointing", "train_sampling_strategy"} & set(base)
    assert all(base[k] == ours[k] for k in base) and base_rows == pairs
    assert same_rows == ours_rows and same == {**base, "train_sampling_strategy": "sequential"}


# one quick run -----------------------------------------------------------------------------------------------
def test_quick_bench_writes_finite_positive_ratios(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--model", "tiny", "--quick", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in ("generation_speedup", "dpo_wall_ratio", "dpo_flops_ratio", "dpo_peak_mem_ratio", "e2e_tiny_seconds"):
        assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, key
    d = r["dpo"]
    # FLOPs are exact: the reference forward is done once and activations are not recomputed.
    assert d["flops"]["ours"]["precompute"] > 0 and d["flops"]["baseline"]["precompute"] == 0
    assert d["flops"]["ours"]["train"] < d["flops"]["baseline"]["train"]
    assert d["rows"] == {"ours": d["trained_pairs"], "baseline": d["pairs"]} and d["trained_pairs"] < d["pairs"]
    assert d["padding"]["ours"]["truncated_pairs"] == 0 and d["losses_identical_across_repeats"]
    assert d["loss_mean_abs_diff"] < 1e-4  # our settings give TRL's default losses on the same batches
    assert d["settings"]["baseline"] == {"gradient_checkpointing": True, "precompute_ref_log_probs": False,
                                         "max_length": 1024}
    assert r["e2e"]["stages"] and abs(sum(v["share"] for v in r["e2e"]["stages"].values()) - 1) < 1e-6


def test_generation_bench_reports_the_dtype_when_ours_samples_in_bf16(tmp_path):
    """generation.precision differing from the model's (bf16 on an AMX CPU): the same-dtype arm, the baseline
    timed in both dtypes, and the check of what the dtype moves all appear, in bench.json and in the table."""
    from dataclasses import replace

    from iterdpo.models import Precision

    s = bench.Sizes(4, 2, 6, 8, 8, 8, 1, 2, 2, 1)
    st = replace(bench.setup_tiny(tmp_path, s, 0), gen_precision=Precision(torch.bfloat16, False, True))
    g = bench.bench_generation(st, s, 0)
    assert g["precision"] == {"ours": "bfloat16", "baseline": "float32"}
    assert g["speedup"] > 0 and g["speedup_model_precision"] > 0
    assert set(g["baseline_first_prompt_seconds"]) == {"float32", "bfloat16"}
    c = g["precision_check"]
    assert c["samples"] == 8 and 0 <= c["reward_same_pair"] <= 1
    assert 0 < c["logp_per_token_mean_abs_gap"] < 0.1  # bf16 rounding, not a different model
    text = bench.table({"generation": g})
    assert "pairs/s, one dtype" in text and "bfloat16" in text


# wired into the DPO stage -----------------------------------------------------------------------------------
def test_dpo_stage_retries_at_half_the_micro_batch_on_oom(monkeypatch, tmp_path, capsys):
    from iterdpo import dpo
    from iterdpo.config import load_preset

    cfg = load_preset("tiny", {"dpo.batch_size": 32, "dpo.grad_accum": 1})
    seen = []

    def fake_round(start, ref, pairs, dcfg, mcfg, precision, dest, seed, callbacks=None, tracking=None):
        seen.append((dcfg.batch_size, dcfg.grad_accum))
        if dcfg.batch_size > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"memory_plan": "no GPU: the configured batch"}

    monkeypatch.setattr(dpo, "train_round", fake_round)
    out = dpo.train_with_retry("start", None, [], cfg.dpo, cfg, tmp_path, 0)
    assert seen == [(32, 1), (16, 2), (8, 4)]
    assert "retried at 8 x 4" in out["memory_plan"] and "out of memory" in capsys.readouterr().err


def test_config_size_estimates_a_llama(toy_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=344, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)
    est = memory.config_size(conf)
    real = LlamaForCausalLM(conf).num_parameters()
    assert est["layers"] == 3 and est["hidden"] == 128 and abs(est["n_params"] / real - 1) < 0.02
    if not torch.cuda.is_available():
        assert memory.plan_for("unused", 128, 8, 2) is None  # no GPU: the configured batch stands
