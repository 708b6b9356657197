"""Bytes and load time of FleetWatch's model formats: one isolation forest against skops, and
one entity's whole archive against the previous archive formats.

``forest``: one forest as the ensemble fits it (100 trees, 2,048 rows a tree) on random rows of
``--features`` columns, saved both ways, each loaded ``--repeats`` times in this process.
``entity``: a bucket of ``--entities`` entities fitted with the default ensemble (8 metrics, 3
days of minute rows; one autoencoder epoch: the weights are as large), each archive written in
this format (its arrays' safetensors buffer compressed with zstd), in format 4 (the same buffer
deflated by the zip) and in format 3 (``arrays.npz``, one ``.npz`` per forest with every node's
fields and float64 thresholds, one ``torch.save`` file per autoencoder), loaded ``--repeats``
times each, the formats interleaved; CPU seconds of this process. Prints bytes, load time and
their ratios, with the load average.

    .venv/bin/python -m benchmarks.model_format forest
    .venv/bin/python -m benchmarks.model_format entity --entities 8
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
import zipfile
import zlib

import numpy as np
import pyarrow as pa
import safetensors.numpy
import skops.io as sio

from benchmarks.ensemble_cost import fleet_rows
from fleetwatch.core.specs import DatasetSpec, MetricSpec
from models.entity_model import EntityModel
from models.fitting import fit_bucket
from models.frames import one_thread_per_task
from models.iforest import _NODE_FIELDS_2, IForestDetector  # format 2's fields, as the loader reads them
from models.params import FeatureLayout, ModelParams

TRUSTED = ["sklearn.tree._tree.Tree"]


def previous_forest(detector: IForestDetector) -> bytes:
    """The forest as format 2 saved it: every node's fields in fixed types, float64 thresholds."""
    arrays = detector.state_arrays()
    header = json.loads(arrays["header"].tobytes())
    nodes = np.concatenate([e.tree_.__getstate__()["nodes"] for e in detector.forest_.estimators_])
    out = io.BytesIO()
    np.savez(out, header=np.frombuffer(json.dumps({**header, "format": 2}).encode(), dtype=np.uint8),
             **{name: nodes[name].astype(dtype) for name, dtype in _NODE_FIELDS_2.items()},
             depths=arrays["depths"], features=arrays["features"].astype(np.int32), seeds=arrays["seeds"])
    return out.getvalue()


def arrays_of(archive: zipfile.ZipFile) -> tuple[dict, bytes]:
    """The manifest and the safetensors buffer of a format-5 archive (zstd, pyarrow's codec)."""
    manifest = json.loads(archive.read("manifest.json"))
    raw = pa.Codec("zstd").decompress(archive.read("arrays.safetensors.zst"), manifest["arrays_bytes"], asbytes=True)
    return manifest, raw


def deflated_archive(model: EntityModel) -> bytes:
    """``model`` as archive format 4 wrote it: the same safetensors buffer, deflated by the zip."""
    with zipfile.ZipFile(io.BytesIO(model.to_bytes())) as archive:
        manifest, raw = arrays_of(archive)
    manifest["format"] = 4
    del manifest["arrays_bytes"]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", json.dumps(manifest, sort_keys=True))
        archive.writestr("arrays.safetensors", raw)
    return out.getvalue()


def previous_archive(model: EntityModel) -> bytes:
    """``model`` as archive format 3 wrote it: ``manifest.json``, ``arrays.npz`` (scaler, drift,
    calibrators) and one file per fitted detector (format-2 forests, ``torch.save`` networks)."""
    with zipfile.ZipFile(io.BytesIO(model.to_bytes())) as archive:
        manifest, raw = arrays_of(archive)
        arrays = safetensors.numpy.load(raw)
    del manifest["arrays_bytes"]
    arrays.update({k: np.array(v, dtype=str) for k, v in manifest.pop("text_arrays").items()})
    manifest["format"], files = 3, {}
    for m in manifest.get("ensemble", {}).get("members", []):
        if m.pop("params", None) is not None:
            detector = model.ensemble.member(m["name"]).detector
            if m["kind"] == "iforest":
                files[f"members/{m['name']}.npz"] = previous_forest(detector)
            else:
                files[f"members/{m['name']}.pt"] = detector.to_bytes()
    npz = io.BytesIO()
    np.savez(npz, **{k: v for k, v in arrays.items() if not k.startswith("member_")})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", json.dumps(manifest, sort_keys=True))
        archive.writestr("arrays.npz", npz.getvalue())
        for name, payload in files.items():
            archive.writestr(name, payload)
    return out.getvalue()


def _timed(load, repeats: int) -> float:
    started = time.process_time()
    for _ in range(repeats):
        load()
    return (time.process_time() - started) / repeats


def forest(args) -> None:
    load_start = os.getloadavg()[0]
    X = np.random.default_rng(0).normal(size=(args.rows, args.features))
    detector = IForestDetector(n_estimators=100, max_samples=2048, random_state=1).fit(X)
    ours, previous = detector.to_bytes(), previous_forest(detector)
    theirs = sio.dumps({"forest": detector.forest_})
    t_ours = _timed(lambda: IForestDetector.from_bytes(ours), args.repeats)
    t_previous = _timed(lambda: IForestDetector.from_bytes(previous), args.repeats)
    t_theirs = _timed(lambda: sio.loads(theirs, trusted=TRUSTED), args.repeats)
    print(f"one forest, 100 trees x 2048 rows, {args.features} features; load average at start {load_start:.1f}, "
          f"at end {os.getloadavg()[0]:.1f}")
    print("| format | bytes | deflated | load (CPU-s) |")
    print("|---|---:|---:|---:|")
    for name, data, t in (("arrays, format 3", ours, t_ours), ("arrays, format 2", previous, t_previous),
                          ("skops", theirs, t_theirs)):
        print(f"| {name} | {len(data):,} | {len(zlib.compress(data, 6)):,} | {t:.4f} |")


def entity(args) -> None:
    one_thread_per_task()  # as a scoring task: numpy's BLAS and torch on one thread
    load_start = os.getloadavg()[0]
    train, view = fleet_rows(args.entities, args.metrics, 3)
    spec = DatasetSpec(name="bench", metrics=[MetricSpec(name=m) for m in view.metrics])
    models = fit_bucket(train, layout=FeatureLayout.of(view), spec=spec, params=ModelParams(ae_epochs=1), random_state=42)
    archives = {"this format (5, zstd)": [m.to_bytes() for m in models],
                "format 4 (deflated by the zip)": [deflated_archive(m) for m in models],
                "format 3": [previous_archive(m) for m in models]}
    cpu = dict.fromkeys(archives, 0.0)
    for _ in range(args.repeats):
        for name, datas in archives.items():
            cpu[name] += _timed(lambda datas=datas: [EntityModel.from_bytes(d) for d in datas], 1) / len(datas)
    print(f"{len(models)} entities, {args.metrics} metrics, default ensemble, {args.repeats} loads each, interleaved; "
          f"load average at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f}")
    print("| archive | bytes an entity | load (CPU-ms an entity) |")
    print("|---|---:|---:|")
    for name, datas in archives.items():
        print(f"| {name} | {np.mean([len(d) for d in datas]):,.0f} | {cpu[name] / args.repeats * 1000:.1f} |")
    new, *older = archives
    for old in older:
        print(f"{old} / this: bytes {np.mean([len(d) for d in archives[old]]) / np.mean([len(d) for d in archives[new]]):.2f}x, "
              f"load {cpu[old] / cpu[new]:.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["forest", "entity"])
    parser.add_argument("--features", type=int, default=88, help="forest: columns (8 metrics x 11 features)")
    parser.add_argument("--rows", type=int, default=5000, help="forest: training rows")
    parser.add_argument("--entities", type=int, default=8, help="entity: entities fitted")
    parser.add_argument("--metrics", type=int, default=8, help="entity: metrics an entity")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    forest(args) if args.what == "forest" else entity(args)


if __name__ == "__main__":
    main()
