"""The dealer (TTP provider): serves correlated randomness to party 0, and nothing else.

CrypTen's ``TTPServer`` runs whatever method party 0 names, with whatever arguments: a
gateway that deviates from the protocol could ask for one of its helpers (e.g. the sum
of the other parties' stream words) or for a product whose output shape is broadcast
from a smaller input, and read the wallet's secret streams in the answer. petlab's
dealer serves a fixed list of requests and checks every argument before it draws a
word:

- CrypTen's own requests (``engine: crypten``): Beaver triples for the products CrypTen
  makes (``additive`` with a product operation only), squares, binary triples, wrap
  counts and random bits, with well-formed sizes;
- petlab's bulk request (:func:`petlab.mpc.lean.deal`), whose plan is checked item by
  item (:func:`check_plan`): each kind's output shape follows from its input shape, row
  indices are in range, the feature mask is dealt once, first. Shapes alone cannot tell
  a request party 1 will make from another well-formed one, so every stream after the
  feature mask's is also bound to the plan it serves (:func:`petlab.mpc.lean.plan_binding`):
  a plan party 1 never makes reads words party 1 never uses.

What this does not cover: CrypTen's own TTP requests (``engine: crypten``) are checked for
their form but their streams are not bound to them, so a deviating gateway can still
steer some of the wallet's words into low-entropy answers (``wraps``, ``B2A``). Like
everything an actively deviating party can do, that is outside the semi-honest model
petlab claims (``docs/security.md``); petlab's own protocol, the default, is covered.

A refused request ends the dealer with a one-line :class:`DealerRequestError`, which its
status records; party 0 then finds its dealer gone.

>>> check_plan([("fm_init", (4, 3), (0,), None)], feature_mask=None)
(4, 3)
>>> check_plan([("dabit", (1,), (16,), None)], feature_mask=(4, 3))
Traceback (most recent call last):
...
petlab.mpc.dealer.DealerRequestError: dealer: refused plan item 0 ('dabit'): output shape (16,) is not (1,)
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["DealerRequestError", "check_plan", "check_request", "dealer_server_class", "SERVED",
           "PRODUCT_OPS", "MAX_WORDS_PER_REQUEST"]

log = logging.getLogger("petlab.dealer")

#: The requests the dealer serves (CrypTen's TTP provider's, and petlab's bulk request).
SERVED = ("additive", "square", "binary", "wraps", "B2A", "petlab_bulk")
#: The products CrypTen's Beaver triples are made for (``additive``'s operation).
PRODUCT_OPS = ("mul", "matmul", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d")
_CONV_KWARGS = {"stride", "padding", "dilation", "groups", "output_padding"}
MAX_WORDS_PER_REQUEST = 2**31  # a guard against a request that would exhaust the dealer's memory


class DealerRequestError(RuntimeError):
    """Party 0 asked the dealer for something the protocol never asks for."""


def _shape(value, *, what: str, empty_ok: bool = False) -> tuple:
    try:
        shape = tuple(int(s) for s in value)
    except (TypeError, ValueError):
        raise DealerRequestError(f"dealer: refused {what}: {value!r} is not a shape") from None
    if any(s < (0 if empty_ok else 1) for s in shape) or any(int(s) != s for s in value):  # no empty dimension: a product
        # over an empty one is all zeros, and its answer would be the other party's words themselves
        raise DealerRequestError(f"dealer: refused {what}: {value!r} is not a shape")
    return shape


def _words(shape: tuple) -> int:
    return int(np.prod(shape, dtype=object)) if shape else 1


def check_plan(plan, *, feature_mask: tuple | None) -> tuple | None:
    """Check a bulk request item by item; returns the feature mask's shape (``(n, d)``)
    once it is known (the first request deals it, ``feature_mask=None`` before).

    Raises :class:`DealerRequestError` naming the first item that does not follow the
    protocol's shapes (:mod:`petlab.mpc.lean`: ``batch_plan``, ``mlp_batch_plan``).
    """
    from petlab.mpc.lean import TRUNC_HEADROOM, _mid_size

    if not isinstance(plan, list) or not plan:
        raise DealerRequestError("dealer: refused a bulk request that is not a non-empty list of items")
    total = 0
    for pos, item in enumerate(plan):
        if not (isinstance(item, tuple) and len(item) == 4):
            raise DealerRequestError(f"dealer: refused plan item {pos}: not (kind, shape, output shape, extra)")
        kind, shape, out, extra = item
        shape = _shape(shape, what=f"plan item {pos}")
        out = _shape(out, what=f"plan item {pos}", empty_ok=kind == "fm_init")  # the mask derives nothing

        def refuse(why: str):
            raise DealerRequestError(f"dealer: refused plan item {pos} ({kind!r}): {why}")

        if kind == "fm_init":
            if feature_mask is not None or len(plan) != 1:
                refuse("the feature mask is dealt once, alone, in the first request")
            if len(shape) != 2 or min(shape) < 1 or out != (0,) or extra is not None:
                refuse(f"a feature mask is (rows, features) deriving nothing, not {shape} -> {out}")
            return shape
        if feature_mask is None:
            refuse("the feature mask must be dealt first")
        n, d = feature_mask
        if not shape or min(shape) < 1:
            refuse(f"empty shape {shape}")
        if kind in ("mul", "and", "square", "dabit"):
            if out != shape or extra is not None:
                refuse(f"output shape {out} is not {shape}")
        elif kind == "trunc":
            if out != (2,) + shape:
                refuse(f"output shape {out} is not {(2,) + shape}")
            if not isinstance(extra, int) or not 1 <= extra <= TRUNC_HEADROOM:
                refuse(f"a truncation shifts by 1 to {TRUNC_HEADROOM} bits, not {extra!r}")
        elif kind in ("fm_left", "fm_right"):
            if not isinstance(extra, bytes) or not extra or len(extra) % 8:
                refuse("row indices must be a non-empty int64 array")
            rows = np.frombuffer(extra, dtype=np.int64)
            if rows.min() < 0 or rows.max() >= n:
                refuse(f"row indices outside 0..{n - 1}")
            if len(shape) != 2:
                refuse(f"shape {shape} is not a matrix")
            left, right = ((d, shape[1]), (len(rows), shape[1])) if kind == "fm_left" else \
                ((len(rows), shape[1]), (d, shape[1]))
            if shape != left or out != right:
                refuse(f"{shape} -> {out} does not fit {len(rows)} rows of {d} features ({left} -> {right})")
        elif kind == "mlp_mid":
            if len(shape) != 2 or out != (_mid_size(*shape),) or extra is not None:
                refuse(f"output shape {out} does not follow from {shape}")
        else:
            refuse("unknown kind")
        total += _words(shape) + _words(out)
        if total > MAX_WORDS_PER_REQUEST:
            refuse(f"the request exceeds {MAX_WORDS_PER_REQUEST} words")
    return feature_mask


def check_request(message, *, feature_mask: tuple | None) -> tuple[str, tuple, dict, tuple | None]:
    """Check one request of party 0: ``(function, args, kwargs, feature_mask)`` if it is
    served, the feature mask's shape as it stands after the request."""
    if not (isinstance(message, dict) and set(message) == {"function", "device", "args", "kwargs"}):
        raise DealerRequestError("dealer: refused a request that is not a TTP request")
    function, args, kwargs = message["function"], tuple(message["args"] or ()), dict(message["kwargs"] or {})
    if function not in SERVED:
        raise DealerRequestError(f"dealer: refused {function!r}: it serves {', '.join(SERVED)} only")
    if function == "petlab_bulk":
        if len(args) != 1 or kwargs:
            raise DealerRequestError("dealer: refused petlab_bulk: one plan, no options")
        feature_mask = check_plan(args[0], feature_mask=feature_mask)
    elif function == "additive":
        if len(args) < 3 or args[2] not in PRODUCT_OPS:
            raise DealerRequestError(f"dealer: refused additive: the operation must be one of {', '.join(PRODUCT_OPS)}")
        _shape(args[0], what="additive's first size"), _shape(args[1], what="additive's second size")
        extra_kwargs = set(kwargs) - (_CONV_KWARGS if args[2].startswith("conv") else set())
        if len(args) > 3 or extra_kwargs:
            raise DealerRequestError(f"dealer: refused additive {args[2]} with extra arguments")
    else:  # square, binary, wraps, B2A: sizes only
        sizes = args + tuple(kwargs.values())
        if function == "binary" and (len(args) != 2 or kwargs):
            raise DealerRequestError("dealer: refused binary: two sizes")
        if function != "binary" and (len(args) != 1 or kwargs):
            raise DealerRequestError(f"dealer: refused {function}: one size")
        for size in sizes:
            if _words(_shape(size, what=f"{function}'s size")) > MAX_WORDS_PER_REQUEST:
                raise DealerRequestError(f"dealer: refused {function}: more than {MAX_WORDS_PER_REQUEST} words")
    return function, args, kwargs, feature_mask


def _petlab_bulk(self, plan):
    from petlab.mpc.lean import PROTOCOL_PURPOSE, deal
    from petlab.mpc.secret_random import StreamSource, derive_key

    if not hasattr(self, "_petlab_sources"):  # the keys agreed with each party (petlab.crypten_compat)
        self._petlab_sources = [StreamSource(key=derive_key(key=k, purpose=PROTOCOL_PURPOSE))
                                for k in self.petlab_pair_keys]
    return deal(plan=plan, sources=self._petlab_sources, fixed=self._petlab_fixed)


def _serve(self) -> None:
    """The dealer's life: meet the parties, agree a key with each, then answer party 0's
    checked requests until it says "terminate"."""
    import crypten
    import crypten.communicator as comm

    crypten.init()
    self.ttp_group, self.comm_group = comm.get().ttp_group, comm.get().ttp_comm_group
    self.device = "cpu"
    self._petlab_fixed = {}
    self._setup_generators()  # petlab.crypten_compat: X25519 with each party
    ttp_rank, feature_mask = comm.get().get_ttp_rank(), None
    try:
        while True:
            message = comm.get().recv_obj(0, self.ttp_group)
            if message == "terminate":
                return
            function, args, kwargs, feature_mask = check_request(message, feature_mask=feature_mask)
            self.device = message["device"]
            result = getattr(self, function)(*args, **kwargs)
            comm.get().send_obj(result.size(), 0, self.ttp_group)
            comm.get().broadcast(result, ttp_rank, self.comm_group)
    except DealerRequestError:
        raise
    except RuntimeError as err:  # a party gone while serving: the parties report it (as CrypTen's server does)
        log.info("dealer: stopped serving: %s", str(err).splitlines()[0] if str(err) else type(err).__name__)


def dealer_server_class():
    """The dealer: CrypTen's ``TTPServer`` for its triple arithmetic, with petlab's serving
    loop (checked requests) and bulk request (made on demand, since CrypTen is imported
    only inside party processes)."""
    from crypten.mpc.provider.ttp_provider import TTPServer

    return type("DealerServer", (TTPServer,), {"__init__": _serve, "petlab_bulk": _petlab_bulk})
