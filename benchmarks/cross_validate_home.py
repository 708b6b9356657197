"""The report of an SMD home an evaluation filled, made again with this code, without training or
scoring again; with the leave-one-machine-out choice of the settings after scoring.

``fleetwatch evaluate smd --cross-validate`` does all of it in one run. This takes what an earlier
``fleetwatch evaluate smd`` left (scores and incident partitions, labels, champion bundle, its
report): with ``--republish`` it first publishes the test nights again, in order, with this code's
alerts store (how alerts are carried across nights), then makes the report and its
``cross_validation`` section as ``backtest.run_backtest`` does, and writes it beside the first one
(``<report stem>_cv.json`` and ``.md``).

    FLEETWATCH_HOME=/tmp/ev/home .venv/bin/python -m benchmarks.cross_validate_home --report /tmp/ev/report.json --republish
    FLEETWATCH_HOME=/tmp/ev-copy/home .venv/bin/python -m benchmarks.cross_validate_home --report /tmp/ev-copy/report.json --adapt
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import sqlalchemy as sa

from fleetwatch.app.backtest import run_backtest, run_nights
from fleetwatch.core.datasets.smd import smd_labels
from fleetwatch.core.publishing import publish_alerts
from fleetwatch.core.settings import get_settings
from fleetwatch.core.spark import get_spark
from fleetwatch.core.specs import load_spec
from models import registry


def _days(first: str, last: str) -> list[dt.date]:
    a, b = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    return [a + dt.timedelta(days=i) for i in range((b - a).days + 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=Path, required=True, help="The JSON report of the evaluated home.")
    parser.add_argument("--dataset", default="smd")
    parser.add_argument("--republish", action="store_true", help="publish the test nights again with this code first")
    parser.add_argument("--adapt", action="store_true", help="score the test nights again from version 1, adapting")
    args = parser.parse_args()
    started = time.monotonic()
    settings = get_settings()
    report = json.loads(args.report.read_text())
    quarantined = {dt.date.fromisoformat(d) for d in report.get("quarantined_days", [])}
    train_days = [d for d in _days(*report["train_days"]) if d not in quarantined]
    test_days = [d for d in _days(*report["test_days"]) if d not in quarantined]
    days = sorted({*_days(report["train_days"][0], report["test_days"][1])} - quarantined)
    settings = settings.model_copy(update={"training_window_days": len(train_days)})
    adaptation = report.get("adaptation", [])
    if args.adapt:  # from the state after training: version 1 champion, no alert published yet
        registry.promote(settings, args.dataset, "1")
        engine = sa.create_engine(settings.alerts_db_url)
        with engine.begin() as conn:
            for table in ("alert_nights", "alerts"):
                conn.execute(sa.text(f"DELETE FROM {table} WHERE dataset = :d"), {"d": args.dataset})
        engine.dispose()
        spark = get_spark(settings, "fleetwatch-evaluate")
        adaptation = run_nights(spark, settings, args.dataset, test_days, print, adapt=True)
        print(f"scored {len(test_days)} test nights again, {len(adaptation)} retrains")
    elif args.republish:
        for day in test_days:
            publish_alerts(settings, args.dataset, day)
        print(f"published {len(test_days)} test nights again")
    points, events = smd_labels(settings, args.dataset)
    machines = list(report["machines"])
    first_test = {m: points.loc[points["entity_id"] == m, "ts"].min() for m in machines}
    run = {key: report[key] for key in ("timings_s", "model", "settings")} | {
        "quarantined": sorted(quarantined), "adaptation": adaptation
    }
    header = {k: report[k] for k in ("machines_evaluated", "data_dir", "start") if k in report}
    out = args.report.with_name(args.report.stem + "_cv.json")
    new = run_backtest(
        settings, args.dataset, days=days, train_days=train_days, test_days=test_days, points=points, events=events,
        first_test=first_test, entities=machines, out=out, say=print, started=started, header=header,
        rows_per_day=load_spec(settings.specs_dir, args.dataset).rows_per_day, cross_validate=True, adapt=args.adapt, run=run,
    )
    cv = new["cross_validation"]
    print(json.dumps({"in_sample": cv["in_sample"], "out_of_fold": cv["out_of_fold"]}, indent=2))


if __name__ == "__main__":
    main()
