"""Adapting to a new normal: the level-shift rule, and which entities a night queues for retraining."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from test_persistent_alerts import NIGHTS, STEP, _at, night

from fleetwatch.core.alerts_store import AlertsStore
from fleetwatch.core.specs import DatasetSpec, MetricSpec
from models.adaptation import LevelShiftRule, adaptation_queue, is_level_shift

RULE = LevelShiftRule(spread_ratio=2.0, min_sigmas=3.0, tail_share=0.25)


def _frame(**columns) -> pd.DataFrame:
    return pd.DataFrame(columns)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_a_stable_new_level_is_a_level_shift(rng):
    before = _frame(cpu=rng.normal(40, 2, 2000), mem=rng.normal(60, 1, 2000))
    during = _frame(cpu=rng.normal(55, 2.5, 1500), mem=rng.normal(60, 1, 1500))  # cpu up by 7.5 sigma, as calm
    assert is_level_shift(before, during, ["cpu", "mem"], RULE)


def test_a_volatile_deviation_is_an_anomaly(rng):
    before = _frame(cpu=rng.normal(40, 2, 2000))
    during = _frame(cpu=55 + rng.normal(0, 15, 1500))  # moved, but seven times as spread
    assert not is_level_shift(before, during, ["cpu"], RULE)
    assert is_level_shift(before, during, ["cpu"], RULE.model_copy(update={"spread_ratio": 10.0}))


def test_a_deviation_that_returns_is_an_anomaly(rng):
    before = _frame(cpu=rng.normal(40, 2, 2000))
    during = _frame(cpu=np.concatenate([rng.normal(60, 2, 1200), rng.normal(40, 2, 400)]))  # back for the last quarter
    assert not is_level_shift(before, during, ["cpu"], RULE)


def test_nothing_moved_is_no_level_shift(rng):
    before = _frame(cpu=rng.normal(40, 2, 2000))
    assert not is_level_shift(before, _frame(cpu=rng.normal(41, 2, 500)), ["cpu"], RULE)
    assert not is_level_shift(before.iloc[:1], _frame(cpu=rng.normal(80, 2, 500)), ["cpu"], RULE)  # no history to judge


def _publish_shift(settings, nights: int) -> AlertsStore:
    """e1 shifted from 18:00 on the first night for ``nights`` nights; e2 one short alert a night."""
    store = AlertsStore(settings.alerts_db_url)
    for i, day in enumerate(NIGHTS[:nights]):
        start = _at(day, 18) if i == 0 else _at(day, 0, 1)
        frame = night(day, {"e1": [(start, _at(day, 23, 59))], "e2": [(_at(day, 3), _at(day, 3, 10))]})
        store.publish_partition("fleet", day, frame, carry_step=STEP, sampling_seconds=60)
    return store


def _spec(**kw) -> DatasetSpec:
    return DatasetSpec(name="fleet", metrics=[MetricSpec(name="cpu")], **kw)


def test_a_persistent_alert_queues_its_entity_after_the_set_nights_or_when_labelled_new_normal(settings):
    spec = _spec(alarm_share_budget=1.0)  # no budget pressure here
    store = _publish_shift(settings, 2)
    s3 = settings.model_copy(update={"persistent_adapt_days": 3})
    assert adaptation_queue(s3, spec, NIGHTS[1]) == []
    assert adaptation_queue(settings.model_copy(update={"persistent_adapt_days": 2}), spec, NIGHTS[1]) == ["e1"]

    [carried] = store.frame("fleet").query("entity_id == 'e1'")["id"]
    store.label(int(carried), False, new_normal=True)
    assert adaptation_queue(s3, spec, NIGHTS[1]) == ["e1"]
    assert adaptation_queue(s3, spec, NIGHTS[1] + dt.timedelta(days=1)) == []  # no longer open that night

    store.label(int(carried), True)  # a confirmed anomaly is never adapted to
    assert adaptation_queue(settings.model_copy(update={"persistent_adapt_days": 1}), spec, NIGHTS[1]) == []


def test_an_entity_over_its_alarm_share_budget_is_queued_before_the_set_nights(settings):
    store = _publish_shift(settings, 2)
    s = settings.model_copy(update={"persistent_adapt_days": 10, "alarm_budget_nights": 2})
    # e1: 360 + 1439 minutes of 2880 in alarm (62 %); e2: 22 minutes (0.8 %)
    assert adaptation_queue(s, _spec(alarm_share_budget=0.5), NIGHTS[1]) == ["e1"]
    assert adaptation_queue(s, _spec(alarm_share_budget=0.7), NIGHTS[1]) == []
    # the default budget: one incident a day of alarm_budget_incident_minutes
    assert adaptation_queue(s, _spec(alarm_budget=1.0), NIGHTS[1]) == ["e1"]
    assert _spec(alarm_budget=2.0).alarm_share(60.0) == pytest.approx(120 / 1440)
    assert store.entity_nights("fleet", NIGHTS[1], 2).set_index("entity_id")["alarm_minutes"]["e2"] == pytest.approx(22)


def test_a_deviation_the_champion_already_judged_asks_again_only_after_the_set_nights(settings):
    """A retrain on a window holding the deviation adapted to it or left it out: the same open
    alert does not ask for a retrain the next night, only persistent_adapt_days nights later."""
    _publish_shift(settings, 3)
    s = settings.model_copy(update={"persistent_adapt_days": 2, "alarm_budget_nights": 2})
    spec = _spec(alarm_budget=1.0)  # e1 is over budget too
    assert adaptation_queue(s, spec, NIGHTS[2]) == ["e1"]  # no champion has seen it (judged_until None)
    assert adaptation_queue(s, spec, NIGHTS[2], judged_until=NIGHTS[0] - dt.timedelta(days=1)) == ["e1"]
    assert adaptation_queue(s, spec, NIGHTS[2], judged_until=NIGHTS[1]) == []  # judged the night before
    assert adaptation_queue(s, spec, NIGHTS[2], judged_until=NIGHTS[0]) == ["e1"]  # judged 2 nights ago

    [carried] = AlertsStore(settings.alerts_db_url).frame("fleet").query("entity_id == 'e1'")["id"]
    AlertsStore(settings.alerts_db_url).label(int(carried), False, new_normal=True)
    assert adaptation_queue(s, spec, NIGHTS[2], judged_until=NIGHTS[1]) == ["e1"]  # a user's word goes


def test_training_adapts_to_labelled_or_due_level_shifts_and_leaves_other_deviations_out(settings, rng):
    from models.adaptation import decide

    start = pd.Timestamp("2026-01-05", tz="UTC")
    history = pd.date_range(start - pd.Timedelta(days=2), periods=2880, freq="min")
    span = pd.date_range(start, periods=1440, freq="min")
    before = pd.concat(
        [pd.DataFrame({"entity_id": e, "ts": history, "cpu": rng.normal(40, 2, 2880)}) for e in ("a", "b", "c", "d")]
    )
    steady, wild = rng.normal(55, 2, 1440), 55 + rng.normal(0, 20, 1440)
    rows = pd.concat(
        [
            pd.DataFrame({"entity_id": "a", "ts": span, "cpu": wild}),  # labelled new_normal: the user decides
            pd.DataFrame({"entity_id": "b", "ts": span, "cpu": steady}),  # a level shift, due
            pd.DataFrame({"entity_id": "c", "ts": span, "cpu": steady}),  # a level shift, not due yet
            pd.DataFrame({"entity_id": "d", "ts": span, "cpu": wild}),  # volatile, due: an anomaly
        ]
    )
    alerts = pd.DataFrame(
        {"id": [1, 2, 3, 4], "entity_id": ["a", "b", "c", "d"], "new_normal": [True, False, False, False],
         "nights": [2, 3, 2, 3], "start_ts": start, "end_ts": span[-1], "last_dt": NIGHTS[0]}
    )
    s = settings.model_copy(update={"persistent_adapt_days": 3})

    history = pd.concat([before, rows], ignore_index=True)
    assert decide(s, _spec(alarm_share_budget=1.0), alerts, history, ["cpu"]) == {
        1: "adapt", 2: "adapt", 3: "exclude", 4: "exclude"
    }
