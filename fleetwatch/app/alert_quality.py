"""Alerts against known anomalies: event-level precision and recall."""

from __future__ import annotations

import pandas as pd

POINT_KINDS = ("spike", "contextual", "collective")


def match_alerts(alerts: pd.DataFrame, labels: pd.DataFrame, *, tolerance_minutes: int = 5) -> dict:
    """Precision: share of alerts overlapping a labelled anomaly of their entity (within the
    tolerance); recall: share of labelled anomalies that at least one alert overlaps.

    ``alerts`` has entity_id, start_ts, end_ts; ``labels`` has entity_id, kind, start_ts, end_ts
    and only anomalies inside the scored period should be passed. Lasting drift events are not
    point anomalies: alerts on them are counted apart (``alerts_on_drift``), not as hits.
    """
    tol = pd.Timedelta(minutes=tolerance_minutes)
    events = labels[labels["kind"].isin(POINT_KINDS)].reset_index(drop=True)
    drift = labels[labels["kind"] == "drift"]
    hit_events: set[int] = set()
    true_alerts = drift_alerts = 0
    for a in alerts.itertuples(index=False):
        overlaps = (events["start_ts"] - tol <= a.end_ts) & (events["end_ts"] + tol >= a.start_ts)
        ev = events[(events["entity_id"] == a.entity_id) & overlaps]
        if len(ev):
            true_alerts += 1
            hit_events.update(ev.index.tolist())
        elif ((drift["entity_id"] == a.entity_id) & (drift["start_ts"] <= a.end_ts)).any():
            drift_alerts += 1
    n_alerts, n_events = len(alerts), len(events)
    return {
        "alerts": n_alerts,
        "anomalies": n_events,
        "true_alerts": true_alerts,
        "alerts_on_drift": drift_alerts,
        "detected_anomalies": len(hit_events),
        "precision": true_alerts / n_alerts if n_alerts else 0.0,
        "recall": len(hit_events) / n_events if n_events else 0.0,
        "recall_by_kind": {
            k: (len([i for i in hit_events if events.at[i, "kind"] == k]) / max(int((events["kind"] == k).sum()), 1))
            for k in POINT_KINDS
        },
    }
