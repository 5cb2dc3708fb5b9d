"""Capability suites: probes, loaders on the real eval files, and scoring on a tiny Llama."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from iterdpo.suites import capability_pairs, capability_scores, load_suite, retention
from iterdpo.suites.base import left_pad, option_logprobs, score_multiple_choice
from iterdpo.suites.gsm8k import last_number, score_gsm8k
from iterdpo.suites.probes import probe_items
from iterdpo.config import EvalConfig, ToyConfig
from iterdpo.data import render_prompt
from iterdpo.losses import sequence_logprobs
from iterdpo.worlds.toy import WORDS, ToyWorld, train_tokenizer

EVALS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "evals"


def _eval_path(rel: str) -> Path:
    p = EVALS / rel
    if not p.exists():
        pytest.skip(f"eval data not found at {p} (the shared data folder is not beside the repository)")
    return p


# probes and pairs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["toy", "chat"])
def test_probes_are_deterministic_and_correct(style):
    items = probe_items(style, 40, seed=3)
    assert items == probe_items(style, 40, seed=3)
    assert items != probe_items(style, 40, seed=4)
    for it in items:
        q, answer = it["messages"][0]["content"], it["options"][it["answer"]]
        assert it["suite"] == "probes" and len(set(it["options"])) == len(it["options"])
        if style == "toy" and q.startswith("add"):
            _, a, b = q.split()
            assert answer == str(int(a) + int(b))
        elif style == "toy":
            assert q.split() == ["repeat", answer] and it["options"] == WORDS
        elif q.startswith("What is"):
            a, b = q.removeprefix("What is ").removesuffix("?").split(" + ")
            assert answer == f"{a} + {b} = {int(a) + int(b)}"
        else:
            assert f"'{answer}'" in q and len(it["options"]) == 4


def test_capability_pairs_right_vs_wrong():
    pairs = capability_pairs("toy", 30, seed=0)
    assert pairs == capability_pairs("toy", 30, seed=0)
    for p in pairs:
        words = p["messages"][0]["content"].split()
        truth = str(int(words[1]) + int(words[2])) if words[0] == "add" else words[1]
        assert p["chosen"] == " " + truth and p["rejected"].strip() != truth and p["rejected"].startswith(" ")
        assert p["source"] == "capability"
    eval_prompts = [it["messages"] for it in probe_items("toy", 30, seed=0)]
    assert [p["messages"] for p in pairs] != eval_prompts  # drawn from a different seed


def test_retention_and_last_number():
    assert retention(0.45, 0.5) == pytest.approx(0.9)
    assert retention(0.0, 0.0) == 1.0 and retention(0.3, 0.0) == 1.0
    with pytest.raises(ValueError):
        retention(float("nan"), 0.5)
    assert last_number("so 3 + 4 = 7.\nThe answer is 1,250.00") == "1250"
    assert last_number("-12 apples") == "-12" and last_number("none") is None


# loaders -----------------------------------------------------------------------------------------
def test_load_gsm8k():
    items = load_suite("gsm8k", str(_eval_path("gsm8k/test.jsonl")), 20, seed=0)
    assert len(items) == 20 and items == load_suite("gsm8k", str(_eval_path("gsm8k/test.jsonl")), 20, seed=0)
    assert all(it["answer_number"].lstrip("-").replace(".", "").isdigit() for it in items)
    assert items[0]["messages"][0]["role"] == "user"


def test_load_mmlu_spreads_over_subjects():
    items = load_suite("mmlu", str(_eval_path("mmlu")), 40, seed=0)
    assert len(items) == 40 and len({it["subject"] for it in items}) == 40  # 57 subjects: one each
    assert all(it["options"] == ["A", "B", "C", "D"] and 0 <= it["answer"] < 4 for it in items)
    assert items != load_suite("mmlu", str(_eval_path("mmlu")), 40, seed=1)


def test_load_arc():
    items = load_suite("arc", str(_eval_path("arc-challenge/test.jsonl")), 50, seed=0)
    assert len(items) == 50
    for it in items:
        assert it["options"][it["answer"]] in "ABCDE" and f"\n{it['options'][-1]}. " in it["messages"][0]["content"]


@pytest.mark.parametrize("suite,line,text", [
    ("gsm8k", 2, '{"question": "q", "answer": "#### 1"}\n{"question": "q", "answer": "no marker"}\n'),
    ("gsm8k", 3, '{"question": "q", "answer": "#### 1"}\n\n{not json\n'),
    ("arc", 1, '{"question": "q", "options": [{"label": "A", "text": "x"}], "answer": "B"}\n'),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, suite, line, text):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{path}:{line}"):
        load_suite(suite, str(path), 5, seed=0)


def test_malformed_mmlu_csv_names_file_and_line(tmp_path):
    (tmp_path / "test").mkdir()
    bad = tmp_path / "test" / "toy_test.csv"
    bad.write_text("question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,0\nq,a,b,c,d,7\n")
    with pytest.raises(ValueError, match=f"{bad}:3"):
        load_suite("mmlu", str(tmp_path), 5, seed=0)


def test_missing_source_and_suite_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_suite("gsm8k", str(tmp_path / "absent.jsonl"), 5, seed=0)
    with pytest.raises(ValueError, match="capability_paths.gsm8k"):
        capability_scores(None, None, EvalConfig(capability=["gsm8k"]), "chat", seed=0)
    with pytest.raises(ValueError, match="toy world"):
        capability_scores(None, None, EvalConfig(capability=["mmlu"], capability_paths={"mmlu": "x"}), "toy", seed=0)


# scoring on a tiny Llama -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy():
    from transformers import LlamaConfig, LlamaForCausalLM

    world = ToyWorld(ToyConfig())
    tok = train_tokenizer(world, [" ".join(world.vocabulary())])
    torch.manual_seed(0)
    vocab = max(tok.get_vocab().values()) + 1  # not len(tok): robust to ids that do not start at 0
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    return tok, LlamaForCausalLM(cfg).eval()


def _tensors(tok, prompts: list[str], completions: list[str]):
    p = [tok(x, add_special_tokens=False)["input_ids"] for x in prompts]
    c = [tok(x, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for x in completions]
    ids, mask = left_pad([a + b for a, b in zip(p, c)], tok.pad_token_id)
    cmask = torch.zeros_like(ids)
    for i, b in enumerate(c):
        cmask[i, ids.shape[1] - len(b):] = 1
    return ids, mask, cmask


@pytest.fixture(scope="module")
def trained(toy):
    """The tiny Llama after a short full-parameter fit of every add and repeat fact."""
    import copy

    tok, base = toy
    model = copy.deepcopy(base).train()
    facts = [(f"add {a} {b}", str(a + b)) for a in range(10) for b in range(10)]
    facts += [(f"repeat {w}", w) for w in WORDS]
    ids, mask, cmask = _tensors(tok, [render_prompt([{"role": "user", "content": q}], tok) for q, _ in facts],
                                [" " + a for _, a in facts])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(150):
        loss = -sequence_logprobs(model(input_ids=ids, attention_mask=mask, position_ids=pos).logits, ids, cmask).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_option_logprobs_match_unpadded_by_hand(toy):
    tok, model = toy
    prompts = ["user: add 3 4\nassistant:", "user: repeat apple please now\nassistant:"]
    comps = [" 7", " apple river"]
    p_ids = [tok(x, add_special_tokens=False)["input_ids"] for x in prompts]
    c_ids = [tok(x, add_special_tokens=False)["input_ids"] for x in comps]
    got = option_logprobs(model, tok, p_ids, c_ids)
    for i in range(2):
        seq = torch.tensor([p_ids[i] + c_ids[i]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=seq).logits[0], -1)
        want = sum(logp[t - 1, seq[0, t]] for t in range(len(p_ids[i]), seq.shape[1]))
        assert got[i].item() == pytest.approx(want.item(), abs=1e-4)


def test_multiple_choice_score_is_the_share_of_argmax_hits(toy):
    tok, model = toy
    items = probe_items("toy", 20, seed=0)
    acc = score_multiple_choice(model, tok, items, batch_size=16)
    hits = 0
    for it in items:  # each option scored alone, by hand, as " option <eos>" after the rendered prompt
        prompt = render_prompt(it["messages"], tok)
        ids, mask, cmask = _tensors(tok, [prompt] * len(it["options"]), [" " + o for o in it["options"]])
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            lp = sequence_logprobs(model(input_ids=ids, attention_mask=mask, position_ids=pos).logits, ids, cmask)
        hits += int(lp.argmax()) == it["answer"]
    assert acc == hits / len(items)
    out = capability_scores(model, tok, EvalConfig(capability=["probes"], capability_n=20, batch_size=16), "toy", seed=0)
    assert out == {"probes": acc, "capability_score": acc}


def test_training_on_the_skills_lifts_probes_above_chance(toy, trained):
    tok, base = toy
    items = probe_items("toy", 60, seed=1)
    before = score_multiple_choice(base, tok, items, batch_size=64)
    after = score_multiple_choice(trained, tok, items, batch_size=64)
    assert after > 0.5 and after > before + 0.3  # chance is 1/19 for sums, 1/36 for words


def test_gsm8k_style_generation_on_the_trained_model(trained, toy):
    tok, _ = toy
    rng = random.Random(0)
    pairs = [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(20)]
    items = [{"suite": "gsm8k", "messages": [{"role": "user", "content": f"add {a} {b}"}], "answer_number": str(a + b)}
             for a, b in pairs]
    acc = score_gsm8k(trained, tok, items, max_new_tokens=3, batch_size=8)
    assert acc > 0.5
    items_wrong = [dict(it, answer_number="99") for it in items]
    assert score_gsm8k(trained, tok, items_wrong, max_new_tokens=3, batch_size=8) == 0.0
