"""The vLLM sampler backend: its records, with vLLM replaced at the module boundary by a fake ``vllm`` module
(nothing of iterdpo is mocked), its one-line errors, and on a GPU with vLLM installed its speed against the
HF sampler at the same batch."""

import subprocess
import sys
import time
import types

import pytest
import torch

from iterdpo import samplers as sampler
from iterdpo.config import ConfigError, ModelConfig, load_preset
from iterdpo.data import GEN_KEYS, check_records
from iterdpo.models import Precision

FP32 = Precision(torch.float32, False, False)


class FakeLLM:
    """vllm.LLM's surface that the sampler uses: generate(inputs, params) -> [RequestOutput(outputs=[k])]."""

    made: list = []

    def __init__(self, **kw):
        self.kw, self.calls = kw, []
        FakeLLM.made.append(self)

    def generate(self, inputs, params, use_tqdm=True):
        self.calls.append((inputs, params))
        out = []
        for inp, p in zip(inputs, params):
            first = inp["prompt_token_ids"][-1]
            comps = []
            for j in range(p.kw["n"]):  # even samples end with EOS, odd ones run out of tokens
                ids = [first, first + 1 + j] + ([p.kw["stop_token_ids"][0]] if j % 2 == 0 else [])
                comps.append(types.SimpleNamespace(token_ids=ids, finish_reason="stop" if j % 2 == 0 else "length"))
            out.append(types.SimpleNamespace(outputs=comps))
        return out


class FakeSamplingParams:
    def __init__(self, **kw):
        self.kw = kw


@pytest.fixture
def fake_vllm(monkeypatch, toy_tokenizer, tmp_path):
    """A fake `vllm` module in sys.modules, a visible 'GPU', and a policy folder holding the toy tokenizer."""
    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    FakeLLM.made = []
    toy_tokenizer.save_pretrained(tmp_path / "policy")
    return str(tmp_path / "policy")


def test_records_follow_the_sampler_schema(fake_vllm, toy_tokenizer):
    policy = sampler.load("vllm", fake_vllm, ModelConfig(), FP32, batch_size=32)
    prompts = ["list 3 fruit", "list 2 tool", "list 3 fruit"]
    recs = policy.sample(prompts, 4, max_new_tokens=7, temperature=0.8, top_p=0.9, seed=100)
    llm = FakeLLM.made[-1]
    assert llm.kw["model"] == fake_vllm and llm.kw["enable_prefix_caching"] is True
    assert llm.kw["dtype"] == "float32" and llm.kw["max_num_seqs"] == 32
    inputs, params = llm.calls[-1]
    # prompts tokenized as the HF sampler does (no special tokens), each with its own seed: seed + its index
    assert [x["prompt_token_ids"] for x in inputs] == [toy_tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert [p.kw["seed"] for p in params] == [100, 101, 102]
    assert {(p.kw["n"], p.kw["temperature"], p.kw["top_p"], p.kw["max_tokens"]) for p in params} == {(4, 0.8, 0.9, 7)}
    assert all(set(r) == {"prompt", "responses", "ended", "n_tokens"} for r in recs)  # what the HF sampler returns
    check_records([dict(r, rewards=[0.0] * 4) for r in recs], GEN_KEYS, "vllm records")
    assert [r["prompt"] for r in recs] == prompts
    for p, r in zip(prompts, recs):
        assert r["ended"] == [True, False, True, False]
        assert r["n_tokens"] == [3, 2, 3, 2]  # the EOS counts, as in the HF sampler
        first = toy_tokenizer(p, add_special_tokens=False)["input_ids"][-1]
        assert r["responses"][1] == " " + toy_tokenizer.decode([first, first + 2], skip_special_tokens=True)
    policy.close()
    assert policy.llm is None


def test_greedy_and_logprobs(fake_vllm):
    policy = sampler.load("vllm", fake_vllm, ModelConfig(), FP32, batch_size=8)
    policy.sample(["list 3 fruit"], 1, 5, temperature=0.7, greedy=True)
    assert FakeLLM.made[-1].calls[-1][1][0].kw["temperature"] == 0.0
    with pytest.raises(NotImplementedError, match="hf sampler"):
        policy.logprobs(["list 3 fruit"], [" apple"])


def test_not_installed_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ConfigError, match="vLLM is not installed") as e:
        sampler.load("vllm", str(tmp_path), ModelConfig(), FP32, 8)
    assert "\n" not in str(e.value)


def test_no_gpu_is_one_line(monkeypatch, tmp_path):
    mod = types.ModuleType("vllm")
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a CUDA GPU") as e:
        sampler.load("vllm", str(tmp_path), ModelConfig(), FP32, 8)
    assert "\n" not in str(e.value)


def test_config_choice_and_lazy_import():
    assert load_preset("tiny", {"generation.backend": "vllm"}).generation.backend == "vllm"
    with pytest.raises(ConfigError):
        load_preset("tiny", {"generation.backend": "sglang"})
    code = ("import sys, iterdpo.pipeline; from iterdpo.registry import SAMPLERS; SAMPLERS.names(); "
            "print('vllm' in sys.modules)")  # every backend module registered, vLLM itself not imported
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def _vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _vllm_available(), reason="needs CUDA and vLLM")
def test_vllm_against_hf_tokens_per_second(tmp_path):
    """Same policy (a toy-sized Llama, random weights), same prompts, same batch: tokens/s of each (printed)."""
    from transformers import LlamaForCausalLM

    from iterdpo.config import ToyConfig
    from iterdpo.worlds.toy import ToyWorld, tiny_llama_config, train_tokenizer

    world = ToyWorld(ToyConfig())
    tok = train_tokenizer(world, [" ".join(world.vocabulary())])
    config = tiny_llama_config(ToyConfig(), tok)
    config.vocab_size = max(tok.get_vocab().values()) + 1  # this one-line corpus leaves the special tokens last
    LlamaForCausalLM(config).save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    prompts = world.prompts(256, seed=0)
    precision = Precision(torch.bfloat16, False, True)
    rates = {}
    for backend in ("hf", "vllm"):
        policy = sampler.load(backend, str(tmp_path / "policy"), ModelConfig(), precision, batch_size=256)
        policy.sample(prompts[:8], 4, 16)  # warm-up
        t0 = time.perf_counter()
        recs = policy.sample(prompts, 4, 16, seed=1)
        rates[backend] = sum(sum(r["n_tokens"]) for r in recs) / (time.perf_counter() - t0)
        policy.close()
        del policy
    print(f"\nsampling, 256 prompts x 4, batch 256: hf {rates['hf']:.0f} tokens/s, vllm {rates['vllm']:.0f} tokens/s "
          f"({rates['vllm'] / rates['hf']:.2f}x)")
    assert all(r > 0 for r in rates.values())
