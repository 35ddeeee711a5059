"""The statistics checked like code: data simulated with known seed, image and residual variances (the
crossed model of varmix.study.crossed), and the procedure shown to get the known answer.

- Under a null effect the verdict's test (the crossed t AND the pigeonhole bootstrap, both at α) rejects
  at most α, within its Monte Carlo error, whichever variance dominates.
- Each test alone keeps α where the image effect is large, and the same check fails for what the study used
  before: a bootstrap that redraws images inside each seed (nested) and a t test over the seeds' means.
- The crossed t's power at a known effect matches the analytic value (noncentral t).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from varmix.study import crossed, stats

S, N, ALPHA = 5, 200, 0.05
REGIMES = {"seeds dominate": (1.0, 0.0, 1.0), "mixed": (0.5, 1.0, 1.0),
           "images dominate": (0.2, 2.0, 1.0), "images only": (0.02, 1.0, 0.5)}
IMAGE_REGIMES = ("images dominate", "images only")


def _draw(rng: np.random.Generator, sd_seed: float, sd_image: float, sd_res: float, effect: float = 0.0):
    """One study's [seeds, images] paired differences under the crossed model."""
    return (effect + sd_seed * rng.standard_normal((S, 1)) + sd_image * rng.standard_normal((1, N))
            + sd_res * rng.standard_normal((S, N)))


def _rate(test, regime: str, reps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    return sum(bool(test(_draw(rng, *REGIMES[regime]), r)) for r in range(reps)) / reps


def _bound(reps: int) -> float:
    """α plus 2.5 Monte Carlo standard errors of a rate of α over ``reps`` studies."""
    return ALPHA + 2.5 * math.sqrt(ALPHA * (1 - ALPHA) / reps)


def _crossed_t(d, r):
    return crossed.crossed_t(d)["p"] <= ALPHA


def _pigeonhole(d, r):
    return crossed.crossed_bootstrap(list(d), [np.zeros(N)] * S, None, 1, 200, r)["p"] <= ALPHA


def _verdict_test(d, r):
    return _crossed_t(d, r) and _pigeonhole(d, r)


def _nested(d, r):
    """The study's former bootstrap: seeds drawn, then images drawn anew inside each drawn seed."""
    rng = np.random.default_rng(r)
    seeds = rng.integers(0, S, (200, S))
    images = rng.integers(0, N, (200, S, N))
    values = d[seeds[:, :, None], images].mean(axis=(1, 2))
    p = 2 * min((np.count_nonzero(values <= 0) + 1) / 201, (np.count_nonzero(values >= 0) + 1) / 201)
    return p <= ALPHA


def _seed_t(d, r):
    """The study's former t test: over the seeds' means only."""
    return sps.ttest_1samp(d.mean(axis=1), 0.0).pvalue <= ALPHA


@pytest.mark.parametrize("regime", list(REGIMES))
def test_the_verdicts_test_keeps_alpha_under_a_null_effect(regime):
    reps = 400
    assert _rate(_verdict_test, regime, reps, seed=1) <= _bound(reps)


@pytest.mark.parametrize("regime", IMAGE_REGIMES)
def test_each_crossed_test_keeps_alpha_where_images_matter(regime):
    reps = 400
    assert _rate(_crossed_t, regime, reps, seed=2) <= _bound(reps)
    assert _rate(_pigeonhole, regime, reps, seed=3) <= _bound(reps)


@pytest.mark.parametrize("regime", IMAGE_REGIMES)
def test_the_same_check_fails_for_nested_resampling_and_the_seed_t(regime):
    """What the check above would say of the study's former procedures: far above α."""
    reps = 300
    assert _rate(_nested, regime, reps, seed=3) > 2 * ALPHA
    assert _rate(_seed_t, regime, reps, seed=2) > 2 * ALPHA


def test_the_statistic_of_a_whole_image_set_keeps_alpha():
    """A statistic that is not a per-image mean (ECE) goes through augmented_t: check its null rate with
    the mean given as a general callable."""
    rng = np.random.default_rng(4)
    reps, hits = 300, 0
    for r in range(reps):
        d = _draw(rng, *REGIMES["mixed"])
        per = {("a", s): d[s] for s in range(S)} | {("b", s): np.zeros(N) for s in range(S)}
        t, b = stats.crossed_tests(per, "a", "b", np.mean, 1, 200, r)
        hits += t["p"] <= ALPHA and b["p"] <= ALPHA
    assert hits / reps <= _bound(reps)


def test_the_crossed_t_has_the_analytic_power():
    sd_seed, sd_image, sd_res = 0.5, 1.0, 1.0
    effect, reps = 0.6, 600
    rng = np.random.default_rng(5)
    hits = sum(crossed.crossed_t(_draw(rng, sd_seed, sd_image, sd_res, effect))["p"] <= ALPHA for _ in range(reps))
    a, b, e = sd_res ** 2 + N * sd_seed ** 2, sd_res ** 2 + S * sd_image ** 2, sd_res ** 2
    df = (a + b - e) ** 2 / (a * a / (S - 1) + b * b / (N - 1) + e * e / ((S - 1) * (N - 1)))
    se = math.sqrt((a + b - e) / (S * N))
    q = sps.t.ppf(1 - ALPHA / 2, df)
    power = sps.nct.sf(q, df, effect / se) + sps.nct.cdf(-q, df, effect / se)
    assert hits / reps == pytest.approx(power, abs=3 * math.sqrt(power * (1 - power) / reps))
    # and the planned standard error from the true components is the one the power used
    comps = {"var_seed": sd_seed ** 2, "var_image": sd_image ** 2, "var_res": sd_res ** 2}
    assert crossed.planned_se(comps, S, N) == pytest.approx(se)


def test_variance_components_recover_the_simulated_ones():
    rng = np.random.default_rng(6)
    d = 0.7 * rng.standard_normal((40, 1)) + 1.5 * rng.standard_normal((1, 2000)) + 0.5 * rng.standard_normal((40, 2000))
    c = crossed.variance_components(d)
    assert (c["var_seed"], c["var_image"], c["var_res"]) == pytest.approx((0.49, 2.25, 0.25), rel=0.35)


# ----------------------------------------------------------------------------------------------
# seeds nested in VAE seeds (params.yaml's vae_seeds: classifier seed s mixes with the VAE of
# vae_seeds[s % len(vae_seeds)]): D[s, i] = mu + v_g(s) + a_s + b_i + e_si
VAE_S, VAE_V = 10, 3  # the plan's 10 seeds over 3 VAE seeds (groups of 4, 3, 3)
VAE_REGIMES = {"VAE dominates": (1.0, 0.3, 0.0, 1.0), "VAE and images": (0.7, 0.5, 1.0, 1.0),
               "VAE half the seeds'": (0.5, 0.5, 0.5, 1.0), "no VAE": (0.0, 0.5, 0.5, 1.0)}


def _groups(seeds: int = VAE_S, vaes: int = VAE_V) -> list[int]:
    from varmix.core.names import vae_seed_of

    return [vae_seed_of(s, list(range(vaes))) for s in range(seeds)]


def _draw_vae(rng, sd_vae, sd_seed, sd_image, sd_res, seeds=VAE_S, vaes=VAE_V, effect=0.0):
    """One study's [seeds, images] differences with each seed's VAE effect shared by the seeds of its VAE."""
    g = np.array(_groups(seeds, vaes))
    return (effect + sd_vae * rng.standard_normal(vaes)[g][:, None] + sd_seed * rng.standard_normal((seeds, 1))
            + sd_image * rng.standard_normal((1, N)) + sd_res * rng.standard_normal((seeds, N)))


def _vae_rate(test, regime: str, reps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    return sum(bool(test(_draw_vae(rng, *VAE_REGIMES[regime]), r)) for r in range(reps)) / reps


def _nested_t(d, r):
    return crossed.crossed_t(d, groups=_groups())["p"] <= ALPHA


def _nested_verdict_test(d, r):
    boot = crossed.crossed_bootstrap(list(d), [np.zeros(N)] * VAE_S, None, 1, 200, r, groups=_groups())
    return _nested_t(d, r) and boot["p"] <= ALPHA


@pytest.mark.parametrize("regime", list(VAE_REGIMES))
def test_the_verdicts_test_keeps_alpha_with_a_vae_seed_variance(regime):
    reps = 400
    assert _vae_rate(_nested_verdict_test, regime, reps, seed=11) <= _bound(reps)


@pytest.mark.parametrize("regime", list(VAE_REGIMES))
def test_the_crossed_t_over_vae_seeds_keeps_alpha(regime):
    """The t alone (the bootstrap alone cannot: 3 resampled VAE seeds give too narrow a percentile interval,
    crossed module docstring), and the crossed t that ignores the VAE seeds far above α where they matter."""
    reps = 1500
    assert _vae_rate(_nested_t, regime, reps, seed=12) <= _bound(reps)
    if regime == "VAE dominates":
        assert _vae_rate(lambda d, r: crossed.crossed_t(d)["p"] <= ALPHA, regime, 400, seed=13) > 4 * ALPHA


def test_the_vae_seeds_t_and_bootstrap_agree_with_the_crossed_ones_without_vae_seeds():
    """One VAE seed per classifier seed (nothing nested) or one VAE seed for all: the crossed procedures'
    numbers, the same draws."""
    d = _draw_vae(np.random.default_rng(14), *VAE_REGIMES["VAE and images"])
    plain_t = crossed.crossed_t(d)
    plain_b = crossed.crossed_bootstrap(list(d), [np.zeros(N)] * VAE_S, None, 1, 300, 0)
    for groups in (list(range(VAE_S)), [0] * VAE_S):
        t = crossed.crossed_t(d, groups=groups)
        b = crossed.crossed_bootstrap(list(d), [np.zeros(N)] * VAE_S, None, 1, 300, 0, groups=groups)
        assert (t["se"], t["df"], t["p"]) == (plain_t["se"], plain_t["df"], plain_t["p"]) and not t["nested"]
        assert math.isnan(t["vae_share"]) and (b["lo"], b["hi"], b["p"]) == (plain_b["lo"], plain_b["hi"], plain_b["p"])


@pytest.mark.parametrize("regime", ["VAE dominates", "VAE and images", "VAE half the seeds'"])
def test_the_reported_vae_share_is_close_to_the_truth(regime):
    """vae_share = σ²_vae / (σ²_vae + σ²_within) of one seed's difference (σ²_within = σ²_seed + σ²_res/N).
    With 3 VAE seeds one study's σ²_vae rests on 2 degrees of freedom: the components are right on average
    over studies (the share, a ratio of them, is biased low for so few); with 12 VAE seeds of 3 seeds each,
    one study's share is near the truth."""
    sd_vae, sd_seed, sd_image, sd_res = VAE_REGIMES[regime]
    within = sd_seed ** 2 + sd_res ** 2 / N
    truth = sd_vae ** 2 / (sd_vae ** 2 + within)
    rng = np.random.default_rng(15)
    split = [crossed.crossed_t(_draw_vae(rng, *VAE_REGIMES[regime]), groups=_groups()) for _ in range(600)]
    assert float(np.mean([t["var_vae"] for t in split])) == pytest.approx(sd_vae ** 2, rel=0.15)
    assert float(np.mean([t["var_within"] for t in split])) == pytest.approx(within, rel=0.1)
    many = [crossed.vae_components(_draw_vae(rng, *VAE_REGIMES[regime], seeds=36, vaes=12).mean(axis=1),
                                   _groups(36, 12))["vae_share"] for _ in range(200)]
    assert float(np.mean(many)) == pytest.approx(truth, abs=0.06)
    assert crossed.vae_components(np.zeros(4) + np.arange(4), [0, 1, 2, 3])["n_vae_seeds"] == 4


def test_the_vae_split_of_a_statistic_of_a_whole_image_set_keeps_alpha():
    """ECE's route (augmented_t) with the VAE seeds through stats.crossed_tests, the pairing function given."""
    from varmix.core.names import vae_seed_of

    rng = np.random.default_rng(16)
    reps, hits = 300, 0
    for r in range(reps):
        d = _draw_vae(rng, *VAE_REGIMES["VAE half the seeds'"])
        per = {("a", s): d[s] for s in range(VAE_S)} | {("b", s): np.zeros(N) for s in range(VAE_S)}
        t, b = stats.crossed_tests(per, "a", "b", np.mean, 1, 200, r, vae_seed_of=lambda s: vae_seed_of(s, [0, 1, 2]))
        hits += t["p"] <= ALPHA and b["p"] <= ALPHA
    assert hits / reps <= _bound(reps)
