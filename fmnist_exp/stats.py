"""Two classifiers compared on the same test images: accuracies, their paired difference with a
bootstrap confidence interval, and an exact McNemar test.

Pairing matters: both models answer the same 10,000 images, so most images are right (or wrong)
for both and only the images where they disagree carry evidence. On 10,000 images one standard
error of a single accuracy near 93% is ~0.25 points, but the paired difference is much tighter
when the models agree on most images. A cheaper model may also be shown *non-inferior*: at most a
margin worse, by a one-sided paired test. Pure numpy; no MLflow, so registry and tuning share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

N_RESAMPLES = 10_000
LEVEL = 0.95
SEED = 0
_CHUNK = 500  # resamples drawn at once: 500 x 10,000 indices, ~40 MB


@dataclass(frozen=True)
class PairedComparison:
    """Model A against model B on the same ``n`` labelled images.

    ``b``: images A gets right and B wrong; ``c``: the reverse. ``diff = acc_a - acc_b``
    (a share, not points), with a paired-bootstrap interval ``[ci_low, ci_high]`` and the
    exact two-sided McNemar ``p_value`` on the ``b + c`` discordant images.
    """

    acc_a: float
    acc_b: float
    diff: float
    ci_low: float
    ci_high: float
    b: int
    c: int
    p_value: float
    n: int

    def describe(self) -> str:
        """One line for a log, a tag or a decision: the difference with its interval and test."""
        p = f"p={self.p_value:.3g}" if self.p_value > 0 else "p<1e-300"  # below that a float is 0
        return (f"{100 * self.diff:+.2f} points (95% CI {100 * self.ci_low:+.2f} to {100 * self.ci_high:+.2f}), "
                f"exact McNemar {p} (b={self.b}, c={self.c}, n={self.n})")

    def fields(self, prefix: str, a: str, b: str) -> dict[str, float]:
        """Flat numbers for MLflow metrics/tags and summaries, e.g. ``gate_candidate_test_accuracy``."""
        return {f"{prefix}{a}_test_accuracy": self.acc_a, f"{prefix}{b}_test_accuracy": self.acc_b,
                f"{prefix}diff": self.diff, f"{prefix}ci_low": self.ci_low, f"{prefix}ci_high": self.ci_high,
                f"{prefix}p_value": self.p_value, f"{prefix}b": self.b, f"{prefix}c": self.c, f"{prefix}n": self.n}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: under 'equally good', each discordant image is a fair coin,
    so p = 2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), capped at 1. Integer arithmetic,
    so it stays exact for thousands of discordant images."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    term, tail = 1, 1  # C(n, 0)
    for i in range(k):
        term = term * (n - i) // (i + 1)
        tail += term
    return min(1.0, 2 * tail / 2**n)


def bootstrap_diff_ci(right_a: np.ndarray, right_b: np.ndarray, *, n_resamples: int = N_RESAMPLES,
                      level: float = LEVEL, seed: int = SEED) -> tuple[float, float]:
    """Percentile interval of ``acc_a - acc_b`` over resampled image indices (the same indices
    for both models, which is what makes it paired)."""
    d = right_a.astype(np.int8) - right_b.astype(np.int8)
    n = len(d)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_resamples)
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        diffs[start:start + size] = d[idx].sum(axis=1, dtype=np.int64) / n
    tail = (1 - level) / 2
    lo, hi = np.quantile(diffs, [tail, 1 - tail])
    return float(lo), float(hi)


def compare(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, **bootstrap) -> PairedComparison:
    """Compare predicted labels ``pred_a`` and ``pred_b`` against true labels ``y``."""
    y, pred_a, pred_b = (np.asarray(v).ravel() for v in (y, pred_a, pred_b))
    if not len(y) == len(pred_a) == len(pred_b) or len(y) == 0:
        raise ValueError(f"need one prediction per image from each model: {len(y)} labels, "
                         f"{len(pred_a)} and {len(pred_b)} predictions")
    right_a, right_b = pred_a == y, pred_b == y
    b, c = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    lo, hi = bootstrap_diff_ci(right_a, right_b, **bootstrap)
    acc_a, acc_b = float(right_a.mean()), float(right_b.mean())
    return PairedComparison(acc_a=acc_a, acc_b=acc_b, diff=(b - c) / len(y), ci_low=lo, ci_high=hi, b=b, c=c,
                            p_value=mcnemar_exact(b, c), n=len(y))


@dataclass(frozen=True)
class NonInferiority:
    """Is model A at most ``margin`` worse than model B on the same ``n`` images? One-sided:
    H0 ``acc_a - acc_b <= -margin`` against H1 ``acc_a - acc_b > -margin``, by Tango's score test for
    paired proportions (the discordant counts ``b``, ``c`` carry the evidence, as in McNemar's test).
    ``lower`` is the one-sided ``1 - alpha`` lower confidence bound of the difference from the same
    statistic, so ``p_value < alpha`` exactly when ``lower > -margin``."""

    margin: float
    alpha: float
    diff: float
    lower: float
    z: float
    p_value: float
    b: int
    c: int
    n: int

    @property
    def non_inferior(self) -> bool:
        return self.p_value < self.alpha

    def describe(self) -> str:
        verdict = "non-inferior" if self.non_inferior else "not shown non-inferior"
        return (f"{verdict} within {100 * self.margin:.2f} points: {100 * self.diff:+.2f} points, one-sided "
                f"{100 * (1 - self.alpha):g}% lower bound {100 * self.lower:+.2f}, Tango score p={self.p_value:.3g} "
                f"(b={self.b}, c={self.c}, n={self.n})")

    def fields(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}margin": self.margin, f"{prefix}alpha": self.alpha, f"{prefix}diff": self.diff,
                f"{prefix}lower": self.lower, f"{prefix}z": self.z, f"{prefix}p_value": self.p_value,
                f"{prefix}b": self.b, f"{prefix}c": self.c, f"{prefix}n": self.n}


def tango_z(b: int, c: int, n: int, delta0: float) -> float:
    """Tango's score statistic for ``diff == delta0`` with ``b`` (A right, B wrong) and ``c`` (the
    reverse) of ``n`` pairs; the nuisance share of ``c`` at its maximum likelihood under the null."""
    a2, bq = 2 * n, -b - c + (2 * n - b + c) * delta0
    cq = -c * delta0 * (1 - delta0)
    q = (math.sqrt(max(bq * bq - 4 * a2 * cq, 0.0)) - bq) / (2 * a2)
    num, var = b - c - n * delta0, n * (2 * q + delta0 * (1 - delta0))
    if var <= 0:  # no discordant pair and delta0 = 0: no evidence either way
        return math.copysign(math.inf, num) if num else 0.0
    return num / math.sqrt(var)


def non_inferiority(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, *, margin: float,
                    alpha: float) -> NonInferiority:
    """The one-sided paired non-inferiority test of A against B within ``margin`` (a share of images)."""
    y, pred_a, pred_b = (np.asarray(v).ravel() for v in (y, pred_a, pred_b))
    if not len(y) == len(pred_a) == len(pred_b) or len(y) == 0:
        raise ValueError(f"need one prediction per image from each model: {len(y)} labels, "
                         f"{len(pred_a)} and {len(pred_b)} predictions")
    right_a, right_b = pred_a == y, pred_b == y
    b, c, n = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b)), len(y)
    z = tango_z(b, c, n, -margin)
    p = 0.5 * math.erfc(z / math.sqrt(2))  # upper tail of the standard normal
    crit = NormalDist().inv_cdf(1 - alpha)
    lo, hi = -1.0, (b - c) / n  # the statistic falls as delta0 rises: bisect for tango_z == crit
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tango_z(b, c, n, mid) > crit else (lo, mid)
    return NonInferiority(margin=margin, alpha=alpha, diff=(b - c) / n, lower=lo, z=z, p_value=p, b=b, c=c, n=n)


@dataclass(frozen=True)
class Chance:
    """Did a model learn anything? Its ``right`` answers of ``n`` labelled images against always answering
    their most common class, right on ``share`` of them: the one-sided exact binomial test of H0 "right with
    probability ``share`` or less", ``p_value`` the chance of ``right`` or more under it."""

    right: int
    n: int
    share: float
    p_value: float

    def at_chance(self, alpha: float) -> bool:
        """Not shown above the majority class's share at level ``alpha``."""
        return not self.p_value < alpha

    def describe(self, alpha: float) -> str:
        verdict = "at chance" if self.at_chance(alpha) else "above chance"
        return (f"{verdict}: validation accuracy {self.right / self.n:.4f} against the majority class's share "
                f"{self.share:.4f} of {self.n} images, one-sided exact binomial p={self.p_value:.3g} (alpha={alpha:g})")


CHANCE_ALPHA = 0.05  # the level a run's chance test is judged at where no study gives its promote_alpha


def chance_of(right: int, n: int, share: float) -> Chance:
    """:class:`Chance` of ``right`` answers of ``n`` against a majority class's ``share``."""
    from scipy.stats import binomtest

    return Chance(right, n, share, float(binomtest(right, n, share, alternative="greater").pvalue))


def chance(y: np.ndarray, pred: np.ndarray) -> Chance:
    """:class:`Chance` of the answers ``pred`` to the labels ``y``."""
    return chance_of(int(np.sum(pred == y)), len(y), float(np.bincount(y).max() / len(y)))
