"""``fleetwatch stack up|down|status``: Spark standalone, an MLflow server and Airflow on one machine."""

from __future__ import annotations

import typer

from fleetwatch.app.cli_common import console
from fleetwatch.app.cli_common import fail as _fail
from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.settings import get_settings

stack_app = typer.Typer(
    help="The multi-machine stack (Spark master and worker, MLflow server, Airflow on PostgreSQL) on this machine.",
    no_args_is_help=True,
)


def _say(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


@stack_app.command("up")
def stack_up(
    pg_url: str = typer.Option(
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres", "--pg-url", envvar="FLEETWATCH_STACK_PG_URL",
        help="A PostgreSQL server and a login that may create databases; the stack's databases are made there.",
    ),
    db_prefix: str = typer.Option("fleetwatch", help="The databases are <prefix>_airflow, <prefix>_mlflow, <prefix>_alerts."),
    spark_port: int = typer.Option(7077, help="Spark master."),
    spark_ui_port: int = typer.Option(8090, help="Spark master's web UI (the worker's is the next port)."),
    mlflow_port: int = typer.Option(5000, help="MLflow tracking server and UI."),
    airflow_port: int = typer.Option(8080, help="Airflow UI and API (its scheduler's log server takes the next port)."),
    worker_cores: int = typer.Option(2, min=1, help="Cores the Spark worker offers."),
    worker_memory: str = typer.Option("2g", help="Memory the Spark worker offers (executors take 1g each)."),
) -> None:
    """Create the databases, start Spark master and worker, MLflow server and Airflow; print the URLs."""
    from fleetwatch.app.local_stack import Ports, StackConfig, up  # lazy: the CLI's start

    try:
        config = StackConfig(
            server_url=pg_url, db_prefix=db_prefix, worker_cores=worker_cores, worker_memory=worker_memory,
            ports=Ports(spark_master=spark_port, spark_ui=spark_ui_port, spark_worker_ui=spark_ui_port + 1,
                        mlflow=mlflow_port, airflow=airflow_port),
        )
        with console.status("starting Spark master and worker, MLflow server, Airflow (migrating its DB first)..."):
            info = up(get_settings(), config)
    except FleetWatchError as exc:
        _fail(exc)
    _say(f"Airflow UI:   {info.airflow.url}   user {info.airflow.user}   password {info.airflow.password}")
    _say(f"MLflow UI:    {config.mlflow_url}")
    _say(f"Spark master: {config.spark_master_url}   UI {config.spark_ui_url}")
    _say(f"databases:    {', '.join(config.database(n) for n in ('airflow', 'mlflow', 'alerts'))}")
    _say(f"environment for a shell (fleetwatch commands against the stack): set -a; . {info.airflow.env_file}")
    for svc in info.services:
        _say(f"{svc.name:<14} pid {svc.pid}  log {svc.log}")
    _say("DAGs start paused: unpause one in the Airflow UI; `fleetwatch stack down` stops everything.")


@stack_app.command("down")
def stack_down(
    drop_databases: bool = typer.Option(False, "--drop-databases", help="Also drop the stack's databases (all its data)."),
) -> None:
    """Stop every process `up` started (Airflow, MLflow, Spark)."""
    from fleetwatch.app.local_stack import down  # lazy: the CLI's start

    stopped = down(get_settings(), drop_databases=drop_databases)
    _say(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@stack_app.command("status")
def stack_status() -> None:
    """Which stack processes run, their PIDs and logs, and where the services answer."""
    from fleetwatch.app.airflow_stack import health  # lazy: the CLI's start
    from fleetwatch.app.local_stack import read_config, spark_master_state, status  # lazy: as above

    settings = get_settings()
    services = status(settings)
    for svc in services:
        state = f"running  pid {svc.pid}" if svc.running else "stopped"
        _say(f"{svc.name:<22} {state:<16} log {svc.log}")
    config = read_config(settings)
    if config is None or not any(s.running for s in services):
        return
    spark = spark_master_state(config)
    _say(f"Spark master {config.spark_master_url}: "
         + (f"{spark.get('aliveworkers', 0)} worker(s), {len(spark.get('completedapps', []))} completed application(s)"
            if spark else "not answering"))
    _say(f"MLflow {config.mlflow_url}")
    report = health(config.airflow_url)
    states = ", ".join(f"{k} {v.get('status')}" for k, v in (report or {}).items() if isinstance(v, dict))
    _say(f"Airflow {config.airflow_url}: {states or 'not answering'}")
