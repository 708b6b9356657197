"""What `fleetwatch airflow up` writes before it starts anything: airflow.cfg, the admin's password, the env file."""

from __future__ import annotations

import configparser
import json
import shlex
from pathlib import Path

from fleetwatch.app import airflow_stack
from fleetwatch.app.orchestration import DAGS_FOLDER
from fleetwatch.core.settings import Settings


def _read(path: Path) -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(path)
    return cfg


def test_config_on_sqlite_runs_one_task_at_a_time_and_keeps_its_secrets(settings):
    path = airflow_stack.write_config(settings, port=8099)
    cfg = _read(path)

    assert cfg["core"]["dags_folder"] == str(DAGS_FOLDER)
    assert cfg["core"]["load_examples"] == "False"
    assert (cfg["core"]["executor"], cfg["core"]["parallelism"]) == ("LocalExecutor", "1")
    assert cfg["database"]["sql_alchemy_conn"] == f"sqlite:///{settings.airflow_home}/airflow.db"
    assert "sql_alchemy_conn_async" not in cfg["database"]
    assert cfg["core"]["execution_api_server_url"] == "http://127.0.0.1:8099/execution/"
    assert (cfg["api"]["port"], cfg["api"]["base_url"]) == ("8099", "http://127.0.0.1:8099")
    assert cfg["core"]["simple_auth_manager_users"] == "admin:admin"
    secrets = {(s, k): cfg[s][k] for s, k in (("core", "fernet_key"), ("api", "secret_key"), ("api_auth", "jwt_secret"))}
    assert all(secrets.values())

    again = _read(airflow_stack.write_config(settings, port=8100))
    assert {(s, k): again[s][k] for s, k in secrets} == secrets  # the scheduler and API server keep agreeing
    assert again["api"]["port"] == "8100"


def test_config_on_postgresql_uses_psycopg_for_both_engines(settings):
    cfg = _read(airflow_stack.write_config(settings, db_url="postgresql://airflow:pw@db:5432/airflow"))

    assert cfg["database"]["sql_alchemy_conn"] == "postgresql+psycopg://airflow:pw@db:5432/airflow"
    assert cfg["database"]["sql_alchemy_conn_async"] == "postgresql+psycopg://airflow:pw@db:5432/airflow"
    assert int(cfg["core"]["parallelism"]) >= 2


def test_admin_password_is_made_once_and_is_what_the_auth_manager_reads(settings):
    Path(settings.airflow_home).mkdir(parents=True)
    first = airflow_stack.admin_password(settings)

    assert airflow_stack.admin_password(settings) == first
    assert json.loads(airflow_stack.passwords_file(settings).read_text()) == {"admin": first}


def test_env_file_rebuilds_the_settings_and_leaves_airflow_settings_to_the_config(settings):
    settings = Settings(home=settings.home, spark_master="spark://127.0.0.1:7077", seed=7)
    Path(settings.airflow_home).mkdir(parents=True)
    path = airflow_stack.write_env_file(settings)

    env = dict(line.split("=", 1) for line in path.read_text().splitlines())
    env = {k: shlex.split(v)[0] for k, v in env.items()}
    assert not any(k.startswith("AIRFLOW__") for k in env)
    assert env["AIRFLOW_HOME"] == str(settings.airflow_home)
    assert json.loads(env["AIRFLOW_CONN_FLEETWATCH_SPARK"]) == {"conn_type": "spark", "host": "spark://127.0.0.1:7077"}
    fleetwatch = {k.removeprefix("FLEETWATCH_").lower(): v for k, v in env.items() if k.startswith("FLEETWATCH_")}
    assert Settings(**fleetwatch) == settings


def test_status_before_up_shows_nothing_running(settings):
    assert [(p.name, p.pid, p.running) for p in airflow_stack.status(settings)] == [
        ("scheduler", None, False), ("dag-processor", None, False), ("api-server", None, False),
    ]
    assert airflow_stack.down(settings) == []
