"""What one party does to its own table before training, in plaintext and on its own:
align rows, split train/test from the shared seed, fit preprocessing on its own
training rows, and encode.

The MPC party processes and the plaintext reference runs call the same function, so
both backends see identical feature matrices.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from petlab.data.alignment import align_by_sorted_ids, id_set_digest
from petlab.data.columns import DEFAULT_MAX_LEVELS
from petlab.data.preprocess import LocalPreprocessor
from petlab.data.split import train_test_indices

__all__ = ["PartyFeatures", "prepare_party_features"]


@dataclasses.dataclass(frozen=True)
class PartyFeatures:
    """One party's encoded features (and labels, at the label holder)."""

    X_train: np.ndarray
    X_test: np.ndarray
    feature_names: tuple[str, ...]
    id_digest: str  # digest of the id set, to check alignment with the peer
    y_train: np.ndarray | None = None
    y_test: np.ndarray | None = None
    train_ids: tuple = ()  # this party's own ids of the training rows, in row order

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]


def prepare_party_features(
    *,
    table: pd.DataFrame,
    id_column: str,
    label_column: str | None,
    test_fraction: float,
    seed: int,
    keep_ids=None,
    max_levels: int = DEFAULT_MAX_LEVELS,
) -> PartyFeatures:
    """Align, split and encode one party's table with its own statistics only.

    Args:
        table: the party's own table as :func:`petlab.data.validation.load_party_table`
            leaves it (ids normalised, label 0/1, dates as dates).
        id_column: name of the customer-id column.
        label_column: the label's column at the label holder, ``None`` elsewhere.
        test_fraction: share of rows held out (same value at every party).
        seed: shared split seed (same value at every party).
        keep_ids: the ids to keep (the private set intersection); ``None`` keeps all.
        max_levels: levels a categorical keeps (the rest are ``<other>``).
    """
    if keep_ids is not None:
        table = table[table[id_column].astype(str).isin(set(map(str, keep_ids)))]
    aligned = align_by_sorted_ids(table, id_column=id_column)
    train_idx, test_idx = train_test_indices(n=len(aligned), test_fraction=test_fraction, seed=seed)
    exclude = (id_column,) + ((label_column,) if label_column else ())
    train_rows, test_rows = aligned.iloc[train_idx], aligned.iloc[test_idx]
    prep = LocalPreprocessor.fit(train_rows, exclude=exclude, max_levels=max_levels)
    y_train = y_test = None
    if label_column:
        y_train = train_rows[label_column].to_numpy(dtype=np.float32)
        y_test = test_rows[label_column].to_numpy(dtype=np.float32)
    return PartyFeatures(
        X_train=prep.transform(train_rows),
        X_test=prep.transform(test_rows),
        feature_names=prep.feature_names,
        id_digest=id_set_digest(aligned[id_column]),
        y_train=y_train,
        y_test=y_test,
        train_ids=tuple(train_rows[id_column].astype(str)),
    )
