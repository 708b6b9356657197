"""``fleetwatch airflow up|down|status``: Airflow's own scheduler, DAG processor and API server."""

from __future__ import annotations

import typer

from fleetwatch.app.cli_common import console
from fleetwatch.app.cli_common import fail as _fail
from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.settings import get_settings

airflow_app = typer.Typer(help="A real Airflow (scheduler, DAG processor, API server) over the FleetWatch DAGs.",
                          no_args_is_help=True)


@airflow_app.command("up")
def airflow_up(
    port: int = typer.Option(8080, help="Port of the Airflow UI and API (127.0.0.1)."),
    db_url: str | None = typer.Option(
        None, "--db-url", envvar="FLEETWATCH_AIRFLOW_DB_URL",
        help="Airflow metadata DB (e.g. postgresql+psycopg://user@host/airflow); default: a SQLite file in the Airflow home.",
    ),
    spark_connect: bool = typer.Option(
        False, "--spark-connect", help="Also start a Spark Connect server: the DAG tasks share one Spark application.",
    ),
    spark_connect_port: int = typer.Option(15002, help="Port of that Spark Connect server (127.0.0.1)."),
) -> None:
    """Write airflow.cfg, migrate the metadata DB, start scheduler, dag-processor and api-server."""
    from fleetwatch.app.airflow_stack import up  # lazy: the CLI's start
    from fleetwatch.core.alerts_store import redact_url  # lazy: pandas and SQLAlchemy

    settings = get_settings()
    try:
        with console.status("starting Airflow (migrating the metadata DB, then scheduler, dag-processor, api-server)..."):
            info = up(settings, port=port, db_url=db_url, spark_connect_port=spark_connect_port if spark_connect else None)
    except FleetWatchError as exc:
        _fail(exc)
    console.print(f"Airflow UI:  {info.url}   user {info.user}   password {info.password}", highlight=False, soft_wrap=True)
    console.print(f"executor:    {info.executor}; metadata DB {redact_url(info.db_url)}", highlight=False, soft_wrap=True)
    console.print(f"config:      {info.config}; environment for a shell: set -a; . {info.env_file}", highlight=False,
                  soft_wrap=True)
    for proc in info.processes:
        console.print(f"{proc.name:<14} pid {proc.pid}  log {proc.log}", highlight=False, soft_wrap=True)
    if info.spark_connect is not None:
        server = info.spark_connect
        console.print(f"{'spark-connect':<14} pid {server.pid}  log {server.log}  (the DAG tasks run on {server.url})",
                      highlight=False, soft_wrap=True)
    console.print("DAGs start paused: unpause one in the UI; a nightly DAG then catches up from FLEETWATCH_SCHEDULE_START.",
                  highlight=False, soft_wrap=True)


@airflow_app.command("down")
def airflow_down() -> None:
    """Stop the scheduler, dag-processor and api-server (and the Spark Connect server) started by `up`."""
    from fleetwatch.app.airflow_stack import down  # lazy: the CLI's start

    stopped = down(get_settings())
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@airflow_app.command("status")
def airflow_status() -> None:
    """Which stack processes run, their PIDs and logs, and the API server's health report."""
    from fleetwatch.app.airflow_stack import health, read_port, spark_connect_pid, status  # lazy: the CLI's start
    from fleetwatch.app.connect_server import is_running  # lazy: as above

    settings = get_settings()
    procs = status(settings)
    for proc in procs:
        state = f"running  pid {proc.pid}" if proc.running else "stopped"
        console.print(f"{proc.name:<14} {state:<16} log {proc.log}", highlight=False, soft_wrap=True)
    pid = spark_connect_pid(settings)
    if pid is not None:
        console.print(f"{'spark-connect':<14} {'running  pid ' + str(pid) if is_running(pid) else 'stopped'}",
                      highlight=False, soft_wrap=True)
    if any(p.running for p in procs):
        url = f"http://127.0.0.1:{read_port(settings)}"
        report = health(url)
        states = ", ".join(f"{k} {v.get('status')}" for k, v in (report or {}).items() if isinstance(v, dict))
        console.print(f"{url}: {states or 'not answering'}", highlight=False, soft_wrap=True)
