"""Quality measures on hand-made arrays with known answers, and one end-to-end SMD evaluation."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from fleetwatch.app import metrics as M


def _ts(*minutes):
    return pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(list(minutes), unit="min")


def _spans(*pairs):
    return pd.DataFrame({"start_ts": _ts(*[a for a, _ in pairs]), "end_ts": _ts(*[b for _, b in pairs])})


def test_auprc_and_roc_auc_known_values():
    y = [0, 0, 1, 1]
    assert M.auprc(y, [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    assert M.roc_auc(y, [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    # ranking 1,0,1,0 from the top: precision 1 at recall .5, 2/3 at recall 1 -> AP = .5*1 + .5*2/3
    assert M.auprc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 + 1 / 3)
    assert M.roc_auc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.75)
    assert math.isnan(M.auprc([0, 0], [0.1, 0.2]))


def test_best_f1_picks_the_oracle_threshold():
    # threshold 0.7 flags the top three: tp 2, fp 1 -> p 2/3, r 1, F1 0.8 (the best)
    f1, thr = M.best_f1([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    assert f1 == pytest.approx(0.8)
    assert thr == pytest.approx(0.7)
    assert M.best_f1([0, 1, 1], [0.0, 0.5, 0.5])[0] == pytest.approx(1.0)


def test_f1_at_threshold_from_flags():
    assert M.f1_at_threshold([1, 1, 0, 0], [True, False, True, False]) == pytest.approx(0.5)
    assert M.f1_at_threshold([1, 0], [False, False]) == 0.0


def test_segments_are_runs_of_labelled_rows():
    segs = M.segments(pd.Series(_ts(0, 1, 2, 3, 4, 5)), [1, 1, 0, 0, 1, 1])
    assert list(segs["start_ts"]) == list(_ts(0, 4))
    assert list(segs["end_ts"]) == list(_ts(1, 5))


def test_event_recall_and_false_incidents():
    events = _spans((10, 20), (50, 60), (100, 101))
    # first alert touches event 1 at its last minute, second lies inside event 2, third and fourth hit nothing
    alerts = _spans((20, 25), (52, 53), (70, 80), (200, 210))
    assert M.event_recall(events, alerts) == pytest.approx(2 / 3)
    assert M.false_incidents(alerts, events) == 2
    assert M.false_incidents_per_day(alerts, events, 4.0) == pytest.approx(0.5)
    assert M.event_recall(events, alerts.iloc[:0]) == 0.0
    assert math.isnan(M.event_recall(events.iloc[:0], alerts))
    assert M.alert_precision(alerts, events) == pytest.approx(2 / 4)
    assert math.isnan(M.alert_precision(alerts.iloc[:0], events))


def test_alarm_share_counts_normal_rows_inside_alerts_only():
    ts = pd.Series(_ts(*range(10)))
    labels = [0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    # the alert covers minutes 2..5: two labelled rows (not counted) and two of the 8 normal ones
    assert M.alarm_share_normal(ts, labels, _spans((2, 5))) == pytest.approx(2 / 8)
    assert M.alarm_share_normal(ts, labels, _spans((2, 5)).iloc[:0]) == 0.0
    assert M.alarm_share_normal(ts, labels, _spans((0, 9))) == 1.0


def test_hitrate_uses_the_ceil_rule():
    # 3 true metrics -> top ceil(4.5) = 5 ranked are looked at
    ranked = ["a", "x", "y", "b", "z", "c"]
    assert M.hitrate(["a", "b", "c"], ranked, 1.5) == pytest.approx(2 / 3)
    assert M.hitrate(["a", "b", "c"], ranked, 2.0) == pytest.approx(1.0)
    # 1 true metric -> top ceil(1.5) = 2
    assert M.hitrate(["x"], ranked, 1.5) == 1.0
    assert M.hitrate(["y"], ranked, 1.5) == 0.0


def test_hitrate_at_merges_overlapping_alerts_and_counts_missed_events():
    events = _spans((10, 20), (50, 60)).assign(metrics=["a,b", "c"])
    alerts = _spans((12, 14), (15, 18), (300, 301)).assign(n_points=[1, 3, 2])
    contributions = [
        [{"metric": "a", "error": 9.0}, {"metric": "x", "error": 1.0}, {"metric": "b", "error": 0.0}],
        [{"metric": "x", "error": 2.0}, {"metric": "b", "error": 1.5}, {"metric": "a", "error": 0.0}],
        [{"metric": "c", "error": 5.0}],
    ]
    # weighted: a 9, x 1+6=7, b 4.5 -> top ceil(3)=3 holds a and b; event 2 has no alert
    assert M.rank_metrics(contributions[:2], [1, 3]) == ["a", "x", "b"]
    all_events, detected, n, n_detected = M.hitrate_at(events, alerts, contributions, 1.5)
    assert (all_events, detected, n, n_detected) == (pytest.approx(0.5), pytest.approx(1.0), 2, 1)


def test_events_are_ranked_by_the_phases_they_overlap():
    start, end = _ts(0, 179)
    def ranking(*metrics):
        return [{"metric": m, "error": float(len(metrics) - i)} for i, m in enumerate(metrics)]
    phases = [  # a three-hour alert: disk first, cpu in its last hour
        {"start_ts": a.isoformat(), "end_ts": b.isoformat(), "n_points": 60, "contributions": ranking(*order)}
        for (a, b), order in zip(
            [_ts(0, 59), _ts(60, 119), _ts(120, 179)], [("disk", "io", "cpu"), ("disk", "io", "cpu"), ("cpu", "net", "disk")],
            strict=True,
        )
    ]
    alerts = pd.DataFrame({
        "start_ts": [start, _ts(300)[0]], "end_ts": [end, _ts(310)[0]], "n_points": [180, 11],
        "contributions": [json.dumps(ranking("disk", "io", "cpu")), json.dumps(ranking("mem"))],
        "phases": [json.dumps(phases), None],  # the second published before alerts had phases
    })
    spans, ranked = M.phase_spans(alerts)
    assert spans["alert"].tolist() == [0, 0, 0, 1] and spans["n_points"].tolist() == [60, 60, 60, 11]
    assert spans["start_ts"].iloc[2] == _ts(120)[0] and ranked[3] == [{"metric": "mem", "error": 1.0}]
    events = _spans((130, 140), (20, 30), (305, 306)).assign(metrics=["cpu", "io", "mem"])
    # the cpu event in the last hour: its phase ranks cpu first; the whole alert ranks it third
    per_event = [M.hitrate_at(events.iloc[[i]], spans, ranked, 1.5)[0] for i in range(3)]
    assert per_event == [1.0, 1.0, 1.0]
    whole = [json.loads(c) for c in alerts["contributions"]]
    assert M.hitrate_at(events.iloc[[0]], alerts, whole, 1.5)[0] == 0.0


def test_flagged_rows_hitrate_ranks_each_detected_event_on_its_flagged_rows():
    from fleetwatch.app.backtest import flagged_rows_hitrate

    rows = pd.DataFrame({"ts": _ts(*range(200)), "a": 0.0, "b": 0.0, "c": 0.0, "flagged": False})
    rows.loc[100:110, "b"] = 5.0  # b leaves its range for the whole first event ...
    rows.loc[101:110, "flagged"] = True
    rows.loc[100, "c"] = 50.0  # ... c far further, but only on the event's one unflagged row
    stats = {"baselines": dict.fromkeys("abc", 0.0), "spread": dict.fromkeys("abc", 1.0),
             "ranges": dict.fromkeys("abc", [-1.0, 1.0])}
    events = _spans((100, 110), (150, 155))  # nothing is flagged in the second: it is left out
    assert flagged_rows_hitrate(events.assign(metrics=["b", "a"]), rows, ["a", "b", "c"], **stats) == (1.0, 1)
    # c's spike is not on a flagged row: the top ceil(1.5) = 2 are b and a
    assert flagged_rows_hitrate(events.assign(metrics=["c", "a"]), rows, ["a", "b", "c"], **stats) == (0.0, 1)
    assert flagged_rows_hitrate(events.iloc[[1]].assign(metrics=["a"]), rows, ["a", "b", "c"], **stats)[1] == 0


def test_choose_sees_only_the_machines_it_is_given_and_keeps_the_false_incident_cap():
    from fleetwatch.app.cross_validation import Candidate, choose

    def fig(recall, per_day=0.5, share=0.05):
        return {"event_recall": recall, "false_incidents_per_day": per_day, "alarm_share_normal": share,
                "alert_precision": 0.5}

    long_only, short_too = Candidate(15, None, 60), Candidate(1, 2.0, 60)
    table = {long_only: {"m1": fig(0.9), "m2": fig(0.9), "m3": fig(0.1)},
             short_too: {"m1": fig(0.8), "m2": fig(0.8), "m3": fig(1.0)}}
    assert choose(table, [long_only, short_too], ["m1", "m2"], 2.0, 0.1) == long_only  # m3 held out
    assert choose(table, [long_only, short_too], ["m1", "m2", "m3"], 2.0, 0.1) == short_too
    # normal time in alarm beyond the budget costs recall one for one
    table[short_too]["m3"] = fig(1.0, share=0.9)
    assert choose(table, [long_only, short_too], ["m1", "m2", "m3"], 2.0, 0.1) == long_only
    # breaking the false-incident cap on any machine loses to keeping it
    table[short_too] = {m: fig(1.0, per_day=2.5 if m == "m1" else 0.1) for m in ("m1", "m2", "m3")}
    assert choose(table, [long_only, short_too], ["m1", "m2", "m3"], 2.0, 0.1) == long_only


def test_the_replay_carries_incidents_across_midnight_as_publishing_does():
    import json as js

    from fleetwatch.app.cross_validation import carry_across_nights

    def inc(night, start, end, n, phase):
        return {"night": night, "entity_id": "m", "start_ts": _ts(start)[0], "end_ts": _ts(end)[0], "n_points": n,
                "phases": js.dumps([{"top_metrics": phase}])}

    day = 1440
    found = pd.DataFrame([
        inc("2026-01-01", 1300, 1439, 140, "a"),        # runs to midnight ...
        inc("2026-01-02", day + 2, day + 100, 99, "b"),  # ... and goes on 3 minutes later: the same alert
        inc("2026-01-02", day + 500, day + 1439, 940, "c"),  # later that night: a new one, to midnight
        inc("2026-01-03", 2 * day + 30, 2 * day + 40, 11, "d"),  # 31 minutes after its last flagged row: too far
        inc("2026-01-05", 4 * day + 1, 4 * day + 9, 9, "e"),  # after a night without incidents: new
    ])
    out = carry_across_nights(found, pd.Timedelta(minutes=6))
    assert list(out["start_ts"]) == list(_ts(1300, day + 500, 2 * day + 30, 4 * day + 1))
    assert out["end_ts"].iloc[0] == _ts(day + 100)[0] and out["n_points"].iloc[0] == 239
    assert [p["top_metrics"] for p in js.loads(out["phases"].iloc[0])] == ["a", "b"]
    assert len(carry_across_nights(found, pd.Timedelta(minutes=31))) == 3  # a step of 31 minutes joins "d" to "c"


def _write_mini_smd(root, machine="machine-9-1", train_rows=3 * 1440 + 300, test_rows=1440 + 200, seed=0):
    """A small SMD-format folder: 38 smooth daily-cycle metrics, one injected spike event."""
    rng = np.random.default_rng(seed)
    n = train_rows + test_rows
    t = np.arange(n)
    base = 0.4 + 0.2 * np.sin(2 * np.pi * t / 1440)[:, None] * rng.uniform(0.2, 1.0, 38)
    values = np.clip(base + rng.normal(0, 0.01, (n, 38)), 0, 1)
    start, end = 600, 640
    values[train_rows + start : train_rows + end, [3, 7]] += 0.5
    labels = np.zeros(test_rows, dtype=int)
    labels[start:end] = 1
    for part in ("train", "test", "test_label", "interpretation_label"):
        (root / part).mkdir(parents=True, exist_ok=True)

    def write(path, lines):
        with gzip.open(path, "wt") as fh:
            fh.write("\n".join(lines) + "\n")

    write(root / "train" / f"{machine}.txt.gz", [",".join(f"{v:.6f}" for v in row) for row in values[:train_rows]])
    write(root / "test" / f"{machine}.txt.gz", [",".join(f"{v:.6f}" for v in row) for row in values[train_rows:]])
    write(root / "test_label" / f"{machine}.txt.gz", [str(v) for v in labels])
    (root / "interpretation_label" / f"{machine}.txt").write_text(f"{start}-{end}:4,8\n")
    return machine


@pytest.mark.integration
@pytest.mark.slow
def test_smd_exported_as_csv_gives_the_figures_of_evaluate_smd(spark, tmp_path, monkeypatch):
    """The generic path (CSV export -> dataset init -> ingest files -> evaluate --labels) against
    evaluate smd, figure by figure, on a mini machine whose test part starts at midnight."""
    from fleetwatch.app.labelled_evaluation import evaluate_labelled
    from fleetwatch.app.smd_evaluation import evaluate_smd
    from fleetwatch.core.datasets.dataset_init import init_dataset
    from fleetwatch.core.datasets.files import ingest_files
    from fleetwatch.core.datasets.smd_csv import as_smd_spec, export_smd_csv
    from fleetwatch.core.settings import Settings
    from fleetwatch.core.specs import load_spec, write_spec

    for key in [k for k in os.environ if k.startswith("FLEETWATCH_")]:
        monkeypatch.delenv(key)
    data = tmp_path / "smd"
    machine = _write_mini_smd(data, train_rows=2 * 1440)
    start = dt.date(2026, 1, 1)
    a = Settings(home=tmp_path / "smd-home", min_history_days=1)
    b = Settings(home=tmp_path / "csv-home", min_history_days=1)
    smd = evaluate_smd(a, data, machines=None, out=tmp_path / "smd.json", start=start)

    exported = export_smd_csv(data, [machine], tmp_path / "export", start)
    init_dataset(b, "smdcsv", [str(p) for p in exported["files"]], spark=spark)
    write_spec(b.specs_dir, as_smd_spec(load_spec(b.specs_dir, "smdcsv")))
    ingest_files(b, "smdcsv", [str(p) for p in exported["files"]], spark=spark)
    csv = evaluate_labelled(b, "smdcsv", exported["labels"], train_until=exported["train_until"], out=tmp_path / "csv.json")

    assert csv["train_days"] == smd["train_days"] and csv["test_days"] == smd["test_days"]
    def figures(report: dict) -> str:  # JSON text: NaN equals NaN, floats to the last digit
        means = {k: v for k, v in report.items() if k.endswith(("_mean", "_max"))}
        return json.dumps({"machines": report["machines"], "reference": report["reference"], **means}, sort_keys=True)

    assert smd["machines"][machine]["labelled_rows"] == 40 and smd["machines"][machine]["alerts"] >= 1
    assert figures(csv) == figures(smd)


@pytest.mark.integration
@pytest.mark.slow
def test_evaluate_smd_reports_every_machine_and_cross_validates_without_the_held_out_one(spark, settings, tmp_path):
    """``evaluate smd --cross-validate`` on three mini machines: the report's figures per machine and
    as means, its page, plots and MLflow run, then the leave-one-machine-out choice."""
    from fleetwatch.app.cross_validation import Candidate, replay_incidents
    from fleetwatch.app.evaluation_inputs import read_alerts, read_scores
    from fleetwatch.app.smd_evaluation import evaluate_smd
    from fleetwatch.core.specs import load_spec

    data = tmp_path / "smd"
    machines = [_write_mini_smd(data, machine=f"machine-9-{i}", seed=i) for i in (1, 2, 3)]
    settings = settings.model_copy(update={"min_history_days": 1})
    out = tmp_path / "report" / "smd.json"
    report = evaluate_smd(settings, data, machines=None, out=out, start=dt.date(2026, 1, 1), console=None, cross_validate=True)

    on_disk = json.loads(out.read_text())
    for key in ("auprc_mean", "roc_auc_mean", "best_f1_mean", "f1_at_threshold_mean", "event_recall_mean",
                "false_incidents_per_day_mean", "hitrate_150_mean", "alarm_share_normal_mean", "alarm_share_normal_max",
                "alert_precision_mean", "reference", "machines", "settings", "wall_time_s"):
        assert key in on_disk, key
    assert set(on_disk["reference"]) == {"pca", "iforest"}
    assert sorted(on_disk["machines"]) == machines
    for machine in machines:
        r = on_disk["machines"][machine]
        assert r["test_rows"] == 1440 + 200 and r["labelled_rows"] == 40 and r["labelled_segments"] == 1
        for key in ("auprc", "roc_auc", "best_f1", "f1_at_threshold", "event_recall", "hitrate_150",
                    "hitrate_150_flagged_rows"):
            assert 0.0 <= r[key] <= 1.0, (machine, key)
        assert r["interpretation_events_flagged"] == 1
        # a 0.5 jump on two metrics is plain to see: the spike ranks high and is alerted
        assert r["roc_auc"] > 0.9 and r["event_recall"] == 1.0, machine
    assert report["settings"]["training_window_days"] == 3
    assert report["precision_labelled"] is None and report["labelled_alerts"] == 0
    assert out.with_suffix(".md").is_file() and (out.parent / "smd_pr_curves.png").is_file()
    assert report["mlflow_run_id"]

    cv = json.loads(out.read_text())["cross_validation"]
    assert set(cv["folds"]) == set(machines) == set(cv["machines"])
    for held_out, fold in cv["folds"].items():
        assert sorted(fold["chosen_on"]) == sorted(m for m in machines if m != held_out)
        assert set(fold["explain"]) == {"context_minutes", "context_exit_quantile", "change_weight", "flat_metric_weight"}
    assert cv["explain_candidates"] > 1 and set(cv["explain_chosen_on_all"]) == set(fold["explain"])
    for key in ("event_recall_mean", "false_incidents_per_day_max", "alarm_share_normal_max", "alert_precision_mean",
                "hitrate_150_flagged_rows_mean", "auprc_mean", "best_f1_mean"):
        assert key in cv["in_sample"] and key in cv["out_of_fold"], key
    # point-wise score quality does not depend on the settings after scoring
    assert cv["out_of_fold"]["auprc_mean"] == pytest.approx(report["auprc_mean"])
    assert cv["reference"]["pca"]["auprc_mean"] == pytest.approx(report["reference"]["pca"]["auprc_mean"])
    page = out.with_suffix(".md").read_text()
    assert "| in-sample (spec settings) | out-of-fold |" in page and "| explained with |" in page

    # the replay with the spec's own settings finds exactly the incidents the nightly job published
    spec = load_spec(settings.specs_dir, "smd")
    days = sorted({dt.date.fromisoformat(d) for d in report["test_days"]})
    test_days = [days[0] + dt.timedelta(days=i) for i in range((days[-1] - days[0]).days + 1)]
    scores, alerts = read_scores(settings, "smd", test_days), read_alerts(settings, "smd", test_days)
    own = Candidate(spec.min_incident_minutes, spec.short_event_factor, spec.incident_gap(settings.incident_gap_minutes))
    for machine in machines:
        rows = scores[scores["entity_id"] == machine].sort_values("ts").reset_index(drop=True)
        flagged, found = replay_incidents(rows, own, spec.sampling_seconds)
        published = alerts[alerts["entity_id"] == machine].sort_values("start_ts")
        assert (flagged["flagged"] == rows["flagged"]).all()
        assert list(found["start_ts"]) == list(published["start_ts"]) and list(found["end_ts"]) == list(published["end_ts"])
