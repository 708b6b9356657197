"""Per-entity fitting, scoring and the saved bundle, on a small synthetic fleet with known anomalies."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.numpy

from benchmarks.model_format import arrays_of, deflated_archive, previous_archive
from fleetwatch.core.specs import DatasetSpec, MetricSpec
from models.bundle import ModelBundle, load_cached
from models.ensemble import EnsembleDetector
from models.entity_model import EntityModel, _by_prefix, _prefixed, score_entity
from models.explain import range_scores
from models.fitting import fit_bucket, fit_entity, fit_fleet
from models.incidents import group_incidents
from models.params import FeatureLayout, ModelParams

METRICS = ["cpu", "mem", "disk"]
FEATURES = [c for m in METRICS for c in (m, f"{m}__mean_15m")]
FEATURE_METRIC = [c.split("__")[0] for c in FEATURES]
SPEC = DatasetSpec(name="synth", sampling_seconds=300, alarm_budget=1.0, metrics=[MetricSpec(name=m) for m in METRICS])
PARAMS = ModelParams(
    iforest_n_estimators=50,
    ae_hidden=16,
    ae_bottleneck=4,
    ae_epochs=8,
    ae_batch_size=128,
    min_history_rows=300,
    gap_minutes=10,
)
LAYOUT = FeatureLayout(tuple(FEATURES), tuple(FEATURE_METRIC), tuple(METRICS))
FIT = dict(layout=LAYOUT, spec=SPEC, params=PARAMS, random_state=7)
DAY = 288  # rows per day at 5-minute sampling


def raw_rows(entity: str, start: str, n_rows: int, seed: int, level: float = 0.0) -> pd.DataFrame:
    """Daily-cycling cpu, flat mem, disk following cpu; ``level`` shifts an entity's scale."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range(start, periods=n_rows, freq="5min", tz="UTC")
    phase = 2 * np.pi * (ts.hour * 60 + ts.minute).to_numpy() / 1440
    cpu = 50 + level + 10 * np.sin(phase) + rng.normal(0, 2, n_rows)
    mem = 30 + level + rng.normal(0, 1, n_rows)
    disk = 70 + 0.5 * cpu + rng.normal(0, 1, n_rows)
    return pd.DataFrame({"entity_id": entity, "ts": ts, "cpu": cpu, "mem": mem, "disk": disk})


def features(*raws: pd.DataFrame) -> pd.DataFrame:
    """Each metric and its 15-minute rolling mean, per entity (a stand-in for the feature view)."""
    out = []
    for raw in raws:
        frame = raw.sort_values("ts").reset_index(drop=True)
        for m in METRICS:
            frame[f"{m}__mean_15m"] = frame[m].rolling(3, min_periods=1).mean()
        out.append(frame)
    return pd.concat(out, ignore_index=True)


@pytest.fixture(scope="module")
def window() -> pd.DataFrame:
    """Three days of a and b (b on another level), and 100 rows of the newcomer c."""
    return features(
        raw_rows("a", "2026-01-01", 3 * DAY, 1),
        raw_rows("b", "2026-01-01", 3 * DAY, 2, level=20.0),
        raw_rows("c", "2026-01-03", 100, 3),
    ).sample(frac=1.0, random_state=0)  # a Spark task gets rows in any order


@pytest.fixture(scope="module")
def bundle(window) -> ModelBundle:
    models = fit_bucket(window, **FIT)
    return ModelBundle(
        dataset="synth",
        feature_view="telemetry@v1",
        feature_cols=FEATURES,
        feature_metric=FEATURE_METRIC,
        metrics=METRICS,
        entities={m.entity: m for m in models},
        fleet=fit_fleet(window, **FIT),
        window_start=pd.Timestamp("2026-01-01").date(),
        window_end=pd.Timestamp("2026-01-03").date(),
        params=PARAMS,
    )


@pytest.fixture(scope="module")
def new_day() -> pd.DataFrame:
    """Day 4: a with a collective anomaly (mem +8 sigma for rows 100..120), c, and unknown z."""
    a = raw_rows("a", "2026-01-04", DAY, 11)
    a.loc[100:120, "mem"] += 8.0
    return features(a, raw_rows("c", "2026-01-04", DAY, 12), raw_rows("z", "2026-01-04", DAY, 13, level=5.0))


def test_fit_bucket_gives_short_entities_fleet_scope(bundle):
    a, b, c = (bundle.entities[e] for e in "abc")
    for model in (a, b):
        assert model.scope == "entity"
        # the view here has values and means only: one extra pair (without the means), none without
        # std or without both (it would keep no column); and the normal-range detector
        members = {m.name: m for m in model.ensemble.members}
        assert [(m.name, m.kind) for m in model.ensemble.members] == [
            ("iforest", "iforest"),
            ("autoencoder", "autoencoder"),
            ("iforest-no-mean", "iforest"),
            ("autoencoder-no-mean", "autoencoder"),
            ("range", "range"),
        ]
        assert [FEATURES[i] for i in members["iforest-no-mean"].columns] == METRICS
        assert members["range"].detector is model.profile and members["range"].weight == PARAMS.range_weight
        assert 0 < model.threshold < 10
        assert model.n_train_rows == 3 * DAY
        assert model.trained.window == (pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-01-03 23:55", tz="UTC"))
    assert a.baselines["mem"] == pytest.approx(30, abs=0.5) and b.baselines["mem"] == pytest.approx(50, abs=0.5)
    assert c.scope == "fleet" and c.n_train_rows == 100
    assert c.ensemble is None and np.isnan(c.threshold)
    assert c.scaler.center_[FEATURES.index("mem")] == pytest.approx(30, abs=1)
    assert bundle.fleet.entity == "__fleet__" and 0 < bundle.fleet.threshold < 10
    assert [bundle.scope_of(e) for e in "abcz"] == ["entity", "entity", "fleet", "fleet"]


def test_batched_autoencoders_match_a_single_entity_fit(window, bundle):
    alone = fit_entity(window[window["entity_id"] == "a"], **FIT)
    in_bucket = bundle.entities["a"]
    rows = features(raw_rows("a", "2026-01-04", 50, 21))
    Z = alone.scaler.transform(rows[FEATURES].to_numpy())
    for name in ("autoencoder", "autoencoder-no-mean"):
        cols = alone.ensemble.member(name).columns
        np.testing.assert_allclose(
            alone.ensemble.member(name).detector.score_samples(Z[:, cols]),
            in_bucket.ensemble.member(name).detector.score_samples(Z[:, cols]),
            rtol=1e-4,
        )
    assert alone.threshold == pytest.approx(in_bucket.threshold)


def test_fit_entity_refuses_too_little_history(window):
    with pytest.raises(ValueError, match="'c' has 100 usable rows, fewer than the 300 its history needs"):
        fit_entity(window[window["entity_id"] == "c"], **FIT)


def test_an_entity_reporting_less_often_than_the_spec_is_fitted_at_its_own_pace(window):
    """5-minute rows under a 1-minute spec: smoothing, history and the budget's incident rule are
    the same spans of time, so the model is the one a 5-minute spec gives."""
    minute = SPEC.model_copy(update={"sampling_seconds": 60})
    params = PARAMS.model_copy(update={"smooth_points": 15, "min_history_rows": 5 * PARAMS.min_history_rows})
    at_minute = {m.entity: m for m in fit_bucket(window, layout=LAYOUT, spec=minute, params=params, random_state=7)}
    at_five = {m.entity: m for m in fit_bucket(window, **{**FIT, "params": PARAMS.model_copy(update={"smooth_points": 3})})}
    for e in "ab":
        assert at_minute[e].scope == "entity" and at_minute[e].ensemble.smooth_points == 3  # 15 minutes of 5-minute rows
        assert at_minute[e].threshold == pytest.approx(at_five[e].threshold)
    assert at_minute["c"].scope == "fleet"  # 100 rows are 500 minutes: short of the history of 1500 minute-rows
    with pytest.raises(ValueError, match="'c' has 100 usable rows, fewer than the 300 its history needs"):
        fit_entity(window[window["entity_id"] == "c"], layout=LAYOUT, spec=minute, params=params, random_state=7)


def test_score_uses_own_fleet_and_partition_scaling_by_entity(bundle, new_day):
    out = bundle.score(new_day)
    assert list(out.columns) == bundle.score_columns
    assert [c for c in out.columns if c.startswith("err__")] == ["err__cpu", "err__mem", "err__disk"]
    pd.testing.assert_series_equal(out["ts"], new_day["ts"])  # row for row, in the frame's order
    assert (out["entity_id"] == new_day["entity_id"]).all()
    scope = out.groupby("entity_id")["scope"].unique().map(list).to_dict()
    assert scope == {"a": ["entity"], "c": ["fleet"], "z": ["fleet"]}
    thresholds = out.groupby("entity_id")["threshold"].unique().map(list).to_dict()
    assert thresholds["a"] == [bundle.entities["a"].threshold]
    assert thresholds["c"] == thresholds["z"] == [bundle.fleet.threshold]
    assert np.isfinite(out[["iforest_score", "ae_score", "score"]].to_numpy()).all()
    assert (out["flagged"] == (out["score"] > out["threshold"])).all()
    # z is unknown: scaled on its own partition, so its level of +5 is not an anomaly.
    assert out.loc[out["entity_id"] == "z", "flagged"].mean() < 0.05


def test_injected_collective_anomaly_is_flagged_and_explained(bundle, new_day):
    a_rows = new_day[new_day["entity_id"] == "a"].reset_index(drop=True)
    out = bundle.score(a_rows)
    inside = out.index.isin(range(100, 121))
    assert out.loc[inside, "flagged"].mean() >= 0.9
    assert out.loc[~inside, "flagged"].sum() <= 0.03 * (~inside).sum()
    incidents = group_incidents(out, gap_minutes=PARAMS.gap_minutes, sampling_seconds=SPEC.sampling_seconds)
    hit = incidents[(incidents["start_ts"] <= a_rows["ts"][120]) & (incidents["end_ts"] >= a_rows["ts"][100])]
    assert len(hit) == 1 and hit["n_points"].iloc[0] >= 19
    top = out.loc[inside, ["err__cpu", "err__mem", "err__disk"]].mean().idxmax()
    assert top == "err__mem"


def test_bundle_round_trip_scores_identically_without_pickle(bundle, new_day, tmp_path):
    folder = Path(bundle.save(tmp_path / "bundle"))
    assert sorted(p.name for p in (folder / "parts").iterdir()) == ["all.zip", "fleet.zip"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted(manifest["entities"]) == ["a", "b", "c"] and manifest["entities"]["c"]["scope"] == "fleet"
    for part_path in (folder / "parts").iterdir():
        with zipfile.ZipFile(part_path) as part:
            for entry in part.namelist():
                with zipfile.ZipFile(io.BytesIO(part.read(entry))) as archive:
                    assert set(archive.namelist()) == {"manifest.json", "arrays.safetensors.zst"}
                    arrays = safetensors.numpy.load(arrays_of(archive)[1])  # numbers only: no pickle
                    detectors = {k.split("__")[0] for k in arrays if k.startswith("member_")}
                    if entry == "c.zip":  # a short-history entity keeps no detector
                        assert detectors == set()
                    elif entry == "a.zip":
                        assert detectors == {"member_iforest", "member_autoencoder", "member_iforest-no-mean",
                                             "member_autoencoder-no-mean"}

    loaded = ModelBundle.load(folder)
    pd.testing.assert_frame_equal(loaded.score(new_day), bundle.score(new_day), check_exact=False, rtol=1e-6)
    assert loaded.window_start == bundle.window_start and loaded.params == bundle.params
    assert loaded.baselines_of("a") == bundle.entities["a"].baselines
    assert loaded.fingerprint() == bundle.fingerprint()

    partial = ModelBundle.load(folder, entities={"a", "z"})
    assert list(partial.entities) == ["a"] and partial.scope_of("b") == "entity"
    with pytest.raises(KeyError, match="'b' is in bundle synth but was not loaded"):
        partial.score(features(raw_rows("b", "2026-01-04", 10, 5)))

    assert load_cached(str(folder)) is load_cached(str(folder))
    with pytest.raises(FileExistsError, match="not empty"):
        bundle.save(folder)


def test_normal_range_detector_flags_the_anomaly_and_weighs_in_the_ensemble(bundle, new_day):
    a = bundle.entities["a"]
    rows = new_day[new_day["entity_id"] == "a"].sort_values("ts").reset_index(drop=True)
    raw = a.profile.score_samples(rows[METRICS].to_numpy())
    np.testing.assert_allclose(raw, range_scores(rows[METRICS], a.baselines, a.spreads, a.normal_ranges))
    calibrated = a.ensemble.member("range").calibrator.transform(raw)
    assert calibrated[100:121].min() > 2 > 1 > np.median(calibrated[:90])  # mem +8 sigma left its range: rarer than 1 in 100
    full = score_entity(a, rows, LAYOUT, bundle.fleet)["score"]
    without = [m for m in a.ensemble.members if m.kind != "range"]
    others = dataclasses.replace(a, ensemble=EnsembleDetector(members=without, smooth_points=a.ensemble.smooth_points))
    others.ensemble.members_ = without
    unweighted = score_entity(others, rows, LAYOUT, bundle.fleet)["score"]
    assert not np.allclose(full, unweighted)
    # the ensemble's score is the weighted mean: the range member counts ``range_weight`` times
    w, n = PARAMS.range_weight, len(without)
    smoothed = a.ensemble.member("range").calibrator.transform(
        a.ensemble.raw_scores(np.hstack([np.zeros((len(rows), len(FEATURES))), rows[METRICS].to_numpy()]))["range"]
    )
    np.testing.assert_allclose(full, (n * unweighted + w * smoothed) / (n + w), rtol=1e-9)


def test_entity_model_bytes_round_trip_keeps_every_part(bundle):
    model = bundle.entities["b"]
    back = EntityModel.from_bytes(model.to_bytes())
    assert [(m.name, m.kind, m.weight, m.columns.tolist()) for m in back.ensemble.members] == [
        (m.name, m.kind, m.weight, m.columns.tolist()) for m in model.ensemble.members
    ]
    assert (back.entity, back.scope, back.threshold, back.trained) == (model.entity, model.scope, model.threshold, model.trained)
    assert back.baselines == model.baselines and back.error_norm == model.error_norm
    assert back.spreads == model.spreads and set(back.spreads) == set(METRICS)
    assert back.normal_ranges == model.normal_ranges and set(back.normal_ranges) == set(METRICS)
    assert all(lo <= model.baselines[m] <= hi for m, (lo, hi) in model.normal_ranges.items())
    np.testing.assert_array_equal(back.scaler.scale_, model.scaler.scale_)
    for m in model.ensemble.members:
        np.testing.assert_array_equal(back.ensemble.member(m.name).calibrator.quantiles_, m.calibrator.quantiles_)
    np.testing.assert_array_equal(back.drift.proportions_, model.drift.proportions_)


def test_entity_model_scores_exactly_the_same_after_loading(bundle, new_day):
    model = bundle.entities["a"]
    rows = new_day[new_day["entity_id"] == "a"].reset_index(drop=True)
    back = EntityModel.from_bytes(model.to_bytes())
    pd.testing.assert_frame_equal(score_entity(back, rows, LAYOUT, bundle.fleet), score_entity(model, rows, LAYOUT, bundle.fleet))


def test_entity_model_archive_of_the_previous_format_still_loads(bundle, new_day):
    """Format 3 kept ``arrays.npz`` and one file per detector; bundles trained before still score."""
    model = bundle.entities["a"]
    previous = previous_archive(model)
    with zipfile.ZipFile(io.BytesIO(previous)) as archive:
        assert "arrays.npz" in archive.namelist() and "members/iforest.npz" in archive.namelist()
        manifest = json.loads(archive.read("manifest.json"))
    back = EntityModel.from_bytes(previous)
    rows = new_day[new_day["entity_id"] == "a"].reset_index(drop=True)
    pd.testing.assert_frame_equal(score_entity(back, rows, LAYOUT, bundle.fleet), score_entity(model, rows, LAYOUT, bundle.fleet))
    manifest["format"] = 2
    older = io.BytesIO()
    with zipfile.ZipFile(older, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
    with pytest.raises(ValueError, match="format 2, expected 5"):
        EntityModel.from_bytes(older.getvalue())


def test_entity_model_archive_deflated_by_the_zip_still_loads(bundle, new_day):
    """Format 4 kept the arrays' safetensors buffer deflated by the zip, not zstd-compressed;
    bundles trained before format 5 still score, to the digit."""
    model = bundle.entities["a"]
    previous = deflated_archive(model)
    with zipfile.ZipFile(io.BytesIO(previous)) as archive:
        assert json.loads(archive.read("manifest.json"))["format"] == 4 and "arrays.safetensors" in archive.namelist()
    back = EntityModel.from_bytes(previous)
    rows = new_day[new_day["entity_id"] == "a"].reset_index(drop=True)
    pd.testing.assert_frame_equal(score_entity(back, rows, LAYOUT, bundle.fleet), score_entity(model, rows, LAYOUT, bundle.fleet))


def test_a_model_that_does_not_match_its_checksum_is_refused(bundle, tmp_path):
    folder = Path(bundle.save(tmp_path / "bundle"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["entities"]["a"]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    loaded = ModelBundle.load(folder)
    assert loaded.entities["b"].entity == "b"
    with pytest.raises(ValueError, match="'a' in .*parts/all.zip does not match its checksum"):
        loaded.entities["a"]
    with pytest.raises(ValueError, match="'a' in .*parts/all.zip does not match its checksum"):
        loaded.baselines_of("a")


def test_explaining_an_entity_reads_its_profile_without_loading_its_detectors(bundle, tmp_path):
    folder = bundle.save(tmp_path / "bundle")
    lazy = ModelBundle.load(folder)
    for entity in ("a", "c"):  # c: too little history, its own profile with the fleet's detectors
        model = bundle.entities[entity]
        assert lazy.baselines_of(entity) == model.baselines and lazy.spreads_of(entity) == model.spreads
        assert lazy.normal_ranges_of(entity) == model.normal_ranges
    assert lazy.entities.loaded() == 0  # no model was decoded
    assert lazy.baselines_of("new-entity") == bundle.fleet.baselines  # unknown: the fleet's profile
    lazy.entities["a"]
    assert lazy.profile_of("a") is lazy.entities["a"].profile  # in memory: its model's own
    partial = ModelBundle.load(folder, entities={"a"})
    with pytest.raises(KeyError, match="'b' is in bundle synth but was not loaded"):
        partial.baselines_of("b")


def test_a_scoring_process_keeps_only_its_most_recent_models_and_scores_the_same(bundle, new_day, tmp_path):
    folder = bundle.save(tmp_path / "bundle")
    one = ModelBundle.load(folder, keep_models=1)
    fitted_b = one.entities["b"].threshold
    one.set_threshold("b", 3 * fitted_b)  # replaced in memory: pinned, never dropped
    for entity in ("a", "c", "a", "c"):
        one.entities[entity]
    assert one.entities.loaded() == 2  # the pinned b and the last one read
    assert one.entities["b"].threshold == 3 * fitted_b
    one.set_threshold("b", fitted_b)
    pd.testing.assert_frame_equal(one.score(new_day), ModelBundle.load(folder).score(new_day))
    assert one.entities.loaded() <= 2
    with pytest.raises(ValueError, match="keep=0"):
        ModelBundle.load(folder, keep_models=0)


def test_a_raised_threshold_is_kept_in_the_manifest_and_applied_on_load(bundle, tmp_path):
    copy = ModelBundle.load(bundle.save(tmp_path / "bundle"))
    fitted = copy.entities["a"].threshold
    copy.set_threshold("a", 2 * fitted)
    copy.save_manifest()
    again = ModelBundle.load(copy.location)
    assert again.entities["a"].threshold == 2 * fitted
    assert again.entity_info().set_index("entity_id").loc["a", "threshold"] == 2 * fitted
    assert again.entities["b"].threshold == bundle.entities["b"].threshold


def test_a_truncated_or_missing_part_is_one_line_naming_the_version_and_file(bundle, tmp_path):
    from fleetwatch.core.errors import CorruptModel
    from models.bundle import open_checked

    folder = Path(bundle.save(tmp_path / "bundle"))
    assert open_checked(str(folder), "fleetwatch-synth v3").dataset == "synth"
    part = folder / "parts" / "all.zip"
    whole = part.read_bytes()
    part.write_bytes(whole[: len(whole) // 2])
    damaged = r"fleetwatch-synth v3: .*parts/all.zip (is missing or unreadable|lacks or trunc)"
    with pytest.raises(CorruptModel, match=damaged) as err:
        open_checked(str(folder), "fleetwatch-synth v3")
    assert "\n" not in str(err.value)
    part.unlink()
    with pytest.raises(CorruptModel, match=r"fleetwatch-synth v4: .*parts/all.zip is missing"):
        open_checked(str(folder), "fleetwatch-synth v4")
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptModel, match="fleetwatch-synth v5 at .* cannot be loaded"):
        open_checked(str(folder), "fleetwatch-synth v5")


def test_a_scoring_process_scores_an_entity_without_importing_torch(bundle, new_day, tmp_path):
    """Loading and scoring need numpy, scikit-learn and numba only: a Spark worker that scores never
    pays torch's import (about 1.5 CPU-s), and its BLAS runs on one thread. Run in a fresh
    interpreter, which writes the scores."""
    (tmp_path / "a.model").write_bytes(bundle.entities["a"].to_bytes())
    (tmp_path / "fleet.model").write_bytes(bundle.fleet.to_bytes())
    rows = new_day[new_day["entity_id"] == "a"].reset_index(drop=True)
    rows.to_parquet(tmp_path / "rows.parquet")
    script = f"""
import json, sys
from pathlib import Path
import pandas as pd
import models.scoring
from threadpoolctl import threadpool_info
from models.entity_model import EntityModel, score_entity
from models.frames import one_thread_per_task
from models.params import FeatureLayout
one_thread_per_task()  # as each scoring task does first
home = Path({str(tmp_path)!r})
model, fleet = (EntityModel.from_bytes((home / name).read_bytes()) for name in ("a.model", "fleet.model"))
layout = FeatureLayout(*(tuple(part) for part in json.loads({json.dumps([FEATURES, FEATURE_METRIC, METRICS])!r})))
scores = score_entity(model, pd.read_parquet(home / "rows.parquet"), layout, fleet)
scores.to_parquet(home / "scores.parquet")
print(json.dumps([sorted(name for name in sys.modules if name.split(".")[0] == "torch"),
                  sorted(set(pool["num_threads"] for pool in threadpool_info()))]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    torch_modules, blas_threads = json.loads(done.stdout.strip().splitlines()[-1])
    assert torch_modules == []
    assert blas_threads == [1]  # numpy's BLAS held to the task's one thread
    expected = score_entity(bundle.entities["a"], rows, LAYOUT, bundle.fleet)
    scored = pd.read_parquet(tmp_path / "scores.parquet")
    pd.testing.assert_frame_equal(scored, expected)
    assert scored["flagged"].any()


def test_an_archives_arrays_are_grouped_by_the_part_that_saved_them():
    """Loading groups the saved arrays by prefix in one pass; a member name may hold ``__``."""
    nodes, weights, quantiles = np.arange(3), np.ones((2, 2)), np.linspace(0, 1, 5)
    parts = _by_prefix({**_prefixed("member_iforest__x", {"nodes": nodes}),
                        **_prefixed("member_autoencoder", {"W1": weights}),
                        **_prefixed("cal_iforest__x", {"quantiles": quantiles})})
    assert set(parts) == {"member_iforest__x", "member_autoencoder", "cal_iforest__x"}
    assert parts["member_iforest__x"]["nodes"] is nodes
    assert parts["member_autoencoder"]["W1"] is weights
    assert list(parts["cal_iforest__x"]) == ["quantiles"]
