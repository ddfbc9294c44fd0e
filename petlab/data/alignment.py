"""Row alignment between parties: a separate, replaceable step.

For now both parties hold the same customer ids; each sorts its own rows by id, so
row i is the same customer at both, and nothing about the ids is exchanged but a digest
of the whole id set (to detect that the sets differ). Private set intersection replaces
this step when the sets only partly overlap.

>>> import pandas as pd
>>> t = pd.DataFrame({"customer_id": ["b", "a"], "x": [2, 1]})
>>> align_by_sorted_ids(t, id_column="customer_id")["x"].tolist()
[1, 2]
"""

from __future__ import annotations

import hashlib

import pandas as pd

__all__ = ["align_by_sorted_ids", "id_set_digest"]


def align_by_sorted_ids(table: pd.DataFrame, *, id_column: str) -> pd.DataFrame:
    """The party's own rows in the shared order (ascending id)."""
    if id_column not in table:
        raise KeyError(f"id column {id_column!r} missing")
    return table.sort_values(id_column, kind="stable").reset_index(drop=True)


def id_set_digest(ids) -> str:
    """SHA-256 of the sorted id set: equal at both parties iff they hold the same ids."""
    digest = hashlib.sha256()
    for value in sorted(map(str, ids)):
        digest.update(value.encode())
        digest.update(b"\0")
    return digest.hexdigest()
