"""Local preprocessing: each party encodes, imputes and scales its own columns with
statistics of its own training rows. Nothing pooled is computed here.

>>> import pandas as pd
>>> df = pd.DataFrame({"amount": [1.0, None, 3.0, 100.0], "tier": ["a", "b", None, "a"]})
>>> prep = LocalPreprocessor.fit(df)
>>> prep.feature_names
('amount', 'tier=a', 'tier=b', 'tier=<missing>')
>>> prep.transform(df).shape
(4, 4)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

__all__ = ["LocalPreprocessor"]

MISSING = "<missing>"


@dataclasses.dataclass(frozen=True)
class LocalPreprocessor:
    """Fitted per-party preprocessing: median imputation, ``log1p`` for skewed
    non-negative columns, standardisation, and one-hot encoding of categoricals
    (with a ``<missing>`` level where training rows had gaps; anything unseen in
    training encodes as all zeros)."""

    numeric: tuple[str, ...]
    log_columns: tuple[str, ...]
    medians: dict
    means: dict
    stds: dict
    categories: dict  # column -> tuple of levels

    @classmethod
    def fit(cls, table: pd.DataFrame, *, exclude: tuple[str, ...] = ()) -> "LocalPreprocessor":
        """Fit on one party's training rows.

        Args:
            table: the party's own training rows (no other party's columns).
            exclude: columns not to use as features (id, label).
        """
        features = [c for c in table.columns if c not in exclude]
        numeric = tuple(c for c in features if pd.api.types.is_numeric_dtype(table[c]))
        categorical = tuple(c for c in features if c not in numeric)
        medians, means, stds, logs = {}, {}, {}, []
        for col in numeric:
            values = table[col].astype(float)
            median = float(values.median()) if values.notna().any() else 0.0
            values = values.fillna(median)
            if values.min() >= 0 and values.skew() > 1.0:
                logs.append(col)
                values = np.log1p(values)
            medians[col] = median
            means[col] = float(values.mean())
            std = float(values.std(ddof=0))
            stds[col] = std if std > 0 else 1.0
        categories = {}
        for col in categorical:
            levels = sorted(table[col].dropna().astype(str).unique())
            has_missing = bool(table[col].isna().any())
            categories[col] = tuple(levels) + ((MISSING,) if has_missing else ())
        return cls(numeric, tuple(logs), medians, means, stds, categories)

    @property
    def feature_names(self) -> tuple[str, ...]:
        names = list(self.numeric)
        for col, levels in self.categories.items():
            names += [f"{col}={level}" for level in levels]
        return tuple(names)

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        """Encode rows of the same party's table into a float32 feature matrix."""
        blocks = []
        for col in self.numeric:
            values = table[col].astype(float).fillna(self.medians[col])
            if col in self.log_columns:
                values = np.log1p(values.clip(lower=0))
            blocks.append(((values - self.means[col]) / self.stds[col]).to_numpy()[:, None])
        for col, levels in self.categories.items():
            values = table[col].astype(object).where(table[col].notna(), MISSING).astype(str)
            blocks.append(np.stack([(values == lv).to_numpy() for lv in levels], axis=1))
        if not blocks:
            return np.zeros((len(table), 0), dtype=np.float32)
        return np.concatenate(blocks, axis=1).astype(np.float32)
