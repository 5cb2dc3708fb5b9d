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
