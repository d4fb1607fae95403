"""The statistics the tests check results against, written out from their formulas (not the project's code)."""
from __future__ import annotations

import math

Z95 = 1.959963984540054
"""The standard normal quantile at 0.975."""


def wilson(right: int, total: int) -> list[float]:
    """The 95% Wilson score interval of right / total, in percent."""
    p, z2 = right / total, Z95 ** 2
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = Z95 / (1 + z2 / total) * (p * (1 - p) / total + z2 / (4 * total ** 2)) ** 0.5
    return [100 * max(0.0, centre - half), 100 * min(1.0, centre + half)]


def mcnemar(b: int, c: int) -> float:
    """The two-sided exact McNemar p-value: a binomial test of b against b + c discordant items at 1/2."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n)
