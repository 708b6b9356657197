"""Promotion: how a challenger earns the champion alias.

A new bundle is shadow-scored on the newest day (never published); it is promoted when there is
no champion, or when its incident rate is within the alarm budget (``registry.passes_gate``) and
its precision over the alerts users labelled is no worse than the champion's. Before that, the
false alerts of the training window raise their entities' thresholds.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from feature_store.views import FeatureView
from fleetwatch.core.lake import Lake
from fleetwatch.core.settings import Settings
from fleetwatch.core.specs import DatasetSpec
from models.entity_scoring import IncidentJob
from models.frames import ENTITY, TS
from models.scoring import day_scores, incidents_of


@dataclass
class ShadowResult:
    """A challenger's scores on one day, not published: the gate's evidence and the plots' data."""

    incidents_per_entity_day: float
    flagged_rate: float
    per_entity: pd.DataFrame
    sample: pd.DataFrame
    timelines: pd.DataFrame


def shadow_score(
    spark, spec: DatasetSpec, view: FeatureView, day: dt.date, bundle_dir: str, settings: Settings, n_timelines: int = 3
) -> ShadowResult:
    """Score ``day``'s feature partition with a bundle that is not the champion, as a night scores
    it (``models.scoring.day_scores``), keeping only summaries."""
    lineage = {"model_name": "", "model_version": "", "feature_view": "", "run_id": ""}
    job = IncidentJob(day, lineage, spec.incident_gap(settings.incident_gap_minutes))
    scores = day_scores(spark, Lake(settings.lake_root), spec, view, day, bundle_dir, incidents=job).cache()
    incidents = incidents_of(scores)
    inc_counts = incidents.groupBy(ENTITY).agg(F.count("*").alias("incidents"))
    per_entity = (
        scores.groupBy(ENTITY, "scope")
        .agg(
            F.count("*").alias("rows"),
            F.sum(F.col("flagged").cast("int")).alias("flagged"),
            F.first("threshold").alias("threshold"),
        )
        .join(inc_counts, ENTITY, "left")
        .fillna(0, ["incidents"])
        .toPandas()
        .sort_values(ENTITY)
        .reset_index(drop=True)
    )
    total = max(int(per_entity["rows"].sum()), 1)
    fraction = min(1.0, 20_000 / total)
    sample = (
        scores.select(ENTITY, "score", "threshold", "iforest_score", "ae_score")
        .sample(fraction=fraction, seed=settings.seed)
        .toPandas()
    )
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


def raise_thresholds(
    bundle, rows: pd.DataFrame, false_alerts: pd.DataFrame, *, margin: float | None = None, max_factor: float | None = None,
    short_event_factor: float | None = None,
) -> dict[str, list[float]]:
    """Raise each entity's threshold just above the peak score of its false alerts' rows.

    ``rows`` are the feature rows inside the alerts (with the alert ``id``), scored here with
    the entity's newly fitted model: the threshold becomes ``margin`` times their peak score,
    never lower than fitted and at most ``max_factor`` times it, so one careless label cannot
    silence an entity (both default to the bundle's ``feedback_margin`` and ``feedback_max_factor``).
    With the spec's ``short_event_factor`` the unsmoothed threshold is raised the same way, so
    that ``factor * raw_threshold`` clears the rows' peak unsmoothed score: a false short event
    does not come back through the short-event rule either. Only entities with their own models
    are raised (the fleet model's threshold is shared). Returns ``{entity: [fitted, raised]}`` of
    the entities changed (the smoothed thresholds).
    """
    changed: dict[str, list[float]] = {}
    margin = bundle.params.feedback_margin if margin is None else margin
    max_factor = bundle.params.feedback_max_factor if max_factor is None else max_factor
    if rows.empty or false_alerts.empty:
        return changed
    for entity, part in rows.groupby(ENTITY, sort=True):
        if bundle.scope_of(str(entity)) != "entity" or str(entity) not in bundle.entities:
            continue
        model = bundle.entities[str(entity)]
        if model.scope != "entity":
            continue
        scores = bundle.score(part.drop(columns=["id"]).reset_index(drop=True))
        fitted = float(model.threshold)
        raised = min(max(fitted, margin * float(scores["score"].max())), max_factor * fitted)
        raw_fitted, raw_raised = float(model.raw_threshold), None
        if short_event_factor is not None and np.isfinite(raw_fitted) and raw_fitted > 0:
            peak = margin * float(scores["raw_score"].max()) / short_event_factor
            raw_raised = min(max(raw_fitted, peak), max_factor * raw_fitted)
            raw_raised = raw_raised if raw_raised > raw_fitted else None
        if raised > fitted or raw_raised is not None:
            bundle.set_threshold(str(entity), raised, raw_raised)
            changed[str(entity)] = [fitted, raised]
    return changed


def labelled_precision(bundle, rows: pd.DataFrame, labelled: pd.DataFrame) -> dict[str, float]:
    """Precision of the champion and of a challenger ``bundle`` over user-labelled alerts.

    The labelled alerts are the champion's (what was published), so its precision is the share
    labelled true. The challenger would raise an alert where it flags a row inside the span;
    its precision is the share labelled true of those. NaN where there is nothing to divide.
    """
    n = len(labelled)
    out = {
        "labelled_alerts": float(n),
        "champion_precision": float("nan"),
        "challenger_precision": float("nan"),
        "challenger_alerts": 0.0,
    }
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
