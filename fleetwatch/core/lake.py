"""Lake layout and atomic partition writes.

Layout under the lake root (local path or any Hadoop-compatible URI)::

    raw/<dataset>/dt=YYYY-MM-DD/            upstream rows, never modified by FleetWatch
    labels/<dataset>/                       injected or known anomalies (never inside raw)
    features/<dataset>/<view>@v<N>/dt=.../  feature view partitions
    scores/<dataset>/dt=.../                per-row scores of the champion
    incidents/<dataset>/dt=.../             flagged rows grouped into incidents
    drift/<dataset>/dt=.../                 per-entity, per-feature drift of the partition
    quarantine/<dataset>/dt=.../<UTC time>/ raw partitions that failed validation, one copy per failure
    validation/<dataset>/dt=.../            validation results (JSON, HTML)

A partition is written under a hidden ``_staging-*`` folder beside its final place and then
renamed into place, so a crash mid-write leaves no half partition visible and a rerun
replaces the partition whole. Staging (and ``_trash-*``) folders a crashed run left behind are
removed by the next write beside them once they are older than ``stale_staging_after``.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlparse

from fleetwatch.core.errors import FleetWatchError, PartitionNotFound
from fleetwatch.core.spark import hadoop_fs
from fleetwatch.core.specs import check_dataset_name

_DT = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")
_LEFTOVERS = ("_staging-", "_trash-")
STALE_STAGING_AFTER = dt.timedelta(hours=12)  # longer than any run: a younger folder may be a live write


def parse_day(value: str | dt.date) -> dt.date:
    """A partition date from ``YYYY-MM-DD`` with an error that says what was given."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise FleetWatchError(f"date {value!r} is not of the form YYYY-MM-DD") from None


def arrow_filesystem(uri: str):
    """The pyarrow filesystem of ``uri`` and the path inside it (``s3a://`` read as ``s3://``): how
    Python tasks read and write the lake and the model store without going through the JVM."""
    import pyarrow.fs as pafs  # lazy: the CLI imports this module

    uri = str(uri)
    if uri.startswith("s3a://"):
        uri = "s3://" + uri[len("s3a://") :]
    if uri.startswith("file:"):
        uri = uri[len("file:") :].replace("//", "/", 1) if uri.startswith("file://") else uri[len("file:") :]
    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    return pafs.FileSystem.from_uri(uri)


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` whole: a temporary file beside it, then a rename."""
    fs, path = arrow_filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex[:8]}-{path.rsplit('/', 1)[1]}"
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)


def read_bytes(uri: str) -> bytes:
    fs, path = arrow_filesystem(uri)
    with fs.open_input_file(path) as f:
        return f.read()


def is_local(uri: str) -> bool:
    scheme = urlparse(str(uri)).scheme
    return scheme in ("", "file") or len(scheme) == 1  # a Windows drive letter counts as local


def local_path(uri: str) -> Path:
    return Path(urlparse(uri).path) if str(uri).startswith("file:") else Path(uri)


class Lake:
    """Paths of the lake's zones; jobs ask it for places and never build paths themselves."""

    def __init__(self, root: str, *, stale_staging_after: dt.timedelta = STALE_STAGING_AFTER):
        self.root = str(root).rstrip("/")
        self.stale_staging_after = stale_staging_after

    def _join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    @staticmethod
    def _dt(day: dt.date | str) -> str:
        return f"dt={parse_day(day).isoformat()}"

    def zone(self, zone: str, dataset: str, *more: str) -> str:
        return self._join(zone, check_dataset_name(dataset), *more)  # never a path outside the zone

    def raw(self, dataset: str, day=None) -> str:
        return self.zone("raw", dataset) if day is None else self.zone("raw", dataset, self._dt(day))

    def labels(self, dataset: str) -> str:
        return self.zone("labels", dataset)

    def features(self, dataset: str, view_ref: str, day=None) -> str:
        base = self.zone("features", dataset, view_ref)
        return base if day is None else f"{base}/{self._dt(day)}"

    def partition(self, zone: str, dataset: str, day) -> str:
        return self.zone(zone, dataset, self._dt(day))

    def quarantine_copy(self, dataset: str, day) -> str:
        """A new place under ``quarantine/<dataset>/dt=<day>/`` named by the UTC time: every copy is kept."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return f"{self.partition('quarantine', dataset, day)}/{stamp}-{uuid.uuid4().hex[:4]}"

    def data_files(self, path: str, spark=None) -> list[str]:
        """The data files of a partition folder (Spark's hidden ``_*`` and ``.*`` files left out), sorted."""
        if is_local(path):
            base = local_path(path)
            return sorted(
                str(p) for p in base.rglob("*")
                if p.is_file() and not any(part.startswith(("_", ".")) for part in p.relative_to(base).parts)
            )
        fs, p = hadoop_fs(spark, path)
        files, it = [], fs.listFiles(p, True)
        while it.hasNext():
            f = it.next().getPath()
            if not f.getName().startswith(("_", ".")):
                files.append(f.toString())
        return sorted(files)

    # -- filesystem operations (local paths here; Hadoop URIs through a Spark session) ---------

    def exists(self, path: str, spark=None) -> bool:
        if is_local(path):
            return local_path(path).exists()
        fs, p = hadoop_fs(spark, path)
        return fs.exists(p)

    def days(self, path: str, spark=None) -> list[dt.date]:
        """The partition dates present under ``path`` (a folder of ``dt=`` folders), sorted."""
        if is_local(path):
            base = local_path(path)
            names = [p.name for p in base.iterdir() if p.is_dir()] if base.is_dir() else []
        else:
            fs, p = hadoop_fs(spark, path)
            names = [s.getPath().getName() for s in fs.listStatus(p)] if fs.exists(p) else []
        return sorted(parse_day(m.group(1)) for n in names if (m := _DT.match(n)))

    def read_nights(self, spark, zone: str, dataset: str, days, column: str) -> list:
        """``(day, Spark DataFrame)`` for each partition of ``days`` in ``zone`` that exists and has
        ``column``: a partition written before that column existed is passed over, not an error."""
        out = []
        for day in days:
            path = self.partition(zone, dataset, day)
            if not self.exists(path, spark):
                continue
            night = spark.read.parquet(path)
            if column in night.columns:
                out.append((day, night))
        return out

    def require(self, path: str, what: str, spark=None) -> None:
        if not self.exists(path, spark):
            raise PartitionNotFound(f"{what} does not exist at {path}")

    def staging_path(self, final: str, spark=None) -> str:
        """A new hidden folder beside ``final`` to write into; stale leftovers beside it are removed first."""
        parent, _, name = final.rstrip("/").rpartition("/")
        self.remove_stale_staging(parent, spark)
        return f"{parent}/_staging-{name}-{uuid.uuid4().hex[:8]}"

    def remove_stale_staging(self, parent: str, spark=None) -> list[str]:
        """Remove the ``_staging-*`` and ``_trash-*`` folders in ``parent`` older than ``stale_staging_after``.

        A crashed run leaves them; a younger one may belong to a write in progress and is kept.
        Returns the paths removed.
        """
        cutoff = dt.datetime.now(dt.UTC).timestamp() - self.stale_staging_after.total_seconds()
        removed = []
        if is_local(parent):
            base = local_path(parent)
            for p in base.iterdir() if base.is_dir() else []:
                if p.name.startswith(_LEFTOVERS) and p.stat().st_mtime < cutoff:
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(str(p))
            return removed
        fs, base = hadoop_fs(spark, parent)
        if fs.exists(base):
            for status in fs.listStatus(base):
                p = status.getPath()
                if p.getName().startswith(_LEFTOVERS) and status.getModificationTime() / 1000 < cutoff:
                    fs.delete(p, True)
                    removed.append(p.toString())
        return removed

    def publish(self, staging: str, final: str, spark=None) -> None:
        """Move a fully written staging folder into place, replacing what was there whole."""
        if is_local(final):
            src, dst = local_path(staging), local_path(final)
            dst.parent.mkdir(parents=True, exist_ok=True)
            trash = dst.parent / f"_trash-{dst.name}-{uuid.uuid4().hex[:8]}"
            if dst.exists():
                dst.rename(trash)
            src.rename(dst)
            shutil.rmtree(trash, ignore_errors=True)
            return
        fs, dst = hadoop_fs(spark, final)
        _, src = hadoop_fs(spark, staging)
        if fs.exists(dst):
            fs.delete(dst, True)
        if not fs.rename(src, dst):
            raise FleetWatchError(f"could not move {staging} to {final}")

    def discard(self, path: str, spark=None) -> None:
        """Remove a folder if present (used to drop a failed staging write)."""
        if is_local(path):
            shutil.rmtree(local_path(path), ignore_errors=True)
        else:
            fs, p = hadoop_fs(spark, path)
            fs.delete(p, True)

    def move(self, src: str, dst: str, spark=None) -> None:
        """Move a partition folder to another zone (a new quarantine copy), replacing the target."""
        self.publish(src, dst, spark)

    def write_text(self, path: str, text: str) -> None:
        """Write a small text file atomically (local lakes only; reports and JSON)."""
        p = local_path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(text)
        tmp.replace(p)


def write_spark_partition(lake: Lake, df, final: str, spark, dictionary: bool = True) -> str:
    """Write a Spark DataFrame as the partition at ``final`` atomically; returns ``final``.

    ``dictionary=False`` writes plain-encoded columns: for continuous doubles, such as features,
    a dictionary never fits and trying it costs about as much CPU as the rest of the write.
    """
    staging = lake.staging_path(final, spark)
    try:
        df.write.mode("overwrite").option("parquet.enable.dictionary", str(dictionary).lower()).parquet(staging)
        lake.publish(staging, final, spark)
    except BaseException:
        lake.discard(staging, spark)
        raise
    return final


def write_pandas_partition(lake: Lake, frame, final: str) -> str:
    """Write a pandas DataFrame as one parquet file in the partition at ``final`` (local lake)."""
    staging = lake.staging_path(final)
    sp = local_path(staging)
    try:
        sp.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(sp / "part-00000.parquet", index=False, coerce_timestamps="us", allow_truncated_timestamps=True)
        lake.publish(staging, final)
    except BaseException:
        lake.discard(staging)
        raise
    return final
