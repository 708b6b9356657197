"""The alarm cap: an entity over its alarm-share budget keeps at most its budget of minutes in
alarm tonight, its most anomalous ones; a quiet night and a window within budget are untouched."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.alarm_cap import alarm_minutes, apply_cap, cap_scale, exceedance
from models.incidents import group_incidents, two_scale_flags

NIGHT = pd.date_range("2026-03-01", periods=1440, freq="min", tz="UTC")
BUDGET = 120 / 1440  # two hours a night
GAP = 15


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def _night(score: np.ndarray, raw: np.ndarray | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {"entity_id": "e1", "ts": NIGHT, "score": score, "threshold": 3.0,
         "raw_score": score if raw is None else raw, "raw_threshold": 4.0}
    )


def _covered(frame: pd.DataFrame, factor=None) -> float:
    """Minutes the night's incidents cover, counted as the alerts table counts them."""
    found = group_incidents(two_scale_flags(frame, factor), gap_minutes=GAP, sampling_seconds=60)
    return float(((found["end_ts"] - found["start_ts"]).dt.total_seconds() / 60 + 1).sum())


@pytest.fixture
def drifted(rng) -> pd.DataFrame:
    """A night whose normal moved: every row above the threshold, and a real event 02:00-02:30
    scoring far above the drifted normal."""
    score = 4.0 + rng.normal(0, 0.3, 1440)
    score[120:150] = 12.0 + rng.normal(0, 0.5, 30)
    return _night(score)


def test_minutes_in_alarm_join_flagged_rows_within_the_gap():
    flagged = np.zeros(1440, dtype=bool)
    flagged[[10, 20, 30, 100]] = True  # 10-30 joined (gaps of 9 minutes), 100 apart
    assert alarm_minutes(NIGHT.to_numpy(), flagged, GAP, 60) == pytest.approx(21 + 1)
    assert alarm_minutes(NIGHT.to_numpy(), np.zeros(1440, dtype=bool), GAP, 60) == 0.0


def test_a_drifted_night_is_capped_to_its_budget_and_keeps_the_event(drifted):
    uncapped = _covered(drifted)
    capped = apply_cap(drifted, factor=None, budget_share=BUDGET, previous_minutes=[], gap_minutes=GAP,
                       sampling_seconds=60)
    assert uncapped == pytest.approx(1440)
    assert capped["alarm_cap"].iloc[0] > 1
    assert capped["uncapped_alarm_minutes"].iloc[0] == pytest.approx(uncapped)
    assert _covered(capped) <= BUDGET * 1440
    flags = two_scale_flags(capped, None)["flagged"].to_numpy()
    assert flags[120:150].all()  # the event still alerts whole
    assert flags.mean() < 0.1  # and the drifted normal mostly does not


def test_the_short_event_rule_is_capped_with_the_smoothed_threshold(drifted):
    raw = drifted["score"].to_numpy() * 2.5  # unsmoothed noise: every row "severe" at factor 2
    frame = drifted.assign(raw_score=raw)
    assert _covered(frame, 2.0) == pytest.approx(1440)
    capped = apply_cap(frame, factor=2.0, budget_share=BUDGET, previous_minutes=[], gap_minutes=GAP,
                       sampling_seconds=60)
    assert _covered(capped, 2.0) <= BUDGET * 1440
    assert two_scale_flags(capped, 2.0)["flagged"].to_numpy()[120:150].all()


def test_a_night_within_budget_keeps_its_fitted_thresholds_whatever_the_window_held(rng):
    score = 1.0 + rng.normal(0, 0.2, 1440)
    score[600:660] = 8.0  # one hour in alarm: within two
    capped = apply_cap(_night(score), factor=None, budget_share=BUDGET, previous_minutes=[1440.0, 1440.0],
                       gap_minutes=GAP, sampling_seconds=60)
    assert (capped["alarm_cap"] == 1.0).all()
    assert (capped["threshold"] == 3.0).all()


def test_one_long_event_on_quiet_nights_is_not_capped_but_a_lasting_one_is(rng):
    score = 1.0 + rng.normal(0, 0.2, 1440)
    score[300:480] = 8.0  # three hours: over tonight's budget, within the window's
    night = _night(score)
    once = apply_cap(night, factor=None, budget_share=BUDGET, previous_minutes=[0.0, 0.0], gap_minutes=GAP,
                     sampling_seconds=60)
    assert (once["alarm_cap"] == 1.0).all()
    again = apply_cap(night, factor=None, budget_share=BUDGET, previous_minutes=[180.0, 180.0], gap_minutes=GAP,
                      sampling_seconds=60)
    assert again["alarm_cap"].iloc[0] > 1
    assert _covered(again) <= BUDGET * 1440


def test_the_cap_is_the_smallest_that_holds(drifted):
    need = exceedance(drifted, None)
    ts = drifted["ts"].to_numpy()
    scale = cap_scale(ts, need, 120, GAP, 60)
    assert alarm_minutes(ts, need > scale, GAP, 60) <= 120
    below = np.max(need[need < scale / (1 + 1e-12)])  # the next lower candidate breaks the budget
    assert alarm_minutes(ts, need > below, GAP, 60) > 120


def test_a_capped_night_keeps_to_the_incidents_it_may_raise(drifted):
    capped = apply_cap(drifted, factor=None, budget_share=BUDGET, previous_minutes=[], gap_minutes=GAP,
                       sampling_seconds=60, incidents_per_night=1)
    found = group_incidents(two_scale_flags(capped, None), gap_minutes=GAP, sampling_seconds=60)
    assert len(found) == 1  # not the event plus scattered minutes of the drifted normal
    assert found["start_ts"].iloc[0] <= NIGHT[120] and found["end_ts"].iloc[0] >= NIGHT[149]
