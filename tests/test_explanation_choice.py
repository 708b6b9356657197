"""The explanation settings chosen out of sample: the grid, the choice, and what a setting changes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from fleetwatch.app import explanation_choice as EX
from fleetwatch.app.backtest import flagged_rows_hitrate
from models.params import ExplainParams


def test_the_grid_starts_with_the_trained_settings_and_varies_only_the_context():
    base = ExplainParams(top_metrics=5, phase_minutes=30)
    cands = EX.candidates(base)
    assert cands[0] == base
    assert len(cands) == len(set(cands))
    assert all(c.top_metrics == 5 and c.phase_minutes == 30 for c in cands)
    assert {c.context_minutes for c in cands} >= set(EX.CONTEXT_MINUTES)
    assert {c.flat_metric_weight for c in cands} == set(EX.FLAT_METRIC_WEIGHTS)
    sizes = (EX.CONTEXT_MINUTES, EX.CONTEXT_EXIT_QUANTILES, EX.CHANGE_WEIGHTS, EX.FLAT_METRIC_WEIGHTS)
    assert len(cands) == int(np.prod([len(s) for s in sizes]))


def test_choose_sees_only_the_training_entities_and_keeps_the_trained_settings_on_a_tie():
    cands = EX.candidates(ExplainParams())
    table = [{"x": 0.0, "y": 0.5, "z": 0.5} for _ in cands]
    table[3] = {"x": 1.0, "y": 0.5, "z": 0.5}  # only the held-out x prefers it
    table[5] = {"x": 0.0, "y": 0.8, "z": float("nan")}  # z counted no event: left out of the mean
    assert EX.choose(cands, table, ["y", "z"]) == cands[5]
    assert EX.choose(cands, table, ["x"]) == cands[3]
    flat = [{"y": 0.5} for _ in cands]
    assert EX.choose(cands, flat, ["y"]) == cands[0]
    assert EX.choose(cands, [{"y": math.nan} for _ in cands], ["y"]) == cands[0]


def test_the_weight_of_the_move_against_the_context_decides_a_tie_of_range_exits():
    ts = pd.date_range("2026-01-01", periods=200, freq="1min", tz="UTC")
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"ts": ts, "a": rng.uniform(-0.9, 0.9, 200), "b": 0.0, "c": 0.0, "flagged": False})
    rows.loc[150:160, ["a", "b"]] = 3.0  # both leave [-1, 1] by 2 spreads; a was noisy before, b flat
    rows.loc[150:160, "flagged"] = True
    event = pd.DataFrame({"start_ts": [ts[150]], "end_ts": [ts[160]], "metrics": ["b"]})
    stats = {"baselines": dict.fromkeys("abc", 0.0), "spread": dict.fromkeys("abc", 1.0),
             "ranges": dict.fromkeys("abc", [-1.0, 1.0])}
    ranks = lambda weight: flagged_rows_hitrate(  # noqa: E731
        event, rows, ["a", "b", "c"], **stats, p=1.0, params=ExplainParams(change_weight=weight)
    )[0]
    assert ranks(0.0) == 0.0  # a tie: a, the first column, named
    assert ranks(0.3) == 1.0  # b's move from a flat hour outweighs a's from a noisy one


def test_the_flat_metric_weight_demotes_a_counter_that_never_moved_in_training():
    """A counter constant in training (range [0, 0]) takes one step; a noisy metric leaves its range
    by less. At weight 1 the counter is named first, at a small weight the noisy metric is."""
    ts = pd.date_range("2026-01-01", periods=200, freq="1min", tz="UTC")
    rng = np.random.default_rng(1)
    rows = pd.DataFrame({"ts": ts, "noisy": rng.uniform(-0.9, 0.9, 200), "counter": 0.0, "flagged": False})
    rows.loc[150:160, "noisy"] = 4.0  # 3 spreads outside [-1, 1]
    rows.loc[150:160, "counter"] = 5.0  # 5 spreads outside [0, 0]
    rows.loc[150:160, "flagged"] = True
    event = pd.DataFrame({"start_ts": [ts[150]], "end_ts": [ts[160]], "metrics": ["noisy"]})
    stats = {"baselines": {"noisy": 0.0, "counter": 0.0}, "spread": {"noisy": 1.0, "counter": 1.0},
             "ranges": {"noisy": [-1.0, 1.0], "counter": [0.0, 0.0]}}
    hit = lambda weight: flagged_rows_hitrate(  # noqa: E731
        event, rows, ["noisy", "counter"], **stats, p=1.0, params=ExplainParams(flat_metric_weight=weight)
    )[0]
    assert hit(1.0) == 0.0
    assert hit(0.1) == 1.0
