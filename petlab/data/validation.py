"""Party tables as partners export them: read, checked and typed before any MPC starts.

Each party loads its own table (:func:`load_party_table`) in its own process: ids are
read as text and normalised by the run's id rule (:mod:`petlab.data.ids`), the label is
encoded as 0/1 (``positive_label`` names the positive class of a text label), missing
markers are applied (pandas' defaults such as empty, ``NA``, ``N/A``, ``NaN``, ``null``,
plus the run's ``na_values``), surrounding whitespace is trimmed from column names and
text values, numbers written as text become numbers and ISO 8601 dates become dates.
Every problem found in a table is reported at once, in one :class:`TableError`: one line
when there is one, a heading and one line each when there are several. Places in a CSV
file are its line numbers (the header is line 1); in a Parquet file, row numbers.

The parties' column names (public schema, no customer data) are checked against each
other by :func:`check_schemas`, and the size of the intersection by
:func:`check_intersection`, with a hint built from the party's own ids only.

>>> import pandas as pd
>>> t = pd.DataFrame({"id": ["a", "b", "b "], "x": [1.0, 2.0, "?"]})
>>> check_party_table(t, path="w.csv", party="wallet", id_column="id", label_column=None)
Traceback (most recent call last):
...
petlab.data.validation.TableError: wallet table w.csv has 2 problems:
  - id column 'id' has 1 duplicate id(s), e.g. 'b' on lines 3 and 4 (written 'b' and 'b '; the same id once whitespace is trimmed)
  - numeric column 'x' holds non-numeric value '?' (line 4): fix it or declare it a missing marker (--na-values '?')
>>> checked = check_party_table(t, path="w.csv", party="wallet", id_column="id", label_column=None,
...                             options=TableOptions(na_values=("?",)))
Traceback (most recent call last):
...
petlab.data.validation.TableError: wallet table w.csv: id column 'id' has 1 duplicate id(s), e.g. 'b' on lines 3 and 4 (written 'b' and 'b '; the same id once whitespace is trimmed)
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import os
from pathlib import Path

import pandas as pd

from petlab.config import ConfigError, check_split_size
from petlab.data.columns import DEFAULT_MAX_LEVELS, TableSummary, summarise_table
from petlab.data.ids import DEFAULT_ID_RULE, IdShape, describe_shape, id_shape, mismatch_hint, normalise_ids

__all__ = ["TableError", "IntersectionError", "TableOptions", "PartyTable", "TABLE_SUFFIXES",
           "read_party_file", "check_party_table", "load_party_table", "load_table_entry", "check_schemas",
           "check_intersection", "NUMERIC_MAJORITY", "LOW_OVERLAP_SHARE"]

#: File formats a party table may have.
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")

#: A text column whose non-missing values are mostly (more than this share) numbers is a
#: numeric column with garbage in it, not a categorical one; the same for dates.
NUMERIC_MAJORITY = 0.5

#: An intersection below this share of the smaller party's customers is worth a warning:
#: ids that differ only in how they are written meet far less often than they should.
LOW_OVERLAP_SHARE = 0.5

_ISO_DATE = r"\d{4}[-/]\d{2}[-/]\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?"
_OTHER_DATE = r"\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}( .*)?"
_LABEL_CODES = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}
_POSITIVE_WORDS = ("yes", "y", "true", "t", "positive", "pos")
_MAX_SHOWN = 5


class TableError(ConfigError):
    """A party table petlab cannot train on (the message names file, column or value).

    ``problems`` holds each problem on its own; ``columns`` the table's columns when it
    could be read.
    """

    def __init__(self, message: str, *, problems: tuple[str, ...] = (), columns: list[str] | None = None):
        super().__init__(message)
        self.problems = tuple(problems) or (message,)
        self.columns = columns


class IntersectionError(TableError):
    """The parties' ids meet too rarely to train on (the message carries a hint)."""


@dataclasses.dataclass(frozen=True)
class TableOptions:
    """How a party's file is read (the data fields of :class:`petlab.config.DataConfig`)."""

    sep: str = ","  # CSV field separator
    na_values: tuple[str, ...] = ()  # missing markers besides pandas' defaults
    id_rule: str = DEFAULT_ID_RULE  # id normalisation (petlab.data.ids)
    positive_label: str = ""  # the label value that means 1 (text labels)
    max_levels: int = DEFAULT_MAX_LEVELS  # levels a categorical keeps

    @classmethod
    def from_config(cls, data) -> "TableOptions":
        """The options of a :class:`petlab.config.DataConfig`."""
        return cls(sep=data.sep, na_values=tuple(data.na_values), id_rule=data.id_rule,
                   positive_label=data.positive_label, max_levels=data.max_levels)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "na_values": list(self.na_values)}

    @classmethod
    def from_dict(cls, d: dict | None) -> "TableOptions":
        d = dict(d or {})
        if "na_values" in d:
            d["na_values"] = tuple(d["na_values"])
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class PartyTable:
    """One party's table as loaded: clean values, its column summary and its id shape."""

    table: pd.DataFrame  # ids normalised (text), label 0/1, numbers, dates, trimmed text
    summary: TableSummary
    id_shape: IdShape  # the ids as written in the file
    ids_changed: int  # ids the normalisation changed (whitespace included)
    id_column: str
    label_column: str | None
    options: TableOptions

    def record(self) -> dict:
        """What the party keeps about its table in its own record (nothing is sent)."""
        return {"id_column": self.id_column, "label_column": self.label_column, "id_rule": self.options.id_rule,
                "ids_changed": self.ids_changed, "id_shape": self.id_shape.to_dict(),
                "options": self.options.to_dict(), **self.summary.to_dict()}


def _sep(sep: str) -> str:
    return {"\\t": "\t", "tab": "\t"}.get(sep, sep)


def read_party_file(path: str | os.PathLike, *, party: str, id_column: str, label_column: str | None = None,
                    options: TableOptions = TableOptions()) -> pd.DataFrame:
    """Read one party's CSV or Parquet file as written; the id and label columns as text.

    Column names lose surrounding whitespace (and a UTF-8 byte-order mark); blank lines
    are dropped, and the row labels stay the rows' places in the file (see
    :func:`check_party_table`). No value is changed otherwise.

    Args:
        path: the party's own file.
        party: the party's name, for messages.
        id_column: the customer-id column (read as text, so ``007`` stays ``007``).
        label_column: the label column, also read as text (``None``: not this party's).
        options: separator and missing markers.
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
    text_columns = {id_column} | ({label_column} if label_column else set())
    try:
        if suffix == ".csv":
            with open(path, encoding="utf-8-sig", newline="") as fh:
                header = next(csv.reader(fh, delimiter=_sep(options.sep)), None)
            if header is None:
                raise pd.errors.EmptyDataError
            table = pd.read_csv(path, sep=_sep(options.sep), encoding="utf-8-sig", skip_blank_lines=False,
                                index_col=False,  # a row with an extra field is an error, not an index
                                low_memory=False, na_values=list(options.na_values), keep_default_na=True,
                                dtype={raw: str for raw in header if raw.strip() in text_columns})
            table.columns = [name.strip() for name in header][: len(table.columns)]
        else:
            table = pd.read_parquet(path)
            table.columns = [str(c).strip() for c in table.columns]
            for col in text_columns & set(table.columns):
                table[col] = table[col].astype("string").astype(object).where(table[col].notna(), None)
    except pd.errors.EmptyDataError:
        raise TableError(f"{party} table {path} is empty (no header, no rows)") from None
    except UnicodeDecodeError as err:
        raise TableError(f"cannot read {party} table {path}: not UTF-8 text ({err.reason} at byte {err.start}); "
                         "save it as UTF-8") from None
    except Exception as err:  # noqa: BLE001 - any parse/permission error is the file's fault
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise TableError(f"cannot read {party} table {path}: {first}") from None
    blank = table.isna().all(axis=1)
    return table[~blank] if blank.any() else table


def _places(path) -> "callable":
    """Row label -> its place in the file: 'line N' in a CSV (header = line 1), else 'row N'."""
    if str(path).lower().endswith(".csv"):
        return lambda label: f"line {int(label) + 2}"
    return lambda label: f"row {int(label) + 1}"


def _both(place, a, b) -> str:
    first, second = place(a), place(b)
    return f"{first.split()[0]}s {first.split()[1]} and {second.split()[1]}"


def _shown(values) -> str:
    return ", ".join(repr(v) for v in values[:_MAX_SHOWN]) + (", ..." if len(values) > _MAX_SHOWN else "")


def _column_hint(name: str, columns: list[str], sep: str) -> str:
    if len(columns) == 1:
        for candidate in (";", "\t", "|", ","):
            if candidate != _sep(sep) and candidate in columns[0]:
                shown = "\\t" if candidate == "\t" else candidate
                return f"; the header looks {shown!r}-separated: read it with --sep {shown!r}"
    lowered = {c.lower(): c for c in columns}
    close = ([lowered[name.lower()]] if name.lower() in lowered else
             difflib.get_close_matches(name, columns, n=1, cutoff=0.6))
    return f"; did you mean {close[0]!r}?" if close else ""


def _listed(columns: list[str]) -> str:
    return ", ".join(columns[:12]) + (f", ... ({len(columns)} in all)" if len(columns) > 12 else "")


def _message(where: str, problems: list[str]) -> str:
    if len(problems) == 1:
        p = problems[0]
        return f"{where} {p}" if p.startswith(("has ", "is ")) else f"{where}: {p}"
    return f"{where} has {len(problems)} problems:" + "".join(f"\n  - {p}" for p in problems)


def check_party_table(table: pd.DataFrame, *, path, party: str, id_column: str, label_column: str | None,
                      options: TableOptions = TableOptions()) -> PartyTable:
    """Check and type one party's own table, listing every problem at once.

    Args:
        table: the table as read by :func:`read_party_file` (row labels: places in the file).
        path: its file, for messages (``.csv``: line numbers, else row numbers).
        party: the party's name, for messages.
        id_column: the customer-id column.
        label_column: the label column if this party holds the label, else ``None``.
        options: id rule, missing markers, positive label, category cap.

    Returns:
        The :class:`PartyTable`, its rows numbered from 0 again.

    Raises:
        TableError: naming every problem found.
    """
    return _checked(table.copy(), path=path, party=party, id_column=id_column, label_column=label_column,
                    options=options)


def _checked(table: pd.DataFrame, *, path, party: str, id_column: str, label_column: str | None,
             options: TableOptions) -> PartyTable:
    """:func:`check_party_table` on a table of its own, changed in place (no copy at scale)."""
    where = f"{party} table {path}"
    place = _places(path)
    columns = list(map(str, table.columns))
    if len(table) == 0:
        raise TableError(f"{where} is empty (a header but no rows)", columns=columns)
    problems: list[str] = []
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise TableError(_message(where, [f"column {c!r} appears more than once" for c in duplicated]),
                         columns=columns)
    shape, changed = id_shape(pd.Series([], dtype=object)), 0
    if id_column not in table:
        problems.append(f"has no id column {id_column!r} (columns: {_listed(columns)})"
                        + _column_hint(id_column, columns, options.sep))
    else:
        raw_ids = table[id_column].astype(object).where(table[id_column].notna(), None)
        shape = id_shape(raw_ids)
        ids = normalise_ids(raw_ids, rule=options.id_rule)
        missing = ids.isna() | (ids.astype(str) == "")
        if missing.any():
            problems.append(f"id column {id_column!r} is empty on {int(missing.sum())} row(s), first on "
                            f"{place(ids.index[missing.to_numpy()][0])}")
        present = ids[~missing]
        dup_mask = present.duplicated(keep=False)
        if dup_mask.any():
            first = present[dup_mask].iloc[0]
            a, b = present.index[(present == first).to_numpy()][:2]
            text = (f"id column {id_column!r} has {int(present.duplicated().sum())} duplicate id(s), e.g. "
                    f"{first!r} on {_both(place, a, b)}")
            if raw_ids[a] != raw_ids[b]:
                how = ("once whitespace is trimmed" if str(raw_ids[a]).strip() == str(raw_ids[b]).strip()
                       else f"under id rule {options.id_rule!r}")
                text += f" (written {raw_ids[a]!r} and {raw_ids[b]!r}; the same id {how})"
            problems.append(text)
        changed = int((present != raw_ids[~missing]).sum())
        table[id_column] = ids
    if label_column is not None:
        problems += _check_label(table, label_column=label_column, columns=columns, options=options, place=place)
    features = [c for c in columns if c not in (id_column, label_column)]
    if not features:
        problems.append(f"has no feature columns besides {id_column!r}" + (f" and {label_column!r}" if label_column
                                                                          else ""))
    for col in features:
        problems += _type_column(table, col=col, options=options, place=place)
    if problems:
        raise TableError(_message(where, problems), problems=tuple(problems), columns=columns)
    table = table.reset_index(drop=True)
    summary = summarise_table(table, party=party, path=path, id_column=id_column, label_column=label_column,
                              max_levels=options.max_levels)
    return PartyTable(table=table, summary=summary, id_shape=shape, ids_changed=changed, id_column=id_column,
                      label_column=label_column, options=options)


def _check_label(table: pd.DataFrame, *, label_column: str, columns: list[str], options: TableOptions,
                 place) -> list[str]:
    if label_column not in table:
        return [f"has no label column {label_column!r} (columns: {_listed(columns)})"
                + _column_hint(label_column, columns, options.sep)]
    raw = table[label_column]
    text = raw.astype(object).where(raw.notna(), None).map(lambda v: None if v is None else str(v).strip())
    missing = text.isna() | (text == "")
    problems = []
    if missing.any():
        problems.append(f"label column {label_column!r} is missing on {int(missing.sum())} row(s), first on "
                        f"{place(text.index[missing.to_numpy()][0])}")
    present = text[~missing]
    values = sorted(set(present))
    positive = options.positive_label.strip()
    if positive:
        if positive not in values:
            return problems + [f"label column {label_column!r}: the positive label {positive!r} is not among its "
                               f"values {_shown(values)}"]
        if len(values) > 2:
            return problems + [f"label column {label_column!r} has {len(values)} values ({_shown(values)}): with a "
                               f"positive label ({positive!r}) it must hold two"]
        encoded = (present == positive).astype(int)
    else:
        unknown = [v for v in values if v.lower() not in _LABEL_CODES]
        if unknown:
            if len(values) == 2:
                guess = next((v for v in values if v.lower() in _POSITIVE_WORDS), values[-1])
                fix = f"; name the positive class, e.g. --positive-label {guess}"
            else:
                fix = ", or two values and --positive-label"
            return problems + [f"label column {label_column!r} is not binary: values {_shown(unknown)} "
                               f"(expected 0/1 or true/false{fix})"]
        encoded = present.map(lambda v: _LABEL_CODES[v.lower()])
    if not problems and encoded.nunique() < 2:
        only = present.iloc[0] if positive else int(encoded.iloc[0])
        problems.append(f"label column {label_column!r} has one class only (every row is {only})")
    if not problems:
        table[label_column] = encoded.astype(int)
    return problems


def _type_column(table: pd.DataFrame, *, col: str, options: TableOptions, place) -> list[str]:
    """Leave ``table[col]`` numeric, a UTC date or trimmed text; or name what is wrong."""
    values = table[col]
    if values.isna().all():
        return [f"column {col!r} is missing on every row"]
    if pd.api.types.is_datetime64_any_dtype(values):
        table[col] = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        return []
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return []
    text = values.astype(object).where(values.notna(), None).map(lambda v: None if v is None else str(v).strip())
    text = text.where(~text.isin(set(options.na_values) | {""}), None)
    present = text.dropna()
    if present.empty:
        return [f"column {col!r} is missing on every row"]
    as_number = pd.to_numeric(present, errors="coerce")
    if as_number.notna().mean() > NUMERIC_MAJORITY:
        bad = present[as_number.isna()]
        if len(bad):
            firsts = bad.drop_duplicates()
            shown = ", ".join(f"{v!r} ({place(i)})" for i, v in firsts.iloc[:_MAX_SHOWN].items())
            markers = ",".join(firsts.iloc[:_MAX_SHOWN])
            count = f" ({len(bad)} such values)" if len(bad) > 1 else ""
            if len(firsts) == 1:
                what = f"non-numeric value {shown}{count}: fix it or declare it a missing marker"
            else:
                what = f"non-numeric values {shown}{count}: fix them or declare them missing markers"
            return [f"numeric column {col!r} holds {what} (--na-values {markers!r})"]
        table[col] = pd.to_numeric(text)
        return []
    iso = present.str.fullmatch(_ISO_DATE)
    if iso.mean() > NUMERIC_MAJORITY:
        dates = pd.to_datetime(text.str.replace("/", "-", regex=False), format="ISO8601", utc=True, errors="coerce")
        bad = present[dates[present.index].isna().to_numpy()]
        if len(bad):
            shown = ", ".join(f"{v!r} ({place(i)})" for i, v in bad.drop_duplicates().iloc[:_MAX_SHOWN].items())
            return [f"date column {col!r} holds values that are not dates (YYYY-MM-DD): {shown}"
                    + (f" ({len(bad)} in all)" if len(bad) > 1 else "")]
        table[col] = dates
        return []
    if present.str.fullmatch(_OTHER_DATE).mean() > NUMERIC_MAJORITY:
        example = present[present.str.fullmatch(_OTHER_DATE)].iloc[0]
        return [f"column {col!r} holds dates written like {example!r} (day or month first?): write them as "
                "YYYY-MM-DD (ISO 8601) or drop the column"]
    table[col] = text
    return []


def load_party_table(path: str | os.PathLike, *, party: str, id_column: str, label_column: str | None,
                     options: TableOptions = TableOptions()) -> PartyTable:
    """Read and check one party's own file (:func:`read_party_file`, :func:`check_party_table`).

    Args:
        path: the party's own file.
        party: the party's name, for messages.
        id_column: its customer-id column.
        label_column: the label column if this party holds the label, else ``None``.
        options: how the file is read (:class:`TableOptions`).
    """
    table = read_party_file(path, party=party, id_column=id_column, label_column=label_column, options=options)
    return _checked(table, path=path, party=party, id_column=id_column, label_column=label_column, options=options)


def load_table_entry(entry: dict, *, party: str) -> PartyTable:
    """Load a party's table from its entry in :func:`petlab.pipeline.prepare_tables`'s
    description ({"path", "id_column", "label_column", "options"})."""
    return load_party_table(entry["path"], party=party, id_column=entry["id_column"],
                            label_column=entry.get("label_column"),
                            options=TableOptions.from_dict(entry.get("options")))


def check_schemas(*, columns: dict[str, list[str]], paths: dict[str, str], id_column: str | dict[str, str],
                  label_column: str, label_party: str) -> None:
    """Check the parties' column names against each other (schema only, no values).

    Args:
        columns: party -> its table's column names.
        paths: party -> its file, for messages.
        id_column: the id column's name at both parties, or party -> its own id column's.
        label_column: the label column, which only ``label_party`` may have.
        label_party: the party that holds the label.
    """
    ids = id_column if isinstance(id_column, dict) else {p: id_column for p in columns}
    others = [p for p in columns if p != label_party]
    for party in others:
        if label_column in columns[party]:
            raise TableError(
                f"label column {label_column!r} is in both tables ({label_party} {paths[label_party]} "
                f"and {party} {paths[party]}): only the label party ({label_party}) may hold it")
    parties = list(columns)
    for i, a in enumerate(parties):
        for b in parties[i + 1:]:
            shared = [c for c in columns[a] if c in set(columns[b]) and not (c == ids[a] == ids[b])]
            if shared:
                raise TableError(
                    f"column {shared[0]!r} is in both tables ({a} {paths[a]} and {b} {paths[b]}): "
                    "rename or drop it at one party (a shared column would leak a join key or "
                    "duplicate a feature)")


def check_intersection(*, shared: int, own_size: int, other_size: int, test_fraction: float, party: str,
                       peer: str, shape: IdShape, rule: str, alignment: str = "psi") -> str | None:
    """Check the number of shared customers at one party, after the intersection.

    Raises :class:`IntersectionError` (one line, with a hint from this party's own ids)
    when they are too few to split; returns a warning (same hint) when they are fewer
    than :data:`LOW_OVERLAP_SHARE` of the smaller party's customers, else ``None``.

    Args:
        shared: customers both parties hold.
        own_size, other_size: this party's customers and the peer's (as the PSI reports).
        test_fraction: the run's split.
        party, peer: names, for the message.
        shape: this party's ids as written (:func:`petlab.data.ids.id_shape`).
        rule: the id rule both parties applied.
        alignment: ``psi`` or ``given``, for the message.

    >>> from petlab.data.ids import IdShape
    >>> shape = IdShape(n=300, min_length=8, max_length=8, common_length=8, all_digits=300,
    ...                 leading_zeros=300, decimal_point=0, exponent=0, whitespace=0)
    >>> check_intersection(shared=150, own_size=300, other_size=300, test_fraction=0.2, party="gateway",
    ...                    peer="wallet", shape=shape, rule="keep-zeros") is None
    True
    """
    what = "private set intersection" if alignment == "psi" else "alignment"
    ids_here = (f"{party} ids: {describe_shape(shape)}, id rule {rule!r}; "
                f"{mismatch_hint(shape=shape, rule=rule, peer=peer)}")
    sizes = f"{own_size:,} customers at the {party}, {other_size:,} at the {peer}"
    try:
        check_split_size(shared=shared, test_fraction=test_fraction)
    except ConfigError as err:
        raise IntersectionError(f"{what}: {err} ({sizes}); {ids_here}") from None
    smaller = min(own_size, other_size)
    if smaller and shared < LOW_OVERLAP_SHARE * smaller:
        return (f"{what}: only {shared:,} shared customers, {shared / smaller:.0%} of the smaller table ({sizes}); "
                f"{ids_here}")
    return None
