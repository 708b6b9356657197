"""Leave-one-entity-out choice of the settings that act after scoring, and what they give out of fold.

The models are fitted once, by the backtest. What happens after scoring (which rows are flagged at
the two time scales, how flagged rows join into incidents, which incidents alert) is replayed here
for each candidate setting with the functions the scoring job runs (``models.incidents``): for
each held-out entity the candidate is chosen on the others alone (``choose``) and then scored on
the held-out one with the full evaluation (``evaluate``: explanations, HitRate, references). The
per-entity figures of those choices are the out-of-fold ones. Settings that act before or during
fitting (score smoothing, the alarm budget that sets each threshold) would need a refit per
candidate and stay as the spec has them. The alarm cap, which acts after scoring and depends on
the candidate (it counts alerts by the candidate's rule), is replayed from the fitted thresholds
with each candidate (``recapped``). How the alerts rank their metrics is chosen per fold the same
way, on the training entities' interpretation events (``explanation_choice``).

The objective, stated before any run: every training entity within ``max_false_per_day`` false
incidents per day (the product's promise); among the candidates that keep it, the highest mean
event recall less the mean share of normal minutes in alarm beyond ``max_alarm_share`` (a point of
needless alarm time costs as much as a point of recall); then the higher mean alert precision. If
no candidate keeps the false-incident cap, the one whose worst entity comes closest.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from fleetwatch.app import explanation_choice as EX
from fleetwatch.app import metrics as M
from fleetwatch.core.alert_carry import continues, joined_phases
from fleetwatch.core.errors import FleetWatchError
from models.alarm_cap import AlertRule, cap_nights
from models.incidents import entity_incidents, group_incidents, phases_json, two_scale_flags

MIN_INCIDENT_MINUTES = (1, 3, 5, 10, 15, 30)
SHORT_EVENT_FACTORS = (None, 1.0, 1.5, 2.0, 3.0)
INCIDENT_GAP_MINUTES = (15, 30, 60)
OUT_OF_FOLD = (
    "f1_at_threshold", "event_recall", "false_incidents_per_day", "alarm_share_normal", "alert_precision",
    "hitrate_150", "hitrate_150_flagged_rows", "auprc", "best_f1",
)  # fmt: skip


@dataclass(frozen=True)
class Candidate:
    """One setting of the post-scoring stage (the spec fields of the same names)."""

    min_incident_minutes: int
    short_event_factor: float | None
    incident_gap_minutes: int

    def label(self) -> str:
        factor = "off" if self.short_event_factor is None else f"{self.short_event_factor:g}"
        return f"min {self.min_incident_minutes} min, short-event factor {factor}, gap {self.incident_gap_minutes} min"


@dataclass(frozen=True)
class ReplayCap:
    """The alarm cap the scoring job applied (``models.alarm_cap``): replayed with each candidate's
    own rule from the fitted thresholds, so a candidate's alerts are those the nightly job would
    raise with it."""

    budget_share: float
    window_nights: int
    alerts_per_night: float = 1.0
    level_minutes: float | None = None


def recapped(rows: pd.DataFrame, cand: Candidate, sampling_seconds: int, cap: ReplayCap | None) -> pd.DataFrame:
    """One entity's scored rows with the cap replayed for ``cand``; as scored without ``cap`` (or
    rows scored before the cap existed)."""
    if cap is None or "alarm_cap" not in rows.columns:
        return rows
    fitted = rows.assign(threshold=rows["threshold"] / rows["alarm_cap"], raw_threshold=rows["raw_threshold"] / rows["alarm_cap"])
    rule = AlertRule(cand.incident_gap_minutes, sampling_seconds, _points(cand.min_incident_minutes, sampling_seconds))
    return cap_nights(fitted, factor=cand.short_event_factor, rule=rule, budget_share=cap.budget_share,
                      window_nights=cap.window_nights, alerts_per_night=cap.alerts_per_night,
                      level_minutes=cap.level_minutes)


def grid(
    min_minutes=MIN_INCIDENT_MINUTES, factors=SHORT_EVENT_FACTORS, gaps=INCIDENT_GAP_MINUTES
) -> list[Candidate]:
    return [Candidate(m, f, g) for m, f, g in itertools.product(min_minutes, factors, gaps)]


def replay_incidents(
    rows: pd.DataFrame, cand: Candidate, sampling_seconds: int, cap: ReplayCap | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One entity's scored rows (``dt``: their nightly partition) capped (:func:`recapped`), flagged
    and grouped as the scoring job would with ``cand``, night by night, then carried across nights
    as publishing carries them (:func:`carry_across_nights`); returns ``(rows with flags, incidents)``."""
    flagged = two_scale_flags(recapped(rows, cand, sampling_seconds, cap), cand.short_event_factor)
    found = group_incidents(
        flagged.assign(night=flagged["dt"].astype(str)), entity_col="night", gap_minutes=cand.incident_gap_minutes,
        sampling_seconds=sampling_seconds, min_points=_points(cand.min_incident_minutes, sampling_seconds),
        severe_col="severe",
    )
    entity = rows["entity_id"].iloc[0] if len(rows) else None
    found = found.assign(night=found["entity_id"], entity_id=entity)  # grouped by night: its key is in entity_id
    return flagged, carry_across_nights(found, _carry_step(cand, sampling_seconds))


def carry_across_nights(incidents: pd.DataFrame, step: pd.Timedelta) -> pd.DataFrame:
    """Incidents found night by night (``night``: their partition) joined as publishing joins them
    (``fleetwatch.core.alert_carry``): a night's first incident continues the previous night's
    last one when it starts at most ``step`` after it ended. A joined incident spans both, sums
    their points and keeps the first one's other fields; ``phases``, where present, are joined."""
    if incidents.empty:
        return incidents
    found = incidents.sort_values("start_ts").reset_index(drop=True)
    nights = pd.to_datetime(found["night"].astype(str)).dt.date
    out: list[dict] = []
    for i, row in enumerate(found.to_dict("records")):
        first_of_night = i == 0 or nights[i] != nights[i - 1]
        follows = i > 0 and (nights[i] - nights[i - 1]).days == 1
        if out and first_of_night and follows and continues(out[-1]["end_ts"], row["start_ts"], step):
            last = out[-1]
            last["end_ts"] = row["end_ts"]
            last["n_points"] = int(last["n_points"]) + int(row["n_points"])
            if "phases" in row:
                last["phases"] = joined_phases([last["phases"], row["phases"]])
            continue
        out.append(dict(row))
    return pd.DataFrame(out, columns=found.columns)


def _carry_step(cand: Candidate, sampling_seconds: int) -> pd.Timedelta:
    return pd.Timedelta(minutes=cand.incident_gap_minutes, seconds=sampling_seconds)


def alert_figures(rows: pd.DataFrame, labelled: pd.DataFrame, incidents: pd.DataFrame, first_test, rows_per_day: int) -> dict:
    """The alert figures of one entity: ``labelled`` are its test rows (ts, label) in time order."""
    alerts = incidents[incidents["end_ts"] >= first_test]
    y = labelled["label"].to_numpy(dtype=int)
    segs = M.segments(labelled["ts"], y)
    flags = labelled[["ts"]].merge(rows[["ts", "flagged"]], on="ts", how="left")["flagged"].fillna(False)
    return {
        "f1_at_threshold": M.f1_at_threshold(y, flags.to_numpy(dtype=bool)),
        "event_recall": M.event_recall(segs, alerts),
        "false_incidents_per_day": M.false_incidents_per_day(alerts, segs, len(labelled) / rows_per_day),
        "alarm_share_normal": M.alarm_share_normal(labelled["ts"], y, alerts),
        "alert_precision": M.alert_precision(alerts, segs),
    }


def objective(figures: list[dict], max_false_per_day: float, max_alarm_share: float) -> tuple:
    """Sort key (higher is better) of one candidate's figures over the training entities."""
    worst = max(f["false_incidents_per_day"] for f in figures)
    recall = _mean([f["event_recall"] for f in figures])
    excess = _mean([max(0.0, f["alarm_share_normal"] - max_alarm_share) for f in figures])
    precision = _mean([f["alert_precision"] for f in figures])
    keeps = worst <= max_false_per_day
    return (keeps, recall - excess if keeps else -worst, precision if not math.isnan(precision) else 0.0)


def choose(table: dict, candidates: list[Candidate], entities, max_false_per_day: float, max_alarm_share: float) -> Candidate:
    """The best candidate on ``entities`` alone (``table[candidate][entity]``: alert figures)."""
    return max(
        candidates,
        key=lambda c: objective([table[c][e] for e in entities], max_false_per_day, max_alarm_share),
    )


def cross_validate(
    scores: pd.DataFrame, points: pd.DataFrame, first_test, entities, spec, evaluate, in_sample: dict, *,
    explain=None, candidates: list[Candidate] | None = None, max_false_per_day: float = 2.0,
    max_alarm_share: float = 0.10, cap: ReplayCap | None = None, explain_hitrate=None, say=lambda *a, **k: None,
) -> dict:
    """Leave one entity out over ``entities``: the report's ``cross_validation`` section.

    ``scores`` are the run's scored rows (with ``dt``), ``points`` the labelled test rows,
    ``evaluate(entity, scores, alerts, explain_params)`` the backtest's full per-entity evaluation,
    ``in_sample`` its per-entity results with the spec's settings. ``explain`` (metric names,
    bundle) ranks the replayed alerts' metrics as the scoring job does. With
    ``explain_hitrate(entity, params)`` the explanation settings are chosen per fold too
    (``explanation_choice``); without it every fold explains with the bundle's.
    """
    entities = list(entities)
    if len(entities) < 2:
        raise FleetWatchError(f"--cross-validate leaves one entity out: it needs at least 2 entities, got {len(entities)}")
    candidates = grid() if candidates is None else candidates
    rows_of = {e: scores[scores["entity_id"] == e].sort_values("ts").reset_index(drop=True) for e in entities}
    labelled_of = {e: _labelled(points, e) for e in entities}
    since = {e: pd.Timestamp(first_test[e] if isinstance(first_test, dict) else first_test) for e in entities}
    table = {}
    for cand in candidates:
        table[cand] = {}
        for e in entities:
            flagged, found = replay_incidents(rows_of[e], cand, spec.sampling_seconds, cap)
            table[cand][e] = alert_figures(flagged, labelled_of[e], found, _utc(since[e]), spec.rows_per_day)
    say(f"replayed {len(candidates)} candidate settings on {len(entities)} entities")
    base = explain[1].params.explain
    ways = EX.candidates(base) if explain_hitrate is not None else [base]
    hitrates = EX.hitrate_table(ways, entities, explain_hitrate or (lambda e, p: math.nan))  # all NaN: base
    say(f"ranked the labelled events' metrics {len(ways)} way(s) on {len(entities)} entities")

    folds, out_of_fold = {}, {}
    for held_out in entities:
        training = [e for e in entities if e != held_out]
        chosen = choose(table, candidates, training, max_false_per_day, max_alarm_share)
        way = EX.choose(ways, hitrates, training)
        flagged, alerts = replayed_alerts(rows_of[held_out], chosen, spec, explain, cap, explain_params=way)
        out_of_fold[held_out] = evaluate(held_out, flagged, alerts, way)
        folds[held_out] = {"chosen_on": training, "chosen": asdict(chosen), "label": chosen.label(),
                           "explain": {k: getattr(way, k) for k in EX.VARIED}, "explain_label": EX.label(way)}
        say(f"{held_out}: {chosen.label()}; explained with {EX.label(way)} (chosen on {len(training)} others)")
    everywhere = choose(table, candidates, entities, max_false_per_day, max_alarm_share)
    explained_everywhere = EX.choose(ways, hitrates, entities)
    keys = [k for k in OUT_OF_FOLD if all(k in r for r in out_of_fold.values())]
    return {
        "method": __doc__.split("\n\n")[-1].replace("\n", " ").strip(),
        "candidates": len(candidates),
        "max_false_per_day": max_false_per_day,
        "max_alarm_share": max_alarm_share,
        "folds": folds,
        "chosen_on_all": asdict(everywhere),
        "explain_candidates": len(ways),
        "explain_chosen_on_all": {k: getattr(explained_everywhere, k) for k in EX.VARIED},
        "in_sample": _summary(in_sample, keys),
        "out_of_fold": _summary(out_of_fold, keys),
        "reference": {
            name: {f"{m}_mean": _mean([r["reference"][name][m] for r in out_of_fold.values()]) for m in ("auprc", "best_f1")}
            for name in ("pca", "iforest")
        },
        "machines": out_of_fold,
    }


def replayed_alerts(
    rows: pd.DataFrame, cand: Candidate, spec, explain, cap: ReplayCap | None = None, *, explain_params=None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One entity's rows capped and flagged with ``cand`` and its alerts, explained night by night
    with ``entity_incidents`` as the scoring job explains them (``contributions``, ``phases`` as
    JSON; with ``explain_params``, default the bundle's) and carried across nights as publishing
    carries them."""
    flagged = two_scale_flags(recapped(rows, cand, spec.sampling_seconds, cap), cand.short_event_factor)
    names, bundle = explain
    way = explain_params or bundle.params.explain
    entity = str(rows["entity_id"].iloc[0])
    records = []
    for day, night in flagged.groupby("dt", sort=True):
        night = night.reset_index(drop=True)
        if not night["flagged"].any():
            continue
        found = entity_incidents(
            night, names, bundle.baselines_of(entity), bundle.spreads_of(entity), gap_minutes=cand.incident_gap_minutes,
            sampling_seconds=spec.sampling_seconds, ranges=bundle.normal_ranges_of(entity),
            min_points=_points(cand.min_incident_minutes, spec.sampling_seconds),
            context_skip_minutes=spec.score_smoothing_minutes, explain=way,
            short_event_factor=cand.short_event_factor,
        )
        records += [
            {"night": str(day), "entity_id": inc["entity_id"], "start_ts": inc["start_ts"], "end_ts": inc["end_ts"],
             "n_points": inc["n_points"], "contributions": json.dumps(inc["ranked"]),
             "phases": phases_json(inc["phases"], way.top_metrics)}
            for inc in found
        ]
    alerts = pd.DataFrame.from_records(
        records, columns=["night", "entity_id", "start_ts", "end_ts", "n_points", "contributions", "phases"]
    )
    for col in ("start_ts", "end_ts"):
        alerts[col] = _utc(alerts[col])
    alerts = carry_across_nights(alerts, _carry_step(cand, spec.sampling_seconds)).drop(columns="night")
    return flagged, alerts.reset_index(drop=True)


def markdown_section(cv: dict, in_sample_refs: dict) -> list[str]:
    """The report page's table: in-sample and out-of-fold means, beside the references."""
    lines = [
        "## Settings chosen out of sample (leave one machine out)",
        "",
        f"{cv['method']} {cv['candidates']} candidate settings; chosen on all machines: "
        f"{_label(cv['chosen_on_all'])}.",
        "",
        "| metric (mean over machines) | in-sample (spec settings) | out-of-fold | PCA reference | IForest reference |",
        "|---|---|---|---|---|",
    ]
    for key in cv["in_sample"]:
        metric = key.removesuffix("_mean").removesuffix("_max")
        refs = [_fmt(in_sample_refs[n].get(key)) if metric in ("auprc", "best_f1") and key.endswith("_mean") else ""
                for n in ("pca", "iforest")]
        lines.append(f"| {key} | {_fmt(cv['in_sample'][key])} | {_fmt(cv['out_of_fold'][key])} | {refs[0]} | {refs[1]} |")
    lines += ["", "| held-out machine | chosen on the others | explained with |", "|---|---|---|"]
    lines += [f"| {m} | {f['label']} | {f.get('explain_label', '')} |" for m, f in cv["folds"].items()]
    return lines + [""]


def _summary(per_entity: dict, keys) -> dict:
    out = {f"{k}_mean": _mean([r[k] for r in per_entity.values()]) for k in keys}
    out["false_incidents_per_day_max"] = max(r["false_incidents_per_day"] for r in per_entity.values())
    out["alarm_share_normal_max"] = max(r["alarm_share_normal"] for r in per_entity.values())
    return out


def _label(chosen: dict) -> str:
    return Candidate(**chosen).label()


def _labelled(points: pd.DataFrame, entity) -> pd.DataFrame:
    rows = points[points["entity_id"] == entity][["ts", "label"]].copy()
    rows["ts"] = _utc(rows["ts"])
    return rows.sort_values("ts").reset_index(drop=True)


def _points(minutes: int, sampling_seconds: int) -> int:
    return max(1, math.ceil(minutes * 60 / sampling_seconds))


def _utc(values):
    if isinstance(values, pd.Timestamp):
        return values.tz_localize("UTC") if values.tzinfo is None else values.tz_convert("UTC")
    return pd.to_datetime(pd.Series(values), utc=True).astype("datetime64[ns, UTC]")


def _mean(values) -> float:
    finite = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(finite)) if finite else float("nan")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}"
