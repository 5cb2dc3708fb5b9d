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


# issue 12, item 8: everything that can be checked before a model loads is checked at construction ------
import dataclasses  # noqa: E402

from iterdpo.config import DPO_LOSS_TYPES, SECTIONS  # noqa: E402

FLOAT_FIELDS = [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls) if f.type == "float"]


@pytest.mark.parametrize("key", FLOAT_FIELDS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", ".inf", ".nan"])
def test_every_float_field_rejects_non_finite_values(key, value):
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')}=.*must be a finite number"):
        apply_overrides(RunConfig(), dict([parse_override(f"{key}={value}")]))


@pytest.mark.parametrize("override,fragment", [
    ("sft.learning_rate=0", r"sft\.learning_rate=0\.0: must be > 0"),
    ("reward.learning_rate=0", r"reward\.learning_rate=0\.0: must be > 0"),
    ("dpo.learning_rate=0", r"dpo\.learning_rate=0\.0: must be > 0"),
    ("toy.pretrain_lr=0", r"toy\.pretrain_lr=0\.0: must be > 0"),
    ("dpo.beta=inf", r"dpo\.beta=inf: must be a finite number"),
    ("dpo.loss_type=bogus", r"dpo\.loss_type='bogus': not a TRL loss type"),
    ("dpo.loss_type=[sigmoid, bogus]", r"dpo\.loss_type='bogus'"),
    ("dpo.loss_type=exo_pair", r"label_smoothing"),
    ("dpo.schedule={2: {beta: 0}}", r"dpo\.schedule\[2\]\.beta=0\.0: must be >= 1e-06"),
    ("dpo.schedule={2: {beta: .inf}}", r"dpo\.schedule\[2\]\.beta=inf: must be a finite number"),
    ("dpo.schedule={2: {learning_rate: 0}}", r"dpo\.schedule\[2\]\.learning_rate=0\.0: must be > 0"),
    ("dpo.schedule={2: {learning_rate: .nan}}", r"dpo\.schedule\[2\]\.learning_rate=nan"),
    ("dpo.schedule={2: {max_steps: 0}}", r"dpo\.schedule\[2\]\.max_steps=0: must be >= 1"),
    ("dpo.schedule={2: {max_steps: 2.5}}", r"dpo\.schedule\[2\]\.max_steps=2\.5: expected int"),
    ("dpo.schedule={0: {beta: 0.2}}", r"dpo\.schedule=0: keys are round numbers >= 1"),
    ("dpo.schedule={-1: {beta: 0.2}}", r"dpo\.schedule=-1"),
    ("dpo.schedule={1.5: {beta: 0.2}}", r"dpo\.schedule=1\.5"),
    ("dpo.schedule={x: {beta: 0.2}}", r"dpo\.schedule='x'"),
    ("dpo.schedule={2: {gamma: 1}}", r"each round maps to a dict"),
    ("dpo.loss_weights=[.nan]", r"dpo\.loss_weights=nan"),
    ("model.lora_r=100000", r"model\.lora_r=100000: must be <= 1024"),
    ("eval.capability=[nosuchsuite]", r"eval\.capability='nosuchsuite': unknown suite"),
    ("eval.capability_paths={nosuch: x.jsonl}", r"eval\.capability_paths='nosuch'"),
    ("seed=abc", r"seed='abc': must be an integer from 0"),
    ("seed=-1", r"seed=-1: must be an integer from 0"),
    ("seed=2.5", r"seed=2\.5"),
    ("seed=true", r"seed=True"),
    ("seed=99999999999", r"seed=99999999999"),
    ("out=null", r"out=None: must name a run folder"),
    ("out=''", r"out='': must name a run folder"),
    ("rounds=1001", r"rounds=1001"),
    ("generation.batch_size=1e12", r"generation\.batch_size=1000000000000: must be <= 65536"),  # a string to YAML 1.1
    ("generation.batch_size=1.0e+12", r"generation\.batch_size=1000000000000: must be <= 65536"),
    ("generation.batch_size=2.5", r"generation\.batch_size=2\.5: expected int"),
    ("generation.max_new_tokens=1e9", r"generation\.max_new_tokens=1000000000: must be <= 32768"),
    ("generation.max_new_tokens=1000000000", r"generation\.max_new_tokens=1000000000: must be <= 32768"),
    ("generation.k=1000", r"generation\.k=1000: must be <= 64"),
    ("eval.capability_n=10000000", r"eval\.capability_n=10000000: must be <= 100000"),
    ("data.heldout_pairs=100000000", r"data\.heldout_pairs=100000000: must be <= 1000000"),
    ("controller.repair_alphas=[1.0]", r"controller\.repair_alphas=1\.0: each alpha must be a number in \(0, 1\)"),
    ("controller.repair_alphas=[0.5, nan]", r"controller\.repair_alphas=nan: each alpha"),
    ("controller.repair_alphas=[0.5, x]", r"controller\.repair_alphas='x': each alpha"),
    ("controller.repair_alphas=[0.25, 0.5]", r"controller\.repair_alphas=\[0\.25, 0\.5\]: must be strictly decreasing"),
])
def test_invalid_values_are_rejected_at_construction(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_preset("tiny", dict([parse_override(override)]))


def test_valid_edge_values_pass_and_round_trip(tmp_path):
    cfg = load_preset("tiny", {"dpo.schedule": {"3": {"beta": "0.3", "learning_rate": "5e-4", "max_steps": 4}},
                               "dpo.loss_type": ["sigmoid", "sft"], "seed": 0, "eval.capability": ["probes"]})
    assert cfg.dpo.schedule == {3: {"beta": 0.3, "learning_rate": 5e-4, "max_steps": 4}}
    cfg.to_json(tmp_path / "c.json")
    assert RunConfig.from_file(tmp_path / "c.json") == cfg


def test_loss_types_are_trls():
    """DPO_LOSS_TYPES is TRL's list (DPOConfig.loss_type's help), so a new TRL loss type is noticed here."""
    import re

    from trl import DPOConfig

    help_text = next(f for f in dataclasses.fields(DPOConfig) if f.name == "loss_type").metadata["help"]
    assert set(DPO_LOSS_TYPES) == set(re.findall(r"`'(\w+)'`", help_text))


def test_the_config_reads_its_choices_from_the_registries():
    from iterdpo.registry import SAMPLERS, STRATEGIES, SUITES, WORLDS

    assert {"probes", "gsm8k", "mmlu", "arc"} <= set(SUITES.names())
    assert {"toy", "sentiment", "hh", "pairs"} <= set(WORLDS.names())
    assert {"hf", "vllm"} <= set(SAMPLERS.names()) and "max_min" in STRATEGIES
    with pytest.raises(ConfigError, match="unknown suite"):
        load_preset("tiny", {"eval.capability": ["probes", "nope"]})
    with pytest.raises(ConfigError, match="cannot serve the toy world"):  # refused when the config is built
        load_preset("tiny", {"eval.capability": ["gsm8k"]})


def test_help_text_states_the_bounds():
    from iterdpo.config import field_help

    assert field_help("generation")["batch_size"].endswith("(range: >= 1, <= 65_536)")
    assert field_help("dpo")["learning_rate"].endswith("(range: > 0.0)")


@pytest.mark.parametrize("text,fragment", [
    ("model: [\n  oops", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping of sections"),
    ("dpo: 5\n", "dpo: expected a mapping of field: value"),
    ("dpo:\n  beta: .nan\n", "dpo.beta=nan: must be a finite number"),
    ("nosection: {}\n", "unknown config key"),
])
def test_a_bad_yaml_preset_is_named(tmp_path, text, fragment):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_preset(str(path))
    assert str(err.value).startswith(f"{path}: ") and fragment in str(err.value) and "\n" not in str(err.value)


def test_lora_targets_are_checked_against_the_loaded_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    from iterdpo.models import check_lora_targets

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    check_lora_targets(model, ["q_proj", "v_proj", "down_proj"], "the base model")
    with pytest.raises(ConfigError, match=r"\['nope_proj'\] not in the base model; its linear layers are .*'q_proj'"):
        check_lora_targets(model, ["q_proj", "nope_proj"], "the base model")
