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
]

PRECISION_BITS = 16  # CrypTen's default fixed-point precision


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
