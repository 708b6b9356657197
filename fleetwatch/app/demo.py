"""``make demo``: a synthetic fleet run night by night through the real Airflow DAGs."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pandas as pd
from rich.console import Console

from fleetwatch.app.alert_quality import match_alerts
from fleetwatch.app.orchestration import last_tasks, prepare_airflow, run_nightly, run_retrain
from fleetwatch.app.run_output import console_beside, output_to, task_lines
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
    """Generate a fleet, run its nights and a retrain through the DAGs in-process, print the result.

    Airflow's and Spark's output goes to ``<home>/logs/demo-<dataset>.log``; the console gets one
    line per task with its duration, a live line while a DAG runs, and the result.
    """
    t0 = time.time()
    out = console_beside(console)
    log = Path(settings.home) / "logs" / f"demo-{dataset}.log"
    out.rule(f"FleetWatch demo: {entities} entities x {days} days ({dataset})")
    out.print(f"Airflow and Spark logs: {log}", highlight=False, soft_wrap=True)
    with output_to(log):
        gen = generate_fleet(settings, dataset, entities=entities, days=days, start=START, seed=settings.seed)
        injected = ", ".join(f"{n} {kind}" for kind, n in gen["anomalies"].items())
        out.print(f"generated: {gen['rows']} rows, {gen['first_day']} .. {gen['last_day']}; injected anomalies: {injected}",
                  highlight=False, soft_wrap=True)
        all_days = [START + dt.timedelta(days=i) for i in range(days)]
        n_hist = history_days(settings, days)
        # the first retrain sees exactly the history nights; jobs read these settings from the environment
        settings = settings.model_copy(update={"training_window_days": n_hist,
                                               "min_history_days": min(settings.min_history_days, n_hist)})
        prepare_airflow(settings)
        history, scored = all_days[:n_hist], all_days[n_hist:]
        states: dict[dt.date, str] = {}
        for day in history:
            states[day] = _run(out, f"nightly {day} (history)", lambda d=day: run_nightly(settings, dataset, d))
        retrain_state = _run(out, f"retrain, window ending {history[-1]}", lambda: run_retrain(settings, dataset, history[-1]))
        if retrain_state != "success":
            raise FleetWatchError(f"the retrain DAG for {dataset} ended {retrain_state}: see {log}")
        for day in scored:
            states[day] = _run(out, f"nightly {day} (scoring)", lambda d=day: run_nightly(settings, dataset, d))
        result = _result(settings, dataset, states, scored)
    _print_result(out, settings, dataset, result, time.time() - t0)
    return {**result, "states": states, "seconds": time.time() - t0, "log": log}


def _run(out: Console, what: str, run) -> str:
    """Run one DAG with a live line (elapsed time) on the console, then one line per task."""
    t = time.time()
    with out.status(f"{what}: running") as status:
        ticker = _Ticker(status, what, t)
        ticker.start()
        try:
            state = run()
        finally:
            ticker.stop()
    out.print(f"{what}: {state} in {time.time() - t:.0f} s", highlight=False, soft_wrap=True)
    for line in task_lines(last_tasks()):
        out.print(line, highlight=False, soft_wrap=True)
    return state


class _Ticker(threading.Thread):
    """Refreshes the live line with the seconds a run has taken."""

    def __init__(self, status, what: str, t0: float):
        super().__init__(daemon=True)
        self.status, self.what, self.t0, self.done = status, what, t0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            self.status.update(f"{self.what}: running, {time.time() - self.t0:.0f} s")

    def stop(self) -> None:
        self.done.set()
        self.join()


def _result(settings: Settings, dataset: str, states: dict, scored: list[dt.date]) -> dict:
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
    return {"quarantined": quarantined, "alerts": len(alerts), "quality": quality, "versions": versions, "scored": scored,
            "ok": sum(1 for s in states.values() if s == "success"), "nights": len(states)}


def _print_result(out: Console, settings: Settings, dataset: str, result: dict, elapsed: float) -> None:
    """The result block; long lines are not wrapped, so commands copy-paste whole."""
    quality, quarantined = result["quality"], result["quarantined"]

    def line(text: str) -> None:
        out.print(text, highlight=False, markup=False, soft_wrap=True)

    out.rule("Result")
    line(f"partitions processed: {result['ok']} of {result['nights']} nights succeeded; "
         f"quarantined: {len(quarantined)} {[str(d) for d in quarantined]}")
    for row in result["versions"].itertuples(index=False):
        line(f"registered model: {row.model} version {row.version} aliases [{row.aliases}] window {row.window}")
    line(f"alerts written: {result['alerts']} over {len(result['scored'])} scored nights")
    line(
        f"precision {quality['precision']:.2f} ({quality['true_alerts']}/{quality['alerts']} alerts on injected anomalies; "
        f"{quality['alerts_on_drift']} on the drift event), recall {quality['recall']:.2f} "
        f"({quality['detected_anomalies']}/{quality['anomalies']} injected anomalies caught; by kind "
        + ", ".join(f"{k} {v:.2f}" for k, v in quality["recall_by_kind"].items()) + ")"
    )
    line(f"wall time: {elapsed:.0f} s")
    out.rule("Look around")
    line(f"MLflow UI:    .venv/bin/mlflow ui --backend-store-uri {redact_url(settings.mlflow_tracking_uri)}  (then open http://127.0.0.1:5000)")
    line(
        "alerts (SQL): .venv/bin/fleetwatch sql \"select entity_id, start_ts, end_ts, severity, top_metrics from alerts "
        f"where dataset = '{dataset}' order by peak_score desc limit 10\""
    )
    line(f"or:           sqlite3 {settings.alerts_db_url.removeprefix('sqlite:///')} 'select count(*) from alerts'")
    line("Airflow UI:   .venv/bin/fleetwatch airflow up  (the same DAGs and these runs, under a real scheduler)")
