"""Settings: env prefix, embedded defaults under one home, misspelt keys rejected."""

import pytest
from pydantic import ValidationError

from fleetwatch.core.settings import Settings


def test_defaults_live_under_home(settings, tmp_path):
    home = tmp_path / "home"
    assert settings.home == home
    assert settings.lake_root == str(home / "lake")
    assert settings.mlflow_tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert settings.alerts_db_url == f"sqlite:///{home / 'alerts.db'}"
    assert settings.spark_master == "local[*]"


def test_environment_overrides(settings, monkeypatch):
    monkeypatch.setenv("FLEETWATCH_SPARK_MASTER", "spark://10.0.0.1:7077")
    monkeypatch.setenv("FLEETWATCH_TRAINING_WINDOW_DAYS", "7")
    s = Settings()
    assert s.spark_master == "spark://10.0.0.1:7077" and s.training_window_days == 7


def test_misspelt_key_in_env_file_fails(settings, tmp_path):
    (tmp_path / ".env").write_text("FLEETWATCH_SPARK_MASTR=local[1]\n")
    with pytest.raises(ValidationError, match="spark_mastr"):
        Settings()


def test_password_hidden_in_printed_config(settings, monkeypatch):
    monkeypatch.setenv("FLEETWATCH_ALERTS_DB_URL", "postgresql+psycopg://u:secret@db:5432/alerts")
    items = Settings().public_items()
    assert "secret" not in items["alerts_db_url"] and "db:5432/alerts" in items["alerts_db_url"]


def test_driver_java_options_are_passed_only_when_set(settings, monkeypatch):
    from fleetwatch.core.spark import spark_conf

    monkeypatch.delenv("FLEETWATCH_SPARK_DRIVER_JAVA_OPTIONS")
    assert "spark.driver.extraJavaOptions" not in spark_conf(Settings())  # Spark's own, or spark-defaults.conf's
    monkeypatch.setenv("FLEETWATCH_SPARK_DRIVER_JAVA_OPTIONS", "-XX:TieredStopAtLevel=1 -Dfleetwatch.probe=yes")
    assert spark_conf(Settings())["spark.driver.extraJavaOptions"] == "-XX:TieredStopAtLevel=1 -Dfleetwatch.probe=yes"


def test_the_driver_jvm_runs_with_the_java_options_of_its_settings(spark):
    from conftest import TEST_JAVA_OPTIONS

    runtime = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    assert TEST_JAVA_OPTIONS in list(runtime.getInputArguments())
