"""The audit playing one party against the other, with only that party's keys and view.

petlab's protocol masks the feature matrix once: ``E = X - A`` is opened to both parties,
``A = A_0 + A_1``, and party ``p``'s share ``A_p`` is the first stream it reads under its
protocol key (:mod:`petlab.mpc.lean`). Whoever also learns the other party's share
decodes ``X``. Two attacks try to:

* :func:`reconstruct_from_keys` replays what a party held (:mod:`petlab.audit.keys`):
  ``E`` plus its view of ``A`` (under TFP the gateway dealt ``A``: that succeeds, as the
  trust model says), then ``E + A_p`` plus every stream it could read under every key it
  held, as it is and derived under every purpose it or petlab uses, up to the highest
  stream number it read. Scored against the truth (the other party's features of the
  first minibatch).
* :func:`key_search` searches a small, public key space for the other party's protocol
  key: keys made from a 16-bit seed (two ways), from the run's public seeds and from its
  configuration digest, as they are and derived under the protocol's purposes. A key
  whose stream 0, taken as the other party's share, makes the first words of
  ``E + A_p + candidate`` plausible fixed-point data (every one below 2^40; a wrong key
  does so with probability 2^(-23 * 16)) is a hit.

>>> seeded_key(7) == seeded_key(7) != seeded_key(8)
True
"""

from __future__ import annotations

import functools
import hashlib
import hmac

import numpy as np

from petlab.audit.checks import PRECISION_BITS, CheckResult, is_small

__all__ = ["KNOWN_PURPOSES", "SEED_BITS", "seeded_key", "reconstruct_from_keys", "key_search",
           "candidate_keys"]

#: Every HKDF purpose petlab derives keys for (a party's own record adds what it used).
KNOWN_PURPOSES = ("protocol/correlated-randomness", "protocol/tfp-wallet-streams", "crypten/ttp",
                  "crypten/przs/0->1", "crypten/przs/1->0", "crypten/global-public", "handshake/commitments")
SEED_BITS = 16  # the small seed space searched: 0 .. 2^16 - 1
SEARCH_WORDS = 16  # words of stream 0 tried per candidate key
_SEED_LABEL = b"petlab/seeded-key/"


def seeded_key(seed: int) -> bytes:
    """A 256-bit key with only the entropy of ``seed``: SHA-256 of a label and the seed.
    What a generator seeded from a small number gives (the weak-key negative control
    makes the gateway's protocol key this way); :func:`key_search` tries all 2^16."""
    return hashlib.sha256(_SEED_LABEL + int(seed).to_bytes(8, "big")).digest()


def _stream_words(key: bytes, n: int, number: int = 0) -> np.ndarray:
    """The first ``n`` words of :class:`petlab.mpc.secret_random.SecretStream` ``number``
    under ``key``: its AES-256-CTR counter blocks (the stream number, then the block
    count, big-endian) encrypted directly, without the stream object's overhead (the key
    search makes hundreds of thousands).

    >>> from petlab.mpc.secret_random import SecretStream
    >>> bool((_stream_words(bytes(32), 5, 3) == SecretStream(key=bytes(32), number=3).take((5,))).all())
    True
    """
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    raw = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(_counter_blocks(number, -(-n // 2)))
    return np.frombuffer(raw, dtype=np.int64)[:n].copy()


@functools.lru_cache(maxsize=64)
def _counter_blocks(number: int, blocks: int) -> bytes:
    return b"".join(int(number).to_bytes(8, "big") + i.to_bytes(8, "big") for i in range(blocks))


def _derive(key: bytes, purpose: str) -> bytes:
    """:func:`petlab.mpc.secret_random.derive_key` (HKDF-SHA256, no salt, one block) by
    ``hmac``, a few times faster for the search.

    >>> from petlab.mpc.secret_random import derive_key
    >>> _derive(bytes(range(32)), "p") == derive_key(key=bytes(range(32)), purpose="p")
    True
    """
    prk = hmac.new(bytes(32), key, hashlib.sha256).digest()
    return hmac.new(prk, b"petlab/v1/" + purpose.encode() + b"\x01", hashlib.sha256).digest()


def candidate_keys(*, public_seeds=(), config_digest: str = "") -> list[tuple[str, bytes]]:
    """The searched key space, as (how it was made, key) pairs: every 16-bit seed (see
    :func:`_seed_candidates`), then the run's own public values."""
    return _seed_candidates() + _public_candidates(tuple(public_seeds), config_digest)


@functools.lru_cache(maxsize=1)
def _seed_candidates() -> list[tuple[str, bytes]]:
    """Keys from every 16-bit seed: :func:`seeded_key`, the seed itself as the key, and
    :func:`seeded_key` derived under the protocol's purpose."""
    seeds = range(2**SEED_BITS)
    keys = [(f"seeded_key({s})", seeded_key(s)) for s in seeds]
    keys += [(f"seed {s} as the key", s.to_bytes(32, "big")) for s in seeds]
    keys += [(f"seeded_key({s}) under {KNOWN_PURPOSES[0]!r}", _derive(seeded_key(s), KNOWN_PURPOSES[0]))
             for s in seeds]
    return keys


def _public_candidates(public_seeds: tuple, config_digest: str) -> list[tuple[str, bytes]]:
    keys = [(f"seeded_key({s})", seeded_key(int(s) % 2**64)) for s in sorted(set(public_seeds))
            if not 0 <= int(s) < 2**SEED_BITS]  # the others are among the 16-bit seeds
    if config_digest:
        digest = bytes.fromhex(config_digest)
        keys += [("the config digest", digest), ("SHA-256 of the config digest", hashlib.sha256(digest).digest())]
    return keys + [(f"{how} under {purpose!r}", _derive(key, purpose)) for how, key in list(keys)
                   for purpose in KNOWN_PURPOSES[:2]]


@functools.lru_cache(maxsize=1)
def _seed_streams() -> np.ndarray:
    """Stream 0's first words under every 16-bit-seed candidate (made once per process)."""
    return _first_words([key for _, key in _seed_candidates()])


def _first_words(keys: list[bytes]) -> np.ndarray:
    out = np.empty((len(keys), SEARCH_WORDS), dtype=np.int64)
    for i, key in enumerate(keys):
        out[i] = _stream_words(key, SEARCH_WORDS)
    return out


def key_search(*, E: np.ndarray, own_share: np.ndarray, other: str, public_seeds=(),
               config_digest: str = "") -> CheckResult:
    """Search the small public key space for the other party's protocol key (see module).

    Args:
        E: the opened masked features (n, d); own_share: this party's share of the mask.
        other: the party whose key is searched (for the check's name).
        public_seeds: the run's public seeds (data and train); config_digest: its digest.
    """
    public = _public_candidates(tuple(public_seeds), config_digest)
    names = [how for how, _ in _seed_candidates()] + [how for how, _ in public]
    streams = np.concatenate([_seed_streams(), _first_words([key for _, key in public])])
    target = (E.ravel()[:SEARCH_WORDS] + own_share.ravel()[:SEARCH_WORDS]).astype(np.int64)
    n = min(SEARCH_WORDS, target.size)
    hits = np.flatnonzero(is_small(target[None, :n] + streams[:, :n]).all(axis=1))
    return CheckResult(
        name=f"no key of the {other} found in a small public key space", passed=hits.size == 0,
        statistic=float(hits.size), threshold="0 candidate keys that decode the mask",
        detail=f"{len(names):,} candidate keys (16-bit seeds two ways, public seeds, the config digest; as they are "
               f"and derived for the protocol), stream 0's first {n} words as the {other}'s share; "
               f"hits: {[names[i] for i in hits[:3]] or 'none'}",
    )


def reconstruct_from_keys(*, view: dict, keys: dict, rows: np.ndarray, columns: slice,
                          truth: np.ndarray, max_streams: int = 64) -> dict:
    """The best reconstruction of the other party's features a party can make from its
    view of the mask (``view``: ``E``, ``own_share``, ``a_view``) and the keys it held.

    Args:
        view: :func:`petlab.audit.keys.load_mask_view`; keys: :func:`petlab.audit.keys.load`.
        rows: the scored rows (the first minibatch); columns: the other party's columns.
        truth: the other party's features on those rows (the reviewer's ground truth).
        max_streams: most stream numbers replayed per key.

    Returns:
        ``recovered_fraction`` (values within 2^-15), ``max_abs_error``, ``correlation``,
        ``values``, ``attempts`` and ``best`` (the attempt that recovered most).
    """
    E, own = view["E"].astype(np.int64), view["own_share"].astype(np.int64)
    shape = E.shape
    held = [bytes.fromhex(k) for k in keys.get("keys", {})]
    purposes = sorted(set(keys.get("purposes", [])) | set(KNOWN_PURPOSES))
    streams = min(max_streams, 1 + max([int(v) for v in keys.get("streams", {}).values()] or [0]))
    attempts = [("E + its view of the mask", E + view["a_view"].astype(np.int64))]
    seen: set = set()
    for key in held:
        for how, variant in [("as it is", key)] + [(p, _derive(key, p)) for p in purposes]:
            if variant in seen:
                continue
            seen.add(variant)
            for number in range(streams):
                cand = _stream_words(variant, E.size, number).reshape(shape)
                attempts.append((f"E + own share + stream {number} of a held key ({how})", E + own + cand))
    scale = 2.0**PRECISION_BITS
    best = None
    for label, whole in attempts:
        guess = whole[rows][:, columns].astype(np.float64) / scale
        err = np.abs(guess - truth)
        recovered = float((err <= 2.0**-15).mean())
        if best is None or recovered > best[1]:
            best = (label, recovered, guess, err)
    label, recovered, guess, err = best
    r = float(np.corrcoef(guess.ravel(), truth.ravel())[0, 1]) if guess.std() > 0 and truth.std() > 0 else 0.0
    return {"recovered_fraction": recovered, "max_abs_error": float(err.max()), "correlation": r,
            "values": int(err.size), "attempts": len(attempts), "best": label, "reconstructed": guess}
