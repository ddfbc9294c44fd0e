"""Deliberately broken variants of petlab's protocol, which the privacy audit must fail.

An audit that passes means something only if it is seen to fail when the protocol
leaks. Each variant here breaks one property on purpose, and the tests
(``tests/test_audit.py``) run it through :func:`petlab.audit.run.run_audit` and require
the audit to fail with the check named in :data:`CONTROLS`:

* ``weak-key``: the gateway's protocol key (its streams under the key it agreed with the
  dealer, under TTP; its own key, under TFP) is :func:`petlab.audit.attacks.seeded_key`
  of a 16-bit seed, which the key search finds;
* ``reused-mask``: every second feature-matrix product (``LeanParty.fm_left``) opens
  ``w`` under the previous step's mask ``B`` (and ``B_prev - B`` beside it, so that the
  run stays correct): the two openings differ by ``w1 - w2``;
* ``undeclared-all-reduce``: training starts by opening the label column through an
  all_reduce that is no declared reveal: the wallet decrypts the gateway's labels;
* ``gateway-holds-wallet-mask`` (TTP): the dealer serves the wallet from the gateway's
  key (it sends the wallet that key and deals both parties' streams under it), so the
  wallet's mask share is a stream the gateway can read. Under TFP the gateway deals the
  whole mask anyway: nothing to break.
* ``sign-in-clear``: every comparison (``LeanParty._ltz``) opens its bit without the
  random bit (``rb = 0``): the sign of every value compared, e.g. of every row's ``z``,
  in the clear. The shares each party receives still look uniform; the opened bits do not;
* ``one-word-leak``: every SGD step opens the bias gradient ``sum(p - y)`` of its batch
  in the clear, one word (a plaintext test needs at least two words to say anything);
* ``partial-mask-reuse``: as ``reused-mask``, but for the last word of ``w`` only (one
  word under the previous step's mask, the others under fresh ones, and that word's
  ``B_prev - B`` beside it): not every word of the pair is close, and not the first.

A variant is chosen by ``mpc.negative_control`` and applied by :func:`apply_negative_control`
at the start of every party process (gateway, wallet and dealer), by monkeypatching.
It is refused outside audit runs (``audit_words`` and ``audit_party0_view`` on): the
configuration refuses it, and so does :func:`apply_negative_control`.

>>> sorted(CONTROLS)  # doctest: +NORMALIZE_WHITESPACE
['gateway-holds-wallet-mask', 'one-word-leak', 'partial-mask-reuse', 'reused-mask', 'sign-in-clear',
 'undeclared-all-reduce', 'weak-key']
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import numpy as np

from petlab.config import NEGATIVE_CONTROLS

__all__ = ["Control", "CONTROLS", "apply_negative_control", "NegativeControlError"]

log = logging.getLogger("petlab.audit.negative_controls")


class NegativeControlError(RuntimeError):
    """A negative control asked for outside an audit run, or one that does not exist."""


@dataclasses.dataclass(frozen=True)
class Control:
    """A broken variant: the providers it breaks and the start of the name of the check
    that must fail (as :func:`petlab.audit.run.require_passed` writes it)."""

    providers: tuple[str, ...]
    fails: str


CONTROLS = {
    "weak-key": Control(providers=("TFP", "TTP"), fails="no key of the gateway found in a small public key space"),
    "reused-mask": Control(providers=("TFP", "TTP"), fails="no mask reused across"),
    "undeclared-all-reduce": Control(providers=("TFP", "TTP"),
                                     fails="only declared outputs decrypted, to their declared receiver"),
    "gateway-holds-wallet-mask": Control(providers=("TTP",),
                                         fails="the gateway cannot reconstruct the wallet's features"),
    "sign-in-clear": Control(providers=("TFP", "TTP"), fails="balance of the opened bits"),
    "one-word-leak": Control(providers=("TFP", "TTP"),
                             fails="only declared outputs decrypted, to their declared receiver"),
    "partial-mask-reuse": Control(providers=("TFP", "TTP"), fails="no mask reused across"),
}
assert set(NEGATIVE_CONTROLS) <= set(CONTROLS)  # every control a configuration can name can be applied


def apply_negative_control(*, name: str, role: str, config) -> None:
    """Break this process (role ``"gateway"``, ``"wallet"`` or ``"dealer"``) as ``name`` says.

    Args:
        name: one of :data:`CONTROLS`.
        role: this process's role.
        config: the run's configuration (a :class:`petlab.config.PocConfig`).
    """
    if name not in CONTROLS:
        raise NegativeControlError(f"unknown negative control {name!r}: expected one of {', '.join(CONTROLS)}")
    if not (config.mpc.audit_words and config.mpc.audit_party0_view):
        raise NegativeControlError(f"negative control {name!r} refused: only audit runs break the protocol on purpose")
    if config.mpc.provider not in CONTROLS[name].providers:
        log.warning("negative control %s: nothing to break under %s", name, config.mpc.provider)
        return
    log.warning("negative control %s: this %s process is deliberately broken", name, role)
    _APPLY[name](role=role, provider=config.mpc.provider)


# -- weak-key ------------------------------------------------------------------------------

def _weakened(key: bytes) -> bytes:
    """The weak key standing for ``key``: 16 bits of it, through :func:`seeded_key` (the
    gateway and the dealer compute the same from the key they agreed)."""
    from petlab.audit.attacks import seeded_key

    return seeded_key(int.from_bytes(key[:2], "big"))


def _weak_key(*, role: str, provider: str) -> None:
    import petlab.mpc.lean as lean
    from petlab.mpc import secret_random

    if role == "gateway" and provider == "TTP":  # its protocol key (party._lean_setup derives it)
        derive = secret_random.derive_key

        @functools.wraps(derive)
        def derive_key(*, key, purpose):
            out = derive(key=key, purpose=purpose)
            return _weakened(out) if purpose == lean.PROTOCOL_PURPOSE else out

        secret_random.derive_key = derive_key
    elif role == "gateway":  # TFP: the gateway's own key
        local_dealer = lean.local_dealer

        @functools.wraps(local_dealer)
        def weak_local_dealer(*, own_key, peer_key):
            return local_dealer(own_key=_weakened(own_key), peer_key=peer_key)

        lean.local_dealer = weak_local_dealer
    elif role == "dealer":  # the gateway's streams under the same weak key
        from petlab.mpc import dealer

        bulk = dealer._petlab_bulk

        @functools.wraps(bulk)
        def petlab_bulk(self, plan):
            if not hasattr(self, "_petlab_sources"):
                gateway, wallet = (lean.derive_key(key=k, purpose=lean.PROTOCOL_PURPOSE) for k in self.petlab_pair_keys)
                self._petlab_sources = [lean.StreamSource(key=_weakened(gateway)), lean.StreamSource(key=wallet)]
            return bulk(self, plan)

        dealer._petlab_bulk = petlab_bulk  # dealer_server_class() builds the dealer from it


# -- reused-mask, partial-mask-reuse ----------------------------------------------------------

def _reusing_fm_left(*, at) -> None:
    """Every second feature-matrix product opens ``w[at]`` under the previous step's mask
    ``B[at]`` (the other words under this step's), and ``(B_prev - B)[at]`` beside it, so
    that the run stays correct."""
    import petlab.mpc.lean as lean

    fm_left = lean.LeanParty.fm_left

    @functools.wraps(fm_left)
    def reusing_fm_left(self, E_rows, w):
        state = self.__dict__.setdefault("_reused_mask", {"B": None})
        real_open = self.open
        first = [True]

        def open_once(*xs):
            if not first[0] or len(xs) != 1:
                return real_open(*xs)
            first[0] = False
            (masked,) = xs
            B = w - masked  # this party's share of the step's mask
            previous = state["B"]
            if previous is None or previous.shape != B.shape:
                state["B"] = B
                return real_open(masked)
            state["B"] = None  # every second step: w[at] under the previous step's mask
            reused = masked.copy()
            reused[at] = (w - previous)[at]
            opened, gap = real_open(reused, np.ascontiguousarray((previous - B)[at]))
            opened = opened.copy()
            opened[at] += gap
            return [opened]

        self.open = open_once
        try:
            return fm_left(self, E_rows, w)
        finally:
            del self.open

    lean.LeanParty.fm_left = reusing_fm_left


def _reused_mask(*, role: str, provider: str) -> None:
    if role != "dealer":
        _reusing_fm_left(at=slice(None))


def _partial_mask_reuse(*, role: str, provider: str) -> None:
    if role != "dealer":
        _reusing_fm_left(at=[-1])


# -- sign-in-clear -----------------------------------------------------------------------------

def _sign_in_clear(*, role: str, provider: str) -> None:
    import petlab.mpc.lean as lean

    if role == "dealer":
        return

    @functools.wraps(lean.LeanParty._ltz)
    def signing_ltz(self, x, riders=()):
        msb, ridden = self.carry_msb(x, riders)
        rb, _ = self.rand.take("dabit", x.shape)  # taken, unused: both parties' streams stay in step
        e = self.open_bit(msb, np.zeros_like(rb))  # x < 0, for every value, in the clear
        return self.public(e.astype(np.int64)), ridden

    lean.LeanParty._ltz = signing_ltz


# -- one-word-leak -----------------------------------------------------------------------------

def _one_word_leak(*, role: str, provider: str) -> None:
    import petlab.mpc.lean as lean

    if role == "dealer":
        return
    sgd = lean._sgd

    @functools.wraps(sgd)
    def leaking_sgd(party, params, grads, *, lr, batch):
        party.open(np.ascontiguousarray(grads[-1]))  # the bias gradient: sum over the batch of p - y
        return sgd(party, params, grads, lr=lr, batch=batch)

    lean._sgd = leaking_sgd


# -- undeclared-all-reduce ----------------------------------------------------------------------

def _undeclared_all_reduce(*, role: str, provider: str) -> None:
    import petlab.mpc.lean as lean

    if role == "dealer":
        return

    def decrypting(train):
        @functools.wraps(train)
        def wrapped(*, party, y, **kwargs):
            labels = y.numpy() if hasattr(y, "numpy") else np.asarray(y)
            party.open(np.ascontiguousarray(labels))  # both parties: the labels in the clear
            return train(party=party, y=y, **kwargs)

        return wrapped

    lean.train_logreg = decrypting(lean.train_logreg)
    lean.train_mlp = decrypting(lean.train_mlp)


# -- gateway-holds-wallet-mask -------------------------------------------------------------------

def _gateway_holds_wallet_mask(*, role: str, provider: str) -> None:
    import torch
    import torch.distributed as dist
    from crypten.mpc.provider import ttp_provider

    wallet_rank = 1
    if role == "dealer":
        server_setup = ttp_provider.TTPServer._setup_generators

        @functools.wraps(server_setup)
        def setup(self):
            server_setup(self)
            gateway_key = self.petlab_pair_keys[0]
            dist.send(torch.frombuffer(bytearray(gateway_key), dtype=torch.uint8), dst=wallet_rank,
                      group=self.ttp_group)
            self.petlab_pair_keys = [gateway_key, gateway_key]  # both parties' protocol streams

        ttp_provider.TTPServer._setup_generators = setup
    elif role == "wallet":
        client_cls = ttp_provider.TTPClient._TTPClient__TTPClient
        client_setup = client_cls._setup_generators

        @functools.wraps(client_setup)
        def setup(self):
            import crypten.communicator as comm

            client_setup(self)
            key = torch.zeros(32, dtype=torch.uint8)
            dist.recv(key, src=comm.get().get_ttp_rank(), group=self.ttp_group)
            self.petlab_pair_key = bytes(key.numpy().tobytes())  # the wallet's protocol key: the gateway's

        client_cls._setup_generators = setup


_APPLY = {"weak-key": _weak_key, "reused-mask": _reused_mask, "undeclared-all-reduce": _undeclared_all_reduce,
          "gateway-holds-wallet-mask": _gateway_holds_wallet_mask, "sign-in-clear": _sign_in_clear,
          "one-word-leak": _one_word_leak, "partial-mask-reuse": _partial_mask_reuse}
