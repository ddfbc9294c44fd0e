"""The dealer serves the protocol's requests and refuses anything else: a gateway that
deviates cannot make it hand out the wallet's secret stream words."""

from __future__ import annotations

import numpy as np
import pytest

from petlab.mpc import lean
from petlab.mpc.dealer import DealerRequestError, check_plan, check_request
from petlab.mpc.secret_random import StreamSource, fresh_key

MASK = (100, 6)


def _bulk(plan):
    return {"function": "petlab_bulk", "device": None, "args": (plan,), "kwargs": {}}


def test_the_protocols_own_plans_are_served():
    rows = np.arange(32)
    plans = [lean.batch_plan(rows=rows, d=6, bits=16), lean.batch_plan(rows=rows, d=6, bits=16, sigmoid=lean.Sigmoid("piecewise")),
             lean.mlp_batch_plan(rows=rows, d=6, hidden=4, bits=16)]
    assert check_plan([("fm_init", MASK, (0,), None)], feature_mask=None) == MASK
    for plan in plans:
        assert check_request(_bulk(plan), feature_mask=MASK)[0] == "petlab_bulk"
    for message in ({"function": "additive", "device": None, "args": ((3, 2), (2, 1), "matmul"), "kwargs": {}},
                    {"function": "square", "device": None, "args": ((5,),), "kwargs": {}},
                    {"function": "binary", "device": None, "args": ((5,), (5,)), "kwargs": {}},
                    {"function": "B2A", "device": None, "args": ((5,),), "kwargs": {}}):
        assert check_request(message, feature_mask=MASK)[0] == message["function"]


@pytest.mark.parametrize("message,why", [
    # CrypTen's server would run any method: this one returns the wallet's next stream words
    ({"function": "_get_additive_PRSS", "device": None, "args": ((16,),), "kwargs": {"remove_rank": True}},
     "serves additive, square"),
    ({"function": "additive", "device": None, "args": ((4,), (4,), "sub"), "kwargs": {}}, "must be one of"),
    ({"function": "additive", "device": None, "args": ((4,), (4,), "mul"), "kwargs": {"alpha": 2}},
     "extra arguments"),
    ({"function": "square", "device": None, "args": ((4,),), "kwargs": {"remove_rank": True}}, "one size"),
    # a product over an empty dimension is all zeros: its answer would be the wallet's words themselves
    ({"function": "additive", "device": None, "args": ((1, 0), (0, 8), "matmul"), "kwargs": {}}, "not a shape"),
    # a daBit whose output is broadcast from one bit: the answer is the wallet's words, one bit off
    (_bulk([("dabit", (1,), (16,), None)]), "output shape"),
    (_bulk([("fm_right", (0, 1), (6, 1), b"")]), "not a shape"),
    (_bulk([("fm_right", (2, 1), (6, 1), b"")]), "non-empty"),
    (_bulk([("fm_left", (6, 1), (2, 1), np.array([0, 100]).tobytes())]), "outside 0..99"),
    (_bulk([("fm_left", (5, 1), (2, 1), np.array([0, 1]).tobytes())]), "does not fit"),
    (_bulk([("trunc", (4,), (2, 4), 63)]), "shifts by 1 to 62"),
    (_bulk([("fm_init", MASK, (0,), None)]), "dealt once"),
    (_bulk([("mlp_mid", (4, 2), (7,), None)]), "does not follow"),
    (_bulk([("xor_everything", (4,), (4,), None)]), "unknown kind"),
    ("terminate please", "not a TTP request"),
])
def test_requests_outside_the_protocol_are_refused(message, why):
    with pytest.raises(DealerRequestError, match=why):
        check_request(message, feature_mask=MASK)


def test_a_plan_before_the_feature_mask_is_refused():
    with pytest.raises(DealerRequestError, match="dealt first"):
        check_plan([("mul", (2,), (2,), None)], feature_mask=None)


class _UnboundSource(StreamSource):
    """The broken reference: streams read by count alone, whatever request they serve."""

    def next(self, *, bound_to=None):
        return super().next()


def _dealt_to_gateway(source_class, keys, gateway_plan):
    fixed: dict = {}
    dealer = [source_class(key=k) for k in keys]
    lean.deal(plan=[("fm_init", MASK, (0,), None)], sources=dealer, fixed=fixed)
    return lean.deal(plan=gateway_plan, sources=dealer, fixed=fixed).numpy()


def _wallet_words(source_class, key, wallet_plan, n):
    """The words the wallet draws for its own (honest) plan, after the feature mask."""
    wallet = source_class(key=key)
    wallet.next(bound_to=lean.plan_binding([("fm_init", MASK, (0,), None)]))
    return wallet.next(bound_to=lean.plan_binding(wallet_plan)).take((n,))


def test_a_well_formed_request_the_wallet_never_makes_reads_words_the_wallet_never_uses():
    """A deviating gateway asks for daBits where the wallet's plan has a truncation: each
    answer is a bit minus a wallet word. Read by count alone (the broken reference), that
    hands the gateway the wallet's words up to one; bound to the request, it is unrelated."""
    keys = [fresh_key(), fresh_key()]
    wallet_plan = [("trunc", (16,), (2, 16), 16)]  # the wallet reads 16 words of r, then its r >> k and top-bit shares
    gateway_plan = [("dabit", (24,), (24,), None)]  # well-formed: the shape checks accept it
    assert check_request(_bulk(gateway_plan), feature_mask=MASK)[0] == "petlab_bulk"
    for source_class, leaked in ((_UnboundSource, 24), (StreamSource, 0)):
        answer = _dealt_to_gateway(source_class, keys, gateway_plan)
        wallet = _wallet_words(source_class, keys[1], wallet_plan, 48)  # everything the wallet uses
        # each answer is a bit minus a word: how many give the gateway a word the wallet uses
        matches = (np.abs(answer[:, None] + wallet[None, :]) <= 1).any(axis=1).sum()
        assert matches == leaked, source_class.__name__


def test_the_broadcast_daBit_is_refused_by_its_shape():
    with pytest.raises(DealerRequestError):
        check_plan([("dabit", (1,), (16,), None)], feature_mask=MASK)
