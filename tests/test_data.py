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
    assert isinstance(skips, Skips)
