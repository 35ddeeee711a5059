"""Inference for a crossed design: every seed (and both arms of a pair) is scored on the same test images.

Seeds and test images are crossed random factors. A paired difference per seed and image,
``D[s, i] = sign * (arm - rival)``, follows the two-way random-effects model
``D[s, i] = mu + a_s + b_i + e_si`` (a: the seed, b: the image, shared by every seed, e: their
interaction), so the mean difference over S seeds and N images has variance

    Var(mean) = σ²_seed / S + σ²_image / N + σ²_res / (S·N).

A t test over the seeds' means sees only the first and last terms: the image effect, shared by every seed,
never varies between seeds, and resampling images independently inside each seed (a nested bootstrap)
divides it by S. Both are too narrow whenever the image effect is large (it is, for corruptions and PGD).
Two procedures here keep it:

- :func:`crossed_t`: the two-way ANOVA estimate of the variance above, (MS_seed + MS_image − MS_res)/(S·N),
  with Satterthwaite's degrees of freedom (statistics with a per-image mean: accuracies, γ);
  :func:`augmented_t` for a statistic of the whole image set (ECE), whose per-seed values are not a mean
  over images: the seeds' variance plus the image bootstrap's variance of the seed-mean difference,
  with S − 1 degrees of freedom (conservative: the residual is counted in both terms);
- :func:`crossed_bootstrap`: Owen's (2007) "pigeonhole" bootstrap, which draws seeds and images
  independently, with replacement, and keeps them crossed (one image draw shared by every drawn seed and
  by both arms). It is mildly conservative: the residual term is counted more than once.

Written here because no library in the environment (scipy, statsmodels is not one) has a crossed
bootstrap or a two-way random-effects test with Satterthwaite's df.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import stats as _sps

_CHUNK = 256  # bootstrap replicates per block (bounds memory: chunk × images)


def _check_matrix(d: Any) -> np.ndarray:
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] < 2 or d.shape[1] < 2:
        raise ValueError(f"differences of shape {d.shape}: expected a [seeds, images] matrix, at least 2 x 2")
    if not np.isfinite(d).all():
        raise ValueError("differences must be finite")
    return d


def variance_components(d: Any) -> dict[str, float]:
    """The two-way ANOVA of a [seeds, images] matrix without replication: the mean squares and the
    method-of-moments variance components (σ²_seed, σ²_image, σ²_res; negative estimates set to 0)."""
    d = _check_matrix(d)
    S, N = d.shape
    grand = d.mean()
    rows, cols = d.mean(axis=1), d.mean(axis=0)
    ms_seed = N * float(((rows - grand) ** 2).sum()) / (S - 1)
    ms_image = S * float(((cols - grand) ** 2).sum()) / (N - 1)
    resid = d - rows[:, None] - cols[None, :] + grand
    ms_res = float((resid ** 2).sum()) / ((S - 1) * (N - 1))
    return {"seeds": S, "images": N, "ms_seed": ms_seed, "ms_image": ms_image, "ms_res": ms_res,
            "var_seed": max(0.0, (ms_seed - ms_res) / N), "var_image": max(0.0, (ms_image - ms_res) / S),
            "var_res": ms_res}


def _t_result(mean: float, var: float, df: float, level: float) -> dict[str, float]:
    if var <= 0 or not math.isfinite(var):
        return {"mean": mean, "se": 0.0, "df": df, "lo": mean, "hi": mean, "p": 0.0 if mean != 0 else 1.0}
    se = math.sqrt(var)
    q = float(_sps.t.ppf(0.5 + level / 2, df))
    p = float(2 * _sps.t.sf(abs(mean) / se, df))
    return {"mean": mean, "se": se, "df": df, "lo": mean - q * se, "hi": mean + q * se, "p": min(p, 1.0)}


def crossed_t(d: Any, level: float = 0.95) -> dict[str, float]:
    """The mean of a [seeds, images] difference matrix, its standard error under the crossed model
    (module docstring), Satterthwaite's degrees of freedom, the ``level`` t interval and the two-sided
    p-value of "mean = 0".

    Var(mean)·S·N = (MS_seed − MS_res) + (MS_image − MS_res) + MS_res; a component whose estimate is
    negative (its mean square below the residual's) is taken as 0, the usual truncation, so that the
    standard error and the degrees of freedom rest on the mean squares that carry it."""
    d = _check_matrix(d)
    c = variance_components(d)
    S, N = d.shape
    a, b, e = c["ms_seed"], c["ms_image"], c["ms_res"]
    terms = [(1.0, a, S - 1) if a > e else (0.0, a, S - 1), (1.0, b, N - 1) if b > e else (0.0, b, N - 1)]
    ce = 1.0 - sum(k for k, _, _ in terms)  # -1, 0 or +1: the residual's coefficient
    parts = [(k * ms, df) for k, ms, df in terms] + [(ce * e, (S - 1) * (N - 1))]
    total = sum(x for x, _ in parts)
    denom = sum(x * x / df for x, df in parts)
    df = total * total / denom if denom > 0 else float(S - 1)
    return _t_result(float(d.mean()), total / (S * N), max(df, 1.0), level)


def augmented_t(per_seed: Any, image_var: float, level: float = 0.95) -> dict[str, float]:
    """A t interval for a statistic of the whole image set (ECE): the per-seed differences' variance over
    S seeds plus ``image_var``, the image bootstrap's variance of their mean, with S − 1 degrees of
    freedom."""
    x = np.asarray(per_seed, dtype=np.float64).ravel()
    if x.size < 2 or not np.isfinite(x).all():
        raise ValueError(f"per-seed differences {x.tolist()}: expected at least 2 finite values")
    if not (math.isfinite(image_var) and image_var >= 0):
        raise ValueError(f"image_var = {image_var!r} is invalid: expected a finite number >= 0")
    return _t_result(float(x.mean()), float(x.var(ddof=1)) / x.size + image_var, float(x.size - 1), level)


def _draws(rng: np.random.Generator, S: int, N: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One block of pigeonhole replicates: seed counts [n, S] and image indices [n, N]."""
    seeds = rng.integers(0, S, size=(n, S))
    counts = np.zeros((n, S))
    np.add.at(counts, (np.arange(n)[:, None], seeds), 1.0)
    return counts, rng.integers(0, N, size=(n, N))


def crossed_bootstrap(arm: Sequence[Any], rival: Sequence[Any], statistic: Callable | None, sign: int,
                      n_boot: int, seed: int, level: float = 0.95) -> dict[str, Any]:
    """Pigeonhole bootstrap of ``sign * (statistic(arm) − statistic(rival))`` averaged over seeds.

    ``arm[k]`` and ``rival[k]`` are seed k's per-image arrays (images on the first axis, the same images
    in the same order for every run and both arms). A replicate draws S seeds and N images, each with
    replacement and independently; the image draw is shared by every drawn seed and both arms.
    ``statistic``: None for the mean of 1-D values, an object with ``batch(arr, idx [B, N]) -> [B]``
    (e.g. ``stats.ECE``), or a callable ``arr -> float``.

    Returns ``mean`` (all seeds and images), ``lo``/``hi`` (percentile interval), ``p`` (two-sided:
    2·min(share ≤ 0, share ≥ 0), each (k + 1)/(B + 1)), ``se`` (the replicates' sd), ``values`` (the B
    replicates, for equivalence tests) and ``image_var`` (the variance of the seed-mean difference over
    the image draws alone, every seed kept: :func:`augmented_t`'s image term)."""
    S = len(arm)
    if S < 2 or len(rival) != S:
        raise ValueError(f"{S} arm and {len(rival)} rival runs: expected the same seeds, at least 2")
    arrays = [np.asarray(a) for a in (*arm, *rival)]
    N = arrays[0].shape[0]
    if any(a.shape[0] != N for a in arrays) or N < 2:
        raise ValueError(f"per-image arrays with {sorted({a.shape[0] for a in arrays})} images: expected the "
                         f"same images (at least 2) in every run")
    batch = getattr(statistic, "batch", None)
    if statistic is None:
        d = np.stack([sign * (np.asarray(a, np.float64) - np.asarray(r, np.float64)) for a, r in zip(arm, rival)])
        observed = float(d.mean())
    else:
        per_seed = [sign * (statistic(a) - statistic(r)) for a, r in zip(arm, rival)]
        observed = float(np.mean(per_seed))
    rng = np.random.default_rng(seed)
    values, image_only = np.empty(n_boot), np.empty(n_boot)
    for start in range(0, n_boot, _CHUNK):
        stop = min(start + _CHUNK, n_boot)
        counts, idx = _draws(rng, S, N, stop - start)
        if statistic is None:
            per = d[:, idx].mean(axis=2).T                              # [block, S]: each seed on the draw
        elif batch is not None:
            per = np.stack([sign * (np.asarray(batch(a, idx)) - np.asarray(batch(r, idx)))
                            for a, r in zip(arm, rival)], axis=1)
        else:
            per = np.array([[sign * (statistic(a[i]) - statistic(r[i])) for a, r in zip(arm, rival)] for i in idx])
        values[start:stop] = (counts * per).sum(axis=1) / S
        image_only[start:stop] = per.mean(axis=1)
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    below = (np.count_nonzero(values <= 0) + 1) / (n_boot + 1)
    above = (np.count_nonzero(values >= 0) + 1) / (n_boot + 1)
    return {"mean": observed, "lo": float(lo), "hi": float(hi), "p": float(min(1.0, 2 * min(below, above))),
            "se": float(values.std(ddof=1)), "values": values, "image_var": float(image_only.var(ddof=1)),
            "n_boot": n_boot}


def tost_p(mean: float, se: float, df: float, margin: float) -> float:
    """Two one-sided tests of |true difference| ≥ ``margin`` (Schuirmann 1987): the larger one-sided
    p-value; small when the difference lies within ±margin."""
    if not margin > 0:
        raise ValueError(f"margin = {margin!r} is invalid: expected a number > 0")
    if se <= 0:
        return 0.0 if abs(mean) < margin else 1.0
    lower = float(_sps.t.sf((mean + margin) / se, df))   # H0: diff <= -margin
    upper = float(_sps.t.cdf((mean - margin) / se, df))  # H0: diff >= +margin
    return max(lower, upper)


def tost_boot_p(values: np.ndarray, margin: float) -> float:
    """The bootstrap's two one-sided tests: the larger share of replicates at or beyond −margin / +margin."""
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    return float(max((np.count_nonzero(v <= -margin) + 1) / (n + 1), (np.count_nonzero(v >= margin) + 1) / (n + 1)))


def mde(se: float, df: float, alpha: float, power: float = 0.8) -> float:
    """The smallest true difference a two-sided t test at level ``alpha`` detects with probability
    ``power``: (t_{1−α/2} + t_{power})·se (the usual normal-theory approximation with t quantiles)."""
    return (float(_sps.t.ppf(1 - alpha / 2, df)) + float(_sps.t.ppf(power, df))) * se


def planned_se(components: Mapping[str, float], seeds: int, images: int) -> float:
    """The crossed standard error of a mean difference over ``seeds`` × ``images`` from a pilot's variance
    components (:func:`variance_components`)."""
    return math.sqrt(components["var_seed"] / seeds + components["var_image"] / images
                     + components["var_res"] / (seeds * images))
