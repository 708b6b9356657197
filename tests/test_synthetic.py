"""Synthetic fleet: reproducible raw partitions, labels that match the data they describe."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from fleetwatch.core.errors import FleetWatchError, PartitionNotFound
from fleetwatch.core.lake import Lake
from fleetwatch.core.settings import Settings
from fleetwatch.core.specs import load_spec
from fleetwatch.core.synthetic import LABEL_COLUMNS, generate_fleet, load_labels

START = dt.date(2026, 3, 1)
ENTITIES, DAYS = 10, 6


def _settings(home) -> Settings:
    return Settings(home=home, lake_root=str(home / "lake"), specs_dir=home / "specs")


def _raw(settings, dataset, day=None) -> pd.DataFrame:
    lake = Lake(settings.lake_root)
    days = [day] if day else lake.days(lake.raw(dataset))
    return pd.concat([pd.read_parquet(lake.raw(dataset, d)) for d in days], ignore_index=True)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """One moderate fleet (10 entities x 6 days) shared by the read-only tests."""
    settings = _settings(tmp_path_factory.mktemp("fleet"))
    summary = generate_fleet(settings, "fleet", entities=ENTITIES, days=DAYS, start=START, seed=7)
    return settings, summary, _raw(settings, "fleet"), load_labels(settings, "fleet")


def _minute_of_day(index: pd.DatetimeIndex) -> np.ndarray:
    return np.asarray(index.hour * 60 + index.minute)


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        settings = _settings(tmp_path / name)
        generate_fleet(settings, "fleet", entities=3, days=3, start=START, seed=seed)
        runs[name] = (_raw(settings, "fleet"), load_labels(settings, "fleet"))
    pd.testing.assert_frame_equal(runs["a"][0], runs["b"][0])
    pd.testing.assert_frame_equal(runs["a"][1], runs["b"][1])
    assert not np.allclose(runs["a"][0]["cpu_pct"], runs["c"][0]["cpu_pct"])


def test_partitions_rows_columns_and_ranges(fleet):
    settings, summary, raw, _ = fleet
    spec = load_spec(settings.specs_dir, "fleet")
    lake = Lake(settings.lake_root)
    assert lake.days(lake.raw("fleet")) == [START + dt.timedelta(days=d) for d in range(DAYS)]
    assert summary["rows"] == len(raw) == ENTITIES * DAYS * 1440
    assert spec.min_rows == ENTITIES * 1440 // 2 and spec.sampling_seconds == 60 and spec.alarm_budget == 1.0
    day = _raw(settings, "fleet", START + dt.timedelta(days=2))
    assert list(day.columns) == spec.columns
    assert len(day) == ENTITIES * 1440 and day["entity_id"].nunique() == ENTITIES
    assert str(day["ts"].dt.tz) == "UTC"
    assert day["ts"].min() == pd.Timestamp("2026-03-03", tz="UTC")
    assert day["ts"].max() == pd.Timestamp("2026-03-03 23:59", tz="UTC")
    assert not day.duplicated(["entity_id", "ts"]).any()
    for metric in spec.metrics:
        assert raw[metric.name].dtype == np.float64
        assert raw[metric.name].between(metric.min, metric.max).all(), metric.name
    assert not set(raw.columns) & (set(LABEL_COLUMNS) - {"entity_id"} | {"label", "is_anomaly"})


def test_labels_lie_inside_the_fleet_and_cover_every_kind(fleet):
    settings, summary, raw, labels = fleet
    assert list(labels.columns) == LABEL_COLUMNS
    assert labels["anomaly_id"].is_unique
    assert set(labels["entity_id"]) <= set(raw["entity_id"])
    assert set(labels["kind"]) == {"spike", "contextual", "collective", "drift"}
    assert summary["anomalies"] == labels["kind"].value_counts().to_dict()
    assert (labels["start_ts"] >= pd.Timestamp(START + dt.timedelta(days=1), tz="UTC")).all()  # day one is clean
    assert (labels["end_ts"] <= raw["ts"].max()).all() and (labels["start_ts"] <= labels["end_ts"]).all()
    metric_names = set(load_spec(settings.specs_dir, "fleet").metric_names)
    assert all(set(m.split(",")) <= metric_names for m in labels["metrics"])
    minutes = (labels["end_ts"] - labels["start_ts"]).dt.total_seconds() // 60 + 1
    for kind, low, high in (("spike", 1, 3), ("contextual", 30, 60), ("collective", 20, 90)):
        assert minutes[labels["kind"] == kind].between(low, high).all(), kind
    for _, own in labels[labels["kind"] != "drift"].groupby("entity_id"):
        own = own.sort_values("start_ts")
        assert (own["start_ts"].iloc[1:].to_numpy() > own["end_ts"].iloc[:-1].to_numpy()).all()


def test_spikes_are_far_from_the_entity_median(fleet):
    _, _, raw, labels = fleet
    spikes = labels[labels["kind"] == "spike"]
    assert len(spikes) >= 5
    for spike in spikes.itertuples():
        series = raw.loc[raw["entity_id"] == spike.entity_id].set_index("ts")[spike.metrics]
        window = series.loc[spike.start_ts : spike.end_ts]
        assert (window - series.median()).abs().max() > 4 * series.std(), spike.anomaly_id


def test_contextual_is_a_daytime_level_at_the_wrong_time(fleet):
    _, _, raw, labels = fleet
    contextual = labels[labels["kind"] == "contextual"]
    for anomaly in contextual.itertuples():
        series = raw.loc[raw["entity_id"] == anomaly.entity_id].set_index("ts")["cpu_pct"]
        window = series.loc[anomaly.start_ts : anomaly.end_ts]
        others = labels[(labels["entity_id"] == anomaly.entity_id) & (labels["kind"] != "drift")]
        clean = np.ones(len(series), dtype=bool)
        for o in others.itertuples():
            clean &= ~((series.index >= o.start_ts) & (series.index <= o.end_ts))
        same_time = series[clean & np.isin(_minute_of_day(series.index), _minute_of_day(window.index))]
        assert window.mean() > same_time.mean() + 3 * same_time.std(), anomaly.anomaly_id
        assert window.mean() < series.quantile(0.99), anomaly.anomaly_id  # a level the entity reaches daily


def test_collective_shifts_every_labelled_metric(fleet):
    _, _, raw, labels = fleet
    for anomaly in labels[labels["kind"] == "collective"].itertuples():
        metrics = anomaly.metrics.split(",")
        assert 2 <= len(metrics) <= 3
        frame = raw.loc[raw["entity_id"] == anomaly.entity_id].set_index("ts")[metrics]
        window = frame.loc[anomaly.start_ts : anomaly.end_ts]
        before = frame.loc[anomaly.start_ts - pd.Timedelta(hours=2) : anomaly.start_ts - pd.Timedelta(minutes=1)]
        assert (window.mean() - before.mean() > 1.5 * frame.std()).all(), anomaly.anomaly_id


def test_drift_raises_the_level_of_drifting_entities_only(fleet):
    _, summary, raw, labels = fleet
    drift_day = pd.Timestamp(START + dt.timedelta(days=2 * DAYS // 3), tz="UTC")
    drift = labels[labels["kind"] == "drift"].set_index("entity_id")
    assert summary["drift_day"] == drift_day.date().isoformat()
    assert sorted(drift.index) == summary["drift_entities"] and len(drift) == round(0.15 * ENTITIES)
    assert (drift["start_ts"] == drift_day).all() and (drift["end_ts"] == raw["ts"].max()).all()
    after = raw["ts"] >= drift_day
    ratio = raw[after].groupby("entity_id").median(numeric_only=True) / raw[~after].groupby("entity_id").median(
        numeric_only=True
    )
    for entity, row in ratio.iterrows():
        drifted = drift.loc[entity, "metrics"].split(",") if entity in drift.index else []
        for metric, value in row.items():
            assert (value > 1.15) if metric in drifted else (0.9 < value < 1.1), (entity, metric, value)


def test_rerun_replaces_partitions_and_labels(settings):
    generate_fleet(settings, "fleet", entities=2, days=4, start=START, seed=1)
    summary = generate_fleet(settings, "fleet", entities=3, days=2, start=START, seed=2)
    lake = Lake(settings.lake_root)
    assert lake.days(lake.raw("fleet")) == [START, START + dt.timedelta(days=1)]
    assert _raw(settings, "fleet")["entity_id"].nunique() == 3
    labels = load_labels(settings, "fleet")
    assert (labels["end_ts"] < pd.Timestamp(START + dt.timedelta(days=2), tz="UTC")).all()
    assert summary["anomalies"]["drift"] == 1 and summary["drift_day"] == "2026-03-02"


def test_one_day_fleet_has_clean_data_and_empty_labels(settings):
    summary = generate_fleet(settings, "tiny", entities=2, days=1, start=START)
    labels = load_labels(settings, "tiny")
    assert labels.empty and list(labels.columns) == LABEL_COLUMNS
    assert summary["drift_day"] is None and summary["rows"] == 2 * 1440


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(dataset="fleet", entities=0, days=3), "entities must be"),
        (dict(dataset="fleet", entities=2, days=0), "days must be"),
        (dict(dataset="9fleet", entities=2, days=3), "dataset name '9fleet' is not valid"),
        (dict(dataset="my-fleet", entities=2, days=3), "dataset name 'my-fleet' is not valid: 'my-fleet' must be letters"),
        (dict(dataset="fleet", entities=2, days=3, drift_day=3), r"drift_day must lie in 1\.\.2"),
    ],
)
def test_bad_arguments_fail_before_writing(settings, kwargs, message):
    dataset = kwargs.pop("dataset")
    with pytest.raises(FleetWatchError, match=message):
        generate_fleet(settings, dataset, start=START, **kwargs)
    assert not settings.home.exists()


def test_labels_of_an_ungenerated_dataset_name_the_path(settings):
    with pytest.raises(PartitionNotFound, match=r"no anomaly labels for dataset 'ghost' at .*labels/ghost"):
        load_labels(settings, "ghost")
