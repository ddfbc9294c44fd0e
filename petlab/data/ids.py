"""Customer ids as partners export them: read as text, normalised by one documented rule
at both parties, and described by their shape when two parties' ids do not meet.

The rules (``id_rule`` in the configuration, ``--id-rule`` on the command line; both
parties must use the same one, and each records it):

``keep-zeros`` (the default)
    surrounding whitespace is trimmed, and an all-digit id followed by a zero decimal
    part loses it (``877122.0`` -> ``877122``: what a spreadsheet or a float column makes
    of an integer). Leading zeros are kept: ``00877122`` and ``877122`` stay different
    ids, because in many exports they are different customers (fixed-width codes).
``drop-zeros``
    as ``keep-zeros``, and all-digit ids also lose their leading zeros (``00877122`` ->
    ``877122``), for exports where one side's tool dropped them. Choose it only when
    both parties know their ids are numbers.
``trim-only``
    surrounding whitespace trimmed, nothing else (for codes where ``12.0`` and ``12``
    differ).

An id is never read through a float: a 19-digit id would lose digits, and ``007``
would become ``7``.

>>> import pandas as pd
>>> raw = pd.Series([" 877122", "877122.0 ", "00877122", "C-01"])
>>> normalise_ids(raw, rule="keep-zeros").tolist()
['877122', '877122', '00877122', 'C-01']
>>> normalise_ids(raw, rule="drop-zeros").tolist()
['877122', '877122', '877122', 'C-01']
>>> describe_shape(id_shape(raw))
'4 ids, 4 to 8 characters (most 8), 2 numeric, 1 with leading zeros, 1 with a decimal point, 2 with surrounding whitespace'
"""

from __future__ import annotations

import dataclasses

# pandas is not imported here: petlab.config reads ID_RULES, and the command line starts fast

__all__ = ["ID_RULES", "DEFAULT_ID_RULE", "normalise_ids", "IdShape", "id_shape", "describe_shape",
           "mismatch_hint"]

#: rule -> what it does (the module docstring explains when to choose which).
ID_RULES = {
    "keep-zeros": "whitespace trimmed; 877122.0 read as 877122; leading zeros kept",
    "drop-zeros": "whitespace trimmed; 877122.0 read as 877122; leading zeros of all-digit ids dropped",
    "trim-only": "whitespace trimmed, nothing else",
}
DEFAULT_ID_RULE = "keep-zeros"

_ZERO_DECIMAL = r"^(\d+)\.0+$"  # 877122.0, 877122.00
_DIGITS = r"^\d+$"


def normalise_ids(ids: pd.Series, *, rule: str) -> pd.Series:
    """The ids as compared between the parties (text, by ``rule``; see the module doc).

    Args:
        ids: the id column as read (text; missing values stay missing).
        rule: one of :data:`ID_RULES`.
    """
    if rule not in ID_RULES:
        raise ValueError(f"unknown id rule {rule!r}: expected one of {', '.join(ID_RULES)}")
    text = ids.astype("string").str.strip()
    if rule == "trim-only":
        return text.astype(object).where(text.notna(), None)
    text = text.str.replace(_ZERO_DECIMAL, r"\1", regex=True)
    if rule == "drop-zeros":
        digits = text.str.fullmatch(r"\d+").fillna(False).astype(bool)
        stripped = text[digits].str.lstrip("0")
        text[digits] = stripped.where(stripped != "", "0")
    return text.astype(object).where(text.notna(), None)


@dataclasses.dataclass(frozen=True)
class IdShape:
    """How one party's ids are written (counts only, no id): kept in its own record and
    messages, never sent to the other party."""

    n: int
    min_length: int
    max_length: int
    common_length: int
    all_digits: int
    leading_zeros: int  # all-digit ids of two or more characters starting with 0
    decimal_point: int
    exponent: int  # like 8.77122e+05: the id went through a float and may have lost digits
    whitespace: int  # surrounding whitespace in the file (trimmed by every rule)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def id_shape(raw: pd.Series) -> IdShape:
    """The shape of ids as read from the file (before normalisation).

    Args:
        raw: the id column as read (text), missing values left out.
    """
    text = raw.dropna().astype(str)
    stripped = text.str.strip()
    lengths = stripped.str.len()
    digits = stripped.str.fullmatch(_DIGITS)
    return IdShape(
        n=int(len(text)),
        min_length=int(lengths.min()) if len(text) else 0,
        max_length=int(lengths.max()) if len(text) else 0,
        common_length=int(lengths.mode().iloc[0]) if len(text) else 0,
        all_digits=int(digits.sum()),
        leading_zeros=int((digits & stripped.str.startswith("0") & (lengths > 1)).sum()),
        decimal_point=int(stripped.str.contains(".", regex=False).sum()),
        exponent=int(stripped.str.fullmatch(r"\d+(\.\d+)?[eE][+-]?\d+").sum()),
        whitespace=int((text != stripped).sum()),
    )


def describe_shape(shape: IdShape) -> str:
    """One phrase for a party's own messages and log."""
    if shape.min_length == shape.max_length:
        length = f"{shape.min_length} characters"
    else:
        length = f"{shape.min_length} to {shape.max_length} characters (most {shape.common_length})"
    def count(c: int) -> str:
        return "all" if c == shape.n else f"{c:,}"

    parts = [f"{shape.n:,} ids", length]
    for c, what in ((shape.all_digits, "numeric"), (shape.leading_zeros, "with leading zeros"),
                    (shape.decimal_point, "with a decimal point"), (shape.exponent, "in exponent notation"),
                    (shape.whitespace, "with surrounding whitespace")):
        if c:
            parts.append(f"{count(c)} {what}")
    return ", ".join(parts)


def mismatch_hint(*, shape: IdShape, rule: str, peer: str) -> str:
    """What to check when few ids meet, from this party's own ids only.

    Args:
        shape: this party's :class:`IdShape`.
        rule: the id rule both parties used.
        peer: the other party's name, for the message.
    """
    hints = []
    if shape.exponent:
        hints.append("ids in exponent notation went through a float and may have lost digits: export the id "
                     "column as text")
    if shape.leading_zeros and rule != "drop-zeros":
        hints.append(f"if the {peer} writes these ids without their leading zeros, run both parties with "
                     "--id-rule drop-zeros")
    elif shape.all_digits and not shape.leading_zeros and rule != "drop-zeros":
        hints.append(f"if the {peer}'s ids carry leading zeros (e.g. 00877122), run both parties with "
                     "--id-rule drop-zeros")
    if shape.decimal_point and rule == "trim-only":
        hints.append("with --id-rule keep-zeros, 877122.0 is read as 877122")
    elif shape.decimal_point > shape.exponent:
        hints.append("ids with a decimal part other than .0 are compared as written")
    hints.append("check that both parties name the column that holds the same customer ids")
    return "; ".join(hints)
