"""The resume contract: the run folder's config.json is the truth.

``--resume`` rebuilds the config from the run folder, then applies what the command line asks for
(``--set``, ``--seed``, ``--preset``). A change to any field is refused, listing each field with the run's
value and the asked one, unless the user passes ``--allow-change``; an allowed change is appended to
decisions.jsonl as a ``config_change`` event (summary.json lists them) and config.json is rewritten, so
the stages still to run use the new values while finished ones keep theirs. ``rounds`` may always
change: raising it continues a run that stopped on its round budget, and the run says so.
"""

from __future__ import annotations

from .config import RunConfig, apply_overrides, load_preset
from .folder import append_jsonl, write_json
from .migrate import stop_reason
from .runfolder import RunFolder

FREE = {"out", "rounds"}  # where the run lives, and how many rounds it may run: never a change of the experiment


class ResumeError(Exception):
    """--resume was asked to change the run's config without --allow-change."""


def flat(cfg: RunConfig) -> dict:
    out = {}
    for k, v in cfg.to_dict().items():
        if isinstance(v, dict) and k != "rounds":
            out.update({f"{k}.{f}": x for f, x in v.items()})
        else:
            out[k] = v
    return out


def changes(old: RunConfig, new: RunConfig) -> dict[str, list]:
    """{"section.field": [old value, new value]} for every field that differs, `out` and `rounds` aside."""
    a, b = flat(old), flat(new)
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if k not in FREE and a.get(k) != b.get(k)}


def resumed_config(run: RunFolder, overrides: dict, preset: str | None, out: str) -> RunConfig:
    """The run's own config, or `preset` when one is named, with `overrides` applied; `out` as given."""
    base = load_preset(preset) if preset else run.config()
    return apply_overrides(base, {**overrides, "out": out})


def resume(run: RunFolder, cfg: RunConfig, allow_change: bool) -> RunConfig:
    """Check `cfg` against the run's config; refuse or record a change; say what a new round budget does."""
    old = run.config()
    diff = changes(old, cfg)
    if diff and not allow_change:
        fields = "; ".join(f"{k}: run has {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise ResumeError(f"--resume would change the run's config ({fields}); rerun with --allow-change to "
                          f"apply it to the stages still to run, or drop the change")
    done = run.decisions()
    last = max(done) if done else 0
    if diff or old.rounds != cfg.rounds:
        event = {"event": "config_change", "after_round": last, "changes": diff,
                 "rounds": [old.rounds, cfg.rounds]}
        append_jsonl(run.decisions_path, event)
        write_json(run.config_path, cfg.to_dict())
        for k, (a, b) in diff.items():
            print(f"resume: {k} changed from {a!r} to {b!r} for the stages still to run (recorded in decisions.jsonl)")
    if old.rounds != cfg.rounds:
        stopped = stop_reason(done[last]) if last in done else None
        if stopped == "round_budget" and cfg.max_rounds > last:
            print(f"resume: rounds {old.rounds} -> {cfg.rounds}: the run had stopped on its round budget after round "
                  f"{last}; it continues with round {last + 1}")
        elif stopped:
            print(f"resume: rounds {old.rounds} -> {cfg.rounds}, but the run stopped for another reason ({stopped}); "
                  "no new round runs")
        else:
            print(f"resume: rounds {old.rounds} -> {cfg.rounds}")
    return cfg
