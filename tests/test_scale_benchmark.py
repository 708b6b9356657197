"""The scale benchmark at a tiny size: it measures real runs (figures, not timings, are checked)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from benchmarks import night_rerun, scale, validation_warmup

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.mark.usefixtures("settings")
def test_scale_benchmark_measures_a_real_retrain_night_plain_loop_and_floor(spark, tmp_path):
    out = tmp_path / "scale.json"
    figures = scale.run([3], metrics=7, train_days=1, quick=True, interval=0.2, root=tmp_path / "bench", spark=spark, out=out,
                        keep=True)

    [result] = figures["results"]
    rows = 3 * 1440
    assert result["rows_generated"] == 2 * rows
    assert result["metrics"] == 7
    assert result["rows_scored"] == rows
    assert result["floor"]["rows"] == rows and result["floor"]["files"] >= 1
    assert result["plain"]["scored_rows"] == rows
    assert result["plain"]["train_rows"] == rows
    assert result["plain"]["features"] == 7 * 11  # the default view's columns for 7 metrics
    assert result["alerts_in_table"] == result["alerts_published"]
    assert set(result["stages"]) == {*scale.RETRAIN, *scale.NIGHT, *scale.AGAIN}
    for stage, figures_of in result["stages"].items():
        if stage != "publish":  # publishing a few alerts can finish inside one CPU tick
            assert figures_of["wall_s"] > 0 and figures_of["cpu_s"] > 0, stage
        assert figures_of["driver_peak_bytes"] > 0 and figures_of["sum_peak_bytes"] >= figures_of["driver_peak_bytes"], stage
    summary = result["summary"]
    assert summary["plain_s"] > 0 and summary["floor_s"] > 0
    assert summary["ratio_fleetwatch_to_plain"] > 0 and summary["ratio_night_to_floor"] > 0
    assert "x" in scale.table(figures["results"])
    assert json.loads(out.read_text())["results"][0]["rows_scored"] == rows  # written as each size ends

    # the kept home's night reruns in the same session, as night_rerun compares two versions of the code
    day = scale.START + dt.timedelta(days=1)
    [night] = night_rerun.rerun(tmp_path / "bench" / "n3", "scale3", day, nights=1, interval=0.2)
    assert set(night) == set(night_rerun.STAGES)
    assert all(cpu > 0 and wall > 0 for cpu, wall in night.values()), night
    assert spark.read.parquet(str(tmp_path / "bench" / "n3" / "lake" / "scores" / "scale3" / f"dt={day}")).count() == rows

    # and its first validation is timed expectation by expectation, with the uniqueness as a query
    steps = validation_warmup.run(tmp_path / "bench" / "n3", "scale3", day, each=True, uniqueness="groupby", spark=spark)
    labels = [s["step"] for s in steps]
    assert labels[:2] == ["features (warms the JVM)", "import great_expectations"]
    assert [label for label in labels if label.startswith("whole suite")] == [f"whole suite {i} (groupby)" for i in (1, 2, 3)]
    assert not any(validation_warmup.UNIQUE in label for label in labels)  # the query took its place
    assert any(label.startswith("2 unexpected_rows_expectation") for label in labels)
    assert all(s["wall_s"] > 0 for s in steps)
