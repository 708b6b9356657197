"""SMD as a team would export it: one CSV per machine with timestamp strings, and a labels CSV.

This is the input of the generic path (``dataset init`` -> ``ingest files`` -> ``evaluate NAME
--labels``) that ``benchmarks/smd_csv_parity.py`` and the tests compare with ``evaluate smd``.
Rows get the minute timestamps ``ingest smd`` gives them (training part first, test part right
after, from ``start``). Each run of SMD's point labels is one labels row, carrying the causes of
the interpretation event that spans exactly that run; an interpretation event that is not exactly
a run (one on machine-1-3, inside a run) is a row of its own. So the labelled rows are SMD's
point labels and the events with causes are its interpretation events.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from fleetwatch.core.datasets.smd import SMD_METRICS, read_smd_machine, smd_spec
from fleetwatch.core.specs import DatasetSpec

MINUTES_PER_DAY = 1440


def export_smd_csv(data_dir: Path, machines: list[str], folder: Path, start: dt.date) -> dict:
    """Write ``<machine>.csv`` (``timestamp``, the 38 metrics) per machine and ``labels.csv``
    (``entity_id, start, end, metrics``) under ``folder``. Returns ``files``, ``labels`` and
    ``train_until``: the last day whose rows are training rows on every machine, as ``evaluate
    smd`` splits them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    origin = pd.Timestamp(start, tz="UTC")
    files, labels, train_rows = [], [], []
    for name in machines:
        m = read_smd_machine(data_dir, name)
        values = np.vstack([m.train, m.test])
        frame = pd.DataFrame(values, columns=list(SMD_METRICS))
        stamps = origin + pd.to_timedelta(np.arange(len(values)), unit="min")
        frame.insert(0, "timestamp", stamps.strftime("%Y-%m-%d %H:%M:%S"))
        path = folder / f"{name}.csv"
        frame.to_csv(path, index=False)  # floats written as their shortest round-trip text
        files.append(path)
        train_rows.append(len(m.train))
        first_test = origin + pd.Timedelta(minutes=len(m.train))
        edges = np.flatnonzero(np.diff(np.r_[0, m.labels, 0]))
        runs = list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))
        causes = {(s, e): ",".join(SMD_METRICS[d] for d in dims) for s, e, dims in m.events}
        rows = [(s, e, causes.get((s, e), "")) for s, e in runs]
        rows += [(s, e, c) for (s, e), c in causes.items() if (s, e) not in runs]
        for s, e, c in sorted(rows):
            labels.append({
                "entity_id": name,
                "start": (first_test + pd.Timedelta(minutes=s)).isoformat(),
                "end": (first_test + pd.Timedelta(minutes=e - 1)).isoformat(),
                "metrics": c,
            })
    label_path = folder / "labels.csv"
    pd.DataFrame(labels, columns=["entity_id", "start", "end", "metrics"]).to_csv(label_path, index=False)
    train_days = min(train_rows) // MINUTES_PER_DAY
    return {"files": files, "labels": label_path, "train_until": start + dt.timedelta(days=train_days - 1)}


def as_smd_spec(inferred: DatasetSpec) -> DatasetSpec:
    """``inferred`` (what ``dataset init`` wrote for the export) with SMD's tuned values and metric
    bounds, keeping the export's own entity and timestamp columns: the spec after its review."""
    keep = ("name", "entity_column", "timestamp_column", "entity_from")
    return smd_spec(inferred.name).model_copy(update={k: getattr(inferred, k) for k in keep})
