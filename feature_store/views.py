"""Feature views: a declared, versioned description of the features computed for a dataset.

A view names its entity and timestamp columns, the metrics it reads and the time windows it
aggregates over. Its ``ref`` (``name@vN``) names the lake folder of its partitions, so a change
in what a feature means comes with a new version and never mixes with partitions of the old one.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetwatch.core.specs import DatasetSpec

DEFAULT_VIEW_NAME = "telemetry"
DEFAULT_VIEW_VERSION = 1
DEFAULT_WINDOWS_MINUTES = (5, 15, 60)
RESERVED_COLUMNS = ("dt",)  # added by the offline store when it reads several partitions
_SEP = "__"
STATISTICS = ("value", "mean", "std", "z", "roc")


@dataclass(frozen=True)
class FeatureView:
    """Per-entity rolling features of each metric over time-based windows.

    Columns per metric ``m`` and window ``w`` (minutes): ``m`` (the current value),
    ``m__mean_<w>m``, ``m__std_<w>m``, ``m__z_<w>m`` (the current value's z-score against the
    window) and ``m__roc`` (change per minute since the entity's previous row).
    """

    name: str
    version: int
    entity_column: str
    timestamp_column: str
    metrics: tuple[str, ...]
    windows_minutes: tuple[int, ...] = DEFAULT_WINDOWS_MINUTES

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "windows_minutes", tuple(int(w) for w in self.windows_minutes))
        if self.version < 1:
            raise ValueError(f"feature view {self.name!r}: version must be 1 or more, got {self.version}")
        if not self.metrics:
            raise ValueError(f"feature view {self.name!r} has no metrics")
        if not self.windows_minutes or min(self.windows_minutes) < 1:
            raise ValueError(f"feature view {self.name!r}: windows must be whole minutes >= 1, got {self.windows_minutes}")
        if len(set(self.windows_minutes)) != len(self.windows_minutes):
            raise ValueError(f"feature view {self.name!r}: windows repeat: {self.windows_minutes}")
        names = [self.entity_column, self.timestamp_column, *RESERVED_COLUMNS, *self.feature_columns]
        clash = sorted({c for c in names if names.count(c) > 1})
        if clash:
            raise ValueError(f"feature view {self.name!r}: column names appear twice: {', '.join(clash)}")

    @property
    def ref(self) -> str:
        """``name@vN``: the view's folder under ``features/<dataset>/`` and its lineage tag."""
        return f"{self.name}@v{self.version}"

    @property
    def lookback_minutes(self) -> int:
        """How far before a partition's first row its windows reach."""
        return max(self.windows_minutes)

    @property
    def feature_columns(self) -> list[str]:
        """Output feature columns, in their fixed order (metric by metric)."""
        return [column for column, _ in self._columns()]

    def metric_of(self, column: str) -> str:
        """The metric a feature column is computed from (explanations group features by it)."""
        metric = dict(self._columns()).get(column)
        if metric is None:
            raise KeyError(f"{column!r} is not a feature column of view {self.ref}")
        return metric

    def _columns(self) -> list[tuple[str, str]]:
        pairs = []
        for m in self.metrics:
            pairs.append((m, m))
            for w in self.windows_minutes:
                pairs += [(f"{m}{_SEP}{stat}_{w}m", m) for stat in ("mean", "std", "z")]
            pairs.append((f"{m}{_SEP}roc", m))
        return pairs


def statistic_of(column: str) -> str:
    """The statistic a feature column of a view holds: ``value`` (the metric itself), ``mean``,
    ``std``, ``z`` (of a window) or ``roc``."""
    if _SEP not in column:
        return "value"
    stat = column.rsplit(_SEP, 1)[1].split("_", 1)[0]
    return stat if stat in STATISTICS else "value"


def view_for(spec: DatasetSpec) -> FeatureView:
    """The default feature view of a dataset: every metric of its spec, 5/15/60-minute windows."""
    return FeatureView(
        name=DEFAULT_VIEW_NAME,
        version=DEFAULT_VIEW_VERSION,
        entity_column=spec.entity_column,
        timestamp_column=spec.timestamp_column,
        metrics=tuple(spec.metric_names),
    )
