"""A labelled backtest of the platform: the nightly and retrain paths run in-process on a dataset's
history, their scores and alerts compared with labels, beside two reference detectors.

``run_platform`` runs exactly the functions the DAG tasks call (validate and build features for
every day, train on the training days, score and publish every test day); ``run_backtest`` then
reads back what the run left (``evaluation_inputs``), scores each entity's test rows against its
point labels (``evaluate_machine``), fits the references (``reference_detectors``) and writes the
report (``evaluation_report``): JSON, Markdown, plots and an MLflow run. Dataset adapters
(``smd_evaluation``, ``labelled_evaluation``) only bring the data and labels.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from feature_store.pipeline import build_features
from feature_store.views import view_for
from fleetwatch.app import cross_validation as CV
from fleetwatch.app import metrics as M
from fleetwatch.app.evaluation_inputs import as_utc, read_alerts, read_raw, read_scores
from fleetwatch.app.evaluation_report import POINT_METRICS, build_report, jsonable, log_report, markdown, plot_report
from fleetwatch.app.reference_detectors import reference_scores
from fleetwatch.core.errors import ValidationFailed
from fleetwatch.core.publishing import publish_alerts
from fleetwatch.core.quality import validate_partition
from fleetwatch.core.spark import get_spark
from fleetwatch.core.specs import load_spec
from models import registry
from models.adaptation import adaptation_queue
from models.bundle import ModelBundle
from models.explain import incident_evidence, top_contributors
from models.frames import sampling_step
from models.incidents import incident_context
from models.params import ExplainParams
from models.scoring import score_partition
from models.training import model_params, train_models

MINUTES_PER_DAY = 1440
FEATURE_THREADS = 2  # feature jobs running beside validation on the one Spark session
REFERENCES = ("pca", "iforest")
MIN_REFERENCE_HISTORY = 2  # history rows the reference detectors need to be fitted at all


def run_backtest(
    settings, dataset: str, *, days, train_days, test_days, points, events, first_test: dict, entities, out: Path,
    say, started: float, header: dict, title: str | None = None, rows_per_day: int = MINUTES_PER_DAY,
    skip_invalid: bool = False, cross_validate: bool = False, adapt: bool = False, run: dict | None = None,
) -> dict:
    """Run the platform over ``days`` (training on ``train_days``), then report quality on ``test_days``.

    ``points`` are per-row labels (entity_id, ts, label) of every evaluated row, or None to label
    the scored test rows by ``events`` (entity_id, start_ts, end_ts inclusive); events with
    ``metrics`` (their causes) are what HitRate is measured on. ``first_test`` maps each entity to
    its first test timestamp (its history lies before it), or is one timestamp for all;
    ``entities`` are those evaluated (None: every entity scored on a test day); ``header`` leads
    the report's fields.
    With ``cross_validate`` the settings after scoring are also chosen leaving one entity out
    (``cross_validation``): the report's ``cross_validation`` gives out-of-fold figures beside the
    in-sample ones. With ``adapt`` the test nights also retrain as the nightly DAG asks when an
    entity is to adapt to a new normal (``run_platform``); the report's ``adaptation`` lists them.
    Given ``run`` (what :func:`run_platform` returned, for a home that already holds its
    partitions and alerts), the report is made from that home without running the platform again.
    Writes the report to ``out`` (JSON), a Markdown page and plots beside it, and an MLflow run.
    """
    settings = settings.model_copy(update={"training_window_days": len(train_days)})
    if run is None:
        run = run_platform(settings, dataset, days, train_days, test_days, say, skip_invalid=skip_invalid, adapt=adapt)
    days = [d for d in days if d not in run["quarantined"]]
    test_days = [d for d in test_days if d not in run["quarantined"]]
    scores = read_scores(settings, dataset, test_days)
    if points is None:
        points = label_rows(scores, events)
    if "metrics" in events:
        events = events[events["metrics"].notna() & (events["metrics"].astype(str) != "")].reset_index(drop=True)
    alerts = read_alerts(settings, dataset, test_days)
    raw = read_raw(settings, dataset, days)

    say("computing metrics and reference detectors")
    explain = explain_inputs(settings, dataset)
    per_machine = {}
    curves = {}
    entities = sorted(scores["entity_id"].unique()) if entities is None else entities
    for machine in entities:
        since = first_test[machine] if isinstance(first_test, dict) else first_test
        result, curve = evaluate_machine(
            machine, {"first_test_ts": since}, points, events, scores, alerts, raw, dataset=dataset,
            seed=settings.seed, explain=explain, rows_per_day=rows_per_day,
        )
        per_machine[machine] = result
        curves[machine] = curve

    report = build_report(per_machine, alerts)
    report.update(
        {
            "dataset": dataset,
            **header,
            "train_days": [train_days[0].isoformat(), train_days[-1].isoformat()],
            "test_days": [test_days[0].isoformat(), test_days[-1].isoformat()],
            "settings": run["settings"],
            "model": run["model"],
            **({"adaptation": run["adaptation"]} if adapt else {}),
            "timings_s": {**run["timings_s"], "total": round(time.monotonic() - started, 1)},
            "wall_time_s": round(time.monotonic() - started, 1),
        }
    )
    if run["quarantined"]:
        report["quarantined_days"] = [d.isoformat() for d in run["quarantined"]]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plots = plot_report(per_machine, curves, out)
    out.write_text(json.dumps(jsonable(report), indent=2) + "\n")
    page = out.with_suffix(".md")
    page.write_text(markdown(report, plots, title=title))
    if cross_validate:
        say("choosing the settings after scoring leaving one entity out")
        report["cross_validation"] = cross_validated(
            settings, dataset, scores, points, events, first_test, entities, explain, per_machine, rows_per_day, say
        )
        out.write_text(json.dumps(jsonable(report), indent=2) + "\n")
        page.write_text(markdown(report, plots, title=title) + "\n".join(CV.markdown_section(report["cross_validation"],
                                                                                           report["reference"])))
    report["mlflow_run_id"] = log_report(settings, dataset, report, [out, page, *plots])
    out.write_text(json.dumps(jsonable(report), indent=2) + "\n")
    say(f"report written to {out} and {page} ({report['wall_time_s']} s)")
    return report


def cross_validated(
    settings, dataset: str, scores, points, events, first_test, entities, explain, per_machine: dict, rows_per_day: int,
    say=lambda *a, **k: None,
) -> dict:
    """The report's ``cross_validation`` section (``cross_validation.cross_validate``) from what a
    run left: each held-out entity evaluated as ``evaluate_machine`` does, with the run's references."""

    def evaluate(machine, flagged, replayed, explain_params):  # the references are the run's: no refit
        since = first_test[machine] if isinstance(first_test, dict) else first_test
        result, _ = evaluate_machine(
            machine, {"first_test_ts": since}, points, events, flagged, replayed, _NO_RAW, dataset=dataset,
            seed=settings.seed, explain=explain, rows_per_day=rows_per_day, explain_params=explain_params,
        )
        return result | {"reference": per_machine[machine]["reference"]}

    names, bundle = explain

    def explain_hitrate(machine, params):  # on the run's own flags: what the explanation is chosen by
        rows = scores[scores["entity_id"] == machine]
        return flagged_rows_hitrate(
            events[events["entity_id"] == machine], rows, names, bundle.baselines_of(machine),
            bundle.spreads_of(machine), bundle.normal_ranges_of(machine), params=params,
        )[0]

    spec = load_spec(settings.specs_dir, dataset)
    cap = CV.ReplayCap(spec.alarm_share(settings.alarm_budget_incident_minutes), settings.alarm_budget_nights,
                       spec.alarm_budget, settings.alarm_cap_level_minutes)
    return CV.cross_validate(
        scores, points, first_test, entities, spec, evaluate, per_machine, explain=explain,
        cap=cap if settings.alarm_cap else None, explain_hitrate=explain_hitrate, say=say,
    )


_NO_RAW = pd.DataFrame({"entity_id": pd.Series(dtype=str), "ts": pd.Series(dtype="datetime64[ns, UTC]")})


def label_rows(scores: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """Every scored row (entity_id, ts) with ``label`` 1 inside a labelled event of its entity, else 0."""
    rows = scores[["entity_id", "ts"]].copy()
    label = np.zeros(len(rows), dtype=np.int8)
    for ev in events.itertuples(index=False):
        label[((rows["entity_id"] == ev.entity_id) & (rows["ts"] >= ev.start_ts) & (rows["ts"] <= ev.end_ts)).to_numpy()] = 1
    return rows.assign(label=label)


def run_platform(
    settings, dataset: str, days, train_days, test_days, say, *, skip_invalid: bool = False, adapt: bool = False
) -> dict:
    """The DAG tasks in-process: validate and build features for every day, train on the
    training days, then score and publish each test day as one nightly partition.

    With ``adapt``, a night whose persistent alerts ask their entities to adapt
    (``models.adaptation.adaptation_queue``: lasted ``persistent_adapt_days`` nights, or over the
    alarm-share budget) retrains on the window ending that night, as the nightly DAG's retrain
    request does, and the next nights score with whatever the promotion gate made champion.
    Retrains that drift alone would request are not replayed.

    A partition that fails validation is quarantined and fails the run, as a night does; with
    ``skip_invalid`` it is left out instead (listed under ``quarantined``) and the run goes on.
    """
    timings = {}
    quarantined = []
    spark = get_spark(settings, "fleetwatch-evaluate")
    t = time.monotonic()
    # Each day's features need only raw partitions, so while the main thread validates day D+1
    # (Great Expectations contexts are not shared across threads) day D's features build beside it.
    with ThreadPoolExecutor(max_workers=FEATURE_THREADS, thread_name_prefix="features") as pool:
        built = []
        for day in days:
            try:
                validate_partition(spark, settings, dataset, day)
            except ValidationFailed as exc:
                if not skip_invalid:
                    raise
                quarantined.append(day)
                say(f"left out: {exc}")
                continue
            built.append(pool.submit(build_features, spark, settings, dataset, day))
        for future in built:
            future.result()
    timings["validate_and_features"] = round(time.monotonic() - t, 1)
    say(f"validated and built features for {len(days)} days ({timings['validate_and_features']} s)")

    t = time.monotonic()
    say(f"training on {train_days[0]}..{train_days[-1]}")
    trained = train_models(spark, settings, dataset, train_days[-1])
    version = _promote_newest(settings, dataset)
    timings["train"] = round(time.monotonic() - t, 1)
    say(f"{trained} ({timings['train']} s)")

    t = time.monotonic()
    adaptation = run_nights(spark, settings, dataset, [d for d in test_days if d not in quarantined], say, adapt=adapt)
    timings["score_and_publish"] = round(time.monotonic() - t, 1)
    say(f"scored and published {len(test_days)} test days ({timings['score_and_publish']} s)")
    spec = load_spec(settings.specs_dir, dataset)

    return {
        "timings_s": timings,
        "quarantined": quarantined,
        "adaptation": adaptation,
        "model": {"name": registry.model_name(dataset), "version": version, "train_summary": trained},
        "settings": {
            "training_window_days": settings.training_window_days,
            "min_history_days": settings.min_history_days,
            "incident_gap_minutes": spec.incident_gap(settings.incident_gap_minutes),
            "min_incident_minutes": spec.min_incident_minutes,
            "seed": settings.seed,
            "spark_master": settings.spark_master,
            "alarm_budget": spec.alarm_budget,
            "feature_view": view_for(spec).ref,
            "model_params": model_params(settings, spec).model_dump(),
        },
    }


def run_nights(spark, settings, dataset: str, nights, say, *, adapt: bool = False) -> list[dict]:
    """Score and publish each of ``nights`` in order, as the nightly DAG does; with ``adapt``, a
    night whose persistent alerts ask their entities to adapt (``adaptation_queue``, given the
    champion's training window) retrains on the window ending that night. Returns the retrains."""
    spec = load_spec(settings.specs_dir, dataset)
    adaptation = []
    for day in nights:
        score_partition(spark, settings, dataset, day)
        publish_alerts(settings, dataset, day)
        if not adapt or day == nights[-1]:
            continue
        queued = adaptation_queue(settings, spec, day, registry.champion_window_end(settings, dataset))
        if queued:
            retrain = train_models(spark, settings, dataset, day)
            champion = registry.champion_version(settings, dataset)
            adaptation.append({"day": day.isoformat(), "entities": queued, "summary": retrain, "champion": champion})
            say(f"{day}: {', '.join(queued)} asked to adapt: {retrain}")
    return adaptation


def _promote_newest(settings, dataset: str) -> str:
    """Make the version just trained the champion (the gate may keep an older one in a reused
    home; an evaluation must score with the model trained on this run's history)."""
    c = registry.client(settings)
    name = registry.model_name(dataset)
    newest = str(max(int(v.version) for v in c.search_model_versions(f"name='{name}'")))
    if registry.champion_version(settings, dataset) != newest:
        registry.promote(settings, dataset, newest)
    return newest


def evaluate_machine(
    machine, meta, points, events, scores, alerts, raw, *, dataset: str, seed: int, explain=None,
    rows_per_day: int = MINUTES_PER_DAY, explain_params: ExplainParams | None = None,
):
    """One machine's (entity's) metrics for the platform and the two references; returns (result, curves).

    ``explain`` (``(metric names, champion bundle)``, from :func:`explain_inputs`) adds
    ``hitrate_150_flagged_rows``, ranked with ``explain_params`` (default: the bundle's); without
    it that figure is NaN. Evaluated rows are turned into
    days of data at the entity's own sampling interval (``rows_per_day``, the spec's, when it has
    a single row). An entity with no history before its first test row
    (it started later) gets NaN reference figures: there is nothing to fit them on.
    """
    first_test = pd.Timestamp(meta["first_test_ts"])
    labels = points[points["entity_id"] == machine].copy()
    labels["ts"] = as_utc(labels["ts"])
    mine = scores[scores["entity_id"] == machine]
    rows = labels.merge(mine, on=["entity_id", "ts"], how="left", validate="one_to_one")
    missing = int(rows["score"].isna().sum())
    if missing:
        raise ValueError(f"{dataset}: {missing} test rows of {machine} have no score")
    rows = rows.sort_values("ts").reset_index(drop=True)
    y = rows["label"].to_numpy(dtype=int)
    segs = M.segments(rows["ts"], y)
    mine_alerts = alerts[(alerts["entity_id"] == machine) & (alerts["end_ts"] >= first_test)].reset_index(drop=True)
    machine_events = events[events["entity_id"] == machine].reset_index(drop=True)
    # days of data at the entity's own pace (an entity may report less often than the spec says)
    test_days = len(rows) / (86_400 / sampling_step(rows["ts"], 86_400 // rows_per_day))
    spans, span_ranked = M.phase_spans(mine_alerts)
    hr_all, hr_detected, n_events, n_detected = M.hitrate_at(machine_events, spans, span_ranked, 1.5)
    whole = M.hitrate_at(machine_events, mine_alerts, [json.loads(c) for c in mine_alerts["contributions"]], 1.5)[0]
    on_flags, n_flagged = float("nan"), 0
    if explain is not None:
        names, bundle = explain
        on_flags, n_flagged = flagged_rows_hitrate(
            machine_events, mine, names, bundle.baselines_of(machine), bundle.spreads_of(machine),
            bundle.normal_ranges_of(machine), params=explain_params or bundle.params.explain,
        )

    result = _point_metrics(y, rows["score"].to_numpy())
    result.update(
        {
            "f1_at_threshold": M.f1_at_threshold(y, rows["flagged"].to_numpy(dtype=bool)),
            "event_recall": M.event_recall(segs, mine_alerts),
            "false_incidents_per_day": M.false_incidents_per_day(mine_alerts, segs, test_days),
            "alarm_share_normal": M.alarm_share_normal(rows["ts"], y, mine_alerts),
            "alert_precision": M.alert_precision(mine_alerts, segs),
            "hitrate_150": hr_all,
            "hitrate_150_detected": hr_detected,
            "hitrate_150_whole_alert": whole,
            "hitrate_150_flagged_rows": on_flags,
            "test_rows": len(rows),
            "test_days": round(test_days, 3),
            "labelled_rows": int(y.sum()),
            "labelled_segments": len(segs),
            "interpretation_events": n_events,
            "interpretation_events_detected": n_detected,
            "interpretation_events_flagged": n_flagged,
            "alerts": len(mine_alerts),
            "false_incidents": M.false_incidents(mine_alerts, segs),
            "flagged_rows": int(rows["flagged"].sum()),
        }
    )
    history = raw[(raw["entity_id"] == machine) & (raw["ts"] < first_test)]
    test = raw[(raw["entity_id"] == machine)].merge(rows[["ts"]], on="ts", how="inner").sort_values("ts")
    metric_cols = [c for c in raw.columns if c not in ("entity_id", "ts")]
    if len(history) < MIN_REFERENCE_HISTORY:
        result["reference"] = {name: dict.fromkeys(POINT_METRICS, float("nan")) for name in REFERENCES}
        return result, {"platform": (y, rows["score"].to_numpy())}
    ref_scores = reference_scores(history[metric_cols].to_numpy(float), test[metric_cols].to_numpy(float), seed=seed)
    result["reference"] = {name: _point_metrics(y, s) for name, s in ref_scores.items()}
    curves = {"platform": (y, rows["score"].to_numpy())} | {name: (y, s) for name, s in ref_scores.items()}
    return result, curves


def flagged_rows_hitrate(
    events: pd.DataFrame, rows: pd.DataFrame, metrics: list[str], baselines, spread, ranges, p: float = 1.5,
    params: ExplainParams | None = None,
) -> tuple[float, int]:
    """HitRate@P with the protocol of the published figures: ``(mean, events counted)``.

    Each labelled event with at least one flagged row inside it is ranked on those flagged rows
    alone, by the evidence alerts rank metrics by (``models.explain.incident_evidence``, each
    metric's largest value, against the ``params.context_minutes`` before the event's onset, with
    ``params``: the bundle's own, or a candidate of the cross-validation); events with no flagged
    row are left out. That is how Garg et al. (2021) score diagnosis (their evaluation code ranks
    each detected event on its true-positive points), so this figure compares the explanations
    with theirs on the same footing; ``hitrate_150`` instead asks what the alerts themselves
    report, where an alert's hours seldom start where the labelled event does.
    """
    params = params or ExplainParams()
    rows = rows.sort_values("ts")
    rates = []
    for ev in events.itertuples(index=False):
        inside = rows[(rows["ts"] >= ev.start_ts) & (rows["ts"] <= ev.end_ts)]
        flagged = inside[inside["flagged"].astype(bool)]
        if flagged.empty:
            continue
        context = incident_context(rows, ev.start_ts, context_minutes=params.context_minutes)
        evidence = incident_evidence(flagged[metrics], context[metrics], baselines, spread, ranges, params)
        ranked = top_contributors(evidence, flagged[metrics].iloc[[0]], baselines, k=len(metrics), how="max")
        rates.append(M.hitrate(str(ev.metrics).split(","), [t["metric"] for t in ranked], p))
    return (float(np.mean(rates)) if rates else float("nan")), len(rates)


def explain_inputs(settings, dataset: str):
    """The metric names and the champion bundle that ranked this run's alerts."""
    bundle = ModelBundle.load(registry.champion(settings, dataset).bundle_dir)
    return load_spec(settings.specs_dir, dataset).metric_names, bundle


def _point_metrics(y, s) -> dict:
    f1, _ = M.best_f1(y, s)
    return {"auprc": M.auprc(y, s), "roc_auc": M.roc_auc(y, s), "best_f1": f1}
