"""Figures and tables of one run, each a function of the run folder.

Everything here reads the run folder through ``RunFolder`` (metrics, samples, train logs,
decisions), so it works on a finished run, a run in progress and a run copied from another machine.
Each figure is saved as ``RunFolder.plot(name)`` and returned.

Models are labelled ``SFT`` (round 0), ``round 1`` ... ``round N`` and ``offline DPO``, and keep
one colour everywhere: grey for SFT, a light-to-dark ramp for the rounds, orange for offline DPO.
The controller's story is drawn on every per-round figure: the best round gets a gold star, a round
the controller rejected (``adjust_retry``) a red cross, a rolled-back round (``rollback``) a red ring.
Figures judged by the reward model and by the toy world's oracle sit on separate axes: the first is
what the controller sees, the second is the truth it cannot see.
"""

from __future__ import annotations

from .frames import (  # noqa: F401
    CHANCE, DPO_CURVES, FLAT, HEADLINE, LIMIT, MARKS, MONITORS, OFFLINE, SFT, TRAJECTORY, _chance, _empty, _grid,
    _honest_ylim, _is_number, _order_columns, _pretty, _save, eval_metrics, eval_samples, model_folders,
    palette, round_status, train_logs,
)
from .tables import (  # noqa: F401
    _arrow, _brief, card_markdown, comparison_table, config_table, decisions_table, label_quality_table, pairs_table,
    response_viewer, responses_table, wide,
)
from .figures import (  # noqa: F401
    _call_out, _controller_limits, _legend, _lines, _mark_bars, dpo_training_curves, eval_metric_grid, flat_note,
    generation_summary, improvement_trajectory, reward_comparison, reward_distributions,
    stage_training_curves, training_note,
)
from .frontier import ARM_MARKERS, frontier, frontier_points, tensorboard  # noqa: F401
