"""Publishing a night a batch at a time, on SQLite and PostgreSQL: the same alerts, ids, carried
alerts and nights whatever the batch size or the order the batches come in; bad or changing
input refused with nothing written."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from test_alerts_store import incidents
from test_persistent_alerts import NIGHTS, STEP, _at, _with_phases, night

from fleetwatch.core.alerts_store import AlertsStore
from fleetwatch.core.errors import AlertsStoreError
from fleetwatch.core.incident_batches import FrameBatches, ParquetBatches
from fleetwatch.core.lake import Lake, write_pandas_partition
from fleetwatch.core.publishing import publish_alerts
from fleetwatch.core.settings import Settings
from fleetwatch.core.specs import DatasetSpec, MetricSpec, write_spec


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def url(request, tmp_path):
    return f"sqlite:///{tmp_path / 'alerts.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")


def busy_nights() -> list[pd.DataFrame]:
    """Three nights of 12 entities: carried deviations, several incidents an entity, reruns' shifts."""
    out = []
    for n, day in enumerate(NIGHTS):
        spans = {}
        for e in range(12):
            if e % 3 == 0:  # a deviation that runs across midnight into every next night
                spans[f"e{e:02d}"] = [(_at(day, 0, 1) if n else _at(day, 20), _at(day, 23, 59))]
            else:  # short incidents, more for some entities
                spans[f"e{e:02d}"] = [(_at(day, h, e), _at(day, h, e + 9)) for h in range(1 + e % 4, 20, 6)]
        out.append(_with_phases(night(day, spans, peak=4.0 + n)))
    return out


def _publish(store, frames, batch_rows, shuffle=False):
    for day, frame in zip(NIGHTS, frames, strict=True):
        if shuffle:
            frame = frame.sample(frac=1.0, random_state=day.toordinal()).reset_index(drop=True)
        store.publish_partition("fleet", day, FrameBatches(frame, batch_rows), carry_step=STEP, sampling_seconds=60)


def _state(store):
    alerts = store.frame("fleet").drop(columns=["created_at"]).sort_values("id").reset_index(drop=True)
    _, rows = store.query("select alert_id, dt, entity_id, start_ts, alarm_minutes, phases from alert_nights "
                          "order by alert_id, dt")
    return alerts, [(a, str(pd.Timestamp(d).date()), e, _utc(s), m, p) for a, d, e, s, m, p in rows]


def _utc(value) -> pd.Timestamp:  # SQLite gives text, PostgreSQL datetimes
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


@pytest.mark.parametrize("batch_rows", [1, 7])
def test_a_night_in_batches_gives_the_alerts_of_one_batch(url, tmp_path, batch_rows, request):
    frames = busy_nights()
    whole = AlertsStore(f"sqlite:///{tmp_path / 'whole.db'}")
    _publish(whole, frames, batch_rows=10_000)
    expected_alerts, expected_nights = _state(whole)
    assert expected_alerts["persistent"].sum() == 4 and expected_alerts["nights"].max() == 3  # carrying is exercised

    store = AlertsStore(url)
    try:
        _publish(store, frames, batch_rows)
        alerts, nights = _state(store)
        pd.testing.assert_frame_equal(alerts.drop(columns="id"), expected_alerts.drop(columns="id"))
        assert [row[1:] for row in nights] == [row[1:] for row in expected_nights]
        ids = alerts["id"].tolist()

        # a rerun of the middle night, shifted by a minute and in another order, keeps every id
        rerun = frames[1].assign(end_ts=frames[1]["end_ts"] + pd.Timedelta(minutes=1)).sample(frac=1.0, random_state=3)
        store.publish_partition("fleet", NIGHTS[1], FrameBatches(rerun, batch_rows), carry_step=STEP, sampling_seconds=60)
        again, _ = _state(store)
        assert again["id"].tolist() == ids
        assert (again["nights"] == alerts["nights"]).all()
    finally:
        store.dispose()
        whole.dispose()


def test_batches_in_any_order_give_the_same_alerts(tmp_path):
    frames = busy_nights()
    stores = [AlertsStore(f"sqlite:///{tmp_path / f'{name}.db'}") for name in ("sorted", "shuffled")]
    _publish(stores[0], frames, batch_rows=5)
    _publish(stores[1], frames, batch_rows=5, shuffle=True)
    (a, na), (b, nb) = _state(stores[0]), _state(stores[1])
    key = ["entity_id", "start_ts"]
    pd.testing.assert_frame_equal(
        a.drop(columns="id").sort_values(key).reset_index(drop=True), b.drop(columns="id").sort_values(key).reset_index(drop=True)
    )
    assert sorted(r[1:] for r in na) == sorted(r[1:] for r in nb)


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda f: pd.concat([f, f.iloc[[4]]]),
         "1 incident\\(s\\) listed more than once, the first of entity e02 starting 2026-01-02T03:02"),
        (lambda f: f.assign(start_ts=f["start_ts"].where(f.index != 2)), "1 incident\\(s\\) without start_ts"),
        (lambda f: f.assign(severity=f["severity"].where(f.index != 29, "extreme")), "column severity has extreme"),
    ],
)
def test_a_bad_incident_in_any_batch_writes_nothing(url, spoil, message):
    store = AlertsStore(url)
    try:
        _publish(store, busy_nights()[:1] + [busy_nights()[1].iloc[:0], busy_nights()[2].iloc[:0]], batch_rows=4)
        before = _state(store)
        with pytest.raises(AlertsStoreError, match=f"alerts for fleet {NIGHTS[0]}: {message}"):
            store.publish_partition("fleet", NIGHTS[0], FrameBatches(spoil(busy_nights()[0]).reset_index(drop=True), 4))
        after = _state(store)
        pd.testing.assert_frame_equal(after[0], before[0])
        assert after[1] == before[1]
    finally:
        store.dispose()


class _Changing(FrameBatches):
    """A source whose rows differ between the first pass and the second, as a partition
    rewritten during publishing would."""

    def keys(self) -> pd.DataFrame:
        return super().keys().iloc[:-1]


def test_a_partition_that_changes_while_published_writes_nothing(tmp_path):
    store = AlertsStore(f"sqlite:///{tmp_path / 'alerts.db'}")
    frame = busy_nights()[0]
    with pytest.raises(AlertsStoreError, match="changed while it was published, nothing was written"):
        store.publish_partition("fleet", NIGHTS[0], _Changing(frame, 3))
    assert store.frame("fleet").empty


def test_publish_alerts_reads_the_lake_partition_in_batches(tmp_path):
    settings = Settings(home=tmp_path / "home", publish_batch_rows=3)
    write_spec(settings.specs_dir, DatasetSpec(name="fleet", metrics=[MetricSpec(name="cpu")], sampling_seconds=60))
    lake = Lake(settings.lake_root)
    frame = busy_nights()[0]
    frame = frame.assign(dataset="fleet", dt=NIGHTS[0])
    write_pandas_partition(lake, frame, lake.partition("incidents", "fleet", NIGHTS[0]))
    source = ParquetBatches(str(lake.partition("incidents", "fleet", NIGHTS[0])), 3)
    assert [len(b) for b in source] == [3] * (len(frame) // 3) + ([len(frame) % 3] if len(frame) % 3 else [])
    assert len(source.keys()) == len(frame)

    assert publish_alerts(settings, "fleet", NIGHTS[0]) == len(frame)
    stored = AlertsStore(settings.alerts_db_url).frame("fleet")
    assert sorted(zip(stored["entity_id"], stored["start_ts"], strict=True)) == sorted(
        zip(frame["entity_id"], frame["start_ts"], strict=True)
    )
    assert set(stored["phases"]) == set(frame["phases"])


def test_the_matching_is_per_entity(tmp_path):
    """Two entities with overlapping spans never take each other's alert ids."""
    store = AlertsStore(f"sqlite:///{tmp_path / 'alerts.db'}")
    day = NIGHTS[0]
    first = incidents(day=day, entities=("a", "b")).assign(start_ts=_at(day, 5), end_ts=_at(day, 6))
    store.publish_partition("fleet", day, first)
    ids = dict(zip(store.frame("fleet")["entity_id"], store.frame("fleet")["id"], strict=True))
    store.publish_partition("fleet", day, FrameBatches(first.iloc[::-1].assign(end_ts=_at(day, 6) + dt.timedelta(minutes=1)), 1))
    assert dict(zip(store.frame("fleet")["entity_id"], store.frame("fleet")["id"], strict=True)) == ids
