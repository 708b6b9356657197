"""One typed settings object: every value that differs between a laptop and production.

Read from ``FLEETWATCH_*`` environment variables and an optional ``.env`` file; defaults keep
everything embedded under one home folder (``.fleetwatch`` in the working directory).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleetwatch.core.secrets import redact_url

TASKS_PER_SLOT = 4  # the default of Settings.spark_tasks_per_slot, for callers without settings


class Settings(BaseSettings):
    """FleetWatch configuration; a misspelt ``FLEETWATCH_`` key in ``.env`` fails at start."""

    model_config = SettingsConfigDict(
        env_prefix="FLEETWATCH_", env_file=".env", extra="forbid", validate_default=True
    )

    home: Path = Field(Path(".fleetwatch"), description="Folder holding every embedded default.")
    lake_root: str = Field("", description="Lake root: a local path or a Hadoop URI (s3a://...).")
    model_store: str = Field(
        "", description="Where training tasks write entity models (default: the lake's models/ zone; a path or s3:// URI)."
    )
    specs_dir: Path | None = Field(None, description="Folder of dataset spec TOML files.")
    spark_master: str = Field("local[*]", description="Spark master: local[*], spark://, yarn, k8s://.")
    spark_driver_memory: str = Field("2g", description="spark.driver.memory for jobs.")
    spark_driver_java_options: str = Field(
        "", description="spark.driver.extraJavaOptions for jobs (empty: Spark's own). -XX:TieredStopAtLevel=1 "
        "spends less CPU compiling in a step's JVM on small partitions, and more CPU working on large ones.",
    )
    spark_shuffle_partitions: int = Field(4, ge=1, description="spark.sql.shuffle.partitions.")
    spark_tasks_per_slot: int = Field(
        TASKS_PER_SLOT, ge=1, description="Tasks per task slot of the steps that work entity by entity (features, scoring): "
        "more than one a slot evens out unequal tasks, so a step does not end on one core.",
    )
    spark_conn_id: str = Field("fleetwatch_spark", description="Airflow connection used by spark-submit.")
    spark_connect_url: str = Field(
        "", pattern=r"^(sc://.+)?$",
        description=(
            "A Spark Connect server (sc://host:port) the DAG tasks run their jobs on, one Spark application "
            "for every step; empty: each step is a spark-submit of its own."
        ),
    )
    mlflow_tracking_uri: str = Field("", description="MLflow tracking and registry URI.")
    alerts_db_url: str = Field("", description="SQLAlchemy URL of the alerts database.")
    alerts_writer_role: str = Field(
        "fleetwatch_writer", pattern=r"^[a-z_][a-z0-9_]*$",
        description="PostgreSQL role that owns the alerts tables (`fleetwatch db init`).",
    )
    alerts_analyst_role: str = Field(
        "fleetwatch_analyst", pattern=r"^[a-z_][a-z0-9_]*$",
        description="Read-only PostgreSQL role; `fleetwatch sql` runs as it where it exists.",
    )
    train_feedback: bool = Field(
        True, description="Training reads users' alert labels (fails when it cannot); false: train without them."
    )
    airflow_home: Path | None = Field(None, description="AIRFLOW_HOME used by the demo and CLI.")
    schedule_start: dt.date = Field(dt.date(2026, 1, 1), description="First partition the nightly DAGs schedule.")
    nightly_cron: str = Field("30 1 * * *", description="UTC cron of the nightly DAGs (the run for day D starts after D ends).")
    retrain_cron: str = Field("0 3 * * 0", description="UTC cron of scheduled retraining (drift events also trigger it).")
    training_window_days: int = Field(14, ge=1, description="Feature days each retrain uses.")
    min_history_days: int = Field(3, ge=1, description="Days an entity needs for its own models.")
    history_day_coverage: float = Field(
        0.95, gt=0, le=1, description="Share of a day's rows that makes it a day of history (lookback and gaps cost a few)."
    )
    incident_gap_minutes: int = Field(5, ge=0, description="Gap tolerated inside one incident.")
    publish_batch_rows: int = Field(
        2000, ge=1, description="Incidents that publishing reads, checks and writes at a time: what it holds of a night's alerts."
    )
    drift_psi_threshold: float = Field(0.25, gt=0, description="PSI above which a feature drifted.")
    drift_fleet_factor: float = Field(
        6.5, ge=1, description=(
            "A metric of an entity drifted when its PSI also exceeds this many times the fleet's median PSI of it that day."
        ),
    )
    persistent_adapt_days: int = Field(
        3, ge=1, description=(
            "Nights a persistent alert lasts before its entity adapts to it, when it is a level shift "
            "(labelling it new_normal adapts at once)."
        ),
    )
    alarm_budget_nights: int = Field(
        3, ge=1, description="Nights over which an entity's minutes in alarm are held to its alarm-share budget."
    )
    alarm_cap: bool = Field(
        True, description=(
            "Hold each entity's minutes in alarm to its alarm-share budget: on a night that puts its last "
            "alarm_budget_nights over the budget, its thresholds rise until the night is within it."
        ),
    )
    alarm_cap_level_minutes: float = Field(
        360.0, ge=0, description=(
            "A capped night keeps the minutes that stand out most from the night's own level: each row's score "
            "is measured against the median of the scores this many minutes around it (an excursion shorter "
            "than half of it stands out of its level; a lasting change of level does not). 0: against the "
            "fitted thresholds alone."
        ),
    )
    alarm_budget_incident_minutes: float = Field(
        60.0, gt=0, description=(
            "Minutes each of the spec's alarm_budget incidents a day may last: the default alarm-share budget is "
            "alarm_budget x this / 1440."
        ),
    )
    level_shift_spread_ratio: float = Field(
        2.0, gt=0, description="A level shift's new level spreads at most this many times the training spread."
    )
    level_shift_min_sigmas: float = Field(
        3.0, gt=0, description="A metric moved when its median moved more than this many training spreads."
    )
    level_shift_tail_share: float = Field(
        0.25, gt=0, le=1, description="Latest share of a deviation's rows that must still hold the new level."
    )
    train_entities_per_task: int = Field(32, ge=1, description="Entities whose models one Spark task fits together.")
    seed: int = Field(42, description="Run seed; per-entity seeds derive from it.")

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        home = self.home.expanduser().absolute()
        self.home = home
        if not self.lake_root:
            self.lake_root = str(home / "lake")
        if self.specs_dir is None:
            self.specs_dir = home / "specs"
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
        if not self.alerts_db_url:
            self.alerts_db_url = f"sqlite:///{home / 'alerts.db'}"
        if self.airflow_home is None:
            self.airflow_home = home / "airflow"
        return self

    @property
    def model_store_root(self) -> str:
        """The model store's root: ``model_store``, else ``<lake_root>/models``."""
        return self.model_store or f"{self.lake_root.rstrip('/')}/models"

    @property
    def mlflow_artifact_root(self) -> str:
        """Where MLflow stores artifacts when the tracking URI is a local database."""
        return (self.home / "mlartifacts").as_uri()

    def __repr_args__(self):
        """What ``repr`` (and so every log line that prints settings) shows: URLs without passwords."""
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if isinstance(value, str) else value

    def public_items(self) -> dict[str, str]:
        """Settings as strings, with passwords in URLs hidden, for ``fleetwatch config``."""
        out = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            text = str(value)
            if name.endswith("_url") or name.endswith("_uri"):
                text = redact_url(text)
            out[name] = text
        return out


def get_settings(**overrides) -> Settings:
    """Fresh settings from the environment (cheap; never cached, so tests can change env)."""
    return Settings(**overrides)
