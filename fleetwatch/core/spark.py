"""Spark sessions built from settings (local, a cluster, or a Spark Connect server), the
environment spark-submit needs, and the few JVM-side operations a Connect session lacks."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from fleetwatch.core.errors import ConnectServerUnavailable, EnvironmentProblem, FleetWatchError
from fleetwatch.core.settings import Settings


def check_java() -> None:
    """Fail with one clear line when Java 17+ is missing (Spark 4 needs it)."""
    java = shutil.which("java", path=_java_path())
    if java is None:
        raise EnvironmentProblem(
            "Java 17 or newer is needed by Spark and was not found: install OpenJDK 17 "
            "(e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    m = re.search(r'version "(\d+)', out)
    if m and int(m.group(1)) < 17:
        raise EnvironmentProblem(f"Spark needs Java 17 or newer; {java} is Java {m.group(1)}: install OpenJDK 17")


def _java_path() -> str:
    home = os.environ.get("JAVA_HOME")
    path = os.environ.get("PATH", "")
    return f"{home}/bin:{path}" if home else path


def spark_env() -> dict[str, str]:
    """Variables that make Spark's Python workers use this interpreter (venv or not)."""
    return {
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
    }


def session_conf(settings: Settings) -> dict[str, str]:
    """The SQL configuration of a FleetWatch session: what a Spark Connect session may set for itself."""
    return {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.adaptive.enabled": "true",
    }


def spark_conf(settings: Settings) -> dict[str, str]:
    """Spark configuration every FleetWatch job runs with (also passed to spark-submit and to a
    Spark Connect server at its start: memory and the workers' interpreter are fixed there)."""
    conf = {
        **session_conf(settings),
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.ui.showConsoleProgress": "false",
        "spark.executorEnv.PYSPARK_PYTHON": sys.executable,
    }
    if settings.spark_driver_java_options:
        conf["spark.driver.extraJavaOptions"] = settings.spark_driver_java_options
    return conf


def get_spark(settings: Settings, app_name: str = "fleetwatch"):
    """A session on the Spark Connect server when ``settings.spark_connect_url`` is set; else the
    active session, or a new one on ``settings.spark_master``."""
    if settings.spark_connect_url:
        return _connect(settings, app_name, new=False)
    check_java()
    os.environ.update(spark_env())
    from pyspark.sql import SparkSession  # lazy: PySpark loads slowly, and after spark_env() is set

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(app_name).master(settings.spark_master)
    for key, value in spark_conf(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


_CONNECT_MARK = "SPARK_CONNECT_MODE_ENABLED"


@contextmanager
def connect_session(settings: Settings, app_name: str) -> Iterator:
    """A new session on the Spark Connect server at ``settings.spark_connect_url`` for one step.

    The session is released on the server afterwards (the server and its cached state for other
    sessions stay). PySpark marks a process that opened a Connect session as a Connect process
    (``SPARK_CONNECT_MODE_ENABLED``), which its classic API and any spark-submit started from it
    would inherit; the mark is undone once the session is released.
    """
    marked = os.environ.get(_CONNECT_MARK)
    spark = _connect(settings, app_name, new=True)
    try:
        yield spark
    finally:
        spark.stop()
        if marked is None:
            os.environ.pop(_CONNECT_MARK, None)


def _connect(settings: Settings, app_name: str, *, new: bool):
    from pyspark.errors import PySparkException  # lazy: PySpark loads slowly
    from pyspark.sql import SparkSession  # lazy: as above

    url = settings.spark_connect_url
    _reachable(url)
    builder = SparkSession.builder.remote(url)
    try:
        spark = builder.create() if new else builder.getOrCreate()
        for key, value in session_conf(settings).items():
            spark.conf.set(key, value)
    except PySparkException as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ConnectServerUnavailable(
            f"the Spark Connect server at {url} (FLEETWATCH_SPARK_CONNECT_URL) did not answer: {reason}"
        ) from None
    spark.addTag(_tag(app_name))  # the server's UI shows each step's jobs under this tag
    return spark


def _reachable(url: str) -> None:
    """Fail at once when nothing listens at ``url`` (the Connect client would retry for minutes)."""
    parsed = urlparse(url.split(";", 1)[0])
    host, port = parsed.hostname or "localhost", parsed.port or 15002
    try:
        socket.create_connection((host, port), timeout=10).close()
    except OSError as exc:
        raise ConnectServerUnavailable(
            f"the Spark Connect server at {url} (FLEETWATCH_SPARK_CONNECT_URL) did not answer: {exc}"
        ) from None


def _tag(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:120] or "fleetwatch"


def is_connect(spark) -> bool:
    """Whether ``spark`` is a Spark Connect session (no JVM in this process)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def task_slots(spark) -> int:
    """How many tasks the session runs at once (its default parallelism), to share work over.

    A Spark Connect session has no SparkContext here: its ``spark.default.parallelism`` when set,
    else the cores of its ``local[N]`` master, else this machine's cores.
    """
    if not is_connect(spark):
        return max(1, spark.sparkContext.defaultParallelism)
    value = spark.conf.get("spark.default.parallelism", None)
    if value:
        return max(1, int(value))
    local = re.fullmatch(r"local\[(\d+|\*)(?:,\s*\d+)?\]", spark.conf.get("spark.master", "") or "")
    if local and local.group(1) != "*":
        return max(1, int(local.group(1)))
    return os.cpu_count() or 1


def application_id(spark) -> str:
    """The Spark application a session runs in (the same for every session of one Connect server)."""
    return spark.conf.get("spark.app.id")


def hadoop_fs(spark, path: str):
    """``(FileSystem, Path)`` of a Hadoop URI through the session's JVM, for the lake's file operations.

    A Spark Connect session has no JVM on this side: a lake on a Hadoop URI (``s3a://``) needs
    spark-submit jobs; a local lake (or a shared mount) works over Connect.
    """
    if spark is None:
        raise FleetWatchError(f"{path} is not a local path: this operation needs a Spark session")
    if is_connect(spark):
        raise FleetWatchError(
            f"{path} is not a local path: file operations on a Hadoop URI need a classic Spark session; "
            "unset FLEETWATCH_SPARK_CONNECT_URL to run the jobs with spark-submit"
        )
    jvm = spark._jvm
    p = jvm.org.apache.hadoop.fs.Path(path)
    return p.getFileSystem(spark._jsc.hadoopConfiguration()), p
