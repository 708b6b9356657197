"""Shared argument parsing and exit codes for the spark-submit entry points, and the same steps
run in-process against a Spark Connect server."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import sys
from collections.abc import Callable

from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.lake import parse_day
from fleetwatch.core.settings import Settings, get_settings
from fleetwatch.core.spark import application_id, connect_session, get_spark
from fleetwatch.core.specs import require_dataset


def run_job(name: str, step: Callable, argv: list[str] | None = None) -> int:
    """Parse ``--dataset`` and ``--date``, build the session, run ``step``; 0 ok, 2 user error."""
    parser = argparse.ArgumentParser(prog=name)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--date", required=True, help="partition date YYYY-MM-DD")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
        require_dataset(settings.specs_dir, args.dataset)
        day = parse_day(args.date)
        spark = get_spark(settings, app_name=f"fleetwatch-{name}-{args.dataset}-{day}")
        result = step(spark, settings, args.dataset, day)
        print(f"{name} {args.dataset} {day}: {result}")
        return 0
    except FleetWatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run_connected(name: str, settings: Settings, dataset: str, date: str | dt.date) -> tuple[str, str]:
    """Run job ``name``'s step in this process on the Spark Connect server of ``settings``.

    Returns ``(the step's one-line result, the server's Spark application id)``. Raises
    ``FleetWatchError`` on bad input (as the spark-submit job exits 2) and
    ``ConnectServerUnavailable`` when the server does not answer.
    """
    step = importlib.import_module(f"jobs.{name}").STEP
    require_dataset(settings.specs_dir, dataset)
    day = parse_day(date)
    with connect_session(settings, app_name=f"fleetwatch-{name}-{dataset}-{day}") as spark:
        app = application_id(spark)
        result = step(spark, settings, dataset, day)
    return f"{name} {dataset} {day}: {result}", app
