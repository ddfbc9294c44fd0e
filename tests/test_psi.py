"""Private set intersection between two parties over TCP, and alignment after it."""

from __future__ import annotations

import threading

import pytest

from petlab.data.features import prepare_party_features
from petlab.data.psi import PsiError, free_port, private_intersection
from petlab.data.synthetic import make_engagement_tables


def _run_both(gateway_ids, wallet_ids):
    port, out = free_port(), {}
    received = {"gateway": [], "wallet": []}

    def gateway():
        out["gateway"] = private_intersection(ids=gateway_ids, listen=True, address="127.0.0.1", port=port,
                                              tls=None, keep_received=received["gateway"])

    thread = threading.Thread(target=gateway)
    thread.start()
    out["wallet"] = private_intersection(ids=wallet_ids, listen=False, address="127.0.0.1", port=port,
                                         tls=None, keep_received=received["wallet"])
    thread.join(timeout=120)
    return out, received


def test_psi_finds_exactly_the_plain_intersection_and_leaks_no_other_id():
    tables = make_engagement_tables(rows=3000, seed=1, overlap=0.7, wallet_extra=0.3)
    g_ids = tables["gateway"]["customer_id"].tolist()
    w_ids = tables["wallet"]["customer_id"].tolist()
    out, received = _run_both(g_ids, w_ids)
    plain = set(g_ids) & set(w_ids)
    assert len(plain) == 2100
    assert set(out["gateway"].ids) == set(out["wallet"].ids) == plain
    assert out["gateway"].other_set_size == len(w_ids) and out["wallet"].other_set_size == len(g_ids)
    # what each process received holds none of the other's ids in the clear
    for me, other_ids in (("gateway", w_ids), ("wallet", g_ids)):
        blob = b"".join(received[me])
        assert blob and not any(i.encode() in blob for i in other_ids)
        assert out[me].bytes_received == sum(len(m) + 8 for m in received[me])


def test_rows_line_up_after_psi():
    tables = make_engagement_tables(rows=1000, seed=2, overlap=0.6, wallet_extra=0.5)
    out, _ = _run_both(tables["gateway"]["customer_id"].tolist(), tables["wallet"]["customer_id"].tolist())
    g = prepare_party_features(table=tables["gateway"], id_column="customer_id", label_column="engaged",
                               test_fraction=0.2, seed=0, keep_ids=out["gateway"].ids)
    w = prepare_party_features(table=tables["wallet"], id_column="customer_id", label_column=None,
                               test_fraction=0.2, seed=0, keep_ids=out["wallet"].ids)
    assert g.X_train.shape[0] == w.X_train.shape[0] == 480 and g.id_digest == w.id_digest
    # row i is the same customer at both parties (each compared with its own copy of the ids)
    assert g.train_ids == w.train_ids
    assert set(g.train_ids) <= set(out["gateway"].ids)


def test_a_peer_that_never_comes_is_reported():
    with pytest.raises(PsiError, match="did not answer"):
        private_intersection(ids=["a"], listen=False, address="127.0.0.1", port=free_port(), timeout_s=1, tls=None)
    with pytest.raises(PsiError, match="no PSI peer connected"):
        private_intersection(ids=["a"], listen=True, address="127.0.0.1", port=free_port(), timeout_s=1, tls=None)


def test_generator_overlap_parameters():
    t = make_engagement_tables(rows=1000, seed=0, overlap=0.7, wallet_extra=0.3)
    g, w = set(t["gateway"]["customer_id"]), set(t["wallet"]["customer_id"])
    assert len(g) == 1000 and len(w) == 1000 and len(g & w) == 700
    with pytest.raises(ValueError):
        make_engagement_tables(rows=10, seed=0, overlap=0)
