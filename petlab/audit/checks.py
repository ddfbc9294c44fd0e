"""Tests on what a party received, with thresholds stated and justified.

All received words are 64-bit ring elements. If the protocol is sound, each word a
party receives is the other party's share of something, or a value masked by a fresh
uniformly random ring element, so it is uniform over Z/2^64 and independent of the data.

* **Raw values.** A uniform word equals one of K given values with probability K/2^64,
  so over N words the expected number of matches is N*K/2^64 (about 1e-9 for a million
  words and a thousand values). A Poisson count with that mean exceeds 3 with
  probability below 1e-27: more than ``max(3, 10 * expected)`` matches fails.
* **Bit balance.** For each of the 64 bit positions the share of ones is Binomial(N, 1/2);
  with 64 positions, |z| > 6 anywhere has probability below 64 * 2e-9 ~ 1.3e-7 under
  uniformity, so ``max |z| <= 6`` passes.
* **Distribution.** Words mapped to [0, 1) must pass a Kolmogorov-Smirnov test against
  uniform at p >= 1e-6 (bit balance alone misses sign-extended small numbers).
* **Byte chi-square.** The 8N bytes fall in 256 bins uniformly; the run fails if the
  chi-square p-value is below 1e-6 (a false alarm in one run in a million).
* **1-bit shares.** Where the protocol sends 1-bit XOR shares (see
  :data:`petlab.audit.run.NARROW_OPS`), the share of ones in bit 0 must pass the same
  |z| <= 6 test and every higher bit must be zero.
* **Correlation.** Pearson and Spearman correlations between a received (opened) word,
  mapped to [0, 1), and the secret value it hides have standard deviation 1/sqrt(n)
  under independence; |r| <= 5/sqrt(n) passes (false alarm ~6e-7 per statistic).

The tests above look at each word alone; two more look at the *openings* (what a
reduction opened, which the party knows in full), as pairs and as wholes:

* **Mask reuse.** A value opened under a mask that opened something before gives away
  the difference of the two values: ``(w1 - B) - (w2 - B) = w1 - w2``. Two openings of the
  same length whose difference (XOR, for XOR openings) is *small* in every element
  (``|d| < 2^40`` as a signed word, i.e. a fixed-point value below 2^24) are flagged, as
  are equal ones. Fresh uniform masks make a pair of L >= 2 words that small with
  probability 2^(-23 L) <= 2^-46; the check compares every pair of its openings that can
  be that close (bucketed by the top bits of the first word, so the work is near linear),
  caps the pairs it verifies at ``max_pairs`` and says so. Openings of one word are not
  paired (2^-23 per pair is no evidence).
* **Plaintext openings.** An opening is uniform on the ring when its mask is; a
  decryption opens fixed-point values, small words. An opening outside the declared
  reveals with at least 2 words, and at least half its words, below 2^40 in absolute
  value is a decryption (a uniform opening of L words has two such words with
  probability below L^2 2^-47).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = [
    "CheckResult",
    "encode_fixed_point",
    "raw_value_matches",
    "bit_balance",
    "byte_chi_square",
    "single_bit_balance",
    "ks_uniform",
    "correlation_with_secret",
    "as_unit_interval",
    "SMALL_BITS",
    "is_small",
    "mask_reuse",
    "plaintext_parts",
]

PRECISION_BITS = 16  # CrypTen's default fixed-point precision
SMALL_BITS = 40  # |word| < 2^40: a fixed-point value (below 2^24 at 16 bits), not a uniform ring element


@dataclasses.dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    statistic: float
    threshold: str
    detail: str


def encode_fixed_point(values: np.ndarray, precision_bits: int = PRECISION_BITS) -> np.ndarray:
    """CrypTen's encoding of float values as ring elements (int64).

    >>> encode_fixed_point(np.array([1.0, -0.5])).tolist()
    [65536, -32768]
    """
    return np.round(np.asarray(values, dtype=np.float64) * (1 << precision_bits)).astype(np.int64)


def as_unit_interval(words: np.ndarray) -> np.ndarray:
    """Ring elements mapped to [0, 1) (uniform words map to uniform floats)."""
    return words.astype(np.int64).view(np.uint64).astype(np.float64) / 2.0**64


def raw_value_matches(*, words: np.ndarray, secrets: np.ndarray, label: str) -> CheckResult:
    """How many received words equal a fixed-point encoding of another party's raw values."""
    targets = np.unique(encode_fixed_point(secrets.ravel()))
    matches = int(np.isin(words, targets).sum())
    expected = words.size * targets.size / 2.0**64
    limit = max(3.0, 10 * expected)
    return CheckResult(
        name=f"raw values of {label} in received words",
        passed=matches <= limit,
        statistic=float(matches),
        threshold=f"<= {limit:g} (expected by chance {expected:.2e})",
        detail=f"{words.size:,} words searched for {targets.size:,} distinct encoded values",
    )


def bit_balance(*, words: np.ndarray, label: str) -> CheckResult:
    """Largest |z| of the share of ones over the 64 bit positions."""
    u = words.astype(np.int64).view(np.uint64)
    n = u.size
    ones = np.array([int(((u >> np.uint64(i)) & np.uint64(1)).sum()) for i in range(64)])
    z = (ones - n / 2) / math.sqrt(n / 4) if n else np.zeros(64)
    worst = float(np.abs(z).max()) if n else 0.0
    return CheckResult(
        name=f"bit balance of {label}", passed=n > 0 and worst <= 6.0, statistic=worst,
        threshold="max |z| <= 6 over 64 bit positions",
        detail=f"{n:,} words; share of ones per bit in [{ones.min() / max(n, 1):.4f}, {ones.max() / max(n, 1):.4f}]",
    )


def ks_uniform(*, words: np.ndarray, label: str) -> CheckResult:
    """Kolmogorov-Smirnov test of the words, mapped to [0, 1), against uniform.

    Complements the bit balance: sign-extended small values (e.g. unmasked fixed-point
    numbers of both signs) have balanced bits but pile up near 0 and 1.
    """
    from scipy.stats import kstest

    x = as_unit_interval(words)
    if x.size > 1_000_000:  # the test's power is ample; keep it fast
        x = x[np.random.default_rng(0).choice(x.size, 1_000_000, replace=False)]
    stat, p = kstest(x, "uniform")
    return CheckResult(
        name=f"distribution of {label}", passed=bool(p >= 1e-6), statistic=float(p),
        threshold="Kolmogorov-Smirnov p-value >= 1e-6",
        detail=f"{x.size:,} words, D={stat:.5f}",
    )


def single_bit_balance(*, bits: np.ndarray, label: str) -> CheckResult:
    """1-bit shares: all higher bits zero, and bit 0 balanced (|z| <= 6)."""
    n = bits.size
    ones = int((bits & 1).sum())
    z = abs(ones - n / 2) / math.sqrt(n / 4) if n else 0.0
    clean = bool(((bits >> 1) == 0).all())
    return CheckResult(
        name=f"balance of {label}", passed=n > 0 and clean and z <= 6.0, statistic=float(z),
        threshold="|z| <= 6 on bit 0; higher bits all zero",
        detail=f"{n:,} shares, share of ones {ones / max(n, 1):.4f}; higher bits zero: {clean}",
    )


def byte_chi_square(*, words: np.ndarray, label: str) -> CheckResult:
    """Chi-square test of the received bytes against uniform over 256 values."""
    from scipy.stats import chisquare

    counts = np.bincount(words.astype(np.int64).view(np.uint8), minlength=256)
    stat, p = chisquare(counts)
    return CheckResult(
        name=f"byte uniformity of {label}", passed=bool(p >= 1e-6), statistic=float(p),
        threshold="chi-square p-value >= 1e-6",
        detail=f"{counts.sum():,} bytes, chi2={stat:.1f} on 255 degrees of freedom",
    )


def correlation_with_secret(*, opened: np.ndarray, secret: np.ndarray, label: str) -> CheckResult:
    """Pearson and Spearman correlation between opened words and the values they hide."""
    from scipy.stats import pearsonr, spearmanr

    x = as_unit_interval(opened.ravel())
    y = np.asarray(secret, dtype=np.float64).ravel()
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    n = x.size
    r_p = float(pearsonr(x, y).statistic) if n > 2 and y.std() > 0 else 0.0
    r_s = float(spearmanr(x, y).statistic) if n > 2 and y.std() > 0 else 0.0
    limit = 5 / math.sqrt(max(n, 1))
    worst = max(abs(r_p), abs(r_s))
    return CheckResult(
        name=f"correlation of {label} with the secret values", passed=worst <= limit,
        statistic=worst, threshold=f"|r| <= 5/sqrt(n) = {limit:.4f}",
        detail=f"n={n:,}; Pearson {r_p:+.4f}, Spearman {r_s:+.4f}",
    )


def is_small(words: np.ndarray, *, bits: int = SMALL_BITS) -> np.ndarray:
    """Which ring elements are below ``2^bits`` in absolute value as signed words.

    >>> is_small(np.array([-5, 2**41, -(2**63)])).tolist()
    [True, False, False]
    """
    w = np.asarray(words, dtype=np.int64)
    return (w > -(1 << bits)) & (w < (1 << bits))


def mask_reuse(*, openings: list[tuple[np.ndarray, str]], label: str, max_pairs: int = 1_000_000,
               bits: int = SMALL_BITS) -> CheckResult:
    """Pairs of openings of one length whose difference is small in every element.

    Args:
        openings: ``(words, kind)`` or ``(words, kind, name)`` in the order they were
            opened; ``kind`` ``"sum"`` (the difference is ``x - y``) or ``"xor"``
            (``x ^ y``); ``name`` (e.g. the operation) for the detail.
        label: what the openings are, for the check's name.
        max_pairs: most candidate pairs verified word by word (the detail says when hit).
        bits: "small" is ``|d| < 2^bits``.

    Candidates come from buckets of the first word's top ``64 - bits`` bits: a difference
    below ``2^bits`` keeps two first words in the same or a neighbouring bucket (for XOR:
    the same or the complementary one), so no pair that could match is skipped.

    >>> rng = np.random.default_rng(1)
    >>> B = rng.integers(-2**63, 2**63 - 1, 30)
    >>> fresh = [(rng.integers(-2**63, 2**63 - 1, 30), "sum") for _ in range(100)]
    >>> mask_reuse(openings=fresh, label="x").passed
    True
    >>> w1, w2 = encode_fixed_point(rng.standard_normal(30)), encode_fixed_point(rng.standard_normal(30))
    >>> mask_reuse(openings=fresh + [(w1 - B, "sum"), (w2 - B, "sum")], label="x").passed
    False
    """
    top = 64 - bits
    span = 1 << top
    buckets: dict = {}  # (length, kind) -> {bucket: [opening index, ...]}
    found: list[tuple[int, int]] = []
    verified, capped, paired = 0, False, 0
    for i, (words, kind, *_) in enumerate(openings):
        words = np.asarray(words, dtype=np.int64).ravel()
        if words.size < 2:
            continue
        paired += 1
        key = int(words[:1].view(np.uint64)[0]) >> bits
        slot = buckets.setdefault((words.size, kind), {})
        near = {key, (key + 1) % span, (key - 1) % span} if kind == "sum" else {key, key ^ (span - 1)}
        for k in near:
            for j in slot.get(k, ()):
                if verified >= max_pairs:
                    capped = True
                    break
                verified += 1
                other = np.asarray(openings[j][0], dtype=np.int64).ravel()
                diff = (words - other) if kind == "sum" else (words ^ other)
                if is_small(diff, bits=bits).all():
                    found.append((j, i))
        slot.setdefault(key, []).append(i)
    cap = f"; pair cap {max_pairs:,} reached, later pairs unverified" if capped else ""

    def name(k):
        return f"#{k} {openings[k][2]}" if len(openings[k]) > 2 else f"#{k}"

    shown = [f"{name(j)} and {name(i)} ({np.asarray(openings[i][0]).size} words)" for j, i in found[:3]]
    return CheckResult(
        name=f"no mask reused across {label}", passed=not found, statistic=float(len(found)),
        threshold=f"0 pairs of openings (same length, >= 2 words) differing by less than 2^{bits} in every word",
        detail=f"{paired:,} openings of >= 2 words, {verified:,} candidate pairs verified{cap}; "
               f"reused: {'; '.join(shown) if found else 'none'}",
    )


def plaintext_parts(*, parts: list[np.ndarray], bits: int = SMALL_BITS) -> list[int]:
    """Indices of the openings in ``parts`` that look like decrypted fixed-point values:
    at least 2 words, and at least half of them, below ``2^bits`` in absolute value.

    >>> rng = np.random.default_rng(2)
    >>> plaintext_parts(parts=[rng.integers(-2**63, 2**63 - 1, 50), encode_fixed_point(rng.random(50)), np.array([3])])
    [1]
    """
    out = []
    for i, words in enumerate(parts):
        small = int(is_small(words, bits=bits).sum())
        if small >= 2 and 2 * small >= np.asarray(words).size:
            out.append(i)
    return out
