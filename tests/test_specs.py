"""Dataset specs: validation errors name the file and the field."""

import pytest

from fleetwatch.core.errors import SpecError
from fleetwatch.core.specs import DatasetSpec, MetricSpec, load_spec, load_spec_file, write_spec


def _spec(**kw):
    base = dict(name="fleet", metrics=[MetricSpec(name="cpu", min=0, max=100), MetricSpec(name="mem")])
    base.update(kw)
    return DatasetSpec(**base)


def test_round_trip_through_toml(tmp_path):
    spec = _spec(alarm_budget=2.5, min_rows=10)
    write_spec(tmp_path, spec)
    assert load_spec(tmp_path, "fleet") == spec


def test_incident_gap_is_the_specs_own_else_the_settings_and_survives_toml(tmp_path):
    assert _spec().incident_gap(5) == 5
    spec = _spec(incident_gap_minutes=60)
    assert spec.incident_gap(5) == 60
    write_spec(tmp_path, spec)
    assert load_spec(tmp_path, "fleet").incident_gap(5) == 60
    path = tmp_path / "fleet.toml"
    path.write_text(path.read_text().replace("incident_gap_minutes = 60", "incident_gap_minutes = -1"))
    with pytest.raises(SpecError, match=r"fleet\.toml.*incident_gap_minutes"):
        load_spec_file(path)


def test_min_incident_minutes_counts_samples_and_survives_toml(tmp_path):
    assert _spec().min_incident_points == 1
    assert _spec(min_incident_minutes=8).min_incident_points == 8
    assert _spec(min_incident_minutes=8, sampling_seconds=300).min_incident_points == 2  # 8 min = 1.6 samples
    write_spec(tmp_path, _spec(min_incident_minutes=8))
    assert load_spec(tmp_path, "fleet").min_incident_minutes == 8
    path = tmp_path / "fleet.toml"
    path.write_text(path.read_text().replace("min_incident_minutes = 8", "min_incident_minutes = 0"))
    with pytest.raises(SpecError, match=r"fleet\.toml.*min_incident_minutes"):
        load_spec_file(path)


def test_misspelt_field_names_file_and_field(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text('name = "fleet"\nalarm_budjet = 2\n[[metrics]]\nname = "cpu"\n')
    with pytest.raises(SpecError, match=r"fleet\.toml.*alarm_budjet"):
        load_spec_file(path)


def test_bad_metric_dtype_names_the_metric_field(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text('name = "fleet"\n[[metrics]]\nname = "cpu"\ndtype = "text"\n')
    with pytest.raises(SpecError, match=r"metrics\.0\.dtype"):
        load_spec_file(path)


def test_malformed_toml_is_reported(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text('name = "fleet\n')
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec_file(path)


def test_missing_spec_lists_known_datasets(tmp_path):
    write_spec(tmp_path, _spec())
    with pytest.raises(SpecError, match="known datasets: fleet"):
        load_spec(tmp_path, "other")


def test_duplicate_columns_and_inverted_range_rejected():
    with pytest.raises(ValueError, match="twice: cpu"):
        _spec(metrics=[MetricSpec(name="cpu"), MetricSpec(name="cpu")])
    with pytest.raises(ValueError, match="above max"):
        MetricSpec(name="cpu", min=5, max=1)
