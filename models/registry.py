"""MLflow registry: one experiment and one registered model per dataset; aliases move.

Every training window is one MLflow run and one version of the registered model
``fleetwatch-<dataset>``: the version is a bundle of all entities' models. A new version gets
the alias ``challenger``; it becomes ``champion`` when there is no champion yet or when it passes
the promotion gate (:func:`passes_gate`). The champion it replaces keeps the alias
``previous-champion``, so ``fleetwatch models rollback`` is one alias move.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from dataclasses import dataclass

import pandas as pd

from fleetwatch.core.errors import CorruptModel, ModelNotFound
from fleetwatch.core.lake import is_local
from fleetwatch.core.settings import Settings

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
GATE_TOLERANCE = 2.0
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def model_name(dataset: str) -> str:
    return f"fleetwatch-{dataset}"


def experiment_name(dataset: str) -> str:
    return f"fleetwatch/{dataset}"


def client(settings: Settings):
    """An MlflowClient on the settings' tracking and registry URI (set process-wide too)."""
    import mlflow  # lazy (here and below): Spark workers import this module with the scoring job, and
    from mlflow import MlflowClient  # MLflow takes seconds to import where only the driver needs it

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)


def ensure_experiment(settings: Settings, dataset: str) -> str:
    """The dataset's experiment id; artifacts stay under the FleetWatch home for a local store.

    It is tagged as model development, so the MLflow UI opens it on runs and models rather than
    on the GenAI views.
    """
    c = client(settings)
    exp = c.get_experiment_by_name(experiment_name(dataset))
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            c.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    location = None
    if settings.mlflow_tracking_uri.startswith("sqlite:") or is_local(settings.mlflow_tracking_uri):
        location = f"{settings.mlflow_artifact_root}/{dataset}"
    return c.create_experiment(experiment_name(dataset), artifact_location=location,
                               tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


def log_night(settings: Settings, dataset: str, day, *, tags: dict[str, str], metrics: dict[str, float]) -> str:
    """Log figures of one night to its run ``night <day>``; every step of the night (drift check,
    scoring) adds to the same run, and a rerun of the night reuses it. Returns the run id."""
    c = client(settings)
    exp_id = ensure_experiment(settings, dataset)
    found = c.search_runs([exp_id], f"tags.fleetwatch_kind = 'night' and tags.day = '{day}'", max_results=1)
    run = found[0] if found else c.create_run(exp_id, run_name=f"night {day}", tags={"fleetwatch_kind": "night", "day": str(day)})
    run_id = run.info.run_id
    for key, value in tags.items():
        c.set_tag(run_id, key, value)
    for key, value in metrics.items():
        if not math.isnan(float(value)):
            c.log_metric(run_id, key, float(value))
    c.set_terminated(run_id)
    return run_id


def passes_gate(alerts_per_entity_day: float, budget: float, tolerance: float = GATE_TOLERANCE) -> bool:
    """Promotion gate without labels: the challenger's incident rate on the newest day it was
    shadow-scored on must stay within ``tolerance`` times the dataset's alarm budget."""
    return alerts_per_entity_day <= budget * tolerance


def _alias_version(c, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(c.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def champion_version(settings: Settings, dataset: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return _alias_version(client(settings), model_name(dataset), CHAMPION)
    except MlflowException:
        return None


def champion_window_end(settings: Settings, dataset: str) -> dt.date | None:
    """The last day the champion was trained on (its version's ``window_end`` tag); None without one."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client(settings).get_model_version_by_alias(model_name(dataset), CHAMPION)
    except MlflowException:
        return None
    end = mv.tags.get("window_end")
    return dt.date.fromisoformat(end[:10]) if end else None


def has_champion(settings: Settings, dataset: str) -> bool:
    return champion_version(settings, dataset) is not None


def promote(settings: Settings, dataset: str, version: str) -> None:
    """Make ``version`` the champion, keeping the old champion one alias away."""
    c = client(settings)
    name = model_name(dataset)
    old = _alias_version(c, name, CHAMPION)
    if old is not None and old != str(version):
        c.set_registered_model_alias(name, PREVIOUS, old)
    c.set_registered_model_alias(name, CHAMPION, str(version))
    if _alias_version(c, name, CHALLENGER) == str(version):
        c.delete_registered_model_alias(name, CHALLENGER)


def rollback(settings: Settings, dataset: str) -> str:
    """Swap ``champion`` and ``previous-champion``; returns the new champion version."""
    c = client(settings)
    name = model_name(dataset)
    prev = _alias_version(c, name, PREVIOUS)
    if prev is None:
        raise ModelNotFound(f"{name} has no previous champion to roll back to")
    cur = _alias_version(c, name, CHAMPION)
    c.set_registered_model_alias(name, CHAMPION, prev)
    if cur is not None:
        c.set_registered_model_alias(name, PREVIOUS, cur)
    c.set_model_version_tag(name, prev, "rolled_back_from", str(cur))
    return prev


@dataclass(frozen=True)
class ChampionRef:
    """Where the champion bundle is and the lineage to stamp on alerts."""

    name: str
    version: str
    run_id: str
    bundle_dir: str
    feature_view: str


def champion(settings: Settings, dataset: str, alias: str = CHAMPION) -> ChampionRef:
    """The aliased version, its bundle downloaded once into the home's model cache."""
    import mlflow
    from mlflow.exceptions import MlflowException

    c = client(settings)
    name = model_name(dataset)
    try:
        mv = c.get_model_version_by_alias(name, alias)
    except MlflowException:
        raise ModelNotFound(
            f"no '{alias}' version of {name} in {settings.mlflow_tracking_uri}: run the retrain DAG "
            f"(or `fleetwatch train --dataset {dataset} --date D`) first"
        ) from None
    cache = settings.home / "model_cache" / name / str(mv.version)
    bundle = cache / "artifacts" / "bundle"
    if _readable_manifest(bundle) is None:  # not cached yet, or a damaged copy: fetch it again
        tmp = cache.with_name(f".{cache.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(tmp))
        shutil.rmtree(cache, ignore_errors=True)
        tmp.rename(cache)
        if _readable_manifest(bundle) is None:
            raise CorruptModel(f"{name} v{mv.version}: its manifest {bundle / 'manifest.json'} is missing or not valid JSON "
                               "in the registry too: retrain, or roll back (`fleetwatch models rollback`)")
    return ChampionRef(name, str(mv.version), mv.run_id or "", str(bundle), mv.tags.get("feature_view", ""))


def _readable_manifest(folder) -> dict | None:
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def list_versions(settings: Settings) -> pd.DataFrame:
    """Every FleetWatch registered model's versions, aliases and training windows."""
    c = client(settings)
    rows = []
    for rm in c.search_registered_models():
        if not rm.name.startswith("fleetwatch-"):
            continue
        aliases: dict[str, list[str]] = {}
        for alias, version in (rm.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for mv in c.search_model_versions(f"name='{rm.name}'"):
            rows.append(
                {
                    "model": rm.name,
                    "version": int(mv.version),
                    "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
                    "window": f"{mv.tags.get('window_start', '?')}..{mv.tags.get('window_end', '?')}",
                    "entities": mv.tags.get("entities", ""),
                    "run_id": mv.run_id,
                }
            )
    cols = ["model", "version", "aliases", "window", "entities", "run_id"]
    return pd.DataFrame(rows, columns=cols).sort_values(["model", "version"]) if rows else pd.DataFrame(columns=cols)


def record_decision(
    settings: Settings,
    dataset: str,
    version: str,
    *,
    promoted: bool,
    rate: float,
    budget: float,
    run_id: str | None = None,
    figures: dict[str, float] | None = None,
    thresholds: dict[str, list[float]] | None = None,
) -> None:
    """Keep the promotion decision and its figures on the version and its run (MLflow UI).

    ``figures`` (e.g. the precision over labelled alerts) become version tags and run metrics;
    ``thresholds`` (entity -> [fitted, raised] by false-alert feedback) a JSON version tag.
    """
    c = client(settings)
    name = model_name(dataset)
    tags = {
        "gate": "passed" if promoted else "not passed",
        "gate_incidents_per_entity_day": f"{rate:.3f}",
        "gate_budget": f"{budget}",
    }
    tags.update({k: f"{v:.3f}" for k, v in (figures or {}).items()})
    if thresholds:
        tags["feedback_thresholds"] = json.dumps({e: [round(a, 4), round(b, 4)] for e, (a, b) in thresholds.items()})
    for key, value in tags.items():
        c.set_model_version_tag(name, version, key, value)
    if run_id:
        metrics = {"gate_passed": float(promoted), "gate_incidents_per_entity_day": float(rate), **(figures or {})}
        for key, value in metrics.items():
            if not math.isnan(value):
                c.log_metric(run_id, key, float(value))
