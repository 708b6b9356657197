"""SMD through the generic path (CSV export -> ``dataset init`` -> ``ingest files`` -> ``evaluate
NAME --labels``) against ``evaluate smd``, figure by figure.

The SMD files are read in place and exported into a scratch folder, outside the project, by
``fleetwatch.core.datasets.smd_csv.export_smd_csv``: one ``<machine>.csv`` per machine
(``timestamp`` strings, the 38 metrics; the entity is the file's name) and a ``labels.csv`` of
``entity_id, start, end, metrics`` whose labelled rows are SMD's point labels and whose events
with causes are its interpretation events.

Two stages, each in fresh FleetWatch homes and one Spark session, through the library functions
the CLI commands call:

* ``compare`` (cheap, every machine): ``ingest smd`` and ``dataset init`` + ``ingest files``, then
  every raw partition and the feature partitions of ``--feature-days`` compared row by row
  (counts, timestamps, dtypes, values);
* ``evaluate MACHINE...``: ``evaluate smd`` and ``evaluate NAME --labels --train-until`` on
  those machines, and every figure of the two reports side by side.

The spec inferred by ``dataset init`` keeps the platform's defaults for the tuned fields (alarm
budget, score smoothing, incident gap and length) and infers each metric's dtype and bounds;
the script reports where it differs from SMD's spec and then writes SMD's values into it, as a
reviewer of the spec would.

    .venv/bin/python -m benchmarks.smd_csv_parity compare
    .venv/bin/python -m benchmarks.smd_csv_parity evaluate machine-1-2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fleetwatch.core.datasets.smd import available_machines
from fleetwatch.core.datasets.smd_csv import as_smd_spec, export_smd_csv
from fleetwatch.core.settings import Settings

START = dt.date(2026, 1, 1)
SMD = "smd"
CSV = "smdcsv"
TUNED = ("alarm_budget", "score_smoothing_minutes", "incident_gap_minutes", "min_incident_minutes", "min_rows")


def spec_review(settings: Settings) -> dict:
    """Where the inferred spec differs from SMD's; then SMD's values are written into it."""
    from fleetwatch.core.specs import load_spec, write_spec

    inferred = load_spec(settings.specs_dir, CSV)
    target = as_smd_spec(inferred)
    diff = {k: [getattr(inferred, k), getattr(target, k)] for k in ("sampling_seconds", *TUNED)
            if getattr(inferred, k) != getattr(target, k)}
    metrics = {m.name: m for m in inferred.metrics}
    for want in target.metrics:
        got = metrics.get(want.name)
        if got is None:
            diff[want.name] = ["missing", "double >= 0"]
        elif (got.dtype, got.min, got.max) != (want.dtype, want.min, want.max):
            diff[want.name] = [f"{got.dtype} [{got.min}, {got.max}]", f"{want.dtype} [{want.min}, {want.max}]"]
    write_spec(settings.specs_dir, target)
    return diff


def _frames(path: str, spec) -> pd.DataFrame:
    """A partition sorted by entity and time, its entity and timestamp columns named as SMD's."""
    frame = pd.read_parquet(path).rename(columns={spec.entity_column: "entity_id", spec.timestamp_column: "ts"})
    return frame.sort_values(list(frame.columns[:2])).reset_index(drop=True)


def compare_frames(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """Differences between two partitions (sorted by entity and time): empty when identical."""
    out = []
    if len(a) != len(b):
        return [f"rows {len(a)} != {len(b)}"]
    if list(a.columns) != list(b.columns):
        out.append(f"columns differ: {sorted(set(a.columns) ^ set(b.columns))}")
    for col in [c for c in a.columns if c in b.columns]:
        x, y = a[col], b[col]
        if str(x.dtype) != str(y.dtype):
            out.append(f"{col}: dtype {x.dtype} != {y.dtype}")
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            same = np.array_equal(x.to_numpy(float), y.to_numpy(float), equal_nan=True)
        else:
            same = x.astype(str).equals(y.astype(str))
        if not same:
            out.append(f"{col}: values differ")
    return out


def _homes(root: Path) -> tuple[Settings, Settings]:
    for key in [k for k in os.environ if k.startswith("FLEETWATCH_")]:
        os.environ.pop(key)
    return Settings(home=root / "smd-home"), Settings(home=root / "csv-home")


def compare(data_dir: Path, machines: list[str], root: Path, feature_days: list[int]) -> dict:
    """Raw partitions of every day and feature partitions of ``feature_days`` (indices), both paths."""
    from feature_store.pipeline import build_features
    from feature_store.views import view_for
    from fleetwatch.core.datasets.dataset_init import init_dataset
    from fleetwatch.core.datasets.files import ingest_files
    from fleetwatch.core.datasets.smd import ingest_smd
    from fleetwatch.core.lake import Lake, local_path
    from fleetwatch.core.spark import get_spark
    from fleetwatch.core.specs import load_spec

    a, b = _homes(root)
    spark = get_spark(a, "smd-csv-parity")
    t = time.monotonic()
    exported = export_smd_csv(data_dir, machines, root / "export", START)
    timings = {"export": round(time.monotonic() - t, 1)}
    t = time.monotonic()
    ingest_smd(a, data_dir, machines=machines, start=START, dataset=SMD)
    timings["ingest_smd"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    init_dataset(b, CSV, [str(root / "export" / f"{m}.csv") for m in machines], spark=spark)
    review = spec_review(b)
    ingested = ingest_files(b, CSV, [str(p) for p in exported["files"]], spark=spark)
    timings["init_and_ingest_files"] = round(time.monotonic() - t, 1)

    la, lb = Lake(a.lake_root), Lake(b.lake_root)
    spec_a, spec_b = load_spec(a.specs_dir, SMD), load_spec(b.specs_dir, CSV)
    days_a, days_b = la.days(la.raw(SMD)), lb.days(lb.raw(CSV))
    raw = {"days": [len(days_a), len(days_b)], "rows": [0, 0], "differences": {}}
    for day in sorted(set(days_a) | set(days_b)):
        if day not in days_a or day not in days_b:
            raw["differences"][day.isoformat()] = ["partition on one side only"]
            continue
        fa, fb = _frames(local_path(la.raw(SMD, day)), spec_a), _frames(local_path(lb.raw(CSV, day)), spec_b)
        raw["rows"][0] += len(fa)
        raw["rows"][1] += len(fb)
        diff = compare_frames(fa, fb)
        if diff:
            raw["differences"][day.isoformat()] = diff

    features = {"days": [], "rows": 0, "differences": {}}
    view = view_for(spec_a)
    t = time.monotonic()
    for i in feature_days:
        day = days_a[i]
        build_features(spark, a, SMD, day)
        build_features(spark, b, CSV, day)
        fa = _frames(local_path(la.features(SMD, view.ref, day)), spec_a)
        fb = _frames(local_path(lb.features(CSV, view.ref, day)), spec_b)
        features["days"].append(day.isoformat())
        features["rows"] += len(fa)
        diff = compare_frames(fa, fb)
        if diff:
            features["differences"][day.isoformat()] = diff
    timings["features"] = round(time.monotonic() - t, 1)
    return {"machines": machines, "spec_inferred_vs_smd": review, "ingest_files": ingested, "raw": raw,
            "features": features, "timings_s": timings, "load": os.getloadavg()}


def evaluate(data_dir: Path, machines: list[str], root: Path) -> dict:
    """``evaluate smd`` and the generic backtest on ``machines``; both reports' figures side by side."""
    from fleetwatch.app.labelled_evaluation import evaluate_labelled
    from fleetwatch.app.smd_evaluation import evaluate_smd
    from fleetwatch.core.datasets.dataset_init import init_dataset
    from fleetwatch.core.datasets.files import ingest_files
    from fleetwatch.core.spark import get_spark

    a, b = _homes(root)
    spark = get_spark(a, "smd-csv-parity")
    exported = export_smd_csv(data_dir, machines, root / "export", START)
    t = time.monotonic()
    smd = evaluate_smd(a, data_dir, machines=machines, out=root / "smd" / "report.json", start=START, dataset=SMD)
    timings = {"evaluate_smd": round(time.monotonic() - t, 1)}
    t = time.monotonic()
    init_dataset(b, CSV, [str(p) for p in exported["files"]], spark=spark)
    review = spec_review(b)
    ingest_files(b, CSV, [str(p) for p in exported["files"]], spark=spark)
    csv = evaluate_labelled(b, CSV, exported["labels"], train_until=exported["train_until"], out=root / "csv" / "report.json")
    timings["init_ingest_evaluate_labels"] = round(time.monotonic() - t, 1)
    return {"machines": machines, "train_until": exported["train_until"].isoformat(), "spec_inferred_vs_smd": review,
            "figures": side_by_side(smd, csv), "timings_s": timings, "load": os.getloadavg()}


def side_by_side(smd: dict, csv: dict) -> dict:
    """Every numeric figure of the per-machine results and the means: ``[smd, csv]`` where they differ."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out |= flat(v, f"{prefix}{k}.")
            elif isinstance(v, int | float) and not isinstance(v, bool):
                out[f"{prefix}{k}"] = float(v)
        return out

    def figures(report: dict) -> dict:
        means = {k: v for k, v in report.items() if k.endswith(("_mean", "_max"))}
        return flat({"machines": report["machines"], "reference": report["reference"]} | means)

    a, b = figures(smd), figures(csv)
    same = [k for k in a if k in b and (a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])))]
    return {"compared": len(a), "identical": len(same),
            "differ": {k: [a[k], b.get(k)] for k in a if k not in same}, "only_csv": sorted(set(b) - set(a))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=("compare", "evaluate"))
    p.add_argument("machines", nargs="*", help="machines (default: all for compare)")
    p.add_argument("--data", type=Path, default=Path("../shared/datasets/smd"))
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--feature-days", type=int, nargs="*", default=[0, 1, 16, 17, -1],
                   help="indices of the days whose feature partitions are compared")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here too")
    args = p.parse_args(argv)
    machines = args.machines or available_machines(args.data)
    with tempfile.TemporaryDirectory(prefix="smd-parity-") as tmp:
        root = args.work or Path(tmp)
        if args.stage == "compare":
            result = compare(args.data, machines, root, args.feature_days)
        else:
            result = evaluate(args.data, machines, root)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
