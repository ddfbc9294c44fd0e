"""The one home of secret randomness: AES-256-CTR streams, HKDF purposes, X25519 keys."""

from __future__ import annotations

import numpy as np
import pytest

from petlab.mpc import secret_random as sr


def test_a_stream_is_fixed_by_its_key_and_number_and_reads_in_sequence():
    key = sr.fresh_key()
    whole = sr.SecretStream(key=key, number=3).take((1000, 3))
    parts = sr.SecretStream(key=key, number=3)
    pieced = np.concatenate([parts.take((1,)), parts.take((299,)), parts.take((2700,))])
    assert np.array_equal(whole.ravel(), pieced)
    assert np.array_equal(sr.SecretStream(key=key, number=3).matrix((1000, 3), block_rows=7), whole)
    others = [sr.SecretStream(key=key, number=4).take((3000,)), sr.SecretStream(key=sr.fresh_key(), number=3).take((3000,))]
    for other in others:  # another stream or key: no word in common (2^-40 by chance)
        assert not np.intersect1d(other, whole.ravel()).size


def test_stream_words_are_uniform_on_the_ring():
    words = sr.SecretStream(key=sr.fresh_key()).take((400_000,))
    bits = (words[:, None].view(np.uint64) >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    # each of the 64 bit positions balanced within 5 standard deviations (sd = 0.5 / sqrt(n))
    assert np.abs(bits.mean(axis=0) - 0.5).max() < 5 * 0.5 / np.sqrt(len(words))
    counts = np.bincount(words.view(np.uint8), minlength=256)
    expected = words.size * 8 / 256
    assert ((counts - expected) ** 2 / expected).sum() < 400  # chi-square, 255 dof: mean 255, sd 22.6
    small = sr.SecretStream(key=sr.fresh_key())
    assert set(np.unique(small.bits((1000,)))) == {0, 1}
    assert small.kbits((1000,), 5).min() >= 0 and small.kbits((1000,), 5).max() < 32


def test_source_streams_follow_each_other_and_match_between_holders():
    key = sr.fresh_key()
    a, b = sr.StreamSource(key=key), sr.StreamSource(key=key)
    first, second = a.next().take((8,)), a.next().take((8,))
    assert not np.array_equal(first, second)
    assert np.array_equal(b.next().take((8,)), first) and np.array_equal(b.next().take((8,)), second)


def test_purposes_give_independent_keys_and_bad_keys_are_refused():
    key = sr.fresh_key()
    derived = {sr.derive_key(key=key, purpose=p) for p in ("a", "b", "protocol/x", "crypten/przs/0->1")}
    assert len(derived) == 4 and key not in derived
    for bad in (b"short", bytes(31), "a" * 32):
        with pytest.raises(ValueError, match="32 bytes"):
            sr.SecretStream(key=bad)
    with pytest.raises(ValueError, match="stream number"):
        sr.SecretStream(key=key, number=2**64)


def test_a_stream_refuses_to_run_past_its_counter():
    stream = sr.SecretStream(key=sr.fresh_key())
    stream.words_drawn = sr._MAX_WORDS - 2
    stream.take((2,))
    with pytest.raises(OverflowError, match="used up"):
        stream.take((1,))


def _ctx(a, b, digest="d" * 64, roles=("gateway", "wallet")):
    return sr.binding(config_digest=digest, roles=roles, publics=(a.public, b.public))


def test_x25519_agreement_is_bound_to_the_run_roles_and_keys():
    a, b = sr.KeyExchange(), sr.KeyExchange()
    key = a.agree(peer_public=b.public, context=_ctx(a, b))
    assert key == b.agree(peer_public=a.public, context=_ctx(a, b)) and len(key) == 32
    assert key != a.agree(peer_public=b.public, context=_ctx(a, b, digest="e" * 64))  # another configuration
    assert key != a.agree(peer_public=b.public, context=_ctx(a, b, roles=("dealer", "wallet")))  # another pair
    c = sr.KeyExchange()
    assert key != c.agree(peer_public=b.public, context=_ctx(c, b))  # a fresh exchange, a fresh key
    assert a.public.hex() not in repr(key) and "KeyExchange" in repr(a)


@pytest.mark.parametrize("public", [bytes(32), (1).to_bytes(32, "little"), bytes.fromhex(
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")])  # small-order points
def test_small_order_public_keys_are_refused(public):
    with pytest.raises(ValueError):
        sr.KeyExchange().agree(peer_public=public, context=b"x")


def test_a_wrong_length_public_key_is_refused():
    with pytest.raises(ValueError, match="32 bytes"):
        sr.KeyExchange().agree(peer_public=bytes(31), context=b"x")


def test_keyed_commitments_compare_equal_values_only_under_the_key():
    key = sr.fresh_key()
    assert sr.keyed_commitment(key=key, data=b"ids") == sr.keyed_commitment(key=key, data=b"ids")
    assert sr.keyed_commitment(key=key, data=b"ids") != sr.keyed_commitment(key=key, data=b"idz")
    assert sr.keyed_commitment(key=key, data=b"ids") != sr.keyed_commitment(key=sr.fresh_key(), data=b"ids")
    import hashlib

    assert sr.keyed_commitment(key=key, data=b"ids") != hashlib.sha256(b"ids").hexdigest()
