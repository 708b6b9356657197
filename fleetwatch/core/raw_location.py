"""Where a dataset's raw partitions live: the lake's ``raw/<name>/`` zone, or a folder of ``dt=``
partitions that the spec's ``raw_path`` points at and that is read in place (a lake a team has)."""

from __future__ import annotations

from fleetwatch.core.lake import Lake, parse_day
from fleetwatch.core.specs import DatasetSpec


def raw_root(lake: Lake, spec: DatasetSpec) -> str:
    """The folder of ``spec``'s ``dt=`` raw partitions."""
    return spec.raw_path.rstrip("/") if spec.raw_path else lake.raw(spec.name)


def raw_partition(lake: Lake, spec: DatasetSpec, day) -> str:
    """The raw partition of ``spec`` for ``day``."""
    return f"{raw_root(lake, spec)}/dt={parse_day(day).isoformat()}"
