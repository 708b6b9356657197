"""Retraining: a Spark job that fits every entity's models inside Spark tasks.

Entities are hashed into buckets; ``groupBy(bucket).applyInPandas`` hands each task all rows of
its bucket's entities, so the task fits each entity's scaler and IsolationForest and trains the
bucket's autoencoders together as one batched tensor program. Only the fitted models (bytes, one
row per entity) come back to the driver, which assembles the bundle, shadow-scores the newest
day, logs the run to MLflow, registers one version and applies the promotion gate.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import tempfile
from pathlib import Path

import pandas as pd

from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.lake import Lake
from fleetwatch.core.settings import Settings
from fleetwatch.core.specs import DatasetSpec, load_spec

ENTITY, TS = "entity_id", "ts"
HISTORY_COVERAGE = 0.95  # share of a day's rows that makes it a day of history (lookback and gaps cost a few)
FEEDBACK_MARGIN = 1.01  # a false alert's peak score times this is the raised threshold...
FEEDBACK_MAX_FACTOR = 2.0  # ...but never more than this many times the threshold fitted on the window
MODEL_SCHEMA = "entity_id string, scope string, n_rows long, payload binary"


def model_params(settings: Settings, spec: DatasetSpec):
    """Model hyper-parameters for a dataset, derived from settings and the spec."""
    from models.fitting import ModelParams

    return ModelParams(
        gap_minutes=spec.incident_gap(settings.incident_gap_minutes),
        min_history_rows=max(10, int(HISTORY_COVERAGE * settings.min_history_days * spec.rows_per_day)),
        smooth_points=max(1, round(spec.score_smoothing_minutes * 60 / spec.sampling_seconds)),
    )


def window_days(settings: Settings, available: list[dt.date], day: dt.date) -> list[dt.date]:
    """Feature partitions inside the trailing training window that ends at ``day``."""
    first = day - dt.timedelta(days=settings.training_window_days - 1)
    return [d for d in available if first <= d <= day]


def canonical(df, spec: DatasetSpec):
    """Rename the spec's entity and timestamp columns to the names the models use."""
    if spec.entity_column != ENTITY:
        df = df.withColumnRenamed(spec.entity_column, ENTITY)
    if spec.timestamp_column != TS:
        df = df.withColumnRenamed(spec.timestamp_column, TS)
    return df


def one_thread_per_task() -> None:
    """Spark runs one task per core: torch's own thread pool would only fight the other tasks."""
    import torch

    torch.set_num_threads(1)


def _fit_bucket_udf(view, spec: DatasetSpec, params, seed: int):
    from models.fitting import fit_bucket

    feature_cols = list(view.feature_columns)
    feature_metric = [view.metric_of(c) for c in feature_cols]

    def fit(pdf: pd.DataFrame) -> pd.DataFrame:
        one_thread_per_task()
        models = fit_bucket(
            pdf.sort_values([ENTITY, TS]),
            feature_cols=feature_cols,
            feature_metric=feature_metric,
            metrics=spec.metric_names,
            spec=spec,
            params=params,
            random_state=seed,
        )
        return pd.DataFrame(
            {
                "entity_id": [m.entity for m in models],
                "scope": [m.scope for m in models],
                "n_rows": [int(m.n_train_rows) for m in models],
                "payload": [m.to_bytes() for m in models],
            }
        )

    return fit


def _fit_fleet_udf(view, spec: DatasetSpec, params, seed: int):
    from models.fitting import fit_fleet

    feature_cols = list(view.feature_columns)
    feature_metric = [view.metric_of(c) for c in feature_cols]

    def fit(pdf: pd.DataFrame) -> pd.DataFrame:
        one_thread_per_task()
        m = fit_fleet(
            pdf.drop(columns=["_all"]).sort_values([ENTITY, TS]),
            feature_cols=feature_cols,
            feature_metric=feature_metric,
            metrics=spec.metric_names,
            spec=spec,
            params=params,
            random_state=seed,
        )
        return pd.DataFrame({"entity_id": [m.entity], "scope": [m.scope], "n_rows": [int(m.n_train_rows)], "payload": [m.to_bytes()]})

    return fit


def fit_bundle(spark, settings: Settings, spec: DatasetSpec, view, days: list[dt.date], features_df, params=None):
    """Fit all entities' models and the fleet model; returns the assembled ModelBundle.

    ``params`` (a ``ModelParams``) defaults to :func:`model_params` of the settings and spec.
    """
    from pyspark.sql import functions as F

    from models.bundle import ModelBundle
    from models.fitting import EntityModel

    params = params or model_params(settings, spec)
    df = canonical(features_df, spec).drop("dt")
    n_entities = df.select(ENTITY).distinct().count()
    if n_entities == 0:
        raise FleetWatchError(f"{spec.name}: the training window {days[0]}..{days[-1]} holds no rows")
    n_buckets = max(1, math.ceil(n_entities / settings.train_entities_per_task))
    bucketed = df.withColumn("_bucket", F.pmod(F.xxhash64(ENTITY), F.lit(n_buckets)))
    bucketed = bucketed.repartition(n_buckets, "_bucket")
    rows = bucketed.groupBy("_bucket").applyInPandas(_fit_bucket_udf(view, spec, params, settings.seed), MODEL_SCHEMA).collect()

    total = df.count()
    fraction = min(1.0, params.fleet_train_rows / max(total, 1))
    sample = df.sample(fraction=fraction, seed=settings.seed).withColumn("_all", F.lit(0))
    fleet_row = sample.groupBy("_all").applyInPandas(_fit_fleet_udf(view, spec, params, settings.seed), MODEL_SCHEMA).collect()[0]

    feature_cols = list(view.feature_columns)
    return ModelBundle(
        dataset=spec.name,
        feature_view=view.ref,
        feature_cols=feature_cols,
        feature_metric=[view.metric_of(c) for c in feature_cols],
        metrics=spec.metric_names,
        entities={r.entity_id: EntityModel.from_bytes(bytes(r.payload)) for r in rows},
        fleet=EntityModel.from_bytes(bytes(fleet_row.payload)),
        window_start=days[0],
        window_end=days[-1],
        params=params,
    )


def train_models(spark, settings: Settings, dataset: str, day: dt.date, *, params=None) -> str:
    """Train on the window ending at ``day``, register a version, gate it; returns a summary.

    False alerts of the window raise their entities' thresholds (:func:`raise_thresholds`);
    the challenger is shadow-scored on the newest day and promoted when there is no champion,
    or when its incident rate is within the gate and its precision over the labelled alerts
    of that day is no worse than the champion's (:func:`labelled_precision`).
    """
    from feature_store.offline_store import OfflineStore
    from feature_store.views import view_for
    from models import registry
    from models.reporting import log_training_run
    from models.scoring import shadow_score

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
    bundle = fit_bundle(spark, settings, spec, view, days, features_df, params)
    false_alerts = _labelled(settings, dataset, False, days)
    raised = raise_thresholds(bundle, alert_rows(store, spec, view, false_alerts), false_alerts)
    shadow_alerts = _labelled(settings, dataset, None, days[-1:])

    with tempfile.TemporaryDirectory(prefix="fleetwatch-bundle-") as tmp:
        bundle_dir = Path(tmp) / "bundle"
        bundle.save(bundle_dir)
        newest = store.read_features(dataset, view, [days[-1]])
        shadow = shadow_score(spark, spec, canonical(newest, spec), str(bundle_dir), settings)
        gate_rate = shadow.incidents_per_entity_day
        precision = labelled_precision(bundle, alert_rows(store, spec, view, shadow_alerts), shadow_alerts)
        version, run_id = log_training_run(settings, spec, view, bundle, bundle_dir, shadow)
    has_champion = registry.has_champion(settings, dataset)
    within = registry.passes_gate(gate_rate, spec.alarm_budget)
    promoted = not has_champion or (within and precision_ok(precision))
    registry.record_decision(
        settings, dataset, version, promoted=promoted, rate=gate_rate, budget=spec.alarm_budget, run_id=run_id,
        figures={**{f"gate_{k}": v for k, v in precision.items()}, "feedback_raised_entities": float(len(raised))},
        thresholds=raised,
    )
    if promoted:
        registry.promote(settings, dataset, version)
    return (
        f"trained {len(bundle.entities)} entities on {days[0]}..{days[-1]}; registered "
        f"{registry.model_name(dataset)} v{version} (run {run_id}); newest-day incidents/entity "
        f"{gate_rate:.2f} vs budget {spec.alarm_budget}, labelled-alert precision challenger "
        f"{precision['challenger_precision']:.2f} vs champion {precision['champion_precision']:.2f} "
        f"({precision['labelled_alerts']:.0f} labelled); {len(raised)} thresholds raised by false alerts: "
        f"{'champion' if promoted else 'challenger (gate not passed)'}"
    )


def _labelled(settings: Settings, dataset: str, value: bool | None, days: list[dt.date]) -> pd.DataFrame:
    """Alerts of ``days`` labelled ``value`` (either label when None); empty without a database."""
    from fleetwatch.core.alerts_store import AlertsStore

    store = AlertsStore(settings.alerts_db_url)
    try:
        frames = [store.labelled(dataset, v) for v in ((True, False) if value is None else (value,))]
    except FleetWatchError:
        return pd.DataFrame(columns=["id", "entity_id", "dt", "start_ts", "end_ts", "label"])
    alerts = pd.concat(frames, ignore_index=True)
    return alerts[pd.to_datetime(alerts["dt"]).dt.date.isin(set(days))].reset_index(drop=True)


def alert_rows(store, spec: DatasetSpec, view, alerts: pd.DataFrame) -> pd.DataFrame:
    """Canonical feature rows inside the given alerts' spans, with the alert's ``id`` (few rows)."""
    from pyspark.sql import functions as F

    if alerts.empty:
        return pd.DataFrame(columns=["id", ENTITY, TS, *view.feature_columns])
    days = sorted({pd.Timestamp(d).date() for d in alerts["dt"]})
    spark = store.spark
    spans = spark.createDataFrame(alerts[["id", "entity_id", "start_ts", "end_ts"]].rename(columns={"entity_id": "_e"}))
    df = canonical(store.read_features(spec.name, view, days), spec).drop("dt")
    cond = (F.col(ENTITY) == F.col("_e")) & (F.col(TS) >= F.col("start_ts")) & (F.col(TS) <= F.col("end_ts"))
    rows = df.join(F.broadcast(spans), cond).drop("_e", "start_ts", "end_ts").toPandas()
    return rows.sort_values(["id", TS]).reset_index(drop=True)


def raise_thresholds(bundle, rows: pd.DataFrame, false_alerts: pd.DataFrame,
                     *, margin: float = FEEDBACK_MARGIN, max_factor: float = FEEDBACK_MAX_FACTOR) -> dict[str, list[float]]:
    """Raise each entity's threshold just above the peak score of its false alerts' rows.

    ``rows`` are the feature rows inside the alerts (with the alert ``id``), scored here with
    the entity's newly fitted model: the threshold becomes ``margin`` times their peak score,
    never lower than fitted and at most ``max_factor`` times it, so one careless label cannot
    silence an entity. Only entities with their own models are raised (the fleet model's
    threshold is shared). Returns ``{entity: [fitted, raised]}`` of the thresholds changed.
    """
    changed: dict[str, list[float]] = {}
    if rows.empty or false_alerts.empty:
        return changed
    for entity, part in rows.groupby(ENTITY, sort=True):
        model = bundle.entities.get(str(entity))
        if model is None or model.scope != "entity":
            continue
        scores = bundle.score(part.drop(columns=["id"]).reset_index(drop=True))
        fitted = float(model.threshold)
        raised = min(max(fitted, margin * float(scores["score"].max())), max_factor * fitted)
        if raised > fitted:
            bundle.entities[str(entity)] = dataclasses.replace(model, threshold=raised)
            changed[str(entity)] = [fitted, raised]
    return changed


def labelled_precision(bundle, rows: pd.DataFrame, labelled: pd.DataFrame) -> dict[str, float]:
    """Precision of the champion and of a challenger ``bundle`` over user-labelled alerts.

    The labelled alerts are the champion's (what was published), so its precision is the share
    labelled true. The challenger would raise an alert where it flags a row inside the span;
    its precision is the share labelled true of those. NaN where there is nothing to divide.
    """
    n = len(labelled)
    out = {"labelled_alerts": float(n), "champion_precision": float("nan"),
           "challenger_precision": float("nan"), "challenger_alerts": 0.0}
    if n == 0:
        return out
    out["champion_precision"] = float(labelled["label"].astype(bool).mean())
    if rows.empty:
        return out
    # each alert's span is scored on its own: scores are smoothed over neighbouring rows
    flagged_ids = {
        alert_id
        for alert_id, span in rows.groupby("id", sort=False)
        if bundle.score(span.drop(columns=["id"]).reset_index(drop=True))["flagged"].any()
    }
    would = labelled[labelled["id"].isin(flagged_ids)]
    out["challenger_alerts"] = float(len(would))
    if len(would):
        out["challenger_precision"] = float(would["label"].astype(bool).mean())
    return out


def precision_ok(figures: dict[str, float]) -> bool:
    """No labelled alerts, or the challenger's precision no worse than the champion's.

    A challenger that would raise none of them passes only when none was a true anomaly.
    """
    champ, chall = figures["champion_precision"], figures["challenger_precision"]
    if math.isnan(champ):
        return True
    if math.isnan(chall):
        return champ == 0.0
    return chall >= champ


def exclude_confirmed_anomalies(settings: Settings, spec: DatasetSpec, features_df):
    """Drop rows inside alerts users labelled true, so anomalies do not become normal."""
    from pyspark.sql import functions as F

    from fleetwatch.core.alerts_store import AlertsStore

    try:
        confirmed = AlertsStore(settings.alerts_db_url).labelled(spec.name, True)
    except FleetWatchError:
        return features_df
    if confirmed.empty:
        return features_df
    spark = features_df.sparkSession
    spans = spark.createDataFrame(confirmed[["entity_id", "start_ts", "end_ts"]])
    spans = spans.withColumnRenamed("entity_id", "_e")
    ent, ts = F.col(spec.entity_column), F.col(spec.timestamp_column)
    cond = (ent == F.col("_e")) & (ts >= F.col("start_ts")) & (ts <= F.col("end_ts"))
    return features_df.join(F.broadcast(spans), cond, "left_anti")

