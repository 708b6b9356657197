"""Partitions written by the Spark tasks that compute their rows, with pyarrow.

A task writes its rows as one Parquet file in the partition's staging folder (:class:`TaskFile`:
a hidden name until it is complete) and returns one small row per entity; the driver collects
those rows, writes the partition's ``_entities.json`` (:func:`entities_manifest`), removes the
files of task attempts whose results Spark did not keep (:func:`keep_only`), and moves the
partition into place. The rows never pass through the JVM, and every file holds whole entities,
which readers can read by entity straight from a task (``feature_store.partition_reader``).
Spark and pandas read such a partition as any Parquet folder: names that begin with ``_`` or
``.`` are hidden from them.
"""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd

from fleetwatch.core.lake import arrow_filesystem

ENTITIES = "_entities.json"
FORMAT = 1
ROW_GROUP_ROWS = 65_536  # a few dozen entities of a day at one row a minute


class TaskFile:
    """One task's Parquet file in ``staging``: tables appended in entity order, written in row
    groups of about ``row_group_rows``, under a hidden name until :meth:`close` renames it.

    ``dictionary`` names the columns worth dictionary-encoding (the entity, a scope): for
    continuous doubles a dictionary never fits and trying it costs CPU.
    """

    def __init__(self, staging: str, schema, dictionary: list[str], row_group_rows: int | None = None):
        from pyspark import TaskContext

        context = TaskContext.get()
        self.name = f"part-{context.partitionId() if context else 0:05d}-{uuid.uuid4().hex[:12]}.parquet"
        self.schema, self.dictionary = schema, dictionary
        self.row_group_rows = row_group_rows or ROW_GROUP_ROWS
        self._fs, self._base = arrow_filesystem(staging)
        self._tmp = f"{self._base}/.{self.name}.tmp"
        self._writer = None
        self._pending: list = []
        self._pending_rows = 0
        self.entity_rows: list[tuple[str, int]] = []

    def append(self, entity: str, frame: pd.DataFrame) -> None:
        """Add one entity's rows (columns as the schema's; naive timestamps are UTC)."""
        self.append_table(entity, arrow_table(frame, self.schema))

    def append_table(self, entity: str, table) -> None:
        """Add one entity's rows as an Arrow table of the file's schema."""
        if not table.schema.equals(self.schema):
            raise ValueError(f"rows of entity {entity!r} do not have the file's schema: {table.schema} against {self.schema}")
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.entity_rows.append((str(entity), table.num_rows))
        if self._pending_rows >= self.row_group_rows:
            self._flush()

    def close(self) -> str | None:
        """Finish the file and give it its name; ``None`` when nothing was appended."""
        try:
            if self._pending:
                self._flush()
        finally:
            if self._writer is not None:
                self._writer.close()
        if self._writer is None:
            return None
        self._fs.move(self._tmp, f"{self._base}/{self.name}")
        return self.name

    def meta(self) -> pd.DataFrame:
        """One row per entity written: entity, file, rows."""
        return pd.DataFrame({"entity": pd.Series([e for e, _ in self.entity_rows], dtype=object), "file": self.name,
                             "rows": pd.Series([n for _, n in self.entity_rows], dtype="int64")})

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            self._fs.create_dir(self._base, recursive=True)
            self._writer = pq.ParquetWriter(self._fs.open_output_stream(self._tmp), self.schema,
                                            use_dictionary=self.dictionary, compression="snappy")
        self._writer.write_table(pa.concat_tables(self._pending))
        self._pending.clear()
        self._pending_rows = 0


def arrow_table(frame: pd.DataFrame, schema):
    """``frame``'s columns of ``schema`` as an Arrow table: what ``pa.Table.from_pandas`` gives
    (missing values, NaN included, as nulls; naive timestamps read as UTC), built column by column
    from numpy, which costs about half as much for the wide frames of one entity (88 feature
    columns; ``benchmarks/README.md``, "Scale")."""
    return arrow_table_of({field.name: frame[field.name] for field in schema}, schema)


def arrow_table_of(columns, schema):
    """Columns (arrays, Series or a ``DatetimeIndex``, by the names of ``schema``) as an Arrow table
    of ``schema``, as :func:`arrow_table` converts a frame's: for rows computed as arrays, which
    need no frame built only to be taken apart again."""
    import pyarrow as pa

    arrays = []
    for field in schema:
        values = columns[field.name]
        if pa.types.is_timestamp(field.type):
            if isinstance(getattr(values, "dtype", None), pd.DatetimeTZDtype):
                values = pd.DatetimeIndex(values).tz_convert(None)  # the same instants, as numpy holds them
            values = np.asarray(values)
        elif pa.types.is_floating(field.type):
            is_series = isinstance(values, pd.Series)
            values = values.to_numpy(dtype=float, na_value=np.nan) if is_series else np.asarray(values, dtype=float)
        arrays.append(pa.array(values, type=field.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=schema)


def entities_manifest(meta: pd.DataFrame, extra: tuple[str, ...] = (), **header) -> dict:
    """A partition's ``_entities.json`` from its tasks' rows (entity, file, rows, and the
    per-entity columns named in ``extra``): ``header``, then the files in name order, each with
    its entities in order, their row counts and, for each ``extra`` column, their values as
    ``entity_<column>`` (missing values as null). Raises ``RuntimeError`` when two kept task
    results wrote the same entity."""
    repeated = meta["entity"][meta["entity"].duplicated()]
    if len(repeated):
        raise RuntimeError(f"entities written by two tasks: {', '.join(repeated.unique()[:5])}")
    files = [
        {"file": name, "rows": int(group["rows"].sum()), "entities": group["entity"].tolist(),
         "entity_rows": group["rows"].astype(int).tolist(),
         **{f"entity_{col}": [None if pd.isna(v) else float(v) for v in group[col]] for col in extra}}
        for name, group in meta.groupby("file", sort=True)
    ]
    return {"format": FORMAT, **header, "rows": int(meta["rows"].sum()), "files": files}


def keep_only(staging: str, names: set[str], schema) -> None:
    """Remove from ``staging`` the files no kept task result names (a failed or repeated attempt's);
    with no file at all, write one empty file so that readers still find the partition's schema."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, base = arrow_filesystem(staging)
    fs.create_dir(base, recursive=True)
    for info in fs.get_file_info(pafs.FileSelector(base)):
        if info.type == pafs.FileType.File and info.base_name not in names:
            fs.delete_file(info.path)
    if not names:
        with fs.open_output_stream(f"{base}/part-00000-empty.parquet") as out:
            pq.write_table(schema.empty_table(), out)
