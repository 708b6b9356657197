"""``fleetwatch alerts label`` and ``alerts nights``: labels (new_normal too), and per entity the
minutes in alarm against the alarm-share budget."""

from __future__ import annotations

import typer
from rich.table import Table

from fleetwatch.app.cli_common import console
from fleetwatch.app.cli_common import fail as _fail
from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.lake import parse_day
from fleetwatch.core.settings import get_settings
from fleetwatch.core.spark import get_spark
from fleetwatch.core.specs import load_spec


def alerts_nights_cmd(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name."),
    nights: int | None = typer.Option(None, "--nights", min=1, help="Nights summed (default: FLEETWATCH_ALARM_BUDGET_NIGHTS)."),
    date: str | None = typer.Option(None, "--date", help="Last night summed, YYYY-MM-DD (default: the newest with alerts)."),
) -> None:
    """Minutes in alarm per entity over the last nights, its budget, and its persistent alert."""
    from fleetwatch.core.alerts_store import AlertsStore  # lazy: pandas and SQLAlchemy
    from models.adaptation import adaptation_queue  # lazy: pandas

    settings = get_settings()
    nights = nights or settings.alarm_budget_nights
    try:
        spec = load_spec(settings.specs_dir, dataset)
        store = AlertsStore(settings.alerts_db_url)
        day = parse_day(date) if date else store.last_night(dataset)
        if day is None:
            console.print(f"{dataset}: no alerts published yet")
            return
        frame = store.entity_nights(dataset, day, nights)
        queued = set(adaptation_queue(settings, spec, day))
    except FleetWatchError as exc:
        _fail(exc)
    budget = spec.alarm_share(settings.alarm_budget_incident_minutes)
    console.print(
        f"{dataset}: minutes in alarm over the {nights} nights ending {day}; budget {budget:.1%} of each entity's minutes",
        highlight=False,
    )
    table = Table("entity_id", "alarm_minutes", "alarm_share", "over_budget", "persistent_alert", "nights", "adapting")
    for rec in frame.to_dict("records"):
        persistent = rec["persistent_alert"]
        table.add_row(
            str(rec["entity_id"]), f"{rec['alarm_minutes']:.0f}", f"{rec['alarm_share']:.1%}",
            "yes" if rec["alarm_share"] > budget else "no",
            "" if persistent is None or persistent != persistent else str(int(persistent)),
            "" if persistent is None or persistent != persistent else str(int(rec["nights"])),
            "yes" if rec["entity_id"] in queued else "no",
        )
    console.print(table)


def alerts_label_cmd(
    alert_id: int = typer.Argument(..., help="Alert id (column id)."),
    value: str = typer.Argument(
        ..., help="true (a real anomaly), false (a false alarm) or new_normal (the entity's level moved for good)."
    ),
    retrain: bool = typer.Option(
        False, "--retrain", help="With new_normal: retrain now on the window ending at the alert's last night."
    ),
) -> None:
    """Mark an alert as a true or a false positive, or as its entity's new normal."""
    from fleetwatch.core.alerts_store import AlertsStore  # lazy: pandas and SQLAlchemy

    value = value.lower()
    if value not in ("true", "false", "new_normal"):
        _fail(FleetWatchError(f"label must be true, false or new_normal, not {value!r}"))
    settings = get_settings()
    try:
        store = AlertsStore(settings.alerts_db_url)
        store.label(alert_id, value == "true", new_normal=value == "new_normal")
        alert = store.get(alert_id)
    except FleetWatchError as exc:
        _fail(exc)
    console.print(f"alert {alert_id} labelled {value}")
    if value != "new_normal":
        return
    if not retrain:
        console.print(f"{alert['entity_id']} adapts at the next nightly run while the alert is open (or now: --retrain)")
        return
    from models.training import train_models  # lazy: pandas

    day = alert["last_dt"] or alert["dt"]
    try:
        load_spec(settings.specs_dir, alert["dataset"])
        with console.status(f"retraining on Spark ({settings.spark_master})..."):
            result = train_models(get_spark(settings), settings, alert["dataset"], day)
    except FleetWatchError as exc:
        _fail(exc)
    console.print(f"{alert['dataset']} {day}: {result}", highlight=False)
