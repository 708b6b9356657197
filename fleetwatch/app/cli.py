"""The ``fleetwatch`` command: thin commands over the same library code the DAGs run.

A command imports the library code that pulls in pandas, SQLAlchemy, PySpark or scikit-learn when
it runs (marked ``# lazy``), so ``fleetwatch --help`` and a mistyped option answer at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.table import Table

from fleetwatch.app.cli_airflow import airflow_app
from fleetwatch.app.cli_alarm import alerts_label_cmd, alerts_nights_cmd
from fleetwatch.app.cli_common import console
from fleetwatch.app.cli_common import fail as _fail
from fleetwatch.app.cli_groups import DatasetOrCommand
from fleetwatch.app.cli_own_data import dataset_app, evaluate_dataset_cmd, ingest_files_cmd
from fleetwatch.app.cli_stack import stack_app
from fleetwatch.app.orchestration import last_failures, last_tasks, run_nightly
from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.lake import parse_day
from fleetwatch.core.quality import validate_partition
from fleetwatch.core.settings import get_settings
from fleetwatch.core.spark import get_spark
from fleetwatch.core.specs import check_dataset_name, list_specs, load_spec, require_dataset

app = typer.Typer(help="FleetWatch: nightly anomaly detection for fleets of entities.", no_args_is_help=True)
alerts_app = typer.Typer(help="Read and label alerts.", no_args_is_help=True)
models_app = typer.Typer(help="Registered model versions and aliases.", no_args_is_help=True)
ingest_app = typer.Typer(help="Turn upstream data sets into dataset specs and lake partitions.", no_args_is_help=True)
evaluate_app = typer.Typer(
    help="Run the platform on a labelled data set and report quality: `evaluate NAME --labels FILE` for any dataset, "
    "`evaluate smd --data DIR` for SMD.",
    no_args_is_help=True,
    cls=DatasetOrCommand,
)
db_app = typer.Typer(help="The alerts database: tables and roles.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.add_typer(ingest_app, name="ingest")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(dataset_app, name="dataset")
app.add_typer(airflow_app, name="airflow")
app.add_typer(stack_app, name="stack")
ingest_app.command("files")(ingest_files_cmd)
evaluate_app.command("dataset", hidden=True)(evaluate_dataset_cmd)
alerts_app.command("nights")(alerts_nights_cmd)
alerts_app.command("label")(alerts_label_cmd)



def _known_dataset(value: str | None) -> str | None:
    """Every ``--dataset`` of an existing dataset passes here: malformed or unknown is one line, exit 2."""
    if value is not None:
        try:
            require_dataset(get_settings().specs_dir, value)
        except FleetWatchError as exc:
            _fail(exc)
    return value


def _new_dataset(value: str) -> str:
    """A ``--dataset`` a command creates: its name must be well formed."""
    try:
        return check_dataset_name(value)
    except FleetWatchError as exc:
        _fail(exc)


def _named_dataset(value: str | None) -> str | None:
    """A ``--dataset`` that may name a dataset whose spec is gone (its alerts remain): well formed."""
    return None if value is None else _new_dataset(value)


DatasetOpt = typer.Option(
    ..., "--dataset", "-d", callback=_known_dataset, help="Dataset name (its spec is <specs_dir>/<name>.toml)."
)
DateOpt = typer.Option(..., "--date", help="Partition date, YYYY-MM-DD.")


def _alerts_store():
    """The alerts store of the current settings."""
    from fleetwatch.core.alerts_store import AlertsStore  # lazy: pandas and SQLAlchemy

    return AlertsStore(get_settings().alerts_db_url)


def _spark_step(step, dataset: str, date: str, **overrides):
    settings = get_settings(**overrides)
    try:
        load_spec(settings.specs_dir, dataset)  # an unknown dataset fails here, before Spark starts
        day = parse_day(date)
        with console.status(f"running on Spark ({settings.spark_master})..."):
            spark = get_spark(settings)
            result = step(spark, settings, dataset, day)
        console.print(f"{dataset} {day}: {result}", highlight=False)
    except FleetWatchError as exc:
        _fail(exc)


@app.command()
def config() -> None:
    """Print every setting (FLEETWATCH_* variables and .env), passwords hidden."""
    try:
        items = get_settings().public_items()
    except Exception as exc:  # pydantic names the bad key
        _fail(exc)
    table = Table("setting", "value", "environment variable")
    for key, value in items.items():
        table.add_row(key, value, f"FLEETWATCH_{key.upper()}")
    console.print(table)


@app.command()
def generate(
    dataset: str = typer.Option("fleet", "--dataset", "-d", callback=_new_dataset, help="Name of the dataset to create."),
    entities: int = typer.Option(20, min=1, help="Number of entities."),
    days: int = typer.Option(21, min=1, help="Number of daily partitions."),
    start: str = typer.Option("2026-01-01", help="First partition date, YYYY-MM-DD."),
    seed: int = typer.Option(7, help="Seed: the same seed gives the same fleet."),
) -> None:
    """Generate a synthetic fleet with labelled anomalies and a drift event into the lake."""
    from fleetwatch.core.synthetic import generate_fleet  # lazy: pandas and SciPy

    try:
        summary = generate_fleet(get_settings(), dataset, entities=entities, days=days, start=parse_day(start), seed=seed)
    except FleetWatchError as exc:
        _fail(exc)
    console.print(summary, highlight=False)


@app.command()
def validate(dataset: str = DatasetOpt, date: str = DateOpt) -> None:
    """Validate one raw partition (Great Expectations); quarantine it if it fails."""
    _spark_step(validate_partition, dataset, date)


@app.command()
def features(dataset: str = DatasetOpt, date: str = DateOpt) -> None:
    """Compute the feature view of one partition (with lookback into the day before)."""
    from feature_store.pipeline import build_features  # lazy: PySpark

    _spark_step(build_features, dataset, date)


@app.command()
def train(
    dataset: str = DatasetOpt,
    date: str = DateOpt,
    feedback: bool = typer.Option(
        True, "--feedback/--no-feedback",
        help="Use users' alert labels (the default; fails when they cannot be read). --no-feedback trains without them.",
    ),
) -> None:
    """Train the model bundle on the window ending at DATE and register it in MLflow."""
    from models.training import train_models  # lazy: pandas

    _spark_step(train_models, dataset, date, **({} if feedback else {"train_feedback": False}))


@app.command()
def score(dataset: str = DatasetOpt, date: str = DateOpt) -> None:
    """Score one feature partition with the champion bundle and group incidents."""
    from models.scoring import score_partition  # lazy: pandas

    _spark_step(score_partition, dataset, date)


@app.command()
def drift(dataset: str = DatasetOpt, date: str = DateOpt) -> None:
    """Check one feature partition for drift against the champion's training window."""
    from models.drift_check import check_drift  # lazy: pandas

    _spark_step(check_drift, dataset, date)


@app.command()
def publish(dataset: str = DatasetOpt, date: str = DateOpt) -> None:
    """Publish one partition's incidents to the alerts table (replaces that partition's rows)."""
    from fleetwatch.core.publishing import publish_alerts  # lazy: pandas and SQLAlchemy

    settings = get_settings()
    try:
        load_spec(settings.specs_dir, dataset)
        n = publish_alerts(settings, dataset, parse_day(date))
    except FleetWatchError as exc:
        _fail(exc)
    console.print(f"{dataset} {date}: {n} alerts published")


@app.command()
def night(dataset: str = DatasetOpt, date: str = DateOpt) -> None:
    """Run the whole nightly DAG for one date through Airflow (dag.test, in-process)."""
    from fleetwatch.app.run_output import console_beside, output_to, task_lines  # lazy: the CLI's start

    settings = get_settings()
    log = Path(settings.home) / "logs" / f"night-{dataset}-{date}.log"
    out = console_beside(console)
    try:
        with out.status(f"nightly {dataset} {date}: running (Airflow and Spark log to {log})"), output_to(log):
            state = run_nightly(settings, dataset, parse_day(date))
    except FleetWatchError as exc:
        _fail(exc)
    out.print(f"nightly {dataset} {date}: {state} (log: {log})", highlight=False, soft_wrap=True)
    for line in task_lines(last_tasks()):
        out.print(line, highlight=False, soft_wrap=True)
    if state != "success":
        for task_id, error in last_failures().items():
            console.print(f"[red]{task_id} failed:[/red] {error}", highlight=False)
        raise typer.Exit(1)


@app.command()
def demo(
    entities: int = typer.Option(20, min=2, help="Entities in the synthetic fleet."),
    days: int = typer.Option(7, min=4, help="Days in the synthetic fleet (the default run takes 9 to 20 minutes on 2 cores)."),
    dataset: str = typer.Option("demo", callback=_new_dataset, help="Dataset name."),
) -> None:
    """Generate a fleet and run it night by night through the real Airflow DAGs."""
    from fleetwatch.app.demo import run_demo  # lazy: pandas and SciPy

    try:
        run_demo(get_settings(), dataset=dataset, entities=entities, days=days, console=console)
    except FleetWatchError as exc:
        _fail(exc)


@app.command()
def sql(query: str = typer.Argument(..., help="One read-only SQL statement against the alerts database.")) -> None:
    """Run one read-only SQL statement against the alerts database and print the rows.

    Nothing it runs can change the database (a read-only file or transaction, as the analyst
    role where there is one); label alerts with `fleetwatch alerts label`.
    """
    try:
        columns, rows = _alerts_store().read_query(query, role=get_settings().alerts_analyst_role)
    except FleetWatchError as exc:
        _fail(exc)
    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


@db_app.command("init")
def db_init(
    writer_password: str | None = typer.Option(
        None, envvar="ALERTS_WRITER_PASSWORD", show_default=False,
        help="Password of the writer role (env ALERTS_WRITER_PASSWORD).",
    ),
    analyst_password: str | None = typer.Option(
        None, envvar="ALERTS_ANALYST_PASSWORD", show_default=False,
        help="Password of the analyst role (env ALERTS_ANALYST_PASSWORD).",
    ),
) -> None:
    """Create the alerts tables and, on PostgreSQL, a writer role that owns them and a read-only analyst role.

    Run it once as a database administrator (FLEETWATCH_ALERTS_DB_URL with a user that may create
    roles); running it again changes nothing.
    """
    from fleetwatch.core.db_roles import init_roles  # lazy: SQLAlchemy

    settings = get_settings()
    try:
        lines = init_roles(
            _alerts_store(), settings.alerts_writer_role, settings.alerts_analyst_role, writer_password, analyst_password
        )
    except FleetWatchError as exc:
        _fail(exc)
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


@alerts_app.command("list")
def alerts_list(
    dataset: str | None = typer.Option(None, "--dataset", "-d", callback=_named_dataset, help="Only this dataset."),
    limit: int = typer.Option(20, min=1, help="How many, newest first."),
) -> None:
    """Show the most recent alerts."""
    try:
        store = _alerts_store()
        frame = store.list_recent(limit=limit, dataset=dataset)
        if dataset is not None and frame.empty:
            _check_dataset(dataset, store)
    except FleetWatchError as exc:
        _fail(exc)
    cols = ["id", "dataset", "entity_id", "start_ts", "end_ts", "peak_score", "severity", "top_metrics", "label", "nights"]
    table = Table(*cols)
    for rec in frame.to_dict("records"):
        rec["label"] = "new_normal" if rec.get("new_normal") is True else rec.get("label")
        rec["nights"] = f"{rec['nights']} (persistent)" if rec.get("persistent") is True else rec.get("nights")
        table.add_row(*(f"{rec[c]:.3g}" if c == "peak_score" else str(rec.get(c, "")) for c in cols))
    console.print(table)


def _check_dataset(dataset: str, store) -> None:
    """An error naming the known datasets when ``dataset`` has neither a spec nor any alert."""
    specs = list_specs(get_settings().specs_dir)
    if dataset in specs:
        return
    _, rows = store.query("select distinct dataset from alerts")
    known = sorted(set(specs) | {r[0] for r in rows})
    if dataset not in known:
        raise FleetWatchError(f"unknown dataset {dataset!r}: no spec and no alerts (known: {', '.join(known) or 'none'})")


@alerts_app.command("show")
def alerts_show(alert_id: int = typer.Argument(..., help="Alert id (column id).")) -> None:
    """One alert: its metrics ranked, then hour by hour (its phases)."""
    try:
        alert = _alerts_store().get(alert_id)
    except FleetWatchError as exc:
        _fail(exc)
    label = {True: "true", False: "false"}.get(alert["label"], "unlabelled")
    console.print(
        f"alert {alert_id}: {alert['dataset']} {alert['entity_id']} {alert['start_ts']} .. {alert['end_ts']}, "
        f"{alert['n_points']} flagged rows, {alert['severity']} (peak {alert['peak_score']:.3g}, threshold "
        f"{alert['threshold']:.3g}), {alert['model_scope']} model {alert['model_name']} v{alert['model_version']}, {label}"
    )
    table = Table("metric", "value", "baseline", "evidence")
    for item in json.loads(alert["contributions"])[:10]:
        table.add_row(item["metric"], f"{item['value']:.4g}", f"{item['baseline']:.4g}", f"{item['error']:.3g}")
    console.print(table)
    phases = json.loads(alert["phases"]) if isinstance(alert["phases"], str) else []
    if phases:
        hours = Table("from", "to", "flagged", "top metrics")
        for ph in phases:
            hours.add_row(ph["start_ts"], ph["end_ts"], str(ph["n_points"]), ph["top_metrics"])
        console.print(hours)


@models_app.command("list")
def models_list() -> None:
    """Registered models with their versions, aliases and training windows."""
    from models.registry import list_versions  # lazy: pandas

    try:
        frame = list_versions(get_settings())
    except FleetWatchError as exc:
        _fail(exc)
    table = Table(*frame.columns)
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console.print(table)


@models_app.command("rollback")
def models_rollback(dataset: str = DatasetOpt) -> None:
    """Point `champion` back at the previous champion version."""
    from models.registry import rollback  # lazy: pandas

    try:
        version = rollback(get_settings(), dataset)
    except FleetWatchError as exc:
        _fail(exc)
    console.print(f"{dataset}: champion is now version {version}")


@ingest_app.command("smd")
def ingest_smd_cmd(
    data: Path = typer.Option(..., "--data", help="Folder with train/, test/, test_label/, interpretation_label/."),
    machines: list[str] | None = typer.Option(None, "--machines", help="Machines to load (default: all)."),
    start: str = typer.Option("2026-01-01", help="Date of the first training minute."),
    dataset: str = typer.Option("smd", callback=_new_dataset, help="Dataset name to create."),
) -> None:
    """Load Server Machine Dataset files into a dataset spec and raw lake partitions."""
    from fleetwatch.core.datasets.smd import ingest_smd  # lazy: pandas

    try:
        summary = ingest_smd(get_settings(), Path(data), machines=machines, start=parse_day(start), dataset=dataset)
    except FleetWatchError as exc:
        _fail(exc)
    console.print(summary, highlight=False)


@evaluate_app.command("smd")
def evaluate_smd_cmd(
    data: Path = typer.Option(..., "--data", help="Folder of the SMD files."),
    machines: list[str] | None = typer.Option(None, "--machines", help="Machines to evaluate (default: all)."),
    out: Path = typer.Option(Path("report.json"), "--out", help="Where to write the JSON report."),
    start: str = typer.Option("2026-01-01", help="Date of the first training minute."),
    cross_validate: bool = typer.Option(
        False, "--cross-validate", help="Also choose the settings after scoring leaving one machine out."
    ),
    adapt: bool = typer.Option(
        False, "--adapt", help="Retrain on test nights whose persistent alerts ask an entity to adapt, as the DAGs do."
    ),
) -> None:
    """Ingest SMD, run the nightly and retrain paths, and compare alerts with the labels."""
    from fleetwatch.app.smd_evaluation import evaluate_smd  # lazy: PySpark, pandas and scikit-learn

    try:
        report = evaluate_smd(
            get_settings(), Path(data), machines=machines, out=out, start=parse_day(start), console=console,
            cross_validate=cross_validate, adapt=adapt,
        )
    except FleetWatchError as exc:
        _fail(exc)
    console.print(json.dumps({k: v for k, v in report.items() if k.endswith("_mean")}, indent=2))
    if cross_validate:
        console.print(json.dumps({"out_of_fold": report["cross_validation"]["out_of_fold"]}, indent=2))


def main() -> None:  # pragma: no cover - console script
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
