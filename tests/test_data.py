import gzip
import json

import pytest

from iterdpo.data import DataError, Skips, load_pairs, render_prompt, split_heldout, split_hh


def test_split_hh_multi_turn():
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: fine, thanks"
    messages, reply = split_hh(text)
    assert messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                        {"role": "user", "content": "how are you?"}]
    assert reply == "fine, thanks"


def test_split_hh_unicode():
    messages, reply = split_hh("\n\nHuman: ¿Qué tal? 你好 🙂\n\nAssistant: Très bien — 谢谢")
    assert messages[0]["content"] == "¿Qué tal? 你好 🙂" and reply == "Très bien — 谢谢"


def test_split_hh_rejects_non_transcripts():
    with pytest.raises(DataError, match="x.jsonl:3"):
        split_hh("no assistant turn here", "x.jsonl:3")
    with pytest.raises(DataError, match="does not start"):
        split_hh("Hi\n\nAssistant: yo", "x.jsonl:4")


def _write(path, lines, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def hh(c_reply, r_reply, prompt="\n\nHuman: name a fruit"):
    return json.dumps({"chosen": f"{prompt}\n\nAssistant: {c_reply}", "rejected": f"{prompt}\n\nAssistant: {r_reply}"})


def test_malformed_line_names_file_and_line(tmp_path, toy_tokenizer):
    path = _write(tmp_path / "bad.jsonl", [hh("apple", "um"), "{not json", hh("plum", "so")])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON"):
        load_pairs("hh", [path], toy_tokenizer, 64, 32)


def test_missing_key_names_file_and_line(tmp_path, toy_tokenizer):
    path = _write(tmp_path / "k.jsonl", [json.dumps({"prompt": "list 2 fruit", "chosen": "apple"})])
    with pytest.raises(DataError, match=r"k\.jsonl:1: missing key\(s\) \['rejected'\]"):
        load_pairs("pairs", [path], toy_tokenizer, 64, 32)


def test_skips_are_counted_not_dropped_silently(tmp_path, toy_tokenizer):
    lines = [
        hh("apple plum", "um"),  # kept
        hh("apple", "apple"),  # identical
        hh("apple", " "),  # empty
        hh("apple " * 40, "um"),  # response too long (max 32 tokens)
        hh("apple", "um", prompt="\n\nHuman: " + "list " * 100),  # prompt too long
        json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: OTHER\n\nAssistant: c"}),
    ]
    pairs, skips = load_pairs("hh", [_write(tmp_path / "d.jsonl.gz", lines, gz=True)], toy_tokenizer, 64, 32)
    assert len(pairs) == 1 and pairs[0]["chosen"] == " apple plum"
    assert skips.to_dict()["by_reason"] == {"identical_responses": 1, "empty_response": 1, "response_too_long": 1,
                                            "prompt_too_long": 1, "prompt_mismatch": 1}
    assert len(pairs) + skips.total == len(lines)
    assert skips.where["identical_responses"] == [f"{tmp_path / 'd.jsonl.gz'}:2"]


def test_explicit_pairs_render_with_chat_template(tmp_path, toy_tokenizer):
    path = _write(tmp_path / "p.jsonl", [json.dumps({"prompt": "list 2 fruit", "chosen": "apple plum", "rejected": "um"})])
    pairs, skips = load_pairs("pairs", [path], toy_tokenizer, 64, 32)
    assert pairs[0]["prompt"] == "user: list 2 fruit\nassistant:" and skips.total == 0


def test_render_without_template_uses_hh_format():
    class NoTemplate:
        chat_template = None
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert render_prompt(msgs, NoTemplate()) == "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"


def test_heldout_split_is_fixed_and_disjoint():
    pairs = [{"prompt": f"p{i % 50}", "chosen": "a", "rejected": "b"} for i in range(200)]
    train, held = split_heldout(pairs, 20, 1000, seed=3)
    assert split_heldout(pairs, 20, 1000, seed=3) == (train, held)
    assert not {p["prompt"] for p in held} & {p["prompt"] for p in train}
    with pytest.raises(DataError, match="heldout_pairs"):
        split_heldout(pairs[:5], 20, 10, seed=0)


def test_real_hh_file_parses(shared_data, toy_tokenizer):
    path = shared_data / "hh-rlhf" / "helpful-base-test.jsonl.gz"
    pairs, skips = load_pairs("hh", [str(path)], toy_tokenizer, 10_000, 10_000, limit=200)
    assert len(pairs) == 200
    # the first 200 usable pairs of the file: every row read before the 200th is one of them or a counted skip
    assert all(p["prompt"] and p["chosen"] != p["rejected"] for p in pairs)
    assert pairs[-1]["origin"].endswith(f":{200 + skips.total}")


def test_heldout_split_counts_training_pairs_that_share_a_heldout_prompt():
    """200 pairs, 4 per prompt, 20 held out: every pair is trained on, held out or counted as a skip."""
    pairs = [{"prompt": f"p{i // 4}", "chosen": "a", "rejected": "b", "origin": f"f.jsonl:{i + 1}"} for i in range(200)]
    skips = Skips()
    train, held = split_heldout(pairs, 20, 1000, seed=3, skips=skips)
    assert len(train) + len(held) + skips.total == 200
    assert skips.counts["prompt_in_heldout"] == skips.total > 0
    assert skips.where["prompt_in_heldout"][0].startswith("f.jsonl:")


def test_too_few_pairs_names_the_files_and_the_skips():
    pairs = [{"prompt": "p", "chosen": "a", "rejected": "b", "origin": "f.jsonl:1"}]
    skips = Skips()
    skips.add("identical_responses", "f.jsonl:2")
    with pytest.raises(DataError, match=r"^f\.jsonl: only 1 usable pairs; 1 skipped: identical_responses x1 .*heldout_pairs=5"):
        split_heldout(pairs, 5, 10, seed=0, skips=skips)


def test_preflight_counts_rows_without_a_tokenizer(tmp_path):
    from iterdpo.config import load_preset
    from iterdpo.data import preflight

    path = _write(tmp_path / "few.jsonl", [hh("apple", "um")] * 3)
    cfg = load_preset("smollm2-hh", {"data.path": [path], "data.heldout_pairs": 3})
    with pytest.raises(DataError, match=r"few\.jsonl: 3 rows in all, but data\.heldout_pairs=3"):
        preflight(cfg)
    preflight(cfg.replace(**{"data.heldout_pairs": 2}))  # 3 rows > 2: passes
    with pytest.raises(DataError, match="no such file"):
        preflight(cfg.replace(**{"data.path": [path, str(tmp_path / "gone.jsonl")], "data.heldout_pairs": 1}))


def test_json_is_written_strict_with_reasons_for_non_finite_values(tmp_path):
    import math

    import numpy as np
    import torch

    from iterdpo.folder import append_jsonl, write_json, write_jsonl

    def strict_load(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))

    obj = {"kl_to_reference": float("nan"), "loss": np.float32("inf"), "acc": torch.tensor(0.5), "ok": 1,
           "curve": [1.0, float("-inf"), np.float64("nan")], "nested": {"x": -math.inf}, "arr": np.array([1.5, 2.5])}
    write_json(tmp_path / "m.json", obj)
    got = strict_load((tmp_path / "m.json").read_text())
    assert got == {"kl_to_reference": None, "kl_to_reference_reason": "non-finite (nan)", "loss": None,
                   "loss_reason": "non-finite (inf)", "acc": 0.5, "ok": 1, "curve": [1.0, None, None],
                   "nested": {"x": None, "x_reason": "non-finite (-inf)"}, "arr": [1.5, 2.5]}
    write_jsonl(tmp_path / "r.jsonl", [{"r": float("nan")}])
    append_jsonl(tmp_path / "r.jsonl", {"r": float("inf")})
    rows = [strict_load(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert rows == [{"r": None, "r_reason": "non-finite (nan)"}, {"r": None, "r_reason": "non-finite (inf)"}]
