"""Persistent alerts on SQLite and PostgreSQL: one alert carried across nights, republishing,
the new_normal label, the minutes in alarm per entity and night, and older tables migrated."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
import sqlalchemy as sa
from test_alerts_store import incidents

from fleetwatch.core.alerts_store import AlertsStore
from fleetwatch.core.errors import AlertsStoreError

NIGHTS = [dt.date(2026, 1, 2), dt.date(2026, 1, 3), dt.date(2026, 1, 4)]
STEP = dt.timedelta(minutes=6)  # a 5-minute incident gap plus one 60 s sample


def _at(day: dt.date, hh: int, mm: int = 0) -> pd.Timestamp:
    return pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=hh, minutes=mm)


def night(day: dt.date, spans: dict[str, list[tuple]], peak: float = 5.0) -> pd.DataFrame:
    """Incidents of one night: per entity, (start, end) spans."""
    base = incidents(day=day, entities=["x"]).iloc[0].to_dict()
    rows = []
    for entity, pairs in spans.items():
        for start, end in pairs:
            n = int((end - start).total_seconds() // 60) + 1
            rows.append({**base, "entity_id": entity, "start_ts": start, "end_ts": end, "n_points": n, "peak_score": peak})
    return pd.DataFrame(rows, columns=list(base))


def shifted_nights() -> list[pd.DataFrame]:
    """e1's level moves at 18:00 on the first night and stays; e2 has one short alert a night."""
    d0, d1, d2 = NIGHTS
    return [
        night(d0, {"e1": [(_at(d0, 18), _at(d0, 23, 59))], "e2": [(_at(d0, 3), _at(d0, 3, 20))]}, peak=4.0),
        night(d1, {"e1": [(_at(d1, 0, 2), _at(d1, 23, 59))], "e2": [(_at(d1, 0, 1), _at(d1, 0, 9))]}, peak=7.0),
        night(d2, {"e1": [(_at(d2, 0), _at(d2, 12)), (_at(d2, 20), _at(d2, 20, 30))]}, peak=5.0),
    ]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'alerts.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = AlertsStore(url)
    yield s
    s.dispose()


def _publish_all(store, frames):
    for day, frame in zip(NIGHTS, frames, strict=False):
        store.publish_partition("fleet", day, frame, carry_step=STEP, sampling_seconds=60)


def test_a_deviation_across_three_nights_is_one_persistent_alert(store):
    _publish_all(store, shifted_nights())

    alerts = store.frame("fleet")
    e1 = alerts[alerts["entity_id"] == "e1"].sort_values("start_ts")
    carried, later = e1.iloc[0], e1.iloc[1]
    assert len(e1) == 2  # the shift, and a separate incident after it ended on the third night
    assert bool(carried["persistent"]) and carried["nights"] == 3 and carried["last_dt"] == NIGHTS[2]
    assert carried["dt"] == NIGHTS[0]
    assert carried["start_ts"] == _at(NIGHTS[0], 18) and carried["end_ts"] == _at(NIGHTS[2], 12)
    assert carried["peak_score"] == 7.0 and carried["n_points"] == 360 + 1438 + 721
    assert not bool(later["persistent"]) and later["nights"] == 1
    # e2's first alert of night 2 starts a minute after midnight, but its night-1 alert ended at 03:20
    assert len(alerts[alerts["entity_id"] == "e2"]) == 2 and not alerts.loc[alerts["entity_id"] == "e2", "persistent"].any()


def _with_phases(frame: pd.DataFrame) -> pd.DataFrame:
    """Each incident's phases: one phase over its span, naming the night it was found."""
    frame = frame.copy()
    frame["phases"] = [
        json.dumps([{"start_ts": r.start_ts.isoformat(), "end_ts": r.end_ts.isoformat(), "n_points": int(r.n_points),
                     "top_metrics": f"night-{r.dt}", "contributions": []}])
        for r in frame.assign(dt=[str(t.date()) for t in frame["start_ts"]]).itertuples()
    ]
    return frame


def test_a_carried_alert_says_what_moved_on_each_of_its_nights(store):
    _publish_all(store, [_with_phases(f) for f in shifted_nights()])

    e1 = store.frame("fleet").query("entity_id == 'e1'").sort_values("start_ts").iloc[0]
    phases = json.loads(e1["phases"])
    assert [p["top_metrics"] for p in phases] == [f"night-{d}" for d in NIGHTS]  # all three nights, in order
    assert phases[0]["start_ts"] == _at(NIGHTS[0], 18).isoformat() and phases[-1]["end_ts"] == _at(NIGHTS[2], 12).isoformat()
    # the third night republished: still its phases once each
    store.publish_partition("fleet", NIGHTS[2], _with_phases(shifted_nights()[2]), carry_step=STEP, sampling_seconds=60)
    again = store.frame("fleet").query("entity_id == 'e1'").sort_values("start_ts").iloc[0]
    assert json.loads(again["phases"]) == phases


def test_republishing_any_night_gives_the_same_alerts(store):
    frames = shifted_nights()
    _publish_all(store, frames)
    first = store.frame("fleet").drop(columns=["created_at"])
    nights_before = store.query("select alert_id, dt, alarm_minutes from alert_nights order by alert_id, dt")

    for day, frame in zip(NIGHTS[::-1], frames[::-1], strict=True):
        store.publish_partition("fleet", day, frame, carry_step=STEP, sampling_seconds=60)
    store.publish_partition("fleet", NIGHTS[1], frames[1], carry_step=STEP, sampling_seconds=60)

    pd.testing.assert_frame_equal(store.frame("fleet").drop(columns=["created_at"]), first)
    assert store.query("select alert_id, dt, alarm_minutes from alert_nights order by alert_id, dt") == nights_before


def test_a_night_republished_without_the_deviation_shrinks_the_alert_back(store):
    frames = shifted_nights()
    _publish_all(store, frames[:2])
    [carried] = store.frame("fleet").query("entity_id == 'e1'")["id"]

    store.publish_partition("fleet", NIGHTS[1], frames[1].query("entity_id != 'e1'"), carry_step=STEP, sampling_seconds=60)

    alert = store.get(int(carried))
    assert not alert["persistent"] and alert["nights"] == 1 and alert["end_ts"] == _at(NIGHTS[0], 23, 59)


def test_without_a_carry_step_every_night_raises_its_own_alert(store):
    for day, frame in zip(NIGHTS, shifted_nights(), strict=True):
        store.publish_partition("fleet", day, frame)
    assert len(store.frame("fleet").query("entity_id == 'e1'")) == 4


def test_labels_stay_on_a_carried_alert_and_new_normal_is_not_an_anomaly(store):
    frames = shifted_nights()
    _publish_all(store, frames[:2])
    [carried] = store.frame("fleet").query("entity_id == 'e1'")["id"]
    store.label(int(carried), False, new_normal=True)
    with pytest.raises(AlertsStoreError, match="a new normal is not an anomaly"):
        store.label(int(carried), True, new_normal=True)

    store.publish_partition("fleet", NIGHTS[2], frames[2], carry_step=STEP, sampling_seconds=60)

    alert = store.get(int(carried))
    assert alert["new_normal"] and alert["label"] is False and alert["nights"] == 3
    assert list(store.persistent("fleet", [NIGHTS[2]])["id"]) == [carried]
    assert store.persistent("fleet", [NIGHTS[2] + dt.timedelta(days=1)]).empty


def test_minutes_in_alarm_per_entity_over_the_last_nights(store):
    _publish_all(store, shifted_nights())

    summary = store.entity_nights("fleet", NIGHTS[2], nights=2).set_index("entity_id")

    # e1: night 2 00:02-23:59 and night 3 00:00-12:00 and 20:00-20:30, each plus one minute
    assert summary.loc["e1", "alarm_minutes"] == pytest.approx(1438 + 721 + 31)
    assert summary.loc["e1", "alarm_share"] == pytest.approx((1438 + 721 + 31) / 2880)
    assert summary.loc["e1", "nights"] == 3 and summary.loc["e1", "persistent_alert"] > 0
    assert summary.loc["e2", "alarm_minutes"] == pytest.approx(9) and pd.isna(summary.loc["e2", "persistent_alert"])
    assert store.last_night("fleet") == NIGHTS[2] and store.last_night("other") is None


def test_a_table_made_before_persistent_alerts_gains_the_columns_and_keeps_its_rows(store):
    store.publish_partition("fleet", NIGHTS[0], shifted_nights()[0])
    with store.engine.begin() as conn:  # the tables as they were before alerts were carried
        conn.execute(sa.text("DROP TABLE alert_nights"))
        for column in ("new_normal", "persistent", "nights", "last_dt"):
            conn.execute(sa.text(f"ALTER TABLE alerts DROP COLUMN {column}"))
    reopened = AlertsStore(store.url)
    try:
        old = reopened.frame("fleet")
        assert len(old) == 2 and (old["nights"] == 1).all() and not old["persistent"].any()
        # the old night-1 alert of e1 ran to midnight: night 2 continues it
        reopened.publish_partition("fleet", NIGHTS[1], shifted_nights()[1], carry_step=STEP, sampling_seconds=60)
        e1 = reopened.frame("fleet").query("entity_id == 'e1'")
        assert len(e1) == 1 and e1.iloc[0]["nights"] == 2 and bool(e1.iloc[0]["persistent"])
    finally:
        reopened.dispose()


def test_a_table_made_before_nights_kept_phases_keeps_the_first_nights_phases(store):
    frames = [_with_phases(f) for f in shifted_nights()]
    store.publish_partition("fleet", NIGHTS[0], frames[0], carry_step=STEP, sampling_seconds=60)
    with store.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE alert_nights DROP COLUMN phases"))
    reopened = AlertsStore(store.url)
    try:
        reopened.publish_partition("fleet", NIGHTS[1], frames[1], carry_step=STEP, sampling_seconds=60)
        e1 = reopened.frame("fleet").query("entity_id == 'e1'").iloc[0]
        assert [p["top_metrics"] for p in json.loads(e1["phases"])] == [f"night-{d}" for d in NIGHTS[:2]]
    finally:
        reopened.dispose()


def test_cli_lists_the_persistent_alert_labels_it_new_normal_and_sums_minutes_per_entity(settings, monkeypatch):
    from typer.testing import CliRunner

    from fleetwatch.app import cli
    from fleetwatch.core.specs import DatasetSpec, MetricSpec, write_spec
    from tests.test_alerts_store import table_rows

    monkeypatch.setattr(cli.console, "_width", 250)
    write_spec(settings.specs_dir, DatasetSpec(name="fleet", alarm_share_budget=0.5, metrics=[MetricSpec(name="cpu")]))
    store = AlertsStore(settings.alerts_db_url)
    _publish_all(store, shifted_nights()[:2])
    [carried] = store.frame("fleet").query("entity_id == 'e1'")["id"]
    runner = CliRunner()

    listed = runner.invoke(cli.app, ["alerts", "list", "--dataset", "fleet"])
    assert listed.exit_code == 0, listed.output
    rows = {r[0]: r for r in table_rows(listed.output)[1:]}
    assert rows[str(carried)][-1] == "2 (persistent)" and rows[str(carried)][2] == "e1"

    bad = runner.invoke(cli.app, ["alerts", "label", str(carried), "maybe"])
    assert bad.exit_code == 2 and "true, false or new_normal" in bad.output
    labelled = runner.invoke(cli.app, ["alerts", "label", str(carried), "new_normal"])
    assert labelled.exit_code == 0, labelled.output
    assert "adapts at the next nightly run" in labelled.output
    assert store.get(int(carried))["new_normal"] is True

    summary = runner.invoke(cli.app, ["alerts", "nights", "--dataset", "fleet", "--nights", "2"])
    assert summary.exit_code == 0, summary.output
    assert "budget 50.0%" in summary.output
    by_entity = {r[0]: r for r in table_rows(summary.output)[1:]}
    # e1: 360 + 1438 minutes of 2880; its alert open on the last night and labelled new_normal: adapting
    assert by_entity["e1"] == ["e1", "1798", "62.4%", "yes", str(carried), "2", "yes"]
    assert by_entity["e2"][3:] == ["no", "", "", "no"]
