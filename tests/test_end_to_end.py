"""Small nights through the real DAGs: Spark jobs, MLflow (SQLite), alerts on PostgreSQL.

The history night stands for the nightly DAG before any training: it validates and builds
features, then skips the drift check, score and publish. The retrain trains on it; the scored
night is then run twice.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pandas as pd
import pytest

from fleetwatch.app.orchestration import nightly_dag_id, nightly_logical_date, task_states
from fleetwatch.core.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START = dt.date(2026, 1, 1)
DAYS = [START + dt.timedelta(days=i) for i in range(3)]
HISTORY = DAYS[1:2]  # one history night (its features look back into DAYS[0]'s raw rows): what the retrain trains on
CONTENT = ["entity_id", "dt", "start_ts", "end_ts", "n_points", "peak_score", "severity", "top_metrics",
           "model_name", "model_version", "feature_view", "run_id"]


@pytest.fixture
def e2e_settings(settings, pg_url, monkeypatch) -> Settings:
    monkeypatch.setenv("FLEETWATCH_ALERTS_DB_URL", pg_url)
    monkeypatch.setenv("FLEETWATCH_MIN_HISTORY_DAYS", "1")
    monkeypatch.setenv("FLEETWATCH_TRAINING_WINDOW_DAYS", "1")
    monkeypatch.setenv("FLEETWATCH_SPARK_MASTER", "local[2]")
    return Settings()


def test_a_history_night_retrain_then_a_scored_night_and_its_rerun(e2e_settings):
    from feature_store.views import view_for
    from fleetwatch.app.orchestration import prepare_airflow, run_nightly, run_retrain
    from fleetwatch.core.alerts_store import AlertsStore
    from fleetwatch.core.lake import Lake
    from fleetwatch.core.specs import load_spec
    from fleetwatch.core.synthetic import generate_fleet, load_labels
    from models import registry

    s = e2e_settings
    generate_fleet(s, "e2e", entities=4, days=3, start=START, seed=2)
    labels = load_labels(s, "e2e")
    # the named anomaly: seed 2 injects a collective shift of cpu and latency into srv-001 on day 3
    target = labels[(labels["kind"] == "collective") & (labels["entity_id"] == "srv-001")].iloc[0]
    assert target["start_ts"].date() == DAYS[2] and target["metrics"] == "cpu_pct,latency_ms"

    prepare_airflow(s)
    assert [run_nightly(s, "e2e", d) for d in HISTORY] == ["success"]
    assert not registry.has_champion(s, "e2e")  # history nights only validate and build features
    assert task_states(nightly_dag_id("e2e"), nightly_logical_date(s, HISTORY[0])) == {
        "validate": "success", "features": "success", "has_champion": "success", "drift_check": "skipped",
        "request_retrain": "skipped", "score": "skipped", "publish": "skipped",
    }
    lake = Lake(s.lake_root)
    view = view_for(load_spec(s.specs_dir, "e2e"))
    for day in HISTORY:
        raw = pd.read_parquet(lake.raw("e2e", day))
        featured = pd.read_parquet(lake.features("e2e", view.ref, day))
        assert sorted(featured["entity_id"].unique()) == sorted(raw["entity_id"].unique())
        assert not Path(lake.partition("scores", "e2e", day)).exists()
    assert lake.days(lake.zone("validation", "e2e")) == HISTORY
    before_retrain = time.time()
    assert run_retrain(s, "e2e", HISTORY[-1]) == "success"
    assert str(registry.champion_version(s, "e2e")) == "1"
    _assert_mlflow_lineage(s, view, lake, before_retrain)

    assert run_nightly(s, "e2e", DAYS[2]) == "success"
    store = AlertsStore(s.alerts_db_url)
    first = store.frame(dataset="e2e")
    assert len(first) > 0 and set(first["dt"]) == {DAYS[2]}
    hits = first[(first["entity_id"] == target["entity_id"])
                 & (first["start_ts"] <= target["end_ts"]) & (first["end_ts"] >= target["start_ts"])]
    assert len(hits) >= 1, f"collective anomaly {target['anomaly_id']} was not alerted"
    assert set(hits.iloc[0]["top_metrics"].split(",")) & {"cpu_pct", "latency_ms"}
    assert (first["model_version"] == "1").all() and (first["feature_view"] == "telemetry@v1").all()

    assert run_nightly(s, "e2e", DAYS[2]) == "success"  # a rerun of the night
    again = store.frame(dataset="e2e")
    pd.testing.assert_frame_equal(
        first[CONTENT].sort_values(["entity_id", "start_ts"]).reset_index(drop=True),
        again[CONTENT].sort_values(["entity_id", "start_ts"]).reset_index(drop=True),
    )
    # one MLflow run per night, reused by the rerun: what was scored and how long entities were in alarm
    client = registry.client(s)
    exp = client.get_experiment_by_name(registry.experiment_name("e2e"))
    nights = client.search_runs([exp.experiment_id], "tags.fleetwatch_kind = 'night'")
    [night] = [r for r in nights if r.data.tags["day"] == str(DAYS[2])]
    scores = pd.read_parquet(lake.partition("scores", "e2e", DAYS[2]), columns=["entity_id", "flagged", "alarm_cap"])
    assert night.data.metrics["rows_scored"] == len(scores)
    assert night.data.metrics["flagged_rows"] == scores["flagged"].sum() > 0
    assert night.data.metrics["entities_capped"] == scores.loc[scores["alarm_cap"] > 1, "entity_id"].nunique()
    assert night.data.metrics["alerts"] == len(again) and night.data.metrics["alarm_minutes"] > 0
    assert night.data.tags["model_version"] == "1" and night.data.tags["model_uri"] == "models:/fleetwatch-e2e/1"


def _assert_mlflow_lineage(s, view, lake, before_retrain: float) -> None:
    """The registered version as an MLflow user inspects it: signature, dataset inputs, duration,
    the classic (non-GenAI) experiment view, and a manifest that names the model store."""
    import mlflow

    from models import registry

    client = registry.client(s)
    exp = client.get_experiment_by_name(registry.experiment_name("e2e"))
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    version = client.get_model_version(registry.model_name("e2e"), "1")
    run = client.get_run(version.run_id)
    assert before_retrain * 1000 <= run.info.start_time < run.info.end_time
    inputs = {d.dataset.name for d in run.inputs.dataset_inputs}
    assert inputs == {f"e2e/{view.ref}/dt={d}" for d in HISTORY}
    signature = mlflow.models.get_model_info(f"models:/{registry.model_name('e2e')}/1").signature
    names = signature.inputs.input_names()
    assert names[:2] == ["entity_id", "ts"] and set(view.feature_columns) <= set(names)
    assert "score" in signature.outputs.input_names()
    champ = registry.champion(s, "e2e")
    manifest = json.loads((Path(champ.bundle_dir) / "manifest.json").read_text())
    assert manifest["location"].startswith(f"{lake.root}/models/e2e/") and Path(manifest["location"], "parts").is_dir()
    assert sorted(manifest["entities"]) == sorted(pd.read_parquet(lake.raw("e2e", DAYS[0]))["entity_id"].unique())
