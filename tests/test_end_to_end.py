"""Three small nights through the real DAGs: Spark jobs, MLflow (SQLite), alerts on PostgreSQL.

The first night also stands for the nightly DAG before any training: it validates and builds
features, then skips the drift check, score and publish.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from fleetwatch.app.orchestration import nightly_dag_id, nightly_logical_date, task_states
from fleetwatch.core.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START = dt.date(2026, 1, 1)
DAYS = [START + dt.timedelta(days=i) for i in range(3)]
CONTENT = ["entity_id", "dt", "start_ts", "end_ts", "n_points", "peak_score", "severity", "top_metrics",
           "model_name", "model_version", "feature_view", "run_id"]


@pytest.fixture
def e2e_settings(settings, pg_url, monkeypatch) -> Settings:
    monkeypatch.setenv("FLEETWATCH_ALERTS_DB_URL", pg_url)
    monkeypatch.setenv("FLEETWATCH_MIN_HISTORY_DAYS", "1")
    monkeypatch.setenv("FLEETWATCH_TRAINING_WINDOW_DAYS", "2")
    monkeypatch.setenv("FLEETWATCH_SPARK_MASTER", "local[2]")
    return Settings()


def test_three_nights_retrain_and_rerun(e2e_settings):
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
    assert [run_nightly(s, "e2e", d) for d in DAYS[:2]] == ["success", "success"]
    assert not registry.has_champion(s, "e2e")  # history nights only validate and build features
    assert task_states(nightly_dag_id("e2e"), nightly_logical_date(s, DAYS[0])) == {
        "validate": "success", "features": "success", "has_champion": "success", "drift_check": "skipped",
        "request_retrain": "skipped", "score": "skipped", "publish": "skipped",
    }
    lake = Lake(s.lake_root)
    view = view_for(load_spec(s.specs_dir, "e2e"))
    for day in DAYS[:2]:
        raw = pd.read_parquet(lake.raw("e2e", day))
        featured = pd.read_parquet(lake.features("e2e", view.ref, day))
        assert sorted(featured["entity_id"].unique()) == sorted(raw["entity_id"].unique())
        assert not Path(lake.partition("scores", "e2e", day)).exists()
    assert lake.days(lake.zone("validation", "e2e")) == DAYS[:2]
    assert run_retrain(s, "e2e", DAYS[1]) == "success"
    assert str(registry.champion_version(s, "e2e")) == "1"

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
