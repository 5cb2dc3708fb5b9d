"""Command line: ``python -m iterdpo run --preset tiny --rounds 2 --out runs/demo``.

    run     the whole loop (SFT, reward model, rounds, baseline, summary)
            --engine notebooks (default): each stage's numbered notebook, executed by papermill and
            kept in the run folder; --engine python: the same stage functions in this process
    show    print a preset's config (after --set overrides) as YAML
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from .config import ConfigError, load_preset, parse_override


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m iterdpo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "show"):
        s = sub.add_parser(name)
        s.add_argument("--preset", default="tiny", help="tiny (default, offline toy world), smollm2-hh, t4, or a YAML path")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override any config field, e.g. --set dpo.beta=0.2 (repeatable)")
        s.add_argument("--seed", type=int)
        s.add_argument("--rounds", help="number of DPO rounds, or 'auto' (controller stops on convergence or budget)")
        s.add_argument("--out", help="run folder (default runs/<preset>-s<seed>)")
    run = sub.choices["run"]
    run.add_argument("--resume", action="store_true", help="continue a run in --out, skipping finished stages")
    run.add_argument("--fresh", action="store_true", help="delete --out first and start over")
    run.add_argument("--engine", choices=["notebooks", "python"], default="notebooks",
                     help="notebooks: papermill runs the numbered notebooks (kept as records); python: in-process")
    return p


def build_config(args):
    overrides = dict(parse_override(o) for o in args.overrides)
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.rounds is not None:
        overrides["rounds"] = "auto" if args.rounds == "auto" else int(args.rounds)
    cfg = load_preset(args.preset, overrides)
    if args.out is None and "out" not in overrides:
        cfg = cfg.replace(out=f"runs/{cfg.preset}-s{cfg.seed}")
    elif args.out is not None:
        cfg = cfg.replace(out=args.out)
    return cfg, overrides


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg, overrides = build_config(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.cmd == "show":
        print(cfg.to_yaml())
        return 0
    out = Path(cfg.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()) and not args.resume:
        print(f"{out} already holds a run: add --resume to continue it, or --fresh to start over", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    if args.engine == "notebooks":
        from .runner import run_notebooks

        summary = run_notebooks(cfg, overrides={**overrides, "rounds": cfg.rounds}, resume=args.resume)
    else:
        from .pipeline import run_all

        summary = run_all(cfg)
    print(report(summary, time.perf_counter() - t0, out))
    return 0


def report(summary: dict, seconds: float, out: Path) -> str:
    keys = ("win_rate_vs_sft", "oracle_win_rate_vs_sft", "oracle_score", "win_rate_vs_offline_dpo", "preference_accuracy",
            "mean_reward", "kl_to_reference", "pair_success_rate")
    lines = [f"run folder: {out}   total {seconds:.0f} s   best round: {summary['best_round']}"]
    lines.append(f"{'round':>8} {'decision':>16} " + " ".join(f"{k[:22]:>22}" for k in keys))
    rows = [(str(r["round"]), r.get("decision", "baseline" if r["round"] == 0 else ""), r["metrics"]) for r in summary["rounds"]]
    if "offline_dpo" in summary.get("baselines", {}):
        rows.append(("offline", "baseline arm", summary["baselines"]["offline_dpo"]))
    for name, decision, m in rows:
        lines.append(f"{name:>8} {decision:>16} " + " ".join(
            f"{m[k]:>22.3f}" if isinstance(m.get(k), (int, float)) else f"{'-':>22}" for k in keys))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
