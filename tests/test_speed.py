"""Issue 29's fast paths give what the plain paths give (sampling with a static cache, the DPO step's settings),
and the yardstick's and the T4 prediction's formulas, checked by hand."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(policy, tokenizer, prompts): a randomly initialised toy-world Llama, prompts of different lengths."""
    from transformers import LlamaForCausalLM

    from iterdpo.config import ToyConfig
    from iterdpo.worlds.toy import ToyWorld, tiny_llama_config, train_tokenizer

    w = ToyWorld(ToyConfig())
    tok = train_tokenizer(w, [d["prompt"] + " " + d["completion"] for d in w.pretrain_docs(300, 0)])
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(ToyConfig(), tok)).eval()
    render = lambda p: tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True)
    return model, tok, [render(p) for p in w.prompts(24, 1)] + [render("add 1 2 and list 3 fruit now")]


# sampling with a static cache ------------------------------------------------------------------------------------
@pytest.mark.parametrize("share_prompt", [True, False])
def test_static_cache_draws_the_same_records_as_the_dynamic_cache(toy, share_prompt):
    from iterdpo.sampling import sample

    model, tok, prompts = toy
    run = lambda cache: sample(model, tok, prompts, 4, 12, batch_size=32, seed=5, share_prompt=share_prompt,
                               cache=cache)
    static, dynamic = run("static"), run("dynamic")
    assert static == dynamic  # every record: responses, ended, n_tokens
    assert len({x for r in static for x in r["responses"]}) > len(prompts)  # really sampled
    assert run("auto") == dynamic  # auto is dynamic on a CPU: CPU runs keep their figures


def test_static_cache_length_and_choices():
    from iterdpo.sampling import STATIC_BUCKET, resolve_cache, static_length

    assert static_length(40, 24) == STATIC_BUCKET and static_length(41, 24) == 2 * STATIC_BUCKET
    assert resolve_cache("auto", torch.device("cuda")) == "static"
    assert resolve_cache("auto", torch.device("cpu")) == "dynamic"
    assert resolve_cache("static", torch.device("cpu")) == "static"
    with pytest.raises(ValueError, match="cache="):
        resolve_cache("paged", torch.device("cpu"))


# the DPO step ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory, toy):
    model, tok, _ = toy
    path = tmp_path_factory.mktemp("toy_policy")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _round(toy_dir, tmp_path, pairs, ref_path=None, **dpo):
    from dataclasses import replace

    from iterdpo.config import load_preset
    from iterdpo.dpo import train_round
    from iterdpo.models import resolve_precision

    cfg = load_preset("tiny")
    dcfg = replace(cfg.dpo, max_steps=3, batch_size=2, grad_accum=2, **dpo)
    res = train_round(toy_dir, ref_path, pairs, dcfg, cfg.model, resolve_precision("float32"), tmp_path, seed=0)
    return [r["loss"] for r in res["log"] if "loss" in r]


@pytest.mark.parametrize("reference", ["previous", "sft"])
def test_reference_pass_at_a_larger_batch_keeps_the_fp32_losses(toy_dir, toy, tmp_path, reference):
    from iterdpo.worlds.toy import ToyWorld
    from iterdpo.config import ToyConfig

    _, tok, _ = toy
    render = lambda p: tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True)
    pairs = [{"prompt": render(r["prompt"]), "chosen": " " + r["chosen"], "rejected": " " + r["rejected"]}
             for r in ToyWorld(ToyConfig()).seed_pairs(12, 4)]
    ref = toy_dir if reference == "sft" else None
    micro = _round(toy_dir, tmp_path / "a", pairs, ref)
    larger = _round(toy_dir, tmp_path / "b", pairs, ref, ref_batch_size=8)
    assert len(micro) == 3 and larger == pytest.approx(micro, abs=1e-6)


def test_step_settings_turn_off_adapter_input_casting_only_under_autocast():
    from types import SimpleNamespace

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from iterdpo.memory import StepSettings

    model = get_peft_model(LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                        num_hidden_layers=2, num_attention_heads=4)),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(0, 64, (2, 9))
    before = model(input_ids=ids).logits
    args = lambda half: SimpleNamespace(fp16=half, bf16=False, precompute_ref_log_probs=True)
    fp32 = StepSettings()
    fp32.on_train_begin(args(False), None, None, model=model)
    assert fp32.input_casting_off == 0  # fp32: nothing to save
    half = StepSettings()
    half.on_train_begin(args(True), None, None, model=model)
    assert half.input_casting_off == 4  # 2 layers x (q, v)
    assert torch.equal(model(input_ids=ids).logits, before)  # same dtype in and out: the same numbers


# the T4 prediction -------------------------------------------------------------------------------------------------
def test_t4_prediction_names_every_stage_and_follows_its_formulas():
    from iterdpo.bench import t4

    r = t4.predict()
    assert [k for k in r["stages"] if k.startswith("round_")] == [
        "round_0/eval", "round_1/generate", "round_1/dpo", "round_1/eval", "round_2/generate", "round_2/dpo",
        "round_2/eval"]
    assert {"sft", "reward"} <= set(r["stages"]) and all(v > 0 for v in r["stages"].values())
    assert r["total"] == pytest.approx(sum(r["stages"].values()))
    # a decode step by hand: 1 sequence, no prompt: the weights' bytes over the usable bandwidth
    m = t4.Shape(n=10 ** 9, lora=0, layers=1, hidden=1, kv=0, vocab=1)
    step = t4.decode_seconds(m, 1, 1, 0, 1)["decode_step_gpu_s"]
    assert step == pytest.approx(2e9 / (t4.T4_HBM_BYTES * t4.BW_EFF))
    # a host-bound training run: micro-batches x ops per layer x layers x seconds per eager op
    run = t4.train_seconds(t4.Shape(n=1, lora=0, layers=10, hidden=1, kv=0, vocab=1), 1, 1, 3)
    assert run["seconds"] == pytest.approx(3 * t4.TRAIN_OPS_PER_LAYER * 10 * t4.HOST_SECONDS_PER_OP["eager"])


# the yardstick and the wheelhouse ----------------------------------------------------------------------------------
def test_mfu_against_a_t4_and_gpu_busy_time_by_hand():
    from iterdpo.devicecheck.formulas import T4_FP16_TFLOPS, busy_seconds, mfu

    # the issue's step: 2.7e13 FLOP in 1.03 s is 40% of a T4's 65 TFLOP/s
    assert mfu(2.7e13, 1, 1.03, T4_FP16_TFLOPS) == pytest.approx(0.403, abs=1e-3)
    assert busy_seconds([(0.0, 1.0), (0.5, 1.5), (2.0, 2.25), (2.1, 2.2)]) == pytest.approx(1.75)
    assert busy_seconds([]) == 0.0


def test_wheelhouse_reads_the_devices_python_and_never_assumes_one(tmp_path, monkeypatch, capsys):
    import json

    from iterdpo import wheelhouse

    with pytest.raises(SystemExit):
        wheelhouse.main([str(tmp_path / "w")])  # no device file and no version: refused
    assert "device's Python" in capsys.readouterr().err
    wheelhouse.main(["--describe"])
    desc = json.loads(capsys.readouterr().out)
    assert desc["python_version"].count(".") == 2 and any(l.startswith("torch==") for l in desc["freeze"])
    seen = {}
    monkeypatch.setattr(wheelhouse, "gather", lambda dest, pk, py, inst: seen.update(py=py, inst=inst) or [])
    (tmp_path / "device.json").write_text(json.dumps({"python_version": "3.12.3", "cuda": None,
                                                      "freeze": ["trl==1.16.0", "Torch==2.11.0"]}))
    assert wheelhouse.main([str(tmp_path / "w"), "--device", str(tmp_path / "device.json"), "--no-project"]) == 0
    assert seen == {"py": "3.12.3", "inst": {"trl": "1.16.0", "torch": "2.11.0"}}
