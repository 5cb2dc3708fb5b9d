"""Writes the numbered notebooks from the cell texts below: ``python notebooks/build_notebooks.py``.

Edit the cells here, not in Jupyter, and regenerate: the notebooks are committed without outputs and
with deterministic cell ids, so a rebuild changes only what was edited. Logic lives in ``iterdpo/``;
a notebook builds the config, calls one library function per cell and shows a table or a figure.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent
COLAB = "https://colab.research.google.com/github/iterdpo/iterdpo/blob/main/notebooks/{}.ipynb"
METADATA = {
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
    "accelerator": "GPU",
    "colab": {"gpuType": "T4", "provenance": []},
}

PARAMETERS = '''preset = "t4"  # a preset in iterdpo/presets: tiny (CPU toy world), t4, smollm2-hh
out = "runs/colab"  # run folder; every notebook of a run uses the same one
seed = 0
overrides = {}  # "section.field": value, e.g. {"dpo.beta": 0.2}
MOUNT_DRIVE = False  # Colab: keep runs/ on Google Drive so a disconnect loses nothing'''

BOOTSTRAP = '''import os, subprocess, sys

if "google.colab" in sys.modules:  # Colab only: elsewhere the package is already installed
    if not os.path.exists("/content/iterdpo"):
        subprocess.run(["git", "clone", "--depth=1", "https://github.com/iterdpo/iterdpo", "/content/iterdpo"], check=True)
    os.chdir("/content/iterdpo")
    subprocess.run(["bash", "colab_setup.sh"], check=True)
    sys.path.insert(0, "/content/iterdpo")
    if MOUNT_DRIVE:
        from google.colab import drive
        drive.mount("/content/drive")
        os.makedirs("/content/drive/MyDrive/iterdpo/runs", exist_ok=True)
        if not os.path.lexists("runs"):
            os.symlink("/content/drive/MyDrive/iterdpo/runs", "runs")'''

CONFIG = '''import pandas as pd
from iterdpo import pipeline, plots
from iterdpo.config import load_preset

cfg = load_preset(preset, {**overrides, "seed": seed, "out": out})'''


def intro(name: str, title: str, text: str) -> list:
    badge = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB.format(name)})"
    return [md(f"# {title}\n\n{badge}\n\n{text}")]


def setup(extra_params: str = "", show_config: str = "print(cfg.to_yaml())") -> list:
    """Parameters, the Colab bootstrap and the config cell: the same head for every notebook."""
    return [
        md("## Parameters\n\nLiterals only, named like the config fields: papermill and `python -m iterdpo run` "
           "replace this cell. Any config field can be changed through `overrides`."),
        code(PARAMETERS + extra_params, tags=["parameters"]),
        md("## Colab setup\n\nOn Colab this clones the repository, runs `colab_setup.sh` (pinned dependencies) and, "
           "with `MOUNT_DRIVE`, keeps `runs/` on Google Drive. Anywhere else it does nothing."),
        code(BOOTSTRAP),
        md("## Config\n\nThe preset, then the overrides; derived values come from here, never from the "
           "parameters cell."),
        code(CONFIG + "\n" + show_config),
    ]


def md(text: str):
    return new_markdown_cell(text)


def code(text: str, tags: list[str] | None = None):
    cell = new_code_cell(text)
    if tags:
        cell.metadata["tags"] = tags
    return cell


NOTEBOOKS = {
    "01_sft": intro("01_sft", "01 · Supervised fine-tuning", (
        "Prepares the run folder and fine-tunes the base model on the chosen responses of the seed pairs.\n\n"
        "- **reads**: the preset and overrides below (and the base model: the toy world builds its own)\n"
        "- **writes**: `<out>/config.json`, `base/`, `data/` (train/held-out pairs, held-out and generation "
        "prompts), `sft/` (merged policy, `metrics.json`, `train_log.jsonl`)\n"
        "- **next**: `02_reward_model`")) + setup() + [
        md("## Prepare the run folder\n\nWrites the base model and the data split (skipped when already done)."),
        code("data_metrics = pipeline.prepare(cfg)\npd.json_normalize(data_metrics).T"),
        md("## Supervised fine-tuning"),
        code("sft_metrics = pipeline.run_sft(cfg)\npd.json_normalize(sft_metrics).T"),
        md("## SFT training curve"),
        code('plots.stage_training_curves(cfg.out, "sft")'),
    ],
    "02_reward_model": intro("02_reward_model", "02 · Reward model", (
        "Trains a Bradley-Terry reward model (SFT backbone plus a scalar head) on the seed training pairs, "
        "measures its accuracy on the held-out pairs, and evaluates the SFT policy as round 0.\n\n"
        "- **reads**: `<out>/data/`, `<out>/sft/`\n"
        "- **writes**: `<out>/reward/` (model, `metrics.json`, `train_log.jsonl`), `<out>/round_0/eval/` "
        "(the SFT baseline: `metrics.json`, `samples.jsonl`)\n"
        "- **next**: `03_synthetic_preferences`")) + setup(show_config="cfg.reward") + [
        md("## Train the reward model"),
        code("reward_metrics = pipeline.run_reward(cfg)\npd.json_normalize(reward_metrics).T"),
        md("## Reward-model training curve"),
        code('plots.stage_training_curves(cfg.out, "reward")'),
        md("## The SFT baseline (round 0)"),
        code("plots.comparison_table(cfg.out)"),
    ],
    "03_synthetic_preferences": intro("03_synthetic_preferences", "03 · Synthetic preferences", (
        "Samples K responses per prompt from the round's starting policy (SFT for round 1, otherwise the "
        "policy the controller picked), scores them with the reward model and turns each prompt's responses "
        "into one chosen/rejected pair, or a counted drop.\n\n"
        "- **reads**: `<out>/data/gen_prompts.jsonl`, `<out>/reward/`, the starting policy, `decisions.jsonl`\n"
        "- **writes**: `<out>/round_<round>/generate/` (`samples.jsonl`, `pairs.jsonl`, `metrics.json`)\n"
        "- **next**: `04_dpo_round` with the same `round`")) + setup('\nround = 1  # DPO round this data is for (1, 2, ...)', "cfg.generation") + [
        md("## Sample, score and pair"),
        code("gen_metrics = pipeline.run_generation(cfg, round)\npd.json_normalize(gen_metrics).T"),
        md("## Rewards of the samples and gaps of the pairs"),
        code("plots.generation_summary(cfg.out, round)"),
        md("## A few pairs"),
        code("plots.pairs_table(cfg.out, round, n=5)"),
    ],
    "04_dpo_round": intro("04_dpo_round", "04 · One DPO round", (
        "Trains one DPO round on the synthetic pairs (and the seed pairs, as configured), evaluates the new "
        "policy against SFT and the previous round, and records the controller's decision for the next round. "
        "With `arm = \"offline_dpo\"` it trains the baseline instead: seed pairs only, from SFT, for as many "
        "steps as all rounds together.\n\n"
        "- **reads**: `<out>/round_<round>/generate/pairs.jsonl` (and earlier rounds'), the starting policy, "
        "`<out>/reward/`\n"
        "- **writes**: `<out>/round_<round>/dpo/` and `eval/` plus a line of `decisions.jsonl`; or "
        "`<out>/offline_dpo/dpo/` and `eval/`\n"
        "- **next**: `03_synthetic_preferences` for the next round, or `05_compare_iterations`")) + setup(
        '\nround = 1  # DPO round to train (ignored by the offline_dpo arm)'
        '\narm = "iterative"  # iterative: round `round`; offline_dpo: the offline baseline',
        'assert arm in ("iterative", "offline_dpo"), f"unknown arm {arm!r}"\ncfg.dpo') + [
        md("## Train and evaluate"),
        code('if arm == "iterative":\n    dpo_metrics = pipeline.run_dpo_round(cfg, round)\nelse:\n'
             '    dpo_metrics = pipeline.run_offline_baseline(cfg)\npd.json_normalize(dpo_metrics).T'),
        md("## Every model so far\n\n`trend` follows the headline score from round to round."),
        code("plots.comparison_table(cfg.out)"),
        md("## DPO training curves"),
        code("plots.dpo_training_curves(cfg.out)"),
        md("## The controller's decisions"),
        code("plots.decisions_table(cfg.out)"),
        md("## Responses to the same held-out prompts"),
        code("plots.responses_table(cfg.out, n_prompts=5)"),
    ],
    "05_compare_iterations": intro("05_compare_iterations", "05 · Compare the iterations", (
        "Collects every round's metrics into `summary.json` and compares SFT, each DPO round and the "
        "offline-DPO baseline: tables, reward plots, the improvement trajectory, training curves and the "
        "responses themselves.\n\n"
        "- **reads**: `<out>/round_*/`, `<out>/offline_dpo/`, `decisions.jsonl`\n"
        "- **writes**: `<out>/summary.json`, `<out>/plots/*.png`")) + setup(show_config="cfg.controller") + [
        md("## Summary"),
        code('summary = pipeline.write_summary(cfg)\nprint("best round:", summary["best_round"])'),
        md("## Iteration log\n\nWhat each round ran with, what it scored, what was weak, and what the controller decided."),
        code("print(pipeline.iteration_reports(cfg))"),
        md("## Label quality of the synthetic pairs\n\nPairs kept and dropped by reason, the reward gap, and (toy "
           "world) how often the reward model's choice agrees with the oracle, beside the seed labels."),
        code("plots.label_quality_table(cfg.out)"),
        md("## Metrics by model\n\n`trend`: change of the headline score against the previous round "
           "(offline DPO: against SFT)."),
        code("plots.comparison_table(cfg.out)"),
        md("## Reward by model"),
        code("plots.reward_comparison(cfg.out)"),
        md("## Reward distributions"),
        code("plots.reward_distributions(cfg.out)"),
        md("## Improvement over rounds"),
        code("plots.improvement_trajectory(cfg.out)"),
        md("## DPO training curves"),
        code("plots.dpo_training_curves(cfg.out)"),
        md("## Every eval metric"),
        code("plots.eval_metric_grid(cfg.out)"),
        md("## The controller's decisions"),
        code("plots.decisions_table(cfg.out)"),
        md("## Responses side by side"),
        code("plots.responses_table(cfg.out, n_prompts=8)"),
        md("## Browse the responses\n\nA prompt picker when the notebook is live; the table otherwise."),
        code("plots.response_viewer(cfg.out)"),
    ],
}


def build(name: str, cells: list) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells, metadata=METADATA)
    for i, cell in enumerate(nb.cells):
        cell.id = f"{name[:2]}-{i:02d}"  # stable ids: a rebuild does not churn the diff
    nbformat.validate(nb)
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(name, cells), HERE / f"{name}.ipynb")
        print(f"wrote notebooks/{name}.ipynb")


if __name__ == "__main__":
    main()
