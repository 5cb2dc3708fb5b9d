"""The fast paths give what the plain paths give: shared-prompt sampling and scoring, the DPO batch plan, and
bf16 sampling and scoring where the CPU has AMX."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from iterdpo.dpo import batch_plan


# DPO batch plan ------------------------------------------------------------------------------------------------
def test_batch_plan_reads_exactly_the_consumed_pairs_in_length_grouped_batches():
    lengths = [random.Random(i).randint(5, 60) for i in range(100)]
    order, in_order = batch_plan(lengths, batch=4, consumed=40, seed=1)
    assert in_order and len(order) == 40 and len(set(order)) == 40
    batches = [order[i:i + 4] for i in range(0, 40, 4)]
    # micro-batches are runs of the length-sorted draw: no batch overlaps another's length range
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    widths = [max(lengths[i] for i in b) for b in batches]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)  # batches are shuffled
    assert batch_plan(lengths, 4, 40, seed=1) == (order, True) and batch_plan(lengths, 4, 40, seed=2)[0] != order


def test_batch_plan_keeps_every_pair_when_the_steps_go_round_the_data():
    lengths = [7, 3, 9, 1, 5]
    order, in_order = batch_plan(lengths, batch=2, consumed=12, seed=0)
    assert not in_order and order == [3, 1, 4, 0, 2]  # every pair, length order for the reference pass


# shared prompts ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(policy, reward model, tokenizer, prompts): randomly initialised toy-world models."""
    from transformers import LlamaForCausalLM

    from iterdpo import reward
    from iterdpo.config import ToyConfig
    from iterdpo.worlds.toy import ToyWorld, tiny_llama_config, train_tokenizer

    w = ToyWorld(ToyConfig())
    toy_tokenizer = train_tokenizer(w, [d["prompt"] + " " + d["completion"] for d in w.pretrain_docs(300, 0)])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("toy_model")
    model = LlamaForCausalLM(tiny_llama_config(ToyConfig(), toy_tokenizer)).eval()
    model.save_pretrained(path)
    toy_tokenizer.save_pretrained(path)
    rm = reward.build(str(path), 32, 0.0, torch.float32, "cpu", mode="frozen").eval()
    render = lambda p: toy_tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                         add_generation_prompt=True)
    # prompts of different lengths, so batches are left-padded
    prompts = [render(p) for p in w.prompts(20, 1)] + [render("add 1 2 and list 3 fruit now")]
    return model, rm, toy_tokenizer, prompts


def test_shared_prompt_sampling_draws_the_same_samples(toy):
    from iterdpo.sampling import sample

    model, _, toy_tokenizer, prompts = toy
    shared = sample(model, toy_tokenizer, prompts, 4, 10, batch_size=24, seed=3, share_prompt=True)
    plain = sample(model, toy_tokenizer, prompts, 4, 10, batch_size=24, seed=3, share_prompt=False)
    assert [r["responses"] for r in shared] == [r["responses"] for r in plain]
    assert len({x for r in shared for x in r["responses"]}) > len(prompts)  # really sampled, not one reply each
    greedy = sample(model, toy_tokenizer, prompts, 3, 10, batch_size=24, greedy=True)
    one = sample(model, toy_tokenizer, prompts, 1, 10, batch_size=24, greedy=True)
    assert [r["responses"] for r in greedy] == [r["responses"] * 3 for r in one]


def test_grouped_scoring_equals_flat_scoring(toy):
    from iterdpo import reward

    _, rm, toy_tokenizer, prompts = toy
    rng = random.Random(0)
    words = ["apple", "pear", "rain", "so", "7"]
    responses = [[" " + " ".join(rng.choice(words) for _ in range(rng.randint(0, 6))) for _ in range(3)] for _ in prompts]
    responses[0][1] = ""  # an empty response scores at the prompt's last token
    ended = [[rng.random() < 0.5 for _ in range(3)] for _ in prompts]
    ended[0][1] = False
    grouped = reward.score_grouped(rm, toy_tokenizer, prompts, responses, ended, batch_size=9)
    flat = reward.score(rm, toy_tokenizer, [p for p in prompts for _ in range(3)], sum(responses, []), sum(ended, []),
                        batch_size=9)
    assert torch.allclose(torch.tensor(grouped).flatten(), torch.tensor(flat), atol=1e-5)
    with pytest.raises(ValueError, match="same number"):
        reward.score_grouped(rm, toy_tokenizer, prompts[:2], [["a", "b"], ["c"]], [[True, True], [True]])



def test_mean_pooled_truncated_reward_model_scores_grouped_as_flat_and_round_trips(toy, tmp_path):
    """reward.pooling mean and reward.layers: grouped scoring equals flat scoring, the response tokens alone
    decide the reward (a different prompt changes it only through attention), and save/load keeps both."""
    from iterdpo import reward

    _, rm, toy_tokenizer, prompts = toy
    src = tmp_path / "src"
    rm.backbone.save_pretrained(src)
    toy_tokenizer.save_pretrained(src)
    torch.manual_seed(1)
    m = reward.build(str(src), 16, 0.0, torch.float32, "cpu", "frozen", pooling="mean", layers=1).eval()
    assert m.backbone.config.num_hidden_layers == 1 and m.pooling == "mean"
    responses = [[" apple pear", "", " rain so 7 7"] for _ in prompts]
    ended = [[True, False, False] for _ in prompts]
    grouped = reward.score_grouped(m, toy_tokenizer, prompts, responses, ended, batch_size=6)
    flat = reward.score(m, toy_tokenizer, [p for p in prompts for _ in range(3)], sum(responses, []), sum(ended, []),
                        batch_size=6)
    assert torch.allclose(torch.tensor(grouped).flatten(), torch.tensor(flat), atol=1e-5)
    assert len({round(x, 4) for x in flat}) > 3  # responses and prompts really move the rewards
    reward.save(m, toy_tokenizer, tmp_path / "rm")
    back = reward.load(tmp_path / "rm", 16, torch.float32, "cpu")
    assert back.pooling == "mean" and back.backbone.config.num_hidden_layers == 1
    again = reward.score(back, toy_tokenizer, [p for p in prompts for _ in range(3)], sum(responses, []), sum(ended, []),
                         batch_size=6)
    assert torch.allclose(torch.tensor(again), torch.tensor(flat), atol=1e-5)
    with pytest.raises(ValueError, match="reward.layers=9"):
        reward.build(str(src), 16, 0.0, torch.float32, "cpu", "frozen", layers=9)


def test_log_probs_read_only_the_completions_logits_and_give_the_full_passs_figures(toy, monkeypatch):
    """completion_logprobs asks the model for the completion's logits alone (logits_to_keep); the log-probs
    and token counts equal the full pass's, for completions of different lengths, empty ones and EOS or not."""
    from iterdpo import sampling

    model, _, tok, prompts = toy
    assert sampling.keeps_logits(model)
    completions = [" apple pear", "", " rain so 7 7 and more rain", " 7"] * (len(prompts) // 4) + [" a"] * (len(prompts) % 4)
    eos = [True, False, True] * (len(prompts) // 3) + [True] * (len(prompts) % 3)
    sliced = sampling.completion_logprobs(model, tok, prompts, completions, 5, add_eos=eos)
    monkeypatch.setattr(sampling, "keeps_logits", lambda m: False)
    full = sampling.completion_logprobs(model, tok, prompts, completions, 5, add_eos=eos)
    assert torch.equal(sliced[1], full[1]) and sliced[1].min() >= 0
    assert torch.allclose(sliced[0], full[0], atol=1e-4, rtol=0)
    assert (sliced[0][sliced[1] > 0] < 0).all() and (sliced[0][sliced[1] == 0] == 0).all()


def test_panel_of_frozen_members_scores_as_each_member_alone(toy, tmp_path):
    """Reward models saved with one frozen body share its pass (iterdpo/panel.py) and score as each alone, bit
    for bit; a model with another body is grouped apart and scores as it does alone."""
    from iterdpo import panel, reward

    _, rm, tok, prompts = toy
    src = tmp_path / "src"
    rm.backbone.save_pretrained(src)
    tok.save_pretrained(src)
    paths = []
    for seed, layers in [(1, 1), (2, 1), (3, 0), (4, 1)]:
        torch.manual_seed(seed)
        m = reward.build(str(src), 16, 0.0, torch.float32, "cpu", "frozen", pooling="mean", layers=layers).eval()
        reward.save(m, tok, tmp_path / f"rm{seed}")
        paths.append(tmp_path / f"rm{seed}")
    assert panel.groups(paths) == [[0, 1, 3], [2]]
    responses = [" apple pear", "", " rain so 7 7"] * (len(prompts) // 3) + [" 7"] * (len(prompts) % 3)
    ended = [True, False] * (len(prompts) // 2) + [False] * (len(prompts) % 2)
    together = panel.score(paths, 16, torch.float32, tok, prompts, responses, ended, batch_size=4)
    alone = [reward.score(reward.load(p, 16, torch.float32, "cpu"), tok, prompts, responses, ended, batch_size=4)
             for p in paths]
    assert together == alone
    assert len({round(t[0], 5) for t in together}) == 4  # the heads really differ


# generation precision ------------------------------------------------------------------------------------------
def test_inference_precision_picks_bf16_only_where_the_cpu_has_amx(tmp_path, monkeypatch):
    from iterdpo import models
    from iterdpo.models import Precision, cpu_has_amx_bf16, inference_precision

    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_tile_x\n")
    assert cpu_has_amx_bf16(str(amx)) and not cpu_has_amx_bf16(str(plain))
    assert not cpu_has_amx_bf16(str(tmp_path / "missing"))
    fp32 = Precision(torch.float32, False, False)
    for has, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(models, "cpu_has_amx_bf16", lambda: has)
        assert inference_precision("auto", fp32, "cpu").dtype == want
    assert inference_precision("float32", fp32, "cpu") == fp32
    t4 = Precision(torch.float16, True, False)
    assert inference_precision("auto", t4, "cuda") == t4  # a GPU samples in the model's precision
    with pytest.raises(ValueError, match="float16 needs a GPU"):
        inference_precision("float16", fp32, "cpu")


def test_bf16_sampling_and_scoring_stay_close_to_fp32(toy, tmp_path):
    """The bf16 path runs end to end (prompt cache, sampling, grouped scoring) and moves rewards and
    log-probs by bf16 rounding only."""
    from iterdpo import reward
    from iterdpo.sampling import completion_logprobs, sample

    model, rm, toy_tokenizer, prompts = toy
    model16 = copy.deepcopy(model).to(torch.bfloat16)
    rm16 = copy.deepcopy(rm)
    rm16.backbone.to(torch.bfloat16)  # the head stays fp32, as reward.build leaves it
    recs = sample(model16, toy_tokenizer, prompts, 3, 8, batch_size=24, seed=1)
    assert all(len(r["responses"]) == 3 for r in recs)
    args = ([r["prompt"] for r in recs], [r["responses"] for r in recs], [r["ended"] for r in recs])
    r32 = torch.tensor(reward.score_grouped(rm, toy_tokenizer, *args, batch_size=9))
    r16 = torch.tensor(reward.score_grouped(rm16, toy_tokenizer, *args, batch_size=9))
    assert torch.corrcoef(torch.stack([r32.flatten(), r16.flatten()]))[0, 1] > 0.99
    flat = lambda key: [x for r in recs for x in r[key]]
    ps = [r["prompt"] for r in recs for _ in r["responses"]]
    l32, n = completion_logprobs(model, toy_tokenizer, ps, flat("responses"), 16, flat("ended"))
    l16, _ = completion_logprobs(model16, toy_tokenizer, ps, flat("responses"), 16, flat("ended"))
    gap = ((l32 - l16).abs() / n.clamp(min=1)).mean().item()
    assert 0 < gap < 0.05, gap  # bf16 changed the numbers, by rounding only
