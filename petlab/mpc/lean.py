"""petlab's own two-party protocol for training logistic regression and the one-hidden-
layer MLP of :mod:`petlab.models` on CrypTen shares.

CrypTen's operators are general, and on a 2-core machine their Python bookkeeping costs
more than the arithmetic (a CrypTen Beaver product of 1,024 numbers: ~3 ms, of which
~0.6 ms is the opening). This module runs the same training step directly on the
parties' additive shares (``MPCTensor.share``, int64 ring elements with CrypTen's fixed-
point scale), with the same algorithms and constants as CrypTen's operators:

- **products**: Beaver triples; the opened differences go through CrypTen's
  communicator, or, where petlab's direct link is installed, through the link's numpy
  path on the communicator (``petlab_open``): either way CrypTen's counters and petlab's
  privacy audit see every word;
- **fixed-mask feature triples**: the feature matrix never changes, so it is masked
  once by a random matrix ``A`` and ``E = X - A`` is opened once (``A`` uniform on the
  ring: ``E`` is uniform and independent of ``X``). Each product ``X_b @ w`` then uses a
  triple ``(A_b, B, A_b @ B)`` with a fresh ``B``, and only ``w - B`` is opened (as in
  SecureML, Mohassel & Zhang 2017). ``A`` is never reused to mask anything else;
- **sigmoid**, two methods (:class:`Sigmoid`):

  - ``reciprocal``, CrypTen's: sign by a comparison (each share as a binary sharing,
    the carry into bit 63 by a packed carry tree: 7 AND rounds on 2.97 words per value,
    then the bit back to arithmetic with a random shared bit), ``exp`` by the limit
    ``(1 + x/2^9)^(2^9)``, reciprocal by
    Newton-Raphson from 0.75 (3 iterations), as CrypTen's ``sigmoid`` sets them (and,
    as CrypTen's, within ~3e-3 while ``|z| < 2^9``); 42 rounds a step; the default;
  - ``piecewise``, petlab's: ``z`` compared with -10, 0 and 10 in one comparison (the
    same tree on three times the words), a degree-8 polynomial on each of
    ``[-10, 0)`` and ``[0, 10)`` (Chebyshev fits; the powers of the scaled ``z`` and
    their truncations travel in the comparison's seven messages), 0 and 1 outside; the
    pieces are selected by one product with the comparison bits. Within 4e-4 of the
    sigmoid for every ``z``, with no limit on ``|z|`` (``tests/test_lean.py``); 15 rounds
    a step, but more opened words than ``reciprocal`` (three comparisons per value, and
    the powers);
- **the loss monitor** (:func:`monitor_loss`): the per-epoch cross-entropy on the
  monitored rows, ``softplus(z) - y z`` per row, ``softplus`` by the piecewise sigmoid's
  machinery with pieces fitted to it (within 3e-4); only the sum over the rows is opened,
  by the caller's declared reveal, to the label holder (the logits and per-row losses stay
  shared). Its cost against training's, and against CrypTen's operators doing the same,
  is measured in ``BENCHMARKS.md`` (``petlab bench --sections startup``);
- **the MLP's ReLU** (:func:`_mlp_step`): the comparison's bit is opened only under a
  random shared bit, which makes every product with it one opening of the other factor;
- **truncation** (:meth:`LeanParty.trunc`): by a pair the dealer makes (shares of a
  uniform ``r``, of ``r >> k`` and of ``r``'s top bit), one opening of ``x + 2^62 + r``:
  ``floor(x / 2^k)`` or one more, exactly, for every ``|x| < 2^62`` (the derivation is
  in the method's docstring). Not local truncation (each party shifting its own share,
  CrypTen's method for 2 parties), which is off by about ``2^(64 - k)`` with probability
  about ``|x| / 2^63`` per value. A truncation costs a round of its own, except where it
  rides in a message sent anyway (the sigmoid's ``z / 2^9``, the piecewise sigmoid's
  powers: in the comparison's messages; independent truncations share one message);
- **numpy, not torch**, for the arithmetic on shares: on a batch's arrays the cost is
  the per-operation overhead, and numpy's is a third of torch's;
- **correlated randomness in bulk**: every triple a chunk of batches needs is made in
  one go: under TTP by the dealer in one request (:mod:`petlab.mpc.dealer`: it answers
  only the protocol's requests, from the streams under the key it agreed with each
  party), under TFP by the gateway itself (CrypTen's TFP trust model: party 0 knows
  every triple).

A party's secret streams (:mod:`petlab.mpc.secret_random`: AES-256-CTR under a key
agreed by X25519 with whoever deals, never sent) are read in the same order by it and
by whoever deals,
so only party 0's corrections travel. A step is 42 rounds (``reciprocal``) or 15
(``piecewise``), over petlab's direct link: it carries sum- and XOR-openings in one
message (CrypTen's gloo path needs two messages for those: 43 and 22 rounds). Each is
counted per operation by :func:`step_cost`; a run's training traffic equals that count
exactly (``tests/test_mpc.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch

from petlab.config import SIGMOID_METHODS
from petlab.mpc.secret_random import SecretStream, StreamSource, derive_key

__all__ = ["plan_binding", "Sigmoid", "Randomness", "LeanParty", "batch_plan", "mlp_batch_plan", "deal", "train_logreg", "train_mlp",
           "ttp_fetch", "local_dealer", "sgd_constant", "step_cost", "mlp_step_cost",
           "train_bytes", "loss_plan", "monitor_loss"]

#: HKDF purpose of the protocol's correlated randomness under a key agreed with the dealer
PROTOCOL_PURPOSE = "protocol/correlated-randomness"
#: HKDF purpose of the wallet's streams under TFP, under the key the two parties agreed
TFP_WALLET_PURPOSE = "protocol/tfp-wallet-streams"
AND_LEVELS = 6  # levels of the carry tree over 64-bit words (blocks of 1, 2, 4, ... 32 bits combine)
PACK = 1 << (AND_LEVELS - 1)  # values per word at the last level: a comparison pads its values to a multiple
LOW63 = np.int64(2**63 - 1)  # bits 0..62
EXP_ITERATIONS = 9  # CrypTen's sigmoid: exp_iterations 9
NR_ITERATIONS = 3  # CrypTen's sigmoid: reciprocal_nr_iters 3
NR_INITIAL = 0.75  # CrypTen's sigmoid: reciprocal_initial 0.75
PIECE_BREAKS = (-10.0, 0.0, 10.0)  # piecewise sigmoid: 0 below the first, 1 above the last
PIECE_DEGREE = 8
TRUNC_HEADROOM = 62  # truncation's one assumption: |x| < 2^62 for the ring value x it divides


@dataclasses.dataclass(frozen=True)
class Sigmoid:
    """How the protocol computes the sigmoid (public parameters of a run)."""

    method: str = "reciprocal"
    exp_iterations: int = EXP_ITERATIONS  # reciprocal method only
    nr_iterations: int = NR_ITERATIONS  # reciprocal method only

    def __post_init__(self):
        if self.method not in SIGMOID_METHODS:
            raise ValueError(f"sigmoid method must be one of {SIGMOID_METHODS}, got {self.method!r}")


def _power_levels(degree: int) -> list[list[tuple[int, int]]]:
    """Products that make ``u^2 .. u^degree`` from ``u``, level by level (each level one
    round; a square where one will do).

    >>> _power_levels(8)
    [[(1, 1)], [(1, 2), (2, 2)], [(2, 3), (3, 3), (3, 4), (4, 4)]]
    """
    have, levels = {1}, []
    while len(have) < degree:
        level = []
        for k in range(2, degree + 1):
            if k in have:
                continue
            pairs = [(i, k - i) for i in sorted(have) if k - i in have and i <= k - i]
            if pairs:
                level.append(next((q for q in pairs if q[0] == q[1]), pairs[-1]))
        have |= {i + j for i, j in level}
        levels.append(level)
    return levels


POWER_LEVELS = _power_levels(PIECE_DEGREE)


def _piece_segments(function) -> list[tuple[float, float, np.ndarray]]:
    """Per segment between the inner breaks: centre, half-width and the monomial
    coefficients of a degree-``PIECE_DEGREE`` Chebyshev fit of ``function`` in
    ``u = (z - centre) / half-width`` (public constants, the same in every party)."""
    from numpy.polynomial import chebyshev

    out = []
    for lo, hi in zip(PIECE_BREAKS[:-1], PIECE_BREAKS[1:]):
        centre, half = (lo + hi) / 2, (hi - lo) / 2
        u = np.cos(np.linspace(0, np.pi, 2001))
        fit = chebyshev.chebfit(u, function(centre + half * u), PIECE_DEGREE)
        out.append((centre, half, chebyshev.cheb2poly(fit)))
    return out


#: The piecewise sigmoid's pieces (within 4e-4 of the sigmoid on [-10, 10]).
PIECE_SEGMENTS = _piece_segments(lambda z: 1 / (1 + np.exp(-z)))
#: The loss monitor's pieces of ``softplus(z) = log(1 + e^z)``, the cross-entropy of a
#: logit ``z`` for label 0 (within 3e-4 on [-10, 10]; outside, 0 and ``z`` are within 5e-5).
SOFTPLUS_SEGMENTS = _piece_segments(lambda z: np.logaddexp(0.0, z))


def _idx(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype=np.int64)


def _numel(shape) -> int:
    return math.prod(shape)


# Each party's randomness is a :class:`petlab.mpc.secret_random.StreamSource` under a key
# it shares only with whoever deals: every ``prepare``/``deal`` call reads the source's next
# stream (AES-256-CTR), the party and the dealer in the same order.

# -- what one batch needs, in the order the step consumes it --------------------------

def _and_words(n: int) -> list[int]:
    """Words of each AND round of a comparison of ``n`` values: round 0 on every value's
    word, then the carry tree's levels, each on half the words of the one before.

    >>> _and_words(1024), _and_words(1000)[0]
    ([1024, 1024, 512, 256, 128, 64, 32], 1024)
    """
    padded = -(-n // PACK) * PACK
    return [padded] + [padded >> level for level in range(AND_LEVELS)]


def _trunc_item(shape, bits: int) -> tuple:
    """The plan item of one truncation by ``bits`` (:meth:`LeanParty.trunc`) of values of
    ``shape``: party 1's shares come from its stream; the dealer's correction holds party
    0's shares of ``r >> bits`` and of ``r``'s top bit, 2 words a value.

    >>> _trunc_item((3, 1), 16)
    ('trunc', (3, 1), (2, 3, 1), 16)
    """
    if not 0 < bits <= TRUNC_HEADROOM:
        raise ValueError(f"a truncation shifts by 1 to {TRUNC_HEADROOM} bits, not {bits}")
    return ("trunc", tuple(shape), (2,) + tuple(shape), int(bits))


def _ltz_plan(b: tuple, extra_rounds=()) -> list[tuple]:
    """Randomness of :meth:`LeanParty.ltz` on words of shape ``b``; ``extra_rounds[r]``
    are the plan items of what rides along in round ``r`` of the comparison."""
    rounds = _and_words(_numel(b))
    if len(extra_rounds) > len(rounds):
        raise ValueError(f"{len(extra_rounds)} rounds of riders on a comparison of {len(rounds)} rounds")
    plan: list[tuple] = []
    for r, words in enumerate(rounds):  # round 0: x0 & x1; then the tree's levels
        plan.append(("and", (words,), (words,), None))
        if r < len(extra_rounds):
            plan.extend(extra_rounds[r])
    plan.append(("dabit", b, b, None))  # the sign bit back to arithmetic
    return plan


def _power_rides(shape: tuple, bits: int) -> list[list[tuple]]:
    """What the piecewise sigmoid's powers need, round by round of its comparison: ``u``
    truncated in round 0, then each level of ``POWER_LEVELS`` as products in one round and
    their truncations in the next."""
    rides = [[_trunc_item(shape, bits)]]
    for level in POWER_LEVELS:
        rides.append([("square" if i == j else "mul", shape, shape, None) for i, j in level])
        rides.append([_trunc_item(shape, bits)] * len(level))
    return rides


def sigmoid_plan(*, n: int, bits: int, sigmoid: Sigmoid = Sigmoid()) -> list[tuple]:
    """The randomness :meth:`LeanParty.sigmoid` needs on ``n`` values at ``bits``
    fractional bits, in order.

    >>> plan = sigmoid_plan(n=4, bits=16)
    >>> len(plan), sum(r[0] == "trunc" for r in plan), plan[1]
    (38, 15, ('trunc', (4, 1), (2, 4, 1), 9))
    """
    b = (n, 1)
    if sigmoid.method == "piecewise":
        powers = (n * len(PIECE_SEGMENTS), 1)
        words = (n * len(PIECE_BREAKS), 1)
        return (_ltz_plan(words, _power_rides(powers, bits))
                + [_trunc_item(powers, bits), ("mul", words, words, None)])  # the polynomials; the selection
    plan = _ltz_plan(b, [[_trunc_item(b, sigmoid.exp_iterations)]])  # z / 2^k, in the comparison's first round
    plan.append(("mul", b, b, None))  # |z| / 2^k = z / 2^k * sign
    plan.extend([("square", b, b, None), _trunc_item(b, bits)] * sigmoid.exp_iterations)
    plan.append(_trunc_item(b, bits))  # the first Newton step (its estimate is public)
    for _ in range(sigmoid.nr_iterations - 1):
        plan.extend([("square", b, b, None), _trunc_item(b, bits), ("mul", b, b, None), _trunc_item(b, bits)])
    plan.append(("mul", b, b, None))  # where(sign)
    return plan


def batch_plan(*, rows: np.ndarray, d: int, bits: int, sigmoid: Sigmoid = Sigmoid()) -> list[tuple]:
    """The correlated randomness one training step on ``rows`` needs, in order, at
    ``bits`` fractional bits.

    Each item is ``(kind, shape, derived shape, extra)``; ``extra`` is the row indices as
    bytes (fixed-mask items), the shift (truncations) or None.

    >>> plan = batch_plan(rows=np.arange(4), d=3, bits=16)
    >>> [r[0] for r in plan][:3], len(plan), sum(r[0] == "and" for r in plan), sum(r[0] == "trunc" for r in plan)
    (['fm_left', 'trunc', 'and'], 44, 7, 19)
    >>> plan = batch_plan(rows=np.arange(4), d=3, bits=16, sigmoid=Sigmoid("piecewise"))
    >>> len(plan), sum(r[0] == "and" for r in plan), plan[2][1], plan[3][1]
    (31, 7, (32,), (8, 1))
    """
    b = (len(rows), 1)
    idx = np.asarray(rows, dtype=np.int64).tobytes()
    return ([("fm_left", (d, 1), b, idx), _trunc_item(b, bits)]  # X_b @ w
            + sigmoid_plan(n=len(rows), bits=bits, sigmoid=sigmoid)
            + [("fm_right", b, (d, 1), idx), _trunc_item((d, 1), bits)]  # X_b^T @ delta
            + [_trunc_item((d, 1), bits), _trunc_item((1,), bits)])  # the SGD update of w and b


def _mid_size(B: int, h: int) -> int:
    return 4 * B * h + B + h


def mlp_batch_plan(*, rows: np.ndarray, d: int, hidden: int, bits: int, sigmoid: Sigmoid = Sigmoid()) -> list[tuple]:
    """The correlated randomness one MLP training step on ``rows`` needs, in order:
    ``X_b @ W1`` (fixed mask) and its truncation, the ReLU's and the output layer's masks
    and products (``mlp_mid``), the ReLU's comparison, the output layer's truncation, the
    sigmoid, the truncations of ``dz1`` and of ``w2``'s gradient, ``X_b^T @ dz1`` (fixed
    mask) and its truncation, the SGD update's truncations (``W1``, ``b1``, ``w2``, ``b2``).

    >>> plan = mlp_batch_plan(rows=np.arange(4), d=3, hidden=2, bits=16)
    >>> [r[0] for r in plan][:4], plan[2][2], len(plan), sum(r[0] == "trunc" for r in plan)
    (['fm_left', 'trunc', 'mlp_mid', 'and'], (38,), 57, 24)
    """
    B, h = len(rows), hidden
    idx = np.asarray(rows, dtype=np.int64).tobytes()
    return ([("fm_left", (d, h), (B, h), idx), _trunc_item((B, h), bits),
             ("mlp_mid", (B, h), (_mid_size(B, h),), None)]
            + [("and", (words,), (words,), None) for words in _and_words(B * h)]
            + [_trunc_item((B, 1), bits)]  # hidden @ w2
            + sigmoid_plan(n=B, bits=bits, sigmoid=sigmoid)
            + [_trunc_item((B, h), bits), _trunc_item((h, 1), bits)]  # dz1, hidden^T @ delta
            + [("fm_right", (B, h), (d, h), idx), _trunc_item((d, h), bits)]
            + [_trunc_item(shape, bits) for shape in ((d, h), (h,), (h, 1), (1,))])  # the SGD update


def _mid_draw(stream: SecretStream, full: tuple) -> list[np.ndarray]:
    """One party's shares of an ``mlp_mid`` item's masks, ``full = (m, B, h)``: the ReLU's
    random bit ``r`` (XOR shares), then additive masks of ``z1``, of the hidden layer
    (``A``), of ``w2`` (``B1``), of the ReLU-masked ``w2`` (``Q``) and of ``delta`` (``B2``)."""
    m, B, h = full
    return [stream.bits(full), stream.take(full), stream.take(full), stream.take((m, h, 1)), stream.take(full),
            stream.take((m, B, 1))]


def _mid_products(r, a1, A, B1, Q, B2) -> np.ndarray:
    """An ``mlp_mid`` item's derived values (whole, ``(m, ...)`` each), flat per item:
    ``r`` as an arithmetic 0/1, ``r*a1``, ``r*B1^T``, ``B2*Q``, ``A@B1``, ``A^T@B2``."""
    m = r.shape[0]
    parts = [r, r * a1, r * np.swapaxes(B1, 1, 2), B2 * Q, A @ B1, np.swapaxes(A, 1, 2) @ B2]
    return np.concatenate([x.reshape(m, -1) for x in parts], axis=1)


def _mid_split(flat: np.ndarray, B: int, h: int) -> list[np.ndarray]:
    """One item's derived values (as :func:`_mid_products` lays them out), unflattened."""
    cuts = np.cumsum([B * h] * 4 + [B, h])
    r, r_a1, r_B1, B2_Q, A_B1, At_B2, _ = np.split(flat, cuts)
    return [x.reshape(B, h) for x in (r, r_a1, r_B1, B2_Q)] + [A_B1.reshape(B, 1), At_B2.reshape(h, 1)]


# -- the dealer: turns every party's random draws into party 0's corrections ----------

def _groups(plan: list[tuple]) -> dict:
    """Plan items of the same kind and shapes, in order of first appearance: each group
    is drawn and dealt as one tensor (a chunk of steps costs a few dozen tensor
    operations, not thousands). ``(kind, shape, out_shape, shift) -> [(position, extra),
    ...]``, ``shift`` a truncation's (None for the other kinds).

    >>> list(_groups([_trunc_item((2,), 16), ("mul", (2,), (2,), None), _trunc_item((2,), 9),
    ...               _trunc_item((2,), 16)]).values())
    [[(0, 16), (3, 16)], [(1, None)], [(2, 9)]]
    """
    groups: dict = {}
    for pos, (kind, shape, out_shape, idx) in enumerate(plan):
        if kind == "fm_init":
            if len(plan) != 1:
                raise ValueError("the feature mask (fm_init) is prepared on its own")
            continue
        if kind not in ("mul", "and", "square", "dabit", "trunc", "fm_left", "fm_right", "mlp_mid"):
            raise ValueError(f"unknown randomness request {kind!r}")
        key = (kind, tuple(shape), tuple(out_shape), idx if kind == "trunc" else None)
        groups.setdefault(key, []).append((pos, idx))
    return groups


def _rows(members) -> np.ndarray:
    return np.stack([_idx(idx) for _, idx in members])


def _fm_product(kind: str, A_rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return A_rows @ mask if kind == "fm_left" else np.swapaxes(A_rows, 1, 2) @ mask


def plan_binding(plan: list[tuple]) -> bytes | None:
    """What a request's streams are bound to: the plan itself, canonically encoded (each
    party computes its own plan from public values, so a dealer asked for another plan
    reads streams the party never uses: party 0 cannot make it hand out party 1's words
    in other roles). The feature mask's request is the first stream and unbound: its
    shape is public and it derives nothing party 0 receives.

    >>> plan_binding([("fm_init", (4, 3), (0,), None)]) is None
    True
    >>> plan_binding([("mul", (2,), (2,), None)]) != plan_binding([("mul", (3,), (3,), None)])
    True
    """
    if plan and plan[0][0] == "fm_init":
        return None
    return repr([(str(kind), tuple(int(v) for v in shape), tuple(int(v) for v in out), extra)
                 for kind, shape, out, extra in plan]).encode()


def deal(*, plan: list[tuple], sources: list[StreamSource], fixed: dict) -> torch.Tensor:
    """Party 0's shares of every derived value in ``plan``, flat, group by group.

    ``sources[p]`` is party ``p``'s stream source (the dealer holds the key it agreed
    with ``p``); ``fixed["A"]`` keeps the feature mask (made by
    an ``("fm_init", shape, (0,), None)`` plan of its own, which derives nothing). Each
    stream is read in the same order as :meth:`Randomness.prepare` reads it. The result
    is a torch tensor (it travels through CrypTen's TTP channel); the work is numpy's.
    """
    bound = plan_binding(plan)
    s0, s1 = sources[0].next(bound_to=bound), sources[1].next(bound_to=bound)
    if plan and plan[0][0] == "fm_init":
        shape = plan[0][1]
        A = np.empty(tuple(shape), dtype=np.int64)
        for i in range(0, shape[0], 65536):  # block by block: never three (n, d) matrices at once
            rows = (min(65536, shape[0] - i),) + tuple(shape[1:])
            A[i: i + rows[0]] = s0.take(rows) + s1.take(rows)
        fixed["A"] = A
        return torch.empty(0, dtype=torch.long)
    out = []
    for (kind, shape, out_shape, shift), members in _groups(plan).items():
        full, derived = (len(members),) + shape, (len(members),) + out_shape
        if kind in ("mul", "and"):
            a = (s0.take(full), s1.take(full))
            b = (s0.take(full), s1.take(full))
            if kind == "mul":
                out.append((a[0] + a[1]) * (b[0] + b[1]) - s1.take(derived))
            else:
                out.append(((a[0] ^ a[1]) & (b[0] ^ b[1])) ^ s1.take(derived))
        elif kind == "square":
            r = s0.take(full) + s1.take(full)
            out.append(r * r - s1.take(derived))
        elif kind == "dabit":
            bit = s0.bits(full) ^ s1.bits(full)
            out.append(bit - s1.take(derived))
        elif kind == "trunc":  # r from both streams; its high part r >> shift and its top bit
            r = (s0.take(full) + s1.take(full)).view(np.uint64)
            parts = np.stack([r >> np.uint64(shift), r >> np.uint64(63)], axis=1).view(np.int64)
            out.append(parts - s1.take(derived))
        elif kind == "mlp_mid":
            mine, peer = _mid_draw(s0, full), _mid_draw(s1, full)
            whole = [mine[0] ^ peer[0]] + [x + y for x, y in zip(mine[1:], peer[1:])]
            out.append(_mid_products(*whole) - s1.take(derived))
        else:  # fm_left, fm_right
            mask = s0.take(full) + s1.take(full)
            out.append(_fm_product(kind, fixed["A"][_rows(members)], mask) - s1.take(derived))
    return torch.from_numpy(np.concatenate([c.reshape(-1) for c in out])) if out else torch.empty(0, dtype=torch.long)


class Randomness:
    """This party's side of the correlated randomness: draws its own shares from its
    stream, and (party 0) takes the corrections from the dealer, in plan order."""

    def __init__(self, *, rank: int, source: StreamSource, fetch):
        self.rank, self.source, self.fetch = rank, source, fetch  # fetch(plan) -> flat corrections (rank 0)
        self.ready: list = []
        self.pending = None  # the plan requested ahead from the dealer, not yet collected
        self.A = None

    def prepare(self, plan: list[tuple], *, upcoming: list[tuple] | None = None) -> None:
        """Make everything ``plan`` needs; party 0 asks the dealer once for all of it.

        ``upcoming``: the plan of the next call, requested now (where the dealer takes
        requests ahead, under TTP) so that the dealer makes it while this party works;
        the next call must then be ``prepare(upcoming)``."""
        flat = None
        if self.rank == 0:
            ahead = hasattr(self.fetch, "request")
            if self.pending is not None and self.pending is not plan \
                    and plan_binding(self.pending) != plan_binding(plan):  # what the streams are bound to
                raise RuntimeError("correlated randomness out of step: a different plan was requested ahead")
            if self.pending is None:
                flat = self.fetch(plan)
            else:
                flat, self.pending = self.fetch.collect(), None
            flat = flat.numpy()
            if upcoming is not None and ahead:
                self.fetch.request(upcoming)
                self.pending = upcoming
        mine = self.source.next(bound_to=plan_binding(plan))
        if plan and plan[0][0] == "fm_init":
            _groups(plan)  # checks it is alone
            self.A = mine.matrix(plan[0][1])  # this party's share of the feature mask, kept all run
            return
        at = 0

        def derived(shape):
            nonlocal at
            if self.rank != 0:
                return mine.take(shape)
            n = _numel(shape)
            if at + n > flat.size:
                raise RuntimeError(f"the dealer sent {flat.size} words, fewer than the plan needs")
            value = flat[at: at + n].reshape(tuple(shape))
            at += n
            return value

        slots: list = [None] * len(plan)
        for (kind, shape, out_shape, shift), members in _groups(plan).items():
            full, out = (len(members),) + shape, (len(members),) + out_shape
            if kind in ("mul", "and"):
                a, b = mine.take(full), mine.take(full)
                values = [(a[j], b[j]) for j in range(len(members))]
            elif kind == "square":
                r = mine.take(full)
                values = [(r[j],) for j in range(len(members))]
            elif kind == "dabit":
                rb = mine.bits(full)
                values = [(rb[j],) for j in range(len(members))]
            elif kind == "trunc":
                r = mine.take(full)
                values = [(r[j],) for j in range(len(members))]
            elif kind == "mlp_mid":
                drawn = _mid_draw(mine, full)
                values = [tuple(x[j] for x in drawn) for j in range(len(members))]
            else:  # fm_left, fm_right
                mask = mine.take(full)
                A_rows = self.A[_rows(members)]
                values = [(A_rows[j], mask[j]) for j in range(len(members))]
            c = derived(out)
            for j, (pos, _) in enumerate(members):
                slots[pos] = (kind, shape, shift, values[j] + (c[j],))
        if self.rank == 0 and at != flat.size:
            raise RuntimeError(f"the dealer sent {flat.size} words for a plan that needs {at}")
        self.ready = slots[::-1]  # take() pops from the end

    def take(self, kind: str, shape, shift: int | None = None) -> tuple:
        """The next prepared item, which must be of ``kind`` and ``shape`` (and, for a
        truncation, ``shift``): this party's shares of its values, in plan order."""
        got_kind, got_shape, got_shift, values = self.ready.pop()
        if got_kind != kind or tuple(got_shape) != tuple(shape) or got_shift != shift:
            wanted, prepared = (f"{k} {tuple(s)}" + (f" >> {t}" if t is not None else "")
                                for k, s, t in ((kind, shape, shift), (got_kind, got_shape, got_shift)))
            raise RuntimeError(f"correlated randomness out of step: wanted {wanted}, prepared {prepared}")
        return values


# -- the protocol on raw shares --------------------------------------------------------

def _int64(bits: int) -> np.int64:
    """A 64-bit pattern as a signed word."""
    return np.int64(bits - (1 << 64) if bits >> 63 else bits)


_HEADROOM_OFFSET = np.int64(1 << TRUNC_HEADROOM)  # party 0 adds it before a truncation's opening


def _trunc_share(*, opened: np.ndarray, high: np.ndarray, top: np.ndarray, bits: int, rank: int) -> np.ndarray:
    """One party's share of a truncation's result (:meth:`LeanParty.trunc`, step 5) from
    the opened ``c = x + 2^62 + r`` and its shares of ``r >> bits`` (``high``) and of
    ``r``'s top bit (``top``): ``(1 - c_msb) 2^(64 - bits) top - high``, and party 0
    adds ``(c >> bits) - 2^(62 - bits)`` (unsigned shifts; int64 words wrap mod 2^64).

    >>> x, r = -7 * 2**20 - 5, np.array([2**64 - 3], dtype=np.uint64).view(np.int64)  # r's top bit 1
    >>> c = np.array([x + 2**62], dtype=np.int64) + r
    >>> shares = [_trunc_share(opened=c, high=h, top=t, bits=16, rank=p)
    ...           for p, h, t in ((0, np.array([2**48 - 1]), np.array([1])), (1, np.array([0]), np.array([0])))]
    >>> int((shares[0] + shares[1])[0]) - x // 2**16  # floor(x / 2^16), or (here) one above
    1
    """
    not_top = (opened >= 0).astype(np.int64)  # 1 - c_msb
    y = ((not_top * top) << (64 - bits)) - high
    if rank == 0:
        y += (opened.view(np.uint64) >> np.uint64(bits)).view(np.int64) - np.int64(1 << (TRUNC_HEADROOM - bits))
    return y


@functools.cache
def _tree_masks(s: int):
    """Constants of the carry tree's level joining blocks of ``s`` bits: the upper
    blocks' tops, the lower blocks' tops, both, and for packing ``s`` values per word
    the shifts and the masks of the shifted bits (``(s, 1)`` arrays)."""
    top = sum(1 << i for i in range(2 * s - 1, 64, 2 * s))
    used = top | top >> s
    return (_int64(top), _int64(top >> s), _int64(used), np.arange(s, dtype=np.int64).reshape(s, 1),
            np.array([_int64(used >> k) for k in range(s)], dtype=np.int64).reshape(s, 1))


def _pack(x: np.ndarray, shifts: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``s`` values' bits in one word: the ``k``-th group of values shifted down by ``k``
    (masked: numpy's right shift of int64 copies the sign bit).

    >>> top, low, used, shifts, masks = _tree_masks(2)
    >>> x = np.array([used, used], dtype=np.int64)
    >>> bool(_pack(x, shifts, masks)[0] == -1), np.array_equal(_unpack(_pack(x, shifts, masks), shifts, used), x)
    (True, True)
    """
    if len(shifts) == 1:
        return x
    return np.bitwise_or.reduce((x.reshape(len(shifts), -1) >> shifts) & masks, axis=0)


def _unpack(w: np.ndarray, shifts: np.ndarray, used) -> np.ndarray:
    if len(shifts) == 1:
        return w
    return ((w[None, :] << shifts) & used).reshape(-1)


def _to_numpy(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.int64)


@dataclasses.dataclass
class LeanParty:
    """Operations on this party's additive shares (int64 numpy arrays, fixed point at
    ``scale``, a power of two). numpy, not torch: on arrays of a batch's size the work is
    the per-operation overhead, and numpy's is a third of torch's (measured here: an
    ``int64`` sum of 1,024 words 4.9 vs 15.6 us). Openings go through the direct link's
    ``petlab_open`` where it is installed, else through CrypTen's communicator as torch
    tensors that share the arrays' memory."""

    rank: int
    scale: int
    rand: Randomness
    sigmoid_spec: Sigmoid = Sigmoid()

    def __post_init__(self):
        if self.scale < 2 or self.scale & (self.scale - 1):
            raise ValueError(f"the fixed-point scale must be a power of two, not {self.scale}")
        self.bits = self.scale.bit_length() - 1

    def _all_reduce(self, xs, ops: list[str]) -> list[np.ndarray]:
        """Open ``xs`` (``ops``: ``"sum"`` or ``"xor"`` each) in one message: straight over
        petlab's direct link when it is installed, else through CrypTen's communicator
        (torch tensors sharing the arrays' memory; one message per kind of reduction)."""
        import crypten.communicator as comm

        communicator = comm.get()
        if getattr(communicator, "petlab_open", None) is not None:
            return communicator.petlab_open(list(xs), ops)
        from torch.distributed import ReduceOp

        out = [None] * len(xs)
        for kind, op in (("xor", ReduceOp.BXOR), ("sum", ReduceOp.SUM)):
            at = [i for i, k in enumerate(ops) if k == kind]
            if at:
                opened = communicator.all_reduce([torch.from_numpy(np.ascontiguousarray(xs[i])) for i in at],
                                                 op=op, batched=True)
                for i, t in zip(at, opened):
                    out[i] = t.numpy()
        return out

    def open(self, *xs: np.ndarray) -> list[np.ndarray]:
        return self._all_reduce(xs, ["sum"] * len(xs))

    def open_xor(self, *xs: np.ndarray) -> list[np.ndarray]:
        return self._all_reduce(xs, ["xor"] * len(xs))

    def open_mixed(self, xor: list[np.ndarray], add: list[np.ndarray]) -> tuple[list, list]:
        """Open XOR-shared and additively shared words together: one message over
        petlab's direct link, one message each through CrypTen's gloo path."""
        out = self._all_reduce(list(xor) + list(add), ["xor"] * len(xor) + ["sum"] * len(add))
        return out[: len(xor)], out[len(xor):]

    def public(self, value: np.ndarray) -> np.ndarray:
        """A public ring value as this party's share (party 0 holds it)."""
        return value if self.rank == 0 else np.zeros_like(value)

    def constant(self, like: np.ndarray, value: float) -> np.ndarray:
        """This party's share of the public fixed-point constant ``value``."""
        return self.public(np.full_like(like, round(value * self.scale)))

    def _stage_trunc(self, x: np.ndarray, bits: int | None = None):
        """A truncation staged: this party's share of ``c = x + 2^62 + r`` to open, and
        the function that makes its share of the result from the opened ``c``."""
        k = self.bits if bits is None else bits
        r, (high, top) = self.rand.take("trunc", x.shape, k)
        masked = x + r
        if self.rank == 0:
            masked += _HEADROOM_OFFSET

        def finish(c):
            return _trunc_share(opened=c, high=high, top=top, bits=k, rank=self.rank)
        return [masked], finish

    def trunc(self, x: np.ndarray, *, bits: int | None = None) -> np.ndarray:
        """Shares of ``floor(x / 2^k) + e``, ``e`` in {0, 1}, ``k = bits`` (default the
        fixed-point bits): one opening, with a pair the dealer made. Exact up to that one
        unit, under one assumption: ``|x| < 2^62`` as a signed ring value (the ring holds
        values up to 2^63, but beyond 2^62 this truncation fails by about ``2^(64 - k)``).
        For a product at scale ``2^(2f)`` that means a real value below ``2^(62 - 2f)``
        (about 1.07e9 at f = 16; the configuration refuses f > 20). The reciprocal sigmoid's
        ``exp`` (CrypTen's method, accurate only for ``|z| < 2^9``) leaves that range for
        ``|z|`` above about 1,000; the piecewise sigmoid has no such limit. Nothing else can
        go wrong.

        Local truncation (each party shifts its own share, CrypTen's 2-party method,
        SecureML's) is off by about ``2^(64 - k)`` whenever the shares' sum wraps the
        ring in the wrong place, with probability about ``|x| / 2^63`` per value: over
        10^4 steps of thousands of truncations, a silently wrecked weight becomes likely.
        Here, with ``l = 64`` and ``x`` in ``(-2^62, 2^62)``:

        1. Party 0 adds ``2^62``: ``x' = x + 2^62`` lies in ``[0, 2^63)`` as an unsigned
           64-bit integer (top bit 0).
        2. The dealer makes, per value, a uniform ring element ``r`` (the sum of both
           parties' stream draws, as for every mask) and gives additive shares of
           ``r_h = r >> k`` (unsigned shift: an integer in ``[0, 2^(64 - k))``) and of
           ``r_msb``, ``r``'s top bit (0 or 1). Write ``r = r_h 2^k + r_l``.
        3. Both open ``c = x' + r mod 2^64``: uniform on the ring whatever ``x`` is (a
           one-time pad), one word per value each way. Write ``c = c_h 2^k + c_l``,
           ``c_msb`` its top bit.
        4. As integers ``x' + r = c + 2^64 w``, where ``w`` (the wrap) is 1 exactly when
           ``r_msb = 1`` and ``c_msb = 0``: if ``r < 2^63``, ``x' + r < 2^64``, no wrap;
           if ``r >= 2^63``, a wrap leaves ``c = x' + r - 2^64 < x' < 2^63`` (top bit
           0), no wrap leaves ``c >= r >= 2^63`` (top bit 1). So
           ``w = r_msb (1 - c_msb)``: linear in the shares of ``r_msb``, ``c`` being
           public.
        5. Then ``x' = c - r + 2^64 w = (c_h - r_h + 2^(64 - k) w) 2^k + (c_l - r_l)``
           with ``c_l - r_l`` in ``(-2^k, 2^k)``, so
           ``floor(x' / 2^k) = c_h - r_h + 2^(64 - k) w + floor((c_l - r_l) / 2^k)``,
           the last term -1 or 0. With ``floor(x' / 2^k) = floor(x / 2^k) + 2^(62 - k)``
           (``2^k`` divides ``2^62``), the shares of
           ``y = c_h - r_h + 2^(64 - k) w - 2^(62 - k)`` (party 0 adds the public
           ``c_h - 2^(62 - k)``; each adds its share of ``r_msb`` times the public
           ``(1 - c_msb) 2^(64 - k) mod 2^64`` and subtracts its share of ``r_h``) sum to
           ``floor(x / 2^k) + e``, ``e`` in {0, 1}, in the ring.

        Every step is exact: no event of any probability gives another result, so a run's
        failure probability is 0 (within any bound, 2^-40 included) while ``|x| < 2^62``.
        ``e`` is 1 exactly when the low parts carry (``c_l < r_l``), with probability
        ``(x mod 2^k) / 2^k`` over ``r``: the result is ``x / 2^k`` rounded at random,
        without bias.
        The dealer deals 2 words per value (party 0's shares of ``r_h`` and ``r_msb``).
        Values outside the assumption (the piecewise sigmoid's unused pieces, which may
        overflow) give some ring value, which the selection cancels exactly.

        >>> import threading
        >>> from petlab.mpc.secret_random import StreamSource, fresh_key
        >>> own, peer = fresh_key(), fresh_key()
        >>> source0, fetch, _ = local_dealer(own_key=own, peer_key=peer)
        >>> sources = [source0, StreamSource(key=peer)]
        >>> x = np.array([5 * 2**32, -(2**61), 2**61 - 1, 3, -3])  # at the assumption's edge, too
        >>> x0 = np.where(x >= 0, -(2**63), 2**63 - 1)  # shares whose sum wraps the ring
        >>> shares = [x0, x - x0]
        >>> local = (shares[0] >> 16) + (shares[1] >> 16)  # each party shifts its own share
        >>> bool(np.all(np.abs(local - (x >> 16)) >= 2**47))
        True
        >>> inbox, gate = [None, None], threading.Barrier(2)
        >>> class Wired(LeanParty):
        ...     def _all_reduce(self, xs, ops):
        ...         inbox[self.rank] = xs; gate.wait(); out = [a + b for a, b in zip(*inbox)]; gate.wait()
        ...         return out
        >>> parties = [Wired(rank=p, scale=2**16, rand=Randomness(rank=p, source=sources[p], fetch=fetch if p == 0
        ...            else None)) for p in (0, 1)]
        >>> out = [None, None]
        >>> def work(p):
        ...     parties[p].rand.prepare([_trunc_item(x.shape, 16)])
        ...     out[p] = parties[p].trunc(shares[p])
        >>> threads = [threading.Thread(target=work, args=(p,)) for p in (0, 1)]
        >>> for t in threads: t.start()
        >>> for t in threads: t.join()
        >>> bool(np.all(np.abs(out[0] + out[1] - (x >> 16)) <= 1))
        True
        """
        masked, finish = self._stage_trunc(x, bits)
        return finish(*self.open(*masked))

    def trunc_together(self, xs: list[np.ndarray], *, bits: int | None = None) -> list[np.ndarray]:
        """:meth:`trunc` of independent values, opened in one message (plan order: ``xs``'s)."""
        staged = [self._stage_trunc(x, bits) for x in xs]
        opened = self.open(*(masked[0] for masked, _ in staged))
        return [finish(c) for (_, finish), c in zip(staged, opened)]

    # a product is staged: its masked inputs (to open), then its result from the openings
    def _stage(self, kind: str, x, y=None):
        """A product (``kind`` "mul") or square staged; its result is at twice the scale."""
        if kind == "square":
            r, r2 = self.rand.take("square", x.shape)

            def finish_square(e):
                z = r2 + ((e * r) << 1)
                if self.rank == 0:
                    z += e * e
                return z
            return [x - r], finish_square
        a, b, c = self.rand.take("mul", x.shape)

        def finish(e, d):
            z = c + e * b + a * d
            if self.rank == 0:
                z += e * d
            return z
        return [x - a, y - b], finish

    def mul(self, x, y, *, truncate=True):
        """Shares of ``x * y``: one opening, and (``truncate``) a truncation, one more."""
        masked, finish = self._stage("mul", x, y)
        z = finish(*self.open(*masked))
        return self.trunc(z) if truncate else z

    def square(self, x):
        """Shares of ``x * x``, truncated: two openings."""
        masked, finish = self._stage("square", x)
        return self.trunc(finish(*self.open(*masked)))

    def and_(self, pairs: list[tuple], ride=None) -> tuple[list[np.ndarray], list]:
        """Bitwise AND of XOR-shared words, all pairs in one round. ``ride``: a function
        called once the ANDs' triples are taken, returning staged operations (``(masked
        values, finish)``, as :meth:`_stage` and :meth:`_stage_trunc` make them) whose
        masked values are opened, as sums, in the same message. Returns the ANDs and the
        staged operations' results."""
        triples = [self.rand.take("and", x.shape) for x, _ in pairs]
        staged = ride() if ride is not None else []
        xor_in = [t for (x, y), (a, b, _) in zip(pairs, triples) for t in (x ^ a, y ^ b)]
        opened, opened_add = self.open_mixed(xor_in, [t for masked, _ in staged for t in masked])
        out = []
        for i, (a, b, c) in enumerate(triples):
            e, d = opened[2 * i], opened[2 * i + 1]
            z = c ^ (e & b)
            z ^= a & d
            if self.rank == 0:
                z ^= e & d
            out.append(z)
        results, at = [], 0
        for masked, finish in staged:
            results.append(finish(*opened_add[at: at + len(masked)]))
            at += len(masked)
        return out, results

    def carry_msb(self, x: np.ndarray, riders=()) -> tuple[np.ndarray, list]:
        """XOR shares of ``x < 0`` (bit 0 of each word), and the results of ``riders``.

        The sign bit of ``x0 + x1`` is bit 63 of ``x0`` xor bit 63 of ``x1`` xor the carry
        out of bits 0..62. The carry comes from a tree of (generate, propagate) blocks:
        level ``j`` joins blocks of ``2^j`` bits in pairs. Both ANDs a join needs share one
        word (the upper block's propagate bit is copied down next to the lower block's
        top), and since a level's blocks use half the bits of the one before, level ``j``
        packs ``2^j`` values into each word: 2.97 words of ANDs per value instead of 12 for
        a full carry-lookahead adder, in the same 7 rounds.

        ``riders[r]``: a function returning staged operations whose openings ride in round
        ``r``'s message (see :meth:`and_`); it is called when round ``r`` starts, so it
        may use the results of the rounds before. Returns their results, in order."""
        shape, n = x.shape, x.size
        words = _and_words(n)
        if len(riders) > len(words):
            raise ValueError(f"{len(riders)} rounds of riders on a comparison of {len(words)} rounds")
        flat = np.zeros(words[0], dtype=np.int64)
        flat[:n] = x.reshape(-1)
        zero = np.zeros_like(flat)
        u, v = (flat, zero) if self.rank == 0 else (zero, flat)  # each share, as a binary sharing
        ridden: list = []

        def round_(r, pair):
            (out,), results = self.and_([pair], ride=riders[r] if r < len(riders) else None)
            ridden.extend(results)
            return out

        # bit 63 only passes the carry on (generate 0, propagate 1): the tree's carry out of
        # all 64 bits is then the carry into bit 63
        G = round_(0, (u & LOW63, v & LOW63))
        P = (u ^ v) & LOW63
        if self.rank == 0:
            P |= ~LOW63
        for level in range(AND_LEVELS):
            s = 1 << level
            top, low, used, shifts, masks = _tree_masks(s)
            upper = P & top
            left = upper | ((upper >> s) & low)  # P[t] at t, and a copy at t - s
            right = ((G << s) & top) | (P & low)  # G[t - s] at t, P[t - s] at t - s
            both = _unpack(round_(level + 1, (_pack(left, shifts, masks), _pack(right, shifts, masks))), shifts, used)
            G = (G ^ both) & top  # G[t] ^ P[t] G[t - s]
            P = (both & low) << s  # P[t] P[t - s]
        return (((u ^ v) ^ G) >> 63 & 1)[:n].reshape(shape), ridden

    def open_bit(self, bit: np.ndarray, rb: np.ndarray) -> np.ndarray:
        """Open ``bit ^ rb`` (XOR shares of one bit each, ``rb`` a random shared bit): a
        uniform public bit, in a message of its own (the audit checks 1-bit openings as
        bits)."""
        (e,) = self.open_xor(bit ^ rb)
        return e

    def _ltz(self, x: np.ndarray, riders=()) -> tuple[np.ndarray, list]:
        msb, ridden = self.carry_msb(x, riders)
        rb, ra = self.rand.take("dabit", x.shape)
        e = self.open_bit(msb, rb)
        out = ra - 2 * e * ra
        if self.rank == 0:
            out += e
        return out, ridden

    def ltz(self, x: np.ndarray) -> np.ndarray:
        """Arithmetic shares (integer, not scaled) of ``x < 0``: :meth:`carry_msb`, then
        the bit back to arithmetic with a random shared bit (a daBit)."""
        return self._ltz(x)[0]

    def _exp_squarings(self, base: np.ndarray) -> np.ndarray:
        for _ in range(self.sigmoid_spec.exp_iterations):
            base = self.square(base)
        return base

    def exp(self, x):
        """CrypTen's limit approximation: ``(1 + x / 2^k)`` squared ``k`` times."""
        k = self.sigmoid_spec.exp_iterations
        return self._exp_squarings(self.trunc(x, bits=k) + self.constant(x, 1.0))

    def reciprocal(self, x):
        """Newton-Raphson for 1/x (x > 0) from a public first estimate."""
        y0 = NR_INITIAL
        # first iteration: y = 2*y0 - y0^2 * x, one truncation since y0 is public
        y = self.constant(x, 2 * y0) - self.trunc(x * round(y0 * y0 * self.scale))
        for _ in range(self.sigmoid_spec.nr_iterations - 1):
            y = 2 * y - self.mul(self.square(y), x)
        return y

    def sigmoid(self, z):
        """The sigmoid (:class:`Sigmoid`'s method). ``reciprocal``: CrypTen's arithmetic,
        ``1 / (1 + exp(-|z|))`` selected by the sign, except that ``z / 2^k`` (the exp's
        first step) is truncated before it is multiplied by the sign, in the comparison's
        first message instead of a round of its own (the same value up to the
        truncation's one unit)."""
        if self.sigmoid_spec.method == "piecewise":
            return self.sigmoid_piecewise(z)
        k = self.sigmoid_spec.exp_iterations
        ltz, (z_k,) = self._ltz(z, [lambda: [self._stage_trunc(z, k)]])  # integer 0/1 shares; z / 2^k
        sign = self.public(np.ones_like(z)) - 2 * ltz
        pos = self.mul(z_k, sign, truncate=False)  # |z| / 2^k
        denominator = self._exp_squarings(self.constant(z, 1.0) - pos) + self.constant(z, 1.0)
        pos_out = self.reciprocal(denominator)
        # where(1 - ltz, 1 - pos_out) = pos_out + ltz - 2 * pos_out * ltz
        return pos_out + ltz * self.scale - 2 * self.mul(pos_out, ltz, truncate=False)

    def _piece_coefficients(self, n: int, segments=PIECE_SEGMENTS) -> list[np.ndarray]:
        """Column ``k``: the segments' ``x^k`` coefficients, each repeated ``n`` times."""
        cache = self.__dict__.setdefault("_coef_cache", {})
        key = (n, id(segments))
        if key not in cache:
            cache[key] = [np.repeat(np.array([round(m[k] * self.scale) for _, _, m in segments], dtype=np.int64), n)
                          .reshape(-1, 1) for k in range(PIECE_DEGREE + 1)]
        return cache[key]

    def _power_riders(self, u_raw: np.ndarray, powers: dict) -> list:
        """The riders (:meth:`carry_msb`) that make ``powers[1..PIECE_DEGREE]`` from
        ``u_raw`` (``u`` at twice the scale), as :func:`_power_rides` plans them."""
        raw: dict = {}

        def into(store, key, staged):
            masked, finish = staged
            return masked, lambda *opened: store.__setitem__(key, finish(*opened))

        riders = [lambda: [into(powers, 1, self._stage_trunc(u_raw))]]
        for level in POWER_LEVELS:
            riders.append(lambda level=level: [
                into(raw, i + j, self._stage("square", powers[i]) if i == j else
                     self._stage("mul", powers[i], powers[j])) for i, j in level])
            riders.append(lambda level=level: [into(powers, i + j, self._stage_trunc(raw[i + j])) for i, j in level])
        return riders

    def sigmoid_piecewise(self, z):
        """0 below -10, a degree-8 polynomial on [-10, 0) and on [0, 10), 1 from 10 on.

        The three comparisons share one adder run; the polynomials' powers are made in
        its rounds (``u`` truncated in the first, then each level of products in one and
        their truncations in the next). With ``L_k = [z < break_k]`` (0/1 shares) the
        pieces are picked by one product:
        ``s = 1 - L_0 P_left - L_1 (P_right - P_left) - L_2 (1 - P_right)`` (anything the
        unused pieces hold, even an overflow, cancels exactly in the ring).
        """
        return self._piecewise(z, segments=PIECE_SEGMENTS, top=self.constant(z, 1.0))

    def softplus(self, z):
        """``log(1 + e^z)``: 0 below -10, a degree-8 polynomial on [-10, 0) and on [0, 10),
        ``z`` from 10 on; the same rounds and randomness as :meth:`sigmoid_piecewise`
        (``sigmoid_plan(..., Sigmoid("piecewise"))``), with the softplus's pieces."""
        return self._piecewise(z, segments=SOFTPLUS_SEGMENTS, top=z)

    def _piecewise(self, z, *, segments, top):
        """0 below the first break, ``segments``' polynomials between the breaks, ``top``
        (shares of the same shape as ``z``) from the last break on."""
        n = z.shape[0]
        below = np.concatenate([z - self.constant(z, b) for b in PIECE_BREAKS])
        # u = (z - centre) / half-width per segment, in [-1, 1] on its own segment
        u_raw = np.concatenate([(z - self.constant(z, c)) * round(self.scale / h) for c, h, _ in segments])
        powers: dict = {}
        L, _ = self._ltz(below, self._power_riders(u_raw, powers))
        coef = self._piece_coefficients(n, segments)
        P = self.trunc(sum(powers[k] * coef[k] for k in range(1, PIECE_DEGREE + 1))) + self.public(coef[0])
        left, right = P[:n], P[n:]
        picked = self.mul(L, np.concatenate([left, right - left, top - right]), truncate=False)
        return top - picked[:n] - picked[n: 2 * n] - picked[2 * n:]

    def fm_left(self, E_rows: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Shares of ``X_b @ w`` from the opened ``E_b`` and a fixed-mask triple, truncated."""
        A_b, B, C = self.rand.take("fm_left", w.shape)
        (F,) = self.open(w - B)
        z = C + E_rows @ B + A_b @ F
        if self.rank == 0:
            z += E_rows @ F
        return self.trunc(z)

    def fm_right(self, E_rows: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Shares of ``X_b^T @ delta``, truncated."""
        A_b, B, C = self.rand.take("fm_right", delta.shape)
        (D,) = self.open(delta - B)
        z = C + E_rows.T @ B + A_b.T @ D
        if self.rank == 0:
            z += E_rows.T @ D
        return self.trunc(z)


def _step_planner(*, party: LeanParty, d: int, hidden: int | None = None):
    """``plan(rows)``: the randomness one training step on ``rows`` needs (logistic
    regression on ``d`` features, or with ``hidden`` the MLP)."""
    if hidden is None:
        return lambda rows: batch_plan(rows=rows, d=d, bits=party.bits, sigmoid=party.sigmoid_spec)
    return lambda rows: mlp_batch_plan(rows=rows, d=d, hidden=hidden, bits=party.bits, sigmoid=party.sigmoid_spec)


def train_logreg(*, party: LeanParty, E, y, w, b, batches, lr: float, chunk: int = 32,
                 on_batch=None, then: list[tuple] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Minibatch SGD on the shares: the arithmetic of :mod:`petlab.models` for logistic
    regression (summed BCE gradient, then ``p - lr/B * g``), batch by batch.

    ``E`` is the opened masked feature matrix, ``y`` (n, 1), ``w`` (d, 1), ``b`` (1,)
    this party's shares (torch tensors or numpy arrays); ``batches`` the row indices of
    every step (public). ``then``: the plan the caller prepares next (the loss
    monitor's), requested from the dealer during the last chunk.
    Returns the new shares of ``w`` and ``b`` as torch tensors.
    """
    E, y, w, b = (_to_numpy(t) for t in (E, y, w, b))
    d = E.shape[1]
    for index in _prepared_steps(party=party, batches=batches, chunk=chunk, then=then,
                                 plan=_step_planner(party=party, d=d)):
        E_b, y_b = E[index], y[index]
        delta = party.sigmoid(party.fm_left(E_b, w) + b) - y_b
        w, b = _sgd(party, [w, b], [party.fm_right(E_b, delta), delta.sum(0)], lr=lr, batch=len(index))
        if on_batch is not None:
            on_batch()
    return torch.from_numpy(w), torch.from_numpy(b)


def _prepared_steps(*, party: LeanParty, batches, chunk: int, plan, then: list[tuple] | None = None):
    """Each step's row indices, its chunk's randomness prepared first (``plan(rows)``:
    what one step needs); the next chunk's (after the last, ``then``) is requested at
    once, so that a dealer makes it during this chunk."""
    batches = list(batches)
    parts = [batches[start: start + chunk] for start in range(0, len(batches), chunk)]
    plans = [[item for rows in part for item in plan(rows)] for part in parts] + [then]
    for i, part in enumerate(parts):
        party.rand.prepare(plans[i], upcoming=plans[i + 1])
        for rows in part:
            yield np.asarray(rows, dtype=np.int64)


def sgd_constant(*, lr: float, batch: int, bits: int) -> int:
    """The public fixed-point constant ``round(lr / batch * 2^bits)`` by which the SGD
    update multiplies the summed gradients (:func:`petlab.config.validate` refuses a
    configuration where it is more than 1% off ``lr / batch * 2^bits``).

    >>> sgd_constant(lr=0.5, batch=1024, bits=16), sgd_constant(lr=0.5, batch=1024, bits=8)
    (32, 0)
    """
    return round(lr / batch * 2**bits)


def _sgd(party: LeanParty, params: list, grads: list, *, lr: float, batch: int) -> list:
    """``p - lr/B * g`` on shares (summed gradients; ``lr/B`` the public fixed-point
    constant :func:`sgd_constant`), every parameter's truncation in one message."""
    step = sgd_constant(lr=lr, batch=batch, bits=party.bits)
    return [p - s for p, s in zip(params, party.trunc_together([g * step for g in grads]))]


def _mlp_step(party: LeanParty, E_b: np.ndarray, y_b: np.ndarray, params: list, lr: float) -> list:
    """One SGD step of the MLP (``ReLU(X W1 + b1) w2 + b2``, sigmoid, summed BCE) on
    shares: the arithmetic of :func:`petlab.models.gradients`.

    The ReLU's bit ``g = [z1 > 0]`` is opened only as ``e = g ^ r`` (``r`` a random shared
    bit), so ``g * v = e*v + (1 - 2e) * (r*v)`` for any ``v``, and ``r*v`` needs only ``v``
    masked (the dealer gives ``r`` times the mask). That makes the hidden layer
    ``g * z1`` and ``M = g * w2^T`` (the ReLU's derivative times ``w2``, which the backward
    pass needs) with no round of their own: ``z1`` and ``w2`` travel masked in the
    comparison's first message. The hidden layer and ``M`` are then masked and opened
    once each; ``w2``'s and ``delta``'s masks serve every product they enter.
    """
    W1, b1, w2, b2 = params
    B, h = E_b.shape[0], W1.shape[1]
    z1 = party.fm_left(E_b, W1) + b1
    rb, a1, A, B1, Q, B2, derived = party.rand.take("mlp_mid", z1.shape)
    r, r_a1, r_B1, B2_Q, A_B1, At_B2 = _mid_split(derived, B, h)
    masked = [z1 - a1, w2 - B1]
    msb, [(Z, F)] = party.carry_msb(-z1, [lambda: [(masked, lambda *opened: opened)]])  # [-z1 < 0] = [z1 > 0]
    e = party.open_bit(msb, rb)
    flip = 1 - 2 * e
    hidden = e * z1 + flip * (Z * r + r_a1)  # g * z1, scaled (g is an integer 0/1)
    M = e * w2.T + flip * (F.T * r + r_B1)  # g * w2^T
    H, M_open = party.open(hidden - A, M - Q)
    z2 = A_B1 + H @ B1 + A @ F
    if party.rank == 0:
        z2 += H @ F
    delta = party.sigmoid(party.trunc(z2) + b2) - y_b
    (D,) = party.open(delta - B2)
    g_w2 = At_B2 + H.T @ B2 + A.T @ D
    dz1 = B2_Q + D * Q + B2 * M_open  # delta * M = (delta @ w2^T) * g
    if party.rank == 0:
        g_w2 += H.T @ D
        dz1 += D * M_open
    dz1, g_w2 = party.trunc_together([dz1, g_w2])  # independent: one message
    grads = [party.fm_right(E_b, dz1), dz1.sum(0), g_w2, delta.sum(0)]
    return _sgd(party, params, grads, lr=lr, batch=B)


def train_mlp(*, party: LeanParty, E, y, params: dict, batches, lr: float, chunk: int = 32,
              on_batch=None, then: list[tuple] | None = None) -> dict[str, torch.Tensor]:
    """Minibatch SGD of :mod:`petlab.models`' MLP on the shares, batch by batch.

    ``params``: this party's shares of ``W1`` (d, h), ``b1`` (h,), ``w2`` (h, 1), ``b2``
    (1,) (torch or numpy); ``then`` as for :func:`train_logreg`. Returns their new
    shares as torch tensors.
    """
    names = ("W1", "b1", "w2", "b2")
    E, y = _to_numpy(E), _to_numpy(y)
    values = [_to_numpy(params[k]) for k in names]
    d, h = values[0].shape
    if values[2].shape != (h, 1):
        raise ValueError(f"w2 must be ({h}, 1) (one output), got {values[2].shape}")
    for index in _prepared_steps(party=party, batches=batches, chunk=chunk, then=then,
                                 plan=_step_planner(party=party, d=d, hidden=h)):
        values = _mlp_step(party, E[index], y[index], values, lr)
        if on_batch is not None:
            on_batch()
    return {k: torch.from_numpy(v) for k, v in zip(names, values)}


# -- the loss monitor: the training loss on a fixed sample of rows, on shares ----------

def loss_plan(*, rows: np.ndarray, d: int, bits: int, hidden: int | None = None) -> list[tuple]:
    """The randomness :func:`monitor_loss` needs on ``rows`` (logistic regression, or with
    ``hidden`` the MLP), in order: the logit (fixed-mask product, truncated; for the MLP
    the hidden layer's product, ReLU and output product first), the softplus (the
    piecewise sigmoid's items), ``y * z``, and the final truncation of the sum.

    >>> plan = loss_plan(rows=np.arange(4), d=3, bits=16)
    >>> [r[0] for r in plan][:2], plan[-2:], len(plan)
    (['fm_left', 'trunc'], [('mul', (4, 1), (4, 1), None), ('trunc', (1,), (2, 1), 16)], 29)
    """
    m = len(rows)
    idx = np.asarray(rows, dtype=np.int64).tobytes()
    if hidden is None:
        logit = [("fm_left", (d, 1), (m, 1), idx), _trunc_item((m, 1), bits)]
    else:
        h = (m, hidden)
        logit = ([("fm_left", (d, hidden), h, idx), _trunc_item(h, bits)] + _ltz_plan(h)
                 + [("mul", h, h, None), ("mul", h, h, None), _trunc_item((m, 1), bits)])
    return (logit + sigmoid_plan(n=m, bits=bits, sigmoid=Sigmoid("piecewise"))
            + [("mul", (m, 1), (m, 1), None), _trunc_item((1,), bits)])


def monitor_loss(*, party: LeanParty, E, y, params: dict, rows: np.ndarray) -> torch.Tensor:
    """This party's share (shape (1,), at the fixed-point scale) of the summed cross-entropy
    of the model ``params`` (shares: ``w``, ``b`` or ``W1``, ``b1``, ``w2``, ``b2``) on the
    training ``rows``, after :meth:`Randomness.prepare` of :func:`loss_plan`.

    Per row the loss of a logit ``z`` and a label ``y`` is ``softplus(z) - y z``
    (``= -y log p - (1 - y) log(1 - p)`` for ``p = sigmoid(z)``), ``softplus`` by
    :meth:`LeanParty.softplus` (within 3e-4). Every opening is masked as in training;
    the sum itself stays secret: revealing it is the caller's declared disclosure.
    """
    E_m, y_m = _to_numpy(E)[rows], _to_numpy(y)[rows]
    p = {name: _to_numpy(value) for name, value in params.items()}
    if "w" in p:
        z = party.fm_left(E_m, p["w"]) + p["b"]
    else:
        z1 = party.fm_left(E_m, p["W1"]) + p["b1"]
        hidden = party.mul(party.ltz(-z1), z1, truncate=False)  # [z1 > 0] * z1: integer 0/1 times z1
        w2 = np.ascontiguousarray(np.broadcast_to(p["w2"].T, hidden.shape))
        z = party.trunc(party.mul(hidden, w2, truncate=False).sum(axis=1, keepdims=True)) + p["b2"]
    softplus = party.softplus(z)
    yz = party.mul(y_m, z, truncate=False)  # at twice the scale
    total = (softplus.sum(axis=0) << party.bits) - yz.sum(axis=0)  # (1,), at twice the scale
    return torch.from_numpy(party.trunc(total))


class _TTPFetch:
    """Party 0 under TTP: one request to the dealer for a whole plan, sent ahead of use.

    ``request`` sends the plan (CrypTen's TTP message: function name and arguments) and
    returns; ``collect`` receives the answer (its size, then the words), as CrypTen's
    ``TTPClient.ttp_request`` does in one call. In between the dealer works while this
    party trains; nothing else may talk to the dealer until the answer is collected.
    """

    def request(self, plan: list[tuple]) -> None:
        import crypten.communicator as comm
        from crypten.mpc.provider.ttp_provider import TTPClient

        message = {"function": "petlab_bulk", "device": None, "args": (plan,), "kwargs": {}}
        comm.get().send_obj(message, comm.get().get_ttp_rank(), TTPClient.get().ttp_group)

    def collect(self) -> torch.Tensor:
        import crypten.communicator as comm
        from crypten.mpc.provider.ttp_provider import TTPClient

        client, dealer = TTPClient.get(), comm.get().get_ttp_rank()
        result = torch.empty(comm.get().recv_obj(dealer, client.ttp_group), dtype=torch.long)
        comm.get().broadcast(result, dealer, client.comm_group)
        return result

    def __call__(self, plan: list[tuple]) -> torch.Tensor:
        self.request(plan)
        return self.collect()


ttp_fetch = _TTPFetch()


def local_dealer(*, own_key: bytes, peer_key: bytes):
    """Party 0 under TFP deals itself (CrypTen's TFP model): it holds both streams.

    ``own_key``: party 0's own key (fresh from the OS, never sent); ``peer_key``: the key
    of party 1's streams, which party 0 agreed with party 1. Returns party 0's own stream
    source, the fetch function, and the dealer's state (which holds the whole feature
    mask ``A``: under TFP party 0 knows it)."""
    sources = [StreamSource(key=own_key), StreamSource(key=peer_key)]
    fixed: dict = {}
    own = StreamSource(key=own_key)  # party 0's draws: the same streams, read separately
    return own, (lambda plan: deal(plan=plan, sources=sources, fixed=fixed)), fixed


def _trunc_cost(operation: str, n: int, rounds: int = 1) -> dict:
    """A truncation of ``n`` values (:meth:`LeanParty.trunc`): one word each way per
    value, 2 dealt."""
    return {"operation": operation, "opened": n, "rounds": rounds, "dealt": 2 * n}


def _sigmoid_cost(B: int, sigmoid: Sigmoid, merged: bool) -> list[dict]:
    """The sigmoid's share of :func:`step_cost` on ``B`` values."""
    if sigmoid.method == "piecewise":
        k, seg = len(PIECE_BREAKS), len(PIECE_SEGMENTS)
        products = [pair for level in POWER_LEVELS for pair in level]
        squares = sum(i == j for i, j in products)
        riding = 1 + 2 * len(POWER_LEVELS)  # rounds of the comparison that carry sums too
        return [
            {"operation": f"z against {k} breaks: comparison (7 AND rounds, packed carry tree)",
             "opened": 2 * sum(_and_words(k * B)), "rounds": 7, "dealt": sum(_and_words(k * B))},
            {"operation": f"u on {seg} segments truncated, then powers u^2..u^{PIECE_DEGREE} ({squares} squares, "
                          f"{len(products) - squares} products, each truncated in the next round; inside the "
                          "comparison's rounds)",
             "opened": seg * B * (1 + squares + 2 * (len(products) - squares) + len(products)),
             "rounds": 0 if merged else riding,
             "dealt": seg * B * (2 + len(products) + 2 * len(products))},
            {"operation": "comparison bits to arithmetic (daBits)", "opened": k * B, "rounds": 1, "dealt": k * B},
            _trunc_cost(f"polynomials on {seg} segments truncated", seg * B),
            {"operation": "select the pieces (one product)", "opened": 2 * k * B, "rounds": 1, "dealt": k * B},
        ]
    e, r = sigmoid.exp_iterations, sigmoid.nr_iterations
    return [
        {"operation": f"sign: comparison (7 AND rounds, packed carry tree); z / 2^{e} truncated in its first "
                      "message", "opened": 2 * sum(_and_words(B)) + B, "rounds": 7 if merged else 8,
         "dealt": sum(_and_words(B)) + 2 * B},
        {"operation": "sign: bit to arithmetic (daBit)", "opened": B, "rounds": 1, "dealt": B},
        {"operation": f"absolute value: z / 2^{e} * sign", "opened": 2 * B, "rounds": 1, "dealt": B},
        {"operation": f"exp: {e} squarings, each truncated", "opened": 2 * e * B, "rounds": 2 * e,
         "dealt": 3 * e * B},
        _trunc_cost("reciprocal: first Newton step (public estimate), truncated", B),
        {"operation": f"reciprocal: {r - 1} Newton steps (square, product, each truncated)",
         "opened": (r - 1) * 5 * B, "rounds": (r - 1) * 4, "dealt": (r - 1) * 6 * B},
        {"operation": "select by sign", "opened": 2 * B, "rounds": 1, "dealt": B},
    ]


def step_cost(*, batch: int, d: int, sigmoid: Sigmoid = Sigmoid(), merged: bool = True) -> list[dict]:
    """The communication of one training step, per operation, counted from the protocol.

    ``opened``: ring elements each party sends (and receives) per step; ``rounds``:
    sequential exchanges (``merged``: sum- and XOR-openings of one round share a message,
    as on petlab's direct link); ``dealt``: elements the dealer sends party 0 under TTP.

    >>> {r["operation"]: r["opened"] for r in step_cost(batch=4, d=3)}["X_b @ w (fixed mask)"]
    3
    >>> [sum(r["rounds"] for r in step_cost(batch=4, d=3, sigmoid=Sigmoid(s), merged=m))
    ...  for s, m in (("reciprocal", True), ("piecewise", True), ("piecewise", False))]
    [42, 15, 22]
    """
    B = batch
    return ([{"operation": "X_b @ w (fixed mask)", "opened": d, "rounds": 1, "dealt": B},
             _trunc_cost("X_b @ w truncated", B)]
            + _sigmoid_cost(B, sigmoid, merged)
            + [{"operation": "X_b^T @ delta (fixed mask)", "opened": B, "rounds": 1, "dealt": d},
               _trunc_cost("X_b^T @ delta truncated", d),
               _trunc_cost("SGD update: lr/B times the gradients of w and b truncated, one message", d + 1)])


def mlp_step_cost(*, batch: int, d: int, hidden: int, sigmoid: Sigmoid = Sigmoid(), merged: bool = True) -> list[dict]:
    """:func:`step_cost` for an MLP step (:func:`_mlp_step`), per operation.

    >>> [sum(r["rounds"] for r in mlp_step_cost(batch=4, d=3, hidden=2, sigmoid=Sigmoid(s), merged=m))
    ...  for s, m in (("reciprocal", True), ("piecewise", True), ("reciprocal", False))]
    [54, 27, 56]
    """
    B, h = batch, hidden
    return ([
        {"operation": "X_b @ W1 (fixed mask)", "opened": d * h, "rounds": 1, "dealt": B * h},
        _trunc_cost("X_b @ W1 truncated", B * h),
        {"operation": "ReLU: z1 > 0 (7 AND rounds, packed carry tree); z1 and w2 masked in its first message",
         "opened": 2 * sum(_and_words(B * h)) + B * h + h, "rounds": 7 if merged else 8,
         "dealt": sum(_and_words(B * h))},
        {"operation": "ReLU bit opened under a random bit (1-bit words); hidden = g*z1 and g*w2 locally",
         "opened": B * h, "rounds": 1, "dealt": _mid_size(B, h)},
        {"operation": "hidden layer and g*w2 masked", "opened": 2 * B * h, "rounds": 1, "dealt": 0},
        _trunc_cost("hidden @ w2 truncated", B),
    ] + _sigmoid_cost(B, sigmoid, merged) + [
        {"operation": "delta masked: hidden^T @ delta, delta * g*w2 locally", "opened": B, "rounds": 1, "dealt": 0},
        _trunc_cost("delta * g*w2 and hidden^T @ delta truncated, one message", B * h + h),
        {"operation": "X_b^T @ dz1 (fixed mask)", "opened": B * h, "rounds": 1, "dealt": d * h},
        _trunc_cost("X_b^T @ dz1 truncated", d * h),
        _trunc_cost("SGD update: lr/B times the gradients of W1, b1, w2, b2 truncated, one message",
                    d * h + h + h + 1),
    ])


def train_bytes(*, batches, d: int, provider: str, rank: int, chunk: int, sigmoid: Sigmoid = Sigmoid(),
                merged: bool = True, hidden: int | None = None) -> dict:
    """Bytes and rounds CrypTen's counters record for :func:`train_logreg` (or, with
    ``hidden``, :func:`train_mlp`) at party ``rank`` (8-byte elements, sent + received),
    from :func:`step_cost` (:func:`mlp_step_cost`) alone.

    Under TTP party 0 also receives the dealer's corrections (one request per ``chunk``
    of steps: a pickled request, the result's size, then the result).
    """
    costs = [step_cost(batch=len(rows), d=d, sigmoid=sigmoid, merged=merged) if hidden is None
             else mlp_step_cost(batch=len(rows), d=d, hidden=hidden, sigmoid=sigmoid, merged=merged)
             for rows in batches]
    opened = sum(r["opened"] for cost in costs for r in cost)
    out = {"bytes": 8 * 2 * opened, "rounds": sum(r["rounds"] for cost in costs for r in cost), "dealt_bytes": 0}
    if provider == "TTP" and rank == 0:
        out["dealt_bytes"] = 8 * sum(r["dealt"] for cost in costs for r in cost)
    return out
