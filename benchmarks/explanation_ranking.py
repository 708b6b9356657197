"""HitRate@150% of the alerts' metric rankings: with and without the move against the hour before,
and over the whole alert or hour by hour.

Reads a FleetWatch home that ``fleetwatch evaluate smd`` has filled (scores partitions, alerts
table, champion bundle, SMD labels) and ranks each alert's metrics again, three ways, on the
alert's own rows and the same context rows the scoring job uses:

- ``range``: ``models.explain.deviations`` alone (distance outside the normal training range);
- ``range+change``: ``models.explain.incident_evidence`` over the whole alert (its
  ``contributions``);
- ``hourly``: the same on each ``ExplainParams.phase_minutes`` of the alert, each against the
  hour before it (its ``phases``, what the evaluation report's ``hitrate_150`` reads).

It prints HitRate@150% per machine and the mean over machines, counted as the evaluation report
counts it (``fleetwatch.app.metrics.hitrate_at``: an event no alert overlaps scores 0), and the same two
rankings on each labelled event's own rows (the event's span and the hour before it), where
detection plays no part.

    FLEETWATCH_HOME=/tmp/ev/home .venv/bin/fleetwatch evaluate smd --data ../shared/datasets/smd --out /tmp/ev/report.json
    FLEETWATCH_HOME=/tmp/ev/home .venv/bin/python -m benchmarks.explanation_ranking --data ../shared/datasets/smd
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from fleetwatch.app import metrics as M
from fleetwatch.app.evaluation_inputs import read_alerts, read_scores
from fleetwatch.core.datasets.smd import SMD_METRICS, available_machines, read_smd_machine, smd_labels
from fleetwatch.core.lake import Lake
from fleetwatch.core.settings import get_settings
from fleetwatch.core.specs import load_spec
from models import registry
from models.bundle import ModelBundle
from models.explain import deviations, incident_evidence, normal_ranges, spreads, top_contributors
from models.incidents import incident_context, incident_phases
from models.params import ExplainParams

CONTEXT_MINUTES = ExplainParams().context_minutes
PHASE_MINUTES = ExplainParams().phase_minutes

RULES = ("range", "range+change", "hourly")
ON_EVENT_ROWS = ("range", "range+change")  # an event's own rows are one span: no hours to cut


def _ranked(rule: str, rows: pd.DataFrame, context: pd.DataFrame, baselines, spread, ranges) -> list[dict]:
    if rule == "range":
        evidence = deviations(rows, baselines, spread, ranges)
    else:
        evidence = incident_evidence(rows, context, baselines, spread, ranges)
    return top_contributors(evidence, rows.iloc[[0]], baselines, k=rows.shape[1], how="max")


def through_alerts(dataset: str) -> dict[str, dict[str, float]]:
    """HitRate per rule and machine, on the alerts of an evaluated home."""
    settings = get_settings()
    spec = load_spec(settings.specs_dir, dataset)
    metrics = spec.metric_names
    bundle = ModelBundle.load(registry.champion(settings, dataset).bundle_dir)
    lake = Lake(settings.lake_root)
    days = lake.days(lake.zone("scores", dataset))
    scores, alerts = read_scores(settings, dataset, days), read_alerts(settings, dataset, days)
    _, events = smd_labels(settings, dataset)
    out: dict[str, dict[str, float]] = {rule: {} for rule in RULES}
    for machine, pdf in scores.groupby("entity_id"):
        mine = alerts[alerts["entity_id"] == machine].reset_index(drop=True)
        base, spread, ranges = bundle.baselines_of(machine), bundle.spreads_of(machine), bundle.normal_ranges_of(machine)
        skip = spec.score_smoothing_minutes
        pieces, phases = [], []  # alerts and their hours: rows and context, from their own night as in scoring
        for inc in mine.itertuples(index=False):
            night = pdf[pdf["ts"].dt.date == inc.start_ts.date()]
            rows = night[(night["ts"] >= inc.start_ts) & (night["ts"] <= inc.end_ts)]
            pieces.append((rows[metrics], incident_context(night, inc.start_ts, skip)[metrics]))
            for part in incident_phases(rows, PHASE_MINUTES):
                span = {"start_ts": part["ts"].iloc[0], "end_ts": part["ts"].iloc[-1], "n_points": int(part["flagged"].sum())}
                phases.append((span, part[metrics], incident_context(night, part["ts"].iloc[0], skip)[metrics]))
        spans = pd.DataFrame([span for span, _, _ in phases], columns=["start_ts", "end_ts", "n_points"])
        mine_events = events[events["entity_id"] == machine].reset_index(drop=True)
        for rule in RULES:
            if rule == "hourly":
                ranked = [_ranked(rule, rows, context, base, spread, ranges) for _, rows, context in phases]
                out[rule][machine] = M.hitrate_at(mine_events, spans, ranked, 1.5)[0]
            else:
                ranked = [_ranked(rule, rows, context, base, spread, ranges) for rows, context in pieces]
                out[rule][machine] = M.hitrate_at(mine_events, mine, ranked, 1.5)[0]
    return out


def on_event_rows(data_dir: Path) -> dict[str, dict[str, float]]:
    """HitRate per rule and machine, each event ranked on its own rows; statistics from the train file."""
    names = list(SMD_METRICS)
    out: dict[str, dict[str, float]] = {rule: {} for rule in ON_EVENT_ROWS}
    for machine in available_machines(data_dir):
        m = read_smd_machine(data_dir, machine)
        train = pd.DataFrame(m.train, columns=names)
        base, spread, ranges = train.median().to_dict(), spreads(train, names), normal_ranges(train, names)
        full = pd.DataFrame(np.vstack([m.train, m.test]), columns=names)
        first = len(m.train)
        for rule in ON_EVENT_ROWS:
            rates = []
            for start, end, dims in m.events:
                rows = full.iloc[first + start:first + end]
                context = full.iloc[first + start - CONTEXT_MINUTES:first + start]
                ranked = [t["metric"] for t in _ranked(rule, rows, context, base, spread, ranges)]
                rates.append(M.hitrate([names[d] for d in dims], ranked, 1.5))
            out[rule][machine] = float(np.mean(rates))
    return out


def _print(title: str, table: dict[str, dict[str, float]]) -> None:
    machines = list(next(iter(table.values())))
    print(f"\n{title}\n{'rule':14s} {'mean':>6s} " + " ".join(f"{m[-3:]:>5s}" for m in machines))
    for rule, per in table.items():
        print(f"{rule:14s} {np.mean(list(per.values())):6.3f} " + " ".join(f"{per[m]:5.2f}" for m in machines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="SMD folder (for the event-rows comparison)")
    parser.add_argument("--dataset", default="smd")
    args = parser.parse_args()
    _print("HitRate@150% through the platform's alerts (undetected events count 0)", through_alerts(args.dataset))
    _print("HitRate@150% on the labelled events' own rows", on_event_rows(args.data))


if __name__ == "__main__":
    main()
