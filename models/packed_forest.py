"""An isolation forest's trees as flat arrays, walked by one compiled loop.

scikit-learn scores a forest tree by tree (``Tree.apply``), and its trees must first be rebuilt as
``Tree`` objects of 64-byte node records: at 1,000 entities that rebuild was most of a night's
model loading (``benchmarks/README.md``, "Scale"). A :class:`PackedForest` keeps only what
isolation reads, per node of all the trees concatenated: the right child, the split column, the
threshold as a float32, and what a row ending in that node adds to its path length.
:func:`path_lengths` walks every row down every tree in one numba loop, compiled once and cached
on disk (``cache=True``), without the GIL.

The trees are grown depth first (``models.iforest.grow_isolation_forest``), so a node's left child
is the next node. Every row takes the branch scikit-learn's tree takes: a float32 row is at most a
float64 threshold exactly when it is at most the largest float32 not above it. Each row's path
lengths are added in tree order from zero, as scikit-learn's loop adds them, so the scores are the
same floats (``tests/test_detectors.py`` holds them equal). Rows are finite: the detectors refuse
NaN before scoring, so the missing-value side of a split is never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

LEAF = -1  # scikit-learn's child of a leaf


@numba.njit(cache=True, nogil=True)
def path_lengths(X, starts, right, feature, threshold, leaf_value):
    """Each row's summed path length over the trees: per tree (``starts``: its first node), down
    from its root to a leaf, left (the next node) when the row's value is at most the threshold."""
    n_rows = X.shape[0]
    out = np.zeros(n_rows)
    for tree in range(starts.shape[0]):
        first = starts[tree]
        for row in range(n_rows):
            node = first
            while right[node] != LEAF:
                if X[row, feature[node]] <= threshold[node]:
                    node += 1
                else:
                    node = first + right[node]
            out[row] += leaf_value[node]
    return out


@dataclass(frozen=True)
class PackedForest:
    """A forest's nodes, all trees concatenated; children are numbered inside their own tree."""

    starts: np.ndarray  # int64, (n_trees,): each tree's first node
    right: np.ndarray  # int32, (n_nodes,): right child, -1 at a leaf
    feature: np.ndarray  # int32, (n_nodes,): the column of the scored rows a node splits on (0 at a leaf)
    threshold: np.ndarray  # float32, (n_nodes,): the largest float32 at most the split's threshold
    leaf_value: np.ndarray  # float64, (n_nodes,): depth + average path length of the node's rows - 1
    denominator: float  # trees x the average path length of a tree's rows

    @classmethod
    def of_nodes(cls, *, tree_nodes, right, inner_feature, inner_threshold, leaf_value, denominator: float) -> PackedForest:
        """Packed from the per-tree node counts, the right children of every node, and the split
        column and (float32, rounded down) threshold of the inner nodes only, in node order."""
        right = np.asarray(right, dtype=np.int32)
        starts = np.cumsum([0, *tree_nodes[:-1]]).astype(np.int64)
        inner = np.flatnonzero(right != LEAF)  # indices, not a mask: scattering by them costs a quarter
        feature = np.zeros(len(right), dtype=np.int32)
        feature[inner] = inner_feature
        threshold = np.zeros(len(right), dtype=np.float32)
        threshold[inner] = inner_threshold
        return cls(starts, right, feature, threshold, np.ascontiguousarray(leaf_value, dtype=np.float64),
                   float(denominator))

    def scores(self, X) -> np.ndarray:
        """scikit-learn's ``IsolationForest.score_samples`` of finite rows ``X``, negated: higher is
        more anomalous (0.5 everywhere for a forest whose trees saw one row)."""
        depths = path_lengths(np.ascontiguousarray(X, dtype=np.float32), self.starts, self.right, self.feature,
                              self.threshold, self.leaf_value)
        if self.denominator == 0:
            return np.full(len(depths), 0.5)
        return 2 ** -(depths / self.denominator)
