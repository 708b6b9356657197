"""Detectors behind one contract: IsolationForest (plain arrays), stacked autoencoders (torch), scaling."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.ensemble import IsolationForest
from sklearn.exceptions import NotFittedError

from benchmarks import plain_loop
from benchmarks.model_format import previous_forest
from models.autoencoder import AutoencoderDetector, entity_seed, fit_batched
from models.iforest import IForestDetector, grow_isolation_forest, packed
from models.scaling import RobustClipScaler

FAST_AE = {"hidden": 16, "bottleneck": 4, "epochs": 20, "batch_size": 64, "lr": 1e-2}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny matrices gain nothing from intra-op threads, and on a shared machine they spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def low_rank(n: int, d: int = 10, rank: int = 3, seed: int = 0) -> np.ndarray:
    """Rows on a random rank-``rank`` plane in ``d`` dimensions, plus a little noise."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d)) + 0.05 * rng.normal(size=(n, d))


DETECTORS = [
    pytest.param(lambda: IForestDetector(n_estimators=50, random_state=0), id="iforest"),
    pytest.param(lambda: AutoencoderDetector(**FAST_AE, random_state=0), id="autoencoder"),
]


@pytest.mark.parametrize("make", DETECTORS)
def test_detector_contract(make):
    X = low_rank(400, d=4, rank=2)
    detector = make()
    assert clone(detector).get_params() == detector.get_params()
    with pytest.raises(NotFittedError):
        detector.score_samples(X)

    assert detector.fit(X) is detector
    assert detector.n_features_in_ == 4
    outlier = X[:1] + np.array([[8.0, -8.0, 8.0, -8.0]])
    scores = detector.score_samples(np.vstack([X[:50], outlier]))
    assert scores.shape == (51,)
    assert scores[-1] > scores[:50].max()

    with pytest.raises(ValueError, match="X has 3 features, but .* is expecting 4 features"):
        detector.score_samples(X[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        detector.score_samples(np.where(np.eye(4, dtype=bool), np.nan, 1.0))
    with pytest.raises(ValueError, match="NaN"):
        clone(detector).fit(np.where(np.eye(4, dtype=bool), np.nan, 1.0))


def test_scaler_centres_scales_and_clips():
    rng = np.random.default_rng(0)
    varying = rng.normal(5.0, 2.0, size=200)
    constant = np.full(200, 3.0)
    mostly_constant = np.where(np.arange(200) < 190, 1.0, 11.0)  # IQR 0, std 3
    scaler = RobustClipScaler(clip=10.0, min_scale=1e-3).fit(np.column_stack([varying, constant, mostly_constant]))

    q25, q50, q75 = np.percentile(varying, [25, 50, 75])
    np.testing.assert_allclose(scaler.center_, [q50, 3.0, 1.0])
    np.testing.assert_allclose(scaler.scale_, [q75 - q25, 1e-3, mostly_constant.std()])

    # The constant metric moves a little: without clipping it would be 1000 scale units away.
    scaled = scaler.transform([[q50, 4.0, 1.0], [q50 + (q75 - q25), 3.0, 1.0 - 3 * mostly_constant.std()]])
    np.testing.assert_allclose(scaled, [[0.0, 10.0, 0.0], [1.0, 0.0, -3.0]])

    restored = RobustClipScaler.from_state_arrays(scaler.get_params(), scaler.state_arrays())
    np.testing.assert_array_equal(restored.transform(scaled), scaler.transform(scaled))
    with pytest.raises(ValueError, match="expecting 3 features"):
        scaler.transform([[1.0, 2.0]])


def test_iforest_round_trips_as_plain_arrays_with_identical_scores():
    X = low_rank(300, d=5)
    detector = IForestDetector(n_estimators=30, max_samples=128, random_state=3).fit(X)
    data = detector.to_bytes()

    nodes = np.concatenate([e.tree_.__getstate__()["nodes"] for e in detector.forest_.estimators_])
    inner = nodes["left_child"] != -1
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:  # nothing in it needs unpickling
        assert all(npz[k].dtype != object for k in npz.files)
        assert len(npz["features"]) == 30 and npz["right_child"].shape[0] == npz["depths"].shape[0] == len(nodes)
        assert npz["threshold"].shape[0] == npz["feature"].shape[0] == inner.sum() < len(nodes)  # inner nodes only
        assert npz["right_child"].dtype == np.int16 and npz["threshold"].dtype == np.float32  # compact types
        assert (npz["threshold"].astype(np.float64) <= nodes["threshold"][inner]).all()
    loaded = IForestDetector.from_bytes(data)
    assert loaded.get_params() == detector.get_params()
    assert loaded.n_features_in_ == 5
    assert "forest_" not in vars(loaded)  # scoring reads the packed trees; scikit-learn's are rebuilt on first access
    back = np.concatenate([e.tree_.__getstate__()["nodes"] for e in loaded.forest_.estimators_])
    for field in ("left_child", "right_child", "feature", "n_node_samples", "missing_go_to_left"):
        np.testing.assert_array_equal(back[field], nodes[field])
    Y = np.vstack([low_rank(200, d=5) * 3, X])
    # a row exactly on a threshold's float32 neighbours takes the fitted tree's branch too
    split = nodes[inner][0]
    on_edge = np.repeat(X[:1].astype(np.float32), 3, axis=0)
    nearest = np.float32(split["threshold"])
    on_edge[:, split["feature"]] = [np.nextafter(nearest, -np.inf), nearest, np.nextafter(nearest, np.inf)]
    Y = np.vstack([Y, on_edge.astype(np.float64)])
    np.testing.assert_array_equal(loaded.score_samples(Y), detector.score_samples(Y))
    np.testing.assert_array_equal(loaded.forest_.score_samples(Y), detector.forest_.score_samples(Y))  # scikit-learn's own
    for before, after in zip(detector.forest_.estimators_, loaded.forest_.estimators_, strict=True):
        np.testing.assert_array_equal(after.tree_.apply(Y.astype(np.float32)), before.tree_.apply(Y.astype(np.float32)))
    for before, after in zip(detector.forest_._average_path_length_per_tree, loaded.forest_._average_path_length_per_tree,
                             strict=True):
        np.testing.assert_array_equal(after, before)  # recomputed from the row counts: the same floats
    for name in ("starts", "right", "feature", "threshold", "leaf_value"):  # packed from the saved arrays alone
        np.testing.assert_array_equal(getattr(loaded.packed_, name), getattr(detector.packed_, name))
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["header"] = np.frombuffer(arrays["header"].tobytes().replace(b'"format": 3', b'"format": 7'), dtype=np.uint8)
    other = io.BytesIO()
    np.savez(other, **arrays)
    with pytest.raises(ValueError, match="format 7"):
        IForestDetector.from_bytes(other.getvalue())


def test_iforest_saved_in_the_previous_format_still_loads_with_identical_scores():
    X = low_rank(300, d=4)
    detector = IForestDetector(n_estimators=12, max_samples=64, random_state=8).fit(X)
    previous = previous_forest(detector)
    with np.load(io.BytesIO(previous), allow_pickle=False) as npz:
        assert npz["threshold"].dtype == np.float64 and len(npz["threshold"]) == len(npz["left_child"])
    loaded = IForestDetector.from_bytes(previous)
    Y = low_rank(100, d=4) * 3
    np.testing.assert_array_equal(loaded.score_samples(Y), detector.score_samples(Y))


@pytest.mark.parametrize("rows, max_samples", [(300, 128), (40, 2048), (1, 256)])
def test_iforest_scores_equal_scikit_learns_on_new_rows(rows, max_samples):
    X = low_rank(rows, d=6)
    detector = IForestDetector(n_estimators=25, max_samples=max_samples, random_state=5).fit(X)
    Y = np.vstack([low_rank(150, d=6) * 4, X[:1]])
    np.testing.assert_array_equal(detector.score_samples(Y), -detector.forest_.score_samples(Y))


@pytest.mark.filterwarnings("ignore:max_samples .* is greater than the total number of samples")
@pytest.mark.parametrize("rows, max_samples, seed", [(600, 256, 11), (300, "auto", 4), (90, 0.5, 0), (5, 256, 2)])
def test_iforest_grows_scikit_learns_forest_node_for_node(rows, max_samples, seed):
    X = low_rank(rows, d=7, seed=seed)
    X[:, 2] = 1.0  # a constant column: never split on
    X[:, 4] = np.round(X[:, 4])  # few distinct values
    ours = grow_isolation_forest(IsolationForest(n_estimators=40, max_samples=max_samples, random_state=seed), X)
    theirs = IsolationForest(n_estimators=40, max_samples=max_samples, random_state=seed).fit(X)

    assert sorted(ours.__dict__) == sorted(theirs.__dict__)
    for name in ("n_features_in_", "_n_samples", "max_samples_", "_max_samples", "_max_features", "offset_"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.estimator_.get_params() == theirs.estimator_.get_params()
    np.testing.assert_array_equal(ours._seeds, theirs._seeds)
    for mine, sk, my_features, sk_features in zip(
        ours.estimators_, theirs.estimators_, ours.estimators_features_, theirs.estimators_features_, strict=True
    ):
        assert mine.get_params() == sk.get_params()
        assert (mine.n_features_in_, mine.n_outputs_, mine.max_features_) == (sk.n_features_in_, sk.n_outputs_, sk.max_features_)
        np.testing.assert_array_equal(my_features, sk_features)
        assert mine.tree_.max_depth == sk.tree_.max_depth
        np.testing.assert_array_equal(mine.tree_.__getstate__()["nodes"], sk.tree_.__getstate__()["nodes"])
        assert 2 not in mine.tree_.feature  # the constant column
    for a, b in zip(ours._decision_path_lengths + ours._average_path_length_per_tree,
                    theirs._decision_path_lengths + theirs._average_path_length_per_tree, strict=True):
        np.testing.assert_array_equal(a, b)
    Y = np.vstack([low_rank(100, d=7, seed=9) * 3, X])
    np.testing.assert_array_equal(ours.score_samples(Y), theirs.score_samples(Y))


def test_iforest_growth_refuses_what_it_does_not_reproduce():
    X = low_rank(50, d=3)
    with pytest.raises(ValueError, match="contamination 'auto'"):
        grow_isolation_forest(IsolationForest(contamination=0.1), X)
    with pytest.raises(ValueError, match="n_estimators"):
        grow_isolation_forest(IsolationForest(n_estimators=0), X)
    with pytest.raises(ValueError, match="leaves no row of 50"):
        grow_isolation_forest(IsolationForest(max_samples=0.01), X)


def test_packed_trees_of_scikit_learns_own_forest_score_as_it_does():
    X = low_rank(500, d=4)
    forest = IsolationForest(n_estimators=40, max_samples=200, random_state=2).fit(X)
    Y = np.vstack([low_rank(300, d=4, seed=4) * 5, X[:50]])
    np.testing.assert_array_equal(packed(forest, 4).scores(Y), -forest.score_samples(Y))
    with pytest.raises(ValueError, match="trees grown on 2 of 4 columns"):
        packed(IsolationForest(n_estimators=5, max_features=0.5, random_state=2).fit(X), 4)


def test_iforest_same_seed_same_scores_and_small_training_sets():
    X = low_rank(100, d=3)  # fewer rows than max_samples: the whole set, no warning
    first = IForestDetector(n_estimators=20, random_state=1).fit(X).score_samples(X)
    second = IForestDetector(n_estimators=20, random_state=1).fit(X).score_samples(X)
    np.testing.assert_array_equal(first, second)


def test_autoencoder_loss_falls_on_low_rank_data():
    detector = AutoencoderDetector(**FAST_AE, random_state=0).fit(low_rank(512))
    history = detector.loss_history_
    assert history.shape == (FAST_AE["epochs"],)
    assert history[-1] < 0.5 * history[0]


def test_fit_batched_matches_single_entity_fits():
    Xs = {"web-1": low_rank(300, seed=1), "web-2": low_rank(300, seed=2), "db-1": low_rank(280, seed=3)}
    batched = fit_batched(Xs, **FAST_AE, random_state=11)
    assert list(batched) == list(Xs)

    for key, X in Xs.items():
        single = AutoencoderDetector(**FAST_AE, random_state=entity_seed(11, key)).fit(X)
        assert batched[key].get_params() == single.get_params()
        for name, weight in single.weights_.items():
            np.testing.assert_allclose(batched[key].weights_[name], weight, atol=1e-5, rtol=0)
        np.testing.assert_allclose(batched[key].score_samples(X), single.score_samples(X), atol=1e-5)
        np.testing.assert_allclose(batched[key].loss_history_, single.loss_history_, atol=1e-5)

    # Entities train independently: a's model does not depend on who trained beside it.
    other = fit_batched({"db-1": Xs["db-1"], "cache-9": low_rank(300, seed=4)}, **FAST_AE, random_state=11)
    np.testing.assert_allclose(other["db-1"].weights_["W1"], batched["db-1"].weights_["W1"], atol=1e-5, rtol=0)
    assert not np.allclose(batched["web-1"].weights_["W1"], batched["web-2"].weights_["W1"])


def test_autoencoder_reruns_identical_and_seed_matters():
    Xs = {"a": low_rank(200, seed=1), "b": low_rank(200, seed=2)}
    first, second = fit_batched(Xs, **FAST_AE, random_state=5), fit_batched(Xs, **FAST_AE, random_state=5)
    third = fit_batched(Xs, **FAST_AE, random_state=6)
    for key in Xs:
        for name in first[key].weights_:
            np.testing.assert_array_equal(first[key].weights_[name], second[key].weights_[name])
    assert not np.allclose(first["a"].weights_["W1"], third["a"].weights_["W1"])


def test_autoencoder_round_trips_give_identical_scores():
    X = low_rank(200)
    detector = AutoencoderDetector(**FAST_AE, random_state=2).fit(X)
    from_bytes = AutoencoderDetector.from_bytes(detector.to_bytes())
    from_arrays = AutoencoderDetector.from_state_arrays(detector.get_params(), detector.state_arrays())
    for loaded in (from_bytes, from_arrays):
        assert loaded.get_params() == detector.get_params()
        np.testing.assert_array_equal(loaded.score_samples(X), detector.score_samples(X))
        np.testing.assert_array_equal(loaded.loss_history_, detector.loss_history_)


def test_autoencoder_scores_in_numpy_what_its_torch_network_computes():
    """Scoring runs the trained network in numpy (no torch in a scoring process): the same layers,
    to float32 rounding."""
    X = low_rank(300, seed=3)
    detector = AutoencoderDetector(**FAST_AE, random_state=4).fit(X)
    network = plain_loop.Autoencoder(10, FAST_AE["hidden"], FAST_AE["bottleneck"])  # the loop's torch network
    with torch.no_grad():
        for linear, layer in zip([network.net[0], network.net[2], network.net[3], network.net[5]], "1234", strict=True):
            linear.weight.copy_(torch.from_numpy(detector.weights_[f"W{layer}"]).T)
            linear.bias.copy_(torch.from_numpy(detector.weights_[f"b{layer}"]))
    expected = plain_loop.ae_errors(network, X)
    errors = detector.feature_errors(X)
    assert errors.dtype == np.float64
    np.testing.assert_allclose(errors, expected, rtol=1e-4, atol=1e-6)
    assert not np.allclose(errors, 0.0)


def test_autoencoder_feature_errors_point_at_shifted_features():
    X = low_rank(1000, seed=7)
    detector = AutoencoderDetector(**{**FAST_AE, "epochs": 40}, random_state=0).fit(X)
    shifted = X[:100].copy()
    shifted[:, [2, 5, 8]] += 3.0 * X[:, [2, 5, 8]].std(axis=0)

    errors = detector.feature_errors(shifted)
    assert errors.shape == (100, 10)
    np.testing.assert_allclose(errors.mean(axis=1), detector.score_samples(shifted))
    assert set(np.argsort(errors.mean(axis=0))[-3:]) == {2, 5, 8}
    assert detector.score_samples(shifted).mean() > 5 * detector.score_samples(X).mean()


def test_fit_batched_rejects_bad_entities_naming_them():
    with pytest.raises(ValueError, match="same number of features.*'b': 4"):
        fit_batched({"a": low_rank(50, d=5), "b": low_rank(50, d=4)}, **FAST_AE)
    bad = low_rank(50, d=5)
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="entity 'b': .*infinity"):
        fit_batched({"a": low_rank(50, d=5), "b": bad}, **FAST_AE)
    with pytest.raises(ValueError, match="hidden must be an int >= 1"):
        fit_batched({"a": low_rank(50, d=5)}, **{**FAST_AE, "hidden": 0})
    with pytest.raises(ValueError, match="at least one entity"):
        fit_batched({}, **FAST_AE)
