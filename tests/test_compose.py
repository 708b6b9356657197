"""``docker/compose.yaml`` describes the topology ``fleetwatch stack up`` runs on one machine.

The same long-running services on the same ports, the settings the one-machine stack changes set
to the services' names, Airflow configured with every key ``fleetwatch airflow up`` writes, no
loopback-only Spark address, the images built from ``docker/Dockerfile`` and the databases made
by the init script. The file is checked against the Compose Specification's JSON schema (the
copy check-jsonschema ships) and, where a ``docker compose`` client is installed, by its
``config`` command, which needs no Docker engine.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from fleetwatch.app import airflow_stack, local_stack
from fleetwatch.app.orchestration import settings_env
from fleetwatch.core.settings import Settings

DOCKER = Path(__file__).resolve().parents[1] / "docker"
COMPOSE = DOCKER / "compose.yaml"
PORTS = local_stack.Ports()
SPARK_SERVICES = ("spark-master", "spark-worker", "airflow-scheduler")  # the ones that run Spark JVMs
AIRFLOW_SERVICES = tuple(f"airflow-{name}" for name in airflow_stack.PROCESSES)
ONE_SHOT = ("db-init", "airflow-init")
# airflow.cfg keys the scheduler and the API server must share, generated once rather than set in the file
SHARED_SECRETS = {("core", "fernet_key"), ("api", "secret_key"), ("api_auth", "jwt_secret")}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _env(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def _published(service: dict) -> set[int]:
    """Host ports a service publishes, where each is also its port inside the container."""
    pairs = [str(p).split(":") for p in service.get("ports", [])]
    assert all(host == inside for host, inside in pairs), pairs
    return {int(host) for host, _ in pairs}


def test_compose_file_is_valid_against_the_compose_spec_schema(compose):
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(compose)


def test_compose_client_accepts_the_file(tmp_path):
    """``docker compose config`` (or the standalone ``docker-compose``) resolves the file without an engine."""
    client = _compose_client()
    if client is None:
        pytest.skip("no docker compose client installed")
    done = subprocess.run([*client, "-f", str(COMPOSE), "--env-file", str(DOCKER / ".env.example"), "config", "-q"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _compose_client() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return [shutil.which("docker-compose")] if shutil.which("docker-compose") else None


def test_services_are_the_one_machine_stack_on_the_same_ports(services):
    long_running = set(services) - {"postgres", *ONE_SHOT}
    assert long_running == {*local_stack.SERVICES, *AIRFLOW_SERVICES}
    assert _published(services["spark-master"]) == {PORTS.spark_master, PORTS.spark_ui}
    assert _published(services["spark-worker"]) == {PORTS.spark_worker_ui}
    assert _published(services["mlflow"]) == {PORTS.mlflow}
    assert _published(services["airflow-api-server"]) == {PORTS.airflow}
    master, worker = services["spark-master"]["command"], services["spark-worker"]["command"]
    assert master[1] == "org.apache.spark.deploy.master.Master" and worker[1] == "org.apache.spark.deploy.worker.Worker"
    assert _option(master, "--port") == str(PORTS.spark_master) and _option(master, "--webui-port") == str(PORTS.spark_ui)
    assert _option(worker, "--webui-port") == str(PORTS.spark_worker_ui)
    assert f"spark://spark-master:{PORTS.spark_master}" in worker


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_mlflow_serves_its_artifacts_from_postgresql(services):
    mlflow = services["mlflow"]
    cmd = mlflow["command"]
    assert cmd[:2] == ["mlflow", "server"] and "--serve-artifacts" in cmd and _option(cmd, "--port") == str(PORTS.mlflow)
    assert re.fullmatch(r"postgresql\+psycopg://mlflow:.*@postgres:5432/mlflow", _option(cmd, "--backend-store-uri"))
    artifacts = _option(cmd, "--artifacts-destination")
    assert any(v.split(":")[1] == artifacts for v in mlflow["volumes"])


def test_the_settings_the_stack_changes_name_the_compose_services(services):
    """What ``stack up`` points elsewhere (Spark master, MLflow, alerts DB) is set in every service
    that runs FleetWatch code, to the service that plays that part, on the stack's port."""
    base = Settings(home=Path("/nowhere"))
    changed = {k for k, v in settings_env(local_stack.stack_settings(base, local_stack.StackConfig())).items()
               if settings_env(base)[k] != v}
    assert changed == {"FLEETWATCH_SPARK_MASTER", "FLEETWATCH_MLFLOW_TRACKING_URI", "FLEETWATCH_ALERTS_DB_URL"}
    for name in (*AIRFLOW_SERVICES, "spark-worker"):
        env = _env(services[name])
        assert changed <= set(env), name
        assert env["FLEETWATCH_SPARK_MASTER"] == f"spark://spark-master:{PORTS.spark_master}"
        assert env["FLEETWATCH_MLFLOW_TRACKING_URI"] == f"http://mlflow:{PORTS.mlflow}"
        assert re.fullmatch(r"postgresql\+psycopg://\w+:.*@postgres:5432/alerts", env["FLEETWATCH_ALERTS_DB_URL"])
    for name in AIRFLOW_SERVICES:
        conn = json.loads(_env(services[name])[f"AIRFLOW_CONN_{base.spark_conn_id.upper()}"])
        assert conn == {"conn_type": "spark", "host": f"spark://spark-master:{PORTS.spark_master}"}


def test_airflow_services_get_every_setting_airflow_up_writes(services, tmp_path):
    """Each key of the ``airflow.cfg`` that ``fleetwatch airflow up`` writes is an ``AIRFLOW__`` variable of
    every Airflow service, or, for the secrets the scheduler and API server must share, written to
    ``airflow.cfg`` on the shared volume by airflow-init."""
    import configparser

    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(airflow_stack.write_config(Settings(home=tmp_path), db_url="postgresql://airflow@db/airflow"))
    keys = {(section, key) for section in cfg.sections() for key in cfg[section]}
    secrets = SHARED_SECRETS
    assert secrets <= keys
    init_script = "\n".join(services["airflow-init"]["command"])
    for section, key in secrets:
        assert re.search(rf"\[{section}\][^\[]*\b{key} =", init_script.replace("\\n", "\n")), (section, key)
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        env = _env(services[name])
        missing = {f"AIRFLOW__{s.upper()}__{k.upper()}" for s, k in keys - secrets} - set(env)
        assert not missing, (name, missing)
        for s, k in (("core", "executor"), ("core", "load_examples"), ("core", "dags_are_paused_at_creation")):
            assert env[f"AIRFLOW__{s.upper()}__{k.upper()}"] == cfg[s][k]
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://airflow:")
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")


def test_no_loopback_spark_address(services):
    for name in SPARK_SERVICES:
        service = services[name]
        assert _env(service)["SPARK_LOCAL_IP"] == service["hostname"] == name
    for name, service in services.items():
        if name == "mlflow":
            continue  # its --allowed-hosts lists the Host headers a browser on the host sends
        text = json.dumps({k: service.get(k) for k in ("environment", "command")})
        assert "127.0.0.1" not in text, name
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert not re.search(r"^\s*ENV[^#]*SPARK_LOCAL_IP", dockerfile, flags=re.M)


def test_images_volumes_and_databases(services, compose):
    for name, service in services.items():
        if name == "postgres":
            continue
        assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}, name
    assert (COMPOSE.parent / services["mlflow"]["build"]["context"] / "docker" / "Dockerfile").is_file()
    for name in (*AIRFLOW_SERVICES, "spark-worker"):
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        env = _env(services[name])
        assert mounts[env["FLEETWATCH_LAKE_ROOT"]] == "lake" and mounts[env["FLEETWATCH_SPECS_DIR"]] == "specs", name
    assert {"lake", "specs", "mlartifacts", "airflow-home", "pgdata"} <= set(compose["volumes"])
    init = (DOCKER / "postgres-init" / "10-databases.sh").read_text()
    assert {m for m in re.findall(r"^create (\w+) ", init, flags=re.M)} == set(local_stack.DATABASES)
    assert "./postgres-init:/docker-entrypoint-initdb.d:ro" in services["postgres"]["volumes"]
