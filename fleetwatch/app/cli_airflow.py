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
) -> None:
    """Write airflow.cfg, migrate the metadata DB, start scheduler, dag-processor and api-server."""
    from fleetwatch.app.airflow_stack import up  # lazy: the CLI's start
    from fleetwatch.core.alerts_store import redact_url  # lazy: pandas and SQLAlchemy

    settings = get_settings()
    try:
        with console.status("starting Airflow (migrating the metadata DB, then scheduler, dag-processor, api-server)..."):
            info = up(settings, port=port, db_url=db_url)
    except FleetWatchError as exc:
        _fail(exc)
    console.print(f"Airflow UI:  {info.url}   user {info.user}   password {info.password}", highlight=False, soft_wrap=True)
    console.print(f"executor:    {info.executor}; metadata DB {redact_url(info.db_url)}", highlight=False, soft_wrap=True)
    console.print(f"config:      {info.config}; environment for a shell: set -a; . {info.env_file}", highlight=False,
                  soft_wrap=True)
    for proc in info.processes:
        console.print(f"{proc.name:<14} pid {proc.pid}  log {proc.log}", highlight=False, soft_wrap=True)
    console.print("DAGs start paused: unpause one in the UI; a nightly DAG then catches up from FLEETWATCH_SCHEDULE_START.",
                  highlight=False, soft_wrap=True)


@airflow_app.command("down")
def airflow_down() -> None:
    """Stop the scheduler, dag-processor and api-server started by `up`."""
    from fleetwatch.app.airflow_stack import down  # lazy: the CLI's start

    stopped = down(get_settings())
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@airflow_app.command("status")
def airflow_status() -> None:
    """Which stack processes run, their PIDs and logs, and the API server's health report."""
    from fleetwatch.app.airflow_stack import health, read_port, status  # lazy: the CLI's start

    settings = get_settings()
    procs = status(settings)
    for proc in procs:
        state = f"running  pid {proc.pid}" if proc.running else "stopped"
        console.print(f"{proc.name:<14} {state:<16} log {proc.log}", highlight=False, soft_wrap=True)
    if any(p.running for p in procs):
        url = f"http://127.0.0.1:{read_port(settings)}"
        report = health(url)
        states = ", ".join(f"{k} {v.get('status')}" for k, v in (report or {}).items() if isinstance(v, dict))
        console.print(f"{url}: {states or 'not answering'}", highlight=False, soft_wrap=True)
