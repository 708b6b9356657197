"""Scoring: a Spark job that scores a feature partition with the champion bundle.

Rows are grouped by entity (``groupBy(entity).applyInPandas``); each worker process loads the
bundle once (``models.bundle.load_cached``) and scores its entities with both detectors. The
per-row scores go to ``scores/``; flagged rows are grouped into incidents with their top
contributing metrics and written to ``incidents/``, from where the publish task loads them into
the alerts table.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import pandas as pd

from fleetwatch.core.lake import Lake, write_spark_partition
from fleetwatch.core.settings import Settings
from fleetwatch.core.specs import DatasetSpec, load_spec

ENTITY, TS = "entity_id", "ts"
TOP_METRICS = 3  # metrics named in an alert's top_metrics; ``contributions`` ranks them all
INCIDENT_SCHEMA = (
    "dataset string, entity_id string, dt date, start_ts timestamp, end_ts timestamp, n_points int, "
    "peak_score double, severity string, threshold double, top_metrics string, contributions string, "
    "phases string, model_scope string, model_name string, model_version string, feature_view string, run_id string"
)


def score_schema(spec: DatasetSpec) -> str:
    metrics = spec.metric_names
    cols = [
        "entity_id string", "ts timestamp", "scope string", "iforest_score double", "ae_score double",
        "score double", "threshold double", "flagged boolean",
    ]
    cols += [f"`{m}` double" for m in metrics] + [f"`err__{m}` double" for m in metrics]
    return ", ".join(cols)


def score_frame(df, spec: DatasetSpec, bundle_dir: str):
    """Per-row scores of a canonical feature DataFrame (entity_id, ts, features) in Spark."""
    metrics = spec.metric_names
    columns = [c.split(" ")[0].strip("`") for c in score_schema(spec).split(", ")]

    def score(pdf: pd.DataFrame) -> pd.DataFrame:
        from models.bundle import load_cached
        from models.training import one_thread_per_task

        one_thread_per_task()
        bundle = load_cached(bundle_dir)
        pdf = pdf.sort_values(TS).reset_index(drop=True)
        out = bundle.score(pdf)
        out["scope"] = bundle.scope_of(str(pdf[ENTITY].iloc[0]))
        for m in metrics:
            out[m] = pdf[m].to_numpy(dtype=float)
        return out[columns]

    return df.groupBy(ENTITY).applyInPandas(score, score_schema(spec))


def incident_context(pdf: pd.DataFrame, start_ts, skip_minutes: int = 0) -> pd.DataFrame:
    """An entity's rows in the ``CONTEXT_MINUTES`` ending ``skip_minutes`` before ``start_ts``: the
    level an incident's metrics are compared with (``models.explain.incident_evidence``)."""
    from models.explain import CONTEXT_MINUTES

    end = start_ts - pd.Timedelta(minutes=skip_minutes)
    return pdf[(pdf[TS] >= end - pd.Timedelta(minutes=CONTEXT_MINUTES)) & (pdf[TS] < end)]


def incident_phases(rows: pd.DataFrame, phase_minutes: int) -> list[pd.DataFrame]:
    """An incident's rows (time order) cut into consecutive ``phase_minutes`` from its first row."""
    step = ((rows[TS] - rows[TS].iloc[0]) // pd.Timedelta(minutes=phase_minutes)).to_numpy()
    return [part for _, part in rows.groupby(step, sort=True)]


def entity_incidents(pdf: pd.DataFrame, metrics: list[str], baselines, spread, *, gap_minutes: int,
                     sampling_seconds: int, ranges=None, min_points: int = 1, context_skip_minutes: int = 0,
                     phase_minutes: int | None = None) -> list[dict]:
    """Incidents of one entity's scored rows (time order), each with every metric ranked.

    Incidents with fewer than ``min_points`` flagged rows are left out (``group_incidents``).
    ``baselines``, ``spread`` and ``ranges`` are the entity's per-metric training medians, spreads
    and normal ranges, or callables returning them (looked up only when there is an incident). A
    metric's evidence is its largest move outside its normal range inside the incident, in units
    of its spread (``models.explain.deviations``; without ranges, its largest deviation from the
    median), plus a tenth of its move against the hour before the incident
    (``models.explain.incident_evidence``), the hour ending ``context_skip_minutes`` before the
    first flagged row (the score smoothing window: rows that close may already be anomalous, the
    first flag can lag the onset by that much); without spreads (a bundle saved before they were
    kept), the mean of its normalised reconstruction errors (``err__<metric>``).

    Each incident's ``phases`` rank the metrics again on each ``phase_minutes`` (default
    ``models.explain.PHASE_MINUTES``) of the incident from its start, each against the hour before
    that phase: a long incident often moves from one cause to another (disk, then CPU), and one
    ranking over all its hours names whichever was largest.
    """
    from models.explain import PHASE_MINUTES, incident_evidence, top_contributors
    from models.incidents import group_incidents

    phase_minutes = PHASE_MINUTES if phase_minutes is None else phase_minutes
    if phase_minutes <= 0:
        raise ValueError(f"phase_minutes must be > 0, got {phase_minutes}")

    found = group_incidents(pdf, score_col="score", flag_col="flagged", ts_col=TS, entity_col=ENTITY,
                            gap_minutes=gap_minutes, sampling_seconds=sampling_seconds, min_points=min_points)
    if found.empty:
        return []
    baselines = baselines() if callable(baselines) else baselines
    spread = spread() if callable(spread) else spread
    ranges = ranges() if callable(ranges) else ranges

    def ranking(rows: pd.DataFrame) -> list[dict]:
        peak = rows.loc[[rows["score"].idxmax()], metrics]
        if spread:
            before = incident_context(pdf, rows[TS].iloc[0], context_skip_minutes)
            evidence = incident_evidence(rows[metrics], before[metrics], baselines, spread, ranges)
            return top_contributors(evidence, peak, baselines, k=len(metrics), how="max")
        errs = rows[[f"err__{m}" for m in metrics]].set_axis(metrics, axis=1)
        return top_contributors(errs, peak, baselines, k=len(metrics))

    out = []
    for inc in found.itertuples(index=False):
        rows = pdf[(pdf[TS] >= inc.start_ts) & (pdf[TS] <= inc.end_ts)]
        ranked, parts = ranking(rows), incident_phases(rows, phase_minutes)
        phases = [  # an incident within one phase is that phase: its ranking is the incident's
            {"start_ts": part[TS].iloc[0], "end_ts": part[TS].iloc[-1], "n_points": int(part["flagged"].sum()),
             "ranked": ranked if len(parts) == 1 else ranking(part)}
            for part in parts
        ]
        out.append({
            "entity_id": inc.entity_id, "start_ts": inc.start_ts, "end_ts": inc.end_ts, "n_points": int(inc.n_points),
            "peak_score": float(inc.peak_score), "threshold": float(rows["threshold"].iloc[0]),
            "scope": str(rows["scope"].iloc[0]), "ranked": ranked, "phases": phases,
        })
    return out


def phases_json(phases: list[dict]) -> str:
    """An incident's phases as the alerts table holds them: a JSON list, in time order, of
    ``{"start_ts", "end_ts"`` (ISO 8601, UTC), ``"n_points"`` (flagged rows), ``"top_metrics"``,
    ``"contributions"}`` (every metric ranked, as the alert's own ``contributions``)."""
    def utc(ts) -> str:
        ts = pd.Timestamp(ts)
        return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).isoformat()

    return json.dumps([
        {"start_ts": utc(p["start_ts"]), "end_ts": utc(p["end_ts"]),
         "n_points": p["n_points"], "top_metrics": ",".join(t["metric"] for t in p["ranked"][:TOP_METRICS]),
         "contributions": p["ranked"]}
        for p in phases
    ])


def incidents_frame(scores_df, spec: DatasetSpec, bundle_dir: str, day: dt.date, lineage: dict, gap_minutes: int):
    """Group each entity's flagged rows into incidents with severity and contributors.

    ``contributions`` ranks every metric (what explanation quality is measured on) by its
    evidence inside the incident (``entity_incidents``: outside its normal range, and its move
    against the hour before); ``top_metrics`` names the first ``TOP_METRICS``.
    Incidents shorter than the spec's ``min_incident_minutes`` raise no alert.
    """
    metrics = spec.metric_names
    sampling = spec.sampling_seconds
    min_points = spec.min_incident_points

    def group(pdf: pd.DataFrame) -> pd.DataFrame:
        from models.bundle import load_cached
        from models.incidents import severity

        pdf = pdf.sort_values(TS).reset_index(drop=True)
        entity = str(pdf[ENTITY].iloc[0])
        found = entity_incidents(pdf, metrics, lambda: load_cached(bundle_dir).baselines_of(entity),
                                 lambda: load_cached(bundle_dir).spreads_of(entity),
                                 gap_minutes=gap_minutes, sampling_seconds=sampling, min_points=min_points,
                                 ranges=lambda: load_cached(bundle_dir).normal_ranges_of(entity),
                                 context_skip_minutes=spec.score_smoothing_minutes)
        if not found:
            return pd.DataFrame(columns=[c.split(" ")[0] for c in INCIDENT_SCHEMA.split(", ")])
        records = []
        for inc in found:
            ranked = inc["ranked"]
            threshold = inc["threshold"]
            records.append(
                {
                    "dataset": spec.name, "entity_id": inc["entity_id"], "dt": day,
                    "start_ts": inc["start_ts"], "end_ts": inc["end_ts"], "n_points": inc["n_points"],
                    "peak_score": inc["peak_score"], "severity": severity(inc["peak_score"], threshold),
                    "threshold": threshold, "top_metrics": ",".join(t["metric"] for t in ranked[:TOP_METRICS]),
                    "contributions": json.dumps(ranked), "phases": phases_json(inc["phases"]),
                    "model_scope": inc["scope"], **lineage,
                }
            )
        return pd.DataFrame.from_records(records)

    return scores_df.groupBy(ENTITY).applyInPandas(group, INCIDENT_SCHEMA)


def score_partition(spark, settings: Settings, dataset: str, day: dt.date) -> str:
    """Score the day's feature partition with the champion and write scores and incidents."""
    from feature_store.offline_store import OfflineStore
    from feature_store.views import view_for
    from models import registry
    from models.training import canonical

    spec = load_spec(settings.specs_dir, dataset)
    view = view_for(spec)
    lake = Lake(settings.lake_root)
    lake.require(lake.features(dataset, view.ref, day), f"feature partition {dataset} {view.ref} dt={day}", spark)
    champ = registry.champion(settings, dataset)
    features = canonical(OfflineStore(spark, lake).read_features(dataset, view, [day]), spec).drop("dt")
    scores_path = write_spark_partition(lake, score_frame(features, spec, champ.bundle_dir), lake.partition("scores", dataset, day), spark)
    scores = spark.read.parquet(scores_path)
    lineage = {"model_name": champ.name, "model_version": champ.version, "feature_view": view.ref, "run_id": champ.run_id}
    incidents = incidents_frame(scores, spec, champ.bundle_dir, day, lineage, spec.incident_gap(settings.incident_gap_minutes))
    inc_path = write_spark_partition(lake, incidents.coalesce(1), lake.partition("incidents", dataset, day), spark)
    n_rows = scores.count()
    n_flagged = scores.filter("flagged").count()
    n_incidents = spark.read.parquet(inc_path).count()
    return f"scored {n_rows} rows with {champ.name} v{champ.version}: {n_flagged} flagged, {n_incidents} incidents"


@dataclass
class ShadowResult:
    """A challenger's scores on one day, not published: the gate's evidence and the plots' data."""

    incidents_per_entity_day: float
    flagged_rate: float
    per_entity: pd.DataFrame
    sample: pd.DataFrame
    timelines: pd.DataFrame


def shadow_score(spark, spec: DatasetSpec, features_df, bundle_dir: str, settings: Settings, n_timelines: int = 3) -> ShadowResult:
    """Score a day with a bundle that is not the champion, keeping only summaries."""
    from pyspark.sql import functions as F

    features_df = features_df.drop("dt")
    day = features_df.select(F.min(TS)).first()[0].date()
    scores = score_frame(features_df, spec, bundle_dir).cache()
    lineage = {"model_name": "", "model_version": "", "feature_view": "", "run_id": ""}
    incidents = incidents_frame(scores, spec, bundle_dir, day, lineage, spec.incident_gap(settings.incident_gap_minutes))
    inc_counts = incidents.groupBy(ENTITY).agg(F.count("*").alias("incidents"))
    per_entity = (
        scores.groupBy(ENTITY, "scope")
        .agg(F.count("*").alias("rows"), F.sum(F.col("flagged").cast("int")).alias("flagged"),
             F.first("threshold").alias("threshold"))
        .join(inc_counts, ENTITY, "left").fillna(0, ["incidents"])
        .toPandas().sort_values(ENTITY).reset_index(drop=True)
    )
    total = max(int(per_entity["rows"].sum()), 1)
    fraction = min(1.0, 20_000 / total)
    sample = scores.select(ENTITY, "score", "threshold", "iforest_score", "ae_score").sample(fraction=fraction, seed=settings.seed).toPandas()
    chosen = per_entity.sort_values("incidents", ascending=False)[ENTITY].head(n_timelines).tolist()
    timelines = scores.filter(F.col(ENTITY).isin(chosen)).select(ENTITY, TS, "score", "threshold", "flagged").toPandas()
    scores.unpersist()
    n_entities = max(len(per_entity), 1)
    return ShadowResult(
        incidents_per_entity_day=float(per_entity["incidents"].sum()) / n_entities,
        flagged_rate=float(per_entity["flagged"].sum()) / total,
        per_entity=per_entity,
        sample=sample,
        timelines=timelines,
    )
