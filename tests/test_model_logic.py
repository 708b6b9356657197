"""Detector-agnostic model logic on small hand-built data: calibration, thresholds, incidents,
severity and drift (explanations: test_explanations.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feature_store.views import FeatureView, statistic_of
from models.calibration import TailCalibrator, combine
from models.drift import DriftReference, psi
from models.frames import epoch_ns, sampling_step
from models.incidents import group_incidents, severity
from models.params import ExplainParams, FeatureLayout, ModelParams
from models.thresholds import threshold_for_budget

EXPLAIN = ExplainParams()


def minutes(*values: int, start: str = "2026-01-01") -> pd.DatetimeIndex:
    return pd.Timestamp(start, tz="UTC") + pd.to_timedelta(list(values), unit="min")


def test_calibration_is_the_empirical_tail_inside_the_reference():
    cal = TailCalibrator().fit(np.arange(1000.0))
    got = cal.transform(np.array([-5.0, 0.0, 500.0, 999.0]))
    # (#reference >= s + 1) / (n + 1): 1000, 500 and 1 reference points at or above.
    expected = np.log10(1001 / np.array([1001, 1001, 501, 2]))
    np.testing.assert_allclose(got, expected)


def test_calibration_is_monotone_and_keeps_rising_beyond_the_reference():
    scores = np.random.default_rng(0).normal(size=5000)
    cal = TailCalibrator(n_quantiles=1000).fit(scores)
    assert cal.quantiles_.shape == (1000,)
    grid = np.linspace(-5, 12, 500)
    calibrated = cal.transform(grid)
    assert np.all(np.diff(calibrated) >= 0)
    assert calibrated[0] == 0.0
    beyond = cal.transform(scores.max() + np.array([0.5, 1.0, 3.0, 6.0]))
    assert np.all(np.diff(beyond) > 0.5)  # exponential tail: linear growth, no saturation
    assert beyond[0] > np.log10(1001)
    # The 99th percentile of held-out data is a 1-in-100 event: about 2.
    assert cal.transform(np.quantile(scores, [0.99]))[0] == pytest.approx(2.0, abs=0.1)


def test_calibration_tail_scale_floor_keeps_a_mostly_zero_score_from_exploding():
    scores = np.concatenate([np.zeros(990), np.full(10, 1e-3)])  # reference rows almost never move
    bare, floored = TailCalibrator().fit(scores), TailCalibrator(min_tail_scale=1.0).fit(scores)
    assert bare.transform(np.array([0.5]))[0] > 100  # half a unit beyond: "1e-100 rare"
    top = np.log10(len(scores) + 1.0)
    assert floored.transform(np.array([0.5]))[0] == pytest.approx(top + 0.5 / np.log(10), rel=1e-3)
    np.testing.assert_allclose(floored.transform(scores[:5]), bare.transform(scores[:5]))  # inside: unchanged
    with pytest.raises(ValueError, match="min_tail_scale"):
        TailCalibrator(min_tail_scale=-1.0).fit(scores)


def test_calibration_rejects_bad_input_and_keeps_nan():
    with pytest.raises(ValueError, match="finite"):
        TailCalibrator().fit(np.array([1.0, np.nan, 2.0]))
    cal = TailCalibrator().fit(np.arange(10.0))
    assert np.isnan(cal.transform(np.array([np.nan]))[0])


def test_combine_mean_and_max():
    a, b = np.array([1.0, 4.0]), np.array([3.0, 0.0])
    np.testing.assert_allclose(combine([a, b]), [2.0, 2.0])
    np.testing.assert_allclose(combine([a, b], how="max"), [3.0, 4.0])
    with pytest.raises(ValueError, match="how"):
        combine([a, b], how="median")


def test_combine_weights_count_a_detector_as_several():
    a, b, r = np.array([1.0, 4.0]), np.array([3.0, 0.0]), np.array([6.0, 6.0])
    np.testing.assert_allclose(combine([a, b, r], weights=[1, 1, 2]), [(1 + 3 + 12) / 4, (4 + 0 + 12) / 4])
    np.testing.assert_allclose(combine([a, b, r], weights=[1, 1, 0]), combine([a, b]))
    np.testing.assert_allclose(combine([a, b, r], how="max", weights=[1, 1, 0]), [6.0, 6.0])  # max ignores weights
    for bad in ([1, 1], [1, -1, 1], [0, 0, 0]):
        with pytest.raises(ValueError, match="weights"):
            combine([a, b, r], weights=bad)


def count_incidents(scores, ts, threshold, gap_minutes, sampling_seconds, entities=None):
    frame = pd.DataFrame(
        {"entity_id": "e" if entities is None else entities, "ts": ts, "score": scores, "flagged": scores > threshold}
    )
    return len(group_incidents(frame, gap_minutes=gap_minutes, sampling_seconds=sampling_seconds))


@pytest.mark.parametrize("budget,gap", [(1.0, 10), (3.0, 0), (0.5, 30)])
def test_threshold_honours_the_budget_and_is_the_lowest_that_does(budget, gap):
    rng = np.random.default_rng(1)
    n = 3 * 288  # three days at 5-minute sampling
    ts = pd.date_range("2026-01-01", periods=n, freq="5min", tz="UTC")
    scores = rng.exponential(size=n)
    for start in (100, 400, 700):  # three bursts that should each count as one incident
        scores[start : start + 6] += 6 + rng.random(6)
    threshold = threshold_for_budget(scores, ts, budget_per_day=budget, gap_minutes=gap, sampling_seconds=300)
    allowed = budget * 3
    assert count_incidents(scores, ts, threshold, gap, 300) <= allowed
    lower = np.unique(scores[scores < threshold]).max()
    assert count_incidents(scores, ts, lower, gap, 300) > allowed
    # every higher candidate honours the budget too
    for higher in np.unique(scores[scores > threshold])[:50]:
        assert count_incidents(scores, ts, higher, gap, 300) <= allowed


def test_threshold_counts_incidents_per_entity_for_pooled_scores():
    rng = np.random.default_rng(2)
    ts_one = pd.date_range("2026-01-01", periods=288, freq="5min", tz="UTC")
    ts = np.concatenate([ts_one, ts_one])  # two entities over the same day
    entities = np.repeat(["a", "b"], 288)
    scores = rng.exponential(size=576)
    threshold = threshold_for_budget(scores, ts, budget_per_day=2, gap_minutes=5, sampling_seconds=300, entities=entities)
    assert count_incidents(scores, ts, threshold, 5, 300, entities) <= 4
    lower = np.unique(scores[scores < threshold]).max()
    assert count_incidents(scores, ts, lower, 5, 300, entities) > 4


def test_threshold_rejects_non_finite_scores():
    ts = pd.date_range("2026-01-01", periods=3, freq="min", tz="UTC")
    with pytest.raises(ValueError, match="finite"):
        threshold_for_budget(np.array([1.0, np.inf, 2.0]), ts, budget_per_day=1, gap_minutes=0, sampling_seconds=60)


def test_group_incidents_tolerates_short_gaps_and_keeps_entities_apart():
    # entity a flagged at minutes 0,1,2,5 (2 unflagged minutes between 2 and 5: tolerated with
    # gap_minutes=2) and 9,10 (3 unflagged minutes before 9: a new incident); entity b's
    # flagged minutes 3 and 4 lie between a's but form their own incident.
    a_min = list(range(12))
    a_flag = [m in (0, 1, 2, 5, 9, 10) for m in a_min]
    a_score = [1.0, 3.0, 2.0, 0.1, 0.1, 5.0, 0.1, 0.1, 0.1, 4.0, 2.0, 0.1]
    b_min = [3, 4, 6]
    frame = pd.DataFrame(
        {
            "entity_id": ["a"] * 12 + ["b"] * 3,
            "ts": minutes(*a_min).append(minutes(*b_min)),
            "score": a_score + [7.0, 8.0, 0.0],
            "flagged": a_flag + [True, True, False],
        }
    ).sample(frac=1.0, random_state=3)  # order must not matter
    got = group_incidents(frame, gap_minutes=2, sampling_seconds=60)
    expected = pd.DataFrame(
        {
            "entity_id": ["a", "a", "b"],
            "start_ts": minutes(0, 9, 3),
            "end_ts": minutes(5, 10, 4),
            "n_points": [4, 2, 2],
            "peak_score": [5.0, 4.0, 8.0],
            "peak_ts": minutes(5, 9, 4),
        }
    )
    pd.testing.assert_frame_equal(got, expected)
    # With no tolerance, minute 5 is its own incident.
    assert len(group_incidents(frame, gap_minutes=0, sampling_seconds=60)) == 4


def test_group_incidents_drops_incidents_with_fewer_flagged_points_than_the_minimum():
    # minutes 0-5 flagged (6 points), then a 2-point blip at 20-21, then 4 points at 40-43
    flagged = [0, 1, 2, 3, 4, 5, 20, 21, 40, 41, 42, 43]
    frame = pd.DataFrame(
        {
            "entity_id": "a",
            "ts": minutes(*range(50)),
            "score": [float(m in flagged) * (1 + m / 100) for m in range(50)],
            "flagged": [m in flagged for m in range(50)],
        }
    )
    assert group_incidents(frame, gap_minutes=5, sampling_seconds=60)["n_points"].tolist() == [6, 2, 4]
    kept = group_incidents(frame, gap_minutes=5, sampling_seconds=60, min_points=4)
    assert kept["n_points"].tolist() == [6, 4]
    assert kept["start_ts"].tolist() == list(minutes(0, 40))
    assert group_incidents(frame, gap_minutes=5, sampling_seconds=60, min_points=7).empty
    with pytest.raises(ValueError, match="min_points"):
        group_incidents(frame, gap_minutes=5, sampling_seconds=60, min_points=0)


def test_group_incidents_with_nothing_flagged_is_empty_with_columns():
    frame = pd.DataFrame({"entity_id": ["a"], "ts": minutes(0), "score": [1.0], "flagged": [False]})
    got = group_incidents(frame, gap_minutes=5, sampling_seconds=60)
    assert got.empty
    assert list(got.columns) == ["entity_id", "start_ts", "end_ts", "n_points", "peak_score", "peak_ts"]


@pytest.mark.parametrize(
    "peak,expected", [(3.0, "low"), (3.7, "low"), (3.75, "medium"), (4.4, "medium"), (4.5, "high"), (6.0, "critical")]
)
def test_severity_bands(peak, expected):
    assert severity(peak, 3.0) == expected


def test_severity_needs_a_positive_threshold():
    with pytest.raises(ValueError, match="threshold"):
        severity(1.0, 0.0)


def test_psi_is_near_zero_on_the_same_distribution_and_large_on_a_shift():
    rng = np.random.default_rng(5)
    train = pd.DataFrame({"x": rng.normal(size=5000), "y": rng.exponential(size=5000)})
    ref = DriftReference().fit(train, ["x", "y"])
    assert ref.edges_.shape == (2, 9) and ref.proportions_.shape == (2, 10)
    np.testing.assert_allclose(ref.proportions_.sum(axis=1), 1.0)
    same = psi(ref, pd.DataFrame({"x": rng.normal(size=2000), "y": rng.exponential(size=2000)}))
    assert same["x"] < 0.05 and same["y"] < 0.05
    shifted = psi(ref, pd.DataFrame({"x": rng.normal(1.0, 1.0, 2000), "y": rng.exponential(size=2000)}))
    assert shifted["x"] > 0.25 and shifted["y"] < 0.05


def test_drift_reference_arrays_round_trip_and_nan_columns():
    train = pd.DataFrame({"x": np.arange(100.0), "y": np.r_[np.full(50, np.nan), np.arange(50.0)]})
    ref = DriftReference().fit(train, ["x", "y"])
    back = DriftReference.from_state_arrays(ref.get_params(), ref.state_arrays())
    new = pd.DataFrame({"x": np.arange(0.0, 200.0, 2), "y": np.full(100, np.nan)})
    got, expected = psi(back, new), psi(ref, new)
    assert got["x"] == pytest.approx(expected["x"]) and got["x"] > 0.25
    assert np.isnan(got["y"])
    with pytest.raises(ValueError, match="'z'"):
        DriftReference().fit(train, ["z"])


def test_model_params_smooth_scores_over_the_specs_minutes(tmp_path):
    from fleetwatch.core.datasets.smd import smd_spec
    from fleetwatch.core.settings import Settings
    from fleetwatch.core.specs import DatasetSpec, MetricSpec
    from models.training import model_params

    settings = Settings(home=tmp_path)
    assert model_params(settings, smd_spec()).smooth_points == 15  # SMD: 15 minutes of 1-minute rows
    coarse = DatasetSpec(name="meters", sampling_seconds=300, metrics=[MetricSpec(name="kwh")])
    assert coarse.score_smoothing_minutes == 5 and model_params(settings, coarse).smooth_points == 1


def test_model_params_group_incidents_with_the_specs_gap_else_the_setting(tmp_path):
    from fleetwatch.core.datasets.smd import INCIDENT_GAP_MINUTES, smd_spec
    from fleetwatch.core.settings import Settings
    from fleetwatch.core.specs import DatasetSpec, MetricSpec
    from models.training import model_params

    settings = Settings(home=tmp_path, incident_gap_minutes=7)
    assert model_params(settings, smd_spec()).gap_minutes == INCIDENT_GAP_MINUTES != 7
    plain = DatasetSpec(name="meters", metrics=[MetricSpec(name="kwh")])
    assert model_params(settings, plain).gap_minutes == 7


def test_ensemble_members_leave_out_one_statistic_of_the_view_each():
    view = FeatureView(name="t", version=1, entity_column="entity_id", timestamp_column="ts", metrics=("cpu", "disk__io"))
    cols = view.feature_columns
    assert [statistic_of(c) for c in cols[:5]] == ["value", "mean", "std", "z", "mean"]
    assert statistic_of("disk__io") == "value" and statistic_of("disk__io__roc") == "roc"
    members = FeatureLayout.of(view).member_columns(("mean", "std", "mean"))
    assert list(members) == ["mean", "std"]
    kept = [cols[i] for i in members["mean"]]
    assert "cpu" in kept and "cpu__z_5m" in kept and "disk__io__roc" in kept
    assert not any("__mean_" in c for c in kept) and len(kept) == len(cols) - 2 * 3
    # a statistic the columns do not have, or the only one they have, makes no member
    assert FeatureLayout(("cpu", "mem"), ("cpu", "mem"), ("cpu", "mem")).member_columns(("mean", "value")) == {}
    with pytest.raises(ValueError):
        ModelParams(subspaces=("median",))


def test_a_member_can_leave_out_the_level_values_and_means_together():
    view = FeatureView(name="t", version=1, entity_column="entity_id", timestamp_column="ts", metrics=("cpu", "mem"))
    cols = view.feature_columns
    kept = [cols[i] for i in FeatureLayout.of(view).member_columns(("value+mean",))["value+mean"]]
    assert kept and all(statistic_of(c) in ("std", "z", "roc") for c in kept)
    assert len(kept) == len(cols) - 2 * (1 + len(view.windows_minutes))
    params = ModelParams(subspaces=("value+mean", "std"))
    assert ModelParams.model_validate(params.model_dump()) == params  # what a bundle saves, it loads
    with pytest.raises(ValueError, match="median"):
        ModelParams(subspaces=("value+median",))


# -- sharing the training over Spark tasks ---------------------------------------------------------


@pytest.mark.parametrize(
    ("entities", "per_task", "slots", "buckets"),
    [(10, 32, 2, 2), (100, 32, 2, 4), (1, 32, 2, 1), (3, 32, 8, 3), (1000, 32, 8, 32), (0, 32, 2, 1)],
)
def test_a_fleet_gets_at_least_one_bucket_per_task_slot_and_at_most_per_task_entities_a_bucket(
    entities, per_task, slots, buckets
):
    from models.training import bucket_count

    assert bucket_count(entities, per_task, slots) == buckets


def test_buckets_land_on_as_many_spark_partitions_as_there_are_buckets(spark):
    """The labels that Spark's hash partitioning sends to different partitions: with 2 task slots
    (``local[2]``) a small fleet's two buckets are fitted by two tasks at once."""
    from pyspark.sql import functions as F

    from fleetwatch.core.spark import task_slots
    from models.training import bucket_labels

    assert task_slots(spark) == 2
    for n in (2, 3, 7):
        labels = bucket_labels(spark, n)
        frame = spark.createDataFrame([(label,) for label in labels], "_bucket int").repartition(n, "_bucket")
        sizes = frame.withColumn("p", F.spark_partition_id()).groupBy("p").count().collect()
        assert len(labels) == n and sorted(r["count"] for r in sizes) == [1] * n, (n, labels)


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_time_steps_are_read_in_seconds_whatever_unit_the_timestamps_were_read_in(unit):
    # pandas keeps the unit a file was read in (Parquet gives microseconds): a 1-minute step must
    # stay 60 s, and the threshold's incidents must be counted in the same minutes
    ts = pd.Series(pd.date_range("2026-01-01", periods=3 * 1440, freq="min", tz="UTC")).dt.as_unit(unit)
    assert sampling_step(ts, default=300) == 60
    assert epoch_ns(ts)[1] - epoch_ns(ts)[0] == 60 * 10**9
    rng = np.random.default_rng(3)
    scores = rng.exponential(size=len(ts))
    reference = threshold_for_budget(scores, ts.dt.as_unit("ns"), budget_per_day=2, gap_minutes=10, sampling_seconds=60)
    assert threshold_for_budget(scores, ts, budget_per_day=2, gap_minutes=10, sampling_seconds=60) == reference


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_epoch_nanoseconds_are_the_same_for_zoned_naive_and_plain_timestamps(unit):
    zoned = pd.date_range("2026-03-29 00:30", periods=5, freq="37min", tz="Europe/Paris").as_unit(unit)  # over a DST change
    expected = np.array([t.value for t in zoned], dtype=np.int64)
    naive = zoned.tz_convert("UTC").tz_localize(None)
    for given in (zoned, pd.Series(zoned), naive, pd.Series(naive), naive.to_numpy(), list(naive)):
        got = epoch_ns(given)
        assert got.dtype == np.int64 and np.array_equal(got, expected)
    missing = pd.Series(zoned).where(lambda t: t != zoned[1])  # NaT, zoned: pandas' missing value
    assert np.array_equal(epoch_ns(missing), [expected[0], np.iinfo(np.int64).min, *expected[2:]])
    if unit != "ns":  # a time nanoseconds cannot hold is refused, not wrapped round
        with pytest.raises(pd.errors.OutOfBoundsDatetime):
            epoch_ns(np.array(["2300-01-01"], dtype=f"datetime64[{unit}]"))


def _incidents_by_groupby(frame: pd.DataFrame, gap_minutes: int, min_points: int) -> pd.DataFrame:
    """The grouping rule written the plain pandas way: the oracle for ``group_incidents``."""
    flagged = frame[frame["flagged"]].sort_values(["entity_id", "ts"], kind="mergesort").reset_index(drop=True)
    step = pd.Timedelta(minutes=gap_minutes) + pd.Timedelta(seconds=60)
    incident = (flagged["entity_id"].ne(flagged["entity_id"].shift()) | (flagged["ts"].diff() > step)).cumsum()
    grouped = flagged.groupby(incident)
    peaks = grouped["score"].idxmax().to_numpy()
    out = pd.DataFrame({"entity_id": grouped["entity_id"].first().to_numpy(), "start_ts": grouped["ts"].min().to_numpy(),
                        "end_ts": grouped["ts"].max().to_numpy(), "n_points": grouped.size().to_numpy().astype("int64"),
                        "peak_score": flagged.loc[peaks, "score"].to_numpy(dtype=float),
                        "peak_ts": flagged.loc[peaks, "ts"].to_numpy(), "severe": grouped["severe"].any().to_numpy(dtype=bool)})
    for col in ("start_ts", "end_ts", "peak_ts"):
        out[col] = out[col].astype(frame["ts"].dtype)
    return out[(out["n_points"] >= min_points) | out["severe"]].reset_index(drop=True)


@pytest.mark.parametrize("seed", range(6))
def test_group_incidents_matches_a_plain_groupby_on_random_fleets(seed):
    rng = np.random.default_rng(seed)
    n = 300 + 50 * seed
    stamps = pd.Timestamp("2026-01-01", tz="UTC" if seed % 2 else None) + pd.to_timedelta(rng.integers(0, 1500, n), unit="min")
    frame = pd.DataFrame({"entity_id": rng.choice(["a", "b", "c"], n), "ts": stamps,
                          "score": np.round(rng.random(n), 1),  # ties: the first highest row is the peak
                          "flagged": rng.random(n) < 0.3, "severe": rng.random(n) < 0.03})
    if seed % 3 == 0:
        frame["ts"] = frame["ts"].dt.as_unit("us")  # as Parquet and Arrow hand timestamps over
    gap, min_points = int(rng.integers(0, 15)), int(rng.integers(1, 4))
    found = group_incidents(frame, gap_minutes=gap, sampling_seconds=60, min_points=min_points, severe_col="severe")
    assert len(found) > 5
    pd.testing.assert_frame_equal(found, _incidents_by_groupby(frame, gap, min_points))
