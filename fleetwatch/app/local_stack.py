"""``fleetwatch stack up|down|status``: the multi-machine topology of ``docker/compose.yaml`` on one
machine, each service a process of its own.

- a Spark standalone master and one worker (``spark-class`` of the installed pyspark);
- an MLflow tracking server on a PostgreSQL database, serving the artifact store (clients upload
  and download through it, as they do across machines);
- Airflow's scheduler, DAG processor and API server (``airflow_stack``) on a PostgreSQL metadata
  DB with LocalExecutor, whose Spark connection is the standalone master and whose tasks log to
  the MLflow server and publish alerts to a PostgreSQL alerts database.

The three databases (``<prefix>_airflow``, ``<prefix>_mlflow``, ``<prefix>_alerts``) are created
on the given PostgreSQL server when missing. What ``up`` chose (server, prefix, ports) is kept in
``<home>/stack/stack.json``, so ``status`` and ``down`` need no options; ``down --drop-databases``
also drops the databases.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fleetwatch.app import airflow_stack, background
from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.secrets import redact_url
from fleetwatch.core.settings import Settings
from fleetwatch.core.spark import check_java, spark_env

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DATABASES = ("airflow", "mlflow", "alerts")
# each service: the marker its command line holds (to tell it from a PID reused by another program)
SERVICES = {
    "spark-master": b"org.apache.spark.deploy.master.Master",
    "spark-worker": b"org.apache.spark.deploy.worker.Worker",
    "mlflow": b"mlflow",
}


@dataclass(frozen=True)
class Ports:
    """Ports of the stack's services on 127.0.0.1; the same ones ``docker/compose.yaml`` publishes.

    Airflow's scheduler also serves task logs on ``airflow + 1``.
    """

    spark_master: int = 7077
    spark_ui: int = 8090
    spark_worker_ui: int = 8091
    mlflow: int = 5000
    airflow: int = 8080


@dataclass(frozen=True)
class StackConfig:
    """What ``up`` starts: the PostgreSQL server, the databases' prefix, ports, the worker's size."""

    server_url: str = DEFAULT_SERVER
    db_prefix: str = "fleetwatch"
    ports: Ports = field(default_factory=Ports)
    worker_cores: int = 2
    worker_memory: str = "2g"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", self.db_prefix):
            raise FleetWatchError(f"database prefix {self.db_prefix!r}: use lower-case letters, digits and '_'")

    def database(self, name: str) -> str:
        return f"{self.db_prefix}_{name}"

    def db_url(self, name: str) -> str:
        """The URL of the stack's database ``name`` on the server (the server URL's database replaced)."""
        return f"{self.server_url.rsplit('/', 1)[0]}/{self.database(name)}"

    @property
    def spark_master_url(self) -> str:
        return f"spark://127.0.0.1:{self.ports.spark_master}"

    @property
    def spark_ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.spark_ui}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.mlflow}"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.airflow}"

    @classmethod
    def from_json(cls, text: str) -> StackConfig:
        data = json.loads(text)
        return cls(**{**data, "ports": Ports(**data["ports"])})


Service = airflow_stack.Process  # one stack process as ``status`` sees it: name, pid, running, log


@dataclass(frozen=True)
class StackInfo:
    """What ``up`` started and where to reach it."""

    config: StackConfig
    airflow: airflow_stack.StackInfo
    services: list[Service]


def stack_dir(settings: Settings) -> Path:
    return settings.home / "stack"


def _config_file(settings: Settings) -> Path:
    return stack_dir(settings) / "stack.json"


def _pid_file(settings: Settings, name: str) -> Path:
    return stack_dir(settings) / "run" / f"{name}.pid"


def _log(settings: Settings, name: str) -> Path:
    return stack_dir(settings) / "logs" / f"{name}.log"


def read_config(settings: Settings) -> StackConfig | None:
    """The configuration of the last ``up`` under this home, None if there was none."""
    path = _config_file(settings)
    return StackConfig.from_json(path.read_text()) if path.is_file() else None


def stack_settings(settings: Settings, config: StackConfig) -> Settings:
    """``settings`` pointed at the stack's services: the Spark master, MLflow server, alerts DB."""
    return settings.model_copy(update={
        "spark_master": config.spark_master_url,
        "mlflow_tracking_uri": config.mlflow_url,
        "alerts_db_url": config.db_url("alerts"),
    })


def status(settings: Settings) -> list[Service]:
    """Every stack process (Spark, MLflow, then Airflow's): its PID and whether it runs."""
    own = []
    for name, marker in SERVICES.items():
        pid = background.read_pid(_pid_file(settings, name))
        own.append(Service(name, pid, background.running(pid, marker), _log(settings, name)))
    return own + airflow_stack.status(settings)


def up(settings: Settings, config: StackConfig | None = None, *, wait_s: float = 300.0) -> StackInfo:
    """Create the databases, start Spark, MLflow and Airflow, and return once each answers.

    Raises ``FleetWatchError`` when a stack process already runs under this home (``down``
    first), when PostgreSQL cannot be reached, or when a service exits or does not answer within
    ``wait_s`` (naming its log); whatever started is stopped again then.
    """
    config = config or StackConfig()
    running = [s.name for s in status(settings) if s.running]
    if running:
        raise FleetWatchError(
            f"the stack already runs under {settings.home} ({', '.join(running)}): `fleetwatch stack down` first"
        )
    check_java()
    stack_dir(settings).mkdir(parents=True, exist_ok=True)
    _config_file(settings).write_text(json.dumps(asdict(config), indent=2) + "\n")  # before the databases: down drops them
    create_databases(config)
    try:
        _start_spark(settings, config, wait_s)
        _start_mlflow(settings, config, wait_s)
        info = airflow_stack.up(stack_settings(settings, config), port=config.ports.airflow,
                                db_url=config.db_url("airflow"), wait_s=wait_s)
    except BaseException:
        down(settings)
        raise
    return StackInfo(config=config, airflow=info, services=status(settings))


def _spark_env(settings: Settings) -> dict[str, str]:
    import pyspark  # lazy: only to find the installed Spark

    return {
        **os.environ, **spark_env(),
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        "SPARK_LOG_DIR": str(stack_dir(settings) / "logs"),
        "SPARK_WORKER_DIR": str(stack_dir(settings) / "spark-work"),
    }


def _start_spark(settings: Settings, config: StackConfig, wait_s: float) -> None:
    env = _spark_env(settings)
    spark_class = str(Path(env["SPARK_HOME"]) / "bin" / "spark-class")
    commands = {
        "spark-master": [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                         "--port", str(config.ports.spark_master), "--webui-port", str(config.ports.spark_ui)],
        "spark-worker": [spark_class, "org.apache.spark.deploy.worker.Worker", config.spark_master_url, "--host", "127.0.0.1",
                         "--cores", str(config.worker_cores), "--memory", config.worker_memory,
                         "--webui-port", str(config.ports.spark_worker_ui)],
    }
    background.start_all([_service(settings, name, cmd, env) for name, cmd in commands.items()],
                         lambda: (spark_master_state(config) or {}).get("aliveworkers", 0) >= 1,
                         "the Spark master to see its worker", wait_s)


def spark_master_state(config: StackConfig) -> dict | None:
    """The standalone master's JSON state (workers, running and completed applications), None if it does not answer."""
    return _get_json(f"{config.spark_ui_url}/json/")


def _start_mlflow(settings: Settings, config: StackConfig, wait_s: float) -> None:
    artifacts = stack_dir(settings) / "mlartifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(config.ports.mlflow),
           "--workers", "1", "--backend-store-uri", config.db_url("mlflow"),
           "--serve-artifacts", "--artifacts-destination", str(artifacts)]
    background.start_all([_service(settings, "mlflow", cmd, dict(os.environ))],
                         lambda: _answers(f"{config.mlflow_url}/health"), "the MLflow server", wait_s)


def _service(settings: Settings, name: str, cmd: list[str], env: dict[str, str]) -> background.Service:
    return background.Service(name, cmd, env, stack_dir(settings), _log(settings, name), _pid_file(settings, name),
                              SERVICES[name])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def down(settings: Settings, *, drop_databases: bool = False, wait_s: float = 30.0) -> list[str]:
    """Stop every stack process (Airflow first, then MLflow and Spark); the names stopped.

    ``drop_databases`` also drops the stack's three databases (everything in them is lost).
    """
    stopped = airflow_stack.down(settings, wait_s=wait_s)
    for name, marker in reversed(SERVICES.items()):
        pid = background.read_pid(_pid_file(settings, name))
        if background.running(pid, marker):
            background.stop(pid, wait_s)
            stopped.append(name)
        _pid_file(settings, name).unlink(missing_ok=True)
    config = read_config(settings)
    if drop_databases and config is not None:
        drop_stack_databases(config)
    return stopped


def _admin_engine(config: StackConfig):
    import sqlalchemy as sa  # lazy: only up and down --drop-databases reach the server

    return sa.create_engine(config.server_url, isolation_level="AUTOCOMMIT")


def create_databases(config: StackConfig) -> list[str]:
    """Create the stack's databases that are missing; the names created."""
    import sqlalchemy as sa  # lazy: as in _admin_engine

    engine = _admin_engine(config)
    created = []
    try:
        with engine.connect() as conn:
            known = set(conn.execute(sa.text("SELECT datname FROM pg_database")).scalars())
            for name in DATABASES:
                if config.database(name) not in known:
                    conn.execute(sa.text(f'CREATE DATABASE "{config.database(name)}"'))
                    created.append(config.database(name))
    except sa.exc.OperationalError as exc:
        raise FleetWatchError(f"PostgreSQL at {redact_url(config.server_url)} cannot be reached: "
                              f"{str(exc.orig).strip().splitlines()[0]}") from None
    finally:
        engine.dispose()
    return created


def drop_stack_databases(config: StackConfig) -> None:
    """Drop the stack's databases (closing what is still connected to them)."""
    import sqlalchemy as sa  # lazy: as in _admin_engine

    engine = _admin_engine(config)
    try:
        with engine.connect() as conn:
            for name in DATABASES:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{config.database(name)}" WITH (FORCE)'))
    finally:
        engine.dispose()
