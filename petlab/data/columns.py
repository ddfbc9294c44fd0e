"""What each column of a party's table is taken for, stated before anything runs.

Every column gets a type (``id``, ``label``, ``numeric``, ``date`` or ``categorical``),
its share of missing values and its number of levels (distinct values; not counted for
continuous numbers), one line each (:meth:`TableSummary.lines`). Warnings name columns
that look like identifiers, dates, or categoricals with too many levels:

* a ``date`` column (ISO 8601 text, ``2024-06-30`` or ``2024-06-30T10:00:00``) becomes
  one numeric feature, the days before the newest date among the party's training rows;
* a categorical column keeps its :data:`DEFAULT_MAX_LEVELS` most frequent levels (the
  ``max_levels`` setting); the others are encoded together as ``<other>``;
* a column whose values are nearly all distinct looks like an identifier: one level per
  customer teaches a model nothing, so it is worth dropping.

>>> import pandas as pd
>>> t = pd.DataFrame({"id": ["a", "b", "c"], "amount": [1.0, None, 3.0],
...                   "tier": ["gold", "gold", "basic"], "y": [0, 1, 0]})
>>> s = summarise_table(t, party="wallet", path="w.csv", id_column="id", label_column="y")
>>> print("\\n".join(s.lines()))
wallet table w.csv: 3 rows, 4 columns
  id      id           missing  0.0%  3 levels
  amount  numeric      missing 33.3%
  tier    categorical  missing  0.0%  2 levels
  y       label        missing  0.0%  2 levels
"""

from __future__ import annotations

import dataclasses

# pandas is imported where it is used: petlab.config reads DEFAULT_MAX_LEVELS, and the
# command line starts its roles' interpreter before it imports pandas

__all__ = ["DEFAULT_MAX_LEVELS", "ID_LIKE_SHARE", "MIN_ROWS_FOR_ID_LIKE", "ColumnSummary", "TableSummary",
           "column_kind", "summarise_table"]

#: Levels a categorical column keeps (its most frequent); the rest are one level, ``<other>``.
#: 20 levels of one column are already 20 features, each needing enough training rows.
DEFAULT_MAX_LEVELS = 20
#: A column with more distinct values than this share of its non-missing rows looks like an id.
ID_LIKE_SHARE = 0.9
#: ... counted only from this many rows on (a tiny table has few repeats anyway).
MIN_ROWS_FOR_ID_LIKE = 50


@dataclasses.dataclass(frozen=True)
class ColumnSummary:
    column: str
    kind: str  # id, label, numeric, date or categorical
    missing: float  # share of rows with no value
    levels: int | None  # distinct non-missing values (None: continuous numbers, not counted)
    note: str = ""  # what is done with it, where it is not plain

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TableSummary:
    """One party's table described column by column, with its warnings."""

    party: str
    path: str
    rows: int
    columns: tuple[ColumnSummary, ...]
    warnings: tuple[str, ...]

    def lines(self) -> list[str]:
        """The summary as text: a heading, then one line per column."""
        width = max(len(c.column) for c in self.columns)
        out = [f"{self.party} table {self.path}: {self.rows:,} rows, {len(self.columns)} columns"]
        for c in self.columns:
            line = f"  {c.column:<{width}}  {c.kind:<11}  missing {c.missing:5.1%}"
            if c.levels is not None:
                line += f"  {c.levels:,} levels"
            if c.note:
                line += f"  ({c.note})"
            out.append(line)
        return out

    def to_dict(self) -> dict:
        return {"rows": self.rows, "columns": [c.to_dict() for c in self.columns], "warnings": list(self.warnings)}


def column_kind(values: pd.Series) -> str:
    """``numeric`` (numbers and booleans), ``date`` (datetimes) or ``categorical``
    (anything else), as the table loader left the column."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(values):
        return "date"
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "numeric"
    return "categorical"


def _looks_like_yyyymmdd(values: pd.Series) -> bool:
    import pandas as pd

    present = values.dropna()
    if not len(present) or not pd.api.types.is_integer_dtype(present):
        return False
    if present.min() < 19000101 or present.max() > 21001231:
        return False
    month, day = present // 100 % 100, present % 100
    return bool(month.between(1, 12).all() and day.between(1, 31).all())


def summarise_table(table: pd.DataFrame, *, party: str, path, id_column: str, label_column: str | None,
                    max_levels: int = DEFAULT_MAX_LEVELS) -> TableSummary:
    """The column-by-column summary of a loaded table (see the module doc).

    Args:
        table: the party's table as :func:`petlab.data.validation.load_party_table` left it.
        party: the party's name; path: its file (both for the heading).
        id_column: the id column; label_column: the label's, at the label party only.
        max_levels: levels a categorical keeps (the others become ``<other>``).
    """
    import pandas as pd

    rows = len(table)
    summaries, warnings = [], []
    for col in table.columns:
        values = table[col]
        missing = float(values.isna().mean()) if rows else 0.0
        present = values.dropna()
        if col == id_column:
            summaries.append(ColumnSummary(col, "id", missing, int(present.nunique())))
            continue
        if col == label_column:
            summaries.append(ColumnSummary(col, "label", missing, int(present.nunique())))
            continue
        kind = column_kind(values)
        note, levels = "", None
        if kind == "numeric":
            if pd.api.types.is_integer_dtype(present) or pd.api.types.is_bool_dtype(present):
                levels = int(present.nunique())
                if _looks_like_yyyymmdd(present):
                    warnings.append(f"column {col!r} looks like dates written as numbers (YYYYMMDD): it is used as "
                                    "a number; write it as YYYY-MM-DD to use it as days")
                elif len(present) >= MIN_ROWS_FOR_ID_LIKE and levels > ID_LIKE_SHARE * len(present) and \
                        not pd.api.types.is_bool_dtype(present):
                    warnings.append(f"column {col!r} looks like an identifier ({levels:,} distinct integers in "
                                    f"{len(present):,} rows): it is used as a number; drop it if it names customers")
        elif kind == "date":
            levels = int(present.nunique())
            note = "days before the newest date"
            if len(present):
                warnings.append(f"column {col!r} holds dates ({present.min():%Y-%m-%d} to {present.max():%Y-%m-%d}): "
                                "used as one numeric feature, the days before the newest date of the training rows")
        else:
            levels = int(present.astype(str).nunique())
            if len(present) >= MIN_ROWS_FOR_ID_LIKE and levels > ID_LIKE_SHARE * len(present):
                warnings.append(f"column {col!r} looks like an identifier ({levels:,} distinct values in "
                                f"{len(present):,} rows): kept as its {max_levels} most frequent levels plus "
                                "'<other>'; drop it if it names customers")
                note = f"capped at {max_levels} + <other>"
            elif levels > max_levels:
                kept = present.astype(str).value_counts().iloc[:max_levels].sum() / len(present)
                warnings.append(f"column {col!r} has {levels:,} levels: the {max_levels} most frequent (on {kept:.0%} "
                                f"of the rows) are kept, the other {levels - max_levels:,} become '<other>' "
                                "(max_levels)")
                note = f"capped at {max_levels} + <other>"
        summaries.append(ColumnSummary(col, kind, missing, levels, note))
    return TableSummary(party=party, path=str(path), rows=rows, columns=tuple(summaries), warnings=tuple(warnings))
