"""Detector-agnostic model logic on small hand-built data: calibration, thresholds, incidents,
severity, explanations and drift."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from feature_store.views import FeatureView, statistic_of
from models.calibration import TailCalibrator, combine
from models.drift import DriftReference, psi
from models.explain import (
    changes,
    deviations,
    incident_evidence,
    metric_errors,
    normal_ranges,
    range_exits,
    range_scores,
    spreads,
    top_contributors,
)
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


def test_metric_errors_sum_features_and_normalise_per_metric():
    errors = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 1.0]])
    raw = metric_errors(errors, ["cpu", "cpu", "mem"])
    assert list(raw.columns) == ["cpu", "mem"]
    np.testing.assert_allclose(raw.to_numpy(), [[3.0, 3.0], [1.0, 1.0]])
    norm = metric_errors(errors, ["cpu", "cpu", "mem"], {"cpu": 2.0, "mem": 0.5})
    np.testing.assert_allclose(norm.to_numpy(), [[1.5, 6.0], [0.5, 2.0]])
    with pytest.raises(ValueError, match="shape"):
        metric_errors(errors, ["cpu"])


def test_top_contributors_ranks_the_injected_metric_first():
    rng = np.random.default_rng(4)
    feature_metric = ["cpu"] * 4 + ["mem", "disk"]
    train = rng.uniform(0.4, 0.6, size=(200, 6))
    norm = metric_errors(train, feature_metric).median(axis=0).to_dict()
    incident = rng.uniform(0.5, 0.7, size=(5, 6))
    incident[:, 4] = 2.0  # mem's error: below cpu's raw sum (4 features) but far above its norm
    raw = metric_errors(incident, feature_metric)
    assert (raw["cpu"] > raw["mem"]).all()
    errors = metric_errors(incident, feature_metric, norm)
    peak = pd.DataFrame({"cpu": [55.0], "mem": [93.0], "disk": [40.0]})
    top = top_contributors(errors, peak, {"cpu": 50.0, "mem": 30.0, "disk": 41.0}, k=2)
    assert [t["metric"] for t in top] == ["mem", "cpu"]
    assert top[0] == {"metric": "mem", "value": 93.0, "baseline": 30.0, "error": pytest.approx(errors["mem"].mean())}
    json.dumps(top)  # plain types only: goes into the alerts table
    with pytest.raises(ValueError, match="peak row"):
        top_contributors(errors, pd.concat([peak, peak]), {"cpu": 0, "mem": 0, "disk": 0})


def test_deviation_ranking_floors_spreads_and_takes_each_metrics_largest_move():
    rng = np.random.default_rng(5)
    train = pd.DataFrame({"cpu": rng.normal(50, 10, 500), "mem": rng.normal(30, 1, 500), "flat": np.zeros(500)})
    spread = spreads(train, ["cpu", "mem", "flat"])
    # a metric constant in training gets the median spread, not a tiny one
    assert spread["flat"] == pytest.approx(float(np.median(list(spread.values()))))
    assert spread["cpu"] > spread["mem"] == pytest.approx(spread["flat"])
    baselines = {"cpu": 50.0, "mem": 30.0, "flat": 0.0}
    incident = pd.DataFrame({"cpu": [70.0, 72.0, 71.0], "mem": [30.0, 35.0, 30.0], "flat": [0.1, 0.1, 0.1]})
    devs = deviations(incident, baselines, spread)
    np.testing.assert_allclose(devs["cpu"], np.abs(incident["cpu"] - 50.0) / spread["cpu"])
    top = top_contributors(devs, incident.iloc[[1]], baselines, k=3, how="max")
    assert [t["metric"] for t in top][0] == "mem"  # one row far out beats a steady moderate move
    assert top[0]["error"] == pytest.approx(5.0 / spread["mem"])
    assert [t["metric"] for t in top_contributors(devs, incident.iloc[[1]], baselines, k=3)][0] == "cpu"  # mean
    with pytest.raises(ValueError, match="how"):
        top_contributors(devs, incident.iloc[[1]], baselines, how="median")


def test_a_metric_that_leaves_its_normal_range_outranks_one_that_swings_as_it_always_does():
    rng = np.random.default_rng(6)
    n = 2000
    # "batch" jumps to 100 for a tenth of every day in training; "disk" sits near 10
    batch = np.where(rng.random(n) < 0.1, 100.0, 20.0) + rng.normal(0, 1, n)
    train = pd.DataFrame({"batch": batch, "disk": rng.normal(10, 1, n)})
    metrics = ["batch", "disk"]
    baselines = {m: float(train[m].median()) for m in metrics}
    spread, ranges = spreads(train, metrics), normal_ranges(train, metrics)
    assert ranges["batch"][0] < 20 and ranges["batch"][1] > 99  # the jumps are part of normal
    incident = pd.DataFrame({"batch": [100.0, 101.0], "disk": [15.0, 16.0]})
    by_median = top_contributors(deviations(incident, baselines, spread), incident.iloc[[1]], baselines, k=2, how="max")
    assert by_median[0]["metric"] == "batch"  # far from its median, as every day
    devs = deviations(incident, baselines, spread, ranges)
    ranked = top_contributors(devs, incident.iloc[[1]], baselines, k=2, how="max")
    assert [t["metric"] for t in ranked] == ["disk", "batch"]
    assert ranked[0]["error"] > 1.0 > ranked[1]["error"] > 0.0  # inside its range: only the tie-break weight
    np.testing.assert_allclose(
        devs["disk"],
        (incident["disk"] - ranges["disk"][1]) / spread["disk"] + 1e-3 * (incident["disk"] - baselines["disk"]) / spread["disk"],
    )
    assert normal_ranges(train.iloc[:0], metrics) == {}


def test_changes_are_z_scores_against_the_context_with_a_floored_deviation():
    spread = {"cpu": 10.0, "flat": 2.0}
    context = pd.DataFrame({"cpu": [40.0, 60.0] * 10, "flat": [5.0] * 20})  # cpu: mean 50, std 10
    rows = pd.DataFrame({"cpu": [70.0, 50.0], "flat": [6.0, np.nan]})
    got = changes(rows, context, spread)
    np.testing.assert_allclose(got["cpu"], [2.0, 0.0])
    np.testing.assert_allclose(got["flat"], [1.0 / (0.1 * 2.0), 0.0])  # flat context: floor 0.1 x spread; NaN -> 0
    gone = changes(rows, context.assign(flat=np.nan), spread)  # flat missing all hour: no evidence
    np.testing.assert_allclose(gone["flat"], [0.0, 0.0])
    np.testing.assert_allclose(gone["cpu"], got["cpu"])
    with pytest.raises(ValueError, match="2 context rows"):
        changes(rows, context.iloc[:1], spread)


def test_a_metric_that_stepped_inside_its_range_outranks_one_that_was_already_high():
    rng = np.random.default_rng(7)
    train = pd.DataFrame({"conn": rng.normal(50, 5, 2000), "load": rng.normal(50, 5, 2000)})
    metrics = ["conn", "load"]
    baselines = {m: float(train[m].median()) for m in metrics}
    spread, ranges = spreads(train, metrics), normal_ranges(train, metrics)
    # in the hour before, conn sat at its median and load was already high; neither leaves its range
    context = pd.DataFrame({"conn": rng.normal(50, 0.5, 60), "load": rng.normal(62, 0.5, 60)})
    incident = pd.DataFrame({"conn": [58.0, 60.0], "load": [62.0, 62.5]})
    assert all(ranges[m][0] < incident[m].min() and incident[m].max() < ranges[m][1] for m in metrics)
    peak = incident.iloc[[1]]
    by_range = top_contributors(deviations(incident, baselines, spread, ranges), peak, baselines, k=2, how="max")
    assert [t["metric"] for t in by_range] == ["load", "conn"]  # farther from its median
    evidence = incident_evidence(incident, context, baselines, spread, ranges)
    assert [t["metric"] for t in top_contributors(evidence, peak, baselines, k=2, how="max")] == ["conn", "load"]
    # a move adds at most change_weight x change_cap: one spread outside a range still outranks it
    added = evidence - deviations(incident, baselines, spread, ranges)
    assert added["conn"].max() == pytest.approx(EXPLAIN.change_weight * EXPLAIN.change_cap) and (added >= 0).all().all()
    # too little context (an incident in the day's first minutes): the range evidence alone
    short = incident_evidence(incident, context.iloc[: EXPLAIN.context_min_rows - 1], baselines, spread, ranges)
    pd.testing.assert_frame_equal(short, deviations(incident, baselines, spread, ranges))


def test_a_metric_already_outside_its_range_before_the_incident_counts_only_how_much_farther_it_went():
    baselines, spread, ranges = entity_stats("disk", "cpu")  # range 35-65, spread 5
    # all the hour before, disk sat at 80 (3 spreads above its range), a level it drifted to; cpu at 50
    context = pd.DataFrame({"disk": [80.0] * 60, "cpu": [50.0] * 60})
    incident = pd.DataFrame({"disk": [80.0, 95.0], "cpu": [72.0, 72.0]})
    np.testing.assert_allclose(range_exits(incident, spread, ranges)["disk"], [3.0, 6.0])
    plain = deviations(incident, baselines, spread, ranges)
    assert plain.iloc[0]["disk"] > plain.iloc[0]["cpu"]  # against the training range alone disk leads
    evidence = incident_evidence(incident, context, baselines, spread, ranges)
    first = evidence.iloc[0]
    assert first["cpu"] > 1.4 and first["disk"] == pytest.approx(1e-3 * 30 / 5)  # disk only as far out as before
    # where disk goes 3 spreads farther than it was, those 3 count (and its move, capped)
    assert evidence.iloc[1]["disk"] == pytest.approx(
        3.0 + EXPLAIN.inside_range_weight * 45 / 5 + EXPLAIN.change_weight * EXPLAIN.change_cap
    )
    # a few stray exits in the hour before (under a tenth of it) take nothing away
    spiky = context.assign(disk=[50.0] * 55 + [80.0] * 5)
    assert incident_evidence(incident, spiky, baselines, spread, ranges).iloc[0]["disk"] > 3.0


def scored_entity(flagged: np.ndarray, **metrics: np.ndarray) -> pd.DataFrame:
    """One entity's scored rows a minute apart: score 5 where ``flagged`` (threshold 3), else 0.5."""
    return pd.DataFrame(
        {
            "entity_id": "m1",
            "ts": minutes(*range(len(flagged))),
            "score": np.where(flagged, 5.0, 0.5),
            "flagged": flagged,
            "threshold": 3.0,
            "scope": "entity",
            **metrics,
        }
    )


def entity_stats(*names: str):
    """Training median 50, spread 5 and normal range 35-65 for each metric: (baselines, spreads, ranges)."""
    return {m: 50.0 for m in names}, {m: 5.0 for m in names}, {m: [35.0, 65.0] for m in names}


def test_entity_incidents_rank_metrics_against_the_hour_before_each_incident():
    from models.incidents import entity_incidents

    conn = np.r_[np.full(120, 50.0), np.full(60, 60.0)]  # steps up at minute 120
    load = np.r_[np.full(60, 50.0), np.full(120, 62.0)]  # already high from minute 60
    pdf = scored_entity(np.arange(180) >= 120, conn=conn, load=load)
    ts = pdf["ts"]
    baselines, spread, ranges = entity_stats("conn", "load")
    found = entity_incidents(pdf, ["conn", "load"], baselines, spread, ranges=ranges, gap_minutes=5, sampling_seconds=60)
    assert len(found) == 1 and found[0]["start_ts"] == ts[120] and found[0]["n_points"] == 60
    assert [r["metric"] for r in found[0]["ranked"]] == ["conn", "load"]
    # skipping 70 minutes, the context (minutes 0-49) predates load's step too: both moved, both
    # capped, and the range evidence decides
    skipped = entity_incidents(
        pdf, ["conn", "load"], baselines, spread, ranges=ranges, gap_minutes=5, sampling_seconds=60, context_skip_minutes=70
    )
    assert [r["metric"] for r in skipped[0]["ranked"]] == ["load", "conn"]
    # the same incident with no rows before it (the day's first minutes): ranked by the range evidence alone
    alone = entity_incidents(
        pdf.iloc[120:], ["conn", "load"], baselines, spread, ranges=ranges, gap_minutes=5, sampling_seconds=60
    )
    assert [r["metric"] for r in alone[0]["ranked"]] == ["load", "conn"]


def test_a_long_incident_is_also_explained_hour_by_hour():
    from models.incidents import entity_incidents, phases_json

    disk = np.r_[np.full(60, 50.0), np.full(180, 80.0)]  # leaves its range at minute 60 (3 spreads out)
    cpu = np.r_[np.full(180, 50.0), np.full(60, 100.0)]  # leaves it farther (7 spreads) at minute 180
    pdf = scored_entity(np.arange(240) >= 60, disk=disk, cpu=cpu)
    ts = pdf["ts"]
    baselines, spread, ranges = entity_stats("disk", "cpu")
    (inc,) = entity_incidents(pdf, ["disk", "cpu"], baselines, spread, ranges=ranges, gap_minutes=5, sampling_seconds=60)
    # over all four hours cpu went farther, though for the first two only disk was out of range
    assert [r["metric"] for r in inc["ranked"]] == ["cpu", "disk"]
    phases = inc["phases"]
    assert [(p["start_ts"], p["end_ts"], p["n_points"]) for p in phases] == [
        (ts[60], ts[119], 60),
        (ts[120], ts[179], 60),
        (ts[180], ts[239], 60),
    ]
    assert [[r["metric"] for r in p["ranked"]] for p in phases] == [["disk", "cpu"], ["disk", "cpu"], ["cpu", "disk"]]
    stored = json.loads(phases_json(phases))
    assert stored[2]["start_ts"] == "2026-01-01T03:00:00+00:00" and stored[2]["top_metrics"] == "cpu,disk"
    halves = entity_incidents(
        pdf, ["disk", "cpu"], baselines, spread, ranges=ranges, gap_minutes=5, sampling_seconds=60, phase_minutes=120
    )
    assert [p["n_points"] for p in halves[0]["phases"]] == [120, 60]
    with pytest.raises(ValueError, match="phase_minutes must be > 0, got 0"):
        entity_incidents(
            pdf, ["disk", "cpu"], baselines, spread, ranges=ranges, gap_minutes=5, sampling_seconds=60, phase_minutes=0
        )


def test_range_scores_sum_each_metrics_distance_outside_its_normal_range():
    baselines, spread = {"cpu": 50.0, "mem": 30.0}, {"cpu": 10.0, "mem": 2.0}
    ranges = {"cpu": [20.0, 80.0], "mem": [25.0, 35.0]}
    rows = pd.DataFrame({"cpu": [50.0, 100.0, 100.0, np.nan], "mem": [30.0, 30.0, 41.0, 30.0]})
    got = range_scores(rows, baselines, spread, ranges)
    inside = 1e-3 * np.array([0.0 + 0.0, 5.0 + 0.0, 5.0 + 5.5, 0.0 + 0.0])  # the tie-break weight of |x - median|
    outside = np.array([0.0, 20 / 10, 20 / 10 + 6 / 2, 0.0])  # a missing value adds nothing
    np.testing.assert_allclose(got, outside + inside)


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
