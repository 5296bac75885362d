"""
Checks that weights were DRAWN from a distribution, not that one draw happens to look right.

Each check uses every entry of the tensors given: a Kolmogorov-Smirnov test against the distribution's CDF and the
first two moments, with tolerances from the sample size. At the levels below a correct initialisation fails a check
with probability about 1e-3 (KS) or 1e-5 (moments) per draw; the tests seed their draws, so a pass is reproducible,
and a different seed passes just as well. A wrong scale, a constant, zeros or a wrong shape of distribution fail.
"""

import math

import numpy as np
import torch as th

KS_ALPHA = 1e-3  # significance level of the Kolmogorov-Smirnov test
MOMENT_Z = 4.5  # standard errors allowed for the sample mean and the sample second moment


def _flat(tensors: th.Tensor | list[th.Tensor]) -> np.ndarray:
    tensors = [tensors] if isinstance(tensors, th.Tensor) else tensors
    return np.concatenate([t.detach().double().flatten().cpu().numpy() for t in tensors])


def ks_statistic(samples: np.ndarray, cdf) -> float:
    """sup |F_n(x) - F(x)| of the samples against the (vectorised) CDF ``cdf``."""
    values = cdf(np.sort(samples))
    n = len(values)
    above = np.arange(1, n + 1) / n - values
    below = values - np.arange(n) / n
    return float(max(above.max(), below.max()))


def ks_critical_value(n: int, alpha: float = KS_ALPHA) -> float:
    """Asymptotic critical value of the KS statistic, sqrt(-ln(alpha / 2) / 2) / sqrt(n) (conservative from n ~ 35)."""
    return math.sqrt(-math.log(alpha / 2) / 2) / math.sqrt(n)


def assert_uniform(tensors: th.Tensor | list[th.Tensor], bound: float, min_samples: int = 35) -> None:
    """Every entry in [-bound, bound], and the entries together distributed as U(-bound, bound)."""
    x = _flat(tensors)
    n = x.size
    assert n >= min_samples, f"{n} samples are too few for a distribution test"
    assert np.abs(x).max() <= bound, f"an entry {np.abs(x).max()} lies outside [-{bound}, {bound}]"
    statistic = ks_statistic(x, lambda v: (v + bound) / (2 * bound))
    assert statistic < ks_critical_value(n), f"KS statistic {statistic:.4f} against U(-{bound}, {bound}), n={n}"
    # U(-b, b): mean 0, std b / sqrt(3); x^2 has mean b^2 / 3 and variance b^4 / 5 - b^4 / 9 = 4 b^4 / 45
    mean_se = bound / math.sqrt(3 * n)
    assert abs(x.mean()) < MOMENT_Z * mean_se, f"mean {x.mean()} (standard error {mean_se})"
    square_se = math.sqrt(4 / 45) * bound**2 / math.sqrt(n)
    assert abs((x**2).mean() - bound**2 / 3) < MOMENT_Z * square_se, f"mean square {(x**2).mean()}, expected {bound**2 / 3}"


def assert_normal(tensors: th.Tensor | list[th.Tensor], std: float, min_samples: int = 35) -> None:
    """The entries together distributed as N(0, std^2)."""
    x = _flat(tensors)
    n = x.size
    assert n >= min_samples, f"{n} samples are too few for a distribution test"
    statistic = ks_statistic(x, lambda v: 0.5 * (1 + np.vectorize(math.erf)(v / (std * math.sqrt(2)))))
    assert statistic < ks_critical_value(n), f"KS statistic {statistic:.4f} against N(0, {std}^2), n={n}"
    # N(0, s^2): the mean has standard error s / sqrt(n); x^2 has mean s^2 and variance 2 s^4
    mean_se = std / math.sqrt(n)
    assert abs(x.mean()) < MOMENT_Z * mean_se, f"mean {x.mean()} (standard error {mean_se})"
    square_se = math.sqrt(2) * std**2 / math.sqrt(n)
    assert abs((x**2).mean() - std**2) < MOMENT_Z * square_se, f"mean square {(x**2).mean()}, expected {std**2}"
