"""Scoring: a Spark job that scores a feature partition with the champion bundle.

Each task scores whole entities: read straight from the partition's files when its tasks wrote it
(:func:`score_files`), else grouped by entity in Spark (:func:`score_frame`). Each worker process
loads the bundle once (``models.bundle.load_cached``) and scores its entities with both detectors.
Flagged rows are grouped into incidents with their top contributing metrics. On a night each task
writes its entities' scores to ``scores/`` and their incidents to ``incidents/`` itself
(:func:`write_scores_from_tasks`), from where the publish task loads them into the alerts table.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from feature_store.offline_store import OfflineStore
from feature_store.partition_reader import read_manifest, unit_entities, work_units
from feature_store.partition_writer import whole_entities
from feature_store.views import FeatureView, view_for
from fleetwatch.core.lake import Lake, write_bytes
from fleetwatch.core.settings import Settings
from fleetwatch.core.spark import task_slots
from fleetwatch.core.specs import DatasetSpec, load_spec
from fleetwatch.core.task_files import ENTITIES, TaskFile, entities_manifest, keep_only
from models import registry
from models.alarm_cap import AlertRule, apply_cap
from models.bundle import load_cached, open_checked
from models.frames import ENTITY, TS, canonical, one_thread_per_task, sampling_step
from models.incidents import entity_incidents, phases_json, severity, two_scale_flags

INCIDENT_SCHEMA = (
    "dataset string, entity_id string, dt date, start_ts timestamp, end_ts timestamp, n_points int, "
    "peak_score double, severity string, threshold double, top_metrics string, contributions string, "
    "phases string, model_scope string, model_name string, model_version string, feature_view string, run_id string"
)


def score_schema(spec: DatasetSpec, incidents: bool = False) -> str:
    """The scores' columns; with ``incidents``, ``incident`` too: on the first row of each incident
    the incident as JSON (``incident_json``), empty elsewhere."""
    metrics = spec.metric_names
    cols = [
        "entity_id string",
        "ts timestamp",
        "scope string",
        "iforest_score double",
        "ae_score double",
        "score double",
        "raw_score double",
        "threshold double",
        "raw_threshold double",
        "flagged boolean",
        "alarm_cap double",
        "uncapped_alarm_minutes double",
        "uncapped_incidents double",
    ]
    cols += [f"`{m}` double" for m in metrics] + [f"`err__{m}` double" for m in metrics]
    return ", ".join(cols + (["incident string"] if incidents else []))


@dataclass(frozen=True)
class AlarmCap:
    """What the alarm cap (``models.alarm_cap``) needs on a night: the budget share and alerts, the
    incident gap, and each entity's uncapped minutes in alarm on the window's earlier nights."""

    budget_share: float
    alerts_per_night: float
    gap_minutes: int
    previous: dict[str, list[float]]
    level_minutes: float = 0.0


@dataclass(frozen=True)
class IncidentJob:
    """What grouping a night's flagged rows into incidents needs beyond the rows: the partition's
    day, the model's lineage for each alert, and the incident gap."""

    day: dt.date
    lineage: dict
    gap_minutes: int


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
    units = work_units(manifest, 4 * task_slots(spark))
    schema = score_schema(spec, incidents is not None)
    if not units:
        return spark.createDataFrame([], schema)
    score = entity_scorer(spec, bundle_dir, cap, incidents)
    rename = {spec.entity_column: ENTITY, spec.timestamp_column: TS}

    def task(batches):
        for batch in batches:
            for i in batch["id"]:
                for rows in unit_entities(path, units[int(i)]):
                    yield score(rows.rename(columns=rename))

    return spark.range(0, len(units), 1, len(units)).mapInPandas(task, schema)


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


def entity_scorer(spec: DatasetSpec, bundle_dir: str, cap: AlarmCap | None, incidents: IncidentJob | None):
    """The function that scores one entity's feature rows (canonical columns) into rows of
    :func:`score_schema`, in a task: the bundle loaded once a worker process. With ``incidents``,
    each incident rides as JSON on its first row (``incident``)."""
    score = entity_score_parts(spec, bundle_dir, cap, incidents)

    def with_incidents(pdf: pd.DataFrame) -> pd.DataFrame:
        out, records = score(pdf)
        if incidents is not None:
            carried = np.full(len(out), None, dtype=object)  # each incident on its first row
            if records:
                at = pd.Index(out[TS]).get_indexer([r["start_ts"] for r in records])
                if (at < 0).any():
                    raise ValueError(f"{pdf[ENTITY].iloc[0]}: an incident starts on no scored row")
                carried[at] = [incident_json(r) for r in records]
            out["incident"] = carried
        return out

    return with_incidents


def entity_score_parts(spec: DatasetSpec, bundle_dir: str, cap: AlarmCap | None, incidents: IncidentJob | None):
    """The function that scores one entity's feature rows into ``(scores, incidents)``: its rows
    of :func:`score_schema` (without ``incident``), in time order, and, with ``incidents``, its
    incidents as records of :data:`INCIDENT_SCHEMA` (else none)."""
    metrics = spec.metric_names
    columns = [c.split(" ")[0].strip("`") for c in score_schema(spec).split(", ")]

    def score(pdf: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
        one_thread_per_task()
        bundle = load_cached(bundle_dir)
        pdf = pdf.sort_values(TS).reset_index(drop=True)
        scored = bundle.score(pdf).assign(alarm_cap=1.0, uncapped_alarm_minutes=float("nan"), uncapped_incidents=float("nan"))
        if cap is not None:
            sampling = sampling_step(pdf[TS], spec.sampling_seconds)
            scored = apply_cap(
                scored, factor=spec.short_event_factor, budget_share=cap.budget_share,
                previous=cap.previous.get(str(pdf[ENTITY].iloc[0]), []), alerts_per_night=cap.alerts_per_night,
                rule=AlertRule(cap.gap_minutes, sampling, spec.min_incident_points_at(sampling)),
                level_minutes=cap.level_minutes,
            )
        out = two_scale_flags(scored, spec.short_event_factor)
        out["scope"] = bundle.scope_of(str(pdf[ENTITY].iloc[0]))
        for m in metrics:
            out[m] = pdf[m].to_numpy(dtype=float)
        records = incident_records(out, spec, bundle_dir, incidents) if incidents is not None else []
        return out[columns], records

    return score


_INCIDENT_COLUMNS = [c.split(" ")[0] for c in INCIDENT_SCHEMA.split(", ")]


def incident_records(pdf: pd.DataFrame, spec: DatasetSpec, bundle_dir: str, job: IncidentJob) -> list[dict]:
    """One entity's scored day (its rows in time order) grouped into incidents with severity and
    contributors, as rows of :data:`INCIDENT_SCHEMA`.

    ``contributions`` ranks every metric (what explanation quality is measured on) by its
    evidence inside the incident (``entity_incidents``: outside its normal range, and its move
    against the hour before); ``top_metrics`` names the first ``ExplainParams.top_metrics``. The
    explanation parameters are the bundle's own (``ModelParams.explain``).
    Incidents shorter than the spec's ``min_incident_minutes`` raise no alert unless a row's
    unsmoothed score is ``short_event_factor`` times the threshold (``models.incidents``); both
    rules count rows at the entity's own sampling interval (``models.frames.sampling_step``).
    """
    if not pdf["flagged"].any():
        return []
    entity = str(pdf[ENTITY].iloc[0])
    explain = load_cached(bundle_dir).params.explain
    sampling = sampling_step(pdf[TS], spec.sampling_seconds)  # the entity's own pace
    found = entity_incidents(
        pdf,
        spec.metric_names,
        lambda: load_cached(bundle_dir).baselines_of(entity),
        lambda: load_cached(bundle_dir).spreads_of(entity),
        gap_minutes=job.gap_minutes,
        sampling_seconds=sampling,
        min_points=spec.min_incident_points_at(sampling),
        ranges=lambda: load_cached(bundle_dir).normal_ranges_of(entity),
        context_skip_minutes=spec.score_smoothing_minutes,
        explain=explain,
        short_event_factor=spec.short_event_factor,
    )
    return [
        {
            "dataset": spec.name,
            "entity_id": inc["entity_id"],
            "dt": job.day,
            "start_ts": inc["start_ts"],
            "end_ts": inc["end_ts"],
            "n_points": inc["n_points"],
            "peak_score": inc["peak_score"],
            "severity": severity(inc["peak_score"], inc["threshold"]),
            "threshold": inc["threshold"],
            "top_metrics": ",".join(t["metric"] for t in inc["ranked"][: explain.top_metrics]),
            "contributions": json.dumps(inc["ranked"]),
            "phases": phases_json(inc["phases"], explain.top_metrics),
            "model_scope": inc["scope"],
            **job.lineage,
        }
        for inc in found
    ]


def incident_json(record: dict) -> str:
    """An incident row as the ``incident`` column carries it: timestamps as microseconds since the
    epoch (naive ones are UTC, the session's zone), the day as ISO text."""
    def micros(ts) -> int:
        ts = pd.Timestamp(ts)
        return (ts.tz_localize("UTC") if ts.tzinfo is None else ts).value // 1000

    return json.dumps({**record, "dt": pd.Timestamp(record["dt"]).date().isoformat(),
                       "start_ts": micros(record["start_ts"]), "end_ts": micros(record["end_ts"]),
                       "n_points": int(record["n_points"]), "peak_score": float(record["peak_score"]),
                       "threshold": float(record["threshold"])})


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
            for c in _INCIDENT_COLUMNS
        )
    )


def incidents_frame(scores_df, spec: DatasetSpec, bundle_dir: str, day: dt.date, lineage: dict, gap_minutes: int):
    """Incidents of scores already written (:func:`incident_records` per entity, grouped by entity
    in Spark): for scores made without ``incidents``. The night finds them while scoring."""
    job = IncidentJob(day, lineage, gap_minutes)

    def group(pdf: pd.DataFrame) -> pd.DataFrame:
        records = incident_records(pdf.sort_values(TS).reset_index(drop=True), spec, bundle_dir, job)
        return pd.DataFrame.from_records(records, columns=_INCIDENT_COLUMNS)

    needed = [ENTITY, TS, "score", "raw_score", "threshold", "raw_threshold", "flagged", "scope", *spec.metric_names,
              *(f"err__{m}" for m in spec.metric_names)]  # not the member scores or the cap's columns: less to shuffle
    return scores_df.select(*(F.col(f"`{c}`") for c in needed)).groupBy(ENTITY).applyInPandas(group, INCIDENT_SCHEMA)


_ARROW_TYPES = {"string": "string", "double": "float64", "boolean": "bool_", "int": "int32", "date": "date32"}


def arrow_schema(schema: str):
    """The Arrow schema of a Spark DDL schema of this module (:func:`score_schema`,
    :data:`INCIDENT_SCHEMA`): timestamps as UTC instants, which Spark reads as ``timestamp``."""
    import pyarrow as pa

    fields = []
    for column in schema.split(", "):
        name, kind = column.rsplit(" ", 1)
        kind_type = pa.timestamp("us", tz="UTC") if kind == "timestamp" else getattr(pa, _ARROW_TYPES[kind])()
        fields.append(pa.field(name.strip("`"), kind_type))
    return pa.schema(fields)


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
                            cap: AlarmCap | None, job: IncidentJob) -> WrittenNight:
    """Score ``day``'s feature partition and write the scores and incidents partitions from the
    scoring tasks themselves (``fleetwatch.core.task_files``), both atomically.

    Each task scores whole entities (its unit of the partition's files when they are named in
    ``_entities.json``, else its entities of the Spark-read partition, shuffled by entity) and
    writes their scores as one Parquet file, and their incidents as another; it returns one small
    row per entity. So neither the per-row scores nor the incidents pass through the JVM or the
    driver. The scores partition gets its own ``_entities.json``, with each entity's uncapped
    minutes in alarm, which the next nights' alarm cap reads (:func:`alarm_cap_for`). A failed task
    leaves both previous partitions as they were.
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
                scores.append(entity, out.assign(**{TS: out[TS].dt.tz_localize("UTC")}))
                if records:
                    found.append(entity, _incident_frame(records))
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
            tasks = _unit_tasks(spark, path, manifest, spec, write)
        else:
            features = canonical(OfflineStore(spark, lake).read_features(spec.name, view, [day]), spec).drop("dt")

            def grouped(batches):
                meta = write(whole_entities(batches, ENTITY))
                if len(meta):
                    yield meta

            tasks = features.repartition(ENTITY).sortWithinPartitions(ENTITY, TS).mapInPandas(grouped, _WRITTEN)
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


def _unit_tasks(spark, path: str, manifest: dict, spec: DatasetSpec, write):
    """One task a unit of whole entities of the partition's files (about four a task slot, so
    that unequal entities even out), each ``write``-ing its entities; ``None`` with no rows."""
    units = work_units(manifest, 4 * task_slots(spark))
    if not units:
        return None
    rename = {spec.entity_column: ENTITY, spec.timestamp_column: TS}

    def task(batches):
        for batch in batches:
            for i in batch["id"]:
                meta = write(rows.rename(columns=rename) for rows in unit_entities(path, units[int(i)]))
                if len(meta):
                    yield meta

    return spark.range(0, len(units), 1, len(units)).mapInPandas(task, _WRITTEN)


def _incident_frame(records: list[dict]) -> pd.DataFrame:
    """Incident records as a frame of :data:`INCIDENT_SCHEMA`'s columns, timestamps as UTC."""
    frame = pd.DataFrame.from_records(records, columns=_INCIDENT_COLUMNS)
    for col in ("start_ts", "end_ts"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    frame["dt"] = [pd.Timestamp(d).date() for d in frame["dt"]]
    for col in ("model_name", "model_version", "feature_view", "run_id"):
        frame[col] = frame[col].map(lambda v: None if v is None else str(v))
    return frame


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
    night = write_scores_from_tasks(spark, lake, spec, view, day, champ.bundle_dir, cap, job)
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
