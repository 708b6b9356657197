"""The DAG tasks on a long-lived Spark Connect server: the same alerts as the per-step Spark
sessions, every step in the server's one Spark application, and the DAG built for either way."""

from __future__ import annotations

import datetime as dt
import os

import pandas as pd
import pytest

from fleetwatch.app import background, connect_server
from fleetwatch.core.settings import Settings

START = dt.date(2026, 1, 1)
NIGHT = START + dt.timedelta(days=2)
CONTENT = ["entity_id", "dt", "start_ts", "end_ts", "n_points", "peak_score", "severity", "top_metrics",
           "model_name", "model_version", "feature_view", "run_id"]
SPARK_TASKS = ("validate", "features", "drift_check", "score")


@pytest.fixture(autouse=True)
def restore_environ():
    """prepare_airflow exports Airflow's and FleetWatch's variables process-wide: undo that."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real Spark Connect server on a free port, stopped after the module."""
    home = tmp_path_factory.mktemp("connect-server")
    settings = Settings(home=home, spark_master="local[2]", spark_shuffle_partitions=2)
    started = connect_server.start(settings, port=background.free_port(), log=home / "server.log")
    yield started
    connect_server.stop(started.pid)
    assert not connect_server.is_running(started.pid)


def test_dags_run_their_jobs_on_spark_connect_only_when_a_server_is_set(settings):
    from fleetwatch.app.orchestration import DAGS_FOLDER, airflow_env, nightly_dag_id, retrain_dag_id
    from fleetwatch.core.specs import DatasetSpec, MetricSpec, write_spec

    write_spec(settings.specs_dir, DatasetSpec(name="alpha", metrics=[MetricSpec(name="cpu")]))
    os.environ.update(airflow_env(Settings(home=settings.home, spark_connect_url="sc://127.0.0.1:15999")))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}
    nightly, retrain = bag.dags[nightly_dag_id("alpha")], bag.dags[retrain_dag_id("alpha")]
    for task in [*(nightly.task_dict[t] for t in SPARK_TASKS), retrain.task_dict["train"]]:
        assert type(task).__name__ == "ConnectJobOperator", task.task_id
        assert task.connect_url == "sc://127.0.0.1:15999" and task.retries >= 1
    assert nightly.task_dict["score"].job == "score_partition" and nightly.task_dict["score"].date == "{{ partition_day }}"


def test_a_connect_url_that_is_not_sc_is_refused(settings):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="spark_connect_url"):
        Settings(home=settings.home, spark_connect_url="http://127.0.0.1:15002")


@pytest.mark.integration
def test_a_server_that_does_not_answer_is_one_line_naming_it(settings):
    from fleetwatch.core.errors import ConnectServerUnavailable
    from fleetwatch.core.spark import connect_session

    url = f"sc://127.0.0.1:{background.free_port()}"
    with pytest.raises(ConnectServerUnavailable, match=f"Spark Connect server at {url}.*did not answer"):
        with connect_session(Settings(home=settings.home, spark_connect_url=url), "nothing"):
            pass
    assert "SPARK_CONNECT_MODE_ENABLED" not in os.environ


@pytest.mark.integration
@pytest.mark.slow
def test_nightly_dag_on_spark_connect_gives_the_alerts_of_per_step_sessions(settings, spark, server, monkeypatch):
    """The night through the DAG on the server equals the same jobs run in a classic session (what each
    spark-submit runs), and every Spark step ran in the server's one application."""
    from feature_store.pipeline import build_features
    from fleetwatch.app.orchestration import nightly_dag_id, nightly_logical_date, run_nightly, task_states
    from fleetwatch.core.alerts_store import AlertsStore
    from fleetwatch.core.errors import FleetWatchError
    from fleetwatch.core.lake import Lake
    from fleetwatch.core.publishing import publish_alerts
    from fleetwatch.core.quality import validate_partition
    from fleetwatch.core.spark import application_id, connect_session, is_connect
    from fleetwatch.core.synthetic import generate_fleet, load_labels
    from models.drift_check import check_drift
    from models.scoring import score_partition
    from models.training import train_models

    for key, value in {"MIN_HISTORY_DAYS": "1", "TRAINING_WINDOW_DAYS": "2", "SPARK_MASTER": "local[2]",
                       "SPARK_SHUFFLE_PARTITIONS": "2"}.items():
        monkeypatch.setenv(f"FLEETWATCH_{key}", value)
    s = Settings()
    classic_app = spark.sparkContext.applicationId
    generate_fleet(s, "cx", entities=4, days=3, start=START, seed=2)
    labels = load_labels(s, "cx")
    target = labels[(labels["kind"] == "collective") & (labels["entity_id"] == "srv-001")].iloc[0]
    assert target["start_ts"].date() == NIGHT
    for day in (START, START + dt.timedelta(days=1)):
        build_features(spark, s, "cx", day)
    train_models(spark, s, "cx", START + dt.timedelta(days=1))
    for step in (validate_partition, build_features, check_drift, score_partition):
        step(spark, s, "cx", NIGHT)
    publish_alerts(s, "cx", NIGHT)
    store = AlertsStore(s.alerts_db_url)
    lake = Lake(s.lake_root)
    expected = store.frame(dataset="cx")
    expected_scores = pd.read_parquet(lake.partition("scores", "cx", NIGHT))
    assert (expected["entity_id"] == target["entity_id"]).any()

    monkeypatch.setenv("FLEETWATCH_SPARK_CONNECT_URL", server.url)
    connected = Settings()
    assert run_nightly(connected, "cx", NIGHT) == "success"

    assert set(task_states(nightly_dag_id("cx"), nightly_logical_date(connected, NIGHT)).values()) <= {"success", "skipped"}
    again = store.frame(dataset="cx")
    pd.testing.assert_frame_equal(_content(expected), _content(again))
    scores = pd.read_parquet(lake.partition("scores", "cx", NIGHT))
    pd.testing.assert_frame_equal(_rows(expected_scores), _rows(scores))
    assert "SPARK_CONNECT_MODE_ENABLED" not in os.environ and not is_connect(spark)
    with connect_session(connected, "test") as session:
        server_app = application_id(session)
        with pytest.raises(FleetWatchError, match="s3a://lake/raw is not a local path.*FLEETWATCH_SPARK_CONNECT_URL"):
            Lake("s3a://lake").exists("s3a://lake/raw", session)
    returned = _returned(nightly_dag_id("cx"), nightly_logical_date(connected, NIGHT))
    assert {returned[t]["spark_application"] for t in SPARK_TASKS} == {server_app}
    assert server_app != classic_app
    assert returned["score"]["result"].startswith(f"score_partition cx {NIGHT}: ")


def _content(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[CONTENT].sort_values(["entity_id", "start_ts"]).reset_index(drop=True)


def _rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["entity_id", "ts"]).reset_index(drop=True)[sorted(frame.columns)]


def _returned(dag_id: str, logical_date: dt.datetime) -> dict:
    """Task id -> the value (XCom) each task of the run at ``logical_date`` returned."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    run_id = DagRun.find(dag_id=dag_id, logical_date=logical_date)[0].run_id
    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=run_id, dag_ids=dag_id, key="return_value")).all()
        return {row.task_id: XComModel.deserialize_value(row) for row in rows}
