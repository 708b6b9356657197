"""Dense autoencoders whose weights for many entities are stacked and trained as one tensor program.

Every parameter has a leading entity axis (``W1`` is (E, D, H), ...) and the training forward
pass uses ``torch.baddbmm``, so E entities cost one batched matrix product per layer instead of E
small ones. The loss is the sum over entities of each entity's mean loss, so each entity's gradient
touches only its own slice; Adam is elementwise, so one optimizer over the stacked tensors
updates each slice exactly as a separate Adam would. Initialisation and minibatch sampling of
an entity depend only on its seed, and :func:`fit_batched` derives that seed from the run's
``random_state`` and the entity key: an entity's model does not depend on which other entities
trained beside it, and ``AutoencoderDetector(random_state=entity_seed(rs, key)).fit(X)``
reproduces it.

A fitted detector holds its weights as numpy arrays and scores with numpy: scoring and loading
never import torch (about 1.5 CPU-s in every new process), only training and ``to_bytes`` do.
"""

from __future__ import annotations

import io
import math
import numbers
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from models.base import BaseDetector

if TYPE_CHECKING:
    import torch

LAYERS = ("1", "2", "3", "4")  # D -> H -> B -> H -> D


def entity_seed(random_state, key) -> int:
    """The seed of entity ``key`` in a run seeded with ``random_state``: depends on nothing else."""
    sequence = np.random.SeedSequence([_run_seed(random_state), zlib.crc32(str(key).encode())])
    return int(sequence.generate_state(1)[0])


def _run_seed(random_state) -> int:
    """An int ``random_state`` as is; otherwise (None, RandomState) one drawn from it."""
    if isinstance(random_state, numbers.Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


class AutoencoderDetector(BaseDetector):
    """Dense autoencoder D -> hidden -> bottleneck -> hidden -> D; score = mean squared error.

    Parameters
    ----------
    hidden : int, default=32
        Width of the two hidden layers (ReLU).
    bottleneck : int, default=8
        Width of the linear code layer.
    epochs : int, default=30
        Passes over the data; an epoch is ``ceil(n_samples / batch_size)`` steps.
    batch_size : int, default=256
        Rows per step (drawn from a reshuffled pass over the rows; fewer rows are repeated).
    lr : float, default=1e-3
        Adam learning rate.
    weight_decay : float, default=0.0
        Adam L2 penalty.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights and the minibatch order.

    Attributes
    ----------
    weights_ : dict of str to ndarray of float32
        This entity's weights (``W1`` (D, H), ``b1`` (H,), ... ``W4`` (H, D), ``b4`` (D,)).
    loss_history_ : ndarray of shape (epochs,)
        Mean training loss of each epoch.
    n_features_in_ : int
    """

    def __init__(
        self,
        *,
        hidden: int = 32,
        bottleneck: int = 8,
        epochs: int = 30,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        random_state=None,
    ):
        self.hidden = hidden
        self.bottleneck = bottleneck
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.random_state = random_state

    def fit(self, X, y=None):
        """Train on ``X`` (n_samples, n_features) alone, seeded with ``random_state`` as is."""
        _check_params(self.get_params())
        X = self._validate(X, reset=True)
        state, history = _train([X], [_run_seed(self.random_state)], self.get_params())
        self._set_state({name: weights[0] for name, weights in state.items()}, history[0])
        return self

    def score_samples(self, X) -> np.ndarray:
        """Mean squared reconstruction error of each row."""
        return self.feature_errors(X).mean(axis=1)

    def feature_errors(self, X) -> np.ndarray:
        """Squared reconstruction error of each feature of each row, shape (n_samples, n_features)."""
        X = self._validate(X, reset=False)
        x = X.astype(np.float32)
        errors = _reconstruct(self.weights_, x)
        errors -= x
        errors *= errors
        return errors.astype(np.float64)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Weights and loss history as numpy arrays (for an ``.npz``)."""
        check_is_fitted(self)
        arrays = dict(self.weights_)
        arrays["loss_history"] = self.loss_history_
        return arrays

    @classmethod
    def from_state_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> AutoencoderDetector:
        """The detector with ``params`` (``get_params()``) and ``arrays`` (:meth:`state_arrays`)."""
        detector = cls(**params)
        detector._set_state(arrays, np.asarray(arrays["loss_history"], dtype=np.float64))
        return detector

    def to_bytes(self) -> bytes:
        """Parameters and weights via ``torch.save`` (loadable with ``weights_only=True``)."""
        import torch

        check_is_fitted(self)
        buffer = io.BytesIO()
        payload = {
            "params": self.get_params(),
            "state": {name: torch.from_numpy(weights) for name, weights in self.weights_.items()},
            "loss_history": torch.from_numpy(self.loss_history_),
        }
        torch.save(payload, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> AutoencoderDetector:
        """Load what :meth:`to_bytes` wrote, without unpickling arbitrary objects."""
        import torch

        payload = torch.load(io.BytesIO(data), weights_only=True)
        detector = cls(**payload["params"])
        detector._set_state({name: tensor.numpy() for name, tensor in payload["state"].items()},
                            payload["loss_history"].numpy())
        return detector

    def _set_state(self, state: Mapping[str, np.ndarray], loss_history: np.ndarray) -> None:
        """Own float32 copies of ``state``'s weights (a view into a batch or a buffer is not kept)."""
        self.weights_ = {name: np.array(state[name], dtype=np.float32, order="C") for name in _param_names()}
        self.loss_history_ = np.asarray(loss_history, dtype=np.float64)
        self.n_features_in_ = self.weights_["W1"].shape[0]


def fit_batched(Xs: Mapping[str, np.ndarray], **params) -> dict[str, AutoencoderDetector]:
    """Train one autoencoder per entity, all entities together as one stacked tensor program.

    Parameters
    ----------
    Xs : mapping of entity key to array of shape (n_samples_e, n_features)
        Training rows per entity; the same features for all, the row count may differ.
    **params
        :class:`AutoencoderDetector` parameters; ``random_state`` is the run seed from which
        each entity's seed is derived with :func:`entity_seed`.

    Returns
    -------
    dict of entity key to fitted AutoencoderDetector
        In the order of ``Xs``; each holds its own weights, ``loss_history_`` and, as its
        ``random_state``, its entity seed. An epoch is ``ceil(max n_samples_e / batch_size)``
        steps for every entity, so an entity matches its single-entity fit when the largest
        entity has no more steps per epoch than it has.
    """
    if not Xs:
        raise ValueError("fit_batched needs at least one entity")
    template = AutoencoderDetector(**params)
    _check_params(template.get_params())
    keys = list(Xs)
    run_seed = _run_seed(template.random_state)
    seeds = [entity_seed(run_seed, key) for key in keys]
    detectors = {
        key: AutoencoderDetector(**{**template.get_params(), "random_state": seed})
        for key, seed in zip(keys, seeds, strict=False)
    }

    arrays = []
    for key, detector in detectors.items():
        try:
            arrays.append(detector._validate(Xs[key], reset=True))
        except ValueError as exc:
            raise ValueError(f"entity {key!r}: {exc}") from None
    n_features = {X.shape[1] for X in arrays}
    if len(n_features) > 1:
        counts = {key: X.shape[1] for key, X in zip(keys, arrays, strict=False)}
        raise ValueError(f"all entities must have the same number of features, got {counts}")

    state, history = _train(arrays, seeds, template.get_params())
    for index, detector in enumerate(detectors.values()):
        detector._set_state({name: weights[index] for name, weights in state.items()}, history[index])
    return detectors


def _check_params(params: dict) -> None:
    for name in ("hidden", "bottleneck", "epochs", "batch_size"):
        if not isinstance(params[name], numbers.Integral) or params[name] < 1:
            raise ValueError(f"AutoencoderDetector: {name} must be an int >= 1, got {params[name]!r}")
    if not params["lr"] > 0 or not params["weight_decay"] >= 0:
        raise ValueError(
            f"AutoencoderDetector: need lr > 0 and weight_decay >= 0, got {params['lr']} and {params['weight_decay']}"
        )


def _param_names() -> list[str]:
    return [f"{kind}{layer}" for layer in LAYERS for kind in ("W", "b")]


def _reconstruct(weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Reconstruction of the float32 rows ``x`` (n, D) by one network's ``weights``, in numpy."""
    h = x
    for layer in LAYERS:
        h = h @ weights[f"W{layer}"]
        h += weights[f"b{layer}"]
        if layer in ("1", "3"):
            np.maximum(h, 0.0, out=h)
    return h


def _forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Reconstruction of ``x`` (E, n, D) by the stacked networks ``params`` (leading axis E), for training."""
    import torch

    h = x
    for layer in LAYERS:
        h = torch.baddbmm(params[f"b{layer}"].unsqueeze(1), h, params[f"W{layer}"])
        if layer in ("1", "3"):
            h = torch.relu(h)
    return h


def _init_slice(seed: int, sizes: list[int]) -> dict[str, torch.Tensor]:
    """One entity's initial weights, uniform in +-1/sqrt(fan_in) as torch.nn.Linear does."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for layer, fan_in, fan_out in zip(LAYERS, sizes[:-1], sizes[1:], strict=False):
        bound = 1.0 / math.sqrt(fan_in)
        weights[f"W{layer}"] = torch.empty(fan_in, fan_out).uniform_(-bound, bound, generator=generator)
        weights[f"b{layer}"] = torch.empty(fan_out).uniform_(-bound, bound, generator=generator)
    return weights


def _epoch_indices(rng: np.random.Generator, n_rows: int, length: int) -> np.ndarray:
    """``length`` row indices: consecutive fresh permutations of the rows, cut to length."""
    passes = math.ceil(length / n_rows)
    return np.concatenate([rng.permutation(n_rows) for _ in range(passes)])[:length]


def _train(arrays: list[np.ndarray], seeds: list[int], params: dict) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Train E stacked autoencoders; returns stacked weights (E, ...) and the (E, epochs) loss history."""
    import torch

    n_entities, n_features = len(arrays), arrays[0].shape[1]
    sizes = [n_features, params["hidden"], params["bottleneck"], params["hidden"], n_features]
    slices = [_init_slice(seed, sizes) for seed in seeds]
    weights = {name: torch.stack([s[name] for s in slices]).requires_grad_() for name in _param_names()}
    optimizer = torch.optim.Adam(weights.values(), lr=params["lr"], weight_decay=params["weight_decay"])

    # All entities' rows in one (sum n_rows, D) table; a minibatch is one index_select into it.
    n_rows = [X.shape[0] for X in arrays]
    rows = torch.from_numpy(np.concatenate(arrays).astype(np.float32))
    offsets = np.cumsum([0, *n_rows[:-1]])[:, None]
    batch, steps = params["batch_size"], math.ceil(max(n_rows) / params["batch_size"])
    rngs = [np.random.default_rng(seed) for seed in seeds]

    history = np.zeros((n_entities, params["epochs"]))
    for epoch in range(params["epochs"]):
        order = np.stack([_epoch_indices(rng, n, steps * batch) for rng, n in zip(rngs, n_rows, strict=False)]) + offsets
        order = torch.from_numpy(order.reshape(n_entities, steps, batch).transpose(1, 0, 2).copy())
        epoch_loss = torch.zeros(n_entities)
        for step in range(steps):
            x = rows.index_select(0, order[step].reshape(-1)).view(n_entities, batch, n_features)
            entity_loss = torch.nn.functional.mse_loss(_forward(weights, x), x, reduction="none").mean(dim=(1, 2))
            optimizer.zero_grad(set_to_none=True)
            entity_loss.sum().backward()
            optimizer.step()
            epoch_loss += entity_loss.detach()
        history[:, epoch] = (epoch_loss / steps).numpy()
    return {name: tensor.detach().numpy() for name, tensor in weights.items()}, history
