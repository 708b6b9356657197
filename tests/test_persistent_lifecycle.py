"""A level shift and a long anomaly on real Spark: the shift is one alert carried across three
nights, the retrain it asks for adapts its entity (the next night raises no alert for it), and
the long anomaly inside the same training window stays an anomaly. These run with the alarm cap
off (``FLEETWATCH_ALARM_CAP=false``), the carry's own behaviour; the last test runs the same
nights with the cap on."""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pandas as pd
import pytest

from fleetwatch.core.settings import Settings
from fleetwatch.core.specs import DatasetSpec, MetricSpec, write_spec

DS = "shifty"
START = dt.date(2026, 3, 1)
DAYS = [START + dt.timedelta(days=i) for i in range(9)]
SHIFTED, ANOMALOUS = "e1", "e2"
SHIFT_FROM = pd.Timestamp(DAYS[5], tz="UTC") + pd.Timedelta(hours=6)  # cpu +15 (7.5 sd) from day 5 06:00 for good
ANOMALY = (  # cpu swings wildly from day 3 20:00 to day 4 06:00, then returns
    pd.Timestamp(DAYS[3], tz="UTC") + pd.Timedelta(hours=20),
    pd.Timestamp(DAYS[4], tz="UTC") + pd.Timedelta(hours=6),
)


def _raw(day: dt.date, rng: np.random.Generator, entities=("e0", SHIFTED, ANOMALOUS, "e3")) -> pd.DataFrame:
    ts = pd.date_range(pd.Timestamp(day, tz="UTC"), periods=1440, freq="min")
    frames = []
    for entity in entities:
        daily = 2 * np.sin(2 * np.pi * np.arange(1440) / 1440)
        cpu = 40 + daily + rng.normal(0, 2, 1440)
        mem = 60 + rng.normal(0, 1.5, 1440)
        if entity == SHIFTED:
            cpu = cpu + np.where(ts >= SHIFT_FROM, 15.0, 0.0)
        if entity == ANOMALOUS:
            inside = (ts >= ANOMALY[0]) & (ts < ANOMALY[1])
            cpu = np.where(inside, 40 + rng.normal(0, 25, 1440), cpu)
        frames.append(pd.DataFrame({"entity_id": entity, "ts": ts, "cpu": np.clip(cpu, 0, 200), "mem": mem}))
    return pd.concat(frames, ignore_index=True)


def _lake(spark, s: Settings, days, entities=("e0", SHIFTED, ANOMALOUS, "e3")):
    """The spec, and the raw and feature partitions of ``days`` (the same rows for every test)."""
    from feature_store.pipeline import build_features
    from fleetwatch.core.lake import Lake, write_pandas_partition

    spec = DatasetSpec(name=DS, metrics=[MetricSpec(name="cpu", max=200.0), MetricSpec(name="mem")])
    write_spec(s.specs_dir, spec)
    lake, rng = Lake(s.lake_root), np.random.default_rng(11)
    for day in days:
        write_pandas_partition(lake, _raw(day, rng, entities=entities), lake.raw(DS, day))
        build_features(spark, s, DS, day)
    return spec, lake


@pytest.fixture
def shift_settings(settings, monkeypatch) -> Settings:
    monkeypatch.setenv("FLEETWATCH_ALARM_CAP", "false")
    monkeypatch.setenv("FLEETWATCH_MIN_HISTORY_DAYS", "2")
    monkeypatch.setenv("FLEETWATCH_TRAINING_WINDOW_DAYS", "8")
    monkeypatch.setenv("FLEETWATCH_PERSISTENT_ADAPT_DAYS", "3")
    monkeypatch.setenv("FLEETWATCH_SPARK_MASTER", "local[2]")
    monkeypatch.setenv("FLEETWATCH_SPARK_SHUFFLE_PARTITIONS", "2")
    saved = dict(os.environ)
    yield Settings()
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.integration
@pytest.mark.slow
def test_a_level_shift_is_one_carried_alert_then_adapted_and_a_long_anomaly_is_not(spark, shift_settings):
    from fleetwatch.core.alerts_store import AlertsStore
    from fleetwatch.core.publishing import publish_alerts
    from models import registry
    from models.adaptation import adaptation_queue
    from models.scoring import score_partition
    from models.training import train_models

    s = shift_settings
    spec, lake = _lake(spark, s, DAYS)
    store = AlertsStore(s.alerts_db_url)

    assert "champion" in train_models(spark, s, DS, DAYS[2])  # v1 on days 0-2: before both
    queued = {}
    for day in DAYS[3:8]:
        score_partition(spark, s, DS, day)
        publish_alerts(s, DS, day)
        queued[day] = adaptation_queue(s, spec, day)

    alerts = store.frame(DS)
    shift = alerts[(alerts["entity_id"] == SHIFTED) & (alerts["end_ts"] >= SHIFT_FROM)]
    assert len(shift) == 1, shift[["id", "dt", "start_ts", "end_ts", "nights"]]
    carried = shift.iloc[0]
    assert bool(carried["persistent"]) and carried["nights"] == 3 and carried["last_dt"] == DAYS[7]
    assert abs(carried["start_ts"] - SHIFT_FROM) < pd.Timedelta(minutes=30)
    anomaly = alerts[(alerts["entity_id"] == ANOMALOUS) & (alerts["start_ts"] <= ANOMALY[1]) & (alerts["end_ts"] >= ANOMALY[0])]
    assert bool(anomaly["persistent"].any())  # it crossed midnight: one alert over nights 3 and 4
    # both entities went over the default alarm-share budget (one hour a day) while their alert was
    # open, and asked for a retrain; the retrain's rule tells the shift from the anomaly
    assert queued == {DAYS[3]: [], DAYS[4]: [ANOMALOUS], DAYS[5]: [], DAYS[6]: [SHIFTED], DAYS[7]: [SHIFTED]}

    before = registry.champion(s, DS).version
    result = train_models(spark, s, DS, DAYS[7])  # the window (days 0-7) holds both
    assert "1 persistent alerts adapted to, 1 left out" in result and "champion" in result, result
    assert registry.champion(s, DS).version != before

    score_partition(spark, s, DS, DAYS[8])
    publish_alerts(s, DS, DAYS[8])
    # adapted: the new level raises no alert of its own; what is left is the budget's odd blip
    # that every entity has (alarm_budget = 1 incident a day), against 1440 minutes a night before
    minutes = store.entity_nights(DS, DAYS[8], 1).set_index("entity_id")["alarm_minutes"]
    assert minutes.get(SHIFTED, 0.0) < 60, minutes
    assert store.get(int(carried["id"]))["last_dt"] == DAYS[7]  # and the carried alert has ended

    # the long anomaly stayed out of training: the new champion still alerts on it
    score_partition(spark, s, DS, DAYS[3])
    scores = pd.read_parquet(lake.partition("scores", DS, DAYS[3]))
    scores = scores[scores["entity_id"] == ANOMALOUS]
    ts = pd.to_datetime(scores["ts"], utc=True)
    assert scores.loc[(ts >= ANOMALY[0]) & (ts < ANOMALY[1]), "flagged"].mean() > 0.8
    assert scores.loc[ts < ANOMALY[0] - pd.Timedelta(hours=1), "flagged"].mean() < 0.05


@pytest.mark.integration
@pytest.mark.slow
def test_a_backtest_with_adapt_retrains_when_the_shift_asks_and_the_new_level_stops_alerting(spark, shift_settings):
    """``evaluate --adapt``: the backtest's test nights retrain when the nightly DAG would, so time
    in alarm on an entity whose normal moved is what a deployment would see."""
    from fleetwatch.app.backtest import run_platform
    from fleetwatch.core.alerts_store import AlertsStore
    from fleetwatch.core.lake import Lake, write_pandas_partition

    s = shift_settings
    write_spec(s.specs_dir, DatasetSpec(name=DS, metrics=[MetricSpec(name="cpu", max=200.0), MetricSpec(name="mem")]))
    lake, rng = Lake(s.lake_root), np.random.default_rng(11)
    days = DAYS[3:]  # the shift starts on the third day (DAYS[5]); no anomaly inside these days
    for day in days:
        write_pandas_partition(lake, _raw(day, rng, entities=("e0", SHIFTED)), lake.raw(DS, day))

    run = run_platform(s, DS, days, days[:2], days[2:], lambda *a, **k: None, adapt=True)

    asked = {a["day"]: a["entities"] for a in run["adaptation"]}
    assert asked and set().union(*asked.values()) == {SHIFTED}, run["adaptation"]
    first = min(asked)
    assert first >= DAYS[5].isoformat()  # not before the shift
    minutes = AlertsStore(s.alerts_db_url).entity_nights(DS, days[-1], 1).set_index("entity_id")["alarm_minutes"]
    assert minutes.get(SHIFTED, 0.0) < 60, (minutes, run["adaptation"])  # the new level is normal now
    # the night that asked, before the retrain, the entity was in alarm for most of the shift
    asked_night = AlertsStore(s.alerts_db_url).entity_nights(DS, dt.date.fromisoformat(first), 1)
    assert asked_night.set_index("entity_id")["alarm_minutes"].get(SHIFTED, 0.0) > 600, asked_night


@pytest.mark.integration
@pytest.mark.slow
def test_with_the_alarm_cap_every_entity_keeps_to_its_budget_and_the_cap_only_takes_flags_away(
    spark, shift_settings, monkeypatch
):
    from fleetwatch.core.alerts_store import AlertsStore
    from fleetwatch.core.publishing import publish_alerts
    from models.scoring import score_partition
    from models.training import train_models

    spec, lake = _lake(spark, shift_settings, DAYS[:8], entities=("e0", SHIFTED, "e3"))
    train_models(spark, shift_settings, DS, DAYS[2])
    uncapped = {}
    for day in DAYS[3:8]:  # cap off: what the nights hold
        score_partition(spark, shift_settings, DS, day)
        uncapped[day] = pd.read_parquet(lake.partition("scores", DS, day))
    monkeypatch.setenv("FLEETWATCH_ALARM_CAP", "true")
    s = Settings()
    store = AlertsStore(s.alerts_db_url)
    budget = spec.alarm_share(s.alarm_budget_incident_minutes) * 1440  # one hour a night
    for day in DAYS[5:8]:
        score_partition(spark, s, DS, day)
        publish_alerts(s, DS, day)
        night = store.entity_nights(DS, day, 1).set_index("entity_id")
        scores = pd.read_parquet(lake.partition("scores", DS, day))
        shifted = scores[scores["entity_id"] == SHIFTED]
        assert shifted["uncapped_alarm_minutes"].iloc[0] > 600  # the shift alone: 18 hours on its first night
        assert (shifted["alarm_cap"] > 1).all()
        assert night["alarm_minutes"].get(SHIFTED, 0.0) <= budget, night
        alerts = store.frame(DS)
        raised = ((alerts["entity_id"] == SHIFTED) & (alerts["dt"] == day)).sum()
        assert raised <= max(shifted["uncapped_incidents"].iloc[0], spec.alarm_budget)
        for entity in ("e0", "e3"):  # quiet entities: the cap only ever takes flags away, and only when over budget
            mine, before = scores[scores["entity_id"] == entity], uncapped[day][uncapped[day]["entity_id"] == entity]
            assert not (mine["flagged"].to_numpy() & ~before["flagged"].to_numpy()).any()
            window = [u[u["entity_id"] == entity]["uncapped_alarm_minutes"].iloc[0]
                      for d, u in uncapped.items() if day - dt.timedelta(days=s.alarm_budget_nights) < d <= day]
            if np.mean(window) <= budget:
                assert (mine["alarm_cap"] == 1.0).all()
                assert mine["flagged"].tolist() == before["flagged"].tolist()
            else:  # an ordinary night of more than an hour in alarm
                assert night["alarm_minutes"].get(entity, 0.0) <= budget, (entity, day, window)
                raised = ((alerts["entity_id"] == entity) & (alerts["dt"] == day)).sum()
                assert raised <= max(before["uncapped_incidents"].iloc[0], spec.alarm_budget)


@pytest.mark.integration
@pytest.mark.slow
def test_with_the_alarm_cap_the_shift_is_still_adapted_to_and_the_long_anomaly_still_left_out(
    spark, shift_settings, monkeypatch
):
    """Capped, neither deviation holds one alert open from night to night; the retrain judges
    their capped nights instead (``models.adaptation.capped_deviations``)."""
    from fleetwatch.core.publishing import publish_alerts
    from models.scoring import score_partition
    from models.training import train_models

    monkeypatch.setenv("FLEETWATCH_ALARM_CAP", "true")
    s = Settings()
    spec, lake = _lake(spark, s, DAYS)
    train_models(spark, s, DS, DAYS[2])
    for day in DAYS[3:8]:
        score_partition(spark, s, DS, day)
        publish_alerts(s, DS, day)

    def uncapped(day, entity):  # what the champion's fitted thresholds flag
        scores = pd.read_parquet(lake.partition("scores", DS, day))
        scores = scores[scores["entity_id"] == entity]
        fitted = scores["score"] * scores["alarm_cap"] > scores["threshold"]
        return scores.assign(ts=pd.to_datetime(scores["ts"], utc=True), fitted=fitted)

    assert (uncapped(DAYS[4], ANOMALOUS)["alarm_cap"] > 1).all() and (uncapped(DAYS[6], SHIFTED)["alarm_cap"] > 1).all()
    result = train_models(spark, s, DS, DAYS[7])
    assert "champion" in result and "1 persistent alerts adapted to" in result, result  # the shift's capped nights

    score_partition(spark, s, DS, DAYS[8])
    after = uncapped(DAYS[8], SHIFTED)
    assert after["fitted"].mean() < 0.05, after["fitted"].mean()  # adapted: the new level is normal now
    score_partition(spark, s, DS, DAYS[3])  # the long anomaly stayed out of training
    night = uncapped(DAYS[3], ANOMALOUS)
    assert night.loc[(night["ts"] >= ANOMALY[0]) & (night["ts"] < ANOMALY[1]), "fitted"].mean() > 0.8
    assert night.loc[night["ts"] < ANOMALY[0] - pd.Timedelta(hours=1), "fitted"].mean() < 0.05
