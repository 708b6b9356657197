"""What one training window leaves in MLflow: params, metrics, tables, plots and the model."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd

from fleetwatch.core import __version__
from fleetwatch.core.settings import Settings
from fleetwatch.core.specs import DatasetSpec
from models import model_store, registry

PYFUNC_FILE = Path(__file__).with_name("pyfunc_bundle.py")


def code_version() -> str:
    """The git commit of the running code, or the package version outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def entity_table(bundle, shadow) -> pd.DataFrame:
    """One row per entity: scope, training rows, threshold and its newest-day behaviour."""
    table = bundle.entity_info()  # from the manifest: no model is loaded
    cols = ["entity_id", "rows", "flagged", "incidents"]
    return table.merge(shadow.per_entity[cols], on="entity_id", how="left")


def bundle_signature(bundle):
    """What the registered model takes and gives (an MLflow ``ModelSignature``): feature rows
    (``entity_id``, ``ts`` and the view's feature columns) in, one score row per input row out."""
    from mlflow.models import ModelSignature  # lazy: see models.registry.client
    from mlflow.types import ColSpec, Schema  # lazy: as mlflow

    inputs = Schema([ColSpec("string", "entity_id"), ColSpec("datetime", "ts")]
                    + [ColSpec("double", c) for c in bundle.feature_cols])
    outputs = Schema([ColSpec("string", "entity_id"), ColSpec("datetime", "ts"), ColSpec("double", "iforest_score"),
                      ColSpec("double", "ae_score"), ColSpec("double", "score"), ColSpec("double", "raw_score"),
                      ColSpec("double", "threshold"), ColSpec("double", "raw_threshold"), ColSpec("boolean", "flagged"),
                      ColSpec("string", "scope")]
                     + [ColSpec("double", f"err__{m}") for m in bundle.metrics])
    return ModelSignature(inputs=inputs, outputs=outputs)


def plot_scores(shadow, out_dir: Path) -> list[Path]:
    """Score distribution with thresholds, and a few entities' score timelines, as PNG."""
    import matplotlib  # lazy: only the training run's report plots; Spark workers never need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(shadow.sample["score"], bins=80, color="#4C72B0", alpha=0.8)
    ax.set_yscale("log")
    for t in sorted(set(shadow.per_entity["threshold"].round(3)))[:50]:
        ax.axvline(t, color="#C44E52", alpha=0.15, lw=1)
    ax.set_xlabel("combined calibrated score (newest day)")
    ax.set_ylabel("rows (log)")
    ax.set_title("Score distribution; red lines: per-entity thresholds")
    fig.tight_layout()
    paths.append(out_dir / "score_distribution.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    entities = list(dict.fromkeys(shadow.timelines["entity_id"]))
    if entities:
        fig, axes = plt.subplots(len(entities), 1, figsize=(9, 2.4 * len(entities)), squeeze=False)
        for ax, ent in zip(axes[:, 0], entities, strict=False):
            t = shadow.timelines[shadow.timelines["entity_id"] == ent].sort_values("ts")
            ax.plot(t["ts"], t["score"], lw=0.8)
            ax.axhline(float(t["threshold"].iloc[0]), color="#C44E52", ls="--", lw=1)
            flagged = t[t["flagged"]]
            ax.scatter(flagged["ts"], flagged["score"], s=6, color="#C44E52")
            ax.set_title(f"{ent}: score and threshold", fontsize=9)
        fig.tight_layout()
        paths.append(out_dir / "score_timelines.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def log_training_run(settings: Settings, spec: DatasetSpec, view, bundle, shadow, *, started: float | None = None,
                     partitions: list[str] = ()) -> tuple[str, str]:
    """Log the run and register the bundle as one version (alias ``challenger``).

    The version's artifacts hold the bundle's manifest, which names the model store location of
    its models (``models.model_store``): registering copies no model, whatever the fleet's size.
    The run starts at ``started`` (a ``time.time()``, the start of training, so the UI shows how
    long training took), names the feature ``partitions`` of the window as its dataset inputs, and
    the model carries a signature: feature rows in, score rows out.
    """
    import mlflow  # lazy: see models.registry.client
    from mlflow.data.meta_dataset import MetaDataset  # lazy: as mlflow
    from mlflow.data.spark_dataset_source import SparkDatasetSource  # lazy: as mlflow

    registry.client(settings)
    exp_id = registry.ensure_experiment(settings, spec.name)
    name = registry.model_name(spec.name)
    table = entity_table(bundle, shadow)
    window = {"window_start": str(bundle.window_start), "window_end": str(bundle.window_end)}
    tags = {
        **window,
        "feature_view": view.ref,
        "code_version": code_version(),
        "data_fingerprint": bundle.fingerprint(),
        "entities": str(len(bundle.entities)),
    }
    begun = registry.client(settings).create_run(
        exp_id, start_time=int(1000 * (started or time.time())), run_name=f"train {bundle.window_start}..{bundle.window_end}"
    )
    with mlflow.start_run(run_id=begun.info.run_id) as run:
        mlflow.set_tags(tags)
        for path in partitions:
            source = SparkDatasetSource(path=path)
            mlflow.log_input(MetaDataset(source, name=f"{spec.name}/{view.ref}/{path.rsplit('/', 1)[-1]}"), context="training")
        mlflow.log_params(
            {
                **window,
                "training_window_days": settings.training_window_days,
                "min_history_days": settings.min_history_days,
                "alarm_budget": spec.alarm_budget,
                "feature_view": view.ref,
                "seed": settings.seed,
                **bundle.params_dict(),
            }
        )
        mlflow.log_metrics(
            {
                "entities": len(bundle.entities),
                "fleet_scope_entities": int((table["scope"] == "fleet").sum()),
                "train_rows_mean": float(table["train_rows"].mean()),
                "threshold_median": float(table["threshold"].median()),
                "newest_day_incidents_per_entity": shadow.incidents_per_entity_day,
                "newest_day_flagged_rate": shadow.flagged_rate,
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            table.to_csv(out / "entity_metrics.csv", index=False)
            mlflow.log_artifact(str(out / "entity_metrics.csv"))
            for png in plot_scores(shadow, out):
                mlflow.log_artifact(str(png), artifact_path="plots")
            manifest_dir = out / "bundle"
            manifest_dir.mkdir()
            (manifest_dir / model_store.MANIFEST).write_bytes(model_store.read_bytes(f"{bundle.location}/{model_store.MANIFEST}"))
            info = mlflow.pyfunc.log_model(
                name="bundle",
                python_model=str(PYFUNC_FILE),
                artifacts={"bundle": str(manifest_dir)},
                signature=bundle_signature(bundle),
                pip_requirements=[f"fleetwatch=={__version__}"],
                registered_model_name=name,
                tags={**tags, "model_store": bundle.location},
            )
        run_id = run.info.run_id
    version = str(info.registered_model_version)
    c = registry.client(settings)
    for key, value in tags.items():
        c.set_model_version_tag(name, version, key, value)
    c.set_registered_model_alias(name, registry.CHALLENGER, version)
    return version, run_id
