"""Local preprocessing: each party encodes, imputes and scales its own columns with
statistics of its own training rows. Nothing pooled is computed here.

>>> import pandas as pd
>>> df = pd.DataFrame({"amount": [1.0, None, 3.0, 100.0], "tier": ["a", "b", None, "a"],
...                    "seen": pd.to_datetime(["2024-06-30", "2024-06-01", None, "2024-05-31"], utc=True)})
>>> prep = LocalPreprocessor.fit(df)
>>> prep.feature_names
('amount', 'seen (days before newest)', 'tier=a', 'tier=b', 'tier=<missing>')
>>> prep.transform(df).shape
(4, 5)
>>> LocalPreprocessor.fit(df, max_levels=1).feature_names[2:]
('tier=a', 'tier=<other>', 'tier=<missing>')
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from petlab.data.columns import DEFAULT_MAX_LEVELS, column_kind

__all__ = ["LocalPreprocessor", "MISSING", "OTHER"]

MISSING = "<missing>"
OTHER = "<other>"  # the levels of a capped categorical beyond its most frequent ones
_DAY = pd.Timedelta(days=1)


@dataclasses.dataclass(frozen=True)
class LocalPreprocessor:
    """Fitted per-party preprocessing: dates as days before the newest training date,
    median imputation, ``log1p`` for skewed non-negative columns, standardisation, and
    one-hot encoding of categoricals (with a ``<missing>`` level where training rows had
    gaps; a column with more than ``max_levels`` levels keeps its most frequent ones and
    encodes the rest, unseen ones included, as ``<other>``; in a column that is not
    capped, a level unseen in training encodes as all zeros)."""

    numeric: tuple[str, ...]  # numeric and date columns, in table order
    log_columns: tuple[str, ...]
    medians: dict
    means: dict
    stds: dict
    categories: dict  # column -> tuple of levels
    dates: dict = dataclasses.field(default_factory=dict)  # date column -> newest training date (ISO)
    capped: tuple[str, ...] = ()  # categoricals whose rarer levels are "<other>"

    @classmethod
    def fit(cls, table: pd.DataFrame, *, exclude: tuple[str, ...] = (),
            max_levels: int = DEFAULT_MAX_LEVELS) -> "LocalPreprocessor":
        """Fit on one party's training rows.

        Args:
            table: the party's own training rows (no other party's columns).
            exclude: columns not to use as features (id, label).
            max_levels: levels a categorical keeps (its most frequent in these rows).
        """
        features = [c for c in table.columns if c not in exclude]
        kinds = {c: column_kind(table[c]) for c in features}
        numeric = tuple(c for c in features if kinds[c] in ("numeric", "date"))
        categorical = tuple(c for c in features if kinds[c] == "categorical")
        dates = {c: table[c].max().isoformat() for c in features if kinds[c] == "date"}
        medians, means, stds, logs = {}, {}, {}, []
        for col in numeric:
            values = _as_float(table[col], dates.get(col))
            median = float(values.median()) if values.notna().any() else 0.0
            values = values.fillna(median)
            if values.min() >= 0 and values.skew() > 1.0:
                logs.append(col)
                values = np.log1p(values)
            medians[col] = median
            means[col] = float(values.mean())
            std = float(values.std(ddof=0))
            stds[col] = std if std > 0 else 1.0
        categories, capped = {}, []
        for col in categorical:
            counts = table[col].dropna().astype(str).value_counts()
            if len(counts) > max_levels:
                ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # ties: by level, reproducibly
                levels = tuple(sorted(level for level, _ in ranked[:max_levels])) + (OTHER,)
                capped.append(col)
            else:
                levels = tuple(sorted(counts.index))
            has_missing = bool(table[col].isna().any())
            categories[col] = levels + ((MISSING,) if has_missing else ())
        return cls(numeric, tuple(logs), medians, means, stds, categories, dates, tuple(capped))

    @property
    def feature_names(self) -> tuple[str, ...]:
        names = [f"{col} (days before newest)" if col in self.dates else col for col in self.numeric]
        for col, levels in self.categories.items():
            names += [f"{col}={level}" for level in levels]
        return tuple(names)

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        """Encode rows of the same party's table into a float32 feature matrix."""
        blocks = []
        for col in self.numeric:
            values = _as_float(table[col], self.dates.get(col)).fillna(self.medians[col])
            if col in self.log_columns:
                values = np.log1p(values.clip(lower=0))
            blocks.append(((values - self.means[col]) / self.stds[col]).to_numpy()[:, None])
        for col, levels in self.categories.items():
            values = table[col].astype(object).where(table[col].notna(), MISSING).astype(str)
            if col in self.capped:
                values = values.where(values.isin(set(levels)) | table[col].isna().to_numpy(), OTHER)
            blocks.append(np.stack([(values == lv).to_numpy() for lv in levels], axis=1))
        if not blocks:
            return np.zeros((len(table), 0), dtype=np.float32)
        return np.concatenate(blocks, axis=1).astype(np.float32)


def _as_float(values: pd.Series, newest: str | None) -> pd.Series:
    """A numeric column as floats; a date column as days before ``newest``."""
    if newest is None:
        return values.astype(float)
    return (pd.Timestamp(newest) - values) / _DAY
