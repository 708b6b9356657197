"""The alarm cap: an entity over its alarm-share budget keeps at most its budget of minutes in
alarm tonight, its most anomalous ones, in no more alerts than it had; a quiet night and a window
within budget are untouched."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.alarm_cap import AlertRule, alarm, apply_cap, cap_scale, exceedance
from models.frames import epoch_ns
from models.incidents import group_incidents, two_scale_flags

NIGHT = pd.date_range("2026-03-01", periods=1440, freq="min", tz="UTC")
BUDGET = 120 / 1440  # two hours a night
GAP = 15
RULE = AlertRule(GAP, 60)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def _night(score: np.ndarray, raw: np.ndarray | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {"entity_id": "e1", "ts": NIGHT, "score": score, "threshold": 3.0,
         "raw_score": score if raw is None else raw, "raw_threshold": 4.0}
    )


def _covered(frame: pd.DataFrame, factor=None, min_points=1) -> float:
    """Minutes the night's alerts cover, counted as the alerts table counts them."""
    found = _alerts(frame, factor, min_points)
    return float(((found["end_ts"] - found["start_ts"]).dt.total_seconds() / 60 + 1).sum())


def _alerts(frame: pd.DataFrame, factor=None, min_points=1) -> pd.DataFrame:
    return group_incidents(two_scale_flags(frame, factor), gap_minutes=GAP, sampling_seconds=60, min_points=min_points,
                           severe_col="severe")


def _cap(frame, factor=None, previous=(), rule=RULE, level_minutes=None, alerts=1.0):
    return apply_cap(frame, factor=factor, rule=rule, budget_share=BUDGET, previous=list(previous),
                     level_minutes=level_minutes, alerts_per_night=alerts)


@pytest.fixture
def drifted(rng) -> pd.DataFrame:
    """A night whose normal moved: every row above the threshold, and a real event 02:00-02:30
    scoring far above the drifted normal."""
    score = 4.0 + rng.normal(0, 0.3, 1440)
    score[120:150] = 12.0 + rng.normal(0, 0.5, 30)
    return _night(score)


def test_the_alarm_counts_the_alerts_the_night_raises():
    need = np.zeros(1440)
    need[[10, 20, 30, 100]] = 2.0  # 10-30 joined (gaps of 9 minutes), 100 apart
    stamps, none = epoch_ns(NIGHT), np.zeros(1440)
    assert alarm(stamps, need, none, 1.0, RULE) == (pytest.approx(21 + 1), 2)
    assert alarm(stamps, need, none, 2.0, RULE) == (0.0, 0)  # scaled thresholds flag nothing
    assert alarm(stamps, need, none, 1.0, AlertRule(GAP, 60, min_points=3)) == (pytest.approx(21), 1)
    severe = np.where(np.arange(1440) == 100, 2.0, 0.0)  # a severe row keeps a short incident
    assert alarm(stamps, need, severe, 1.0, AlertRule(GAP, 60, min_points=3)) == (pytest.approx(22), 2)


def test_a_drifted_night_is_capped_to_its_budget_and_keeps_the_event(drifted):
    uncapped = _covered(drifted)
    capped = _cap(drifted)
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
    capped = _cap(frame, factor=2.0)
    assert _covered(capped, 2.0) <= BUDGET * 1440
    assert two_scale_flags(capped, 2.0)["flagged"].to_numpy()[120:150].all()


def test_a_night_within_budget_keeps_its_fitted_thresholds_whatever_the_window_held(rng):
    score = 1.0 + rng.normal(0, 0.2, 1440)
    score[600:660] = 8.0  # one hour in alarm: within two
    capped = _cap(_night(score), previous=[1440.0, 1440.0])
    assert (capped["alarm_cap"] == 1.0).all()
    assert (capped["threshold"] == 3.0).all()


def test_one_long_event_on_quiet_nights_is_not_capped_but_a_lasting_one_is(rng):
    score = 1.0 + rng.normal(0, 0.2, 1440)
    score[300:480] = 8.0  # three hours: over tonight's budget, within the window's
    night = _night(score)
    once = _cap(night, previous=[0.0, 0.0])
    assert (once["alarm_cap"] == 1.0).all()
    again = _cap(night, previous=[180.0, 180.0])
    assert again["alarm_cap"].iloc[0] > 1
    assert _covered(again) <= BUDGET * 1440


def test_the_cap_is_the_smallest_that_holds(drifted):
    need, severe = exceedance(drifted, None)
    stamps = epoch_ns(drifted["ts"])
    scale = cap_scale(stamps, need, severe, RULE, 120)
    assert alarm(stamps, need, severe, scale, RULE)[0] <= 120
    below = np.max(need[need < scale / (1 + 1e-12)])  # the next lower candidate breaks the budget
    assert alarm(stamps, need, severe, below, RULE)[0] > 120


def test_capping_never_cuts_one_long_alarm_into_many(drifted):
    assert len(_alerts(drifted)) == 1  # uncapped: one alert all night
    found = _alerts(_cap(drifted))
    assert len(found) == 1  # capped: one, the event; not the event plus scattered minutes of the drifted normal
    assert found["start_ts"].iloc[0] <= NIGHT[120] and found["end_ts"].iloc[0] >= NIGHT[149]


def test_a_night_of_many_alerts_keeps_the_worst_within_the_minutes(rng):
    score = 1.0 + rng.normal(0, 0.2, 1440)
    for k, start in enumerate(range(60, 60 + 11 * 120, 120)):  # eleven 20-minute alerts a night, peaks rising
        score[start:start + 20] = 4.0 + k
    night = _night(score)
    rule = AlertRule(GAP, 60, min_points=15)
    assert len(_alerts(night, min_points=15)) == 11
    capped = _cap(night, previous=[220.0], rule=rule)
    found = _alerts(capped, min_points=15)
    assert 1 <= len(found) < 11 and _covered(capped, min_points=15) <= BUDGET * 1440
    assert found["start_ts"].min() >= NIGHT[60 + (11 - len(found)) * 120]  # the highest ones
    assert capped["uncapped_incidents"].iloc[0] == 11


def test_short_blips_below_the_alert_length_do_not_count_against_the_budget(rng):
    score = 1.0 + rng.normal(0, 0.2, 1440)
    score[::60] = 5.0  # a one-minute blip an hour: no alert at 15 minutes
    capped = _cap(_night(score), previous=[1440.0], rule=AlertRule(5, 60, min_points=15))
    assert (capped["alarm_cap"] == 1.0).all() and capped["uncapped_incidents"].iloc[0] == 0


@pytest.mark.parametrize("level_minutes", [None, 360])
def test_the_evaluation_replays_the_cap_as_the_nightly_job_applied_it(drifted, rng, level_minutes):
    from fleetwatch.app.cross_validation import Candidate, ReplayCap, recapped
    from models.alarm_cap import cap_nights

    quiet = _night(1.0 + rng.normal(0, 0.2, 1440))
    nights = pd.concat(
        [frame.assign(ts=frame["ts"] + pd.Timedelta(days=k), dt=(NIGHT[0] + pd.Timedelta(days=k)).date())
         for k, frame in enumerate([quiet, drifted, drifted, quiet])],
        ignore_index=True,
    )
    scored = cap_nights(nights, factor=None, rule=RULE, budget_share=BUDGET, window_nights=3, level_minutes=level_minutes)
    caps = scored.groupby("dt")["alarm_cap"].min().to_numpy()
    assert caps[0] == 1.0 and caps[1] > 1 and caps[2] > 1 and caps[3] == 1.0  # the quiet night after: untouched
    again = recapped(scored, Candidate(1, None, GAP), 60, ReplayCap(BUDGET, 3, level_minutes=level_minutes))
    assert np.allclose(again["threshold"], scored["threshold"]) and np.allclose(again["alarm_cap"], scored["alarm_cap"])
    wider = recapped(scored, Candidate(1, None, GAP), 60, ReplayCap(1.0, 3))  # a budget nothing exceeds
    assert (wider["alarm_cap"] == 1.0).all() and np.allclose(wider["threshold"], 3.0)


def test_an_entity_in_alarm_all_night_may_still_raise_its_budget_of_alerts(drifted, rng):
    two = drifted.copy()
    two.loc[900:929, "score"] = 11.0 + rng.normal(0, 0.5, 30)  # a second event the same night
    assert len(_alerts(two)) == 1  # uncapped: one alert all night
    one = _alerts(_cap(two))
    assert len(one) == 1
    both = apply_cap(two, factor=None, rule=RULE, budget_share=BUDGET, previous=[], alerts_per_night=2)
    found = _alerts(both)
    assert len(found) == 2 and _covered(both) <= BUDGET * 1440
    assert found["start_ts"].iloc[0] <= NIGHT[120] and found["start_ts"].iloc[1] <= NIGHT[900]


def test_measured_against_the_nights_own_level_the_cap_keeps_short_events_over_a_higher_plateau(rng):
    # the normal moved and keeps moving: a level around 3x the threshold all night, rising to about
    # 6x for eight hours (no event there), and two 10-minute events at 4.5x on the level of 3x
    score = 9.0 + rng.normal(0, 0.3, 1440)
    score[400:880] = 18.0 + rng.normal(0, 0.3, 480)
    events = [slice(200, 210), slice(1000, 1010)]
    for event in events:
        score[event] = 13.5 + rng.normal(0, 0.3, 10)
    night = _night(score)

    uniform = two_scale_flags(_cap(night, alerts=2), None)["flagged"].to_numpy()
    assert not any(uniform[event].any() for event in events)  # the plateau's top is the night's highest minutes

    leveled = _cap(night, level_minutes=360, alerts=2)
    flags = two_scale_flags(leveled, None)["flagged"].to_numpy()
    assert all(flags[event].all() for event in events)  # each event stands out of its own level
    assert not flags[400:880].any()
    assert _covered(leveled) <= BUDGET * 1440
    assert len(_alerts(leveled)) == 2


def test_a_night_within_budget_keeps_its_fitted_thresholds_whatever_the_level_window(drifted):
    quiet = drifted.assign(score=drifted["score"] / 10)  # the event alone crosses the threshold
    capped = _cap(quiet, level_minutes=360)
    assert (capped["threshold"] == quiet["threshold"]).all() and capped["alarm_cap"].iloc[0] == 1.0
