"""Two attacks on predictable masks, replayed with a reduced search window.

Each test runs the same protocol twice: once on the old seeding (kept here, and only
here, as the broken reference: numpy PCG64 streams seeded from torch's mt19937, whose
seed keeps 32 bits, with the dealer's per-party seeds drawn one after the other from
one generator), and once on petlab's generator (AES-256-CTR under keys from the OS or
agreed by X25519). The attack must recover the data on the first and nothing on the
second. The window is 2^12 seeds instead of 2^32 so that the search takes a second.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch
from test_lean import SCALE, _run, _SimParty, _Wire

from petlab.audit.attacks import KNOWN_PURPOSES
from petlab.mpc import lean
from petlab.mpc.secret_random import StreamSource, derive_key, fresh_key

WINDOW = 2**12  # the attacker's search space (2^32 for the real mt19937 seed)
N, D = 64, 5


class _OldStream:
    """The broken reference: lean's former stream (PCG64 seeded from a torch generator)."""

    def __init__(self, gen: torch.Generator):
        self.bits_source = np.random.PCG64(int(torch.randint(0, 2**62, (), generator=gen)))

    def take(self, shape):
        return self.bits_source.random_raw(int(np.prod(shape))).view(np.int64).reshape(tuple(shape))

    def bits(self, shape):
        return self.take(shape) & 1

    def matrix(self, shape):
        return self.take(shape)


class _OldSource:
    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)

    def next(self, *, bound_to=None):  # the old streams were bound to nothing
        return _OldStream(self.gen)


def _old_dealer_seeds(state: int) -> list[int]:
    """CrypTen 0.4.1's ``TTPServer._setup_generators``: both parties' seeds drawn one
    after the other from one torch generator (at state ``state``)."""
    g = torch.Generator().manual_seed(state)
    return [int(torch.randint(-(2**63), 2**63 - 1, (), generator=g)) for _ in range(2)]


def _features():
    X = np.random.default_rng(3).normal(size=(N, D))
    return X, np.round(X * SCALE).astype(np.int64)


def _decodes(candidate: np.ndarray, X: np.ndarray) -> float:
    """Share of values a guess of the fixed-point features gets right (to 1e-4)."""
    return float((np.abs(candidate / SCALE - X) < 1e-4).mean())


def _masked_features(sources, fetch_sources, X_enc):
    """Both parties' feature-mask shares (TTP: the dealer holds ``fetch_sources``), and E."""
    fixed: dict = {}
    r0 = lean.Randomness(rank=0, source=sources[0],
                         fetch=lambda plan: lean.deal(plan=plan, sources=fetch_sources, fixed=fixed))
    r1 = lean.Randomness(rank=1, source=sources[1], fetch=None)
    for r in (r0, r1):
        r.prepare([("fm_init", X_enc.shape, (0,), None)])
    return r0, r1, X_enc - r0.A - r1.A  # E = X - A, opened to both


def test_ttp_seed_search_recovers_the_features_on_the_old_seeding_only():
    X, X_enc = _features()
    # old: the dealer's state is a small number; the wallet knows its own seed
    state = secrets.randbelow(WINDOW)
    seeds = _old_dealer_seeds(state)
    _, wallet_rand, E = _masked_features([_OldSource(seeds[0]), _OldSource(seeds[1])],
                                         [_OldSource(seeds[0]), _OldSource(seeds[1])], X_enc)
    hits = [k for k in range(WINDOW) if _old_dealer_seeds(k)[1] == seeds[1]]
    assert hits, "the wallet's seed pins the dealer's state"
    gateway_A = _OldSource(_old_dealer_seeds(hits[0])[0]).next().matrix(X_enc.shape)
    assert _decodes(E + gateway_A + wallet_rand.A, X) == 1.0  # every feature, the gateway's too

    # petlab: each party's key agreed with the dealer alone; the wallet's key says nothing of the gateway's
    keys = [fresh_key(), fresh_key()]
    _, wallet_rand, E = _masked_features([StreamSource(key=k) for k in keys],
                                         [StreamSource(key=k) for k in keys], X_enc)
    wallet_seed = int.from_bytes(keys[1][:8], "big", signed=True)
    assert not [k for k in range(WINDOW) if _old_dealer_seeds(k)[1] == wallet_seed]
    # the best the wallet can do without the gateway's share: every stream of its own key, as
    # it is and under every purpose petlab derives keys for: nothing decodes
    guesses = [E + wallet_rand.A]
    for key in [keys[1]] + [derive_key(key=keys[1], purpose=p) for p in KNOWN_PURPOSES]:
        source = StreamSource(key=key)
        guesses += [E + wallet_rand.A + source.next().matrix(X_enc.shape) for _ in range(3)]
    assert max(_decodes(guess, X) for guess in guesses) < 0.01


class _RecordingWire(_Wire):
    """A wire that also keeps what the gateway sent in each exchange."""

    def __init__(self):
        super().__init__()
        self.gateway_sent = []

    def exchange(self, rank, tensors, xor):
        if rank == 0:
            self.gateway_sent.append([t.copy() for t in tensors])
        return super().exchange(rank, tensors, xor)


def _tfp_comparison(own_source, dealer_sources, wallet_source, X_enc):
    """Under TFP: the feature mask, then one comparison on the first column (whose round 0
    has the gateway's share of a zero input: it sends that triple share raw)."""
    fixed: dict = {}
    fetch = (lambda plan: lean.deal(plan=plan, sources=dealer_sources, fixed=fixed))
    rands = [lean.Randomness(rank=0, source=own_source, fetch=fetch),
             lean.Randomness(rank=1, source=wallet_source, fetch=None)]
    for r in rands:
        r.prepare([("fm_init", X_enc.shape, (0,), None)])
    E = X_enc - rands[0].A - rands[1].A
    wire = _RecordingWire()
    parties = [_SimParty(rank=r, rand=rands[r], wire=wire) for r in (0, 1)]
    z = [X_enc[:, :1] - rands[1].A[:, :1], rands[1].A[:, :1]]  # any shares of a secret column

    def compare(party, rank):
        party.rand.prepare(lean._ltz_plan(z[rank].shape))
        return party.ltz(z[rank])

    _run(parties, compare)
    return E, rands[1].A, np.concatenate([t.ravel() for t in wire.gateway_sent[0]])


def _round0_oracle(round0: np.ndarray, words_per_stream: int = 4096) -> int | None:
    """The wallet's search: a gateway seed whose second stream (the comparison's, after
    the feature mask's) contains words the gateway sent in round 0."""
    sent = set(round0.tolist())
    for k in range(WINDOW):
        source = _OldSource(k)
        source.next()
        if sent.intersection(source.next().take((words_per_stream,)).tolist()):
            return k
    return None


def test_tfp_round0_oracle_recovers_the_gateway_features_on_the_old_seeding_only():
    X, X_enc = _features()
    own = secrets.randbelow(WINDOW)
    wallet_seed = secrets.randbelow(2**62)  # the wallet's stream seed: the wallet knows it under TFP
    E, wallet_A, round0 = _tfp_comparison(_OldSource(own), [_OldSource(own), _OldSource(wallet_seed)],
                                          _OldSource(wallet_seed), X_enc)
    found = _round0_oracle(round0)
    assert found == own
    gateway_A = _OldSource(found).next().matrix(X_enc.shape)
    assert _decodes(E + gateway_A + wallet_A, X) == 1.0

    own_key, wallet_key = fresh_key(), fresh_key()
    E, wallet_A, round0 = _tfp_comparison(StreamSource(key=own_key),
                                          [StreamSource(key=own_key), StreamSource(key=wallet_key)],
                                          StreamSource(key=wallet_key), X_enc)
    assert _round0_oracle(round0) is None
    assert _decodes(E + wallet_A, X) < 0.01
    # the raw words are AES-CTR output: none of them is a word of the wallet's own streams either
    wallet_words = set(StreamSource(key=wallet_key).next().take((4096,)).tolist())
    assert not wallet_words.intersection(round0.tolist())
