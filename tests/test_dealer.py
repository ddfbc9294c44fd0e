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
    # a daBit whose output is broadcast from one bit: the answer is the wallet's words, one bit off
    (_bulk([("dabit", (1,), (16,), None)]), "output shape"),
    (_bulk([("fm_right", (0, 1), (6, 1), b"")]), "empty shape"),
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


def test_what_the_refused_broadcast_would_have_leaked():
    """Why the output-shape check matters: without it, ``deal`` answers the broadcast daBit
    with the wallet's stream words up to one bit (the reviewer's extraction)."""
    keys = [fresh_key(), fresh_key()]
    fixed: dict = {}
    lean.deal(plan=[("fm_init", MASK, (0,), None)], sources=[StreamSource(key=k) for k in keys], fixed=fixed)
    dealer = [StreamSource(key=k) for k in keys]
    for s in dealer:
        s.next()  # the feature mask's streams
    answer = lean.deal(plan=[("dabit", (1,), (16,), None)], sources=dealer, fixed=fixed).numpy()
    wallet = StreamSource(key=keys[1])
    wallet.next()
    stream = wallet.next()
    stream.bits((1, 1))  # the wallet's own bit share comes first in its stream
    leaked = stream.take((1, 16)).ravel()
    assert (np.abs(answer + leaked) <= 1).all()  # -answer is the wallet's words, up to the bit
    with pytest.raises(DealerRequestError):
        check_plan([("dabit", (1,), (16,), None)], feature_mask=MASK)
