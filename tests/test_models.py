"""One model definition: hand-written gradients equal torch autograd; plaintext training learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from petlab.models import ModelSpec, bce_loss, forward, gradients, init_params, sgd_step
from petlab.mpc.party import minibatches, monitor_indices
from petlab.train.plaintext import train_plaintext


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_gradients_equal_autograd(kind):
    torch.manual_seed(0)
    spec = ModelSpec(kind=kind, n_features=6, hidden=5)
    params = {k: v + 0.1 * torch.randn_like(v) for k, v in init_params(spec=spec, seed=1).items()}
    X, y = torch.randn(32, 6, dtype=torch.float64), (torch.rand(32, 1) > 0.5).double()
    params = {k: v.double().requires_grad_() for k, v in params.items()}
    probs, cache = forward(spec=spec, params=params, X=X)
    loss = torch.nn.functional.binary_cross_entropy(probs, y, reduction="sum")
    loss.backward()
    with torch.no_grad():
        mine = gradients(spec=spec, params=params, X=X, y=y, probs=probs, cache=cache)
    for name in spec.param_names:
        assert torch.allclose(mine[name], params[name].grad, atol=1e-8), name


def test_initial_weights_are_public_and_deterministic():
    spec = ModelSpec(kind="mlp", n_features=4)
    a, b = init_params(spec=spec, seed=3), init_params(spec=spec, seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["W1"], init_params(spec=spec, seed=4)["W1"])
    assert all(torch.count_nonzero(v) == 0 for v in init_params(spec=ModelSpec(kind="logreg", n_features=4), seed=0).values())


def test_minibatches_cover_each_row_once_per_epoch():
    batches = minibatches(n=103, batch_size=10, seed=0, epoch=2)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(103)) and len(batches) == 11
    assert not np.array_equal(rows, np.concatenate(minibatches(n=103, batch_size=10, seed=0, epoch=3)))
    assert len(monitor_indices(n=50, rows=2048, seed=0)) == 50


def test_sgd_step_and_loss_match_definitions():
    params = {"w": torch.ones(2, 1)}
    out = sgd_step(params=params, grads={"w": torch.full((2, 1), 4.0)}, lr=0.5, batch_size=2)
    assert torch.allclose(out["w"], torch.zeros(2, 1))
    probs, y = torch.tensor([[0.9], [0.2]]), torch.tensor([[1.0], [0.0]])
    expected = torch.nn.functional.binary_cross_entropy(probs, y)
    assert float(bce_loss(probs=probs, y=y)) == pytest.approx(float(expected), abs=1e-3)


@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_plaintext_training_learns(model):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 5)).astype(np.float32)
    y = (X @ np.array([1.5, -1.0, 0.5, 0.0, 0.0]) + 0.3 * rng.standard_normal(2000) > 0).astype(np.float32)
    fit = train_plaintext(X_train=X[:1600], y_train=y[:1600], X_test=X[1600:], model=model, epochs=5,
                          batch_size=64, lr=0.5, seed=0)
    assert fit.train_loss[-1] < fit.train_loss[0] < 0.69
    accuracy = ((fit.test_scores > 0.5) == y[1600:]).mean()
    assert accuracy > 0.85


def test_unknown_model_is_rejected():
    with pytest.raises(ValueError, match="unknown model"):
        ModelSpec(kind="svm", n_features=3)
