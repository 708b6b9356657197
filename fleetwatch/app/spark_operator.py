"""The Airflow operator that runs one FleetWatch Spark job with spark-submit.

Imported by DAG files only (it imports Airflow and the Spark provider, not PySpark).
"""

from __future__ import annotations

import os

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk.exceptions import AirflowFailException
from airflow.sdk.log import mask_secret

from fleetwatch.app.orchestration import job_path, partition_day
from fleetwatch.core.secrets import secrets_in
from fleetwatch.core.settings import Settings
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
