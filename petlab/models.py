"""One model definition, two backends.

Logistic regression and a one-hidden-layer MLP, written once against the operations
that ``torch.Tensor`` and CrypTen's ``MPCTensor`` share (``@``, ``.t()``, ``+``, ``-``,
``*``, ``.sum``, ``.sigmoid()``, comparison with 0). The plaintext backend calls these
functions with torch tensors; each MPC party calls them with secret-shared tensors.
Gradients of the binary cross-entropy are written out (and checked against
``torch.autograd`` in the tests), so both backends run exactly the same arithmetic.

>>> import torch
>>> spec = ModelSpec(kind="logreg", n_features=3)
>>> params = init_params(spec=spec, seed=0)
>>> sorted(params)
['b', 'w']
>>> X, y = torch.randn(5, 3), torch.ones(5, 1)
>>> probs, cache = forward(spec=spec, params=params, X=X)
>>> grads = gradients(spec=spec, params=params, X=X, y=y, probs=probs, cache=cache)
>>> {k: tuple(v.shape) for k, v in grads.items()}
{'w': (3, 1), 'b': (1,)}
"""

from __future__ import annotations

import dataclasses
import math

import torch

from petlab.config import MODELS

__all__ = ["MODELS", "ModelSpec", "init_params", "forward", "gradients", "sgd_step", "bce_loss"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model, on how many input features."""

    kind: str  # "logreg" | "mlp"
    n_features: int
    hidden: int = 16  # width of the MLP's hidden layer

    def __post_init__(self):
        if self.kind not in MODELS:
            raise ValueError(f"unknown model {self.kind!r}: expected one of {', '.join(MODELS)}")
        if self.n_features < 1 or self.hidden < 1:
            raise ValueError("n_features and hidden must be positive")

    @property
    def param_names(self) -> tuple[str, ...]:
        return ("w", "b") if self.kind == "logreg" else ("W1", "b1", "w2", "b2")


def init_params(*, spec: ModelSpec, seed: int) -> dict[str, torch.Tensor]:
    """Initial weights from the shared seed: public, identical in both backends.

    Logistic regression starts at zero; the MLP uses Glorot-uniform weights.
    """
    if spec.kind == "logreg":
        return {"w": torch.zeros(spec.n_features, 1), "b": torch.zeros(1)}
    gen = torch.Generator().manual_seed(seed)

    def glorot(fan_in: int, fan_out: int) -> torch.Tensor:
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return (torch.rand(fan_in, fan_out, generator=gen) * 2 - 1) * bound

    return {
        "W1": glorot(spec.n_features, spec.hidden),
        "b1": torch.zeros(spec.hidden),
        "w2": glorot(spec.hidden, 1),
        "b2": torch.zeros(1),
    }


def forward(*, spec: ModelSpec, params: dict, X):
    """Predicted probabilities (n, 1) and the cache the gradients need."""
    if spec.kind == "logreg":
        return (X @ params["w"] + params["b"]).sigmoid(), {}
    z1 = X @ params["W1"] + params["b1"]
    mask = z1 > 0  # bool tensor in torch, shared 0/1 in MPC
    if isinstance(mask, torch.Tensor):
        mask = mask.to(z1.dtype)
    hidden = z1 * mask
    return (hidden @ params["w2"] + params["b2"]).sigmoid(), {"mask": mask, "hidden": hidden}


def gradients(*, spec: ModelSpec, params: dict, X, y, probs, cache: dict) -> dict:
    """Gradients of the *summed* binary cross-entropy over the batch.

    The caller scales by ``lr / batch_size`` once (in MPC that saves truncations).
    """
    delta = probs - y  # (n, 1)
    if spec.kind == "logreg":
        return {"w": X.t() @ delta, "b": delta.sum(0)}
    delta_hidden = (delta @ params["w2"].t()) * cache["mask"]
    return {
        "W1": X.t() @ delta_hidden,
        "b1": delta_hidden.sum(0),
        "w2": cache["hidden"].t() @ delta,
        "b2": delta.sum(0),
    }


def sgd_step(*, params: dict, grads: dict, lr: float, batch_size: int) -> dict:
    """Plain minibatch SGD on the mean loss: ``p - lr/B * g`` for every parameter."""
    scale = lr / batch_size
    return {name: params[name] - grads[name] * scale for name in params}


LOSS_EPS = 1e-4  # probabilities are squeezed into [eps, 1 - eps] before the log


def bce_loss(*, probs, y):
    """Mean binary cross-entropy (same arithmetic in both backends)."""
    p = probs * (1 - 2 * LOSS_EPS) + LOSS_EPS
    terms = y * p.log() + (1 - y) * (1 - p).log()
    return terms.mean() * -1
