"""
### FleetWatch nightly: `validate >> features >> has_champion >> [drift_check, score >> publish] >> request_retrain`

One DAG per dataset spec. Each night it checks the new raw partition against the dataset's
spec, builds its features, and, once the dataset has a champion model, checks the partition for
drift against the champion's training window, scores it and publishes its incidents to the
alerts table.

- The partition date D: the scheduled run for the interval [D 01:30, D+1 01:30) UTC has
  logical date D 01:30, so it starts after day D is complete. A manual run takes the `day` of
  its conf (the trigger form's field), else its logical date's day, else, without a logical
  date, yesterday (UTC): the newest complete partition.
- Runs go one at a time and catch up from `FLEETWATCH_SCHEDULE_START`: the features of D
  read the tail of D-1.
- A partition that fails validation fails the run at once (it is quarantined and its report
  kept); nothing downstream is written. Every step replaces its partition whole, so a retry
  or a rerun gives the same result.
- Before the first training (no champion yet) the run only validates and builds features;
  `has_champion` skips the drift check, score and publish and says so in its log.
- `request_retrain` emits the Asset event `fleetwatch://drift/<dataset>` (extra `{"day": D}`),
  which triggers the retrain DAG, when the drift check found drifted entities or entities
  ready to graduate from the fleet model to their own, or when a persistent alert open on D
  asks its entity to adapt (labelled `new_normal`, lasted `FLEETWATCH_PERSISTENT_ADAPT_DAYS`
  nights, or its entity over its alarm-share budget); otherwise it is skipped (no event).
"""

from __future__ import annotations

import datetime as dt
import logging

from airflow.sdk import CronDataIntervalTimetable, Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from fleetwatch.app import dag_tasks
from fleetwatch.app.orchestration import DEFAULT_ARGS, drift_asset, nightly_dag_id, partition_day
from fleetwatch.app.spark_operator import spark_job

log = logging.getLogger(__name__)


def nightly(settings: dag_tasks.Settings, dataset: str):
    @dag(
        dag_id=nightly_dag_id(dataset),
        schedule=CronDataIntervalTimetable(settings.nightly_cron, timezone="UTC"),
        start_date=dt.datetime.combine(settings.schedule_start, dt.time(), tzinfo=dt.UTC),
        catchup=True,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["fleetwatch", dataset],
        doc_md=__doc__,
        params={"day": Param(None, type=["null", "string"], format="date",
                             description="Partition to process (YYYY-MM-DD); empty: the run's logical date, else yesterday.")},
    )
    def pipeline():
        validate = spark_job(task_id="validate", job="validate_partition", dataset=dataset, settings=settings)
        features = spark_job(task_id="features", job="build_features", dataset=dataset, settings=settings)
        drift_check = spark_job(task_id="drift_check", job="check_drift", dataset=dataset, settings=settings)
        score = spark_job(task_id="score", job="score_partition", dataset=dataset, settings=settings)

        @task.short_circuit
        def has_champion() -> bool:
            found = dag_tasks.has_champion(settings, dataset)
            if not found:
                log.info("dataset %s has no champion model yet: skipping drift check, score and publish (run retrain)", dataset)
            return found

        @task
        def publish(dag_run=None) -> int:
            return dag_tasks.publish(settings, dataset, partition_day(dag_run))

        @task(outlets=[drift_asset(dataset)])
        def request_retrain(dag_run=None, outlet_events=None) -> str:
            ds = partition_day(dag_run)
            summary = dag_tasks.drift_summary(settings, dataset, ds)
            adapting = dag_tasks.adapting(settings, dataset, ds)
            if (summary is None or not summary.retrain) and not adapting:
                raise AirflowSkipException(
                    f"{dataset} dt={ds}: no drift, no entity ready to graduate or to adapt; no retrain"
                )
            outlet_events[drift_asset(dataset)].extra = {
                "day": ds, "drift_entities": summary.drift_entities if summary else [],
                "graduating": summary.graduating if summary else [], "adapting": adapting,
            }
            return f"{summary.describe() if summary else 'no drift check'}; adapting: {', '.join(adapting) or 'none'}"

        gate = validate >> features >> has_champion()
        published = publish()
        gate >> drift_check
        gate >> score >> published
        [drift_check, published] >> request_retrain()

    return pipeline()


_settings = dag_tasks.get_settings()
for _dataset in dag_tasks.datasets(_settings):
    globals()[nightly_dag_id(_dataset)] = nightly(_settings, _dataset)
