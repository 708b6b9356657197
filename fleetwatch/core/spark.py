"""Spark sessions built from settings, and the environment spark-submit needs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from fleetwatch.core.errors import EnvironmentProblem
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


def spark_conf(settings: Settings) -> dict[str, str]:
    """Spark configuration every FleetWatch job runs with (also passed to spark-submit)."""
    return {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.adaptive.enabled": "true",
        "spark.executorEnv.PYSPARK_PYTHON": sys.executable,
    }


def get_spark(settings: Settings, app_name: str = "fleetwatch"):
    """The active session, or a new one on ``settings.spark_master``."""
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
