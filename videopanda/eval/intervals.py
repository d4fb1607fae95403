"""95% intervals for the numbers the evaluation reports, and paired tests between two runs.

- A proportion (accuracy: right items / all items) gets the Wilson score interval, which stays inside
  [0, 1] at 0/n and n/n, where the normal approximation p +- z sqrt(p(1-p)/n) would give [0, 0] or leave
  [0, 1].
- A mean score (0..5 judge scores) gets a percentile bootstrap interval over items: `BOOTSTRAP_RESAMPLES`
  resamples of the items with replacement, drawn by numpy's PCG64 generator from `BOOTSTRAP_SEED`, so
  the same scores always give the same interval.
- Cohen's kappa gets the same bootstrap over items (resamples where kappa is undefined are skipped); an
  average of means over shared items (the benchmark's five aspects) resamples each group of items once.
- Two runs over the same items: the exact McNemar test on their discordant items for right/wrong
  outcomes (two-sided binomial test of b against b + c at 1/2), and a paired bootstrap interval of the
  mean score difference (one resample of item indices serves both runs).

No interval exists over zero items: the functions give None there.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable, Sequence

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
INTERVAL_RULE = (f"95% intervals: Wilson score interval for accuracies; percentile bootstrap over items "
                 f"({BOOTSTRAP_RESAMPLES} resamples, PCG64 seed {BOOTSTRAP_SEED}) for mean scores and Cohen's kappa")


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Wilson score interval of the proportion successes / n, as fractions in [0, 1]; None when n == 0."""
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..n, got {successes} of {n}")
    if n == 0:
        return None
    z = _z(confidence)
    p = successes / n
    shrink = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / shrink
    half = z / shrink * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at 0/n and n/n the bound is exactly 0 or 1; rounding could leave it a hair off
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def percent_interval(successes: int, n: int) -> list[float] | None:
    """`wilson_interval` in percent, as a JSON-ready [low, high]; None when n == 0."""
    interval = wilson_interval(successes, n)
    return None if interval is None else [100.0 * interval[0], 100.0 * interval[1]]


def _resampled_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) item indices drawn with replacement."""
    return np.random.Generator(np.random.PCG64(seed)).integers(0, n, size=(resamples, n))


def _percentiles(values: np.ndarray, confidence: float) -> list[float]:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def bootstrap_interval(values: Sequence[float], confidence: float = CONFIDENCE,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> list[float] | None:
    """Percentile bootstrap interval of the mean of `values` (one per item); None when there are none."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return None
    means = data[_resampled_indices(data.size, resamples, seed)].mean(axis=1)
    return _percentiles(means, confidence)


def paired_bootstrap(first: Sequence[float], second: Sequence[float], confidence: float = CONFIDENCE,
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> list[float] | None:
    """Percentile bootstrap interval of mean(second) - mean(first) over paired items (item i of both runs
    is resampled together); None when there are no items."""
    if len(first) != len(second):
        raise ValueError("the two score sequences must be equally long")
    differences = np.asarray(second, dtype=float) - np.asarray(first, dtype=float)
    return bootstrap_interval(differences, confidence, resamples, seed)


def bootstrap_statistic(n: int, statistic: Callable[[np.ndarray], float | None], confidence: float = CONFIDENCE,
                        resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> list[float] | None:
    """Percentile bootstrap interval of `statistic(item indices)` over `n` items; resamples where it is
    None (undefined) are skipped. None when n == 0 or it is undefined on every resample."""
    if n == 0:
        return None
    values = [statistic(indices) for indices in _resampled_indices(n, resamples, seed)]
    defined = np.asarray([v for v in values if v is not None], dtype=float)
    return _percentiles(defined, confidence) if defined.size else None


def bootstrap_mean_of_means(strata: Sequence[Sequence[Sequence[float]]], confidence: float = CONFIDENCE,
                            resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> list[float] | None:
    """Percentile bootstrap interval of the mean of several means, e.g. the average of the benchmark's five
    aspect scores. `strata`: per group of items, the score vectors (one per mean, each over the group's
    items in one order) of the means computed over it; a group's items are resampled once for all its
    vectors, so means over the same items move together. None when some group has no items."""
    generator = np.random.Generator(np.random.PCG64(seed))
    total, count = np.zeros(resamples), 0
    for vectors in strata:
        scores = np.asarray(vectors, dtype=float)           # (means in the group, items)
        if scores.ndim != 2 or scores.shape[1] == 0:
            return None
        indices = generator.integers(0, scores.shape[1], size=(resamples, scores.shape[1]))
        total += scores[:, indices].mean(axis=2).sum(axis=0)
        count += scores.shape[0]
    return _percentiles(total / count, confidence) if count else None


def exact_mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b items right only in one run, c only in the other; under the null
    each discordant item is one or the other with probability 1/2, so
    p = min(1, 2 * sum_{k <= min(b, c)} C(b + c, k) / 2^(b + c)); 1.0 when there is no discordant item.

    The tail is summed as multiples of its largest term C(n, m) (each term k/(n-k+1) times the one above
    it), in floating point from the exact log of that term: linear in min(b, c), where summing the exact
    binomials grows with the cube of the count (seconds at ten thousand discordant items)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must not be negative, got {b} and {c}")
    total, smaller = b + c, min(b, c)
    if total == 0 or 2 * smaller >= total:
        return 1.0
    ratio, multiples = 1.0, 1.0
    for k in range(smaller, 0, -1):
        ratio *= k / (total - k + 1)
        multiples += ratio
        if ratio < 1e-17 * multiples:
            break
    log_tail = math.log(math.comb(total, smaller)) + math.log(multiples)
    return min(1.0, 2 * math.exp(log_tail - total * math.log(2)))
