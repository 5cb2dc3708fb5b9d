"""The repair of a gate-failing round (iterdpo.repair): the interpolation, when it applies, where it points."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from iterdpo import repair
from iterdpo.config import ControllerConfig, load_preset
from iterdpo.controller.gates import needs_repair
from iterdpo.folder import write_json
from iterdpo.runfolder import RunFolder, StageFiles


def test_interpolation_is_exact_at_the_ends_and_linear_between():
    g = torch.Generator().manual_seed(0)
    start = {"w": torch.randn(4, 3, generator=g), "h": torch.randn(5, generator=g).half(), "n": torch.tensor([1, 2])}
    end = {"w": torch.randn(4, 3, generator=g), "h": torch.randn(5, generator=g).half(), "n": torch.tensor([3, 4])}
    assert torch.equal(repair.interpolate_state(start, end, 0.0)["w"], start["w"])
    assert torch.equal(repair.interpolate_state(start, end, 1.0)["w"], end["w"])
    mid = repair.interpolate_state(start, end, 0.25)
    assert torch.allclose(mid["w"], 0.75 * start["w"] + 0.25 * end["w"], atol=1e-6)
    assert mid["h"].dtype == torch.float16  # stored in the end's dtype
    assert torch.allclose(mid["h"].float(), 0.75 * start["h"].float() + 0.25 * end["h"].float(), atol=1e-3)
    assert torch.equal(mid["n"], end["n"])  # integer buffers are not interpolated


@pytest.mark.parametrize("start, end, fragment", [
    ({"a": torch.zeros(2)}, {"b": torch.zeros(2)}, "differ in tensors"),
    ({"a": torch.zeros(2)}, {"a": torch.zeros(3)}, "shape"),
    ({"a": torch.zeros(2)}, {"a": torch.tensor([0.0, float("inf")])}, "non-finite"),
])
def test_interpolation_refuses_what_it_cannot_mix(start, end, fragment):
    with pytest.raises(ValueError, match=fragment):
        repair.interpolate_state(start, end, 0.5)


def test_interpolate_writes_a_loadable_policy_folder(tmp_path):
    for name, v in (("start", 0.0), ("end", 2.0)):
        (tmp_path / name).mkdir()
        save_file({"w": torch.full((3,), v)}, str(tmp_path / name / "model.safetensors"), metadata={"format": "pt"})
        (tmp_path / name / "config.json").write_text(f'{{"from": "{name}"}}')
    out = repair.interpolate(tmp_path / "start", tmp_path / "end", 0.25, tmp_path / "mix")
    assert torch.equal(load_file(str(out / "model.safetensors"))["w"], torch.full((3,), 0.5))
    assert (out / "config.json").read_text() == '{"from": "end"}'
    (tmp_path / "start" / "model.safetensors").rename(tmp_path / "start" / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="sharded differently"):
        repair.interpolate(tmp_path / "start", tmp_path / "end", 0.25, tmp_path / "mix2")


def test_a_repair_is_needed_for_a_capability_or_kl_failure_only():
    cfg = ControllerConfig()
    ok = {"capability_retention": 1.0, "capability_retention_se": 0.02, "kl_to_reference": 0.05, "win_rate_vs_sft": 0.7}
    assert not needs_repair(ok, cfg)
    assert needs_repair({**ok, "capability_retention": 0.7}, cfg)
    assert needs_repair({**ok, "kl_to_reference": 0.5}, cfg)
    assert not needs_repair({**ok, "capability_retention": 0.7}, ControllerConfig(repair_alphas=[]))
    assert not needs_repair({**ok, "capability_retention": 0.7, "collapsing": True}, cfg)  # a rollback, not a repair
    assert not needs_repair({**ok, "capability_retention": 0.7, "base_perplexity_ratio_vs_sft": 3.0}, cfg)
    assert not needs_repair({**ok, "win_rate_vs_sft": 0.3}, cfg)  # weak alignment is not repaired by stepping back


def test_a_kept_repair_stands_for_the_round(tmp_path):
    run = RunFolder(tmp_path)
    assert run.policy(1) == run.trained_policy(1) == StageFiles(run.dpo(1)).policy
    assert run.eval(1) == run.trained_eval(1)
    run.repair(1).mkdir(parents=True)
    write_json(StageFiles(run.repair(1)).metrics, {"alpha": None, "tried": []})
    assert not run.repaired(1) and run.policy(1) == run.trained_policy(1)  # nothing passed: the round as trained
    write_json(StageFiles(run.repair(1)).metrics, {"alpha": 0.5, "tried": []})
    assert run.repaired(1)
    assert run.policy(1) == StageFiles(run.repair(1)).policy and run.eval(1) == run.repair(1) / "eval"
    assert run.trained_policy(1) == StageFiles(run.dpo(1)).policy and run.trained_eval(1) == run.round_dir(1) / "eval"
    assert not run.repaired("offline_dpo") and not run.repaired(0)


def test_the_repair_setting_is_on_by_default_in_every_preset():
    for preset in ("tiny", "smollm2-sentiment", "smollm2-hh"):
        assert load_preset(preset).controller.repair_alphas == [0.5, 0.25]


def test_the_scaled_adapter_merged_into_the_start_is_the_repaired_policy(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "start")
    model = get_peft_model(LlamaForCausalLM.from_pretrained(tmp_path / "start"),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # a trained step (B starts at zero)
            torch.nn.init.normal_(p, std=0.5)
    model.save_pretrained(tmp_path / "adapter")
    model.merge_and_unload().save_pretrained(tmp_path / "trained")

    assert repair.scale_adapter(tmp_path / "adapter", 0.25, tmp_path / "scaled") == tmp_path / "scaled"
    merged = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tmp_path / "start"), tmp_path / "scaled")
    got = merged.merge_and_unload().state_dict()
    want = repair.interpolate(tmp_path / "start", tmp_path / "trained", 0.25, tmp_path / "mix")
    want = load_file(str(want / "model.safetensors"))
    assert max((got[k] - want[k]).abs().max().item() for k in want) < 1e-5
    assert repair.scale_adapter(tmp_path / "nothing", 0.25, tmp_path / "none") is None


def test_a_run_started_before_the_repair_existed_resumes_without_it(tmp_path):
    cfg = load_preset("tiny", {"out": str(tmp_path)})
    old = cfg.to_dict()
    del old["controller"]["repair_alphas"]
    write_json(tmp_path / "config.json", old)
    assert RunFolder(tmp_path).config().controller.repair_alphas == []  # both arms alike: neither is repaired
    write_json(tmp_path / "config.json", cfg.to_dict())
    assert RunFolder(tmp_path).config().controller.repair_alphas == [0.5, 0.25]
