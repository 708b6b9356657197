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
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            server_command(settings, port), env={**os.environ, **spark_env()}, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    if pid_file is not None:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + wait_s
    while not _listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc.pid)
            exited = proc.returncode is not None
            why = f"exited with code {proc.returncode}" if exited else f"did not listen within {wait_s:.0f} s"
            raise FleetWatchError(f"the Spark Connect server on port {port} {why}: see {log}")
        time.sleep(0.5)
    return ConnectServer(url_of(port), proc.pid, log)


def stop(pid: int, wait_s: float = 30.0) -> bool:
    """Stop the server started as ``pid`` (its whole process group: SIGTERM, then SIGKILL); whether it ran."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        _reap(pid)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pid)
    return True


def is_running(pid: int | None) -> bool:
    """Whether ``pid`` is a live Spark Connect server (not a PID reused by another program)."""
    if pid is None:
        return False
    _reap(pid)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and SERVER_CLASS.encode() in cmdline


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
