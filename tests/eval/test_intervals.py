"""95% intervals and paired tests against values computed by hand."""
import math

import pytest

from videopanda.eval.agreement import cohens_kappa
from videopanda.eval.intervals import (bootstrap_interval, bootstrap_statistic, exact_mcnemar, paired_bootstrap,
                                       percent_interval, wilson_interval)

Z2 = 1.959963984540054 ** 2


@pytest.mark.parametrize("successes, n, low, high", [
    # 0/n: [0, z^2 / (n + z^2)]; n/n: [n / (n + z^2), 1] (the normal approximation gives [0, 0] and [1, 1])
    (0, 10, 0.0, Z2 / (10 + Z2)),
    (10, 10, 10 / (10 + Z2), 1.0),
    (0, 1, 0.0, Z2 / (1 + Z2)),
    # 7/10: centre (0.7 + z^2/20) / (1 + z^2/10) = 0.64448, half 1.41602 * sqrt(0.021 + z^2/400) = 0.24772
    (7, 10, 0.39677, 0.89221),
    # 245/400 (61.25%): centre 0.61143, half 0.04753
    (245, 400, 0.56390, 0.65896),
])
def test_wilson_interval_by_hand(successes, n, low, high):
    interval = wilson_interval(successes, n)
    assert interval == pytest.approx((low, high), abs=5e-5)
    assert 0.0 <= interval[0] <= successes / n <= interval[1] <= 1.0


def test_wilson_edges():
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) is None and percent_interval(0, 0) is None
    assert percent_interval(7, 10) == pytest.approx([39.677, 89.221], abs=5e-3)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


@pytest.mark.parametrize("b, c, p", [
    (1, 6, 2 * (1 + 7) / 2 ** 7),          # 0.125
    (6, 1, 0.125),
    (0, 5, 2 / 2 ** 5),
    (3, 3, 1.0),                           # 2 * P(X <= 3 | 6) = 2 * 42/64 > 1 -> 1
    (0, 0, 1.0),                           # no discordant item: no evidence either way
    (2, 10, 2 * (1 + 12 + 66) / 2 ** 12),
])
def test_exact_mcnemar_by_hand(b, c, p):
    assert exact_mcnemar(b, c) == pytest.approx(p, rel=1e-12)


def test_exact_mcnemar_many_discordant_items_stays_exact():
    # 3000 vs 3100: far beyond floating-point range for 2^n, still a probability
    p = exact_mcnemar(3000, 3100)
    assert 0.2 < p < 0.21 and math.isfinite(p)


def test_bootstrap_is_deterministic_and_brackets_the_mean():
    values = [0, 1, 2, 3, 4, 5, 5, 4, 3, 2]
    first = bootstrap_interval(values)
    assert first == bootstrap_interval(values)            # fixed seed: the same interval every time
    assert first[0] < sum(values) / len(values) < first[1]
    assert bootstrap_interval([3, 3, 3]) == [3.0, 3.0]
    assert bootstrap_interval([]) is None


def test_paired_bootstrap_resamples_items_together():
    first = [0, 1, 2, 3, 4, 5]
    # B is A plus one on every item: every resample's difference is exactly 1, whatever the spread of A
    assert paired_bootstrap(first, [v + 1 for v in first]) == [1.0, 1.0]
    assert paired_bootstrap([], []) is None
    with pytest.raises(ValueError):
        paired_bootstrap([1], [1, 2])


def test_kappa_interval_skips_undefined_resamples():
    # perfect agreement over two labels: every resample holding both labels has kappa 1, those with one
    # label only (kappa undefined) are skipped
    labels = ["yes", "no"] * 5

    def kappa(indices):
        return cohens_kappa([labels[i] for i in indices], [labels[i] for i in indices])

    assert bootstrap_statistic(len(labels), kappa) == [1.0, 1.0]
    assert bootstrap_statistic(0, kappa) is None


def test_mean_of_means_resamples_shared_items_together():
    from videopanda.eval.intervals import bootstrap_mean_of_means

    # two means over the same two items, one over one item: (a + b + 3) / 3 with (a, b) drawn together;
    # both picks of item 0 give (0 + 0 + 3) / 3 = 1 (p = 1/4), of item 1 give (2 + 4 + 3) / 3 = 3
    assert bootstrap_mean_of_means([[[0, 2], [0, 4]], [[3]]]) == [1.0, 3.0]
    assert bootstrap_mean_of_means([[[1, 2]], [[]]]) is None
