"""Leave-one-machine-out choice of the settings after scoring, on an SMD home already evaluated.

``fleetwatch evaluate smd --cross-validate`` runs the same at the end of its run; this re-runs that
step alone on what an earlier ``fleetwatch evaluate smd`` left (scores partitions, labels,
champion bundle, its report's in-sample figures), without training or scoring again, and writes
the report with its ``cross_validation`` section beside the first one.

    FLEETWATCH_HOME=/tmp/ev/home .venv/bin/python -m benchmarks.cross_validate_home --report /tmp/ev/report.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from fleetwatch.app.backtest import cross_validated, explain_inputs
from fleetwatch.app.cross_validation import markdown_section
from fleetwatch.app.evaluation_inputs import as_utc, read_scores
from fleetwatch.app.evaluation_report import jsonable
from fleetwatch.core.datasets.smd import smd_labels
from fleetwatch.core.settings import get_settings
from fleetwatch.core.specs import load_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=Path, required=True, help="The JSON report of the evaluated home.")
    parser.add_argument("--dataset", default="smd")
    args = parser.parse_args()
    settings = get_settings()
    report = json.loads(args.report.read_text())
    first, last = (dt.date.fromisoformat(d) for d in report["test_days"])
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    days = [d for d in days if d.isoformat() not in set(report.get("quarantined_days", []))]
    points, events = smd_labels(settings, args.dataset)
    events = events[events["metrics"].notna() & (events["metrics"].astype(str) != "")].reset_index(drop=True)
    machines = list(report["machines"])
    points = points[points["entity_id"].isin(machines)]
    first_test = {m: as_utc(points.loc[points["entity_id"] == m, "ts"]).min() for m in machines}
    scores = read_scores(settings, args.dataset, days)
    cv = cross_validated(
        settings, args.dataset, scores, points, events, first_test, machines, explain_inputs(settings, args.dataset),
        report["machines"], load_spec(settings.specs_dir, args.dataset).rows_per_day, print,
    )
    report["cross_validation"] = cv
    out = args.report.with_name(args.report.stem + "_cv.json")
    out.write_text(json.dumps(jsonable(report), indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(markdown_section(cv, report["reference"])))
    print(json.dumps({"in_sample": cv["in_sample"], "out_of_fold": cv["out_of_fold"]}, indent=2))


if __name__ == "__main__":
    main()
