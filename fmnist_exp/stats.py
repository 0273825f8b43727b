"""Two classifiers compared on the same test images: accuracies, their paired difference with a
bootstrap confidence interval, and an exact McNemar test.

Pairing matters: both models answer the same 10,000 images, so most images are right (or wrong)
for both and only the images where they disagree carry evidence. On 10,000 images one standard
error of a single accuracy near 93% is ~0.25 points, but the paired difference is much tighter
when the models agree on most images. Pure numpy; no MLflow, so registry and tuning share it.
"""

from __future__ import annotations

from dataclasses import dataclass

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
