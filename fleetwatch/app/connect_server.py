"""A long-lived Spark Connect server for the DAG tasks: one Spark application (one JVM) for every
step of every night, instead of a spark-submit per step.

The server is the ``SparkConnectServer`` class that ships in PySpark's jars, started with the
installed ``spark-submit`` on ``settings.spark_master`` with the jobs' Spark configuration
(driver memory and the Python workers' interpreter are fixed at its start). Its Python workers
import the FleetWatch code of this installation, so start it from the same environment as
Airflow. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fleetwatch.app import background
from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.settings import Settings
from fleetwatch.core.spark import check_java, spark_conf, spark_env

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
DEFAULT_PORT = 15002  # Spark Connect's own default


@dataclass(frozen=True)
class ConnectServer:
    """A started server: its URL (``sc://127.0.0.1:<port>``), process id and log."""

    url: str
    pid: int
    log: Path


def url_of(port: int) -> str:
    return f"sc://127.0.0.1:{port}"


def server_command(settings: Settings, port: int) -> list[str]:
    """The ``spark-submit`` command line that starts the server on ``port``."""
    conf = {
        **spark_conf(settings),
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
    }
    args = [str(Path(sys.executable).parent / "spark-submit"), "--class", SERVER_CLASS,
            "--name", "fleetwatch-connect", "--master", settings.spark_master]
    for key, value in conf.items():
        args += ["--conf", f"{key}={value}"]
    return args


def start(settings: Settings, *, port: int = DEFAULT_PORT, log: Path, pid_file: Path | None = None,
          wait_s: float = 180.0) -> ConnectServer:
    """Start the server in its own process group, logging to ``log``; returns once it listens.

    Raises ``FleetWatchError`` when the port is taken, or when the server exits or does not
    listen within ``wait_s`` (naming its log).
    """
    check_java()
    if _listening(port):
        raise FleetWatchError(f"port {port} on 127.0.0.1 is taken: choose another Spark Connect port")
    pid = background.start(server_command(settings, port), env={**os.environ, **spark_env()}, cwd=Path.cwd(), log=log,
                           pid_file=pid_file if pid_file is not None else log.with_suffix(".pid"))
    deadline = time.monotonic() + wait_s
    while not _listening(port):
        alive = background.running(pid, b"")  # alive at all: its command line changes as spark-submit execs
        if not alive or time.monotonic() > deadline:
            stop(pid)
            what = f"the Spark Connect server on port {port}"
            if not alive:
                raise FleetWatchError(background.exit_message(what, log))
            raise FleetWatchError(f"{what} did not listen within {wait_s:.0f} s: see {log}")
        time.sleep(0.5)
    return ConnectServer(url_of(port), pid, log)


def stop(pid: int, wait_s: float = 30.0) -> bool:
    """Stop the server started as ``pid`` (its whole process group: SIGTERM, then SIGKILL); whether it ran."""
    was_running = is_running(pid)
    background.stop(pid, wait_s)
    return was_running


def is_running(pid: int | None) -> bool:
    """Whether ``pid`` is a live Spark Connect server (not a PID reused by another program)."""
    return background.running(pid, SERVER_CLASS.encode())


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0

