"""Detection quality measures: point-wise score quality, alert quality and explanation quality.

Point-wise measures compare per-row scores with per-row labels, without point adjustment (which
inflates F1 until random scores look good). Alert measures compare incidents (time spans) with
labelled segments; HitRate@P compares an incident's ranked metrics with an event's true ones.
Scores use scikit-learn's metrics; the rest are small functions over spans.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D arrays of one length, got {y.shape} and {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must all be finite")
    return y, s


def auprc(labels, scores) -> float:
    """Area under the precision-recall curve (average precision); NaN without both classes."""
    y, s = _check(labels, scores)
    if y.min(initial=0) == y.max(initial=0):
        return float("nan")
    return float(average_precision_score(y, s))


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve; NaN without both classes."""
    y, s = _check(labels, scores)
    if y.min(initial=0) == y.max(initial=0):
        return float("nan")
    return float(roc_auc_score(y, s))


def best_f1(labels, scores) -> tuple[float, float]:
    """The best F1 over all thresholds (an oracle: it looks at the labels) and its threshold.

    A point is flagged when its score is at or above the threshold. NaN, NaN without positives.
    """
    y, s = _check(labels, scores)
    if y.sum() == 0:
        return float("nan"), float("nan")
    precision, recall, thresholds = precision_recall_curve(y, s)
    p, r = precision[:-1], recall[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    i = int(np.argmax(f1))
    return float(f1[i]), float(thresholds[i])


def f1_at_threshold(labels, flagged) -> float:
    """F1 of the platform's own flags (what a user gets); 0 when nothing is flagged or labelled."""
    y = np.asarray(labels).astype(int)
    f = np.asarray(flagged).astype(int)
    if y.shape != f.shape:
        raise ValueError(f"labels and flagged differ in shape: {y.shape} vs {f.shape}")
    return float(f1_score(y, f, zero_division=0.0))


def segments(ts: pd.Series, labels) -> pd.DataFrame:
    """Runs of consecutive labelled rows as spans ``start_ts``, ``end_ts`` (inclusive).

    ``ts`` must be in time order; a run is consecutive rows with label 1.
    """
    y = np.asarray(labels).astype(bool)
    ts = pd.Series(ts).reset_index(drop=True)
    if len(ts) != len(y):
        raise ValueError(f"{len(ts)} timestamps but {len(y)} labels")
    padded = np.concatenate([[False], y, [False]]).astype(int)
    starts = np.flatnonzero(np.diff(padded) == 1)
    ends = np.flatnonzero(np.diff(padded) == -1) - 1
    return pd.DataFrame({"start_ts": ts.iloc[starts].to_numpy(), "end_ts": ts.iloc[ends].to_numpy()})


def overlaps(spans: pd.DataFrame, others: pd.DataFrame) -> np.ndarray:
    """Boolean matrix (len(spans), len(others)): span i and other j share a time (inclusive ends)."""
    if len(spans) == 0 or len(others) == 0:
        return np.zeros((len(spans), len(others)), dtype=bool)
    a0 = pd.to_datetime(spans["start_ts"], utc=True).to_numpy()[:, None]
    a1 = pd.to_datetime(spans["end_ts"], utc=True).to_numpy()[:, None]
    b0 = pd.to_datetime(others["start_ts"], utc=True).to_numpy()[None, :]
    b1 = pd.to_datetime(others["end_ts"], utc=True).to_numpy()[None, :]
    return (a0 <= b1) & (b0 <= a1)


def event_recall(events: pd.DataFrame, alerts: pd.DataFrame) -> float:
    """Share of labelled segments that at least one alert overlaps; NaN without segments."""
    if len(events) == 0:
        return float("nan")
    return float(overlaps(events, alerts).any(axis=1).mean())


def false_incidents(alerts: pd.DataFrame, events: pd.DataFrame) -> int:
    """Alerts that overlap no labelled segment."""
    if len(alerts) == 0:
        return 0
    return int((~overlaps(alerts, events).any(axis=1)).sum())


def false_incidents_per_day(alerts: pd.DataFrame, events: pd.DataFrame, days: float) -> float:
    """Alerts overlapping no labelled segment, per day of evaluated data."""
    if days <= 0:
        raise ValueError(f"days must be > 0, got {days}")
    return false_incidents(alerts, events) / days


def alert_precision(alerts: pd.DataFrame, events: pd.DataFrame) -> float:
    """Share of alerts that touch a labelled segment (NaN without alerts)."""
    if len(alerts) == 0:
        return float("nan")
    return float(overlaps(alerts, events).any(axis=1).mean())


def alarm_share_normal(ts: pd.Series, labels, alerts: pd.DataFrame) -> float:
    """Share of the normal (unlabelled) rows that lie inside an alert's span: how much of an
    entity's ordinary time the on-call spends with an alert open (NaN without normal rows)."""
    y = np.asarray(labels).astype(bool)
    if (~y).sum() == 0:
        return float("nan")
    t = pd.to_datetime(pd.Series(ts).reset_index(drop=True), utc=True)
    inside = np.zeros(len(t), dtype=bool)
    for start, end in zip(pd.to_datetime(alerts["start_ts"], utc=True), pd.to_datetime(alerts["end_ts"], utc=True), strict=True):
        inside |= ((t >= start) & (t <= end)).to_numpy()
    return float(inside[~y].mean())


def hitrate(true_metrics: Sequence[str], ranked_metrics: Sequence[str], p: float = 1.5) -> float:
    """HitRate@P: share of the true metrics among the top ``ceil(p * |true|)`` ranked ones."""
    true = set(true_metrics)
    if not true:
        raise ValueError("hitrate needs at least one true metric")
    k = math.ceil(p * len(true))
    return len(true & set(list(ranked_metrics)[:k])) / len(true)


def rank_metrics(contributions: Sequence[Sequence[dict]], weights: Sequence[float] | None = None) -> list[str]:
    """One ranking from several alerts' contributions (``{"metric", "error"}`` lists).

    Each metric's error is averaged over the alerts, weighted by ``weights`` (e.g. the alerts'
    flagged points); a metric missing from an alert's list counts as 0 there. Highest first.
    """
    weights = [1.0] * len(contributions) if weights is None else list(weights)
    total: dict[str, float] = {}
    for items, w in zip(contributions, weights, strict=True):
        for item in items:
            total[item["metric"]] = total.get(item["metric"], 0.0) + w * float(item["error"])
    return [m for m, _ in sorted(total.items(), key=lambda kv: -kv[1])]


def phase_spans(alerts: pd.DataFrame) -> tuple[pd.DataFrame, list[list[dict]]]:
    """The alerts' phases as spans of their own: ``(frame of start_ts, end_ts, n_points, alert,
    their parsed contributions)``, in alert order. An alert without phases (published before
    alerts had them) is one span with its own contributions."""
    spans, ranked = [], []
    for i, alert in enumerate(alerts.itertuples(index=False)):
        text = getattr(alert, "phases", None)
        phases = json.loads(text) if isinstance(text, str) and text else None
        if not phases:
            phases = [{"start_ts": alert.start_ts, "end_ts": alert.end_ts, "n_points": alert.n_points,
                       "contributions": json.loads(alert.contributions)}]
        for ph in phases:
            spans.append({"start_ts": pd.Timestamp(ph["start_ts"]), "end_ts": pd.Timestamp(ph["end_ts"]),
                          "n_points": int(ph["n_points"]), "alert": i})
            ranked.append(ph["contributions"])
    frame = pd.DataFrame(spans, columns=["start_ts", "end_ts", "n_points", "alert"])
    for col in ("start_ts", "end_ts"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame, ranked


def hitrate_at(
    events: pd.DataFrame, alerts: pd.DataFrame, contributions: Sequence[Sequence[dict]], p: float = 1.5
) -> tuple[float, float, int, int]:
    """HitRate@P over labelled events with true metrics.

    ``events`` has ``start_ts``, ``end_ts`` and ``metrics`` (comma-separated true metrics);
    ``alerts`` has ``start_ts``, ``end_ts``, ``n_points`` and ``contributions`` the parsed
    ranking of each alert. Returns ``(with_missed_as_0, over_detected, n_events, n_detected)``:
    the mean over all events (an event no alert overlaps scores 0) and the mean over the events
    that at least one alert overlaps (NaN when none is).
    """
    if len(events) == 0:
        return float("nan"), float("nan"), 0, 0
    hit = overlaps(events, alerts)
    rates, detected = [], []
    for i, ev in enumerate(events.itertuples(index=False)):
        which = np.flatnonzero(hit[i])
        if which.size == 0:
            rates.append(0.0)
            continue
        ranking = rank_metrics([contributions[j] for j in which], alerts["n_points"].to_numpy(dtype=float)[which])
        rates.append(hitrate(str(ev.metrics).split(","), ranking, p))
        detected.append(rates[-1])
    return float(np.mean(rates)), float(np.mean(detected)) if detected else float("nan"), len(rates), len(detected)
