"""What a difference between two settings on the same examples means: a paired bootstrap CI and McNemar's test.

    paired(baseline_correct, var_correct)
    -> {"n": 300, "accuracy_a": 0.887, "accuracy_b": 0.9, "difference": 0.013,
        "ci95": [-0.01, 0.037], "a_only": 4, "b_only": 8, "mcnemar_p": 0.388, ...}

`difference` is accuracy(b) - accuracy(a). The 95% interval is the percentile
bootstrap over examples (the same resampled examples for both settings, so the
pairing is kept), seeded: the same inputs give the same interval on every machine.
McNemar's exact test looks only at the discordant examples (right in one
setting, wrong in the other): under "no difference" each is equally likely to
go either way, so the two-sided p-value is the binomial tail
P(X <= min(a_only, b_only)) doubled (capped at 1), X ~ Binomial(a_only + b_only, 1/2).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from math import comb

import numpy as np

from sinklens.errors import ParameterError

BOOTSTRAP = 10_000


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    if a_only < 0 or b_only < 0:
        raise ParameterError(f"discordant counts must be >= 0, got {a_only} and {b_only}")
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = Fraction(sum(comb(n, i) for i in range(k + 1)), 2**n)  # exact, then one rounding
    return float(min(Fraction(1), 2 * tail))


def bootstrap_ci(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray, *, seed: int = 0, resamples: int = BOOTSTRAP,
                 level: float = 0.95) -> tuple[float, float]:  # fmt: skip
    """Percentile bootstrap interval of accuracy(b) - accuracy(a), resampling examples (pairs) with replacement."""
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n = diff.shape[0]
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)  # bounded memory: at most ~16 MB of indices at a time
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def paired(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray, *, seed: int = 0, resamples: int = BOOTSTRAP) -> dict[str, object]:
    """Setting b against setting a on the same examples (`a[i]`, `b[i]`: example i answered correctly)."""
    if len(a) != len(b):
        raise ParameterError(f"paired comparison needs the same examples: {len(a)} against {len(b)}; give both "
                             "settings' results on the same questions, in the same order")
    a_arr, b_arr = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n = int(a_arr.size)
    a_only = int((a_arr & ~b_arr).sum())
    b_only = int((b_arr & ~a_arr).sum())
    low, high = bootstrap_ci(a_arr, b_arr, seed=seed, resamples=resamples)
    return {
        "n": n,
        "accuracy_a": float(a_arr.mean()) if n else float("nan"),
        "accuracy_b": float(b_arr.mean()) if n else float("nan"),
        "difference": float(b_arr.mean() - a_arr.mean()) if n else float("nan"),
        "ci95": [low, high],
        "a_only": a_only,
        "b_only": b_only,
        "mcnemar_p": mcnemar_exact(a_only, b_only),
        "bootstrap": {"resamples": resamples, "seed": seed, "method": "percentile, examples resampled in pairs"},
    }


def describe(comparison: dict[str, object], unit: float = 100.0) -> str:
    """"+1.3 [-1.0, +3.7], p = 0.39" (points of accuracy), for figures and tables."""
    low, high = comparison["ci95"]  # type: ignore[misc]
    p = comparison["mcnemar_p"]
    ptext = f"p = {p:.2g}" if p >= 0.001 else "p < 0.001"  # type: ignore[operator]
    return f"{unit * comparison['difference']:+.1f} [{unit * low:+.1f}, {unit * high:+.1f}], {ptext}"  # type: ignore[operator]
