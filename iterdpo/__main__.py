"""Command line: ``python -m iterdpo run --preset tiny --rounds 2 --out runs/demo``.

    run     the whole loop (SFT, reward model, rounds, baseline, summary)
            --engine notebooks (default): each stage's numbered notebook, executed by papermill and
            kept in the run folder; --engine python: the same stage functions in this process.
            Launched as several processes (torchrun, accelerate launch) it runs in-process (notebooks
            are for one process); see iterdpo/dist.py
    show    print a preset's config (after --set overrides) as YAML
    check-data PATH [PATH...] [--source hh|pairs] [--preset P]
            validate preference files with the pipeline's own loader and the preset's length limits:
            usable pairs, skipped pairs by reason with the first file:line of each

Config, data, file and run-folder errors print one line and exit with status 2 (--debug: the traceback).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path

import yaml

from . import dist, lock, pipeline, runner
from .config import SECTIONS, ConfigError, RunConfig, field_help, load_preset, parse_override
from .controller.report import headline, kl_matched_line
from .data import ApproxTokenizer, DataError, load_pairs, preflight
from .folder import DamagedRun, write_json
from .lock import RunFolderBusy
from .guard import NonFiniteError
from .models import resolve_source
from .registry import WORLDS
from .resume import ResumeError, resume, resumed_config
from .runfolder import LOCK_FILE, OFFLINE_ARM, RunFolder
from .metrics import N, win_rate_vs


class RunFolderError(Exception):
    """--out cannot be used as asked (a file, not writable, not a run, already a run)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iterdpo" if Path(sys.argv[0]).name == "iterdpo" else "python -m iterdpo",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "show"):
        s = sub.add_parser(name)
        s.add_argument("--preset", help="tiny (default, offline toy world), smollm2-hh, t4, or a YAML path; with "
                       "--resume, the run's own config unless given")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override any config field, e.g. --set dpo.beta=0.2 (repeatable)")
        s.add_argument("--seed", type=int)
        s.add_argument("--rounds", help="number of DPO rounds, or 'auto' (controller stops on convergence or budget)")
        s.add_argument("--out", help="run folder (default runs/<preset>-s<seed>)")
        s.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub.choices["show"].add_argument("--help-fields", action="store_true",
                                     help="list every config field with its value, help text and range")
    run = sub.choices["run"]
    run.add_argument("--resume", action="store_true", help="continue a run in --out, skipping finished stages; its "
                     "config.json is the truth: a changed field is refused unless --allow-change")
    run.add_argument("--allow-change", action="store_true", help="with --resume: apply the changed fields to the stages "
                     "still to run, recorded in decisions.jsonl and summary.json")
    run.add_argument("--fresh", action="store_true", help="delete --out first and start over (only a run folder: one "
                     "with config.json, or an empty one)")
    run.add_argument("--engine", choices=["notebooks", "python"], default="notebooks",
                     help="notebooks: papermill runs the numbered notebooks (kept as records); python: in-process "
                     "(always, when launched as several processes)")
    check = sub.add_parser("check-data", help="validate preference files before a long run")
    check.add_argument("paths", nargs="+", metavar="PATH", help="local .jsonl/.jsonl.gz files (or a hub dataset name)")
    check.add_argument("--source", choices=["hh", "pairs"],
                       help="record format: hh transcripts or {prompt, chosen, rejected}; default: the preset's, else pairs")
    check.add_argument("--preset", default="tiny", help="whose tokenizer and length limits apply (default tiny)")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override a field, e.g. --set data.max_prompt_tokens=512")
    check.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return p


def build_config(args):
    overrides = dict(parse_override(o) for o in args.overrides)
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.rounds is not None:
        if args.rounds != "auto" and not re.fullmatch(r"[0-9]+", args.rounds):  # ASCII digits: '²' is a digit to isdigit
            raise ConfigError(f"--rounds {args.rounds!r}: expected a positive integer or 'auto'")
        overrides["rounds"] = "auto" if args.rounds == "auto" else int(args.rounds)
    cfg = load_preset(args.preset or "tiny", overrides)
    if args.out is None and "out" not in overrides:
        cfg = cfg.replace(out=f"runs/{cfg.preset}-s{cfg.seed}")
    elif args.out is not None:
        cfg = cfg.replace(out=args.out)
    return cfg, overrides


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"run": _run, "show": _show, "check-data": _check_data}[args.cmd](args)
    except Exception as e:
        if args.debug or not _one_line_error(e):
            raise
        print(one_line(e, Path(getattr(args, "out", None) or ".")), file=sys.stderr)
        return 2


def _one_line_error(e: Exception) -> bool:
    """Errors in what the user gave (config, data, files, the run folder, a notebook): no traceback."""
    return (isinstance(e, (ConfigError, DataError, RunFolderError, ResumeError, NonFiniteError, OSError, DamagedRun,
                           RunFolderBusy))
            or type(e).__name__ == "PapermillExecutionError")


def one_line(e: Exception, out: Path) -> str:
    """The error as one line; a failed notebook is named with its exception (the traceback is in the notebook)."""
    if type(e).__name__ == "PapermillExecutionError":
        failed = sorted(out.rglob("*.failed.ipynb"), key=lambda p: p.stat().st_mtime) if out.is_dir() else []
        where = f"{failed[-1]}: " if failed else ""
        evalue = (str(e.evalue).strip().splitlines() or [""])[0]
        return f"notebook error: {where}{e.ename}: {evalue} (rerun with --debug for the traceback)"
    kind = {ConfigError: "config error", DataError: "data error"}.get(type(e), "error")
    if isinstance(e, OSError) and e.filename and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e) or type(e).__name__
    return f"{kind}: {' '.join(text.split())}"


def _show(args) -> int:
    cfg, _ = build_config(args)
    if not args.help_fields:
        print(recipe_yaml(cfg))
        return 0
    values = cfg.to_dict()
    for section in SECTIONS:
        print(f"{section}:")
        for name, text in field_help(section).items():
            print(f"  {name} = {values[section][name]!r}\n      {text}")
    return 0


def recipe_yaml(cfg: RunConfig) -> str:
    """The config as a preset file to keep (``show --preset t4 > my.yaml``, then ``--preset my.yaml``): a world's
    own section (named as the world) only for the world that ``data.source`` names; a missing one loads as its
    defaults."""
    d = cfg.to_dict()
    for section in [s for s in SECTIONS if s in WORLDS and s != cfg.data.source]:
        del d[section]
    return yaml.safe_dump(d, sort_keys=False)


def _run(args) -> int:
    dist.init()
    if dist.active():
        if not dist.is_main():  # one process speaks; the others' errors still reach stderr
            sys.stdout = open(os.devnull, "w")
        if args.engine == "notebooks":
            print(f"{dist.world_size()} processes: running in-process (--engine python); notebooks are for one process")
            args.engine = "python"
    # the main process checks --out, resumes and writes config.json; the others take its config
    setup = _setup(args) if dist.is_main() else None
    shared = dist.broadcast(None if isinstance(setup, Exception) else setup)
    if isinstance(setup, Exception):
        raise setup
    if shared is None:
        return 2  # the main process failed and says why
    cfg, overrides = shared
    args.out = cfg.out
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    if args.engine == "notebooks":
        summary = runner.run_notebooks(cfg, overrides={**overrides, "rounds": cfg.rounds}, resume=args.resume)
    else:
        summary = pipeline.run_all(cfg)
    print(report(summary, time.perf_counter() - t0, Path(cfg.out)))
    dist.shutdown()
    return 0


def _setup(args):
    """(config, overrides) of the run, --out checked, resumed or started fresh, config.json written; or the
    error, when launched as several processes (the main process raises it after telling the others)."""
    try:
        return _setup_run(args)
    except Exception as e:
        if not dist.active():
            raise
        return e


def _setup_run(args):
    cfg, overrides = build_config(args)
    out = Path(cfg.out)
    args.out = cfg.out  # main()'s error report looks for a failed notebook there
    check_out(out, fresh=args.fresh, resume=args.resume)
    run = RunFolder(out)
    if args.resume and not args.fresh and not run.is_run():
        raise RunFolderError(f"--resume: {out} holds no run to continue ({run.not_a_run()})")
    if out.is_dir() and dist.is_main():
        lock.acquire(run.lock_path)  # before anything is changed or deleted
    if args.resume and not args.fresh:
        damaged = run.check()
        if damaged:
            more = f" ({len(damaged) - 1} more problems: the run folder was changed after its stages finished)"
            raise DamagedRun(damaged[0] + (more if len(damaged) > 1 else ""))
        cfg = resume(run, resumed_config(run, overrides, args.preset, cfg.out), args.allow_change)
        overrides = {}  # the notebooks rebuild cfg from its difference to the preset
    preflight(cfg)
    if args.fresh and out.exists():
        for p in list(out.iterdir()):  # everything but the lock this process holds
            if p != run.lock_path:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    if not run.exists():  # first, so a run that fails in its first stage is still a run folder
        out.mkdir(parents=True, exist_ok=True)
        write_json(run.config_path, cfg.to_dict())
    if dist.is_main():
        lock.acquire(run.lock_path)
    return cfg, overrides


def check_out(out: Path, fresh: bool, resume: bool) -> None:
    """Refuse an --out that cannot be used as asked, before anything is deleted or loaded."""
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out}: is a file, not a folder")
    used = out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir())
    if fresh and used and not RunFolder(out).is_run():  # the question --resume asks
        raise RunFolderError(f"--fresh: {out} holds files but no iterdpo config.json, so it is not a run folder; "
                             "refusing to delete it (nothing was changed)")
    if resume and not fresh and not used:
        raise RunFolderError(f"--resume: {out} holds no run to continue")
    if used and not (resume or fresh):
        raise RunFolderError(f"{out} already holds files: add --resume to continue its run, or --fresh to start over")
    home = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not home.is_dir():
        raise RunFolderError(f"--out {out}: {home} is a file, not a folder")
    if not os.access(home, os.W_OK | os.X_OK):
        raise RunFolderError(f"--out {out}: {home} is not writable")


def check_data_tokenizer(cfg: RunConfig):
    """(tokenizer, what it is) for check-data's length limits: the preset model's own tokenizer when it is
    on disk or in the hub cache (no download); otherwise an estimate (data.ApproxTokenizer)."""
    if cfg.model.name_or_path == "toy":
        return ApproxTokenizer(), "estimated token counts (the toy tokenizer is trained during a run)"
    try:
        from transformers import AutoTokenizer

        path, gguf = resolve_source(cfg.model)
        kw = {"gguf_file": gguf} if gguf else {}
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=cfg.model.trust_remote_code, **kw)
        return tok, f"the tokenizer of {cfg.model.name_or_path}"
    except Exception as e:  # not installed, not cached, not a tokenizer: any of these means estimate
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return ApproxTokenizer(), f"estimated token counts ({cfg.model.name_or_path}'s tokenizer is not on disk: {why[:120]})"


def _check_data(args) -> int:
    cfg = load_preset(args.preset, dict(parse_override(o) for o in args.overrides))
    # a world makes its own pairs: the toy world's are explicit pairs; the sentiment world reads HH-RLHF files
    source = args.source or {"toy": "pairs", "sentiment": "hh"}.get(cfg.data.source, cfg.data.source)
    tok, how = check_data_tokenizer(cfg)
    d = cfg.data
    pairs, skips = load_pairs(source, args.paths, tok, d.max_prompt_tokens, d.max_response_tokens, d.hub_split)
    print(f"source {source}; limits from preset {cfg.preset}: prompt <= {d.max_prompt_tokens} tokens, "
          f"response <= {d.max_response_tokens} tokens; {how}")
    print(f"usable pairs: {len(pairs)}")
    print(f"skipped: {skips.total}")
    for reason, n in skips.counts.most_common():
        print(f"  {reason:<22} {n:>7}   first at {skips.where[reason][0]}")
    if len(pairs) <= d.heldout_pairs:
        print(f"note: preset {cfg.preset} holds out data.heldout_pairs={d.heldout_pairs}; a run needs more usable pairs")
    return 0


def report(summary: dict, seconds: float, out: Path) -> str:
    keys = (N.win_rate_vs_sft, N.oracle_win_rate_vs_sft, N.oracle_score, win_rate_vs(OFFLINE_ARM), N.preference_accuracy,
            N.mean_reward, N.kl_to_reference, N.kl_to_sft, N.pair_success_rate)
    lines = [f"run folder: {out}   total {seconds:.0f} s   best round: {summary['best_round']}"]
    lines.append(f"{'round':>8} {'decision':>16} " + " ".join(f"{k[:22]:>22}" for k in keys))
    rows = [(str(r["round"]), r.get("decision", "baseline" if r["round"] == 0 else ""), r["metrics"]) for r in summary["rounds"]]
    if "offline_dpo" in summary.get("baselines", {}):
        rows.append(("offline", "baseline arm", summary["baselines"]["offline_dpo"]))
    for name, decision, m in rows:
        lines.append(f"{name:>8} {decision:>16} " + " ".join(
            f"{m[k]:>22.3f}" if isinstance(m.get(k), (int, float)) else f"{'-':>22}" for k in keys))
    y = summary.get("yardstick", {})
    if "answer" in y:
        key = headline(y["answer"])

        def arm(a: dict) -> str:
            score = f"{a[key]:.3f}" if isinstance(a.get(key), (int, float)) else "-"
            return score + (", passes the gates" if a["passes_gates"] else ", fails a gate")
        line = f"answer (round {y['answer']['round']}) {key} {arm(y['answer'])}"
        lines.append(line + (f"; offline DPO {arm(y['offline_dpo'])}" if "offline_dpo" in y else ""))
    if y.get("kl_matched"):
        lines.append(f"KL-matched: {kl_matched_line(y['kl_matched'])}")
    elif (y.get("movement") or {}).get("note"):
        lines.append(f"note: {y['movement']['note']}")
    return "\n".join(lines)


if __name__ == "__main__":
    from .dist import run_process

    run_process(main)  # as sys.exit(main()); with several processes, without the interpreter's finalization
