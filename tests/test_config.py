import pytest

from iterdpo.config import ConfigError, RunConfig, apply_overrides, load_preset, parse_override


@pytest.mark.parametrize("preset", ["tiny", "smollm2-hh", "t4"])
def test_presets_load_and_round_trip(preset, tmp_path):
    cfg = load_preset(preset)
    assert cfg.preset == preset
    cfg.to_json(tmp_path / "c.json")
    assert RunConfig.from_file(tmp_path / "c.json") == cfg
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    assert RunConfig.from_file(tmp_path / "c.yaml") == cfg


def test_overrides_parse_and_apply():
    assert parse_override("dpo.beta=0.2") == ("dpo.beta", 0.2)
    cfg = load_preset("tiny", dict([parse_override("dpo.beta=0.25"), parse_override("dpo.learning_rate=5e-4"),
                                    parse_override("dpo.loss_type=[sigmoid, sft]")]))
    assert cfg.dpo.beta == 0.25 and cfg.dpo.learning_rate == 5e-4  # '5e-4' is a string to YAML 1.1: coerced
    assert cfg.dpo.loss_type == ["sigmoid", "sft"]


@pytest.mark.parametrize("key,value,fragment", [
    ("dpo.beta", -1.0, "dpo.beta"),
    ("generation.k", 1, "generation.k"),
    ("generation.strategy", "best", "must be one of"),
    ("dpo.loss_weights", [1.0, 2.0], "one weight per loss_type"),
    ("dpo.bogus", 1, "unknown field"),
    ("nosuch.field", 1, "unknown config key"),
    ("rounds", 0, "rounds"),
    ("dpo.max_steps", "many", "expected int"),
])
def test_bad_values_raise_clear_errors(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        apply_overrides(RunConfig(), {key: value})


def test_unknown_preset_lists_known():
    with pytest.raises(ConfigError, match="tiny"):
        load_preset("nope")


def test_toy_source_needs_toy_model():
    with pytest.raises(ConfigError, match="toy"):
        apply_overrides(RunConfig(), {"model.name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"})
