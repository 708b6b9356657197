"""Adapting an entity to its new normal, without learning long anomalies as normal.

A deviation that lasts from night to night is one persistent alert (``fleetwatch.core.alert_carry``).
Its entity is queued for retraining (:func:`adaptation_queue`) once a user labels the alert
``new_normal``, once it has lasted ``settings.persistent_adapt_days`` nights, or once the entity's
minutes in alarm over the last ``settings.alarm_budget_nights`` nights exceed its alarm-share
budget (``DatasetSpec.alarm_share``).

Retraining then decides per persistent alert of the window (:func:`adapt_window`): the entity
adapts (its window starts where the deviation began) when the alert is labelled ``new_normal``,
or when it is a level shift (:func:`is_level_shift`) and queued by days or by budget; otherwise
its rows leave the training window, like those of alerts labelled true, so a long anomaly never
becomes normal. A deviation the alarm cap (``models.alarm_cap``) held to the budget holds no alert
open from night to night; its capped nights are judged the same way (:func:`capped_deviations`).
"""

from __future__ import annotations

import datetime as dt
from functools import reduce

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from pyspark.sql import functions as F

from fleetwatch.core.alerts_store import AlertsStore
from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.lake import Lake
from fleetwatch.core.settings import Settings
from fleetwatch.core.specs import DatasetSpec
from models.feedback import FeedbackUnavailable
from models.frames import ENTITY, TS, canonical


class LevelShiftRule(BaseModel):
    """When a lasting deviation is a level shift (a new normal) rather than a long anomaly.

    A metric moved when the median of the deviation's rows lies more than ``min_sigmas``
    training spreads (robust: interquartile range / 1.349) from the training median. The
    deviation is a level shift when at least one metric moved and every metric that moved still
    holds its new level in the latest ``tail_share`` of the rows (it did not return) with a
    spread at most ``spread_ratio`` times its training spread (it is stable, not volatile).
    """

    model_config = ConfigDict(extra="forbid")

    spread_ratio: float = Field(2.0, gt=0)
    min_sigmas: float = Field(3.0, gt=0)
    tail_share: float = Field(0.25, gt=0, le=1)

    @classmethod
    def of(cls, settings: Settings) -> LevelShiftRule:
        return cls(
            spread_ratio=settings.level_shift_spread_ratio,
            min_sigmas=settings.level_shift_min_sigmas,
            tail_share=settings.level_shift_tail_share,
        )


def _spread(values: np.ndarray) -> float:
    q1, q3 = np.quantile(values, [0.25, 0.75])
    return float((q3 - q1) / 1.349)


def is_level_shift(before: pd.DataFrame, during: pd.DataFrame, columns: list[str], rule: LevelShiftRule) -> bool:
    """Whether the rows ``during`` a deviation (in time order) hold a stable new level against
    the rows ``before`` it (see :class:`LevelShiftRule`); False when no metric moved."""
    moved = False
    for col in columns:
        base = before[col].to_numpy(dtype=float, na_value=np.nan)
        now = during[col].to_numpy(dtype=float, na_value=np.nan)
        base, now = base[np.isfinite(base)], now[np.isfinite(now)]
        if base.size < 2 or now.size < 2:
            continue
        center = float(np.median(base))
        spread = max(_spread(base), 1e-9 * max(1.0, abs(center)))
        if abs(np.median(now) - center) <= rule.min_sigmas * spread:
            continue
        moved = True
        tail = now[-max(2, int(np.ceil(rule.tail_share * now.size))):]
        if abs(np.median(tail) - center) <= rule.min_sigmas * spread:
            return False  # it returned: an episode, not a new level
        if _spread(tail) > rule.spread_ratio * spread:
            return False  # volatile: an anomaly, not a new level
    return moved


def _store(settings: Settings) -> AlertsStore:
    return AlertsStore(settings.alerts_db_url)


def over_budget(settings: Settings, spec: DatasetSpec, day: dt.date) -> pd.DataFrame:
    """Entities whose minutes in alarm over the nights ending at ``day`` exceed their budget."""
    nights = _store(settings).entity_nights(spec.name, day, settings.alarm_budget_nights)
    budget = spec.alarm_share(settings.alarm_budget_incident_minutes)
    return nights[nights["alarm_share"] > budget].assign(budget=budget)


def adaptation_queue(settings: Settings, spec: DatasetSpec, day: dt.date, judged_until: dt.date | None = None) -> list[str]:
    """Entities whose persistent alert open on ``day`` asks for a retrain: labelled new_normal,
    lasted ``persistent_adapt_days`` nights, or its entity is over its alarm-share budget.

    ``judged_until`` is the last day the champion was trained on. A deviation that began by then
    was already judged by that retrain (adapted to, or left out as an anomaly): unless labelled
    new_normal, it asks again only ``persistent_adapt_days`` nights after that day, so a long
    anomaly does not ask for a retrain every night.
    """
    open_alerts = _store(settings).persistent(spec.name, [day])
    open_alerts = open_alerts[pd.to_datetime(open_alerts["last_dt"]).dt.date == day]
    if open_alerts.empty:
        return []
    over = set(over_budget(settings, spec, day)[ENTITY])
    due = (open_alerts["nights"] >= settings.persistent_adapt_days) | open_alerts[ENTITY].isin(over)
    if judged_until is not None:
        judged = pd.to_datetime(open_alerts["dt"]).dt.date <= judged_until
        due &= ~judged | ((day - judged_until).days >= settings.persistent_adapt_days)
    queued = (open_alerts["new_normal"].eq(True) | due) & (open_alerts["label"] != True)  # noqa: E712
    return sorted(set(open_alerts.loc[queued, ENTITY]))  # (a confirmed anomaly is never adapted to)


def decide(
    settings: Settings, spec: DatasetSpec, alerts: pd.DataFrame, history: pd.DataFrame, columns: list[str]
) -> dict[int, str]:
    """``adapt`` or ``exclude`` for each persistent alert (by id), the module's rule; ``history``
    holds the alerted entities' rows of the training window (``entity_id``, ``ts``, ``columns``)."""
    rule = LevelShiftRule.of(settings)
    out = {}
    for alert in alerts.itertuples():
        if alert.new_normal:  # normalised to bool by adapt_window
            out[alert.id] = "adapt"
            continue
        capped = bool(getattr(alert, "capped", False))  # over its budget: that is why it was capped
        over = set() if capped else set(over_budget(settings, spec, pd.Timestamp(alert.last_dt).date())[ENTITY])
        due = capped or alert.nights >= settings.persistent_adapt_days or alert.entity_id in over
        mine = history[history[ENTITY] == alert.entity_id].sort_values(TS)
        past = mine[mine[TS] < alert.start_ts]
        during = mine[(mine[TS] >= alert.start_ts) & (mine[TS] <= alert.end_ts)]
        out[alert.id] = "adapt" if due and is_level_shift(past, during, columns, rule) else "exclude"
    return out


def capped_rows(spark, settings: Settings, spec: DatasetSpec, days: list[dt.date]):
    """The rows of capped nights among ``days`` that the fitted thresholds flagged
    (``score > threshold / alarm_cap``): a Spark DataFrame of ``entity_id``, ``ts``, ``dt``; None
    when no scored night of ``days`` records the cap."""
    frames = []
    for day, night in Lake(settings.lake_root).read_nights(spark, "scores", spec.name, days, "alarm_cap"):
        flagged = night.filter((F.col("alarm_cap") > 1) & (F.col("score") * F.col("alarm_cap") > F.col("threshold")))
        frames.append(flagged.select(ENTITY, TS, F.lit(day).alias("dt")))
    return reduce(lambda a, b: a.unionByName(b), frames) if frames else None


def capped_deviations(rows) -> pd.DataFrame:
    """The deviations of :func:`capped_rows`, shaped as persistent alerts (negative ids,
    ``capped`` true) so that :func:`decide` judges them: one per entity and run of consecutive
    capped nights, from its first flagged row to its last."""
    columns = ["id", ENTITY, "dt", "last_dt", "start_ts", "end_ts", "nights", "label", "new_normal", "capped"]
    if rows is None:
        return pd.DataFrame(columns=columns)
    frame = rows.groupBy(ENTITY, "dt").agg(F.min(TS).alias("start_ts"), F.max(TS).alias("end_ts")).toPandas()
    if frame.empty:
        return pd.DataFrame(columns=columns)
    frame = frame.sort_values([ENTITY, "dt"]).reset_index(drop=True)
    gap = pd.to_datetime(frame["dt"]).diff() != pd.Timedelta(days=1)
    frame["run"] = (frame[ENTITY].ne(frame[ENTITY].shift()) | gap).cumsum()
    runs = frame.groupby("run").agg(
        entity_id=(ENTITY, "first"), dt=("dt", "min"), last_dt=("dt", "max"), start_ts=("start_ts", "min"),
        end_ts=("end_ts", "max"), nights=("dt", "size"),
    ).reset_index(drop=True)
    runs["start_ts"] = pd.to_datetime(runs["start_ts"], utc=True)
    runs["end_ts"] = pd.to_datetime(runs["end_ts"], utc=True)
    return runs.assign(id=-(runs.index + 1), label=None, new_normal=False, capped=True)[columns]


def with_capped(alerts: pd.DataFrame, capped: pd.DataFrame) -> pd.DataFrame:
    """``alerts`` and the capped deviations that no alert of the same entity overlaps (an alert
    the cap let through whole is judged as itself)."""
    alerts = alerts.assign(capped=False)
    keep = [
        not any((a.entity_id == c.entity_id) and a.start_ts <= c.end_ts and c.start_ts <= a.end_ts
                for a in alerts.itertuples())
        for c in capped.itertuples()
    ]
    extra = capped[keep] if len(capped) else capped
    return alerts if extra.empty else pd.concat([alerts, extra], ignore_index=True)


def adapt_window(settings: Settings, spec: DatasetSpec, view, features_df, days: list[dt.date], min_rows: int):
    """The training rows after the persistent alerts of ``days`` are decided; and the decisions.

    An adapted entity trains from the start of its deviation when at least ``min_rows`` rows lie
    after it (else on the whole window); an excluded alert's rows are dropped (of a capped
    deviation, the rows its fitted thresholds flagged: a capped night's first to last flag may
    span a whole night of an entity that was only noisy). Without feedback
    (``settings.train_feedback`` false) nothing changes.
    """
    if not settings.train_feedback:
        return features_df, {}
    try:
        alerts = _store(settings).persistent(spec.name, days)
    except FleetWatchError as exc:
        raise FeedbackUnavailable(
            f"the persistent alerts of {spec.name} could not be read for training ({exc}); fix the alerts database, "
            "or train without labels with `fleetwatch train --no-feedback`"
        ) from None
    alerts = alerts[alerts["label"] != True].assign(new_normal=lambda a: a["new_normal"].eq(True))  # noqa: E712
    flagged = capped_rows(features_df.sparkSession, settings, spec, days)
    alerts = with_capped(alerts, capped_deviations(flagged))
    if alerts.empty:  # (alerts labelled true, confirmed anomalies, are excluded already)
        return features_df, {}
    columns = [c for c in view.feature_columns if view.metric_of(c) == c]
    entities = sorted(set(alerts[ENTITY]))
    frame = canonical(features_df, spec)
    history = frame.filter(F.col(ENTITY).isin(entities)).select(ENTITY, TS, *columns).toPandas()
    history[TS] = pd.to_datetime(history[TS], utc=True)
    decisions = decide(settings, spec, alerts, history, columns)
    ent, ts = F.col(spec.entity_column), F.col(spec.timestamp_column)
    for alert in alerts.itertuples():
        if decisions[alert.id] == "exclude" and alert.capped:  # only the rows its fitted thresholds flagged
            drop = flagged.filter((F.col(ENTITY) == alert.entity_id) & F.col("dt").between(alert.dt, alert.last_dt))
            drop = drop.select(F.col(ENTITY).alias(spec.entity_column), F.col(TS).alias(spec.timestamp_column))
            features_df = features_df.join(drop, [spec.entity_column, spec.timestamp_column], "left_anti")
            continue
        if decisions[alert.id] == "exclude":
            features_df = features_df.filter(~((ent == alert.entity_id) & ts.between(alert.start_ts, alert.end_ts)))
            continue
        after = int(((history[ENTITY] == alert.entity_id) & (history[TS] >= alert.start_ts)).sum())
        if after >= min_rows:
            features_df = features_df.filter((ent != alert.entity_id) | (ts >= alert.start_ts))
    return features_df, {int(k): v for k, v in decisions.items()}
