"""Rules that read a dataset spec off a sample of a team's rows, each with its evidence.

Pure pandas: ``infer_spec`` takes the sample (CSV columns as text, Parquet columns typed) and
returns the spec with one line of evidence per inferred value (null share, min and max seen, the
sampling steps, rows per entity per day), which ``dataset init`` writes as TOML comments for
review. Where the sample does not decide a value (no timestamp column, no numeric column,
entities reporting at different intervals), it refuses with one line naming the option to pass.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fleetwatch.core.datasets.sources import file_stem
from fleetwatch.core.errors import SpecError
from fleetwatch.core.specs import DatasetSpec, MetricSpec

FILE_ENTITY = "entity_id"  # the spec's entity column when each file is one entity
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_TS_NAMES = re.compile(r"^(ts|time|timestamp|datetime|date_?time|event_?time|time_?stamp|date)$", re.I)
_ENTITY_NAMES = re.compile(r"(entity|host|device|machine|server|node|sensor|meter|account|instance|asset|id$|name$)", re.I)
_PERCENT_NAMES = re.compile(r"(pct|percent|util|usage_?%|_p$)", re.I)
_RATIO_NAMES = re.compile(r"(ratio|fraction|share|rate_0_1)", re.I)
_SPARK_DTYPES = {"double": "double", "float": "float", "bigint": "long", "int": "int", "smallint": "int", "tinyint": "int"}
NUMERIC_SHARE = 0.98  # a text column is numeric when this share of its values parse (the rest are reported)
TIMESTAMP_SHARE = 0.99
SAMPLING_TOLERANCE = 0.05  # entities whose median steps differ by less than this share report at one interval
RESERVED = {"dt", "_file", "_row"}


@dataclass
class Inferred:
    """A spec read off a sample: the spec, the evidence of each field, and notes for the header."""

    spec: DatasetSpec
    evidence: dict[str, str] = field(default_factory=dict)
    metric_evidence: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    parsed: pd.DataFrame | None = None  # entity, ts (UTC) and metrics of the sample, as the spec reads them


def _is_text(s: pd.Series) -> bool:
    return s.dtype == object or pd.api.types.is_string_dtype(s)


def parse_numbers(s: pd.Series) -> pd.Series:
    """Text as numbers (NaN where a value is not one); numbers as they are."""
    return pd.to_numeric(s, errors="coerce") if _is_text(s) else s.astype(float)


def parse_timestamps(s: pd.Series) -> pd.Series:
    """Timestamps (naive ones taken as UTC) or ISO 8601 text as UTC timestamps; NaT where not one."""
    if pd.api.types.is_datetime64_any_dtype(s):
        return s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
    if not _is_text(s):
        return pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns, UTC]")
    return pd.to_datetime(s, errors="coerce", utc=True, format="ISO8601")


def _share(parsed: pd.Series, original: pd.Series) -> float:
    present = original.notna() & (original.astype(str).str.strip() != "")
    return float(parsed[present].notna().mean()) if present.any() else 0.0


def _kinds(sample: pd.DataFrame, types: dict[str, str]) -> dict[str, str]:
    """Each column's kind: ``number``, ``timestamp`` or ``text``."""
    kinds = {}
    for col in sample.columns:
        if col in RESERVED:
            continue
        s, t = sample[col], types.get(col, "string")
        if t in ("timestamp", "timestamp_ntz") or pd.api.types.is_datetime64_any_dtype(s):
            kinds[col] = "timestamp"
        elif t in _SPARK_DTYPES or t.startswith("decimal"):
            kinds[col] = "number"
        elif t == "string" and _share(parse_numbers(s), s) >= NUMERIC_SHARE:
            kinds[col] = "number"
        elif t == "string" and _share(parse_timestamps(s), s) >= TIMESTAMP_SHARE:
            kinds[col] = "timestamp"
        else:
            kinds[col] = "text"
    return kinds


def _pick(what: str, option: str, candidates: list[str], names: re.Pattern) -> str | None:
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    named = [c for c in candidates if names.search(c)]
    if len(named) == 1:
        return named[0]
    raise SpecError(f"several columns could be the {what} ({', '.join(candidates)}): pass {option} NAME")


def _given(sample: pd.DataFrame, name: str, option: str) -> str:
    if name not in sample.columns:
        known = ", ".join(c for c in sample.columns if c not in RESERVED)
        raise SpecError(f"{option} {name!r}: no such column (columns: {known})")
    return name


def _valid_name(name: str, option: str) -> str:
    if not _NAME.match(name):
        raise SpecError(
            f"column {name!r} cannot name a spec column (letters, digits and _): rename it in the files, or pass {option}"
        )
    return name


def _dtype(col: str, s: pd.Series, types: dict[str, str]) -> str:
    t = types.get(col, "string")
    if t in _SPARK_DTYPES:
        return _SPARK_DTYPES[t]
    if t != "string":
        return "double"
    text = s.dropna().astype(str).str.strip()
    text = text[text != ""]
    return "long" if len(text) and text.str.fullmatch(r"[+-]?\d{1,18}").all() else "double"


def _range(name: str, values: pd.Series) -> tuple[float, float, str]:
    """A plausible allowed range: bounds only where the name and the values agree on one."""
    lo, hi = float(values.min()), float(values.max())
    low = 0.0 if lo >= 0 else -math.inf
    high = math.inf
    if low == 0.0 and hi <= 100 and _PERCENT_NAMES.search(name):
        high = 100.0
    elif low == 0.0 and hi <= 1 and _RATIO_NAMES.search(name):
        high = 1.0
    why = "no negative value seen" if low == 0.0 else "negative values seen, no lower bound"
    why += {100.0: ", a percentage", 1.0: ", a ratio"}.get(high, "; no upper bound (spikes must not be quarantined)")
    return low, high, why


def _sampling(frame: pd.DataFrame, given: int | None) -> tuple[int, str, dict[str, float]]:
    """The sampling interval in seconds and its evidence; per-entity median steps."""
    steps = {}
    gaps = 0
    for entity, ts in frame.groupby("entity")["ts"]:
        seconds = pd.to_datetime(ts.dropna(), utc=True).dt.as_unit("s").astype("int64")  # whatever unit was read
        diffs = np.diff(np.sort(seconds.unique()))
        diffs = diffs[diffs > 0]
        if len(diffs):
            med = float(np.median(diffs))
            steps[str(entity)] = med
            gaps += int((diffs > 1.5 * med).sum())
    if given is not None:
        return given, f"given (--sampling-seconds); median steps seen: {_step_text(steps)}", steps
    if not steps:
        raise SpecError(
            "no entity has two timestamps in the sample, so its sampling interval is unknown: pass --sampling-seconds"
        )
    ref = float(np.median(list(steps.values())))
    off = {e: s for e, s in steps.items() if abs(s - ref) > SAMPLING_TOLERANCE * ref}
    if off:
        raise SpecError(
            f"mixed sampling: entities report every {_step_text(steps)}: pass --sampling-seconds "
            "(the interval most entities keep; the others are scored at their own pace)"
        )
    seconds = max(1, round(ref))
    return seconds, f"median step {seconds} s on {len(steps)} entities; {gaps} gap(s) longer than 1.5 steps", steps


def _step_text(steps: dict[str, float]) -> str:
    counts = pd.Series(steps).round().astype(int).value_counts().sort_index()
    return ", ".join(f"{s} s ({n} entit{'y' if n == 1 else 'ies'})" for s, n in counts.items()) or "none"


def infer_spec(
    name: str,
    sample: pd.DataFrame,
    types: dict[str, str] | None = None,
    *,
    entity_column: str | None = None,
    timestamp_column: str | None = None,
    sampling_seconds: int | None = None,
    metrics: list[str] | None = None,
    files_are_entities: bool = False,
) -> Inferred:
    """The spec of ``sample`` (columns as read, plus ``_file``); refuses with a one-line ``SpecError``.

    ``types`` are Spark's column types (``string`` for CSV text); ``files_are_entities`` lets a
    sample with no text column take each file's name as its entity.
    """
    types = types or {}
    if sample.empty:
        raise SpecError("the sample holds no rows: check the path and that the files have data")
    kinds = _kinds(sample, types)
    evidence, notes = {}, []

    if timestamp_column:
        ts_col = _given(sample, timestamp_column, "--timestamp-column")
        if _share(parse_timestamps(sample[ts_col]), sample[ts_col]) < TIMESTAMP_SHARE:
            example = sample[ts_col].dropna().astype(str).head(1).tolist()
            raise SpecError(f"--timestamp-column {ts_col!r} does not hold timestamps (e.g. {example}; expected ISO 8601)")
    else:
        ts_col = _pick("timestamp", "--timestamp-column", [c for c, k in kinds.items() if k == "timestamp"], _TS_NAMES)
        if ts_col is None:
            raise SpecError(
                f"no timestamp column among {', '.join(kinds)} (no column of timestamps or ISO 8601 text such as "
                "2026-01-01 00:05:00): pass --timestamp-column NAME"
            )
    _valid_name(ts_col, "--timestamp-column")
    ts = parse_timestamps(sample[ts_col])
    evidence["timestamp_column"] = f"{_share(ts, sample[ts_col]):.1%} of values parse as timestamps; {ts.min()} .. {ts.max()}"

    entity_from = "column"
    if entity_column:
        ent_col = _given(sample, entity_column, "--entity-column")
        evidence["entity_column"] = "given (--entity-column)"
    else:
        text = [c for c, k in kinds.items() if k == "text" and c != ts_col]
        repeating = [c for c in text if sample[c].nunique(dropna=True) <= max(1, len(sample) // 2)]
        ent_col = _pick("entity", "--entity-column", repeating, _ENTITY_NAMES)
    if ent_col is not None:
        _valid_name(ent_col, "--entity-column")
        entities = sample[ent_col].astype("string")
        nulls = float(entities.isna().mean())
        evidence.setdefault("entity_column", "text column whose values repeat")
        evidence["entity_column"] += f"; {entities.nunique()} entities in the sample, {nulls:.1%} empty"
    elif files_are_entities and "_file" in sample.columns:
        ent_col, entity_from = FILE_ENTITY, "file_name"
        entities = sample["_file"].map(file_stem).astype("string")
        evidence["entity_column"] = f"no entity column: each file is one entity, named by its file ({entities.nunique()} files)"
    else:
        raise SpecError("no entity column (a text column whose values repeat, e.g. a host name): pass --entity-column NAME")
    evidence["entity_from"] = evidence["entity_column"]

    candidates = [c for c, k in kinds.items() if k == "number" and c not in (ts_col, ent_col)]
    if metrics:
        for m in metrics:
            _given(sample, m, "--metrics")
            if m not in candidates:
                raise SpecError(f"--metrics {m!r} is not a numeric column (values such as {sample[m].dropna().head(2).tolist()})")
        left_out = [c for c in candidates if c not in metrics]
        candidates = list(metrics)
    else:
        left_out = []
    bad_names = [c for c in candidates if not _NAME.match(c)]
    candidates = [c for c in candidates if c not in bad_names]
    if bad_names:
        notes.append(f"left out, not valid metric names (letters, digits and _): {', '.join(bad_names)}")
    if left_out:
        notes.append(f"numeric columns left out (--metrics): {', '.join(left_out)}")
    others = [c for c, k in kinds.items() if c not in (ts_col, ent_col, *candidates, *bad_names, *left_out)]
    if others:
        notes.append(f"not used (not numeric): {', '.join(others)}")
    if not candidates:
        raise SpecError(
            f"no numeric column besides the entity and timestamp among {', '.join(kinds)}: "
            "check the files' header and delimiter (comma), or pass --metrics with the columns to use"
        )

    parsed = pd.DataFrame({"entity": entities.to_numpy(), "ts": ts.to_numpy()})
    metric_specs, metric_evidence = [], {}
    for col in candidates:
        values = parse_numbers(sample[col])
        present = values.dropna()
        bad = int((values.isna() & sample[col].notna() & (sample[col].astype(str).str.strip() != "")).sum())
        parsed[col] = values.to_numpy()
        if present.empty:
            raise SpecError(f"column {col!r} has no value in the sample: leave it out with --metrics")
        low, high, why = _range(col, present)
        metric_specs.append(MetricSpec(name=col, dtype=_dtype(col, sample[col], types), min=low, max=high))
        metric_evidence[col] = (
            f"nulls {float(values.isna().mean()):.1%}; min {present.min():.6g}, max {present.max():.6g} seen; {why}"
            + (f"; {bad} value(s) not numbers" if bad else "")
        )

    seconds, sampling_why, _ = _sampling(parsed, sampling_seconds)
    evidence["sampling_seconds"] = sampling_why
    per_day = parsed.dropna(subset=["ts"]).groupby(["entity", parsed["ts"].dt.date]).size()
    evidence["sampling_seconds"] += (
        f"; rows per entity per day: median {int(per_day.median())} (min {per_day.min()}, max {per_day.max()}; "
        f"{86_400 // seconds} at this interval)"
    )
    try:
        spec = DatasetSpec(
            name=name, entity_column=ent_col, timestamp_column=ts_col, sampling_seconds=seconds,
            metrics=metric_specs, entity_from=entity_from,
        )
    except ValueError as exc:
        raise SpecError(f"dataset {name!r}: {str(exc).splitlines()[-1].strip()}") from None
    return Inferred(spec, evidence, metric_evidence, notes, parsed)
