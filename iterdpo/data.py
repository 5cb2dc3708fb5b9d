"""Preference data: HH-RLHF text pairs, explicit pairs, the toy world; validation and the held-out split.

Record schemas, checked where they are read:

- pair: ``{"prompt", "chosen", "rejected", "source"}`` (the prompt already rendered with the chat
  template; chosen/rejected are completions), plus optional provenance keys.
- generation record: ``{"prompt", "responses": [K], "rewards": [K], "ended": [K], "n_tokens": [K]}``.

Bad input never disappears: an unreadable file (truncated gzip, invalid UTF-8, a folder), a malformed
line or a missing key raises a one-line DataError naming the file and line; an empty, identical,
duplicate or over-long pair, or one holding a lone surrogate, is skipped and counted in a :class:`Skips`.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
PAIR_KEYS = ("prompt", "chosen", "rejected")
GEN_KEYS = ("prompt", "responses", "rewards", "ended", "n_tokens")


class DataError(ValueError):
    """Input that cannot be read; the message names the file and line."""


@dataclass
class Skips:
    """Counts of skipped records by reason, with the first few locations of each, for metrics.json."""

    counts: Counter = field(default_factory=Counter)
    where: dict = field(default_factory=dict)

    def add(self, reason: str, location: str) -> None:
        self.counts[reason] += 1
        self.where.setdefault(reason, [])
        if len(self.where[reason]) < 5:
            self.where[reason].append(location)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(self.counts), "examples": self.where}


# reading -------------------------------------------------------------------------------------------
DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".gz", ".txt", ".csv", ".parquet")
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
GZIP_MAGIC = b"\x1f\x8b"


def is_local(p: str) -> bool:
    """Whether `p` names a local file rather than a hub dataset. A hub name is exactly ``owner/name``;
    anything else (an existing path, a path with a data suffix, ./, ~ or more than one separator) is local,
    so a missing local file is reported at once instead of being looked up on the hub."""
    path = Path(p)
    return (path.exists() or p.endswith(DATA_SUFFIXES) or not _HUB_NAME.fullmatch(p) or p.startswith((".", "~"))
            or path.parent.is_dir() and path.parent != Path("."))


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line, decoded as UTF-8 (a BOM is dropped); unreadable input raises
    DataError naming the file and, where there is one, the line."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected a .jsonl or .jsonl.gz file")
    if not path.is_file():  # a FIFO would block the first read forever
        raise DataError(f"{path}: not a regular file (a pipe, a device or a socket); expected a .jsonl or .jsonl.gz file")
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == GZIP_MAGIC
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    if path.suffix == ".gz" and not gz:
        raise DataError(f"{path}: named .gz but not gzip-compressed (rename it to .jsonl, or compress it)")
    i = 0
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            for i, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{i}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})") from e
                yield i, text.removeprefix("\ufeff") if i == 1 else text
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}:{i + 1}: gzip data is truncated or corrupt ({e})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(location 'file:line', record) for every non-blank line; a bad line raises DataError."""
    path = Path(path)
    for i, line in _lines(path):
        if not line.strip():
            continue
        loc = f"{path}:{i}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            hint = " (a JSON array? expected JSON Lines: one object per line)" if line.lstrip().startswith("[") else ""
            raise DataError(f"{loc}: malformed JSON ({e.msg}, column {e.colno}){hint}") from e
        if not isinstance(rec, dict):
            raise DataError(f"{loc}: expected a JSON object, got {type(rec).__name__}")
        yield loc, rec


def iter_source(paths: list[str], split: str = "train") -> Iterator[tuple[str, dict]]:
    """Records from local .jsonl/.jsonl.gz files, or from hub dataset names (``owner/name``, see is_local)."""
    for p in paths:
        if is_local(p):
            yield from iter_jsonl(p)
        else:
            yield from _iter_hub(p, split)


def _iter_hub(name: str, split: str) -> Iterator[tuple[str, dict]]:
    from datasets import load_dataset

    try:
        rows = load_dataset(name, split=split)
    except Exception as e:  # the hub's errors are many (offline, no such dataset, no such split): one line each
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"{name}: not a local file, and loading it as a hub dataset failed "
                        f"({type(e).__name__}: {first})") from e
    for i, rec in enumerate(rows):
        yield f"{name}[{split}]:{i}", dict(rec)


def count_rows(path: str | Path, stop: int | None = None) -> int:
    """Non-blank lines of a local data file (no JSON parsing), counting up to `stop`."""
    n = 0
    for _, line in _lines(Path(path)):
        n += bool(line.strip())
        if stop is not None and n >= stop:
            break
    return n


def require(rec: dict, keys: tuple[str, ...], loc: str, types=(str,)) -> None:
    missing = [k for k in keys if k not in rec]
    if missing:
        raise DataError(f"{loc}: missing key(s) {missing}; expected {list(keys)}, found {sorted(rec)}")
    bad = [k for k in keys if not isinstance(rec[k], types)]
    if bad:
        raise DataError(f"{loc}: key(s) {bad} must be {'/'.join(t.__name__ for t in types)}")


# HH-RLHF ---------------------------------------------------------------------------------------------
def split_hh(text: str, loc: str = "") -> tuple[list[dict], str]:
    """Split an HH transcript at its last Assistant turn: (history as chat messages, final reply).

    ``"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant: d"`` ->
    ``([user a, assistant b, user c], "d")``.
    """
    cut = text.rfind(ASSISTANT)
    if cut < 0:
        raise DataError(f"{loc}: no '\\n\\nAssistant:' turn in the transcript")
    history, reply = text[:cut], text[cut + len(ASSISTANT):]
    messages = []
    for chunk in history.split(HUMAN)[1:] if history.startswith(HUMAN) else [None]:
        if chunk is None:
            raise DataError(f"{loc}: transcript does not start with '\\n\\nHuman:'")
        human, *assistants = chunk.split(ASSISTANT)
        messages.append({"role": "user", "content": human.strip()})
        messages += [{"role": "assistant", "content": a.strip()} for a in assistants]
    return messages, reply.strip()


def hh_pair(rec: dict, loc: str) -> tuple[list[dict], str, str] | str:
    """(messages, chosen, rejected) from an HH record, or a skip reason."""
    require(rec, ("chosen", "rejected"), loc)
    m_c, chosen = split_hh(rec["chosen"], loc)
    m_r, rejected = split_hh(rec["rejected"], loc)
    if m_c != m_r:
        return "prompt_mismatch"
    return m_c, chosen, rejected


def render_prompt(messages: list[dict], tokenizer) -> str:
    """The prompt as the model sees it: its chat template, or HH's plain format without one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    turns = [(HUMAN if m["role"] == "user" else ASSISTANT) + " " + m["content"] for m in messages]
    return "".join(turns) + ASSISTANT


def as_completion(prompt: str, text: str) -> str:
    """`text` as it follows `prompt`: after a space, unless the prompt already ends in whitespace
    (a chat template's ``assistant\n``), where a space would be off the model's distribution."""
    text = text.strip()
    return text if not prompt or prompt[-1].isspace() else " " + text


def check_pair(prompt: str, chosen: str, rejected: str, tokenizer, max_prompt: int, max_response: int) -> str | None:
    """A skip reason, or None when the pair is usable."""
    if not chosen.strip() or not rejected.strip():
        return "empty_response"
    if chosen.strip() == rejected.strip():
        return "identical_responses"
    if len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) > max_prompt:
        return "prompt_too_long"
    if max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in (chosen, rejected)) > max_response:
        return "response_too_long"
    return None


def load_pairs(source: str, paths: list[str], tokenizer, max_prompt: int, max_response: int,
               split: str = "train", limit: int | None = None) -> tuple[list[dict], Skips]:
    """Pairs from HH-format (`source='hh'`) or explicit `{prompt, chosen, rejected}` records.

    Raises DataError naming the files, with the skip counts, when no pair is usable.
    """
    pairs, skips, seen = [], Skips(), set()
    keys = ("chosen", "rejected") if source == "hh" else PAIR_KEYS
    controls = control_tokens(tokenizer)
    for loc, rec in iter_source(paths, split):
        require(rec, keys, loc)
        if not all(_utf8(rec[k]) for k in keys):  # "\ud800" is valid JSON but no tokenizer takes it
            skips.add("lone_surrogate", loc)
            continue
        if any(t in rec[k] for k in keys for t in controls):  # text would become a turn boundary or an early end
            skips.add("control_token", loc)
            continue
        if source == "hh":
            got = hh_pair(rec, loc)
            if isinstance(got, str):
                skips.add(got, loc)
                continue
            messages, chosen, rejected = got
        else:
            messages, chosen, rejected = [{"role": "user", "content": rec["prompt"]}], rec["chosen"], rec["rejected"]
        prompt = render_prompt(messages, tokenizer)
        reason = check_pair(prompt, chosen, rejected, tokenizer, max_prompt, max_response)
        key = (normalised(prompt), chosen.strip(), rejected.strip())
        if reason is None and key in seen:
            reason = "duplicate_pair"
        if reason:
            skips.add(reason, loc)
            continue
        seen.add(key)
        pairs.append({"prompt": prompt, "chosen": as_completion(prompt, chosen), "rejected": as_completion(prompt, rejected),
                      "source": "seed", "origin": loc})
        if limit and len(pairs) >= limit:
            break
    if not pairs:
        what = f"all {skips.total} records skipped: {describe(skips)}" if skips.total else "no records (empty)"
        raise DataError(f"{', '.join(map(str, paths))}: no usable pairs; {what}")
    return pairs, skips


def control_tokens(tokenizer) -> list[str]:
    """The tokenizer's own special and added tokens (``<|im_start|>``, ``<|im_end|>``, ``</s>``...): in a pair's
    text they would be read as real control tokens (an injected turn, an early end), so such pairs are skipped."""
    special = list(getattr(tokenizer, "all_special_tokens", []) or [])
    added = list(getattr(tokenizer, "get_added_vocab", dict)() or {})
    return sorted({t for t in special + added if isinstance(t, str) and len(t) > 1})


def normalised(prompt: str) -> str:
    """A prompt as the held-out split and the duplicate check compare it: case and whitespace do not count."""
    return " ".join(prompt.lower().split())


def describe(skips: Skips) -> str:
    """One line: each skip reason with its count and first location."""
    return "; ".join(f"{r} x{n} (first {skips.where[r][0]})" for r, n in skips.counts.most_common())


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_records(rows: list[dict], keys: tuple[str, ...], path: str) -> list[dict]:
    """Check a list of records against a schema where it is read."""
    for i, r in enumerate(rows, 1):
        missing = [k for k in keys if k not in r]
        if missing:
            raise DataError(f"{path}:{i}: missing key(s) {missing}")
    return rows


def split_heldout(pairs: list[dict], n_heldout: int, n_train: int, seed: int,
                  skips: Skips | None = None) -> tuple[list[dict], list[dict]]:
    """A fixed, seeded split: (train, heldout). Prompts in the held-out pairs never appear in training, up to case
    and whitespace (normalised): a training pair that shares one is counted in `skips` as ``prompt_in_heldout``,
    not dropped silently."""
    if len(pairs) < n_heldout + 1:
        files = sorted({p["origin"].rsplit(":", 1)[0] for p in pairs if "origin" in p})
        skipped = f"; {skips.total} skipped: {describe(skips)}" if skips and skips.total else ""
        raise DataError(f"{', '.join(files) or 'data'}: only {len(pairs)} usable pairs{skipped}; "
                        f"need more than data.heldout_pairs={n_heldout}")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    heldout = [pairs[i] for i in order[:n_heldout]]
    held_prompts = {normalised(p["prompt"]) for p in heldout}
    train = []
    for i in order[n_heldout:]:
        if normalised(pairs[i]["prompt"]) not in held_prompts:
            train.append(pairs[i])
        elif skips is not None:
            skips.add("prompt_in_heldout", pairs[i].get("origin", f"pair {i}"))
    return train[:n_train], heldout


def preflight(cfg) -> None:
    """Cheap checks before any model loads: local data files are readable and hold more rows than
    data.heldout_pairs (rows are counted, not parsed: no tokenizer needed). Hub datasets are not counted."""
    d = cfg.data
    local = [p for p in d.path if is_local(p)]
    rows, need = 0, d.heldout_pairs + 1
    for p in local:  # every file is opened (so a missing or unreadable one is named now); counting stops early
        rows += count_rows(p, stop=max(need - rows, 1))
    if local and len(local) == len(d.path) and rows <= d.heldout_pairs:
        raise DataError(f"{', '.join(local)}: {rows} rows in all, but data.heldout_pairs={d.heldout_pairs} "
                        "needs more than that (lower data.heldout_pairs, or add data)")


class ApproxTokenizer:
    """A stand-in for check-data when the preset's tokenizer is not at hand: a text counts as
    max(words and punctuation marks, characters / 4) tokens, near what subword tokenizers give for
    English. No chat template: prompts are rendered in HH's plain format."""

    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        n = max(len(re.findall(r"\w+|[^\w\s]", text)), len(text) // 4)
        return {"input_ids": [0] * n}


def unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def judge_split(pairs: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(the pairs the labelling ensemble trains on, the `share` of them held back for the held-out judge), drawn
    with `seed`; each list keeps the pairs' order. share 0: every pair to the ensemble, none held back (share is at
    most 0.5, reward.judge_share, so the ensemble keeps at least half)."""
    n = int(round(share * len(pairs)))
    if n == 0:
        return pairs, []
    back = set(random.Random(seed).sample(range(len(pairs)), n))
    return [p for i, p in enumerate(pairs) if i not in back], [p for i, p in enumerate(pairs) if i in back]
