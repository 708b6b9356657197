"""Shared argument parsing and exit codes for the spark-submit entry points."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.lake import parse_day
from fleetwatch.core.settings import get_settings
from fleetwatch.core.spark import get_spark
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
