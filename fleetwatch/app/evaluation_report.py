"""The evaluation report: per-machine figures summed up into means and goals, then written as
JSON, a Markdown page with PNG plots, and an MLflow ``evaluation`` run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve

from models import registry

POINT_METRICS = ("auprc", "roc_auc", "best_f1")
PLATFORM_METRICS = (
    "auprc", "roc_auc", "best_f1", "f1_at_threshold", "event_recall", "false_incidents_per_day",
    "hitrate_150", "hitrate_150_detected", "hitrate_150_whole_alert", "hitrate_150_flagged_rows",
    "alarm_share_normal", "alert_precision",
)  # fmt: skip


def _mean(values) -> float:
    finite = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(finite)) if finite else float("nan")


def build_report(per_machine: dict, alerts: pd.DataFrame) -> dict:
    """Means over machines at the top level; per-machine figures under ``machines``."""
    report = {f"{m}_mean": _mean([r[m] for r in per_machine.values()]) for m in PLATFORM_METRICS}
    report["false_incidents_per_day_max"] = max(r["false_incidents_per_day"] for r in per_machine.values())
    report["alarm_share_normal_max"] = max(r["alarm_share_normal"] for r in per_machine.values())
    report["reference"] = {
        name: {f"{m}_mean": _mean([r["reference"][name][m] for r in per_machine.values()]) for m in POINT_METRICS}
        for name in ("pca", "iforest")
    }
    labelled = alerts[alerts["label"].notna()] if "label" in alerts else alerts.iloc[:0]
    report["precision_labelled"] = float(labelled["label"].astype(bool).mean()) if len(labelled) else None
    report["labelled_alerts"] = len(labelled)
    report["hitrate_note"] = (
        "hitrate_150: mean over all interpretation events, an event no alert overlaps counts 0; "
        "hitrate_150_detected: mean over the events at least one alert overlaps; an event is ranked by "
        "the phases (hours) of the alerts it overlaps, weighted by their flagged rows; "
        "hitrate_150_whole_alert: the same with each alert's one ranking over all its rows; "
        "hitrate_150_flagged_rows: the published figures' protocol (Garg et al. 2021), each event with a "
        "flagged row ranked on its own flagged rows, events with none left out"
    )
    report["goals"] = goals(report)
    report["machines"] = per_machine
    return report


def goals(report: dict) -> dict:
    """The SMD quality goals, each with whether this report reaches it."""
    ref = report["reference"]
    return {
        "auprc_mean>=0.55": report["auprc_mean"] >= 0.55,
        "auprc_mean>references": all(report["auprc_mean"] > ref[n]["auprc_mean"] for n in ref),
        "best_f1_mean>=0.60": report["best_f1_mean"] >= 0.60,
        "hitrate_150_mean>=0.90": report["hitrate_150_mean"] >= 0.90,
        "event_recall_mean>=0.8": report["event_recall_mean"] >= 0.8,
        "false_incidents_per_day<=2_each_machine": report["false_incidents_per_day_max"] <= 2.0,
    }


def plot_report(per_machine: dict, curves: dict, out: Path) -> list[Path]:
    """PR curves per machine (platform and references) and per-machine AUPRC bars, as PNG."""
    import matplotlib  # lazy: matplotlib loads slowly, and the backend is chosen here, not as a side effect of import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after the backend is chosen

    colors = {"platform": "#4C72B0", "pca": "#DD8452", "iforest": "#55A868"}
    names = list(per_machine)
    cols = min(4, len(names))
    nrows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.2 * nrows), squeeze=False)
    for ax, machine in zip(axes.flat, names, strict=False):
        for name, (y, s) in curves[machine].items():
            if y.sum() == 0:
                continue
            p, r, _ = precision_recall_curve(y, s)
            auc = per_machine[machine]["auprc"] if name == "platform" else per_machine[machine]["reference"][name]["auprc"]
            ax.plot(r, p, color=colors[name], lw=1.2, label=f"{name} {auc:.2f}")
        ax.set_title(machine, fontsize=9)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    pr = out.with_name(f"{out.stem}_pr_curves.png")
    fig.savefig(pr, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 3.6))
    x = np.arange(len(names))
    series = {
        "platform": [per_machine[m]["auprc"] for m in names],
        "pca": [per_machine[m]["reference"]["pca"]["auprc"] for m in names],
        "iforest": [per_machine[m]["reference"]["iforest"]["auprc"] for m in names],
    }
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - 1) * 0.27, values, width=0.27, color=colors[name], label=name)
    ax.set_xticks(x, names, rotation=30, fontsize=8)
    ax.set_ylabel("AUPRC (point-wise)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    bars = out.with_name(f"{out.stem}_auprc.png")
    fig.savefig(bars, dpi=100)
    plt.close(fig)
    return [pr, bars]


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(report: dict, plots: list[Path], title: str | None = None) -> str:
    """The report as a Markdown page: means vs references vs goals, per-machine table, plots.

    ``title`` heads the page (default: SMD's, "FleetWatch on SMD: N machines")."""
    ref = report["reference"]
    lines = [
        f"# {title}" if title else f"# FleetWatch on SMD: {len(report['machines'])} machines",
        "",
        f"Trained on {report['train_days'][0]}..{report['train_days'][1]}, scored "
        f"{report['test_days'][0]}..{report['test_days'][1]} one nightly partition at a time; test rows only, "
        f"point-wise, no point adjustment. Wall time {report['wall_time_s']} s.",
        "",
        "| metric (mean over machines) | FleetWatch | PCA reference | IForest reference | goal |",
        "|---|---|---|---|---|",
    ]
    goal_text = {"auprc": ">= 0.55 and > references", "best_f1": ">= 0.60", "event_recall": ">= 0.8",
                 "hitrate_150": ">= 0.90", "false_incidents_per_day": "<= 2 per machine"}
    for m in PLATFORM_METRICS:
        refs = [_fmt(ref[n].get(f"{m}_mean")) if m in POINT_METRICS else "" for n in ("pca", "iforest")]
        lines.append(f"| {m} | {_fmt(report[f'{m}_mean'])} | {refs[0]} | {refs[1]} | {goal_text.get(m, '')} |")
    lines += ["", f"best_f1 uses an oracle threshold; f1_at_threshold is the platform's own flags. {report['hitrate_note']}.",
              f"Precision over user-labelled alerts: {_fmt(report['precision_labelled'])} "
              f"({report['labelled_alerts']} labelled alerts).", "", "Goals: " +
              ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in report["goals"].items()), "",
              "| machine | auprc | roc_auc | best_f1 | f1@thr | event_recall | false inc/day | hitrate_150 "
              "| normal time in alarm | alert precision | pca auprc | iforest auprc |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["machines"].items():
        lines.append(
            f"| {name} | {_fmt(r['auprc'])} | {_fmt(r['roc_auc'])} | {_fmt(r['best_f1'])} | {_fmt(r['f1_at_threshold'])} "
            f"| {_fmt(r['event_recall'])} | {_fmt(r['false_incidents_per_day'])} | {_fmt(r['hitrate_150'])} "
            f"| {_fmt(r['alarm_share_normal'])} | {_fmt(r['alert_precision'])} "
            f"| {_fmt(r['reference']['pca']['auprc'])} | {_fmt(r['reference']['iforest']['auprc'])} |"
        )
    if "adaptation" in report:
        lines += ["", "Retrains the test nights asked for to adapt entities to a new normal: "
                  + ("; ".join(f"{a['day']} ({', '.join(a['entities'])}; champion v{a['champion']})"
                               for a in report["adaptation"]) or "none") + "."]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)


def log_report(settings, dataset: str, report: dict, files: list[Path]) -> str:
    """Log the means and the report files to MLflow as an ``evaluation`` run; returns its id."""
    import mlflow  # lazy: MLflow loads slowly; only this step of an evaluation needs it

    exp_id = registry.ensure_experiment(settings, dataset)
    with mlflow.start_run(experiment_id=exp_id, run_name="evaluation") as run:
        mlflow.set_tags({"kind": "evaluation", "dataset": dataset, "model_version": report["model"]["version"]})
        mlflow.log_params(
            {"machines": len(report["machines"]), "training_window_days": report["settings"]["training_window_days"]}
        )
        values = {k: v for k, v in report.items() if k.endswith("_mean") and isinstance(v, float) and math.isfinite(v)}
        for name, means in report["reference"].items():
            values |= {f"ref_{name}_{k}": v for k, v in means.items() if math.isfinite(v)}
        values["wall_time_s"] = report["wall_time_s"]
        mlflow.log_metrics(values)
        for path in files:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        return run.info.run_id


def jsonable(value):
    """``value`` with NumPy numbers as Python ones and NaN as None, for ``json.dumps``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value
