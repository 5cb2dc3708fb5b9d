"""Runs that keep LoRA adapters instead of merged weights (model.merged best, iterdpo.weights): the policies rebuilt
from the adapters are the ones the stages trained, and such a run rolls back, repairs and exports as before."""

import json

import pytest
import torch
from safetensors.torch import load_file

from iterdpo import weights
from iterdpo.config import ModelConfig, load_preset
from iterdpo.models import Precision
from iterdpo.runfolder import RunFolder, StageFiles


def test_the_t4_preset_keeps_adapters_and_the_default_merged_weights():
    assert load_preset("t4").model.merged == "best"
    assert ModelConfig().merged == "all" and load_preset("tiny").model.merged == "all"


def test_a_rebuilt_policy_is_the_merged_policy_bit_for_bit(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "start")
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")),
                                  unk_token="[UNK]", eos_token="a")
    tok.save_pretrained(tmp_path / "start")
    model = get_peft_model(LlamaForCausalLM.from_pretrained(tmp_path / "start"),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # a trained step (B starts at zero)
            torch.nn.init.normal_(p, std=0.5)
    model.save_pretrained(tmp_path / "adapter")
    want = model.merge_and_unload().state_dict()

    out = weights.merge_adapter(str(tmp_path / "start"), tmp_path / "adapter", ModelConfig(),
                                Precision(torch.float32, False, False), tmp_path / "rebuilt")
    got = load_file(str(out / "model.safetensors"))
    assert set(got) <= set(want) and all(torch.equal(got[k], want[k]) for k in got)
    assert (out / "tokenizer.json").exists()  # loadable as a plain folder


def test_the_cache_is_one_folder_per_run_whichever_path_leads_to_it(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "run")  # runs/ -> Drive on Colab
    assert weights.cache_dir(tmp_path / "link") == weights.cache_dir(tmp_path / "run")
    assert weights.cache_dir(tmp_path / "run") != weights.cache_dir(tmp_path)


def _merged_files(run: RunFolder) -> list[str]:
    """Merged weights in the run folder outside best/, from the rounds on (the base and reward models are not
    policies; the scenarios copy base to round 0 from stages shared with other tests, made with merged weights)."""
    return sorted(str(p.relative_to(run.root)) for p in run.root.rglob("*.safetensors")
                  if p.name != "adapter_model.safetensors"
                  and p.parts[len(run.root.parts)] not in ("best", "base", "sft", "reward"))


def _figures(summary: dict) -> str:
    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if "seconds" not in k and "elapsed" not in k}
        return [strip(v) for v in o] if isinstance(o, list) else o
    return json.dumps(strip(summary), sort_keys=True)


@pytest.mark.integration
def test_a_run_keeping_adapters_rolls_back_like_one_keeping_merged_weights(tiny_run):
    scenario = dict(rounds=3, dpo__schedule={2: {"learning_rate": 0.05}}, baseline__offline_dpo=False)
    cfg_all, summary_all = tiny_run("merged_all", **scenario)
    cfg, summary = tiny_run("merged_best", model__merged="best", **scenario)
    run = RunFolder(cfg.out)
    d = run.decisions()
    assert d[2]["decision"] == "rollback" and summary["rounds"][3]["start_round"] == d[2]["best_round"] != 2
    assert _figures(summary) == _figures(summary_all)  # the same figures, rollback included
    assert _merged_files(RunFolder(cfg_all.out)) and not _merged_files(run)
    for r in (1, 2, 3):
        assert run.adapter(r).exists() and not StageFiles(run.adapter(r).parent).policy.exists()
        assert weights.cache_dir(run.root) in run.policy(r).parents  # rebuilt outside the run
    exported, rebuilt = (load_file(str(p / "model.safetensors")) for p in (run.best, run.policy(summary["best_round"])))
    assert exported.keys() == rebuilt.keys() and all(torch.equal(exported[k], rebuilt[k]) for k in rebuilt)


@pytest.mark.integration
def test_a_repaired_round_keeps_its_scaled_adapter_and_is_rebuilt_as_the_repair_made_it(tiny_run):
    cfg, summary = tiny_run("merged_repair", rounds=1, controller__max_kl=0.001, model__merged="best",
                            baseline__frontier_betas=[])
    run = RunFolder(cfg.out)
    assert not _merged_files(run)
    for rnd in (1, "offline_dpo"):
        if not run.repaired(rnd):
            continue
        files = StageFiles(run.repair(rnd))
        assert files.adapter.exists() and not files.policy.exists()
        alpha = run.metrics(run.repair(rnd))["alpha"]
        start, trained = load_file(str(run.policy(0) / "model.safetensors")), load_file(str(run.trained_policy(rnd) / "model.safetensors"))
        got = load_file(str(run.policy(rnd) / "model.safetensors"))
        assert all(torch.equal(got[k], weights.interpolate_state(start, trained, alpha)[k]) for k in got)
    assert run.repaired(1) or run.repaired("offline_dpo")  # the scenario repairs (test_scenarios measured it)


@pytest.mark.parametrize("layers", [0, 1])
def test_a_lora_reward_model_kept_as_its_adapter_scores_as_it_trained(tmp_path, layers):
    from peft import LoraConfig
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from iterdpo import reward

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4)
    base = tmp_path / "run" / "base" / "model"
    LlamaForCausalLM(cfg).save_pretrained(base)
    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate("a b c d".split())}}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")),
                                  unk_token="[UNK]", pad_token="[PAD]", eos_token="d")
    tok.save_pretrained(base)
    rm = reward.build(str(base), 16, 0.0, torch.float32, "cpu", "lora",
                      LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="FEATURE_EXTRACTION"),
                      layers=layers)
    for name, p in rm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    texts = (["a b", "c"], ["b c a", "a"])
    want = reward.score(rm.eval(), tok, *texts)
    dest = tmp_path / "run" / "reward" / "model"
    reward.save(rm, tok, dest, adapter_only=True, base=str(base), layers=layers)
    assert not list(dest.glob("model*.safetensors")) and (dest / "adapter_model.safetensors").exists()
    moved = tmp_path / "moved"
    (tmp_path / "run").rename(moved)  # the base is found relative to the adapter: the run can move
    got = reward.score(reward.load(moved / "reward" / "model", 16, torch.float32, "cpu"), tok, *texts)
    assert got == pytest.approx(want, abs=1e-5)
