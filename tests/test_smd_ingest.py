"""SMD ingest on the real shared files: partitions, timestamps, spec, labels and bad input."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetwatch.core.datasets.smd import ingest_smd, read_smd_machine, smd_labels
from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.lake import Lake
from fleetwatch.core.settings import Settings
from fleetwatch.core.specs import list_specs, load_spec

SMD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "smd"
MACHINE = "machine-1-2"
START = dt.date(2026, 1, 1)

pytestmark = pytest.mark.skipif(not SMD.is_dir(), reason=f"the shared SMD files are not at {SMD}")


def _readme_metric_names() -> list[str]:
    text = (SMD / "README.md").read_text()
    block = text.split("## The 38 dimensions, in order", 1)[1].split("\n\n", 1)[0]
    return [name.strip() for name in block.replace("\n", " ").split(",") if name.strip()]


def _raw(settings, dataset="smd") -> pd.DataFrame:
    lake = Lake(settings.lake_root)
    return pd.concat(
        [pd.read_parquet(f"{lake.raw(dataset, day)}/part-00000.parquet") for day in lake.days(lake.raw(dataset))],
        ignore_index=True,
    )


@pytest.fixture(scope="module")
def machine():
    return read_smd_machine(SMD, MACHINE)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, machine):
    """One ingest of machine-1-2 shared by the tests that only read what it wrote."""
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("FLEETWATCH_")]:
            mp.delenv(key)
        settings = Settings(home=tmp_path_factory.mktemp("smd") / "home")
    return settings, ingest_smd(settings, SMD, machines=[MACHINE], start=START), machine


@pytest.fixture
def one_machine(settings, machine):
    return ingest_smd(settings, SMD, machines=[MACHINE], start=START), machine


def test_partitions_hold_every_row_with_minute_timestamps(ingested):
    settings, summary, m = ingested
    lake = Lake(settings.lake_root)
    days = lake.days(lake.raw("smd"))
    n_train, n_test = len(m.train), len(m.test)
    assert (n_train, n_test) == (23694, 23694)
    assert days[0] == START and len(days) == summary["partitions"] == -(-(n_train + n_test) // 1440)
    counts = [len(pd.read_parquet(lake.raw("smd", d))) for d in days]
    assert sum(counts) == n_train + n_test == summary["rows"]
    assert counts[:-1] == [1440] * (len(days) - 1)

    raw = _raw(settings)
    assert list(raw["entity_id"].unique()) == [MACHINE]
    assert raw["ts"].diff().dropna().eq(pd.Timedelta(minutes=1)).all()
    first_test = pd.Timestamp(START, tz="UTC") + pd.Timedelta(minutes=n_train)
    meta = summary["per_machine"][MACHINE]
    assert pd.Timestamp(meta["first_test_ts"]) == first_test
    assert meta["first_full_test_day"] == "2026-01-18"  # 23694 minutes = 16.45 days
    metrics = raw.columns[2:]
    np.testing.assert_array_equal(raw.loc[raw["ts"] == first_test, metrics].to_numpy()[0], m.test[0])
    np.testing.assert_array_equal(raw.loc[raw["ts"] < first_test, metrics].to_numpy(), m.train)
    np.testing.assert_array_equal(raw.loc[raw["ts"] >= first_test, metrics].to_numpy(), m.test)
    assert "label" not in raw.columns
    on_disk = json.loads((Path(lake.labels("smd")) / "smd_meta.json").read_text())
    assert on_disk == summary
    assert summary["labelled_events"] == 10 and summary["labelled_points"] == int(m.labels.sum()) == 542


def test_spec_has_the_38_readme_metrics_with_no_upper_bound(ingested):
    settings = ingested[0]
    spec = load_spec(settings.specs_dir, "smd")
    assert spec.metric_names == _readme_metric_names()
    assert len(spec.metrics) == 38
    assert (spec.entity_column, spec.timestamp_column, spec.sampling_seconds) == ("entity_id", "ts", 60)
    assert all(mt.dtype == "double" and mt.min == 0.0 and mt.max == float("inf") for mt in spec.metrics)
    assert (spec.incident_gap(5), spec.min_incident_points) == (60, 15)


def test_interpretation_events_match_point_labels(ingested):
    settings, _, m = ingested
    points, events = smd_labels(settings, "smd")
    assert len(points) == len(m.test) and points["label"].sum() == m.labels.sum()
    assert len(events) == len(m.events) == 10
    in_event = np.zeros(len(points), dtype=bool)
    for ev in events.itertuples():
        in_event |= ((points["ts"] >= ev.start_ts) & (points["ts"] <= ev.end_ts)).to_numpy()
    labelled = points["label"].to_numpy() == 1
    assert (in_event == labelled).all()

    first = events.iloc[0]  # "4629-4688:9,10,11,13,15,18" in the upstream file
    first_test = pd.Timestamp(START, tz="UTC") + pd.Timedelta(minutes=len(m.train))
    assert first.start_ts == first_test + pd.Timedelta(minutes=4629)
    assert first.end_ts == first_test + pd.Timedelta(minutes=4687)
    assert first.dims == "8,9,10,12,14,17"
    assert first.metrics == "disk_q,disk_r,disk_rb,disk_u,disk_wa,so"


def test_reingest_replaces_partitions_and_labels(settings, one_machine):
    later = START + dt.timedelta(days=100)
    ingest_smd(settings, SMD, machines=[MACHINE], start=later)
    lake = Lake(settings.lake_root)
    assert lake.days(lake.raw("smd"))[0] == later and START not in lake.days(lake.raw("smd"))
    points, events = smd_labels(settings, "smd")
    assert points["ts"].min() == pd.Timestamp(later, tz="UTC") + pd.Timedelta(minutes=23694)
    assert len(events) == 10


def test_txt_and_txt_gz_give_the_same_arrays(tmp_path, machine):
    copy = tmp_path / "smd"
    for part in ("train", "test", "test_label", "interpretation_label"):
        (copy / part).mkdir(parents=True)
    with gzip.open(SMD / "train" / f"{MACHINE}.txt.gz", "rb") as src:
        (copy / "train" / f"{MACHINE}.txt").write_bytes(src.read())
    for part in ("test", "test_label"):
        (copy / part / f"{MACHINE}.txt.gz").symlink_to(SMD / part / f"{MACHINE}.txt.gz")
    shutil.copy(SMD / "interpretation_label" / f"{MACHINE}.txt", copy / "interpretation_label")

    plain, zipped = read_smd_machine(copy, MACHINE), machine
    assert plain.train.dtype == np.float64 and plain.train.shape == (23694, 38)
    np.testing.assert_array_equal(plain.train, zipped.train)
    np.testing.assert_array_equal(plain.test, zipped.test)
    np.testing.assert_array_equal(plain.labels, zipped.labels)
    assert plain.events == zipped.events


def _bad_copy(tmp_path: Path, part: str, text: str) -> Path:
    """A one-machine SMD folder from the shared files with ``part`` replaced by ``text``."""
    copy = tmp_path / "bad"
    for sub in ("train", "test", "test_label", "interpretation_label"):
        (copy / sub).mkdir(parents=True)
        name = f"{MACHINE}.txt" if sub == "interpretation_label" else f"{MACHINE}.txt.gz"
        if sub != part:
            (copy / sub / name).symlink_to(SMD / sub / name)
    (copy / part / f"{MACHINE}.txt").write_text(text)
    return copy


def _lines(part: str, n: int) -> list[str]:
    with gzip.open(SMD / part / f"{MACHINE}.txt.gz", "rt") as fh:
        return [next(fh).rstrip("\n") for _ in range(n)]


def test_37_columns_is_refused_naming_the_file_and_nothing_is_written(settings, tmp_path):
    rows = [",".join(line.split(",")[:37]) for line in _lines("train", 5)]
    bad = _bad_copy(tmp_path, "train", "\n".join(rows) + "\n")
    with pytest.raises(FleetWatchError, match=rf"{re.escape(str(bad / 'train' / MACHINE))}\.txt has 37 columns, expected 38"):
        ingest_smd(settings, bad, machines=None, start=START)
    assert not Path(settings.lake_root).exists() and list_specs(settings.specs_dir) == []


def test_ragged_line_is_refused_naming_file_and_line(tmp_path):
    rows = _lines("test", 5)
    rows[2] = rows[2] + ",0.5"
    bad = _bad_copy(tmp_path, "test", "\n".join(rows) + "\n")
    with pytest.raises(FleetWatchError, match=r"test/machine-1-2\.txt is malformed: .*line 3"):
        read_smd_machine(bad, MACHINE)


def test_label_length_must_match_the_test_file(tmp_path):
    bad = _bad_copy(tmp_path, "test_label", "0\n" * 100)
    with pytest.raises(FleetWatchError, match=r"test_label/machine-1-2\.txt has 100 labels but the test file has 23694 rows"):
        read_smd_machine(bad, MACHINE)


def test_bad_interpretation_line_is_refused(tmp_path):
    bad = _bad_copy(tmp_path, "interpretation_label", "4629-4688:9,10\n5486-5491:39\n")
    with pytest.raises(FleetWatchError, match=r"interpretation_label/machine-1-2\.txt line 2: dimensions must be 1 to 38"):
        read_smd_machine(bad, MACHINE)


def test_failed_reingest_keeps_what_was_there(settings, one_machine, tmp_path):
    before = sorted(p.name for p in Path(Lake(settings.lake_root).raw("smd")).iterdir())
    bad = _bad_copy(tmp_path, "test_label", "0\n" * 100)
    with pytest.raises(FleetWatchError, match="test_label"):
        ingest_smd(settings, bad, machines=None, start=START + dt.timedelta(days=5))
    assert sorted(p.name for p in Path(Lake(settings.lake_root).raw("smd")).iterdir()) == before
    assert smd_labels(settings, "smd")[0]["label"].sum() == 542


def test_unknown_machine_lists_the_available_ones(settings):
    with pytest.raises(FleetWatchError, match=r"'machine-9-9' is not in .*available: machine-1-2, machine-1-3, .*machine-1-8\)"):
        ingest_smd(settings, SMD, machines=["machine-1-2", "machine-9-9"], start=START)
    assert list_specs(settings.specs_dir) == []


def test_labels_before_ingest_say_what_to_run(settings):
    with pytest.raises(FleetWatchError, match="run `fleetwatch ingest smd"):
        smd_labels(settings, "smd")
