"""The Airflow operators that run one FleetWatch Spark job: with spark-submit (a Spark application
per step), or in the task's own process on a Spark Connect server (one application for all steps).

Imported by DAG files only (it imports Airflow and the Spark provider, not PySpark).
"""

from __future__ import annotations

import os

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException
from airflow.sdk.log import mask_secret

from fleetwatch.app.orchestration import job_path, partition_day
from fleetwatch.core.secrets import secrets_in
from fleetwatch.core.settings import Settings, get_settings
from fleetwatch.core.spark import spark_conf, spark_env

USER_ERROR_EXIT = 2  # what jobs/_entry.py exits with on bad input
PARTITION_DAY = "{{ partition_day }}"  # the run's partition (orchestration.partition_day), set when rendering


class SparkJobOperator(SparkSubmitOperator):
    """``spark-submit jobs/<job>.py --dataset <dataset> --date <day>`` on the FleetWatch connection.

    ``<day>`` is ``date`` (a template or an upstream task's output), by default the run's partition:
    the ``day`` of its conf, else its logical date's day, else the day before a manual run
    without a logical date (``{{ ds }}`` is undefined for those in Airflow 3).

    The job's Python workers use this interpreter (``PYSPARK_PYTHON``) and the job sees the same
    ``FLEETWATCH_*`` settings as the process running the task (passed when the task runs, so no
    setting, password included, is stored with the serialized DAG). A user error (exit code 2:
    an invalid or missing partition) fails the task at once with the job's one-line error:
    retrying cannot fix the data. Other failures are retried as ``retries`` says.

    Every password in what is passed on (URL passwords in ``FLEETWATCH_*`` values, values of
    ``*PASSWORD*`` variables) is registered with Airflow's secrets masker before spark-submit
    runs, so no log line shows it: not the hook's ``Spark-Submit cmd`` (where YARN and
    Kubernetes get the environment as ``--conf spark.yarn.appMasterEnv.*``), not the job's output.
    """

    def __init__(self, *, job: str, dataset: str, settings: Settings, date: str = PARTITION_DAY, **kwargs):
        super().__init__(
            application=job_path(job),
            conn_id=settings.spark_conn_id,
            application_args=["--dataset", dataset, "--date", date],
            conf=spark_conf(settings),
            env_vars=spark_env(),
            name=f"fleetwatch-{job}-{dataset}",
            **kwargs,
        )

    def render_template_fields(self, context, jinja_env=None) -> None:
        context["partition_day"] = partition_day(context["dag_run"])
        super().render_template_fields(context, jinja_env)

    def execute(self, context):
        fleetwatch_env = {k: v for k, v in os.environ.items() if k.startswith("FLEETWATCH_")}
        self.env_vars = {**(self.env_vars or {}), **fleetwatch_env}
        mask_passed_secrets(self.env_vars, self.conf or {})
        try:
            return super().execute(context)
        except Exception:
            process = getattr(self._hook, "_submit_sp", None)
            if process is not None and process.returncode == USER_ERROR_EXIT:
                raise AirflowFailException(self._user_error_line()) from None
            raise

    def _user_error_line(self) -> str:
        lines = [line for line in self._hook._last_submit_log_lines if line.startswith("error: ")]
        return lines[-1].removeprefix("error: ") if lines else f"{self.task_id} failed with a user error"


def mask_passed_secrets(env: dict[str, str], conf: dict[str, str]) -> list[str]:
    """Register the secrets in ``env`` and ``conf`` with Airflow's log masker; returns them."""
    secrets = secrets_in({**env, **conf})
    for secret in secrets:
        mask_secret(secret)
    return secrets


class ConnectJobOperator(BaseOperator):
    """Job ``job``'s step for ``dataset`` and ``date``, run in the task's process on a Spark Connect server.

    The same step a spark-submit of ``jobs/<job>.py`` runs, with the same settings (this process's
    ``FLEETWATCH_*``), in a new session of the long-lived server at ``settings.spark_connect_url``:
    no JVM starts for the step. Airflow still has one task, log and retry count per step. A user
    error fails the task at once with its one-line error, as with spark-submit; a server that
    does not answer is retried. Returns (XCom) the step's result line and the server's Spark
    application id.
    """

    template_fields = ("date",)
    ui_color = "#fde3c8"

    def __init__(self, *, job: str, dataset: str, settings: Settings, date: str = PARTITION_DAY, **kwargs):
        super().__init__(**kwargs)
        job_path(job)  # a clear error at parse time for a job that does not exist
        self.job, self.dataset, self.date = job, dataset, date
        self.connect_url = settings.spark_connect_url

    def render_template_fields(self, context, jinja_env=None) -> None:
        context["partition_day"] = partition_day(context["dag_run"])
        super().render_template_fields(context, jinja_env)

    def execute(self, context) -> dict[str, str]:
        from fleetwatch.core.errors import ConnectServerUnavailable, FleetWatchError  # lazy: task run time only
        from jobs._entry import run_connected  # lazy: PySpark and the job's libraries load when the task runs

        settings = get_settings(spark_connect_url=self.connect_url)
        try:
            line, app = run_connected(self.job, settings, self.dataset, self.date)
        except ConnectServerUnavailable:
            raise  # the server may be back for a retry
        except FleetWatchError as exc:
            raise AirflowFailException(str(exc)) from None
        self.log.info("%s (Spark application %s at %s)", line, app, self.connect_url)
        return {"result": line, "spark_application": app}


def spark_job(*, task_id: str, job: str, dataset: str, settings: Settings, **kwargs) -> BaseOperator:
    """The task that runs ``job``: on the Spark Connect server when ``settings.spark_connect_url``
    is set, else a spark-submit of its own."""
    kind = ConnectJobOperator if settings.spark_connect_url else SparkJobOperator
    return kind(task_id=task_id, job=job, dataset=dataset, settings=settings, **kwargs)
