"""Two time scales: a short severe spike alerts although it is shorter than the minimum incident,
a short mild blip does not; the nightly incidents job (Spark) applies the same rule."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from fleetwatch.core.specs import DatasetSpec, MetricSpec
from models.bundle import ModelBundle
from models.entity_scoring import INCIDENT_SCHEMA, IncidentJob, score_schema
from models.fitting import fit_bucket, fit_fleet
from models.incidents import entity_incidents, group_incidents, two_scale_flags
from models.params import FeatureLayout, ModelParams
from models.scoring import incidents_frame, incidents_of, score_frame

METRICS = ["cpu", "mem", "disk"]
FEATURES = METRICS  # no window statistics: a spike lasts as long as it lasts, only the smoothing dilutes it
LAYOUT = FeatureLayout(tuple(FEATURES), tuple(FEATURES), tuple(METRICS))
SPEC = DatasetSpec(
    name="synth", sampling_seconds=60, alarm_budget=2.0, score_smoothing_minutes=15, incident_gap_minutes=30,
    min_incident_minutes=20, short_event_factor=2.0, metrics=[MetricSpec(name=m) for m in METRICS],
)
PARAMS = ModelParams(
    iforest_n_estimators=50, ae_hidden=16, ae_bottleneck=4, ae_epochs=5, ae_batch_size=256, min_history_rows=300,
    smooth_points=15, gap_minutes=30,
)
DAY = 1440
SPIKE = range(600, 604)  # 4 minutes, cpu and disk far outside anything seen (quiet hours around it)
BLIP = range(1300, 1303)  # 3 minutes, mem a little high
CPU_SPIKE, MEM_BLIP = 30.0, 2.0  # in units of the noise: cpu 15 sigma, mem 2 sigma


def rows(entity: str, start: str, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.date_range(start, periods=n, freq="1min", tz="UTC")
    phase = 2 * np.pi * (ts.hour * 60 + ts.minute).to_numpy() / 1440
    cpu = 50 + 10 * np.sin(phase) + rng.normal(0, 2, n)
    return pd.DataFrame({"entity_id": entity, "ts": ts, "cpu": cpu, "mem": 30 + rng.normal(0, 1, n),
                         "disk": 70 + 0.5 * cpu + rng.normal(0, 1, n)})


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    window = pd.concat([rows("a", "2026-01-01", 3 * DAY, 1), rows("b", "2026-01-01", 3 * DAY, 2)], ignore_index=True)
    fit = dict(layout=LAYOUT, spec=SPEC, params=PARAMS, random_state=7)
    return ModelBundle(
        dataset="synth", feature_view="telemetry@v1", feature_cols=FEATURES, feature_metric=list(LAYOUT.feature_metric),
        metrics=METRICS, entities={m.entity: m for m in fit_bucket(window, **fit)}, fleet=fit_fleet(window, **fit),
        window_start=dt.date(2026, 1, 1), window_end=dt.date(2026, 1, 3), params=PARAMS,
    )


@pytest.fixture(scope="module")
def day() -> pd.DataFrame:
    frame = rows("a", "2026-01-04", DAY, 11)
    frame.loc[SPIKE, "cpu"] += CPU_SPIKE
    frame.loc[SPIKE, "disk"] += 0.7 * CPU_SPIKE
    frame.loc[BLIP, "mem"] += MEM_BLIP
    return frame


@pytest.fixture(scope="module")
def scored(bundle, day) -> pd.DataFrame:
    return bundle.score(day)


def _incidents(scored, day, factor):
    flagged = two_scale_flags(scored, factor)
    found = group_incidents(flagged, gap_minutes=30, sampling_seconds=60, min_points=SPEC.min_incident_points,
                            severe_col="severe")
    return [(day["ts"].searchsorted(i.start_ts), day["ts"].searchsorted(i.end_ts)) for i in found.itertuples()]


def _covers(spans, rows_) -> bool:
    return any(start <= rows_[-1] and end >= rows_[0] for start, end in spans)


def test_a_short_severe_spike_alerts_and_a_short_mild_blip_does_not(scored, day):
    spans = _incidents(scored, day, SPEC.short_event_factor)
    assert _covers(spans, SPIKE)
    assert not _covers(spans, BLIP)
    # the smoothed scale alone keeps the spike under the minimum incident: the raw scale is what raised it
    assert not _covers(_incidents(scored, day, None), SPIKE)


def test_the_raw_score_rises_where_smoothing_dilutes_the_spike(scored):
    spike = scored.loc[list(SPIKE)]
    assert (spike["raw_score"] > spike["score"]).all()
    severe = two_scale_flags(scored, SPEC.short_event_factor)["severe"]
    assert severe.loc[list(SPIKE)].any() and not severe.loc[list(BLIP)].any()


def test_zoned_naive_and_shuffled_timestamps_score_alike(bundle, day, scored):
    columns = ["score", "raw_score", "iforest_score", "ae_score", "flagged"]
    naive = bundle.score(day.assign(ts=day["ts"].dt.tz_localize(None)))
    np.testing.assert_array_equal(naive[columns].to_numpy(), scored[columns].to_numpy())
    shuffled = day.sample(frac=1.0, random_state=3)
    again = bundle.score(shuffled)  # scored in time order, returned in the frame's row order
    np.testing.assert_array_equal(again["score"].to_numpy(), scored["score"].to_numpy()[shuffled.index.to_numpy()])


def test_incidents_keep_the_flags_of_a_frame_flagged_once(bundle, day, scored):
    frame = pd.concat([two_scale_flags(scored, SPEC.short_event_factor), day[METRICS]], axis=1)

    def spike_found(rows, factor) -> bool:
        found = entity_incidents(rows, METRICS, bundle.baselines_of("a"), bundle.spreads_of("a"), gap_minutes=30,
                                 sampling_seconds=60, min_points=SPEC.min_incident_points, short_event_factor=factor)
        return any(i["start_ts"] <= day["ts"].iloc[SPIKE[-1]] and i["end_ts"] >= day["ts"].iloc[SPIKE[0]] for i in found)

    assert spike_found(frame, SPEC.short_event_factor)
    assert spike_found(frame, None)  # flagged with the factor once: not flagged again without it
    assert not spike_found(frame.drop(columns=["severe"]), None)  # no severe column: flagged here, without the factor


@pytest.mark.integration
def test_the_nightly_incidents_job_raises_the_short_severe_spike(spark, bundle, day, scored, tmp_path):
    location = bundle.save(tmp_path / "bundle")
    frame = two_scale_flags(scored, SPEC.short_event_factor).drop(columns=["severe"])
    frame = frame.assign(alarm_cap=1.0, uncapped_alarm_minutes=float("nan"), uncapped_incidents=float("nan"))
    for m in METRICS:
        frame[m] = day[m].to_numpy()
    columns = [c.split(" ")[0].strip("`") for c in score_schema(SPEC).split(", ")]
    scores = spark.createDataFrame(frame[columns], score_schema(SPEC))
    lineage = {"model_name": "m", "model_version": "1", "feature_view": "telemetry@v1", "run_id": "r"}

    def night(spec):
        out = incidents_frame(scores, spec, location, dt.date(2026, 1, 4), lineage, 30).toPandas()
        assert list(out.columns) == [c.split(" ")[0] for c in INCIDENT_SCHEMA.split(", ")]
        return [(day["ts"].searchsorted(pd.Timestamp(s, tz="UTC")), day["ts"].searchsorted(pd.Timestamp(e, tz="UTC")))
                for s, e in zip(out["start_ts"], out["end_ts"], strict=True)]

    spans = night(SPEC)
    assert _covers(spans, SPIKE) and not _covers(spans, BLIP)
    assert not _covers(night(SPEC.model_copy(update={"short_event_factor": None})), SPIKE)


def test_cross_validation_replays_each_entity_with_settings_chosen_on_the_others(bundle):
    from fleetwatch.app import cross_validation as CV
    from fleetwatch.app import metrics as M
    from fleetwatch.app.backtest import evaluate_machine

    nights = []
    for entity, seed in (("a", 21), ("b", 22)):
        for n, start in enumerate(("2026-01-04", "2026-01-05")):
            frame = rows(entity, start, DAY, seed + 10 * n)
            frame.loc[SPIKE, "cpu"] += CPU_SPIKE
            frame.loc[SPIKE, "disk"] += 0.7 * CPU_SPIKE
            scored = two_scale_flags(bundle.score(frame), SPEC.short_event_factor).drop(columns=["severe"])
            nights.append(scored.assign(dt=dt.date.fromisoformat(start), **{m: frame[m].to_numpy() for m in METRICS}))
    scores = pd.concat(nights, ignore_index=True)
    inside = scores["ts"].dt.minute.between(0, 3) & (scores["ts"].dt.hour == 10)  # SPIKE: rows 600..603 = 10:00..10:03
    points = scores[["entity_id", "ts"]].assign(label=inside.astype(int).to_numpy())
    events = pd.DataFrame({"entity_id": ["a"], "start_ts": [pd.Timestamp("2026-01-04 10:00", tz="UTC")],
                           "end_ts": [pd.Timestamp("2026-01-04 10:03", tz="UTC")], "metrics": ["cpu,disk"]})
    first = pd.Timestamp("2026-01-04", tz="UTC")
    explain = (METRICS, bundle)
    no_raw = pd.DataFrame({"entity_id": pd.Series(dtype=str), "ts": pd.Series(dtype="datetime64[ns, UTC]")})

    def evaluate(machine, flagged, alerts, explain_params=None):
        result, _ = evaluate_machine(machine, {"first_test_ts": first}, points, events, flagged, alerts, no_raw,
                                     dataset="synth", seed=0, explain=explain, explain_params=explain_params)
        return result

    candidates = CV.grid(min_minutes=(1, 20), factors=(None, 2.0), gaps=(30,))
    in_sample = {e: evaluate(e, scores[scores["entity_id"] == e], CV.replayed_alerts(
        scores[scores["entity_id"] == e].reset_index(drop=True), CV.Candidate(20, 2.0, 30), SPEC, explain)[1])
        for e in ("a", "b")}
    cv = CV.cross_validate(scores, points, first, ["a", "b"], SPEC, evaluate, in_sample, explain=explain,
                           candidates=candidates)
    assert cv["folds"]["a"]["chosen_on"] == ["b"] and cv["folds"]["b"]["chosen_on"] == ["a"]
    # without a HitRate to choose by, every fold explains with the bundle's own settings
    assert cv["explain_candidates"] == 1
    assert cv["folds"]["a"]["explain"]["change_weight"] == bundle.params.explain.change_weight
    for held_out in ("a", "b"):
        assert CV.Candidate(**cv["folds"][held_out]["chosen"]) in candidates
        assert 0.0 <= cv["machines"][held_out]["event_recall"] <= 1.0
    # with the short-event rule the 4-minute spike is an alert on every night of both entities
    flagged, alerts = CV.replayed_alerts(scores[scores["entity_id"] == "a"].reset_index(drop=True),
                                         CV.Candidate(20, 2.0, 30), SPEC, explain)
    spike_minutes = pd.DataFrame({"start_ts": pd.to_datetime(["2026-01-04 10:00", "2026-01-05 10:00"], utc=True),
                                  "end_ts": pd.to_datetime(["2026-01-04 10:03", "2026-01-05 10:03"], utc=True)})
    assert M.overlaps(spike_minutes, alerts).any(axis=1).all()
    assert set(cv["in_sample"]) == set(cv["out_of_fold"])
    refs = {name: {"auprc_mean": 0.1, "best_f1_mean": 0.2} for name in ("pca", "iforest")}
    page = "\n".join(CV.markdown_section(cv, refs))
    assert "| in-sample (spec settings) | out-of-fold | PCA reference | IForest reference |" in page
    assert "| a | " in page and "| b | " in page  # each fold's choice


@pytest.mark.integration
def test_incidents_found_while_scoring_equal_those_found_from_the_written_scores(spark, bundle, day, tmp_path):
    """The night finds incidents in the scoring task (``score_frame(..., incidents=...)``); they
    equal, to the digit, those ``incidents_frame`` finds by grouping the scores again, and each
    rides on its own first row."""
    location = bundle.save(tmp_path / "bundle")
    other = day.assign(entity_id="b")
    other.loc[BLIP, "cpu"] += CPU_SPIKE  # b's spike is the blip's rows
    features = spark.createDataFrame(pd.concat([day, other, day.assign(entity_id="new")], ignore_index=True))
    lineage = {"model_name": "m", "model_version": "1", "feature_view": "telemetry@v1", "run_id": "r"}
    job = IncidentJob(dt.date(2026, 1, 4), lineage, 30)

    scored = score_frame(features, SPEC, location, incidents=job).cache()
    found = incidents_of(scored).toPandas()
    again = incidents_frame(scored.drop("incident"), SPEC, location, job.day, lineage, job.gap_minutes).toPandas()
    key = ["entity_id", "start_ts"]
    assert len(found) >= 3 and set(found["entity_id"]) == {"a", "b", "new"}
    pd.testing.assert_frame_equal(found.sort_values(key).reset_index(drop=True), again.sort_values(key).reset_index(drop=True))

    starts = scored.where("incident is not null").select("entity_id", "ts").toPandas()
    assert sorted(zip(starts["entity_id"], starts["ts"], strict=True)) == sorted(zip(found["entity_id"], found["start_ts"],
                                                                                      strict=True))
    plain = score_frame(features, SPEC, location).toPandas().sort_values(key[:1] + ["ts"]).reset_index(drop=True)
    with_job = scored.drop("incident").toPandas().sort_values(key[:1] + ["ts"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(with_job, plain)
    scored.unpersist()


@pytest.mark.integration
def test_scoring_whole_entity_files_in_tasks_equals_scoring_the_spark_read_partition(spark, bundle, day, tmp_path,
                                                                                     monkeypatch):
    """A feature partition its tasks wrote is scored unit by unit straight from its files
    (``score_files``): the same scores, caps and incidents as reading it with Spark and grouping
    by entity, with units that start inside a file and entities that span row groups."""
    from feature_store import partition_writer
    from feature_store.partition_reader import read_manifest, unit_entities, work_units
    from feature_store.views import view_for
    from fleetwatch.core import task_files
    from fleetwatch.core.lake import Lake
    from models.entity_scoring import AlarmCap
    from models.scoring import score_files

    monkeypatch.setattr(task_files, "ROW_GROUP_ROWS", 1000)  # an entity's day spans row groups
    other = day.assign(entity_id="b")
    other.loc[BLIP, "cpu"] += CPU_SPIKE
    raw = spark.createDataFrame(pd.concat([day, other, day.assign(entity_id="new")], ignore_index=True))
    lake, night = Lake(str(tmp_path / "lake")), dt.date(2026, 1, 4)
    spark.conf.set("spark.sql.shuffle.partitions", "2")
    try:
        path, n = partition_writer.write_features_from_tasks(spark, lake, "synth", view_for(SPEC), night, raw)
    finally:
        spark.conf.unset("spark.sql.shuffle.partitions")
    manifest = read_manifest(path)
    assert n == 3 * DAY and manifest["rows"] == n
    units = work_units(manifest, 8)
    assert len(units) == 3 and any(u["start"] > 0 for u in units)  # one entity a unit: some start mid-file
    location = bundle.save(tmp_path / "bundle")
    job = IncidentJob(night, {"model_name": "m", "model_version": "1", "feature_view": "telemetry@v1", "run_id": "r"}, 30)
    cap = AlarmCap(budget_share=0.02, alerts_per_night=2.0, gap_minutes=30, previous={"b": [300.0, 400.0]})

    direct = score_files(spark, path, manifest, SPEC, location, cap, incidents=job).toPandas()
    grouped = score_frame(spark.read.parquet(path), SPEC, location, cap, incidents=job).toPandas()
    key = ["entity_id", "ts"]
    assert len(direct) == n and direct["incident"].notna().any() and (direct["alarm_cap"] > 1).any()
    pd.testing.assert_frame_equal(direct.sort_values(key).reset_index(drop=True), grouped.sort_values(key).reset_index(drop=True))

    lying = {**units[0], "entities": ["someone-else"]}
    with pytest.raises(ValueError, match=r"not entity 'someone-else''s, as _entities.json says"):
        list(unit_entities(path, lying))


def test_the_night_writes_scores_and_incidents_from_its_tasks(spark, bundle, day, tmp_path):
    """``write_scores_from_tasks`` writes what ``score_files`` gives: the same scores (a partition
    of whole-entity files named in its ``_entities.json``) and the same incidents, with Spark's
    incident schema; a partition without ``_entities.json`` is scored the same; a task that fails
    leaves both previous partitions as they were."""
    import json
    from pathlib import Path

    from feature_store import partition_writer
    from feature_store.partition_reader import read_manifest
    from feature_store.views import view_for
    from fleetwatch.core.lake import Lake, local_path
    from models.entity_scoring import AlarmCap
    from models.scoring import night_uncapped_minutes, score_files, write_scores_from_tasks

    other = day.assign(entity_id="b")
    other.loc[BLIP, "cpu"] += CPU_SPIKE
    raw = spark.createDataFrame(pd.concat([day, other, day.assign(entity_id="new")], ignore_index=True))
    lake, night, view = Lake(str(tmp_path / "lake")), dt.date(2026, 1, 4), view_for(SPEC)
    path, n = partition_writer.write_features_from_tasks(spark, lake, "synth", view, night, raw)
    manifest = read_manifest(path)
    location = bundle.save(tmp_path / "bundle")
    job = IncidentJob(night, {"model_name": "m", "model_version": "1", "feature_view": view.ref, "run_id": "r"}, 30)
    cap = AlarmCap(budget_share=0.02, alerts_per_night=2.0, gap_minutes=30, previous={"b": [300.0, 400.0]})
    direct = score_files(spark, path, manifest, SPEC, location, cap, incidents=job).cache()
    expected_incidents = incidents_of(direct)
    expected = direct.drop("incident").toPandas()
    key = ["entity_id", "ts"]

    def scores(written) -> pd.DataFrame:
        frame = spark.read.parquet(written.scores).toPandas()
        return frame.sort_values(key).reset_index(drop=True)

    written = write_scores_from_tasks(spark, lake, SPEC, view, night, location, cap, job)
    pd.testing.assert_frame_equal(scores(written), expected.sort_values(key).reset_index(drop=True))
    found = spark.read.parquet(written.incidents)
    assert found.schema == expected_incidents.schema
    inc_key = ["entity_id", "start_ts"]
    found_rows = found.toPandas().sort_values(inc_key).reset_index(drop=True)
    pd.testing.assert_frame_equal(found_rows, expected_incidents.toPandas().sort_values(inc_key).reset_index(drop=True))
    assert len(found_rows) == written.n_incidents > 0
    assert (written.rows, written.flagged) == (n, int(expected["flagged"].sum()))
    assert written.capped == expected.loc[expected["alarm_cap"] > 1, "entity_id"].nunique() > 0
    listing = read_manifest(written.scores)
    assert listing["rows"] == n and sorted(e for f in listing["files"] for e in f["entities"]) == ["a", "b", "new"]
    uncapped = sorted(expected.groupby("entity_id")["uncapped_alarm_minutes"].max().dropna().items())
    assert len(uncapped) == 3 and sorted(night_uncapped_minutes(spark, lake, SPEC, night)) == uncapped  # from the listing
    (local_path(written.scores) / "_entities.json").unlink()  # scores written before the listing kept them
    assert sorted(night_uncapped_minutes(spark, lake, SPEC, night)) == uncapped  # from the scores, through Spark

    (local_path(path) / "_entities.json").unlink()  # a partition written before its tasks wrote it
    again = write_scores_from_tasks(spark, lake, SPEC, view, night, location, cap, job)
    pd.testing.assert_frame_equal(scores(again), expected.sort_values(key).reset_index(drop=True))
    assert spark.read.parquet(again.incidents).count() == written.n_incidents

    before = {zone: sorted(p.name for p in local_path(lake.partition(zone, "synth", night)).iterdir())
              for zone in ("scores", "incidents")}
    swap = {"a": "b", "b": "a"}  # both hold a day of rows: the units are the same, the names not
    lying = {**manifest, "files": [{**f, "entities": [swap.get(e, e) for e in f["entities"]]} for f in manifest["files"]]}
    (local_path(path) / "_entities.json").write_text(json.dumps(lying))
    with pytest.raises(Exception, match="as _entities.json says"):
        write_scores_from_tasks(spark, lake, SPEC, view, night, location, cap, job)
    for zone, names in before.items():
        assert sorted(p.name for p in local_path(lake.partition(zone, "synth", night)).iterdir()) == names
    assert [p.name for p in Path(lake.zone("scores", "synth")).iterdir()] == [f"dt={night}"]
    direct.unpersist()
