"""Scoring one entity: its feature rows into scored rows, flags at two time scales, the alarm
cap, and its incidents with their ranked metrics; what every scoring path of ``models.scoring``
runs in its Spark tasks, and the schemas of what it gives (Spark DDL and Arrow)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fleetwatch.core.specs import DatasetSpec
from models.alarm_cap import AlertRule, cap_columns
from models.bundle import load_cached
from models.frames import ENTITY, TS, one_thread_per_task, sampling_step, utc_instant
from models.incidents import entity_incidents, flag_columns, phases_json, severity

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
        if not pdf[TS].is_monotonic_increasing:  # a task's rows come in time order: no copy to sort them
            pdf = pdf.sort_values(TS, kind="stable")
        if not pdf.index.equals(pd.RangeIndex(len(pdf))):
            pdf = pdf.reset_index(drop=True)
        entity = str(pdf[ENTITY].iloc[0])
        scored = bundle.score_one(entity, pdf)
        data = {c: scored[c] for c in scored.columns if c not in metrics}  # one frame built below, not one a step
        sampling = sampling_step(pdf[TS], spec.sampling_seconds)  # the entity's own pace, for the cap and incidents
        if cap is not None:
            data.update(cap_columns(
                scored, factor=spec.short_event_factor, budget_share=cap.budget_share,
                previous=cap.previous.get(entity, []), alerts_per_night=cap.alerts_per_night,
                rule=AlertRule(cap.gap_minutes, sampling, spec.min_incident_points_at(sampling)),
                level_minutes=cap.level_minutes,
            ))
        else:
            data.update(alarm_cap=1.0, uncapped_alarm_minutes=float("nan"), uncapped_incidents=float("nan"))
        data.update(flag_columns(data, spec.short_event_factor))  # against the capped thresholds
        data.update({m: pdf[m].to_numpy(dtype=float) for m in metrics})
        out = pd.DataFrame(data)
        records = incident_records(out, spec, bundle_dir, incidents, sampling) if incidents is not None else []
        return out[columns], records

    return score


INCIDENT_COLUMNS = [c.split(" ")[0] for c in INCIDENT_SCHEMA.split(", ")]


def incident_records(pdf: pd.DataFrame, spec: DatasetSpec, bundle_dir: str, job: IncidentJob,
                     sampling: int | None = None) -> list[dict]:
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
    if sampling is None:  # the entity's own pace, unless the caller measured it
        sampling = sampling_step(pdf[TS], spec.sampling_seconds)
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
        return utc_instant(ts).value // 1000

    return json.dumps({**record, "dt": pd.Timestamp(record["dt"]).date().isoformat(),
                       "start_ts": micros(record["start_ts"]), "end_ts": micros(record["end_ts"]),
                       "n_points": int(record["n_points"]), "peak_score": float(record["peak_score"]),
                       "threshold": float(record["threshold"])})


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


def incident_table(records: list[dict], schema):
    """Incident records as an Arrow table of ``schema`` (:func:`arrow_schema` of
    :data:`INCIDENT_SCHEMA`): timestamps as UTC instants (naive ones are UTC), the day as a date,
    the lineage as text. Built from the records' columns, without a pandas frame between: a night
    writes a few incidents for each of thousands of entities."""
    import pyarrow as pa

    columns = {name: [r[name] for r in records] for name in INCIDENT_COLUMNS}
    for col in ("start_ts", "end_ts"):
        columns[col] = [utc_instant(v) for v in columns[col]]
    columns["dt"] = [pd.Timestamp(d).date() for d in columns["dt"]]
    for col in ("model_name", "model_version", "feature_view", "run_id"):
        columns[col] = [None if v is None else str(v) for v in columns[col]]
    return pa.Table.from_pydict(columns, schema=schema)
