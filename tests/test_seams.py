"""Each seam takes a new entry from one new module and nothing else: here a throwaway capability suite, pairing
strategy, sampler backend and world, each registered from this test module, accepted by the config (which reads
its choices from the registries) and run through its seam."""

from __future__ import annotations

import random

import pytest
import torch

from iterdpo import samplers, suites
from iterdpo.config import ConfigError, ModelConfig, load_preset
from iterdpo.models import Precision
from iterdpo.pairs import make_pairs
from iterdpo.registry import SAMPLERS, STRATEGIES, SUITES, WORLDS
from iterdpo.strategies import Strategy
from iterdpo.suites.base import Suite
from iterdpo.worlds import SeedData, World, world_of

FP32 = Precision(torch.float32, False, False)


@pytest.fixture
def registered():
    """Register (registry, name, entry) triples; each is removed after the test."""
    added = []

    def add(registry, name, entry):
        registry.register(name, entry)
        added.append((registry, name))
        return entry

    yield add
    for registry, name in added:
        registry.unregister(name)


def test_a_capability_suite_is_one_module(registered):
    def make(cfg, style, seed):
        rng = random.Random(seed)
        return [{"suite": "parity", "n": rng.randrange(100)} for _ in range(cfg.capability_n)]

    def score(model, tokenizer, items, cfg):  # a "model" that answers parity right for even numbers only
        return sum(it["n"] % 2 == 0 for it in items) / len(items)

    registered(SUITES, "parity", Suite(score=score, styles=frozenset({"toy", "chat"}), make=make))
    cfg = load_preset("tiny", {"eval.capability": ["probes", "parity"], "eval.capability_n": 40})
    items = suites.suite_items("parity", cfg.eval, "toy", seed=3)
    expected = sum(it["n"] % 2 == 0 for it in items) / 40
    scores = suites.capability_scores(None, None, load_preset("tiny", {"eval.capability": ["parity"],
                                                                       "eval.capability_n": 40}).eval, "toy", 3)
    assert scores == {"parity": expected, "capability_score": expected}
    registered(SUITES, "chat_only", Suite(score=score, make=make))
    with pytest.raises(ConfigError, match="cannot serve the toy world"):
        load_preset("tiny", {"eval.capability": ["chat_only"]})


def test_a_pairing_strategy_is_one_module(registered):
    def second_best(scores, cands, rng):  # the best against the second best: a hard pair
        order = sorted(cands, key=lambda i: scores[i], reverse=True)
        return order[0], order[1]

    registered(STRATEGIES, "best_vs_second", Strategy(second_best))
    cfg = load_preset("tiny", {"generation.strategy": "best_vs_second"})
    rec = {"prompt": "p", "responses": ["a", "b", "c"], "rewards": [0.1, 0.9, 0.5], "ended": [True] * 3,
           "n_tokens": [1, 1, 1]}
    pairs, dropped = make_pairs([rec], cfg.generation.strategy)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("b", "c")] and not dropped
    with pytest.raises(ConfigError, match="must be one of"):
        load_preset("tiny", {"generation.strategy": "best_vs_nothing"})


class EchoSampler:
    """Every response repeats the prompt's last word; log-probs count characters."""

    def __init__(self, path: str):
        self.path, self.tokenizer = path, None

    @classmethod
    def load(cls, path, mcfg, precision, batch_size):
        return cls(path)

    def sample(self, prompts, k, max_new_tokens, temperature=1.0, top_p=1.0, seed=0, greedy=False, desc=""):
        return [{"prompt": p, "responses": [p.split()[-1]] * k, "ended": [True] * k, "n_tokens": [1] * k}
                for p in prompts]

    def logprobs(self, prompts, completions, add_eos=None, desc=""):
        return torch.tensor([-float(len(c)) for c in completions]), torch.ones(len(completions))

    def close(self):
        pass


def test_a_sampler_backend_is_one_module(registered):
    registered(SAMPLERS, "echo", EchoSampler)
    cfg = load_preset("tiny", {"generation.backend": "echo", "eval.backend": "echo"})
    policy = samplers.load(cfg.generation.backend, "somewhere", ModelConfig(), FP32, 8)
    assert policy.sample(["list 3 fruit"], 2, 4) == [{"prompt": "list 3 fruit", "responses": ["fruit", "fruit"],
                                                      "ended": [True, True], "n_tokens": [1, 1]}]
    assert policy.logprobs(["x"], ["abc"])[0].tolist() == [-3.0]
    with pytest.raises(ValueError, match="expected one of"):
        samplers.load("nope", "somewhere", ModelConfig(), FP32, 8)


class Parrot(World):
    """A world whose best reply repeats the prompt: its oracle is the share of the prompt's words repeated."""

    def seed_data(self, cfg, tokenizer, base):
        prompts = [f"say {w}" for w in ("apple", "river", "cloud", "amber")]
        pairs = [{"prompt": p, "chosen": p.split()[1], "rejected": "no", "source": "seed"} for p in prompts]
        return SeedData(pairs[1:], pairs[:1], prompts[:1], prompts[1:], {"skipped": {}})

    def oracle(self, prompt, response, ended=True):
        words = prompt.split()[1:]
        return sum(w in response.split() for w in words) / len(words)


def test_a_world_is_one_module(registered):
    registered(WORLDS, "parrot", Parrot)
    cfg = load_preset("tiny", {"data.source": "parrot", "data.path": ["unused"], "model.name_or_path": "somewhere"})
    world = world_of(cfg)
    assert isinstance(world, Parrot) and world.has_oracle and world.style == "chat"
    train, heldout, held_prompts, gen_prompts, m = world.seed_data(cfg, None, "")
    assert [world.oracle(p["prompt"], p["chosen"]) for p in train] == [1.0, 1.0, 1.0]
    assert world.oracle("say apple", "no") == 0.0 and world.example_prompts(cfg, 2)
    with pytest.raises(ConfigError, match="needs data.path"):  # the world's own check, when the config is built
        load_preset("tiny", {"data.source": "parrot", "model.name_or_path": "somewhere"})
