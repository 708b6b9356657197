"""Nightly drift check: each entity's features of the day against its champion's training window.

PSI per entity and feature runs inside Spark (``groupBy(entity).applyInPandas``, the champion
bundle loaded once per worker); per-feature rows go to the lake (``drift/``), to the alerts
database's drift table and, as a summary, to MLflow.

Which entity drifted is decided on the metrics' own value columns (not on their rolling
statistics), and fleet-relatively: a metric of an entity drifted when its PSI exceeds both
``settings.drift_psi_threshold`` and ``settings.drift_fleet_factor`` times the fleet's median
PSI of that metric that day. Day-to-day wander that the whole fleet shares (a slow memory
drift of every host, a quiet Sunday) raises the median and stays quiet; one entity moving away
from its own normal stands out. An entity drifted when one of its metrics did.

Entities the bundle holds (own models, or fleet-scoped with a short history) are checked
against their own reference. Entities the bundle does not know are not checked for drift
(the pooled fleet reference describes no single entity's normal); they are listed with
``scope="new"`` and count, with the fleet-scoped ones, towards graduation: once they have
``settings.min_history_days`` of usable feature rows in the training window (the rows the next
retrain would fit them on), the next retrain gives them their own models, so the check asks
for one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd
from pyspark.sql import functions as F

from feature_store.offline_store import OfflineStore
from feature_store.views import view_for
from fleetwatch.core.alerts_store import AlertsStore
from fleetwatch.core.lake import Lake, is_local, local_path, write_spark_partition
from fleetwatch.core.settings import Settings
from fleetwatch.core.specs import load_spec
from models import registry
from models.bundle import load_cached, open_checked
from models.drift import psi
from models.feedback import exclude_confirmed_anomalies
from models.frames import canonical
from models.training import model_params, window_days

ENTITY = "entity_id"
DRIFT_SCHEMA = "entity_id string, feature string, metric string, psi double, drifted boolean, scope string"
RESULT_COLUMNS = [
    "entity_id",
    "feature",
    "metric",
    "psi",
    "drifted",
    "metric_drifted",
    "entity_drifted",
    "scope",
    "clean_days",
    "graduates",
    "model_version",
]


def psi_frame(features_df, bundle_dir: str, threshold: float):
    """PSI of every (entity, feature) of a canonical feature DataFrame, computed in Spark.

    Entities unknown to the bundle come back as one row with ``scope='new'`` and no PSI.
    """

    def check(pdf: pd.DataFrame) -> pd.DataFrame:
        bundle = load_cached(bundle_dir)
        entity = str(pdf[ENTITY].iloc[0])
        model = bundle.entities.get(entity)
        if model is None or model.drift is None:
            return pd.DataFrame(
                {
                    ENTITY: [entity],
                    "feature": [None],
                    "metric": [None],
                    "psi": [float("nan")],
                    "drifted": [False],
                    "scope": ["new"],
                }
            )
        values = psi(model.drift, pdf)
        metric_of = dict(zip(bundle.feature_cols, bundle.feature_metric, strict=False))
        return pd.DataFrame(
            {
                ENTITY: entity,
                "feature": list(values),
                "metric": [metric_of.get(f, f) for f in values],
                "psi": list(values.values()),
                "drifted": [v > threshold for v in values.values()],
                "scope": bundle.scope_of(entity),
            }
        )

    return features_df.groupBy(ENTITY).applyInPandas(check, DRIFT_SCHEMA)


def decide(frame: pd.DataFrame, *, threshold: float, fleet_factor: float) -> pd.DataFrame:
    """Add ``metric_drifted`` and ``entity_drifted`` to per-feature PSI rows (the module's rule).

    Only a metric's value column (``feature == metric``) decides; the fleet median is taken over
    the checked entities' PSI of that column on the same day.
    """
    out = frame.copy()
    value = out["feature"].notna() & (out["feature"] == out["metric"])
    fleet = out["metric"].map(out[value].groupby("metric")["psi"].median())
    out["metric_drifted"] = value & (out["psi"] > threshold) & (out["psi"] > fleet_factor * fleet)
    out["entity_drifted"] = out.groupby(ENTITY)["metric_drifted"].transform("any").astype(bool)
    return out


def history_rows(spark, settings: Settings, spec, view, day: dt.date, entities: list[str]) -> dict[str, int]:
    """Usable feature rows (all features finite, outside confirmed anomalies) of ``entities``
    in the training window ending at ``day``: what the next retrain would fit them on."""
    if not entities:
        return {}
    store = OfflineStore(spark, Lake(settings.lake_root))
    days = window_days(settings, store.available_days(spec.name, view), day)
    df = exclude_confirmed_anomalies(settings, spec, store.read_features(spec.name, view, days))
    df = canonical(df, spec).filter(F.col(ENTITY).isin(entities))
    usable = F.lit(True)
    for c in view.feature_columns:
        usable = usable & F.col(c).isNotNull() & ~F.isnan(F.col(c))
    counts = df.filter(usable).groupBy(ENTITY).count().collect()
    return {r[ENTITY]: int(r["count"]) for r in counts}


@dataclass(frozen=True)
class DriftSummary:
    """What one night's check found: the figures logged to MLflow and what the DAG acts on."""

    day: dt.date
    model_version: str
    checked: int
    drift_entities: list[str]
    graduating: list[str]
    max_psi: float

    @property
    def drift_share(self) -> float:
        return len(self.drift_entities) / self.checked if self.checked else 0.0

    @property
    def retrain(self) -> bool:
        return bool(self.drift_entities or self.graduating)

    def describe(self) -> str:
        return (
            f"checked {self.checked} entities against v{self.model_version}: "
            f"{len(self.drift_entities)} drifted ({', '.join(self.drift_entities) or 'none'}), max PSI "
            f"{self.max_psi:.2f}; {len(self.graduating)} ready for own models ({', '.join(self.graduating) or 'none'})"
        )


def summarize(result: pd.DataFrame, day: dt.date) -> DriftSummary:
    """The summary of one night's per-feature drift rows (as written to the lake)."""
    checked = result[result["scope"] != "new"]
    entities = result.drop_duplicates(ENTITY)
    return DriftSummary(
        day=day,
        model_version=str(result["model_version"].iloc[0]) if len(result) else "",
        checked=int(checked[ENTITY].nunique()),
        drift_entities=sorted(entities.loc[entities["entity_drifted"], ENTITY]),
        graduating=sorted(entities.loc[entities["graduates"], ENTITY]),
        max_psi=float(checked["psi"].max()) if len(checked) and checked["psi"].notna().any() else 0.0,
    )


def check_drift(spark, settings: Settings, dataset: str, day: dt.date) -> str:
    """Check the day's feature partition for drift against the champion; returns a summary line.

    Writes ``drift/<dataset>/dt=<day>`` (replaced whole), the alerts database's drift rows of
    the day and an MLflow run ``drift <day>`` with the summary metrics. Without a champion there
    is nothing to compare with: nothing is written.
    """
    spec = load_spec(settings.specs_dir, dataset)
    view = view_for(spec)
    lake = Lake(settings.lake_root)
    lake.require(lake.features(dataset, view.ref, day), f"feature partition {dataset} {view.ref} dt={day}", spark)
    if not registry.has_champion(settings, dataset):
        return f"{dataset} has no champion model yet: drift check skipped"
    champ = registry.champion(settings, dataset)
    open_checked(champ.bundle_dir, f"{champ.name} v{champ.version}")
    features = canonical(OfflineStore(spark, lake).read_features(dataset, view, [day]), spec).drop("dt")
    rows = psi_frame(features, champ.bundle_dir, settings.drift_psi_threshold).toPandas()
    result = decide(rows, threshold=settings.drift_psi_threshold, fleet_factor=settings.drift_fleet_factor)
    young = sorted(result.loc[result["scope"] != "entity", ENTITY].unique())
    counts = history_rows(spark, settings, spec, view, day, young)
    needed = model_params(settings, spec).min_history_rows
    result["clean_days"] = result[ENTITY].map(counts).fillna(0) / spec.rows_per_day
    result["graduates"] = (result["scope"] != "entity") & (result[ENTITY].map(counts).fillna(0) >= needed)
    result["model_version"] = champ.version
    result = result[RESULT_COLUMNS].sort_values([ENTITY, "feature"], na_position="first").reset_index(drop=True)

    final = lake.partition("drift", dataset, day)
    write_spark_partition(lake, spark.createDataFrame(result, schema=_result_schema()).coalesce(1), final, spark)
    checked = result[result["scope"] != "new"]
    table = checked[["entity_id", "feature", "psi", "drifted", "model_version"]].assign(dataset=dataset, dt=day)
    AlertsStore(settings.alerts_db_url).publish_drift(dataset, day, table)
    summary = summarize(result, day)
    log_summary(settings, dataset, summary)
    return summary.describe()


def read_summary(settings: Settings, dataset: str, day: dt.date) -> DriftSummary | None:
    """The summary of the day's drift partition, None when the check wrote none (no champion)."""
    lake = Lake(settings.lake_root)
    path = lake.partition("drift", dataset, day)
    if is_local(path) and not local_path(path).exists():
        return None
    return summarize(pd.read_parquet(local_path(path) if is_local(path) else path), day)


def log_summary(settings: Settings, dataset: str, summary: DriftSummary) -> str:
    """Log the drift figures to the night's MLflow run (``models.registry.log_night``)."""
    return registry.log_night(
        settings, dataset, summary.day,
        tags={"model_version": summary.model_version, "drift_entities": ",".join(summary.drift_entities),
              "graduating": ",".join(summary.graduating)},
        metrics={"checked_entities": summary.checked, "drifted_entities": len(summary.drift_entities),
                 "drift_share": summary.drift_share, "max_psi": summary.max_psi,
                 "graduating_entities": len(summary.graduating)},
    )


def _result_schema() -> str:
    return (
        "entity_id string, feature string, metric string, psi double, drifted boolean, metric_drifted boolean, "
        "entity_drifted boolean, scope string, clean_days double, graduates boolean, model_version string"
    )
