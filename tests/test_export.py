"""iterdpo.export: best/ after a tiny run is a model plain transformers loads and generates with, and its card
holds the run's decisions and metrics; iterdpo.notebook: the one-line readiness checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from iterdpo import export, notebook
from iterdpo.config import load_preset
from iterdpo.folder import write_json
from iterdpo.runfolder import RunFolder

PLAIN_LOAD = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
enc = tok.apply_chat_template([{"role": "user", "content": "list 3 fruit"}], add_generation_prompt=True,
                              return_dict=True, return_tensors="pt")
out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
new = out[0, enc["input_ids"].shape[1]:]
assert "iterdpo" not in sys.modules
print(len(new), repr(tok.decode(new, skip_special_tokens=True)))
"""


@pytest.fixture(scope="module")
def exported(tiny_run):
    cfg, summary = tiny_run("export", rounds=1)
    return cfg, summary, export.export_best(cfg)


def test_best_holds_the_best_round_with_its_adapter(exported) -> None:
    cfg, summary, best = exported
    rf = RunFolder(cfg.out)
    assert best == rf.best and (best / "config.json").exists() and list(best.glob("*.safetensors"))
    record = json.loads((best / "export.json").read_text())
    assert record["round"] == summary["best_round"] == export.best_round(cfg.out)
    if rf.adapter(record["round"]).exists():
        assert (best / "adapter" / "adapter_config.json").exists()


def test_plain_transformers_loads_and_generates(exported) -> None:
    _, _, best = exported
    done = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(best)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    n_new = int(done.stdout.split()[0])
    assert n_new >= 1


def test_model_card_has_the_runs_metrics_and_decisions(exported) -> None:
    cfg, summary, best = exported
    card = (best / "README.md").read_text()
    last = summary["rounds"][-1]
    assert f"| round {last['round']} |" in card and f"{last['metrics']['win_rate_vs_sft']:.3f}" in card
    assert f"| {last['round']} | {last['decision']} |" in card
    assert "AutoModelForCausalLM.from_pretrained" in card and "import iterdpo" not in card
    assert "dpo:" in card and f"seed: {cfg.seed}" in card  # the config


def test_export_again_keeps_the_folder_and_the_hub_step_is_off_or_skipped(exported) -> None:
    cfg, _, best = exported
    before = (best / "export.json").stat().st_mtime_ns
    export.export_best(cfg)
    assert (best / "export.json").stat().st_mtime_ns == before
    assert export.push_note(cfg).startswith("push_to_hub is off")


def test_push_to_hub_offline_is_one_line(exported, monkeypatch) -> None:
    cfg, _, _ = exported
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = export.push_to_hub(cfg.replace(**{"export.push_to_hub": True}))
    assert line.startswith("push_to_hub skipped") and "\n" not in line


def test_chat_under_papermill_answers_fixed_prompts(exported) -> None:
    cfg, _, _ = exported
    table = export.chat(cfg, live=False)
    assert list(table.index) == export.example_prompts(cfg) and table["model"].map(type).eq(str).all()
    assert table["model"].str.len().gt(0).any()


def test_the_model_card_names_no_local_path(exported) -> None:
    cfg, _, best = exported
    card = (best / "README.md").read_text()
    assert f'from_pretrained("{export.LOCAL_PLACEHOLDER}")' in card
    assert str(best) not in card and str(Path(cfg.out).resolve()) not in card and "/tmp" not in card
    pushed = export.model_card(cfg.replace(**{"export.push_to_hub": True, "export.hub_model_id": "me/iterdpo-toy"}))
    assert 'from_pretrained("me/iterdpo-toy")' in pushed and export.LOCAL_PLACEHOLDER not in pushed
    assert 'from_pretrained("you/found-it")' in export.model_card(cfg, repo="you/found-it")  # the repo pushed to


def test_the_model_card_gives_the_kl_matched_verdict(exported) -> None:
    cfg, summary, best = exported
    card, km = (best / "README.md").read_text(), summary["yardstick"]["kl_matched"]
    assert "## Against offline DPO at the same KL" in card and f"{km['lead']:+.3f} ± {km['lead_se']:.3f}" in card
    assert km["verdict"] in card and km["verdict"] in ("loop_ahead", "tie", "offline_ahead")
    assert km["frontier"][0]["label"] == "SFT" and len(km["frontier"]) >= 2


def test_a_conversation_goes_into_the_chat_template(toy_tokenizer) -> None:
    turns = [{"role": "user", "content": "list 2 fruit"}, {"role": "assistant", "content": "apple pear"},
             {"role": "user", "content": "add 2 3"}]
    assert export.render_chat(toy_tokenizer, turns) == "user: list 2 fruit\nassistant: apple pear\nuser: add 2 3\nassistant:"

    class Plain:  # a tokenizer without a chat template: the HH-RLHF transcript
        chat_template = None

    assert export.render_chat(Plain(), turns[:2]) == "\n\nHuman: list 2 fruit\n\nAssistant: apple pear\n\nAssistant:"


def test_chat_streams_multi_turn_replies_within_the_models_positions(exported) -> None:
    cfg, _, best = exported
    bot = export.Chat(best, seed=cfg.seed)
    limit = bot.model.config.max_position_embeddings
    pieces = list(bot.stream("list 3 fruit"))
    assert bot.max_new_tokens == 256 and pieces and "".join(pieces).strip() == bot.reply("list 3 fruit")
    history = [{"role": "user", "content": "list 3 fruit"}, {"role": "assistant", "content": bot.reply("list 3 fruit")}]
    enc, new = bot.encode([*history, {"role": "user", "content": "add 2 3"}])
    text = bot.tok.decode(enc["input_ids"][0])
    assert "list 3 fruit" in text and text.rstrip().endswith("add 2 3 assistant:")  # both turns, in order
    long = history * 20 + [{"role": "user", "content": "add 2 3"}]
    enc, new = bot.encode(long)  # the oldest exchanges go first, the last message stays
    assert new == min(256, limit // 2) and enc["input_ids"].shape[1] + new <= limit
    assert bot.tok.decode(enc["input_ids"][0]).rstrip().endswith("add 2 3 assistant:")
    assert isinstance(bot.reply("add 2 3", history), str)


def test_the_live_chat_box_keeps_the_conversation(exported, monkeypatch) -> None:
    cfg, _, _ = exported
    seen, stream = [], export.Chat.stream

    def spy(self, text, history=()):
        seen.append([*history, text])
        yield from stream(self, text, history)

    monkeypatch.setattr(export.Chat, "stream", spy)
    ui = export.chat(cfg, live=True, max_new_tokens=8)
    (box, clear), log = ui.children[0].children, ui.children[1]
    box.value = "list 3 fruit"
    first = log.value
    box.value = "add 2 3"
    assert box.value == "" and log.value.startswith(first) and "add 2 3" in log.value[len(first):]
    assert seen[0] == ["list 3 fruit"] and len(seen[1]) == 3 and seen[1][0]["content"] == "list 3 fruit"
    clear.click()
    box.value = "repeat apple"
    assert seen[-1] == ["repeat apple"] and "list 3 fruit" not in log.value  # a new chat starts empty


def test_best_has_a_gguf_that_transformers_loads_and_generates(exported) -> None:
    """The toy world's word-level tokenizer cannot be stated in GGUF (tests/test_gguf.py covers a byte-level BPE,
    whose tokenizer goes in): the weights come from best/model.gguf, the tokenizer from best/."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, _, best = exported
    assert cfg.export.gguf and (best / export.GGUF_FILE).stat().st_size > 0
    tok = AutoTokenizer.from_pretrained(best)
    plain = AutoModelForCausalLM.from_pretrained(best, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(best, gguf_file=export.GGUF_FILE, dtype=torch.float32).eval()
    enc = tok(export.render_chat(tok, [{"role": "user", "content": "list 3 fruit"}]), return_tensors="pt")
    with torch.no_grad():
        want, got = plain(**enc).logits, model(**enc).logits
    assert (got - want).abs().max().item() < 1e-2  # f16 weights: measured 1e-3 on logits of about 10
    out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    ref = plain.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > enc["input_ids"].shape[1] and out.tolist() == ref.tolist()


# ------------------------------------------------------------------ is the run ready for a notebook

def _decide(rf: RunFolder, rnd: int, decision: str = "continue", stop: bool = False) -> None:
    (rf.generate(rnd)).mkdir(parents=True, exist_ok=True)
    write_json(rf.generate(rnd) / "metrics.json", {})
    with open(rf.decisions_path, "a") as f:
        f.write(json.dumps({"round": rnd, "decision": decision, "stop": stop, "best_round": rnd}) + "\n")


def _stages(rf: RunFolder, *names: str) -> None:
    for d in [rf.stage(n) if n != "round_0" else rf.eval(0) for n in names]:
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "metrics.json", {})


def test_each_notebook_names_the_one_to_run_first(tmp_path: Path) -> None:
    cfg = load_preset("tiny", {"out": str(tmp_path), "rounds": 2})
    rf = RunFolder(tmp_path)
    assert notebook.missing(cfg, "01_sft") is None and notebook.missing(cfg, "00_quickstart") is None
    assert notebook.missing(cfg, "02_reward_model").startswith("run 01_sft first")
    _stages(rf, "sft")
    assert notebook.missing(cfg, "02_reward_model") is None
    assert notebook.missing(cfg, "03_synthetic_preferences", 1).startswith("run 02_reward_model first")
    _stages(rf, "reward", "round_0")
    assert notebook.missing(cfg, "03_synthetic_preferences", 1) is None
    assert notebook.missing(cfg, "04_dpo_round", 1) == "run 03_synthetic_preferences with round=1 first"
    assert notebook.missing(cfg, "04_dpo_round", None, "offline_dpo").startswith("run the rounds first")
    assert "expected one of" in notebook.missing(cfg, "04_dpo_round", 1, "offline")


def test_a_round_that_does_not_follow_is_refused_in_one_line(tmp_path: Path) -> None:
    cfg = load_preset("tiny", {"out": str(tmp_path), "rounds": 2})
    rf = RunFolder(tmp_path)
    assert "round 0 is the SFT policy" in notebook.round_problem(cfg, 0)
    assert "run 03_synthetic_preferences with round=1 next" in notebook.round_problem(cfg, 2)
    _decide(rf, 1)
    _decide(rf, 2, "stop_budget", stop=True)
    assert notebook.round_problem(cfg, 2) is None  # done: the stages skip it
    assert "past this run's rounds=2" in notebook.round_problem(cfg, 3)
    assert notebook.round_problem(cfg.replace(rounds=3), 3) is None  # more rounds asked for: round 3 follows
    assert "does not follow" in notebook.round_problem(cfg.replace(rounds=5), 5)
    for why in (notebook.round_problem(cfg, r) for r in (0, 3, 5)):
        assert "\n" not in why


def test_notready_renders_as_one_line() -> None:
    assert notebook.NotReady("run 01_sft first")._render_traceback_() == ["NotReady: run 01_sft first"]


def test_injected_parameters_are_checked_against_the_parameters_cell() -> None:
    history = ["", 'preset = "auto"\nout = "runs/colab"\nround = 1', '# Parameters\npreset = "tiny"\nrounds = 3\n']
    assert notebook.injected(history) == ({"preset", "rounds"}, {"preset", "out", "round"})
    assert notebook.injected(["", "x = 1"]) is None


# ------------------------------------------------------------------ best/ is a view nobody can write through

def _bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_writing_into_best_leaves_the_rounds_files_alone(exported) -> None:
    """Issue 28 item 7: a tokenizer saved into best/ (or any file of it opened for writing) once rewrote the
    round's own files through a hard link."""
    from transformers import AutoTokenizer

    cfg, _, best = exported
    rf = RunFolder(cfg.out)
    rnd = export.best_round(cfg.out)
    sources = [rf.policy(rnd), *([rf.adapter(rnd)] if rf.adapter(rnd).exists() else [])]
    before = [_bytes(s) for s in sources]
    tok = AutoTokenizer.from_pretrained(str(best))
    tok.add_tokens(["<a-new-word>"])
    tok.save_pretrained(str(best))
    for p in best.rglob("*"):
        if p.is_file():
            with open(p, "r+b") as f:  # write in place, as a careless editor or an in-place save would
                f.write(b"\0")
    try:
        assert [_bytes(s) for s in sources] == before
    finally:  # the other tests read an untouched best/
        import shutil

        shutil.rmtree(best)
        export.export_best(cfg)
