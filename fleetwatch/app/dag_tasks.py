"""What the DAG files ask of the platform: their settings, the datasets to build DAGs for, and
the bodies of the nightly DAG's Python tasks.

DAG files import only Airflow, the standard library and ``fleetwatch.app`` (checked by
``tests/test_architecture.py``). Airflow parses them often, so importing this module loads no
pandas, Spark or MLflow: each task body imports what it needs when the task runs.
"""

from __future__ import annotations

from fleetwatch.core.lake import parse_day
from fleetwatch.core.settings import Settings, get_settings
from fleetwatch.core.specs import list_specs

__all__ = ["Settings", "adapting", "datasets", "drift_summary", "get_settings", "has_champion", "publish"]


def datasets(settings: Settings) -> list[str]:
    """The datasets that have a spec: one nightly and one retrain DAG each."""
    return list_specs(settings.specs_dir)


def has_champion(settings: Settings, dataset: str) -> bool:
    """Whether ``dataset`` has a champion model to check drift against and score with."""
    from models.registry import has_champion  # lazy: pandas loads when the task runs, not at each DAG parse

    return has_champion(settings, dataset)


def publish(settings: Settings, dataset: str, ds: str) -> int:
    """Publish the incidents of partition ``ds`` to the alerts table; returns their count."""
    from fleetwatch.core.publishing import publish_alerts  # lazy: pandas loads when the task runs, not at each DAG parse

    return publish_alerts(settings, dataset, parse_day(ds))


def drift_summary(settings: Settings, dataset: str, ds: str):
    """The drift check's summary of partition ``ds`` (``models.drift_check.DriftSummary``), None if it wrote none."""
    from models.drift_check import read_summary  # lazy: pandas loads when the task runs, not at each DAG parse

    return read_summary(settings, dataset, parse_day(ds))


def adapting(settings: Settings, dataset: str, ds: str) -> list[str]:
    """Entities whose persistent alert open on ``ds`` asks for a retrain (``models.adaptation``)."""
    from fleetwatch.core.specs import load_spec  # lazy: pandas loads when the task runs, not at each DAG parse
    from models.adaptation import adaptation_queue
    from models.registry import champion_window_end

    spec = load_spec(settings.specs_dir, dataset)
    return adaptation_queue(settings, spec, parse_day(ds), champion_window_end(settings, dataset))
