"""
### FleetWatch retrain: `window_end >> train`

One DAG per dataset spec. It trains every entity's models on the feature window that ends at
the partition chosen by `window_end`, logs them to MLflow as a new version of the dataset's
registered model (alias `challenger`) and promotes it to `champion` when it passes the gate.

It runs weekly (Sundays 03:00 UTC, `FLEETWATCH_RETRAIN_CRON`) or as soon as a nightly run
reports drift on the dataset's Asset `fleetwatch://drift/<dataset>`. The window ends at the
`day` given in the run's conf, else at the drifted partition named by the drift event, else
at the last complete day before the run.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task

from fleetwatch.app.dag_tasks import Settings, datasets, get_settings
from fleetwatch.app.orchestration import DEFAULT_ARGS, drift_asset, retrain_dag_id
from fleetwatch.app.orchestration import window_end as resolve_window_end
from fleetwatch.app.spark_operator import spark_job


def retrain(settings: Settings, dataset: str):
    @dag(
        dag_id=retrain_dag_id(dataset),
        schedule=AssetOrTimeSchedule(
            timetable=CronTriggerTimetable(settings.retrain_cron, timezone="UTC"),
            assets=drift_asset(dataset),
        ),
        start_date=dt.datetime.combine(settings.schedule_start, dt.time(), tzinfo=dt.UTC),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["fleetwatch", dataset],
        doc_md=__doc__,
    )
    def pipeline():
        @task
        def window_end(dag_run=None, triggering_asset_events=None, logical_date=None) -> str:
            events = [e for group in (triggering_asset_events or {}).values() for e in group]
            return resolve_window_end(dag_run.conf, events, logical_date or dag_run.run_after).isoformat()

        spark_job(task_id="train", job="train_models", dataset=dataset, settings=settings, date=window_end())

    return pipeline()


_settings = get_settings()
for _dataset in datasets(_settings):
    globals()[retrain_dag_id(_dataset)] = retrain(_settings, _dataset)
