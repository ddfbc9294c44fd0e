"""Plaintext training with PyTorch: the same model functions, initial weights,
hyper-parameters and minibatch order as the MPC parties use.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.standard_normal((200, 3)).astype("float32")
>>> y = (X[:, 0] > 0).astype("float32")
>>> fit = train_plaintext(X_train=X, y_train=y, X_test=X, model="logreg", epochs=5,
...                       batch_size=32, lr=0.5, seed=0)
>>> fit.test_scores.shape, len(fit.train_loss)
((200,), 5)
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from petlab.config import TrainConfig
from petlab.models import ModelSpec, bce_loss, forward, gradients, init_params, sgd_step
from petlab.mpc.party import minibatches, monitor_indices

__all__ = ["PlaintextFit", "train_plaintext"]


@dataclasses.dataclass(frozen=True)
class PlaintextFit:
    weights: dict  # name -> np.ndarray
    test_scores: np.ndarray  # probability per test row
    train_loss: list  # mean training cross-entropy after each epoch
    train_seconds: float  # training loop only (no loss monitoring)


def train_plaintext(
    *,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    model: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    hidden: int = 16,
    track_loss: bool = True,
    monitor_rows: int = TrainConfig.monitor_rows,
) -> PlaintextFit:
    """Train one model in plaintext on one process (torch, float32).

    Args:
        X_train, y_train, X_test: encoded features (columns in party order) and 0/1 labels.
        model: "logreg" or "mlp"; epochs, batch_size, lr, seed, hidden: as in TrainConfig.
        track_loss: compute the training loss after each epoch (not timed), on the same
            fixed sample of ``monitor_rows`` training rows as the MPC run.
    """
    spec = ModelSpec(kind=model, n_features=X_train.shape[1], hidden=hidden)
    Xt, yt = torch.from_numpy(np.ascontiguousarray(X_train)), torch.from_numpy(np.asarray(y_train, np.float32))[:, None]
    params = init_params(spec=spec, seed=seed)
    losses, seconds = [], 0.0
    monitor = torch.from_numpy(monitor_indices(n=len(Xt), rows=monitor_rows, seed=seed))
    with torch.no_grad():
        for epoch in range(epochs):
            t0 = time.perf_counter()
            for idx in minibatches(n=len(Xt), batch_size=batch_size, seed=seed, epoch=epoch):
                index = torch.from_numpy(idx)
                Xb, yb = Xt[index], yt[index]
                probs, cache = forward(spec=spec, params=params, X=Xb)
                grads = gradients(spec=spec, params=params, X=Xb, y=yb, probs=probs, cache=cache)
                params = sgd_step(params=params, grads=grads, lr=lr, batch_size=len(idx))
            seconds += time.perf_counter() - t0
            if track_loss:
                probs, _ = forward(spec=spec, params=params, X=Xt[monitor])
                losses.append(float(bce_loss(probs=probs, y=yt[monitor])))
        scores, _ = forward(spec=spec, params=params, X=torch.from_numpy(np.ascontiguousarray(X_test)))
    return PlaintextFit(
        weights={k: v.numpy().copy() for k, v in params.items()},
        test_scores=scores.numpy().ravel(),
        train_loss=losses,
        train_seconds=seconds,
    )
