"""``fleetwatch dataset init``, ``ingest files`` and ``evaluate NAME --labels``: a team's own data."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fleetwatch.app.cli_common import console
from fleetwatch.app.cli_common import fail as _fail
from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.lake import parse_day
from fleetwatch.core.settings import get_settings

dataset_app = typer.Typer(help="Describe a team's own data as a dataset spec.", no_args_is_help=True)


@dataset_app.command("init")
def dataset_init_cmd(
    name: str = typer.Argument(..., help="Dataset name (the spec becomes <specs_dir>/<name>.toml)."),
    source: str = typer.Option(..., "--from", help="CSV or Parquet file, folder of them, or a dt= lake folder (s3a:// too)."),
    entity_column: str | None = typer.Option(None, "--entity-column", help="The column naming each entity."),
    timestamp_column: str | None = typer.Option(None, "--timestamp-column", help="The column of timestamps."),
    sampling_seconds: int | None = typer.Option(None, "--sampling-seconds", min=1, help="Seconds between an entity's rows."),
    metrics: str | None = typer.Option(None, "--metrics", help="Comma-separated metric columns (default: every numeric one)."),
    sample_rows: int = typer.Option(200_000, "--sample-rows", min=100, help="Rows read to infer the spec."),
    force: bool = typer.Option(False, "--force", help="Replace an existing spec."),
) -> None:
    """Infer a dataset spec from a sample of your data; each value's evidence is a comment in the TOML."""
    from fleetwatch.core.datasets.dataset_init import init_dataset  # lazy: PySpark and pandas

    try:
        summary = init_dataset(
            get_settings(), name, [source], entity_column=entity_column, timestamp_column=timestamp_column,
            sampling_seconds=sampling_seconds, metrics=[m.strip() for m in metrics.split(",")] if metrics else None,
            sample_rows=sample_rows, force=force,
        )
    except FleetWatchError as exc:
        _fail(exc)
    console.print(summary, highlight=False)
    console.print(f"review {summary['spec']}: each inferred value's evidence is the comment beside it", highlight=False)


def ingest_files_cmd(
    name: str = typer.Argument(..., help="Dataset name (its spec must exist: `fleetwatch dataset init`)."),
    paths: list[str] = typer.Argument(..., help="CSV or Parquet files or folders (s3a:// too)."),
) -> None:
    """Write CSV or Parquet files into the dataset's daily raw partitions (idempotent; a dt= lake is read in place)."""
    from fleetwatch.core.datasets.files import ingest_files  # lazy: PySpark

    try:
        summary = ingest_files(get_settings(), name, paths)
    except FleetWatchError as exc:
        _fail(exc)
    console.print(summary, highlight=False)


def evaluate_dataset_cmd(
    name: str = typer.Argument(..., help="Dataset name."),
    labels: Path = typer.Option(..., "--labels", help="CSV or Parquet of entity_id, start, end[, metrics]."),
    train_days: int | None = typer.Option(None, "--train-days", min=1, help="Train on the first N days."),
    train_until: str | None = typer.Option(None, "--train-until", help="Train on the days up to DATE (YYYY-MM-DD)."),
    out: Path | None = typer.Option(None, "--out", help="Where to write the JSON report (default <name>_report.json)."),
    cross_validate: bool = typer.Option(
        False, "--cross-validate", help="Also choose the settings after scoring leaving one entity out."
    ),
    adapt: bool = typer.Option(
        False, "--adapt", help="Retrain on test nights whose persistent alerts ask an entity to adapt, as the DAGs do."
    ),
) -> None:
    """Backtest a dataset: run the nightly and retrain paths over its history and compare with labels."""
    from fleetwatch.app.labelled_evaluation import evaluate_labelled  # lazy: PySpark, pandas and scikit-learn

    try:
        report = evaluate_labelled(
            get_settings(), name, labels, train_days=train_days,
            train_until=parse_day(train_until) if train_until else None,
            out=out or Path(f"{name}_report.json"), console=console, cross_validate=cross_validate, adapt=adapt,
        )
    except FleetWatchError as exc:
        _fail(exc)
    console.print(json.dumps({k: v for k, v in report.items() if k.endswith("_mean")}, indent=2))
