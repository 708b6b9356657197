"""The explanation settings chosen out of sample: which of a few rankings of an incident's metrics
to use, chosen on the training entities' labelled interpretation events.

The candidates vary the three settings that decide how the hour before an event counts
(``models.params.ExplainParams``): its length, how far a metric already was outside its range in
it, and the weight of a metric's move against it; and the weight of a metric that was constant in
training (a counter that never moved, whose one quantised step scores many spreads). Each
candidate is scored by the HitRate@150% of the published protocol (each event ranked on its
flagged rows, ``backtest.flagged_rows_hitrate``) on the run's own flags; the highest mean over
the training entities wins, ties going to the settings the models were trained with. The grid is
stated here, before any run.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable

import numpy as np

from models.params import ExplainParams

CONTEXT_MINUTES = (60, 180, 360)
CONTEXT_EXIT_QUANTILES = (0.9, 0.99)
CHANGE_WEIGHTS = (0.0, 0.1, 0.3)
FLAT_METRIC_WEIGHTS = (1.0, 0.1)
VARIED = ("context_minutes", "context_exit_quantile", "change_weight", "flat_metric_weight")


def candidates(base: ExplainParams) -> list[ExplainParams]:
    """``base`` first, then every combination of the grid (``base``'s other settings kept)."""
    out = [base]
    grid = itertools.product(CONTEXT_MINUTES, CONTEXT_EXIT_QUANTILES, CHANGE_WEIGHTS, FLAT_METRIC_WEIGHTS)
    for values in grid:
        cand = base.model_copy(update=dict(zip(VARIED, values, strict=True)))
        if cand not in out:
            out.append(cand)
    return out


def hitrate_table(
    cands: list[ExplainParams], entities: Iterable, hitrate: Callable[[object, ExplainParams], float]
) -> list[dict]:
    """``hitrate(entity, params)`` for every candidate (by position) and entity."""
    entities = list(entities)
    return [{e: hitrate(e, c) for e in entities} for c in cands]


def choose(cands: list[ExplainParams], table: list[dict], training) -> ExplainParams:
    """The candidate with the highest mean HitRate over ``training`` (entities without a counted
    event left out); the first candidate, ``base``, on a tie or when nothing was counted."""
    best, best_mean = cands[0], _mean([table[0][e] for e in training])
    for cand, row in zip(cands[1:], table[1:], strict=True):
        mean = _mean([row[e] for e in training])
        if not math.isnan(mean) and (math.isnan(best_mean) or mean > best_mean + 1e-12):
            best, best_mean = cand, mean
    return best


def label(params: ExplainParams) -> str:
    return (f"context {params.context_minutes} min, already-outside quantile {params.context_exit_quantile:g}, "
            f"change weight {params.change_weight:g}, flat-metric weight {params.flat_metric_weight:g}")


def _mean(values) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")
