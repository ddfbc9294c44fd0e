"""A seeded, deterministic generator of a cross-border customer-engagement data set.

The gateway (payments) sees how a customer pays abroad; the wallet partner sees how
the customer uses the app. Whether the customer engages with a campaign (the label,
held by the gateway) depends on latent traits that each side only sees part of:

* ``travel`` (cross-border activity) is visible mostly through the gateway's columns;
* ``digital`` (app and promotion affinity) is visible mostly through the wallet's;
* ``price`` (price sensitivity) leaks weakly into both.

So a model on the joint features beats either side alone; the margin is measured in
tests and shown by the data notebook, not assumed.

>>> tables = make_engagement_tables(rows=500, seed=1)
>>> sorted(tables)
['gateway', 'wallet']
>>> tables["gateway"].shape[0] == tables["wallet"].shape[0] == 500
True
>>> "engaged" in tables["gateway"] and "engaged" not in tables["wallet"]
True
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from petlab.parties import Party

__all__ = [
    "ID_COLUMN",
    "LABEL_COLUMN",
    "GATEWAY_COLUMNS",
    "WALLET_COLUMNS",
    "make_engagement_tables",
    "make_wide_tables",
]

ID_COLUMN = "customer_id"
LABEL_COLUMN = "engaged"

HOME_MARKETS = ["CN", "HK", "MY", "TH", "SG", "KR", "PH"]
CORRIDORS = ["asean", "east_asia", "europe", "other"]
TIERS = ["basic", "silver", "gold"]
AGE_BANDS = ["18-24", "25-34", "35-44", "45-54", "55+"]
REGIONS = ["metro", "urban", "rural"]

GATEWAY_COLUMNS = (
    [ID_COLUMN, "home_market"]
    + [f"tx_abroad_90d_{c}" for c in CORRIDORS]
    + [
        "spend_local_90d",
        "spend_foreign_90d_usd",
        "fx_amount_90d_usd",
        "mcc_share_travel",
        "mcc_share_retail",
        "mcc_share_dining",
        "days_since_last_tx",
        LABEL_COLUMN,
    ]
)
WALLET_COLUMNS = [
    ID_COLUMN,
    "app_sessions_30d",
    "coupon_redemptions_90d",
    "topups_30d",
    "avg_topup_amount",
    "tenure_months",
    "account_tier",
    "age_band",
    "region",
]


def _with_missing(rng: np.random.Generator, values: np.ndarray, rate: float) -> np.ndarray:
    values = values.astype(float)
    values[rng.random(values.shape[0]) < rate] = np.nan
    return values


def make_engagement_tables(*, rows: int, seed: int, overlap: float = 1.0,
                           wallet_extra: float = 0.0) -> dict[str, pd.DataFrame]:
    """Generate the gateway's and the wallet's tables.

    Args:
        rows: number of the gateway's customers.
        seed: seed of the generator; the same arguments give byte-identical tables.
        overlap: share of the gateway's customers who are also wallet users (0-1].
        wallet_extra: wallet customers the gateway never saw, as a multiple of ``rows``.

    Returns:
        ``{"gateway": DataFrame, "wallet": DataFrame}``, each with a ``customer_id``
        column and its rows in its own order; the label ``engaged`` (0/1) is in the
        gateway's table only.

    >>> a = make_engagement_tables(rows=50, seed=3)["wallet"]
    >>> b = make_engagement_tables(rows=50, seed=3)["wallet"]
    >>> a.equals(b)
    True
    """
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    if not 0 < overlap <= 1 or wallet_extra < 0:
        raise ValueError(f"need 0 < overlap <= 1 and wallet_extra >= 0, got {overlap}, {wallet_extra}")
    rng = np.random.default_rng(seed)
    n_extra = int(round(wallet_extra * rows))
    n = rows + n_extra  # customers of either party; the first `rows` are the gateway's

    # latent traits, independent of each other
    travel = rng.standard_normal(n)
    digital = rng.standard_normal(n)
    price = rng.standard_normal(n)
    ids = np.array([f"C{i:08d}" for i in rng.choice(10**8, size=n, replace=False)])

    # ---- gateway: cross-border payment behaviour --------------------------------
    market = rng.choice(HOME_MARKETS, size=n, p=[0.35, 0.15, 0.12, 0.12, 0.1, 0.1, 0.06])
    corridor_bias = rng.dirichlet([2.0, 2.0, 0.7, 0.5], size=n)
    base_rate = np.exp(0.6 + 0.8 * travel + 0.15 * rng.standard_normal(n))
    tx = {c: rng.poisson(base_rate * 4 * corridor_bias[:, j]) for j, c in enumerate(CORRIDORS)}
    total_tx = sum(tx.values())
    spend_local = rng.lognormal(mean=7.0 - 0.15 * price, sigma=0.9, size=n)
    spend_foreign = total_tx * rng.lognormal(mean=3.8 + 0.2 * travel, sigma=0.6, size=n)
    fx_amount = spend_foreign * rng.uniform(0.3, 1.0, size=n)
    mcc = rng.dirichlet(np.ones(4), size=n)
    travel_tilt = 1 / (1 + np.exp(-travel))
    mcc_travel = 0.6 * mcc[:, 0] * travel_tilt + 0.1 * travel_tilt
    mcc_retail = (1 - mcc_travel) * mcc[:, 1] / (mcc[:, 1] + mcc[:, 2] + mcc[:, 3])
    mcc_dining = (1 - mcc_travel) * mcc[:, 2] / (mcc[:, 1] + mcc[:, 2] + mcc[:, 3])
    recency = rng.exponential(scale=np.exp(3.0 - 0.5 * travel - 0.3 * digital), size=n)

    # ---- wallet: app behaviour and preferences -------------------------------------
    app_visits = rng.negative_binomial(3, 3 / (3 + np.exp(2.2 + 0.7 * digital)), size=n)
    coupons = rng.poisson(np.exp(-0.2 + 0.8 * digital + 0.45 * price))
    topups = rng.poisson(np.exp(0.5 + 0.4 * digital))
    avg_topup = np.where(topups > 0, rng.lognormal(4.0 - 0.2 * price, 0.7, size=n), np.nan)
    tenure = rng.gamma(shape=2.0, scale=12.0 + 4 * np.clip(digital, -2, 2), size=n)
    tier_score = 0.7 * digital + 0.03 * tenure + 0.5 * rng.standard_normal(n)
    tier = np.array(TIERS)[np.digitize(tier_score, [0.6, 1.6])]
    age_idx = np.clip(np.round(1.8 - 0.35 * digital + 1.1 * rng.standard_normal(n)), 0, 4)
    age_band = np.array(AGE_BANDS, dtype=object)[age_idx.astype(int)]
    region = rng.choice(REGIONS, size=n, p=[0.45, 0.4, 0.15])

    # ---- the label: needs both sides -------------------------------------------------
    logit = (
        -1.2
        + 1.25 * travel
        + 1.25 * digital
        + 0.5 * price
        - 0.35 * (market == "CN")
        + 0.4 * (tier == "gold")
        + 0.6 * rng.standard_normal(n)
    )
    engaged = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)

    gateway = pd.DataFrame(
        {
            ID_COLUMN: ids,
            "home_market": market,
            **{f"tx_abroad_90d_{c}": tx[c] for c in CORRIDORS},
            "spend_local_90d": np.round(spend_local, 2),
            "spend_foreign_90d_usd": np.round(spend_foreign, 2),
            "fx_amount_90d_usd": np.round(_with_missing(rng, fx_amount, 0.03), 2),
            "mcc_share_travel": np.round(mcc_travel, 4),
            "mcc_share_retail": np.round(mcc_retail, 4),
            "mcc_share_dining": np.round(mcc_dining, 4),
            "days_since_last_tx": np.round(_with_missing(rng, recency, 0.02), 1),
            LABEL_COLUMN: engaged,
        }
    )[GATEWAY_COLUMNS]
    age_band = age_band.copy()
    age_band[rng.random(n) < 0.04] = None
    wallet = pd.DataFrame(
        {
            ID_COLUMN: ids,
            "app_sessions_30d": app_visits,
            "coupon_redemptions_90d": coupons,
            "topups_30d": topups,
            "avg_topup_amount": np.round(avg_topup, 2),
            "tenure_months": np.round(tenure, 1),
            "account_tier": tier,
            "age_band": age_band,
            "region": region,
        }
    )[WALLET_COLUMNS]
    # who holds whom: the gateway its `rows` customers, the wallet the first `overlap`
    # share of them plus its own extra customers; each keeps them in its own order
    n_shared = int(round(overlap * rows))
    gateway = gateway.iloc[:rows]
    wallet = pd.concat([wallet.iloc[:n_shared], wallet.iloc[rows:]])
    wallet = wallet.iloc[rng.permutation(len(wallet))].reset_index(drop=True)
    gateway = gateway.iloc[rng.permutation(len(gateway))].reset_index(drop=True)
    return {Party.GATEWAY.value: gateway, Party.WALLET.value: wallet}


def make_wide_tables(*, rows: int, features: int, seed: int) -> dict[str, pd.DataFrame]:
    """Two tables of the same ``rows`` customers with ``features`` numeric columns split
    evenly (the gateway gets the first half and the label), for benchmarks and scale runs.

    Columns are standard normal (float32); the label is drawn from a logistic model on
    all of them, with weights of both signs, so both halves carry signal.

    >>> t = make_wide_tables(rows=100, features=6, seed=0)
    >>> t["gateway"].shape, t["wallet"].shape, bool(t["gateway"]["engaged"].isin([0, 1]).all())
    ((100, 5), (100, 4), True)
    """
    if features < 2:
        raise ValueError(f"features must be at least 2 (one per party), got {features}")
    rng = np.random.default_rng([seed, 7])
    weights = rng.normal(0.0, 2.0 / np.sqrt(features), size=features).astype(np.float32)
    X = np.empty((rows, features), dtype=np.float32)
    logits = np.empty(rows, dtype=np.float32)
    for start in range(0, rows, 262_144):  # in blocks: bounded temporaries at millions of rows
        block = rng.standard_normal((min(262_144, rows - start), features), dtype=np.float32)
        X[start: start + len(block)] = block
        logits[start: start + len(block)] = block @ weights
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logits))).astype(np.int8)
    ids = np.char.add("C", np.char.zfill(np.arange(rows).astype(str), 9))
    half = features // 2
    gateway = pd.DataFrame(X[:, :half], columns=[f"g_{i:03d}" for i in range(half)])
    wallet = pd.DataFrame(X[:, half:], columns=[f"w_{i:03d}" for i in range(features - half)])
    gateway.insert(0, ID_COLUMN, ids)
    wallet.insert(0, ID_COLUMN, ids)
    gateway[LABEL_COLUMN] = label
    return {Party.GATEWAY.value: gateway, Party.WALLET.value: wallet}
