"""``make demo``: a synthetic fleet run night by night through the real Airflow DAGs."""

from __future__ import annotations

import datetime as dt
import time

import pandas as pd
from rich.console import Console
from rich.progress import Progress

from fleetwatch.app.alert_quality import match_alerts
from fleetwatch.app.orchestration import prepare_airflow, run_nightly, run_retrain
from fleetwatch.core.alerts_store import AlertsStore
from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.lake import Lake
from fleetwatch.core.secrets import redact_url
from fleetwatch.core.settings import Settings
from fleetwatch.core.specs import load_spec
from fleetwatch.core.synthetic import generate_fleet, load_labels
from models import registry

START = dt.date(2026, 1, 1)


def history_days(settings: Settings, days: int) -> int:
    """Nights run before the first retrain: up to a training window, leaving a third to score."""
    return max(2, min(settings.training_window_days, days - max(1, days // 3)))


def run_demo(settings: Settings, *, dataset: str, entities: int, days: int, console: Console) -> dict:
    t0 = time.time()
    console.rule(f"FleetWatch demo: {entities} entities x {days} days ({dataset})")
    gen = generate_fleet(settings, dataset, entities=entities, days=days, start=START, seed=settings.seed)
    console.print(f"generated: {gen}", highlight=False)
    all_days = [START + dt.timedelta(days=i) for i in range(days)]
    n_hist = history_days(settings, days)
    # the first retrain sees exactly the history nights; jobs read these settings from the environment
    settings = settings.model_copy(update={"training_window_days": n_hist,
                                           "min_history_days": min(settings.min_history_days, n_hist)})
    prepare_airflow(settings)
    history, scored = all_days[:n_hist], all_days[n_hist:]
    states: dict[dt.date, str] = {}
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task("nightly DAG (history)", total=len(all_days) + 1)
        for day in history:
            states[day] = run_nightly(settings, dataset, day)
            progress.advance(task)
        progress.update(task, description="retrain DAG")
        retrain_state = run_retrain(settings, dataset, history[-1])
        progress.advance(task)
        if retrain_state != "success":
            raise FleetWatchError(f"the retrain DAG for {dataset} ended {retrain_state}")
        progress.update(task, description="nightly DAG (scoring)")
        for day in scored:
            states[day] = run_nightly(settings, dataset, day)
            progress.advance(task)

    lake = Lake(settings.lake_root)
    quarantined = lake.days(lake.zone("quarantine", dataset))
    store = AlertsStore(settings.alerts_db_url)
    alerts = store.frame(dataset=dataset)
    labels = load_labels(settings, dataset)
    period_start = pd.Timestamp(scored[0], tz="UTC")
    in_period = labels[labels["end_ts"] >= period_start]
    gap = load_spec(settings.specs_dir, dataset).incident_gap(settings.incident_gap_minutes)
    quality = match_alerts(alerts, in_period, tolerance_minutes=gap)
    versions = registry.list_versions(settings)
    versions = versions[versions["model"] == registry.model_name(dataset)]
    elapsed = time.time() - t0

    ok = sum(1 for s in states.values() if s == "success")
    console.rule("Result")
    console.print(
        f"partitions processed: {ok} of {len(states)} nights succeeded; "
        f"quarantined: {len(quarantined)} {[str(d) for d in quarantined]}"
    )
    for row in versions.itertuples(index=False):
        console.print(
            f"registered model: {row.model} version {row.version} aliases [{row.aliases}] window {row.window}", markup=False
        )
    console.print(f"alerts written: {len(alerts)} over {len(scored)} scored nights")
    console.print(
        f"precision {quality['precision']:.2f} ({quality['true_alerts']}/{quality['alerts']} alerts on injected anomalies; "
        f"{quality['alerts_on_drift']} on the drift event), recall {quality['recall']:.2f} "
        f"({quality['detected_anomalies']}/{quality['anomalies']} injected anomalies caught; by kind "
        + ", ".join(f"{k} {v:.2f}" for k, v in quality["recall_by_kind"].items()) + ")",
        highlight=False,
    )
    console.print(f"wall time: {elapsed:.0f} s")
    console.rule("Look around")
    console.print(
        f"MLflow UI:    .venv/bin/mlflow ui --backend-store-uri {redact_url(settings.mlflow_tracking_uri)}  (then open http://127.0.0.1:5000)",
        highlight=False,
    )
    console.print(
        "alerts (SQL): .venv/bin/fleetwatch sql \"select entity_id, start_ts, end_ts, severity, top_metrics from alerts "
        f"where dataset = '{dataset}' order by peak_score desc limit 10\"",
        highlight=False,
    )
    console.print(
        f"or:           sqlite3 {settings.alerts_db_url.removeprefix('sqlite:///')} 'select count(*) from alerts'",
        highlight=False,
    )
    return {"states": states, "quarantined": quarantined, "alerts": len(alerts), "quality": quality, "seconds": elapsed}
