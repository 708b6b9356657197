"""A team's own files as Spark frames: CSV or Parquet files, folders of them, or a lake folder of
Hive-style ``dt=YYYY-MM-DD`` partitions, on a local path or any Hadoop URI (``s3a://``).

Every row read keeps where it came from (``_file``, and ``_row``, its 1-based data row in that
file), so an error can name the file and the line. CSV columns are read as text and parsed by the
caller, so a value that is not a number is reported, not silently made null; files whose headers
differ are read group by group, each with its own header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.lake import is_local, local_path
from fleetwatch.core.spark import hadoop_fs

FILE_COL, ROW_COL = "_file", "_row"
_CSV = (".csv", ".csv.gz", ".txt", ".tsv")
_PARQUET = (".parquet", ".pq", ".parq")
_DT_DIR = re.compile(r"^dt=\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class Source:
    """What was found under the paths given: the data files, their format and their layout.

    ``layout`` is ``hive-daily`` when the one path given is a folder whose data files all sit in
    ``dt=YYYY-MM-DD`` folders (a lake that can be read in place), else ``files``.
    """

    paths: tuple[str, ...]
    files: tuple[str, ...]
    format: str
    layout: str

    @property
    def root(self) -> str:
        return self.paths[0].rstrip("/")

    def describe(self) -> str:
        kind = "Hive-style dt=YYYY-MM-DD partitions" if self.layout == "hive-daily" else "files"
        return f"{len(self.files)} {self.format} file(s), {kind}, under {', '.join(self.paths)}"


def _format_of(name: str) -> str | None:
    low = name.lower()
    if low.endswith(_CSV):
        return "csv"
    if low.endswith(_PARQUET):
        return "parquet"
    return None


def _hidden(rel: str) -> bool:
    return any(part.startswith(("_", ".")) for part in rel.split("/"))


def _list(path: str, spark) -> list[tuple[str, str]]:
    """(full path, path relative to ``path``) of the visible files under ``path`` (or ``path`` itself)."""
    if is_local(path):
        p = local_path(path)
        if p.is_file():
            return [(str(p), p.name)]
        if not p.is_dir():
            raise FleetWatchError(f"{path} does not exist")
        return sorted((str(f), f.relative_to(p).as_posix()) for f in p.rglob("*") if f.is_file())
    fs, hp = hadoop_fs(spark, path)
    if not fs.exists(hp):
        raise FleetWatchError(f"{path} does not exist")
    if fs.getFileStatus(hp).isFile():
        return [(path, hp.getName())]
    found, it = [], fs.listFiles(hp, True)
    base = str(hp.toUri().getPath()).rstrip("/")
    while it.hasNext():
        f = it.next().getPath()
        found.append((str(f), str(f.toUri().getPath())[len(base) + 1 :]))
    return sorted(found)


def find_files(paths: list[str], spark=None) -> Source:
    """The data files under ``paths``; one format only, hidden files (``_SUCCESS``, ``.crc``) left out."""
    if not paths:
        raise FleetWatchError("no path given: name the files or folders to read")
    files, rels, formats = [], [], set()
    for path in paths:
        for full, rel in _list(str(path), spark):
            fmt = _format_of(rel)
            if _hidden(rel) or fmt is None:
                continue
            files.append(full)
            rels.append(rel)
            formats.add(fmt)
    if not files:
        where = ", ".join(map(str, paths))
        raise FleetWatchError(f"no CSV or Parquet file under {where} (expected *.csv, *.csv.gz or *.parquet)")
    if len(formats) > 1:
        raise FleetWatchError(f"{', '.join(map(str, paths))} mixes CSV and Parquet files: give one format at a time")
    hive = len(paths) == 1 and all("/" in r and _DT_DIR.match(r.split("/")[0]) for r in rels)
    return Source(tuple(str(p) for p in paths), tuple(files), formats.pop(), "hive-daily" if hive else "files")


def file_stem(path: str) -> str:
    """A file's name without its folder and data extensions (``web-01.csv.gz`` -> ``web-01``)."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for ext in sorted(_CSV + _PARQUET, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def read_source(spark, source: Source, *, limit: int | None = None, headers: dict | None = None):
    """The rows of ``source`` as one Spark frame with ``_file`` and ``_row``; CSV columns as text.

    ``limit`` reads only about that many rows (a sample for ``dataset init``), files in order;
    ``headers`` are the CSV files' headers when the caller has read them (``csv_headers``).
    """
    from pyspark.sql import Window  # lazy: PySpark loads slowly; only reading needs it
    from pyspark.sql import functions as F  # lazy: as above

    if source.format == "parquet":
        frame = spark.read.option("mergeSchema", "true").parquet(*source.files)
        frame = frame.drop("dt") if "dt" in frame.columns and source.layout == "hive-daily" else frame
        frames = [frame]
    else:
        frames = [_read_csv(spark, files, header) for header, files in (headers or csv_headers(spark, source)).items()]
    frame = frames[0]
    for other in frames[1:]:
        frame = frame.unionByName(other, allowMissingColumns=True)
    frame = frame.withColumn(FILE_COL, F.input_file_name()).withColumn("__order", F.monotonically_increasing_id())
    if limit is not None:
        frame = frame.limit(limit)
    # Rows of a file keep their order in its read task (small and gzipped files are one split each).
    by_file = Window.partitionBy(FILE_COL).orderBy("__order")
    return frame.withColumn(ROW_COL, F.row_number().over(by_file)).drop("__order")


def csv_headers(spark, source: Source) -> dict[tuple[str, ...], list[str]]:
    """CSV files grouped by their header line (column names in file order)."""
    from pyspark.sql import functions as F  # lazy: PySpark loads slowly

    lines = spark.read.text(list(source.files)).withColumn(FILE_COL, F.input_file_name())
    lines = lines.withColumn("__order", F.monotonically_increasing_id())
    firsts = lines.groupBy(FILE_COL).agg(F.min_by("value", "__order").alias("header"), F.count("*").alias("lines")).collect()
    by_name = {display_path(f): f for f in source.files}
    groups: dict[tuple[str, ...], list[str]] = {}
    for row in sorted(firsts, key=lambda r: r[FILE_COL]):
        if row["lines"] < 2:
            raise FleetWatchError(
                f"CSV file {display_path(row[FILE_COL])} holds only its header line (rule: a header line, then rows)"
            )
        header = tuple(c.strip().strip('"').strip() for c in (row["header"] or "").split(","))
        groups.setdefault(header, []).append(by_name.get(display_path(row[FILE_COL]), row[FILE_COL]))
    empty = sorted(set(source.files) - {f for fs in groups.values() for f in fs})
    if empty:
        raise FleetWatchError(f"CSV file {empty[0]} is empty (rule: a header line, then rows)")
    return {h: sorted(fs) for h, fs in groups.items()}


def require_columns(headers: dict[tuple[str, ...], list[str]], needed: list[str], dataset: str) -> None:
    """Every CSV file's header holds the ``needed`` columns, else one error naming the first file
    and column that break the rule."""
    for header, files in sorted(headers.items(), key=lambda kv: kv[1][0]):
        missing = [c for c in needed if c not in header]
        if missing:
            raise FleetWatchError(
                f"{display_path(files[0])}: no column {missing[0]!r} (rule: every file holds the spec's columns "
                f"{', '.join(needed)}); nothing was written for {dataset}"
            )


def _read_csv(spark, files: list[str], header: tuple[str, ...]):
    from pyspark.sql.types import StringType, StructField, StructType  # lazy: PySpark loads slowly

    if len(set(header)) != len(header) or not all(header):
        raise FleetWatchError(f"CSV file {files[0]}: its header {','.join(header)!r} has an empty or repeated column name")
    schema = StructType([StructField(c, StringType()) for c in header])
    return spark.read.options(header="true", mode="PERMISSIVE", enforceSchema="true").schema(schema).csv(files)


def display_path(path: str) -> str:
    """A path as Spark's ``input_file_name`` and a listing both spell it (``file:`` URIs unquoted)."""
    text = unquote(str(path))
    return str(Path(urlparse(text).path)) if text.startswith("file:") or text.startswith("/") else text
