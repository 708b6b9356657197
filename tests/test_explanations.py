"""Explanations on small hand-built data: which metrics an incident is ranked on, against their
normal ranges, spreads and the hour before."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

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
from models.params import ExplainParams

EXPLAIN = ExplainParams()


def minutes(*values: int, start: str = "2026-01-01") -> pd.DatetimeIndex:
    return pd.Timestamp(start, tz="UTC") + pd.to_timedelta(list(values), unit="min")


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


@pytest.mark.parametrize("profile", ["ranges", "spreads only", "errors only"])
def test_alerts_rank_each_incident_and_phase_as_the_evidence_functions_do(profile):
    """``entity_incidents`` computes on arrays; what it ranks must be what ``incident_evidence`` and
    ``top_contributors`` (the backtest's and the benchmarks' entry points) give for the same rows
    and context, to the last digit: random walks with missing values and missing rows, a flat
    metric, a constant column in a context, and incidents of one and of several phases."""
    from models.incidents import entity_incidents, incident_context, incident_phases

    rng = np.random.default_rng(11)
    n, metrics = 900, ["a", "b", "flat", "c"]
    values = {m: 50 + np.cumsum(rng.normal(0, 1, n)) for m in ("a", "b", "c")}
    values["flat"] = np.where(rng.random(n) < 0.97, 7.0, 8.0)
    values["b"][rng.random(n) < 0.05] = np.nan
    values["c"][300:380] = 41.0  # constant in the context of the incident after it
    flagged = np.zeros(n, dtype=bool)
    for start, length in ((40, 12), (200, 5), (390, 160), (700, 61)):
        flagged[start : start + length] = True
    pdf = scored_entity(flagged, **values)
    pdf["score"] = np.where(flagged, 3.5 + rng.random(n), 0.5)
    pdf = pdf.drop(index=range(640, 660)).reset_index(drop=True)  # 20 minutes missing from the last one's context
    for m in metrics:
        pdf[f"err__{m}"] = rng.gamma(2.0, 1.0, len(pdf))
    baselines = {m: float(np.nanmedian(values[m])) for m in metrics}
    spread = {} if profile == "errors only" else spreads(pdf, metrics)
    ranges = normal_ranges(pdf, metrics) if profile == "ranges" else None
    found = entity_incidents(pdf, metrics, baselines, spread, ranges=ranges, gap_minutes=5, sampling_seconds=60,
                             context_skip_minutes=15, phase_minutes=60)
    assert len(found) == 4 and [len(inc["phases"]) for inc in found] == [1, 1, 3, 2]

    def expected(rows: pd.DataFrame) -> list[dict]:
        peak = rows.loc[[rows["score"].idxmax()], metrics]
        if not spread:
            errs = rows[[f"err__{m}" for m in metrics]].set_axis(metrics, axis=1)
            return top_contributors(errs, peak, baselines, k=len(metrics))
        context = incident_context(pdf, rows["ts"].iloc[0], 15, EXPLAIN.context_minutes)
        evidence = incident_evidence(rows[metrics], context[metrics], baselines, spread, ranges, EXPLAIN)
        return top_contributors(evidence, peak, baselines, k=len(metrics), how="max")

    for inc in found:
        rows = pdf[(pdf["ts"] >= inc["start_ts"]) & (pdf["ts"] <= inc["end_ts"])]
        assert inc["ranked"] == expected(rows)
        parts = incident_phases(rows, 60)
        assert [(p["start_ts"], p["end_ts"]) for p in inc["phases"]] == [(q["ts"].iloc[0], q["ts"].iloc[-1]) for q in parts]
        assert [p["ranked"] for p in inc["phases"]] == [expected(q) for q in parts]


def test_range_scores_sum_each_metrics_distance_outside_its_normal_range():
    baselines, spread = {"cpu": 50.0, "mem": 30.0}, {"cpu": 10.0, "mem": 2.0}
    ranges = {"cpu": [20.0, 80.0], "mem": [25.0, 35.0]}
    rows = pd.DataFrame({"cpu": [50.0, 100.0, 100.0, np.nan], "mem": [30.0, 30.0, 41.0, 30.0]})
    got = range_scores(rows, baselines, spread, ranges)
    inside = 1e-3 * np.array([0.0 + 0.0, 5.0 + 0.0, 5.0 + 5.5, 0.0 + 0.0])  # the tie-break weight of |x - median|
    outside = np.array([0.0, 20 / 10, 20 / 10 + 6 / 2, 0.0])  # a missing value adds nothing
    np.testing.assert_allclose(got, outside + inside)
