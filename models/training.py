"""Retraining: a Spark job that fits every entity's models inside Spark tasks.

Entities are hashed into buckets, one Spark task each; ``groupBy(bucket).applyInPandas`` hands a
task all rows of its bucket's entities, so the task fits each entity's scaler and forests and
trains the bucket's autoencoders together as one batched tensor program. The task writes its
models straight to the model store (``models.model_store``) and returns one small metadata row per
entity: no model passes through the driver, which writes the manifest, shadow-scores the newest
day, logs the run to MLflow, registers one version and applies the promotion gate.
"""

from __future__ import annotations

import datetime as dt
import math
import time

import pandas as pd
from pyspark.sql import functions as F

from feature_store.offline_store import OfflineStore
from feature_store.views import view_for
from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.lake import Lake
from fleetwatch.core.settings import Settings
from fleetwatch.core.spark import task_slots
from fleetwatch.core.specs import DatasetSpec, load_spec
from models import model_store, registry
from models.adaptation import adapt_window
from models.bundle import INFO_COLUMNS, ModelBundle
from models.entity_model import EntityModel
from models.feedback import alert_rows, exclude_confirmed_anomalies, labelled_alerts
from models.fitting import fit_bucket, fit_fleet
from models.frames import ENTITY, TS, canonical, one_thread_per_task
from models.params import FeatureLayout, ModelParams
from models.promotion import labelled_precision, precision_ok, raise_thresholds, shadow_score
from models.reporting import log_training_run

MODEL_COLUMNS = ["entity", "scope", "n_rows", "threshold", "fingerprint", "file", "entry", "sha256", "bytes"]
MODEL_SCHEMA = (
    "entity string, scope string, n_rows long, threshold double, fingerprint string, file string, entry string, "
    "sha256 string, bytes long"
)


def model_params(settings: Settings, spec: DatasetSpec) -> ModelParams:
    """Model hyper-parameters for a dataset, derived from settings and the spec."""
    return ModelParams(
        gap_minutes=spec.incident_gap(settings.incident_gap_minutes),
        min_history_rows=max(10, int(settings.history_day_coverage * settings.min_history_days * spec.rows_per_day)),
        smooth_points=max(1, round(spec.score_smoothing_minutes * 60 / spec.sampling_seconds)),
    )


def window_days(settings: Settings, available: list[dt.date], day: dt.date) -> list[dt.date]:
    """Feature partitions inside the trailing training window that ends at ``day``."""
    first = day - dt.timedelta(days=settings.training_window_days - 1)
    return [d for d in available if first <= d <= day]


def _written(location: str, part: str, models: list[EntityModel]) -> pd.DataFrame:
    """Write a task's models to the store; the metadata rows it returns to the driver."""
    return pd.DataFrame(model_store.write_part(location, part, models), columns=MODEL_COLUMNS)


def _fit_bucket_udf(layout: FeatureLayout, spec: DatasetSpec, params: ModelParams, seed: int, location: str):
    def fit(pdf: pd.DataFrame) -> pd.DataFrame:
        one_thread_per_task()
        models = fit_bucket(pdf.sort_values([ENTITY, TS]), layout=layout, spec=spec, params=params, random_state=seed)
        return _written(location, f"bucket-{int(pdf['_bucket'].iloc[0])}", models)

    return fit


def _fit_fleet_udf(layout: FeatureLayout, spec: DatasetSpec, params: ModelParams, seed: int, location: str):
    def fit(pdf: pd.DataFrame) -> pd.DataFrame:
        one_thread_per_task()
        frame = pdf.drop(columns=["_all"]).sort_values([ENTITY, TS])
        return _written(location, "fleet", [fit_fleet(frame, layout=layout, spec=spec, params=params, random_state=seed)])

    return fit


def _info(row) -> dict:
    """A task's metadata row as a manifest entry; a missing threshold (a short-history entity's:
    Arrow carries NaN as null) is NaN."""
    info = {k: row[k] for k in INFO_COLUMNS}
    info["threshold"] = float("nan") if info["threshold"] is None else float(info["threshold"])
    return info


def bucket_count(n_entities: int, per_task: int, slots: int) -> int:
    """Buckets for ``n_entities``: at most ``per_task`` entities each, and no fewer buckets than
    the session has task slots (while there are entities to share), so a small fleet is fitted
    on every core rather than in one task."""
    return max(1, math.ceil(n_entities / per_task), min(n_entities, slots))


def bucket_labels(spark, n_buckets: int) -> list[int]:
    """Labels for ``n_buckets`` buckets that Spark's hash partitioning into ``n_buckets``
    partitions sends to ``n_buckets`` different partitions, so that every task (core) fits one
    bucket and no two buckets queue on one task."""
    # int, like the literals fit_bundle labels buckets with: Spark hashes an int and a long differently
    ids = F.col("id").cast("int")
    candidates = spark.range(0, 64 * n_buckets + 64).select(ids.alias("id"), F.pmod(F.hash(ids), F.lit(n_buckets)).alias("p"))
    first = candidates.groupBy("p").agg(F.min("id").alias("id")).collect()
    by_partition = {int(r.p): int(r.id) for r in first}
    if len(by_partition) < n_buckets:  # practically never: 64 candidates per partition
        return list(range(n_buckets))
    return [by_partition[p] for p in range(n_buckets)]


def fit_bundle(spark, settings: Settings, spec: DatasetSpec, view, days: list[dt.date], features_df, params=None):
    """Fit all entities' models and the fleet model; returns the assembled ModelBundle.

    ``params`` (a ``ModelParams``) defaults to :func:`model_params` of the settings and spec.
    """
    params = params or model_params(settings, spec)
    layout = FeatureLayout.of(view)
    location = model_store.new_build(settings.model_store_root, spec.name)
    df = canonical(features_df, spec).drop("dt")
    n_entities = df.select(ENTITY).distinct().count()
    if n_entities == 0:
        raise FleetWatchError(f"{spec.name}: the training window {days[0]}..{days[-1]} holds no rows")
    n_buckets = bucket_count(n_entities, settings.train_entities_per_task, task_slots(spark))
    labels = F.array(*[F.lit(label) for label in bucket_labels(spark, n_buckets)])
    index = (F.pmod(F.xxhash64(ENTITY), F.lit(n_buckets)) + 1).cast("int")
    bucketed = df.withColumn("_bucket", F.element_at(labels, index)).repartition(n_buckets, "_bucket")
    fit = _fit_bucket_udf(layout, spec, params, settings.seed, location)
    rows = bucketed.groupBy("_bucket").applyInPandas(fit, MODEL_SCHEMA).collect()

    total = df.count()
    fraction = min(1.0, params.fleet_train_rows / max(total, 1))
    sample = df.sample(fraction=fraction, seed=settings.seed).withColumn("_all", F.lit(0))
    fit_all = _fit_fleet_udf(layout, spec, params, settings.seed, location)
    [fleet] = sample.groupBy("_all").applyInPandas(fit_all, MODEL_SCHEMA).collect()

    feature_cols = list(view.feature_columns)
    manifest = {
        "dataset": spec.name,
        "feature_view": view.ref,
        "feature_cols": feature_cols,
        "feature_metric": [view.metric_of(c) for c in feature_cols],
        "metrics": spec.metric_names,
        "window_start": days[0].isoformat(),
        "window_end": days[-1].isoformat(),
        "params": params.model_dump(mode="json"),
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "entities": {r["entity"]: _info(r) for r in rows},
        "fleet": _info(fleet),
    }
    return ModelBundle.assemble(location, manifest)


def train_models(spark, settings: Settings, dataset: str, day: dt.date, *, params=None, feedback: bool = True) -> str:
    """Train on the window ending at ``day``, register a version, gate it; returns a summary.

    False alerts of the window raise their entities' thresholds (:func:`raise_thresholds`);
    the challenger is shadow-scored on the newest day and promoted when there is no champion,
    or when its incident rate is within the gate and its precision over the labelled alerts
    of that day is no worse than the champion's (:func:`labelled_precision`). ``feedback=False``
    trains without reading user labels (the explicit way round an alerts database that is down).
    """
    started = time.time()
    settings = settings if feedback else settings.model_copy(update={"train_feedback": False})
    spec = load_spec(settings.specs_dir, dataset)
    view = view_for(spec)
    lake = Lake(settings.lake_root)
    store = OfflineStore(spark, lake)
    days = window_days(settings, store.available_days(dataset, view), day)
    if not days:
        raise FleetWatchError(
            f"{dataset}: no feature partitions of {view.ref} in the {settings.training_window_days}-day window "
            f"ending {day}: run the nightly DAG (or `fleetwatch features`) for those days first"
        )
    features_df = store.read_features(dataset, view, days)
    features_df = exclude_confirmed_anomalies(settings, spec, features_df)
    min_rows = (params or model_params(settings, spec)).min_history_rows
    features_df, persistent = adapt_window(settings, spec, view, features_df, days, min_rows)
    bundle = fit_bundle(spark, settings, spec, view, days, features_df, params)
    false_alerts = labelled_alerts(settings, dataset, False, days)
    raised = raise_thresholds(
        bundle, alert_rows(store, spec, view, false_alerts), false_alerts, short_event_factor=spec.short_event_factor
    )
    shadow_alerts = labelled_alerts(settings, dataset, None, days[-1:])

    if raised:
        bundle.save_manifest()
    shadow = shadow_score(spark, spec, view, days[-1], bundle.location, settings)
    gate_rate = shadow.incidents_per_entity_day
    precision = labelled_precision(bundle, alert_rows(store, spec, view, shadow_alerts), shadow_alerts)
    partitions = [lake.features(dataset, view.ref, d) for d in days]
    version, run_id = log_training_run(settings, spec, view, bundle, shadow, started=started, partitions=partitions)
    has_champion = registry.has_champion(settings, dataset)
    within = registry.passes_gate(gate_rate, spec.alarm_budget)
    promoted = not has_champion or (within and precision_ok(precision))
    registry.record_decision(
        settings,
        dataset,
        version,
        promoted=promoted,
        rate=gate_rate,
        budget=spec.alarm_budget,
        run_id=run_id,
        figures={**{f"gate_{k}": v for k, v in precision.items()}, "feedback_raised_entities": float(len(raised)),
                 "adapted_alerts": float(sum(v == "adapt" for v in persistent.values()))},
        thresholds=raised,
    )
    if promoted:
        registry.promote(settings, dataset, version)
    return (
        f"trained {len(bundle.entities)} entities on {days[0]}..{days[-1]}; registered "
        f"{registry.model_name(dataset)} v{version} (run {run_id}); newest-day incidents/entity "
        f"{gate_rate:.2f} vs budget {spec.alarm_budget}, labelled-alert precision challenger "
        f"{precision['challenger_precision']:.2f} vs champion {precision['champion_precision']:.2f} "
        f"({precision['labelled_alerts']:.0f} labelled); {len(raised)} thresholds raised by false alerts; "
        f"{sum(v == 'adapt' for v in persistent.values())} persistent alerts adapted to, "
        f"{sum(v == 'exclude' for v in persistent.values())} left out: "
        f"{'champion' if promoted else 'challenger (gate not passed)'}"
    )
