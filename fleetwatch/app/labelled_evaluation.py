"""A backtest of any dataset against a labels file: ``fleetwatch evaluate NAME --labels FILE``.

The dataset's raw partitions are split by day into a training part (``--train-days N``, or the
days up to ``--train-until DATE``, or by default the days before the first labelled event) and a
test part; the platform then runs as the DAGs do (``backtest.run_platform``) and every scored
test row is labelled by the events that cover it. The report is the one ``evaluate smd`` writes.
A partition that fails validation is quarantined and left out (and listed in the report), so one
bad day does not stop a backtest.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pandas as pd

from fleetwatch.app.backtest import run_backtest
from fleetwatch.core.datasets.labels import read_labels
from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.lake import Lake, local_path
from fleetwatch.core.raw_location import raw_partition, raw_root
from fleetwatch.core.specs import load_spec


def split_days(
    days: list[dt.date], events: pd.DataFrame, *, train_days: int | None = None, train_until: dt.date | None = None
) -> tuple[list[dt.date], list[dt.date]]:
    """Training and test days: the first ``train_days``, the days up to ``train_until``, or else
    the days before the first labelled event's day."""
    if train_days is not None and train_until is not None:
        raise FleetWatchError("pass --train-days or --train-until, not both")
    if train_days is not None:
        train = days[:train_days]
    elif train_until is not None:
        train = [d for d in days if d <= train_until]
    else:
        first = events["start_ts"].min().date() if len(events) else None
        if first is None:
            raise FleetWatchError("the labels file holds no event: pass --train-days N or --train-until DATE")
        train = [d for d in days if d < first]
        if not train:
            raise FleetWatchError(
                f"the first labelled event is on {first}, the first day of data: pass --train-days N or --train-until DATE"
            )
    test = [d for d in days if d > train[-1]] if train else []
    if not train:
        raise FleetWatchError(f"no day to train on (data from {days[0]} to {days[-1]}): pass a later --train-until")
    if not test:
        raise FleetWatchError(f"no day left to test on after {train[-1]} (data ends {days[-1]}): train on fewer days")
    return train, test


def evaluate_labelled(
    settings, dataset: str, labels: Path, *, train_days: int | None = None, train_until: dt.date | None = None,
    out: Path, console=None, cross_validate: bool = False, adapt: bool = False,
) -> dict:
    """Backtest ``dataset`` against the events of ``labels``; writes and returns the report (with
    ``cross_validate``, also the settings after scoring chosen leaving one entity out; with
    ``adapt``, test nights retrain when an entity is to adapt to a new normal)."""
    started = time.monotonic()
    say = console.print if console is not None else (lambda *a, **k: None)
    spec = load_spec(settings.specs_dir, dataset)
    lake = Lake(settings.lake_root)
    days = lake.days(raw_root(lake, spec))
    if not days:
        raise FleetWatchError(
            f"dataset {dataset} has no raw partitions under {raw_root(lake, spec)}: run `fleetwatch ingest files` first"
        )
    entities = set()
    for day in days:
        frame = pd.read_parquet(local_path(raw_partition(lake, spec, day)), columns=[spec.entity_column])
        entities |= set(frame[spec.entity_column].astype(str))
    events = read_labels(labels, spec, entities)
    train, test = split_days(days, events, train_days=train_days, train_until=train_until)
    say(f"{dataset}: training on {train[0]}..{train[-1]}, testing {test[0]}..{test[-1]}, {len(events)} labelled events")
    first_test = pd.Timestamp(test[0], tz="UTC").isoformat()
    return run_backtest(
        settings, dataset, days=days, train_days=train, test_days=test, points=None, events=events,
        first_test=first_test, entities=None, out=out, say=say, started=started,
        header={"labels": str(labels), "labelled_events": len(events)},
        title=f"FleetWatch on {dataset}: backtest against {Path(labels).name}",
        rows_per_day=spec.rows_per_day, skip_invalid=True, cross_validate=cross_validate, adapt=adapt,
    )
