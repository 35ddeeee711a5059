"""Paired statistics that decide the paper's claims over a crossed design: per-image differences over
seeds × test images, two crossed tests, Holm's correction over the family, and a four-way verdict.

Every arm (a method plus settings) is trained over the same seeds; one seed gives every arm the same
initial weights and data order, and every run is scored on the same test images, so arms are compared
*paired by seed and by image*. For a claim (a metric and the direction the paper says is better) and a
pair (arm, rival), the difference is signed so that a POSITIVE value always means "in the paper's
direction" (the arm better than the rival).

Seeds and images are crossed factors (varmix.study.crossed): an image's effect is shared by every seed.
Two tests per comparison, both over seeds × images:

- **t** (the crossed t, :func:`varmix.study.crossed.crossed_t`): the two-way random-effects variance of
  the mean difference with Satterthwaite's degrees of freedom, for a per-image mean (accuracies, γ); for
  a statistic of the whole image set (ECE, :func:`varmix.study.crossed.augmented_t`), the seeds' variance
  plus the image bootstrap's, with S − 1 degrees of freedom.
- **bootstrap** (:func:`crossed_bootstrap`): Owen's pigeonhole bootstrap, seeds and images drawn
  independently with one image draw shared by every seed and both arms.

tests/test_stats_simulation.py checks the procedure on data with known seed, image and residual
variances: under a null effect the verdict's false-positive rate stays at or below α (within its Monte
Carlo error), each test's rate is checked in the regime it is meant for, and the crossed t's power
matches the analytic value. A t test over the seeds' means, and a bootstrap that redraws images inside
each seed, both fail there when the image effect is large.

The verdict rule (analysis_plan.yaml, fixed before the runs it judges)
----------------------------------------------------------------------
Within one family (every claim × every (arm, rival) pair that ran), the t and the bootstrap p-values
are each Holm–Bonferroni corrected at level ``alpha`` over the whole family; so are the two equivalence
(TOST) p-values against the claim's smallest effect of interest Δ (SESOI). Then:

- **holds**: both tests reject "no difference" after Holm, and the mean difference is positive;
- **contradicted**: both reject after Holm, and the mean difference is negative;
- **equivalent**: otherwise, when the claim has a Δ and both TOST p-values reject "|difference| ≥ Δ"
  after Holm (the difference lies within ±Δ: no difference that matters);
- **inconclusive**: otherwise (the study cannot tell; the MDE column says what it could have found);
- **not tested**: an arm of the pair did not run, or fewer than 2 seeds are shared.

Each tested row also carries the minimum detectable effect (``mde``): the true difference the crossed t
would find with 80% power at Holm's first-step threshold α/m, from the row's own standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from varmix.study import crossed


# ----------------------------------------------------------------------------------------------
# input checks
def _check_level(level: Any, what: str = "level") -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float, np.integer, np.floating)) \
            or not 0.0 < float(level) < 1.0:
        raise ValueError(f"{what} = {level!r} is invalid: expected a number strictly between 0 and 1")
    return float(level)


def _check_sign(sign: Any) -> int:
    if isinstance(sign, bool) or sign not in (1, -1):
        raise ValueError(f"sign = {sign!r} is invalid: expected +1 (higher is better) or -1 (lower is better)")
    return int(sign)


def _check_n_boot(n_boot: Any) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot = {n_boot!r} is invalid: expected an integer >= 1")
    return int(n_boot)


# ----------------------------------------------------------------------------------------------
# calibration error from per-image (confidence, correct) rows
def ece_batch(conf: Any, correct: Any, n_bins: int = 15) -> np.ndarray | float:
    """Expected calibration error of many resamples at once (the bootstrap's vectorised path; for one
    set of rows ``calibration.ece_from_conf_correct`` is the reference), binned as
    :func:`varmix.evaluate.calibration.ece` bins ((lower, upper] equal-width bins, the same edges).

    ``conf`` and ``correct`` have shape ``[..., n]``: the ECE is taken over the last axis, one value per
    leading index (a float for 1-D input). Σ_b (n_b/n)|acc_b − conf_b| = Σ_b |Σ_{i∈b}(correct_i − conf_i)|/n,
    so one weighted bincount per row computes it without a Python loop.
    """
    c = np.asarray(conf, dtype=np.float64)
    k = np.asarray(correct, dtype=np.float64)
    if c.shape != k.shape or c.ndim < 1 or c.shape[-1] < 1:
        raise ValueError(f"conf {c.shape} and correct {k.shape} must have the same non-empty shape [..., n]")
    return _binned_ece(_bins(c, n_bins), k - c, n_bins)


def _bins(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """The bin of each confidence: searchsorted side="left" over calibration's float64 inner edges is
    torch.bucketize(right=False), i.e. bin i holds edges[i] < c <= edges[i+1]."""
    from varmix.evaluate.calibration import bin_edges

    return np.searchsorted(bin_edges(n_bins).numpy()[1:-1], conf, side="left")


def _binned_ece(bins: np.ndarray, gap: np.ndarray, n_bins: int) -> np.ndarray | float:
    """Σ_b |Σ_{i∈b} gap_i| / n over the last axis (gap = correct − confidence), one weighted bincount."""
    lead, n = bins.shape[:-1], bins.shape[-1]
    rows = int(np.prod(lead, dtype=np.int64))
    flat = (np.arange(rows)[:, None] * n_bins + bins.reshape(rows, n)).ravel()
    sums = np.bincount(flat, weights=gap.reshape(-1), minlength=rows * n_bins).reshape(rows, n_bins)
    out = np.abs(sums).sum(axis=1) / n
    return float(out[0]) if not lead else out.reshape(lead)


@dataclass(frozen=True)
class ECE:
    """The ECE of per-image rows ``[n, 2]`` = (confidence, correct; ``calibration.conf_correct``), as a bootstrap statistic: calling it
    gives one float; ``batch(rows, idx)`` gives one ECE per row of an index matrix ``[B, n]`` at once."""

    n_bins: int = 15

    def __call__(self, rows: np.ndarray) -> float:
        rows = _conf_rows(rows)
        return float(ece_batch(rows[:, 0], rows[:, 1], self.n_bins))

    def batch(self, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
        # bins and gaps once per image, then gathered: the bin of an image does not change when resampled
        rows = _conf_rows(rows).astype(np.float64)
        bins = _bins(rows[:, 0], self.n_bins)
        return _binned_ece(bins[idx], (rows[:, 1] - rows[:, 0])[idx], self.n_bins)


def _conf_rows(rows: Any) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != 2:
        raise ValueError(f"ECE needs per-image rows [n, 2] = (confidence, correct), got shape {rows.shape}")
    return rows


# ----------------------------------------------------------------------------------------------
# the hierarchical bootstrap
def _bootstrap_inputs(per_image: Mapping[tuple[str, int], Any], arm: str, rival: str,
                      seeds: Sequence[int] | None, fast: bool):
    """The shared seeds and the per-seed arrays of both arms, checked before any resampling."""
    keys = list(per_image)
    ran = sorted({k[0] for k in keys})
    for name in (arm, rival):
        if name not in ran:
            raise ValueError(f"arm {name!r} has no per-image values; per_image holds arms {ran}")
    if arm == rival:
        raise ValueError(f"arm and rival are both {arm!r}: expected two different arms")
    if seeds is None:
        seeds = sorted({s for a, s in keys if a == arm} & {s for a, s in keys if a == rival})
    else:
        seeds = sorted(int(s) for s in seeds)
        for name in (arm, rival):
            for s in seeds:
                if (name, s) not in per_image:
                    raise ValueError(f"per_image has no run ({name!r}, {s}); expected one per arm and seed")
    if len(seeds) < 2:
        raise ValueError(f"arms {arm!r} and {rival!r} share {len(seeds)} seed(s) {seeds} in per_image: "
                         f"the bootstrap needs at least 2")
    arrays = {}
    n_images = None
    for name in (arm, rival):
        for s in seeds:
            a = np.asarray(per_image[(name, s)])
            if a.ndim < 1 or a.shape[0] < 1:
                raise ValueError(f"per_image[({name!r}, {s})] has shape {a.shape}: expected images on the first axis")
            if fast and a.ndim != 1:
                raise ValueError(f"per_image[({name!r}, {s})] has shape {a.shape}: statistic=None (the mean) "
                                 f"needs 1-D per-image values")
            if n_images is None:
                n_images, first = a.shape[0], (name, s)
            elif a.shape[0] != n_images:
                raise ValueError(f"per_image[({name!r}, {s})] has {a.shape[0]} images but {first} has "
                                 f"{n_images}: every run must score the same test images")
            arrays[(name, s)] = a
    return seeds, arrays, n_images


def crossed_bootstrap(per_image: Mapping[tuple[str, int], Any], arm: str, rival: str,
                      statistic: Callable[[np.ndarray], float] | None, sign: int, n_boot: int,
                      seed: int, level: float = 0.95, seeds: Sequence[int] | None = None,
                      vae_seed_of: Callable[[int], int] | None = None) -> dict[str, Any]:
    """The pigeonhole bootstrap (:func:`varmix.study.crossed.crossed_bootstrap`) of ``sign * (statistic(arm)
    - statistic(rival))`` over ``per_image[(arm, seed)]`` arrays (images on the first axis, the same images in
    the same order for every run), over ``seeds`` (default: every seed both arms have). ``statistic``: None
    for the mean of 1-D values, an object with ``batch`` (e.g. :class:`ECE`), or a callable; all three
    draw the same random numbers from ``np.random.default_rng(seed)``, so they agree. ``vae_seed_of``: the
    VAE seed each seed used (params' ``vae_seed_of``): seeds nested in VAE seeds (crossed module docstring)."""
    level = _check_level(level)
    sign = _check_sign(sign)
    n_boot = _check_n_boot(n_boot)
    if statistic is not None and not callable(statistic):
        raise ValueError(f"statistic = {statistic!r} is invalid: expected None (the mean) or a callable")
    seeds, arrays, _ = _bootstrap_inputs(per_image, arm, rival, seeds, statistic is None)
    return crossed.crossed_bootstrap([arrays[(arm, s)] for s in seeds], [arrays[(rival, s)] for s in seeds],
                                     statistic, sign, n_boot, seed, level, _groups(seeds, vae_seed_of))


def _groups(seeds: Sequence[int], vae_seed_of: Callable[[int], int] | None) -> list[int] | None:
    return None if vae_seed_of is None else [int(vae_seed_of(s)) for s in seeds]


def crossed_tests(per_image: Mapping[tuple[str, int], Any], arm: str, rival: str,
                  statistic: Callable[[np.ndarray], float] | None, sign: int, n_boot: int, seed: int,
                  level: float = 0.95, seeds: Sequence[int] | None = None,
                  vae_seed_of: Callable[[int], int] | None = None) -> tuple[dict, dict]:
    """(the crossed t, the pigeonhole bootstrap) of one comparison (module docstring); with ``vae_seed_of``
    both treat the seeds as nested in VAE seeds, and the t's result holds the VAE split
    (:func:`varmix.study.crossed.vae_components`)."""
    boot = crossed_bootstrap(per_image, arm, rival, statistic, sign, n_boot, seed, level, seeds, vae_seed_of)
    seeds, arrays, _ = _bootstrap_inputs(per_image, arm, rival, seeds, statistic is None)
    groups = _groups(seeds, vae_seed_of)
    if statistic is None:
        d = np.stack([sign * (arrays[(arm, s)].astype(np.float64) - arrays[(rival, s)].astype(np.float64))
                      for s in seeds])
        return crossed.crossed_t(d, level, groups), boot
    per_seed = [sign * (statistic(arrays[(arm, s)]) - statistic(arrays[(rival, s)])) for s in seeds]
    return crossed.augmented_t(per_seed, boot["image_var"], level, groups), boot


# ----------------------------------------------------------------------------------------------
# multiplicity and the verdict
def holm(pvalues: Sequence[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm–Bonferroni step-down: adjusted p-values (in the input order; monotone in the sorted order,
    ≤ 1) and which hypotheses are rejected at family-wise level ``alpha``. Hand-written (a few lines)
    because scipy has no Holm and statsmodels is not a dependency."""
    alpha = _check_level(alpha, "alpha")
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    bad = np.nonzero(~((p >= 0) & (p <= 1)))[0]
    if bad.size:
        raise ValueError(f"p-value {float(p[bad[0]])!r} at position {int(bad[0])} is invalid: expected 0 <= p <= 1")
    m = p.size
    if m == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted, adjusted <= alpha


def verdict(mean: float, reject_t: bool, reject_boot: bool, equivalent_t: bool = False,
            equivalent_boot: bool = False) -> str:
    """The rule (module docstring): "holds" when both tests reject after Holm and ``mean`` > 0 (the
    paper's direction), "contradicted" when both reject and ``mean`` < 0, else "equivalent" when both
    equivalence tests reject after Holm, else "inconclusive"."""
    if not math.isfinite(mean):
        raise ValueError(f"mean = {mean!r} is invalid: expected a finite number")
    if reject_t and reject_boot and mean > 0:
        return "holds"
    if reject_t and reject_boot and mean < 0:
        return "contradicted"
    if equivalent_t and equivalent_boot:
        return "equivalent"
    return "inconclusive"


# ----------------------------------------------------------------------------------------------
# the whole family
@dataclass(frozen=True)
class Claim:
    """One of the paper's claims as a test: ``metric`` is the column of the runs table (and the key of
    its per-image arrays), ``sign`` +1 when higher is better, -1 when lower is better; ``statistic`` the
    bootstrap statistic over per-image arrays (None: the mean of 1-D values; :class:`ECE` for
    calibration); ``label``, ``unit`` and ``scale`` (e.g. 100 for "%") are for display."""

    name: str
    metric: str
    sign: int
    statistic: Callable[[np.ndarray], float] | None = None
    label: str = ""
    unit: str = ""
    scale: float = 1.0

    def __post_init__(self):
        _check_sign(self.sign)
        if not self.name or not self.metric:
            raise ValueError(f"claim {self!r}: name and metric must be non-empty")


COLUMNS = ["claim", "metric", "arm", "rival", "n_seeds", "n_images", "diff", "t_se", "t_df", "t_lo", "t_hi", "t_p",
           "t_p_holm", "boot_diff", "boot_lo", "boot_hi", "boot_p", "boot_p_holm", "mde", "sesoi", "tost_p",
           "tost_p_holm", "boot_tost_p", "boot_tost_p_holm", "n_vae_seeds", "vae_var", "vae_within_var", "vae_share",
           "vae_share_of_mean", "boot_nested", "verdict", "reason", "label", "unit", "scale"]


def compare(runs: pd.DataFrame, per_image: Mapping[str, Mapping[tuple[str, int], Any]],
            family: Sequence[tuple[str, str]], claims: Sequence[Claim], n_boot: int, seed: int,
            alpha: float = 0.05, level: float = 0.95, sesoi: Mapping[str, float] | None = None,
            power: float = 0.8, vae_seed_of: Callable[[int], int] | None = None) -> pd.DataFrame:
    """Every claim × (arm, rival) pair: the crossed t and the pigeonhole bootstrap over seeds × images
    (from ``per_image[claim.metric][(arm, seed)]``), Holm over all tested rows (separately for each test),
    the equivalence tests against ``sesoi[claim.metric]`` (Δ, in the metric's own units; a claim without
    one is never "equivalent"), the minimum detectable effect at ``power`` and the verdict (module
    docstring).

    A pair is "not tested" (with a ``reason``) when an arm has no runs or the arms share fewer than 2
    seeds (``runs``: one row per run, columns arm and seed). Both tests use the seeds both arms ran. Every
    row's bootstrap uses ``seed``, so a row's numbers do not depend on the other rows.

    ``vae_seed_of`` (params' ``vae_seed_of``: the VAE seed each classifier seed mixed with): both tests treat
    the seeds as nested in VAE seeds (varmix.study.crossed), and each row says how much of the difference's
    variance the VAE seed carries: ``vae_var`` and ``vae_within_var`` (σ²_vae and the seeds' within a VAE
    seed, of one seed's difference), ``vae_share`` (σ²_vae's share of the two) and ``vae_share_of_mean``
    (the VAE term's share of the mean difference's variance, the image term included); NaN where it cannot
    be estimated (one VAE seed among the shared seeds, or no VAE seed with two of them).
    """
    n_boot = _check_n_boot(n_boot)
    alpha = _check_level(alpha, "alpha")
    level = _check_level(level)
    power = _check_level(power, "power")
    sesoi = dict(sesoi or {})
    for metric, margin in sesoi.items():
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 < margin < math.inf:
            raise ValueError(f"sesoi[{metric!r}] = {margin!r} is invalid: expected a finite number > 0")
    for col in ("arm", "seed"):
        if col not in runs.columns:
            raise ValueError(f"column {col!r} is not among the runs' columns {list(runs.columns)}")
    names = [c.name for c in claims]
    if not claims or len(set(names)) != len(names):
        raise ValueError(f"claims {names} must be a non-empty list of distinct names")
    for c in claims:
        if c.metric not in per_image:
            raise ValueError(f"claim {c.name!r}: per_image has no entry {c.metric!r}; it has {list(per_image)}")
    for pair in family:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(f"family pair {pair!r} is invalid: expected (arm, rival) with two different arms")

    seeds_of = {a: set(g["seed"].astype(int)) for a, g in runs.groupby("arm", sort=False)}
    for c in claims:  # every per-image run a test will need, before any resampling
        for arm, rival in family:
            for name in (arm, rival):
                for s in sorted(seeds_of.get(arm, set()) & seeds_of.get(rival, set())):
                    if (name, s) not in per_image[c.metric]:
                        raise ValueError(f"claim {c.name!r}: per_image[{c.metric!r}] has no run ({name!r}, {s}), "
                                         f"which the runs table has; expected one per arm and seed")
    rows = []
    for c in claims:
        for arm, rival in family:
            row = {"claim": c.name, "metric": c.metric, "arm": arm, "rival": rival, "verdict": "not tested",
                   "reason": "", "label": c.label or c.name, "unit": c.unit, "scale": c.scale,
                   "sesoi": sesoi.get(c.metric, np.nan)}
            missing = [a for a in (arm, rival) if a not in seeds_of]
            shared = sorted(seeds_of.get(arm, set()) & seeds_of.get(rival, set()))
            row["n_seeds"] = len(shared)
            if missing:
                row["reason"] = f"{', '.join(missing)} did not run"
            elif len(shared) < 2:
                row["reason"] = f"{len(shared)} shared seed(s); a paired test needs at least 2"
            else:
                t, b = crossed_tests(per_image[c.metric], arm, rival, c.statistic, c.sign, n_boot, seed, level,
                                     seeds=shared, vae_seed_of=vae_seed_of)
                if vae_seed_of is not None:
                    row.update(n_vae_seeds=t["n_vae_seeds"], vae_var=t["var_vae"], vae_within_var=t["var_within"],
                               vae_share=t["vae_share"], vae_share_of_mean=t["vae_share_of_mean"],
                               boot_nested=b["nested"])
                row.update(n_images=len(np.asarray(per_image[c.metric][(arm, shared[0])])), diff=t["mean"],
                           t_se=t["se"], t_df=t["df"], t_lo=t["lo"], t_hi=t["hi"], t_p=t["p"],
                           boot_diff=b["mean"], boot_lo=b["lo"], boot_hi=b["hi"], boot_p=b["p"], verdict="")
                if c.metric in sesoi:
                    row.update(tost_p=crossed.tost_p(t["mean"], t["se"], t["df"], sesoi[c.metric]),
                               boot_tost_p=crossed.tost_boot_p(b["values"], sesoi[c.metric]))
            rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    tested = table["verdict"] != "not tested"
    m = int(tested.sum())
    if m:
        for col in ("t_p", "boot_p"):
            table.loc[tested, f"{col}_holm"] = holm(table.loc[tested, col].to_numpy(), alpha)[0]
        equivalence = tested & table["tost_p"].notna()
        for col in ("tost_p", "boot_tost_p"):
            if equivalence.any():
                table.loc[equivalence, f"{col}_holm"] = holm(table.loc[equivalence, col].to_numpy(), alpha)[0]
        table.loc[tested, "mde"] = [crossed.mde(r.t_se, r.t_df, alpha / m, power) for r in table[tested].itertuples()]
        table.loc[tested, "verdict"] = [
            verdict(r.diff, r.t_p_holm <= alpha, r.boot_p_holm <= alpha,
                    bool(r.tost_p_holm <= alpha), bool(r.boot_tost_p_holm <= alpha))
            for r in table[tested].itertuples()]
    table["n_seeds"] = table["n_seeds"].astype(int)
    return table
