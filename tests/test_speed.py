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
