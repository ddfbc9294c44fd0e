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

The tests above look at each word alone; three more look at the *openings* (what a
reduction opened, which the party knows in full), as pairs and as wholes:

* **Mask reuse.** A value opened under a mask that opened something before gives away
  the difference of the two values: ``(w1 - B) - (w2 - B) = w1 - w2`` (and their sum,
  ``w1 + w2``, for a mask reused with the opposite sign). A difference is *small* when
  ``|d| < 2^40`` as a signed word (a fixed-point value below 2^24); for two words under
  fresh uniform masks that has probability ``p = (2^41 - 1) / 2^64 < 2^-23``, for a
  difference and for a sum alike (XOR openings: ``x ^ y``, no sum). Openings are compared
  within their class (same length, same kind), three ways, at a false alarm of at most
  about 1e-6 a run in all:

  - *whole reuse*: a pair of L >= 2 words that differ by a small amount in every word
    (probability ``p^L <= 2^-46`` a pair, found at any distance: candidates are bucketed by
    the top bits of the first word, so the work is near linear; ``max_pairs`` verified);
  - *partial reuse*: each opening against the ``window`` most recent earlier openings of
    its class (``max_pairs`` pairs in all; the detail says when either limit was hit):
    a pair of L words with at least ``m_c`` words small (difference or sum), where ``m_c``
    is the least m with ``P_c C(L, m) q^m <= a`` (``P_c`` pairs compared in the class,
    ``q = 2p`` for sums, ``p`` for XOR; the words of a pair are independent, so the union
    bound is exact); ``a = 1e-6 / (2K)`` for K classes;
  - *one close word*: the smallest |difference| (or |sum|) over the ``W_c`` word pairs
    compared in a class below ``t_c = a 2^64 / (2 s W_c)`` (``s`` = 2 for sums, 1 for
    XOR): each is uniform, so ``P(|d| < t) < 2t / 2^64`` and the union over the class is
    at most ``a``. A mask reused for one word of a 35-word weight vector from one step to
    the next (a difference of one SGD step, below 2^17) is caught this way in a run of
    two steps, where no count of 2^40-small words could be (t_c ~ 2^26 there).

  Openings that look like plaintext (below) are left to that check: two plaintext
  values differ by a small amount whatever their masks.
* **Plaintext openings.** An opening is uniform on the ring when its mask is; a
  decryption opens fixed-point values, small words. An opening outside the declared
  reveals with at least 2 words, and at least half its words, below 2^40 in absolute
  value is a decryption (a uniform opening of L words has two such words with
  probability below L^2 2^-47). One-word openings (a sum, a bias) cannot meet that; of
  the M undeclared one-word openings of a run, each small with probability ``p``, at most
  ``k - 1`` may be small, with k the least count with ``C(M, k) p^k <= 1e-6`` (k = 1 up to
  M = 8 openings, 2 up to 11,863: a value opened in the clear at two steps fails).
* **Opened bits.** A comparison opens ``bit ^ rb`` with ``rb`` a fresh random bit: every
  opened value is 0 or 1, and the opened bits are independent fair coins whatever the
  bits they hide. The count of ones over all N opened bits must pass an exact two-sided
  binomial test at p >= 5e-7, and so must each block of up to 64 consecutive bits of one
  opening at p >= 5e-7 / J (J blocks): 1e-6 in all by the union bound. A bit opened
  without its random bit (the sign of every row) fails: at the first step of logistic
  regression every z is 0 and every bit 0; under the piecewise sigmoid, whose three
  comparisons' bits balance over the whole, the blocks of ``z < -10`` are nearly all 0.
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
    "small_word_probability",
    "mask_reuse",
    "plaintext_parts",
    "small_single_words",
    "opened_bit_balance",
]

PRECISION_BITS = 16  # CrypTen's default fixed-point precision
SMALL_BITS = 40  # |word| < 2^40: a fixed-point value (below 2^24 at 16 bits), not a uniform ring element
FALSE_ALARM = 1e-6  # what each of the checks on openings allows a sound run, in all


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


def small_word_probability(bits: int = SMALL_BITS) -> float:
    """``P(|w| < 2^bits)`` for a uniform ring element ``w`` (as a signed word).

    >>> small_word_probability(40) < 2**-23
    True
    """
    return (2.0 ** (bits + 1) - 1) / 2.0**64


def _magnitude(words: np.ndarray) -> np.ndarray:
    """|w| of signed words as uint64 (|-2^63| = 2^63, exactly)."""
    return np.abs(words).view(np.uint64)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _whole_reuse(parsed, *, bits: int, max_pairs: int) -> tuple[list, int, bool]:
    """Pairs of openings (same length >= 2, same kind) small in every word of their
    difference (XOR for XOR openings), at any distance: candidates come from buckets of
    the first word's top ``64 - bits`` bits (a difference below ``2^bits`` keeps two first
    words in the same or a neighbouring bucket; for XOR: the same or the complementary
    one), so no pair that could match is skipped."""
    top = 64 - bits
    span = 1 << top
    buckets: dict = {}  # (length, kind) -> {bucket: [opening index, ...]}
    found, verified, capped = [], 0, False
    for i, (words, kind) in enumerate(parsed):
        if words.size < 2:
            continue
        key = int(words[:1].view(np.uint64)[0]) >> bits
        slot = buckets.setdefault((words.size, kind), {})
        near = {key, (key + 1) % span, (key - 1) % span} if kind == "sum" else {key, key ^ (span - 1)}
        for k in near:
            for j in slot.get(k, ()):
                if verified >= max_pairs:
                    capped = True
                    break
                verified += 1
                other = parsed[j][0]
                diff = (words - other) if kind == "sum" else (words ^ other)
                if is_small(diff, bits=bits).all():
                    found.append((j, i))
        slot.setdefault(key, []).append(i)
    return found, verified, capped


def _partial_reuse(parsed, *, bits: int, max_pairs: int, window: int, alpha: float) -> dict:
    """Each opening against the ``window`` most recent earlier openings of its class:
    pairs with at least ``m_c`` small words, and the class's closest word against
    ``t_c`` (the module docstring derives both)."""
    classes: dict = {}
    for i, (words, kind) in enumerate(parsed):
        classes.setdefault((words.size, kind), []).append(i)
    stats, budget, capped, beyond, unverified = [], max_pairs, False, 0, 0
    for (length, kind), index in classes.items():
        if len(index) < 2 or length == 0:
            continue
        M = np.stack([parsed[i][0] for i in index])
        pairs = words_compared = 0
        most = (0, None)  # (small words in a pair, pair)
        closest = (np.uint64(2**64 - 1), None, "")  # (|d|, pair, "difference"/"sum")
        for pos in range(1, len(index)):
            take = min(pos, window)
            beyond += pos - take
            if take > budget:
                capped, unverified, take = True, unverified + take - budget, budget
            if take == 0:
                continue
            budget -= take
            earlier, row = M[pos - take: pos], M[pos]
            sides = [("difference", earlier - row), ("sum", earlier + row)] if kind == "sum" else \
                [("difference", earlier ^ row)]
            small = np.zeros(earlier.shape, dtype=bool)
            for side, d in sides:
                small |= is_small(d, bits=bits)
                mag = _magnitude(d)
                at = np.unravel_index(int(mag.argmin()), mag.shape)
                if mag[at] < closest[0]:
                    closest = (mag[at], (index[pos - take + at[0]], index[pos]), side)
            counts = small.sum(axis=1)
            if counts.max() > most[0]:
                most = (int(counts.max()), (index[pos - take + int(counts.argmax())], index[pos]))
            pairs += take
            words_compared += take * length
        if pairs:
            stats.append({"length": length, "kind": kind, "pairs": pairs, "words": words_compared,
                          "most": most, "closest": closest})
    q1 = small_word_probability(bits)
    a = alpha / (2 * max(len(stats), 1))
    findings = []
    for c in stats:
        s = 2 if c["kind"] == "sum" else 1
        log_q, log_a = math.log(s * q1), math.log(a)
        c["m"] = next((m for m in range(1, c["length"] + 1)
                       if math.log(c["pairs"]) + _log_comb(c["length"], m) + m * log_q <= log_a), c["length"] + 1)
        c["t"] = int(a * 2.0**64 / (2 * s * c["words"]))
        if c["most"][0] >= c["m"]:
            findings.append(("partial", c))
        elif int(c["closest"][0]) < c["t"]:
            findings.append(("close", c))
    return {"classes": stats, "findings": findings, "capped": capped, "beyond": beyond, "unverified": unverified,
            "pairs": sum(c["pairs"] for c in stats)}


def mask_reuse(*, openings: list[tuple[np.ndarray, str]], label: str, max_pairs: int = 1_000_000,
               bits: int = SMALL_BITS, window: int = 256, alpha: float = FALSE_ALARM) -> CheckResult:
    """Pairs of openings of one length that share a mask, wholly or in part.

    Args:
        openings: ``(words, kind)`` or ``(words, kind, name)`` in the order they were
            opened; ``kind`` ``"sum"`` (the difference is ``x - y``, the sum ``x + y``) or
            ``"xor"`` (``x ^ y``); ``name`` (e.g. the operation) for the detail.
        label: what the openings are, for the check's name.
        max_pairs: most pairs verified by each search (the detail says when hit).
        bits: "small" is ``|d| < 2^bits``.
        window: each opening is compared in full with this many most recent earlier
            openings of its length and kind.
        alpha: the false alarm allowed a run of fresh masks.

    The module docstring derives the three tests: whole reuse (every word small, at any
    distance), partial reuse (more small words in a pair than chance allows) and one
    close word (a difference or sum closer than chance allows).

    >>> rng = np.random.default_rng(1)
    >>> B = rng.integers(-2**63, 2**63 - 1, 30)
    >>> fresh = [(rng.integers(-2**63, 2**63 - 1, 30), "sum") for _ in range(100)]
    >>> mask_reuse(openings=fresh, label="x").passed
    True
    >>> w1, w2 = encode_fixed_point(rng.standard_normal(30)), encode_fixed_point(rng.standard_normal(30))
    >>> mask_reuse(openings=fresh + [(w1 - B, "sum"), (w2 - B, "sum")], label="x").passed
    False
    >>> one = (w1 - B).copy(); one[1:] = rng.integers(-2**63, 2**63 - 1, 29)  # only word 0 under B
    >>> mask_reuse(openings=fresh + [(w1 - B, "sum"), (one, "sum")], label="x").passed
    False
    """
    parsed = [(np.asarray(words, dtype=np.int64).ravel(), kind) for words, kind, *_ in openings]
    whole, verified, capped = _whole_reuse(parsed, bits=bits, max_pairs=max_pairs)
    part = _partial_reuse(parsed, bits=bits, max_pairs=max_pairs, window=window, alpha=alpha)

    def name(k):
        return f"#{k} {openings[k][2]}" if len(openings[k]) > 2 else f"#{k}"

    shown = [f"{name(j)} and {name(i)} ({parsed[i][0].size} words, every one within 2^{bits})"
             for j, i in whole[:3]]
    for what, c in part["findings"][:3]:
        if what == "partial":
            j, i = c["most"][1]
            shown.append(f"{name(j)} and {name(i)} ({c['most'][0]} of {c['length']} words within 2^{bits}; "
                         f"chance allows {c['m'] - 1})")
        else:
            mag, (j, i), side = c["closest"]
            shown.append(f"{name(j)} and {name(i)} (a word's {side} is {int(mag)}, below {c['t']:,}, "
                         f"over {c['words']:,} word pairs of length {c['length']})")
    limits = []
    if capped:
        limits.append(f"whole reuse: pair cap {max_pairs:,} reached, later pairs unverified")
    if part["capped"]:
        limits.append(f"partial reuse: pair cap {max_pairs:,} reached, {part['unverified']:,} later pairs unverified")
    if part["beyond"]:
        limits.append(f"{part['beyond']:,} pairs further apart than the window of {window} unverified in full")
    n_findings = len(whole) + len(part["findings"])
    tightest = min(part["classes"], key=lambda c: c["t"], default=None)
    return CheckResult(
        name=f"no mask reused across {label}", passed=not n_findings, statistic=float(n_findings),
        threshold=f"0 pairs of openings (same length and kind) differing by less than 2^{bits} in every word, "
                  f"0 with more such words than chance allows, and no word closer than chance allows "
                  f"(false alarm <= {alpha:g} in all)",
        detail=f"{sum(1 for w, _ in parsed if w.size >= 2):,} openings of >= 2 words, {verified:,} candidate "
               f"pairs for whole reuse; {part['pairs']:,} pairs in {len(part['classes'])} classes compared word by "
               f"word (window {window})"
               + (f", the tightest closeness bound {tightest['t']:,} (length {tightest['length']})" if tightest else "")
               + (f"; {'; '.join(limits)}" if limits else "")
               + f"; reused: {'; '.join(shown) if n_findings else 'none'}",
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


def small_single_words(*, parts: list[np.ndarray], bits: int = SMALL_BITS,
                       alpha: float = FALSE_ALARM) -> tuple[list[int], int]:
    """The one-word openings in ``parts`` that are small (``|v| < 2^bits``), and the count
    of them from which a run fails: the least k with ``C(M, k) p^k <= alpha``, M the
    one-word openings and ``p`` :func:`small_word_probability` (the union bound over the
    k-sets of independent uniform words).

    >>> rng = np.random.default_rng(3)
    >>> small_single_words(parts=[rng.integers(-2**63, 2**63 - 1, 1) for _ in range(100)] + [np.array([7])])
    ([100], 2)
    """
    single = [i for i, words in enumerate(parts) if np.asarray(words).size == 1]
    small = [i for i in single if bool(is_small(parts[i], bits=bits).all())]
    log_p, m = math.log(small_word_probability(bits)), len(single)
    limit = next((k for k in range(1, m + 1) if _log_comb(m, k) + k * log_p <= math.log(alpha)), m + 1)
    return small, limit


def opened_bit_balance(*, openings: list[np.ndarray], label: str, block: int = 64,
                       alpha: float = FALSE_ALARM) -> CheckResult:
    """Opened bits (``bit ^ rb``, ``rb`` a fresh random bit): every value 0 or 1, and the
    ones balanced over all of them and in every block of up to ``block`` consecutive bits
    of one opening (exact binomial tests, ``alpha / 2`` for the whole and
    ``alpha / (2J)`` for each of the J blocks).

    >>> rng = np.random.default_rng(4)
    >>> opened_bit_balance(openings=[rng.integers(0, 2, 128) for _ in range(4)], label="b").passed
    True
    >>> opened_bit_balance(openings=[rng.integers(0, 2, 128), np.zeros(128, np.int64)], label="b").passed
    False
    """
    from scipy.stats import binomtest

    flat = [np.asarray(o, dtype=np.int64).ravel() for o in openings]
    flat = [o for o in flat if o.size]
    bits = np.concatenate(flat) if flat else np.zeros(0, np.int64)
    n, ones = bits.size, int(bits.sum()) if bits.size else 0
    clean = bool(((bits == 0) | (bits == 1)).all())
    blocks = [o[at: at + block] for o in flat for at in range(0, o.size, block)]
    p_all = float(binomtest(ones, n, 0.5).pvalue) if n and clean else 0.0
    p_blocks = [float(binomtest(int(b.sum()), b.size, 0.5).pvalue) for b in blocks] if clean else [0.0]
    worst = int(np.argmin(p_blocks)) if p_blocks else 0
    p_block = p_blocks[worst] if p_blocks else 1.0
    passed = n > 0 and clean and p_all >= alpha / 2 and p_block >= alpha / (2 * max(len(blocks), 1))
    where = ""
    if blocks and clean:
        b = blocks[worst]
        where = f"; least balanced block: {int(b.sum())} ones in {b.size} (p={p_block:.2g})"
    return CheckResult(
        name=f"balance of {label}", passed=passed, statistic=min(p_all, p_block * max(len(blocks), 1)),
        threshold=f"values 0 or 1; binomial p-value >= {alpha / 2:g} over all bits and >= {alpha / 2:g} / "
                  f"{max(len(blocks), 1)} in each block of {block} bits",
        detail=f"{n:,} opened bits in {len(flat)} openings, share of ones {ones / max(n, 1):.4f} "
               f"(p={p_all:.2g}); all 0 or 1: {clean}{where}",
    )
