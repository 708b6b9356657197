"""Honest evaluation on SMD: the platform's own nightly and retrain paths against the labels.

``evaluate_smd`` ingests the machines and their labels, then hands them to the labelled
backtest (``backtest.run_backtest``), which runs exactly the functions the DAG tasks call:
``validate_partition`` and ``build_features`` for every day, ``train_models`` on the days that
hold only training rows, and ``score_partition`` plus ``publish_alerts`` for every day that
holds test rows. Only test rows are evaluated, against SMD's own point labels (``test_label``)
and interpretation events (the causes, for HitRate). The same test rows are scored by two
reference detectors (PCA reconstruction error and a plain IsolationForest on the raw metrics,
fitted on each machine's training part), so the report says whether the platform beats them
on this data, not only how it compares with published numbers.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pandas as pd

from fleetwatch.app.backtest import run_backtest
from fleetwatch.core.datasets.smd import ingest_smd, smd_labels


def evaluate_smd(
    settings, data_dir: Path, *, machines: list[str] | None, out: Path, start: dt.date, console=None, dataset: str = "smd",
    cross_validate: bool = False, adapt: bool = False,
) -> dict:
    """Ingest SMD, run the platform's nightly and retrain paths, and report quality against labels.

    Writes the JSON report to ``out``, a Markdown page and PNG plots beside it
    (``<out stem>.md``, ``<out stem>_*.png``) and logs all of it to MLflow as an evaluation run
    of the dataset's experiment. With ``cross_validate`` the settings after scoring are also chosen
    leaving one machine out, and with ``adapt`` the test nights retrain when an entity is to adapt
    to a new normal (``backtest.run_backtest``). Returns the report.
    """
    started = time.monotonic()
    say = console.print if console is not None else (lambda *a, **k: None)
    summary = ingest_smd(settings, data_dir, machines=machines, start=start, dataset=dataset)
    say(f"ingested {len(summary['machines'])} machines, {summary['partitions']} daily partitions")
    days = _days(summary)
    train_days = days[: summary["train_days"]]
    first_test = min(pd.Timestamp(m["first_test_ts"]) for m in summary["per_machine"].values())
    test_days = [d for d in days if d >= first_test.date()]
    points, events = smd_labels(settings, dataset)
    return run_backtest(
        settings, dataset, days=days, train_days=train_days, test_days=test_days, points=points, events=events,
        first_test={m: meta["first_test_ts"] for m, meta in summary["per_machine"].items()},
        entities=summary["machines"], out=out, say=say, started=started, cross_validate=cross_validate, adapt=adapt,
        header={"machines_evaluated": summary["machines"], "data_dir": str(data_dir), "start": summary["start"]},
    )


def _days(summary: dict) -> list[dt.date]:
    first, last = dt.date.fromisoformat(summary["first_day"]), dt.date.fromisoformat(summary["last_day"])
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
