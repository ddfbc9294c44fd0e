"""Checks of a data set's promise: a model on the joint features beats either side alone.

This is the research harness's view (it reads both parties' tables); it uses
scikit-learn's logistic regression as an independent yardstick.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from petlab.data.columns import DEFAULT_MAX_LEVELS
from petlab.data.features import prepare_party_features
from petlab.data.validation import load_table_entry

__all__ = ["joint_vs_single_auc"]


def joint_vs_single_auc(*, tables: dict, test_fraction: float, seed: int) -> pd.DataFrame:
    """Test AUC of plaintext logistic regression on joint, gateway-only and wallet-only
    features of the shared customers (each party's features encoded with its own
    statistics).

    Args:
        tables: party -> {"path", "id_column", "label_column", "options"} as from
            :func:`petlab.pipeline.prepare_tables`.
        test_fraction, seed: the split, as in the run configuration.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    raw = {party: load_table_entry(entry, party=party).table for party, entry in tables.items()}
    shared = set.intersection(*(set(raw[p][tables[p]["id_column"]].astype(str)) for p in raw))
    feats = {}
    for party, entry in tables.items():
        feats[party] = prepare_party_features(table=raw[party], id_column=entry["id_column"],
                                              label_column=entry["label_column"],
                                              test_fraction=test_fraction, seed=seed, keep_ids=shared,
                                              max_levels=entry.get("options", {}).get("max_levels",
                                                                                      DEFAULT_MAX_LEVELS))
    label = next(f for f in feats.values() if f.y_train is not None)
    views = {"joint": list(feats), **{f"{p} only": [p] for p in feats}}
    rows = []
    for view, parties in views.items():
        X_train = np.hstack([feats[p].X_train for p in parties])
        X_test = np.hstack([feats[p].X_test for p in parties])
        model = LogisticRegression(max_iter=2000).fit(X_train, label.y_train)
        auc = roc_auc_score(label.y_test, model.predict_proba(X_test)[:, 1])
        rows.append({"features": view, "n_features": X_train.shape[1], "test_auc": float(auc)})
    return pd.DataFrame(rows).set_index("features")
