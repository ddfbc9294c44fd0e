"""Secret randomness: where every secret random value of a petlab process comes from.

Every mask, triple, random bit, truncation pair and sharing of petlab's protocol and of
CrypTen's (through :mod:`petlab.crypten_compat`) is read from a :class:`SecretStream`:
AES-256 in counter mode (``cryptography``'s OpenSSL binding) under a 256-bit key that
is either drawn from the operating system (:func:`fresh_key`) or agreed with the one
peer that must share it (:class:`KeyExchange`: X25519, then HKDF-SHA256 bound to the
run's configuration digest, both roles and both public keys). Each purpose has its own
key (:func:`derive_key`), and each numbered stream under a key its own counter block,
so no two purposes or streams ever share keystream. Nothing secret is derived from a
public value, from another party's key, or from numpy's or torch's generators.

Public randomness is elsewhere, on purpose, and seeded so that runs are reproducible:
minibatch order and the monitored rows (:func:`petlab.mpc.party.minibatches`), synthetic
data and the train/test split (:mod:`petlab.data`), the initial weights
(:func:`petlab.models.init_params`). Those use numpy's or torch's generators, never this
module; nothing in them needs to stay secret.

>>> key = fresh_key()
>>> len(key), key != fresh_key()
(32, True)
>>> a, b = StreamSource(key=key), StreamSource(key=key)
>>> bool((a.next().take((4,)) == b.next().take((4,))).all())
True
>>> gw, wl = KeyExchange(), KeyExchange()
>>> ctx = binding(config_digest="ab" * 32, roles=("gateway", "wallet"), publics=(gw.public, wl.public))
>>> gw.agree(peer_public=wl.public, context=ctx) == wl.agree(peer_public=gw.public, context=ctx)
True
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["KEY_BYTES", "fresh_key", "derive_key", "binding", "KeyExchange", "SecretStream", "StreamSource",
           "keyed_commitment"]

KEY_BYTES = 32  # AES-256 keys, X25519 shared secrets, HKDF outputs
_CHUNK_WORDS = 1 << 17  # keystream made 1 MiB at a time
_ZEROS = bytes(8 * _CHUNK_WORDS)
_MAX_WORDS = 2**65  # 2^64 AES blocks of two words each per stream


def fresh_key() -> bytes:
    """A new 256-bit key from the operating system's generator (``secrets``)."""
    return secrets.token_bytes(KEY_BYTES)


def derive_key(*, key: bytes, purpose: str) -> bytes:
    """The key for one ``purpose`` under ``key`` (HKDF-SHA256, the purpose as its info).

    >>> k = fresh_key()
    >>> derive_key(key=k, purpose="a") != derive_key(key=k, purpose="b")
    True
    """
    _check_key(key)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=b"petlab/v1/" + purpose.encode()).derive(key)


def binding(*, config_digest: str, roles: tuple[str, str], publics: tuple[bytes, bytes]) -> bytes:
    """What an agreed key is bound to: this run's configuration digest, the two roles
    and their public keys, in role order (so a key agreed for one run, pair or exchange
    is useless for any other)."""
    if len(publics) != 2 or len(roles) != 2:
        raise ValueError("a binding names exactly two roles and their two public keys")
    parts = [b"petlab/v1/binding", config_digest.encode(), roles[0].encode(), publics[0], roles[1].encode(),
             publics[1]]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


class KeyExchange:
    """One side of an X25519 exchange (a fresh private key per exchange, never stored).

    ``public`` goes to the peer; :meth:`agree` turns the peer's public key into a
    256-bit key bound to ``context`` (:func:`binding`). A peer's key of small order
    (an all-zero shared secret) is refused.
    """

    def __init__(self) -> None:
        self._private = X25519PrivateKey.generate()
        from cryptography.hazmat.primitives import serialization

        self.public: bytes = self._private.public_key().public_bytes(
            encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw)

    def agree(self, *, peer_public: bytes, context: bytes) -> bytes:
        if len(peer_public) != 32:
            raise ValueError(f"an X25519 public key is 32 bytes, the peer sent {len(peer_public)}")
        shared = self._private.exchange(X25519PublicKey.from_public_bytes(bytes(peer_public)))
        if hmac.compare_digest(shared, bytes(32)):  # cryptography raises on this too; keep the check visible
            raise ValueError("the peer's X25519 public key is of small order")
        return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                    info=b"petlab/v1/x25519/" + hashlib.sha256(context).digest()).derive(shared)

    def __repr__(self) -> str:
        return f"KeyExchange(public={self.public.hex()[:16]}…)"


class SecretStream:
    """Ring elements (int64 words) from AES-256-CTR under ``key``, stream ``number``.

    The counter block is the 8-byte stream number then an 8-byte block counter from 0,
    so streams under one key never overlap (2^64 blocks each). Words come in sequence:
    drawing a matrix in row blocks gives the same values as drawing it at once.

    >>> s = SecretStream(key=bytes(32), number=0)
    >>> s.take((2,)).dtype, bool(s.bits((3,)).max() <= 1)
    (dtype('int64'), True)
    """

    def __init__(self, *, key: bytes, number: int = 0):
        _check_key(key)
        if not 0 <= number < 2**64:
            raise ValueError(f"stream number out of range: {number}")
        nonce = number.to_bytes(8, "big") + bytes(8)
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
        self.words_drawn = 0

    def take(self, shape) -> np.ndarray:
        """Uniform ring elements of ``shape``."""
        shape = tuple(int(s) for s in shape)
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if self.words_drawn + n > _MAX_WORDS:  # the block counter would carry into the next stream's
            raise OverflowError("a secret stream's 2^64 blocks are used up; take the next stream")
        out = np.empty(n + 2, dtype=np.int64)  # update_into wants room for a block more
        view = memoryview(out).cast("B")
        at = 0
        while at < n:
            m = min(_CHUNK_WORDS, n - at)
            self._encryptor.update_into(memoryview(_ZEROS)[: 8 * m], view[8 * at: 8 * (at + m) + 16])
            at += m
        self.words_drawn += n
        return out[:n].reshape(shape)

    def bits(self, shape) -> np.ndarray:
        """Uniform 0/1 words of ``shape`` (one word of keystream each)."""
        return self.take(shape) & 1

    def kbits(self, shape, bitlength: int) -> np.ndarray:
        """Uniform values in ``[0, 2^bitlength)`` (``bitlength`` < 64)."""
        if not 0 < bitlength < 64:
            raise ValueError(f"bitlength must be in 1..63, got {bitlength}")
        return self.take(shape) & np.int64((1 << bitlength) - 1)

    def matrix(self, shape, *, block_rows: int = 65536) -> np.ndarray:
        """A large ``(n, d)`` draw, made block by block (same values as :meth:`take`)."""
        out = np.empty(tuple(shape), dtype=np.int64)
        for i in range(0, shape[0], block_rows):
            rows = min(block_rows, shape[0] - i)
            out[i: i + rows] = self.take((rows,) + tuple(shape[1:]))
        return out

    def __repr__(self) -> str:
        return f"SecretStream(words_drawn={self.words_drawn})"


class StreamSource:
    """Numbered :class:`SecretStream` s under one key, handed out in order: two holders
    of the same key who ask in the same order (and for the same requests) read the same
    streams."""

    def __init__(self, *, key: bytes):
        _check_key(key)
        self._key = key
        self.count = 0

    def next(self, *, bound_to: bytes | None = None) -> SecretStream:
        """The next stream; ``bound_to`` (e.g. the request it serves, canonically encoded)
        makes its key depend on that too: whoever reads it for another request reads
        words the key's other holder never uses."""
        key = self._key
        if bound_to is not None:
            key = derive_key(key=key, purpose="request/" + hashlib.sha256(bound_to).hexdigest())
        stream = SecretStream(key=key, number=self.count)
        self.count += 1
        return stream

    def __repr__(self) -> str:
        return f"StreamSource(streams={self.count})"


def keyed_commitment(*, key: bytes, data: bytes) -> str:
    """HMAC-SHA256 of ``data`` under ``key``, hex: shows a peer that two things are the
    same (under a key both hold) without the unsalted digest a dictionary could invert."""
    _check_key(key)
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _check_key(key: bytes) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise ValueError(f"a secret key is {KEY_BYTES} bytes")
