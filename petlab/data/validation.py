"""Strict checks of party tables, before any MPC starts.

Each party checks its own table (:func:`read_party_file`, :func:`check_party_table`)
in its own process; the parties' column names (public schema, no customer data) are
checked against each other by :func:`check_schemas`. Every failure is a
:class:`TableError` whose one-line message names the file, the column or the value at
fault.

>>> import pandas as pd
>>> t = pd.DataFrame({"id": ["a", "b", "b"], "x": [1.0, 2.0, 3.0]})
>>> check_party_table(t, path="w.csv", party="wallet", id_column="id", label_column=None)
Traceback (most recent call last):
...
petlab.data.validation.TableError: wallet table w.csv: id column 'id' has 1 duplicate id(s), e.g. 'b' on rows 2 and 3
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from petlab.config import ConfigError

__all__ = ["TableError", "TABLE_SUFFIXES", "read_party_file", "check_party_table", "check_schemas",
           "NUMERIC_MAJORITY"]

#: File formats a party table may have.
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")

#: A text column whose non-missing values are mostly (more than this share) numbers is a
#: numeric column with garbage in it, not a categorical one.
NUMERIC_MAJORITY = 0.5


class TableError(ConfigError):
    """A party table petlab cannot train on (the message names file, column or value)."""


def read_party_file(path: str | os.PathLike, *, party: str, id_column: str) -> pd.DataFrame:
    """Read one party's CSV or Parquet table; ids are read as strings.

    Args:
        path: the party's own file.
        party: the party's name, for messages.
        id_column: the customer-id column (read as text, so ``007`` stays ``007``).
    """
    path = Path(path)
    if not path.exists():
        raise TableError(f"{party} table not found: {path}")
    if not path.is_file():
        raise TableError(f"{party} table {path} is not a file")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise TableError(f"{party} table {path}: unsupported format {suffix or '(no suffix)'!r} "
                         f"(expected {', '.join(TABLE_SUFFIXES)})")
    try:
        if suffix == ".csv":
            table = pd.read_csv(path, dtype={id_column: str})
        else:
            table = pd.read_parquet(path)
            if id_column in table:
                table[id_column] = table[id_column].astype("string").astype(object).where(
                    table[id_column].notna(), None)
    except pd.errors.EmptyDataError:
        raise TableError(f"{party} table {path} is empty (no header, no rows)") from None
    except Exception as err:  # noqa: BLE001 - any parse/permission error is the file's fault
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise TableError(f"cannot read {party} table {path}: {first}") from None
    return table


def _row(index: int) -> int:
    """1-based data row number of a 0-based position (the header is not a row)."""
    return int(index) + 1


def check_party_table(table: pd.DataFrame, *, path, party: str, id_column: str,
                      label_column: str | None) -> None:
    """Check one party's own table; raise :class:`TableError` at the first problem.

    Args:
        table: the table as read by :func:`read_party_file`.
        path: its file, for messages.
        party: the party's name, for messages.
        id_column: the customer-id column.
        label_column: the label column if this party holds the label, else ``None``.
    """
    where = f"{party} table {path}"
    if len(table) == 0:
        raise TableError(f"{where} is empty (a header but no rows)")
    columns = list(map(str, table.columns))
    if len(set(columns)) != len(columns):
        dup = next(c for c in columns if columns.count(c) > 1)
        raise TableError(f"{where}: column {dup!r} appears more than once")
    if id_column not in table:
        raise TableError(f"{where} has no id column {id_column!r} (columns: {', '.join(columns)})")
    ids = table[id_column]
    missing = ids.isna() | (ids.astype(str).str.strip() == "")
    if missing.any():
        raise TableError(f"{where}: id column {id_column!r} is empty on {int(missing.sum())} row(s), "
                         f"first on row {_row(missing.to_numpy().nonzero()[0][0])}")
    dup_mask = ids.duplicated(keep=False)
    if dup_mask.any():
        first = ids[dup_mask].iloc[0]
        rows = [_row(i) for i in (ids == first).to_numpy().nonzero()[0][:2]]
        n_dup = int(ids.duplicated().sum())
        raise TableError(f"{where}: id column {id_column!r} has {n_dup} duplicate id(s), e.g. "
                         f"{first!r} on rows {rows[0]} and {rows[1]}")
    if label_column is not None:
        _check_label(table, where=where, label_column=label_column, columns=columns)
    features = [c for c in table.columns if c not in (id_column, label_column)]
    if not features:
        raise TableError(f"{where} has no feature columns besides {id_column!r}"
                         + (f" and {label_column!r}" if label_column else ""))
    for col in features:
        values = table[col]
        if values.isna().all():
            raise TableError(f"{where}: column {col!r} is missing on every row")
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            continue
        present = values.dropna().astype(str).str.strip()
        as_number = pd.to_numeric(present, errors="coerce")
        if as_number.notna().mean() > NUMERIC_MAJORITY and as_number.isna().any():
            bad_at = as_number.isna().to_numpy().nonzero()[0][0]
            bad_value, bad_row = present.iloc[bad_at], _row(table.index.get_loc(present.index[bad_at]))
            raise TableError(f"{where}: numeric column {col!r} holds non-numeric value {bad_value!r} "
                             f"on row {bad_row} ({int(as_number.isna().sum())} such value(s))")


def _check_label(table: pd.DataFrame, *, where: str, label_column: str, columns: list[str]) -> None:
    if label_column not in table:
        raise TableError(f"{where} has no label column {label_column!r} (columns: {', '.join(columns)})")
    y = table[label_column]
    if y.isna().any():
        raise TableError(f"{where}: label column {label_column!r} is missing on {int(y.isna().sum())} row(s), "
                         f"first on row {_row(y.isna().to_numpy().nonzero()[0][0])}")
    values = set(pd.unique(y).tolist())
    if not values <= {0, 1}:  # True/False and 0.0/1.0 compare equal to 1/0
        bad = sorted(map(repr, values - {0, 1}))[:5]
        raise TableError(f"{where}: label column {label_column!r} is not binary: values {', '.join(bad)} "
                         f"(expected 0/1 or true/false)")
    if len(values) < 2:
        only = int(next(iter(values)))
        raise TableError(f"{where}: label column {label_column!r} has one class only (every row is {only})")


def check_schemas(*, columns: dict[str, list[str]], paths: dict[str, str], id_column: str,
                  label_column: str, label_party: str) -> None:
    """Check the parties' column names against each other (schema only, no values).

    Args:
        columns: party -> its table's column names.
        paths: party -> its file, for messages.
        id_column: the shared id column (the only column both may have).
        label_column: the label column, which only ``label_party`` may have.
        label_party: the party that holds the label.
    """
    others = [p for p in columns if p != label_party]
    for party in others:
        if label_column in columns[party]:
            raise TableError(
                f"label column {label_column!r} is in both tables ({label_party} {paths[label_party]} "
                f"and {party} {paths[party]}): only the label party ({label_party}) may hold it")
    parties = list(columns)
    for i, a in enumerate(parties):
        for b in parties[i + 1:]:
            shared = [c for c in columns[a] if c in set(columns[b]) and c != id_column]
            if shared:
                raise TableError(
                    f"column {shared[0]!r} is in both tables ({a} {paths[a]} and {b} {paths[b]}): "
                    "rename or drop it at one party (a shared column would leak a join key or "
                    "duplicate a feature)")
