"""``fleetwatch dataset init``: a spec TOML read off a sample of a team's files, for review.

The sample is read through Spark (so an ``s3a://`` lake reads like a local folder), the rules of
``inference`` decide each field, and the TOML carries each inferred value's evidence as a comment.
A folder of ``dt=YYYY-MM-DD`` Parquet partitions whose columns already are the spec's is used in
place: the spec's ``raw_path`` points at it and nothing is copied.
"""

from __future__ import annotations

import json
import tomllib

from fleetwatch.core.datasets.inference import Inferred, infer_spec, parse_numbers, parse_timestamps
from fleetwatch.core.datasets.sources import (
    FILE_COL,
    ROW_COL,
    Source,
    csv_headers,
    display_path,
    find_files,
    read_source,
    require_columns,
)
from fleetwatch.core.errors import SpecError
from fleetwatch.core.specs import SPARK_TYPES, DatasetSpec, load_spec_file, spec_path

SAMPLE_ROWS = 200_000
DEFAULT_NOTES = {
    "partition_frequency": "daily UTC partitions dt=YYYY-MM-DD",
    "alarm_budget": "default: incidents per entity and day you accept; each entity's threshold is set from it",
    "min_rows": "default: fewest rows a valid partition holds",
    "score_smoothing_minutes": "default: about the shortest anomaly worth an alert",
}


def in_place_fit(source: Source, spec: DatasetSpec, types: dict[str, str]) -> tuple[bool, str]:
    """Whether ``source`` can be read in place as ``spec``'s raw partitions, and why (not)."""
    if source.layout != "hive-daily":
        return False, "not a folder of dt=YYYY-MM-DD partitions"
    if source.format != "parquet":
        return False, "CSV partitions: raw partitions are Parquet"
    if spec.entity_from != "column":
        return False, "no entity column in the files"
    columns = {c for c in types if c not in (FILE_COL, ROW_COL, "dt")}
    if columns != set(spec.columns):
        extra, missing = sorted(columns - set(spec.columns)), sorted(set(spec.columns) - columns)
        return False, (
            f"columns differ from the spec's (extra: {', '.join(extra) or 'none'}; missing: {', '.join(missing) or 'none'})"
        )
    if types[spec.timestamp_column] != "timestamp":
        return False, f"{spec.timestamp_column} is {types[spec.timestamp_column]}, not a UTC timestamp"
    if types[spec.entity_column] != "string":
        return False, f"{spec.entity_column} is {types[spec.entity_column]}, not text"
    wrong = [m.name for m in spec.metrics if types[m.name] != SPARK_TYPES[m.dtype]]
    if wrong:
        return False, f"metric types differ from the spec's dtypes: {', '.join(wrong)}"
    return True, "its columns are the spec's"


def _refuse_unparsed(sample, spec: DatasetSpec, csv: bool) -> None:
    """One error naming the first sampled value of the timestamp or a metric column that does not
    parse (``ingest files`` would refuse the file for it): the file, its line, the column, the rule."""
    checks = [(spec.timestamp_column, parse_timestamps, "is not a timestamp (ISO 8601, e.g. 2026-01-01 00:05:00)")]
    checks += [(m, parse_numbers, "is not a number") for m in spec.metric_names]
    worst = None
    for col, parse, rule in checks:
        text = sample[col]
        present = text.notna() & (text.astype(str).str.strip() != "")
        bad = sample[present & parse(text).isna()]
        if len(bad):
            first = bad.sort_values([FILE_COL, ROW_COL]).iloc[0]
            key = (first[FILE_COL], int(first[ROW_COL]))
            if worst is None or key < worst[0]:
                worst = (key, col, first[col], rule, len(bad))
    if worst is None:
        return
    (file, row), col, value, rule, n = worst
    where = f"line {row + 1}" if csv else f"row {row}"
    more = f" ({n - 1} more in the sample)" if n > 1 else ""
    raise SpecError(
        f"{display_path(file)} {where}: column {col!r} value {value!r} {rule}{more}; fix the file (ingest files would "
        f"refuse it): no spec was written for {spec.name}"
    )


def annotated_toml(spec: DatasetSpec, inferred: Inferred, header: list[str]) -> str:
    """``spec.to_toml()`` with each inferred value's evidence as a comment beside it."""
    notes = {**DEFAULT_NOTES, **inferred.evidence}
    out = [f"# {line}" for line in header] + [""]
    in_metrics = False
    for line in spec.to_toml().splitlines():
        in_metrics = in_metrics or line == "[[metrics]]"
        key, _, value = line.partition(" = ")
        note = None
        if not in_metrics:
            note = notes.get(key)
        elif key == "name":
            note = inferred.metric_evidence.get(json.loads(value))
        out.append(f"{line}  # {note}" if note else line)
    return "\n".join(out) + "\n"


def init_dataset(
    settings,
    name: str,
    paths: list[str],
    *,
    entity_column: str | None = None,
    timestamp_column: str | None = None,
    sampling_seconds: int | None = None,
    metrics: list[str] | None = None,
    sample_rows: int = SAMPLE_ROWS,
    force: bool = False,
    spark=None,
) -> dict:
    """Infer ``name``'s spec from a sample of ``paths`` and write it, commented; returns a summary."""
    target = spec_path(settings.specs_dir, name)
    if target.exists() and not force:
        raise SpecError(f"dataset spec {target} exists: review or delete it, or pass --force to replace it")
    if spark is None:
        from fleetwatch.core.spark import get_spark  # lazy: starting Spark takes seconds

        spark = get_spark(settings, "fleetwatch-dataset-init")
    source = find_files(list(paths), spark)
    headers = csv_headers(spark, source) if source.format == "csv" else None
    frame = read_source(spark, source, limit=sample_rows, headers=headers)
    types = dict(frame.dtypes)
    sample = frame.toPandas()
    inferred = infer_spec(
        name, sample, types, entity_column=entity_column, timestamp_column=timestamp_column,
        sampling_seconds=sampling_seconds, metrics=metrics, files_are_entities=source.layout == "files",
    )
    spec = inferred.spec
    if headers is not None:
        named_by_file = spec.entity_column if spec.entity_from == "file_name" else None
        require_columns(headers, [c for c in spec.columns if c != named_by_file], name)
    _refuse_unparsed(sample, spec, source.format == "csv")
    fits, why = in_place_fit(source, spec, types)
    if fits:
        spec = spec.model_copy(update={"raw_path": source.root})
        inferred.evidence["raw_path"] = f"read in place, nothing copied: {why}"
    per_file = sample.groupby(FILE_COL)[spec.entity_column if spec.entity_from == "column" else FILE_COL].nunique()
    files_kind = "one entity per file" if per_file.max() <= 1 else "many entities per file"
    next_step = (
        "the partitions are read in place: run `fleetwatch validate` / `fleetwatch night` for a date"
        if fits
        else f"run `fleetwatch ingest files {name} {' '.join(source.paths)}`"
        + (f" (the dt= layout cannot be read in place: {why})" if source.layout == "hive-daily" else "")
    )
    header = [
        f"Dataset spec inferred by `fleetwatch dataset init {name}`: review every value, then {next_step}.",
        f"Source: {source.describe()}; {files_kind}.",
        f"Sample: {len(sample)} rows from {sample[FILE_COL].nunique()} file(s).",
        *inferred.notes,
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".toml.tmp")
    text = annotated_toml(spec, inferred, header)
    if DatasetSpec.model_validate(tomllib.loads(text)) != spec:  # the comments must leave the values as inferred
        raise AssertionError(f"the commented TOML of {name} does not read back as its spec")
    tmp.write_text(text)
    tmp.replace(target)
    written = load_spec_file(target)
    return {
        "dataset": name,
        "spec": str(target),
        "entity_column": written.entity_column,
        "entity_from": written.entity_from,
        "timestamp_column": written.timestamp_column,
        "sampling_seconds": written.sampling_seconds,
        "metrics": written.metric_names,
        "layout": source.layout,
        "raw_path": written.raw_path,
        "sample_rows": len(sample),
    }
