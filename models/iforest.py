"""IsolationForest behind the detector contract, saved as plain arrays (no pickle).

A fitted forest is its trees' node tables and a few numbers. :meth:`IForestDetector.state_arrays`
keeps what isolation reads of them, each in its narrowest exact type, every tree's nodes
concatenated: right children, row counts and depths of all nodes; split feature, threshold and
missing-value side of the inner nodes only (a leaf's are constants, and a left child is always the
next node: the trees are grown depth first); the feature subsets and seeds; and a JSON header of
the forest's and the trees' scalar attributes. A threshold is kept as the largest float32 not
above it: the trees compare float32 rows (scikit-learn casts them), and a float32 row is at most
the threshold exactly when it is at most that float32, so every row takes the same branch and the
scores are identical, in half the bytes. Nothing is unpickled.

Scoring walks the trees as flat arrays (``models.packed_forest``), the same floats as
scikit-learn's ``score_samples``. Loading builds only those arrays from the saved ones (the
path-length corrections recomputed from the row counts as scikit-learn computes them); the
scikit-learn forest (``forest_``) is rebuilt from them on first access (``Tree.__setstate__``),
which scoring never needs. Impurities and leaf values, which isolation never reads, are not kept
(zero in a rebuilt forest). Forests saved in the previous format (every node's fields, float64
thresholds) still load.

Fitting grows scikit-learn's own trees with its tree builder (:func:`grow_isolation_forest`), the
same draws in the same order as ``IsolationForest.fit``, so the forest is scikit-learn's node for
node; it skips the per-tree estimator cloning and input checks, which cost more than the trees.
"""

from __future__ import annotations

import io
import json
import numbers
from collections.abc import Mapping
from functools import lru_cache

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.ensemble._iforest import _average_path_length
from sklearn.tree import ExtraTreeRegressor
from sklearn.tree._criterion import MSE
from sklearn.tree._splitter import RandomSplitter
from sklearn.tree._tree import DepthFirstTreeBuilder, Tree
from sklearn.utils import check_random_state
from sklearn.utils.random import sample_without_replacement

from models.base import BaseDetector
from models.packed_forest import PackedForest

FORMAT = 3
_NODE_DTYPE = Tree(1, np.ones(1, dtype=np.intp), 1).__getstate__()["nodes"].dtype
_LEAF, _UNDEFINED = -1, -2  # scikit-learn's child of a leaf, and a leaf's feature and threshold
# Format 2 (still read): every node's fields, each in a fixed type.
_NODE_FIELDS_2 = {"left_child": np.int32, "right_child": np.int32, "feature": np.int32, "threshold": np.float64,
                  "n_node_samples": np.int32, "missing_go_to_left": np.uint8}
_FOREST_ARRAYS = ("estimators_", "estimators_features_", "_seeds", "_average_path_length_per_tree",
                  "_decision_path_lengths", "estimator_")


class IForestDetector(BaseDetector):
    """Isolation forest; score = minus sklearn's ``score_samples`` (higher = more anomalous).

    Parameters
    ----------
    n_estimators : int, default=100
        Number of trees.
    max_samples : int, float or "auto", default=256
        Rows drawn per tree; an int larger than the training set means the whole set.
    random_state : int, RandomState instance or None, default=None
        Seeds the subsampling and the splits.
    """

    def __init__(self, *, n_estimators: int = 100, max_samples=256, random_state=None):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state

    def fit(self, X, y=None):
        """Fit the forest on ``X`` (n_samples, n_features)."""
        X = self._validate(X, reset=True)
        max_samples = self.max_samples
        if isinstance(max_samples, numbers.Integral):
            max_samples = min(max_samples, X.shape[0])
        self.forest_ = grow_isolation_forest(
            IsolationForest(n_estimators=self.n_estimators, max_samples=max_samples, random_state=self.random_state), X
        )
        self.packed_ = packed(self.forest_, self.n_features_in_)
        return self

    def score_samples(self, X) -> np.ndarray:
        """Anomaly score per row; higher = more anomalous: minus scikit-learn's ``score_samples``,
        the same floats, from the packed trees (``models.packed_forest``) in one compiled walk."""
        X = self._validate(X, reset=False)
        return self.packed_.scores(X)

    def __getattr__(self, name: str):
        """A loaded detector's scikit-learn forest, rebuilt from its saved arrays on first access."""
        saved = self.__dict__.get("_saved")
        if name != "forest_" or saved is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        self.forest_ = _forest(*saved)
        return self.forest_

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The fitted forest as plain arrays (see the module docstring), ``header`` a JSON text as bytes."""
        forest = self.forest_
        trees = [est.tree_.__getstate__() for est in forest.estimators_]
        nodes, inner = _depth_first_nodes(trees)
        header = {
            "format": FORMAT,
            "params": self.get_params(),
            "n_features_in": int(self.n_features_in_),
            "forest": _scalars(forest.__dict__, skip=_FOREST_ARRAYS),
            "estimator": _scalars(forest.estimators_[0].__dict__, skip=("tree_", "random_state")),
            "template": forest.estimator_.get_params() if forest.estimator_ is not None else None,
            "tree_random_state": [int(est.random_state) for est in forest.estimators_],
            "tree_max_depth": [int(t["max_depth"]) for t in trees],
            "tree_nodes": [int(t["node_count"]) for t in trees],
        }
        return {
            "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            "right_child": _narrow(nodes["right_child"]),
            "n_node_samples": _narrow(nodes["n_node_samples"]),
            "feature": _narrow(nodes["feature"][inner]),
            "threshold": _float32_at_most(nodes["threshold"][inner]),
            "missing_go_to_left": nodes["missing_go_to_left"][inner].astype(np.uint8),
            "depths": np.concatenate(forest._decision_path_lengths).astype(np.uint8),
            "features": _narrow(np.stack(forest.estimators_features_)),
            "seeds": np.asarray(forest._seeds),
        }

    def to_bytes(self) -> bytes:
        """:meth:`state_arrays` as one ``.npz``."""
        out = io.BytesIO()
        np.savez(out, **self.state_arrays())
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> IForestDetector:
        """Load what :meth:`to_bytes` wrote (this format or the previous one)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        return cls.from_state_arrays(json.loads(arrays["header"].tobytes())["params"], arrays)

    @classmethod
    def from_state_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> IForestDetector:
        """The detector with ``params`` (``get_params()``) that :meth:`state_arrays` describes (or a
        format-2 ``.npz``'s arrays): its packed trees, built from the arrays without scikit-learn's
        objects; ``forest_`` is rebuilt on first access."""
        header = json.loads(np.asarray(arrays["header"]).tobytes())
        detector = cls(**params)
        detector.n_features_in_ = header["n_features_in"]
        if header.get("format") == FORMAT:
            detector._saved = (header, arrays)
            detector.packed_ = _packed_arrays(header, arrays)
        elif header.get("format") == 2:
            detector.forest_ = _forest(header, arrays)
            detector.packed_ = packed(detector.forest_, header["n_features_in"])
        else:
            raise ValueError(f"isolation forest saved in format {header.get('format')}, expected {FORMAT} (or 2)")
        return detector


def packed(forest: IsolationForest, n_features: int) -> PackedForest:
    """The packed trees (``models.packed_forest``) of a fitted scikit-learn forest; its trees must
    be grown depth first (a left child is the next node) on all ``n_features`` columns, as
    :func:`grow_isolation_forest` grows them."""
    _require_every_column(forest._max_features, n_features)
    nodes, inner = _depth_first_nodes([est.tree_.__getstate__() for est in forest.estimators_])
    tree_nodes = [est.tree_.node_count for est in forest.estimators_]
    leaf_value = np.concatenate(forest._decision_path_lengths) + np.concatenate(forest._average_path_length_per_tree) - 1.0
    return PackedForest.of_nodes(
        tree_nodes=tree_nodes, right=nodes["right_child"], inner_feature=nodes["feature"][inner],
        inner_threshold=_float32_at_most(nodes["threshold"][inner]), leaf_value=leaf_value,
        denominator=_denominator(len(tree_nodes), forest._max_samples),
    )


def _packed_arrays(header: dict, arrays: Mapping[str, np.ndarray]) -> PackedForest:
    """The packed trees of a format-3 forest, from its saved arrays alone. A row ending in a node
    adds its depth plus the average path length of the node's rows, minus one: scikit-learn's sum,
    in its order, so the same floats."""
    forest = header["forest"]
    _require_every_column(forest.get("_max_features", header["n_features_in"]), header["n_features_in"])
    leaf_value = arrays["depths"] + _average_path_lengths(arrays["n_node_samples"]) - 1.0  # small ints: exact in float64
    return PackedForest.of_nodes(
        tree_nodes=header["tree_nodes"], right=arrays["right_child"], inner_feature=arrays["feature"],
        inner_threshold=arrays["threshold"], leaf_value=leaf_value,
        denominator=_denominator(len(header["tree_nodes"]), forest["_max_samples"]),
    )


def _depth_first_nodes(trees: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The node records of trees' ``__getstate__()`` concatenated, and the mask of inner nodes;
    raises unless every left child is the next node (what saving and packing rely on)."""
    nodes = np.concatenate([t["nodes"] for t in trees])
    inner = nodes["left_child"] != _LEAF
    if not np.array_equal(nodes["left_child"][inner], _local_index([int(t["node_count"]) for t in trees])[inner] + 1):
        raise ValueError("isolation forest: a left child is not the next node; only depth-first trees can be saved or packed")
    return nodes, inner


def _require_every_column(max_features: int, n_features: int) -> None:
    if max_features != n_features:
        raise ValueError(f"isolation forest: trees grown on {max_features} of {n_features} columns; "
                         "only forests grown on every column can be packed")


def _denominator(n_trees: int, max_samples: int) -> float:
    """What the summed path lengths are divided by, as scikit-learn computes it (its average path
    length of ``max_samples`` rows, from the table :func:`_average_path_lengths` keeps)."""
    return float(n_trees * _path_length_table(int(max_samples))[int(max_samples)])


def _forest(header: dict, arrays: Mapping[str, np.ndarray]) -> IsolationForest:
    """The scikit-learn forest that a format-3 (or format-2) forest's saved arrays describe."""
    if header.get("format") == FORMAT:
        nodes = _nodes(arrays, header["tree_nodes"])
    else:
        nodes = np.zeros(len(arrays["depths"]), dtype=_NODE_DTYPE)
        for name in _NODE_FIELDS_2:
            nodes[name] = arrays[name]
    nodes["weighted_n_node_samples"] = nodes["n_node_samples"]  # fitted without sample weights
    depths, features, seeds = arrays["depths"].astype(np.int64), arrays["features"].astype(np.intp), np.array(arrays["seeds"])
    forest = IsolationForest.__new__(IsolationForest)
    forest.__dict__.update(_restored(header["forest"]))
    n_features = int(forest.__dict__.get("n_features_in_", header["n_features_in"]))
    estimator, n_outputs = _restored(header["estimator"]), np.ones(1, dtype=np.intp)  # the same for every tree
    estimators, start, values = [], 0, np.zeros((len(nodes), 1, 1))  # leaf values: never read by isolation
    for depth, count, seed in zip(header["tree_max_depth"], header["tree_nodes"], header["tree_random_state"], strict=True):
        est = ExtraTreeRegressor.__new__(ExtraTreeRegressor)
        est.__dict__.update(estimator)
        est.random_state = seed
        tree = Tree(n_features, n_outputs, 1)
        tree.__setstate__({"max_depth": depth, "node_count": count, "nodes": nodes[start : start + count],
                           "values": values[start : start + count]})
        est.tree_ = tree
        estimators.append(est)
        start += count
    bounds = np.cumsum([0, *header["tree_nodes"]]).tolist()
    pieces = list(zip(bounds[:-1], bounds[1:], strict=True))  # each tree's nodes (np.split costs more a tree)
    forest.estimators_ = estimators
    forest.estimators_features_ = list(features)
    forest._seeds = seeds
    corrections = _average_path_lengths(nodes["n_node_samples"])
    forest._average_path_length_per_tree = tuple(corrections[a:b] for a, b in pieces)
    forest._decision_path_lengths = tuple(depths[a:b] for a, b in pieces)
    forest.estimator_ = None if header["template"] is None else ExtraTreeRegressor(**header["template"])
    return forest


def _local_index(tree_nodes: list[int]) -> np.ndarray:
    """Each node's index inside its own tree, for trees of ``tree_nodes`` nodes concatenated."""
    total = int(np.sum(tree_nodes))
    return np.arange(total) - np.repeat(np.cumsum([0, *tree_nodes[:-1]]), tree_nodes)


def _nodes(arrays: Mapping[str, np.ndarray], tree_nodes: list[int]) -> np.ndarray:
    """The concatenated node table of a format-3 forest: leaves' constants and left children restored."""
    right = arrays["right_child"]
    n = len(right)
    inner = np.flatnonzero(right != _LEAF)  # indices, not a mask: three fields are scattered by them
    nodes = np.zeros(n, dtype=_NODE_DTYPE)
    left = np.full(n, _LEAF, dtype=np.intp)
    left[inner] = _local_index(tree_nodes)[inner] + 1
    nodes["left_child"] = left
    nodes["right_child"] = right
    nodes["n_node_samples"] = arrays["n_node_samples"]
    for name, leaf_value in (("feature", _UNDEFINED), ("threshold", _UNDEFINED), ("missing_go_to_left", 0)):
        field = np.full(n, leaf_value, dtype=_NODE_DTYPE[name])
        field[inner] = arrays[name]
        nodes[name] = field
    return nodes


def _narrow(values: np.ndarray) -> np.ndarray:
    """Integers in the narrowest of int16, int32 and int64 that holds them exactly."""
    values = np.asarray(values)
    for dtype in (np.int16, np.int32):
        info = np.iinfo(dtype)
        if values.size == 0 or (values.min() >= info.min and values.max() <= info.max):
            return values.astype(dtype)
    return values.astype(np.int64)


def _float32_at_most(values: np.ndarray) -> np.ndarray:
    """The largest float32 at most each value: a float32 ``x`` is ``<= v`` exactly when it is ``<=`` this."""
    down = np.asarray(values, dtype=np.float64).astype(np.float32)
    above = down.astype(np.float64) > values
    down[above] = np.nextafter(down[above], np.float32(-np.inf))
    return down


_MAX_INT = np.iinfo(np.int32).max


def grow_isolation_forest(forest: IsolationForest, X) -> IsolationForest:
    """``forest`` fitted on ``X`` as ``IsolationForest.fit`` fits it (scikit-learn 1.9, default
    ``contamination``, ``max_features``, no bootstrap, no sample weights): the same random draws in
    the same order, each tree grown by scikit-learn's depth-first builder with its random
    splitter on the tree's rows given as 0/1 sample weights, and the same fitted attributes.

    Why: ``fit`` clones an estimator, re-reads its parameters and re-checks the input for every
    tree, about twice the cost of growing it. ``tests/test_detectors.py`` holds the two forests
    equal node for node, so a scikit-learn upgrade that changes ``fit`` fails there, not silently.
    """
    forest._validate_params()
    if forest.contamination != "auto" or forest.max_features != 1.0 or forest.bootstrap or forest.warm_start:
        raise ValueError("grow_isolation_forest grows the default forest: contamination 'auto', all features, no bootstrap")
    X = np.asarray(X, dtype=np.float32)
    n_rows, n_features = X.shape
    y = check_random_state(forest.random_state).uniform(size=n_rows).reshape(-1, 1)
    if isinstance(forest.max_samples, str):
        max_samples = min(256, n_rows)
    elif isinstance(forest.max_samples, numbers.Integral):
        max_samples = min(forest.max_samples, n_rows)
    else:
        max_samples = int(forest.max_samples * n_rows)
    if max_samples < 1:
        raise ValueError(f"grow_isolation_forest: max_samples={forest.max_samples!r} leaves no row of {n_rows} for a tree")
    max_depth = int(np.ceil(np.log2(max(max_samples, 2))))
    seeds = check_random_state(forest.random_state).randint(_MAX_INT, size=forest.n_estimators)
    template = ExtraTreeRegressor(max_features=1, splitter="random", random_state=forest.random_state, max_depth=max_depth)
    params = template.get_params()
    draws, splits = np.random.RandomState(0), np.random.RandomState(0)  # re-seeded per tree: cheaper than new ones
    estimators, features_of = [], []
    for seed in seeds:
        draws.seed(seed)
        tree_seed = draws.randint(_MAX_INT)  # what the estimator's random_state is set to
        draws.seed(seed)
        features = sample_without_replacement(n_features, n_features, random_state=draws)
        rows = sample_without_replacement(n_rows, max_samples, random_state=draws)
        splits.seed(tree_seed)
        splitter = RandomSplitter(MSE(1, n_rows), 1, 1, 0.0, splits, None)
        tree = Tree(n_features, np.ones(1, dtype=np.intp), 1)
        weights = np.bincount(rows, minlength=n_rows).astype(np.float64)
        DepthFirstTreeBuilder(splitter, 2, 1, 0.0, max_depth, 0.0).build(tree, X, y, weights, None)
        estimator = ExtraTreeRegressor.__new__(ExtraTreeRegressor)
        estimator.__dict__.update(params, random_state=tree_seed, n_features_in_=n_features, n_outputs_=1, max_features_=1)
        estimator.tree_ = tree
        estimators.append(estimator)
        features_of.append(features)
    counts = [e.tree_.n_node_samples for e in estimators]  # path corrections in one call: elementwise, the same values
    corrections = np.split(_average_path_length(np.concatenate(counts)), np.cumsum([len(c) for c in counts])[:-1])
    forest.__dict__.update(
        n_features_in_=n_features, _n_samples=n_rows, max_samples_=max_samples, _max_samples=max_samples,
        _max_features=n_features, _sample_weight=None, estimator_=template, estimators_=estimators,
        estimators_features_=features_of, _seeds=seeds, offset_=-0.5,
        _average_path_length_per_tree=tuple(corrections),
        _decision_path_lengths=tuple(e.tree_.compute_node_depths() for e in estimators),
    )
    return forest


def _average_path_lengths(rows: np.ndarray) -> np.ndarray:
    """scikit-learn's ``_average_path_length`` of each node's row count, the same floats: looked up
    in a table of every count up to the largest (a tree's rows, ``max_samples``), not computed per
    node; the table is kept per largest count, for the next forest a process loads."""
    return _path_length_table(int(rows.max(initial=0)))[rows]


@lru_cache(maxsize=16)
def _path_length_table(largest: int) -> np.ndarray:
    table = _average_path_length(np.arange(largest + 1))
    table.flags.writeable = False  # shared by every forest loaded with the same largest count
    return table


def _scalars(attributes: dict, skip: tuple[str, ...]) -> dict:
    """JSON-ready copy of an object's plain attributes (numbers, strings, None, tuples of them)."""
    out = {}
    for key, value in attributes.items():
        if key in skip:
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, tuple):
            out[key] = {"tuple": list(value)}
        elif value is None or isinstance(value, bool | int | float | str):
            out[key] = value
        else:
            raise TypeError(f"cannot save attribute {key!r} of type {type(value).__name__} of an isolation forest")
    return out


def _restored(attributes: dict) -> dict:
    return {k: tuple(v["tuple"]) if isinstance(v, dict) and "tuple" in v else v for k, v in attributes.items()}
