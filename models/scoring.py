"""Scoring: a Spark job that scores a feature partition with the champion bundle.

Each task scores whole entities: read straight from the partition's files when its tasks wrote it
(:func:`score_files`), else grouped by entity in Spark (:func:`score_frame`). Each worker process
loads the bundle once (``models.bundle.load_cached``) and scores its entities one by one with
``models.entity_scoring`` (the detectors, the alarm cap, incidents and their explanations). On a
night each task writes its entities' scores to ``scores/`` and their incidents to ``incidents/``
itself (:func:`write_scores_from_tasks`), from where the publish task loads them into the alerts table.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import pandas as pd
from pyspark.sql import functions as F

from feature_store.offline_store import OfflineStore
from feature_store.partition_reader import read_manifest, unit_entities, work_units
from feature_store.partition_writer import whole_entities
from feature_store.views import FeatureView, view_for
from fleetwatch.core.lake import Lake, write_bytes
from fleetwatch.core.settings import TASKS_PER_SLOT, Settings
from fleetwatch.core.spark import task_slots
from fleetwatch.core.specs import DatasetSpec, load_spec
from fleetwatch.core.task_files import ENTITIES, TaskFile, entities_manifest, keep_only
from models import registry
from models.bundle import open_checked
from models.entity_scoring import (
    INCIDENT_COLUMNS,
    INCIDENT_SCHEMA,
    AlarmCap,
    IncidentJob,
    arrow_schema,
    entity_score_parts,
    entity_scorer,
    incident_records,
    incident_table,
    score_schema,
)
from models.frames import ENTITY, TS, canonical


def score_frame(df, spec: DatasetSpec, bundle_dir: str, cap: AlarmCap | None = None, incidents: IncidentJob | None = None):
    """Per-row scores of a canonical feature DataFrame (entity_id, ts, features) in Spark, flagged
    at two time scales (``models.incidents.two_scale_flags`` with the spec's ``short_event_factor``);
    with ``cap``, each entity's thresholds are capped to its alarm-share budget (``models.alarm_cap``).

    With ``incidents``, each entity's incidents are found in the same task, from the rows just
    scored, and ride in the ``incident`` column (:func:`incidents_of`): the scores are not read
    back and shuffled by entity a second time to find them.
    """
    score = entity_scorer(spec, bundle_dir, cap, incidents)
    return df.groupBy(ENTITY).applyInPandas(score, score_schema(spec, incidents is not None))


def score_files(spark, path: str, manifest: dict, spec: DatasetSpec, bundle_dir: str, cap: AlarmCap | None = None,
                incidents: IncidentJob | None = None):
    """What :func:`score_frame` gives, for the feature partition at ``path`` written by its tasks
    (``manifest``, its ``_entities.json``): each task reads a unit of whole entities straight from
    the files (``feature_store.partition_reader``), so the rows are neither read into the JVM nor
    shuffled by entity. About four units a task slot, so that unequal entities even out."""
    schema = score_schema(spec, incidents is not None)
    score = entity_scorer(spec, bundle_dir, cap, incidents)
    tasks = unit_tasks(spark, path, manifest, spec, lambda entities: map(score, entities), schema)
    return spark.createDataFrame([], schema) if tasks is None else tasks


def day_scores(spark, lake: Lake, spec: DatasetSpec, view: FeatureView, day: dt.date, bundle_dir: str,
               cap: AlarmCap | None = None, incidents: IncidentJob | None = None):
    """Per-row scores of ``day``'s feature partition with the bundle at ``bundle_dir``: read by the
    scoring tasks (:func:`score_files`) when the partition names its whole-entity files in
    ``_entities.json``, else read by Spark and grouped by entity (:func:`score_frame`)."""
    path = lake.features(spec.name, view.ref, day)
    manifest = read_manifest(path)
    if manifest is not None:
        return score_files(spark, path, manifest, spec, bundle_dir, cap, incidents)
    features = canonical(OfflineStore(spark, lake).read_features(spec.name, view, [day]), spec).drop("dt")
    return score_frame(features, spec, bundle_dir, cap, incidents)


_INCIDENT_JSON = ", ".join(
    f"{name} bigint" if name in ("start_ts", "end_ts") else f"{name} string" if name == "dt" else f"{name} {kind}"
    for name, kind in (c.split(" ") for c in INCIDENT_SCHEMA.split(", "))
)


def incidents_of(scores_df):
    """The incidents a :func:`score_frame` with ``incidents`` found, as :data:`INCIDENT_SCHEMA`:
    only the ``incident`` column is read, and only its filled rows are parsed."""
    parsed = scores_df.where(F.col("incident").isNotNull()).select(F.from_json("incident", _INCIDENT_JSON).alias("i"))
    return parsed.select(
        *(
            F.timestamp_micros(F.col(f"i.{c}")).alias(c) if c in ("start_ts", "end_ts")
            else F.to_date(F.col(f"i.{c}")).alias(c) if c == "dt"
            else F.col(f"i.{c}").alias(c)
            for c in INCIDENT_COLUMNS
        )
    )


def incidents_frame(scores_df, spec: DatasetSpec, bundle_dir: str, day: dt.date, lineage: dict, gap_minutes: int):
    """Incidents of scores already written (:func:`incident_records` per entity, grouped by entity
    in Spark): for scores made without ``incidents``. The night finds them while scoring."""
    job = IncidentJob(day, lineage, gap_minutes)

    def group(pdf: pd.DataFrame) -> pd.DataFrame:
        records = incident_records(pdf.sort_values(TS).reset_index(drop=True), spec, bundle_dir, job)
        return pd.DataFrame.from_records(records, columns=INCIDENT_COLUMNS)

    needed = [ENTITY, TS, "score", "raw_score", "threshold", "raw_threshold", "flagged", "scope", *spec.metric_names,
              *(f"err__{m}" for m in spec.metric_names)]  # not the member scores or the cap's columns: less to shuffle
    return scores_df.select(*(F.col(f"`{c}`") for c in needed)).groupBy(ENTITY).applyInPandas(group, INCIDENT_SCHEMA)


UNCAPPED = "uncapped_alarm_minutes"
_WRITTEN = ("entity string, file string, rows long, flagged long, capped boolean, uncapped_alarm_minutes double, "
            "incidents long, incidents_file string")


@dataclass(frozen=True)
class WrittenNight:
    """What :func:`write_scores_from_tasks` wrote: the partitions' paths and the night's counts."""

    scores: str
    incidents: str
    rows: int
    flagged: int
    capped: int
    n_incidents: int


def write_scores_from_tasks(spark, lake: Lake, spec: DatasetSpec, view: FeatureView, day: dt.date, bundle_dir: str,
                            cap: AlarmCap | None, job: IncidentJob, tasks_per_slot: int = TASKS_PER_SLOT) -> WrittenNight:
    """Score ``day``'s feature partition and write the scores and incidents partitions from the
    scoring tasks themselves (``fleetwatch.core.task_files``), both atomically.

    Each task scores whole entities (its unit of the partition's files when they are named in
    ``_entities.json``, else its entities of the Spark-read partition, shuffled by entity) and
    writes their scores as one Parquet file, and their incidents as another; it returns one small
    row per entity. So neither the per-row scores nor the incidents pass through the JVM or the
    driver. The scores partition gets its own ``_entities.json``, with each entity's uncapped
    minutes in alarm, which the next nights' alarm cap reads (:func:`alarm_cap_for`). A failed task
    leaves both previous partitions as they were. There are about ``tasks_per_slot`` tasks a task
    slot, so that unequal entities even out.
    """
    finals = {"scores": lake.partition("scores", spec.name, day), "incidents": lake.partition("incidents", spec.name, day)}
    staging = {zone: lake.staging_path(path, spark) for zone, path in finals.items()}
    schemas = {"scores": arrow_schema(score_schema(spec)), "incidents": arrow_schema(INCIDENT_SCHEMA)}
    score = entity_score_parts(spec, bundle_dir, cap, job)

    def write(entities) -> pd.DataFrame:
        scores = TaskFile(staging["scores"], schemas["scores"], dictionary=[ENTITY, "scope"])
        found = TaskFile(staging["incidents"], schemas["incidents"], dictionary=["dataset", ENTITY, "severity"])
        counts = []
        try:
            for rows in entities:
                out, records = score(rows)
                entity = str(rows[ENTITY].iloc[0])
                scores.append(entity, out)  # naive timestamps: UTC
                if records:
                    found.append_table(entity, incident_table(records, schemas["incidents"]))
                counts.append((int(out["flagged"].sum()), bool((out["alarm_cap"] > 1).any()),
                               float(out["uncapped_alarm_minutes"].max()), len(records)))
        finally:
            scores.close()
            incidents_file = found.close()
        meta = scores.meta()
        meta["flagged"] = pd.Series([c[0] for c in counts], dtype="int64")
        meta["capped"] = pd.Series([c[1] for c in counts], dtype=bool)
        meta["uncapped_alarm_minutes"] = pd.Series([c[2] for c in counts], dtype=float)
        meta["incidents"] = pd.Series([c[3] for c in counts], dtype="int64")
        meta["incidents_file"] = incidents_file
        return meta

    path = lake.features(spec.name, view.ref, day)
    manifest = read_manifest(path)
    try:
        if manifest is not None:
            tasks = unit_tasks(spark, path, manifest, spec, lambda entities: [write(entities)], _WRITTEN, tasks_per_slot)
        else:
            features = canonical(OfflineStore(spark, lake).read_features(spec.name, view, [day]), spec).drop("dt")

            def grouped(batches):
                meta = write(whole_entities(batches, ENTITY))
                if len(meta):
                    yield meta

            shuffled = features.repartition(tasks_per_slot * task_slots(spark), ENTITY)  # a count adaptive execution keeps
            tasks = shuffled.sortWithinPartitions(ENTITY, TS).mapInPandas(grouped, _WRITTEN)
        meta = tasks.toPandas() if tasks is not None else pd.DataFrame(columns=_WRITTEN_COLUMNS)
        keep_only(staging["scores"], set(meta["file"]), schemas["scores"])
        keep_only(staging["incidents"], set(meta["incidents_file"].dropna()), schemas["incidents"])
        listing = entities_manifest(meta.astype({"rows": "int64"}), extra=(UNCAPPED,), day=day.isoformat())
        write_bytes(f"{staging['scores']}/{ENTITIES}", json.dumps(listing, indent=1).encode())
        for zone in ("scores", "incidents"):
            lake.publish(staging[zone], finals[zone], spark)
    except BaseException:
        for zone in ("scores", "incidents"):
            lake.discard(staging[zone], spark)
        raise
    return WrittenNight(finals["scores"], finals["incidents"], rows=int(meta["rows"].sum()),
                        flagged=int(meta["flagged"].sum()), capped=int(meta["capped"].astype(bool).sum()),
                        n_incidents=int(meta["incidents"].sum()))


_WRITTEN_COLUMNS = [c.split(" ")[0] for c in _WRITTEN.split(", ")]


def unit_tasks(spark, path: str, manifest: dict, spec: DatasetSpec, run, schema: str, tasks_per_slot: int = TASKS_PER_SLOT):
    """One Spark task a unit of whole entities of the feature partition at ``path`` (about
    ``tasks_per_slot`` a task slot, so that unequal entities even out), read straight from its files: ``run`` turns a
    unit's entities (canonical frames, one each) into frames of ``schema``, empty ones dropped;
    ``None`` when the partition has no rows."""
    units = work_units(manifest, tasks_per_slot * task_slots(spark))
    if not units:
        return None
    rename = {spec.entity_column: ENTITY, spec.timestamp_column: TS}

    def task(batches):
        for batch in batches:
            for i in batch["id"]:
                for out in run(rows.rename(columns=rename) for rows in unit_entities(path, units[int(i)])):
                    if len(out):
                        yield out

    return spark.range(0, len(units), 1, len(units)).mapInPandas(task, schema)


def score_partition(spark, settings: Settings, dataset: str, day: dt.date) -> str:
    """Score the day's feature partition with the champion and write scores and incidents."""
    spec = load_spec(settings.specs_dir, dataset)
    view = view_for(spec)
    lake = Lake(settings.lake_root)
    lake.require(lake.features(dataset, view.ref, day), f"feature partition {dataset} {view.ref} dt={day}", spark)
    champ = registry.champion(settings, dataset)
    open_checked(champ.bundle_dir, f"{champ.name} v{champ.version}")
    cap = alarm_cap_for(spark, settings, spec, lake, day)
    lineage = {"model_name": champ.name, "model_version": champ.version, "feature_view": view.ref, "run_id": champ.run_id}
    job = IncidentJob(day, lineage, spec.incident_gap(settings.incident_gap_minutes))
    night = write_scores_from_tasks(spark, lake, spec, view, day, champ.bundle_dir, cap, job, settings.spark_tasks_per_slot)
    n_rows, n_flagged, n_capped = night.rows, night.flagged, night.capped
    alarm = alarm_minutes(spark.read.parquet(night.incidents), spec.sampling_seconds)
    registry.log_night(
        settings, dataset, day,
        tags={"model_name": champ.name, "model_version": champ.version, "model_uri": f"models:/{champ.name}/{champ.version}",
              "feature_view": view.ref},
        metrics={"rows_scored": n_rows, "flagged_rows": n_flagged, "alerts": float(len(alarm)),
                 "alarm_minutes": float(alarm.sum()), "entities_in_alarm": float(alarm.index.nunique()),
                 "entities_capped": float(n_capped),
                 "alarm_minutes_max_entity": float(alarm.groupby(level=0).sum().max()) if len(alarm) else 0.0},
    )
    return (f"scored {n_rows} rows with {champ.name} v{champ.version}: {n_flagged} flagged, {len(alarm)} incidents, "
            f"{alarm.sum():.0f} minutes in alarm, {n_capped} entities capped to their alarm budget")


def alarm_cap_for(spark, settings: Settings, spec: DatasetSpec, lake: Lake, day: dt.date) -> AlarmCap:
    """The night's alarm cap: the spec's alarm-share budget (never binding with
    ``settings.alarm_cap`` off, so the uncapped alarm is still recorded) and each entity's uncapped
    minutes in alarm on the scored nights among the ``alarm_budget_nights - 1`` before ``day``."""
    previous: dict[str, list[float]] = {}
    before = [day - dt.timedelta(days=back) for back in range(1, settings.alarm_budget_nights)]
    for night in before:
        for entity, m in night_uncapped_minutes(spark, lake, spec, night):
            previous.setdefault(str(entity), []).append(float(m))
    budget = spec.alarm_share(settings.alarm_budget_incident_minutes) if settings.alarm_cap else float("inf")
    return AlarmCap(budget_share=budget, alerts_per_night=spec.alarm_budget,
                    gap_minutes=spec.incident_gap(settings.incident_gap_minutes), previous=previous,
                    level_minutes=settings.alarm_cap_level_minutes)


def night_uncapped_minutes(spark, lake: Lake, spec: DatasetSpec, night: dt.date) -> list[tuple[str, float]]:
    """Each entity's uncapped minutes in alarm on a scored ``night``: from its scores partition's
    ``_entities.json`` when the scoring tasks wrote it, else from the scores themselves (one
    Spark aggregation); none for a night not scored, or scored before the alarm cap."""
    listing = read_manifest(lake.partition("scores", spec.name, night))
    if listing is not None and all(f"entity_{UNCAPPED}" in f for f in listing["files"]):
        return [(e, m) for f in listing["files"] for e, m in zip(f["entities"], f[f"entity_{UNCAPPED}"], strict=True)
                if m is not None]
    out = []
    for _, scores in lake.read_nights(spark, "scores", spec.name, [night], UNCAPPED):
        uncapped = scores.groupBy(ENTITY).agg(F.max(UNCAPPED).alias("m")).dropna().toPandas()
        out += list(zip(uncapped[ENTITY], uncapped["m"], strict=True))
    return out


def alarm_minutes(incidents, sampling_seconds: int) -> pd.Series:
    """Minutes each incident's alert covers (its first to its last flagged row, plus one sampling
    interval), by incident; a Spark DataFrame of incidents in, a small pandas Series out."""
    rows = incidents.select("entity_id", "start_ts", "end_ts").toPandas()
    if rows.empty:
        return pd.Series([], dtype=float)
    span = (pd.to_datetime(rows["end_ts"]) - pd.to_datetime(rows["start_ts"])).dt.total_seconds() + sampling_seconds
    return (span / 60.0).set_axis(rows["entity_id"].to_numpy())
