"""``fleetwatch airflow up|down|status``: a real Airflow (scheduler, DAG processor, API server)
over the FleetWatch DAGs, as a team runs it, under the FleetWatch home's Airflow home.

``up`` writes a complete ``airflow.cfg`` (the one source of Airflow's settings for the stack),
an env file with what the DAGs and their Spark jobs need (``FLEETWATCH_*``, the Spark
connection, the Python workers' interpreter), migrates the metadata DB and starts the three
processes in the background, each in its own process group, logging to a file, its PID kept.

Executor: LocalExecutor on either database. Airflow 3 has no SequentialExecutor any more; its
own ``airflow standalone`` runs LocalExecutor on SQLite, since tasks report their state through
the API server (the Task SDK) rather than writing the DB themselves. SQLite still lets one
process write at a time, so on SQLite the executor runs one task at a time (``parallelism = 1``);
on PostgreSQL it runs as many as the machine has cores (at least two).

With a Spark Connect port, ``up`` also starts a Spark Connect server (``connect_server``) and
points the DAG tasks at it, so a night's steps share one Spark application; ``down`` stops it.
"""

from __future__ import annotations

import configparser
import json
import os
import secrets
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fleetwatch.app import background, connect_server
from fleetwatch.app.orchestration import DAGS_FOLDER, airflow_env
from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.settings import Settings

PROCESSES = ("scheduler", "dag-processor", "api-server")
SPARK_CONNECT = "spark-connect"
ADMIN_USER = "admin"
DEFAULT_PORT = 8080
_SECRETS = (("core", "fernet_key"), ("api", "secret_key"), ("api_auth", "jwt_secret"))


@dataclass(frozen=True)
class Process:
    """One stack process as ``status`` sees it."""

    name: str
    pid: int | None
    running: bool
    log: Path


@dataclass(frozen=True)
class StackInfo:
    """What ``up`` started: where the UI is, who logs in, where the files are."""

    url: str
    user: str
    password: str
    db_url: str
    executor: str
    processes: list[Process]
    config: Path
    env_file: Path
    spark_connect: connect_server.ConnectServer | None = None


def airflow_home(settings: Settings) -> Path:
    return Path(settings.airflow_home)


def log_dir(settings: Settings) -> Path:
    return airflow_home(settings) / "logs" / "stack"


def _pid_file(settings: Settings, name: str) -> Path:
    return airflow_home(settings) / "run" / f"{name}.pid"


def metadata_db_url(settings: Settings, db_url: str | None) -> str:
    """The metadata DB: ``db_url`` (PostgreSQL in a team), else a SQLite file in the Airflow home.

    A PostgreSQL URL without a driver gets psycopg (3), the driver FleetWatch installs.
    """
    if not db_url:
        return f"sqlite:///{airflow_home(settings) / 'airflow.db'}"
    scheme, rest = db_url.split("://", 1)
    return f"postgresql+psycopg://{rest}" if scheme in ("postgres", "postgresql") else db_url


def async_db_url(db_url: str) -> str | None:
    """The URL of Airflow's async engine when Airflow's own guess needs a driver FleetWatch lacks.

    Airflow maps ``postgresql`` to asyncpg, which is not installed; psycopg (3) is async too.
    """
    scheme, rest = db_url.split("://", 1)
    return f"postgresql+psycopg://{rest}" if scheme.split("+")[0] == "postgresql" else None


def parallelism(db_url: str) -> int:
    """Tasks the LocalExecutor runs at once: one on SQLite (one writer), the cores elsewhere."""
    return 1 if db_url.startswith("sqlite") else max(2, os.cpu_count() or 2)


def write_config(settings: Settings, *, port: int = DEFAULT_PORT, db_url: str | None = None) -> Path:
    """Write ``<airflow_home>/airflow.cfg`` for the stack; secrets of an earlier file are kept.

    The scheduler signs the tasks' tokens and the API server checks them, so the JWT secret must
    be the same in both: it is written here rather than left to each process to generate.
    """
    home = airflow_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "airflow.cfg"
    old = configparser.ConfigParser(interpolation=None)
    if path.is_file():
        old.read(path)
    kept = {(s, k): old.get(s, k, fallback="") for s, k in _SECRETS}
    url = metadata_db_url(settings, db_url)
    base = f"http://127.0.0.1:{port}"
    cfg = configparser.ConfigParser(interpolation=None)
    cfg["core"] = {
        "dags_folder": str(DAGS_FOLDER),
        "load_examples": "False",
        "executor": "LocalExecutor",
        "parallelism": str(parallelism(url)),
        "dags_are_paused_at_creation": "True",
        "fernet_key": kept[("core", "fernet_key")] or _fernet_key(),
        "auth_manager": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "simple_auth_manager_users": f"{ADMIN_USER}:admin",
        "simple_auth_manager_passwords_file": str(passwords_file(settings)),
        "execution_api_server_url": f"{base}/execution/",
    }
    cfg["database"] = {"sql_alchemy_conn": url}
    if async_db_url(url):
        cfg["database"]["sql_alchemy_conn_async"] = async_db_url(url)
    # the scheduler serves its tasks' logs to the UI; beside the UI's port, so two stacks on one machine do not collide
    cfg["logging"] = {"base_log_folder": str(home / "logs"), "worker_log_server_port": str(port + 1)}
    cfg["api"] = {
        "host": "127.0.0.1",
        "port": str(port),
        "base_url": base,
        "workers": "1",
        "secret_key": kept[("api", "secret_key")] or secrets.token_urlsafe(16),
    }
    cfg["api_auth"] = {"jwt_secret": kept[("api_auth", "jwt_secret")] or secrets.token_urlsafe(32)}
    # a new dataset spec becomes DAGs within half a minute; one parsing process on a small machine
    cfg["dag_processor"] = {"refresh_interval": "30", "parsing_processes": "1"}
    with path.open("w") as out:
        out.write("# Written by `fleetwatch airflow up`; rewritten on every `up` (secrets kept).\n")
        cfg.write(out)
    return path


def _fernet_key() -> str:
    from cryptography.fernet import Fernet  # lazy: only when a new configuration is written

    return Fernet.generate_key().decode()


def passwords_file(settings: Settings) -> Path:
    return airflow_home(settings) / "simple_auth_manager_passwords.json"


def admin_password(settings: Settings) -> str:
    """The admin's password, generated once and kept in the simple auth manager's passwords file.

    The simple auth manager only generates passwords for users missing from that file, so the
    one written here is the one it accepts.
    """
    path = passwords_file(settings)
    known = json.loads(path.read_text() or "{}") if path.is_file() else {}
    if ADMIN_USER not in known:
        known[ADMIN_USER] = secrets.token_urlsafe(12)
        path.write_text(json.dumps(known) + "\n")
        path.chmod(0o600)
    return known[ADMIN_USER]


def stack_env(settings: Settings) -> dict[str, str]:
    """Variables the stack's processes add to their environment; Airflow's own settings are in
    ``airflow.cfg``, so no ``AIRFLOW__*`` variable is among them."""
    return {k: v for k, v in airflow_env(settings).items() if not k.startswith("AIRFLOW__")}


def write_env_file(settings: Settings) -> Path:
    """``<airflow_home>/fleetwatch.env``: ``set -a; . fleetwatch.env`` gives a shell the stack's
    environment (for ``airflow dags ...`` or ``airflow tasks test``)."""
    path = airflow_home(settings) / "fleetwatch.env"
    lines = [f"{k}={shlex.quote(v)}" for k, v in sorted(stack_env(settings).items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _process_env(settings: Settings) -> dict[str, str]:
    """The processes' environment: ours without ``AIRFLOW__*``, the stack's variables, and Python
    set to write its output unbuffered and a traceback on a fatal signal, so a process that dies
    leaves its last words in its log."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    return {**inherited, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", **stack_env(settings)}


def _airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


def migrate(settings: Settings) -> None:
    """``airflow db migrate`` on the stack's metadata DB."""
    done = subprocess.run(
        [_airflow_bin(), "db", "migrate"],
        env=_process_env(settings),
        cwd=airflow_home(settings),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise FleetWatchError(f"`airflow db migrate` failed for AIRFLOW_HOME={airflow_home(settings)}: {tail[0]}")


def read_port(settings: Settings) -> int:
    """The API server's port written in the stack's ``airflow.cfg``."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(airflow_home(settings) / "airflow.cfg")
    return cfg.getint("api", "port", fallback=DEFAULT_PORT)


def status(settings: Settings) -> list[Process]:
    """Each stack process: its PID (if one was recorded) and whether it still runs."""
    out = []
    for name in PROCESSES:
        pid = background.read_pid(_pid_file(settings, name))
        out.append(Process(name, pid, background.running(pid, b"airflow"), log_dir(settings) / f"{name}.log"))
    return out


def up(
    settings: Settings, *, port: int = DEFAULT_PORT, db_url: str | None = None, wait_s: float = 300.0,
    spark_connect_port: int | None = None,
) -> StackInfo:
    """Configure, migrate and start the stack; returns once the API server answers.

    With ``spark_connect_port`` a Spark Connect server starts first on that port and the DAG tasks
    run their Spark jobs on it (``FLEETWATCH_SPARK_CONNECT_URL`` in the stack's environment).

    Raises ``FleetWatchError`` when a process of the stack already runs (``down`` first), or
    when a process exits or the API server does not answer within ``wait_s`` (naming its log).
    """
    running = [p.name for p in status(settings) if p.running]
    if running:
        raise FleetWatchError(
            f"Airflow already runs for {airflow_home(settings)} ({', '.join(running)}): `fleetwatch airflow down` first"
        )
    spark = None
    if spark_connect_port is not None:
        spark = connect_server.start(settings, port=spark_connect_port, log=log_dir(settings) / f"{SPARK_CONNECT}.log",
                                     pid_file=_pid_file(settings, SPARK_CONNECT))
        settings = settings.model_copy(update={"spark_connect_url": spark.url})
    config = write_config(settings, port=port, db_url=db_url)
    password = admin_password(settings)
    env_file = write_env_file(settings)
    migrate(settings)
    env = _process_env(settings)
    url = f"http://127.0.0.1:{port}"
    services = [background.Service(f"airflow {name}", [_airflow_bin(), name], env, airflow_home(settings),
                                   log_dir(settings) / f"{name}.log", _pid_file(settings, name), b"airflow")
                for name in PROCESSES]
    try:
        background.start_all(services, lambda: health(url) is not None, f"the API server at {url}", wait_s, poll_s=2.0)
    except FleetWatchError:
        down(settings)
        raise
    url_db = metadata_db_url(settings, db_url)
    return StackInfo(
        url=url,
        user=ADMIN_USER,
        password=password,
        db_url=url_db,
        executor=f"LocalExecutor (parallelism {parallelism(url_db)})",
        processes=status(settings),
        config=config,
        env_file=env_file,
        spark_connect=spark,
    )


def health(url: str) -> dict | None:
    """The API server's health report (metadata DB, scheduler, DAG processor), None if it does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def down(settings: Settings, *, wait_s: float = 30.0) -> list[str]:
    """Stop the stack's processes (their whole process groups: SIGTERM, then SIGKILL); the names stopped."""
    stopped = []
    for proc in status(settings):
        if proc.running:
            background.stop(proc.pid, wait_s)
            stopped.append(proc.name)
        _pid_file(settings, proc.name).unlink(missing_ok=True)
    if connect_server.is_running(spark_connect_pid(settings)):
        connect_server.stop(spark_connect_pid(settings), wait_s)
        stopped.append(SPARK_CONNECT)
    _pid_file(settings, SPARK_CONNECT).unlink(missing_ok=True)
    return stopped


def spark_connect_pid(settings: Settings) -> int | None:
    """The PID of the Spark Connect server ``up`` started, if it recorded one."""
    return background.read_pid(_pid_file(settings, SPARK_CONNECT))

