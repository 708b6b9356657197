"""The CLI names an unknown dataset in one line, exit code 2, before any Spark starts; scores print rounded."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from fleetwatch.app import cli
from fleetwatch.core.alerts_store import AlertsStore
from fleetwatch.core.specs import DatasetSpec, MetricSpec, write_spec

DAY = dt.date(2026, 1, 2)


@pytest.fixture
def no_spark(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Spark was started")

    monkeypatch.setattr(cli, "get_spark", refuse)
    monkeypatch.setattr(cli.console, "_width", 250)


def _alert(dataset: str, entity: str, peak: float) -> dict:
    start = pd.Timestamp(DAY, tz="UTC") + pd.Timedelta(hours=1)
    metric = [{"metric": "cpu", "value": 97.5, "baseline": 40.0, "error": 3.1}]
    return {
        "dataset": dataset, "entity_id": entity, "dt": DAY, "start_ts": start, "end_ts": start + pd.Timedelta(minutes=5),
        "n_points": 6, "peak_score": peak, "severity": "high", "threshold": 2.0, "top_metrics": "cpu",
        "contributions": json.dumps(metric), "phases": json.dumps([]), "model_scope": "entity",
        "model_name": f"fleetwatch-{dataset}", "model_version": "1", "feature_view": "telemetry@v1", "run_id": "r",
    }


@pytest.mark.parametrize("command", ["validate", "features", "train", "score", "drift", "publish"])
def test_a_step_on_an_unknown_dataset_fails_before_spark(settings, no_spark, command):
    write_spec(settings.specs_dir, DatasetSpec(name="servers", metrics=[MetricSpec(name="cpu")]))

    done = CliRunner().invoke(cli.app, [command, "--dataset", "sevrers", "--date", DAY.isoformat()])

    assert done.exit_code == 2
    assert "no dataset spec for 'sevrers'" in done.output and "known datasets: servers" in done.output
    assert "Traceback" not in done.output


def test_alerts_list_names_an_unknown_dataset_and_rounds_scores(settings, no_spark):
    write_spec(settings.specs_dir, DatasetSpec(name="servers", metrics=[MetricSpec(name="cpu")]))
    AlertsStore(settings.alerts_db_url).publish_partition("retired", DAY, pd.DataFrame([_alert("retired", "e1", 3.14159265)]))
    runner = CliRunner()

    typo = runner.invoke(cli.app, ["alerts", "list", "--dataset", "typo"])
    assert typo.exit_code == 2
    assert "unknown dataset 'typo'" in typo.output and "known: retired, servers" in typo.output

    quiet = runner.invoke(cli.app, ["alerts", "list", "--dataset", "servers"])  # a spec, no alerts yet: an empty table
    assert quiet.exit_code == 0 and "retired" not in quiet.output

    listed = runner.invoke(cli.app, ["alerts", "list", "--dataset", "retired"])  # alerts of a dataset without spec
    assert listed.exit_code == 0, listed.output
    assert "3.14" in listed.output and "3.1416" not in listed.output
