"""IsolationForest behind the detector contract, saved as plain arrays (no pickle).

A fitted forest is its trees' node tables and a few numbers. :meth:`IForestDetector.to_bytes`
keeps what isolation reads of them, each in its narrowest exact type: one ``.npz`` of every tree's
children, split feature and threshold, row counts and depths (concatenated), the feature subsets
and seeds, and a JSON header of the forest's and the trees' scalar attributes. Loading rebuilds
the scikit-learn objects from them (``Tree.__setstate__``; the path-length corrections recomputed
from the row counts as scikit-learn computes them), so scores are identical, without unpickling
anything. Impurities and leaf values, which isolation never reads, are not kept (zero on load).
"""

from __future__ import annotations

import io
import json
import numbers

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.ensemble._iforest import _average_path_length
from sklearn.tree import ExtraTreeRegressor
from sklearn.tree._tree import Tree

from models.base import BaseDetector

FORMAT = 2
_NODE_DTYPE = Tree(1, np.ones(1, dtype=np.intp), 1).__getstate__()["nodes"].dtype
# What isolation reads of a node, in the narrowest exact type: children, split, rows.
_NODE_FIELDS = {"left_child": np.int32, "right_child": np.int32, "feature": np.int32, "threshold": np.float64,
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
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators, max_samples=max_samples, random_state=self.random_state
        ).fit(X)
        return self

    def score_samples(self, X) -> np.ndarray:
        """Anomaly score per row; higher = more anomalous: minus scikit-learn's ``score_samples``,
        computed as it does (float32 rows down each tree, path lengths added in tree order)
        without its per-tree dispatch, which costs more than the trees for a day of rows."""
        X = self._validate(X, reset=False).astype(np.float32)
        forest = self.forest_
        subset = forest._max_features != X.shape[1]
        depths = np.zeros(X.shape[0])
        for tree, features, path, average in zip(forest.estimators_, forest.estimators_features_,
                                                  forest._decision_path_lengths, forest._average_path_length_per_tree,
                                                  strict=True):
            leaves = tree.tree_.apply(X[:, features] if subset else X)
            depths += path[leaves] + average[leaves] - 1.0
        denominator = len(forest.estimators_) * _average_path_length([forest._max_samples])
        return 2 ** -np.divide(depths, denominator, out=np.ones_like(depths), where=denominator != 0)

    def to_bytes(self) -> bytes:
        """Parameters and fitted forest as one ``.npz`` (see the module docstring)."""
        forest = self.forest_
        trees = [est.tree_.__getstate__() for est in forest.estimators_]
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
        nodes = np.concatenate([t["nodes"] for t in trees])
        arrays = {
            "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            **{name: nodes[name].astype(dtype) for name, dtype in _NODE_FIELDS.items()},
            "depths": np.concatenate(forest._decision_path_lengths).astype(np.uint8),
            "features": np.stack(forest.estimators_features_).astype(np.int32),
            "seeds": np.asarray(forest._seeds),
        }
        out = io.BytesIO()
        np.savez(out, **arrays)
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> IForestDetector:
        """Load what :meth:`to_bytes` wrote."""
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            header = json.loads(npz["header"].tobytes())
            if header.get("format") != FORMAT:
                raise ValueError(f"isolation forest saved in format {header.get('format')}, expected {FORMAT}")
            fields = {name: npz[name] for name in _NODE_FIELDS}
            depths, features, seeds = npz["depths"].astype(np.int64), npz["features"].astype(np.intp), npz["seeds"]
        nodes = np.zeros(len(depths), dtype=_NODE_DTYPE)
        for name, values in fields.items():
            nodes[name] = values
        nodes["weighted_n_node_samples"] = nodes["n_node_samples"]  # fitted without sample weights
        forest = IsolationForest.__new__(IsolationForest)
        forest.__dict__.update(_restored(header["forest"]))
        n_features = int(forest.__dict__.get("n_features_in_", header["n_features_in"]))
        estimators, start = [], 0
        for depth, count, seed in zip(header["tree_max_depth"], header["tree_nodes"], header["tree_random_state"], strict=True):
            est = ExtraTreeRegressor.__new__(ExtraTreeRegressor)
            est.__dict__.update(_restored(header["estimator"]))
            est.random_state = seed
            tree = Tree(n_features, np.ones(1, dtype=np.intp), 1)
            tree.__setstate__({"max_depth": depth, "node_count": count, "nodes": nodes[start : start + count],
                               "values": np.zeros((count, 1, 1))})
            est.tree_ = tree
            estimators.append(est)
            start += count
        ends = np.cumsum(header["tree_nodes"])[:-1]
        forest.estimators_ = estimators
        forest.estimators_features_ = list(features)
        forest._seeds = seeds
        forest._average_path_length_per_tree = tuple(np.split(_average_path_length(nodes["n_node_samples"]), ends))
        forest._decision_path_lengths = tuple(np.split(depths, ends))
        forest.estimator_ = None if header["template"] is None else ExtraTreeRegressor(**header["template"])
        detector = cls(**header["params"])
        detector.forest_ = forest
        detector.n_features_in_ = header["n_features_in"]
        return detector


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
