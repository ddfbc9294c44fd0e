"""Each party's table in its own location: ``<root>/<party>/<name>.csv``.

Nothing here reads more than one party's folder at a time; a party process calls
:func:`read_party_table` with its own party only.

>>> import tempfile, pandas as pd
>>> root = tempfile.mkdtemp()
>>> path = write_party_table(pd.DataFrame({"customer_id": ["a"], "x": [1.0]}),
...                          root=root, party="wallet", name="demo")
>>> path.parent.name, path.name
('wallet', 'demo.csv')
>>> read_party_table(root=root, party="wallet", name="demo").shape
(1, 2)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pandas as pd

from petlab.parties import Party

__all__ = ["party_table_path", "write_party_table", "read_party_table", "file_sha256"]


def party_table_path(*, root: str | os.PathLike, party: Party | str, name: str, fmt: str = "csv") -> Path:
    """Where ``party`` keeps table ``name`` under ``root`` (``fmt``: csv or parquet)."""
    return Path(root) / str(Party.parse(str(party))) / f"{name}.{fmt}"


def write_party_table(
    table: pd.DataFrame, *, root: str | os.PathLike, party: Party | str, name: str, fmt: str = "csv"
) -> Path:
    """Write one party's table atomically (a reader never sees half a file)."""
    path = party_table_path(root=root, party=party, name=name, fmt=fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if fmt == "parquet":
            os.close(fd)
            table.to_parquet(tmp, index=False)
        else:
            with os.fdopen(fd, "w", newline="") as fh:
                table.to_csv(fh, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_party_table(*, root: str | os.PathLike, party: Party | str, name: str,
                     id_column: str = "customer_id") -> pd.DataFrame:
    """Read one party's table (ids as strings), with a clear error when it is missing."""
    path = party_table_path(root=root, party=party, name=name)
    if not path.is_file():
        raise FileNotFoundError(f"{party} table not found: {path}")
    return pd.read_csv(path, dtype={id_column: str})


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, recorded in run records so reviewers can check inputs."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
