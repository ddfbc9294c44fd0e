"""The synthetic data set, each party's files, local preprocessing, alignment, split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from petlab.data.alignment import align_by_sorted_ids, id_set_digest
from petlab.data.checks import joint_vs_single_auc
from petlab.data.features import prepare_party_features
from petlab.data.preprocess import LocalPreprocessor
from petlab.data.split import train_test_indices
from petlab.data.synthetic import GATEWAY_COLUMNS, LABEL_COLUMN, WALLET_COLUMNS, make_engagement_tables
from petlab.pipeline import prepare_tables


def test_generator_is_deterministic_per_seed():
    a = make_engagement_tables(rows=1000, seed=5)
    b = make_engagement_tables(rows=1000, seed=5)
    c = make_engagement_tables(rows=1000, seed=6)
    for party in ("gateway", "wallet"):
        pd.testing.assert_frame_equal(a[party], b[party])
        assert not a[party].equals(c[party])


def test_generator_has_realistic_types():
    t = make_engagement_tables(rows=5000, seed=0)
    g, w = t["gateway"], t["wallet"]
    assert set(g["customer_id"]) == set(w["customer_id"]) and g["customer_id"].is_unique
    assert not g["customer_id"].equals(w["customer_id"])  # different row orders
    assert g["spend_foreign_90d_usd"].skew() > 2  # skewed amounts
    assert g["fx_amount_90d_usd"].isna().mean() == pytest.approx(0.03, abs=0.01)
    assert w["age_band"].isna().any() and not pd.api.types.is_numeric_dtype(w["account_tier"])
    assert set(g[LABEL_COLUMN].unique()) == {0, 1}
    assert 0.15 < g[LABEL_COLUMN].mean() < 0.5


def test_joint_features_beat_either_side_by_a_clear_margin(data_root):
    from petlab.config import poc_config

    cfg = poc_config(rows=8000, root=str(data_root))
    check = joint_vs_single_auc(tables=prepare_tables(config=cfg), test_fraction=0.2, seed=0)
    joint = check.loc["joint", "test_auc"]
    best_single = check.drop(index="joint")["test_auc"].max()
    assert joint - best_single >= 0.03, check
    assert joint > 0.75


def test_each_party_file_holds_only_its_own_columns(data_root):
    from petlab.config import poc_config

    tables = prepare_tables(config=poc_config(rows=500, root=str(data_root)))
    gateway = pd.read_csv(tables["gateway"]["path"])
    wallet = pd.read_csv(tables["wallet"]["path"])
    assert list(gateway.columns) == GATEWAY_COLUMNS
    assert list(wallet.columns) == WALLET_COLUMNS
    assert LABEL_COLUMN not in wallet
    assert set(gateway.columns) & set(wallet.columns) == {"customer_id"}
    # each party's table sits in its own folder
    assert tables["gateway"]["path"].startswith(str((data_root / "gateway").resolve()))
    assert tables["wallet"]["path"].startswith(str((data_root / "wallet").resolve()))


def test_preprocessing_uses_only_the_partys_own_training_rows():
    table = make_engagement_tables(rows=2000, seed=1)["wallet"]
    train_idx, test_idx = train_test_indices(n=len(table), test_fraction=0.25, seed=0)
    train = table.iloc[train_idx]
    prep = LocalPreprocessor.fit(train, exclude=("customer_id",))
    # statistics are the training rows' own
    assert prep.medians["tenure_months"] == pytest.approx(train["tenure_months"].median())
    sessions = np.log1p(train["app_sessions_30d"].astype(float)) if "app_sessions_30d" in prep.log_columns \
        else train["app_sessions_30d"].astype(float)
    assert prep.means["app_sessions_30d"] == pytest.approx(sessions.mean())
    # changing test rows changes nothing that was fitted
    garbled = table.copy()
    garbled.loc[garbled.index[test_idx], "tenure_months"] = 1e9
    assert LocalPreprocessor.fit(garbled.iloc[train_idx], exclude=("customer_id",)) == prep
    X = prep.transform(train)
    assert np.isfinite(X).all()
    assert np.allclose(X[:, : len(prep.numeric)].mean(0), 0, atol=1e-4)


def test_unseen_category_and_missing_values_encode_safely():
    prep = LocalPreprocessor.fit(pd.DataFrame({"tier": ["a", "b", None], "x": [1.0, None, 3.0]}))
    X = prep.transform(pd.DataFrame({"tier": ["zzz", None], "x": [None, 2.0]}))
    names = prep.feature_names
    assert X[0, names.index("tier=a")] == 0 and X[0, names.index("tier=b")] == 0
    assert X[1, names.index("tier=<missing>")] == 1
    assert np.isfinite(X).all()


def test_alignment_gives_the_same_customer_in_each_row():
    tables = make_engagement_tables(rows=300, seed=2)
    g = align_by_sorted_ids(tables["gateway"], id_column="customer_id")
    w = align_by_sorted_ids(tables["wallet"], id_column="customer_id")
    assert (g["customer_id"].to_numpy() == w["customer_id"].to_numpy()).all()
    assert id_set_digest(g["customer_id"]) == id_set_digest(reversed(list(w["customer_id"])))
    assert id_set_digest(g["customer_id"][1:]) != id_set_digest(w["customer_id"])


def test_split_is_shared_and_disjoint():
    a = train_test_indices(n=1000, test_fraction=0.2, seed=3)
    b = train_test_indices(n=1000, test_fraction=0.2, seed=3)
    assert all((x == y).all() for x, y in zip(a, b))
    assert len(a[1]) == 200 and not set(a[0]) & set(a[1])
    with pytest.raises(ValueError, match="too few"):
        train_test_indices(n=1, test_fraction=0.2, seed=0)


def test_party_features_are_computed_from_its_own_table_only():
    tables = make_engagement_tables(rows=1000, seed=4)
    wallet = prepare_party_features(table=tables["wallet"], id_column="customer_id", label_column=None,
                                    test_fraction=0.2, seed=0)
    assert wallet.y_train is None and wallet.y_test is None
    assert not any(name.startswith(("tx_", "spend", "home_market")) for name in wallet.feature_names)
    gateway = prepare_party_features(table=tables["gateway"], id_column="customer_id",
                                     label_column=LABEL_COLUMN, test_fraction=0.2, seed=0)
    assert LABEL_COLUMN not in gateway.feature_names and gateway.y_train is not None
    assert gateway.id_digest == wallet.id_digest
