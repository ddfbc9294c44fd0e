"""The train/test split, computed by each party from public values alone.

After alignment both parties know the row count and the shared seed, so each computes
the same split locally; no labels are needed (the split is not stratified).

>>> train, test = train_test_indices(n=10, test_fraction=0.2, seed=0)
>>> len(train), len(test), sorted(set(train) | set(test)) == list(range(10))
(8, 2, True)
"""

from __future__ import annotations

import numpy as np

__all__ = ["train_test_indices"]


def train_test_indices(*, n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test row indices for ``n`` aligned rows."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n - n_test < 1:
        raise ValueError(f"{n} rows are too few for a train/test split at {test_fraction}")
    order = np.random.default_rng([seed, 7]).permutation(n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])
