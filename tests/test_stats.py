"""The statistics that decide the claims: the crossed bootstrap, Holm, verdicts and the whole-family
comparison table (the crossed tests' error rates and power: tests/test_stats_simulation.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from varmix.evaluate import calibration
from varmix.study import stats

SEEDS = (0, 1, 2, 3, 4)


def _runs(values: dict[str, list[float]], metric: str = "acc") -> pd.DataFrame:
    return pd.DataFrame([{"arm": a, "seed": s, metric: v} for a, vs in values.items() for s, v in zip(SEEDS, vs)])


def _per_image(shift: dict[str, float], n: int = 400, seed: int = 0, noise: float = 0.3):
    """Per-image values per (arm, seed): a seed effect and an image effect shared by every arm, plus the
    arm's shift and a little run noise; the true difference of arm a vs b is shift[a] - shift[b]."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 1, n)
    out = {}
    for s in SEEDS:
        seed_effect = rng.normal(0, 0.05)
        for arm, d in shift.items():
            out[(arm, s)] = image + seed_effect + d + rng.normal(0, noise, n)
    return out


# ----------------------------------------------------------------------------------------------
def _scalars(result: dict) -> dict:
    """A bootstrap result without its replicates (an array), for comparing results."""
    return {k: v for k, v in result.items() if k != "values"}


# ----------------------------------------------------------------------------------------------
def test_holm_textbook_example():
    adjusted, reject = stats.holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert reject.tolist() == [True, False, False, True]
    adjusted, _ = stats.holm([0.5, 0.6, 0.01])
    assert adjusted == pytest.approx([1.0, 1.0, 0.03])  # clipped to 1
    with pytest.raises(ValueError, match="p-value 1.2 at position 1 is invalid"):
        stats.holm([0.1, 1.2])
    with pytest.raises(ValueError, match="alpha = 0 is invalid"):
        stats.holm([0.1], alpha=0)


# ----------------------------------------------------------------------------------------------
def test_bootstrap_is_deterministic_and_covers_the_true_difference():
    per = _per_image({"a": 0.10, "b": 0.0})
    r1 = _scalars(stats.crossed_bootstrap(per, "a", "b", None, 1, n_boot=500, seed=7))
    r2 = _scalars(stats.crossed_bootstrap(per, "a", "b", None, 1, n_boot=500, seed=7))
    assert r1 == r2
    assert r1 != _scalars(stats.crossed_bootstrap(per, "a", "b", None, 1, n_boot=500, seed=8))
    assert r1["lo"] < 0.10 < r1["hi"]
    assert r1["lo"] > 0 and r1["p"] == pytest.approx(2 / 501)  # never exactly 0 (Davison & Hinkley)
    flipped = _scalars(stats.crossed_bootstrap(per, "a", "b", None, -1, n_boot=500, seed=7))
    assert (flipped["mean"], flipped["lo"], flipped["hi"]) == pytest.approx((-r1["mean"], -r1["hi"], -r1["lo"]))


def test_bootstrap_interval_shrinks_with_more_images():
    widths = []
    for n in (100, 1600):
        r = stats.crossed_bootstrap(_per_image({"a": 0.1, "b": 0.0}, n=n, noise=1.0), "a", "b", None, 1,
                                         n_boot=400, seed=0)
        widths.append(r["hi"] - r["lo"])
    assert widths[1] < 0.5 * widths[0]


def test_fast_path_equals_the_general_path():
    per = _per_image({"a": 0.05, "b": 0.0}, n=200)
    fast = _scalars(stats.crossed_bootstrap(per, "a", "b", None, -1, n_boot=300, seed=3))
    loop = _scalars(stats.crossed_bootstrap(per, "a", "b", np.mean, -1, n_boot=300, seed=3))
    assert loop == pytest.approx(fast, rel=1e-9, abs=1e-12)


def test_same_image_indices_for_arm_and_rival():
    rng = np.random.default_rng(0)
    per = {}
    for s in SEEDS:
        base = rng.normal(0, 1, 300)
        per[("rival", s)] = base
        per[("arm", s)] = base + 0.25  # the same constant on every image
    for statistic in (None, np.mean):
        r = stats.crossed_bootstrap(per, "arm", "rival", statistic, 1, n_boot=200, seed=1)
        assert r["mean"] == pytest.approx(0.25)
        assert r["lo"] == pytest.approx(0.25, abs=1e-12) and r["hi"] == pytest.approx(0.25, abs=1e-12)


def test_bootstrap_errors_name_the_bad_value():
    per = _per_image({"a": 0.0, "b": 0.0}, n=50)
    with pytest.raises(ValueError, match="arm 'c' has no per-image values; per_image holds arms \\['a', 'b'\\]"):
        stats.crossed_bootstrap(per, "c", "b", None, 1, 10, 0)
    short = dict(per)
    short[("b", 3)] = short[("b", 3)][:40]
    with pytest.raises(ValueError, match="per_image\\[\\('b', 3\\)\\] has 40 images but \\('a', 0\\) has 50"):
        stats.crossed_bootstrap(short, "a", "b", None, 1, 10, 0)
    one = {k: v for k, v in per.items() if k[0] == "a" or k[1] == 0}
    with pytest.raises(ValueError, match="arms 'a' and 'b' share 1 seed\\(s\\) \\[0\\] in per_image"):
        stats.crossed_bootstrap(one, "a", "b", None, 1, 10, 0)
    with pytest.raises(ValueError, match="n_boot = 0 is invalid: expected an integer >= 1"):
        stats.crossed_bootstrap(per, "a", "b", None, 1, 0, 0)
    with pytest.raises(ValueError, match="level = 0 is invalid"):
        stats.crossed_bootstrap(per, "a", "b", None, 1, 10, 0, level=0)
    two_d = {k: np.stack([v, v], 1) for k, v in per.items()}
    with pytest.raises(ValueError, match="statistic=None \\(the mean\\) needs 1-D per-image values"):
        stats.crossed_bootstrap(two_d, "a", "b", None, 1, 10, 0)
    with pytest.raises(ValueError, match="per_image has no run \\('a', 9\\)"):
        stats.crossed_bootstrap(per, "a", "b", None, 1, 10, 0, seeds=[0, 9])


# ----------------------------------------------------------------------------------------------
def test_ece_batch_matches_calibration_ece():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(0, 10, (500,), generator=gen)
    p = torch.softmax(logits, 1)
    conf, pred = p.max(1)
    correct = (pred == labels).double()
    for n_bins in (1, 10, 15):
        assert stats.ece_batch(conf.numpy(), correct.numpy(), n_bins) == pytest.approx(
            calibration.ece(logits, labels, n_bins), abs=1e-12)
    # confidences on bin edges go to the lower bin, as calibration's (lower, upper] bins
    edge = np.array([0.2, 0.1, 1.0])  # 0.2 shares bin (0, 0.2] with 0.1; (0.2, 0.4] would give 0.9 / 3
    ok = np.array([1.0, 0.0, 1.0])
    assert stats.ece_batch(edge, ok, 5) == pytest.approx((abs(0.8 - 0.1) + 0.0) / 3)
    rows = calibration.conf_correct(logits, labels)
    assert rows[:, 1].mean() == pytest.approx(calibration.accuracy(logits, labels))
    assert stats.ECE(15)(rows) == pytest.approx(calibration.ece(logits, labels, 15), abs=1e-12)
    assert stats.ECE(15)(calibration.conf_correct(logits.float().numpy(), labels.numpy())) == pytest.approx(
        calibration.ece(logits.float().numpy(), labels.numpy(), 15), abs=1e-12)
    with pytest.raises(ValueError, match="labels has 3 entries but logits has 500 rows"):
        calibration.conf_correct(logits, labels[:3])
    # batched over rows = one call per row
    idx = np.random.default_rng(0).integers(0, 500, (6, 500))
    batch = stats.ECE(15).batch(rows, idx)
    assert batch == pytest.approx([stats.ECE(15)(rows[i]) for i in idx], abs=1e-12)
    with pytest.raises(ValueError, match="same non-empty shape"):
        stats.ece_batch(edge, ok[:2])
    with pytest.raises(ValueError, match="n_bins = 0 is invalid"):
        stats.ece_batch(edge, ok, 0)


def test_batched_statistic_equals_the_loop():
    rng = np.random.default_rng(1)
    per = {(a, s): np.stack([rng.uniform(0.3, 1, 150), (rng.random(150) < 0.7).astype(float)], 1)
           for a in ("a", "b") for s in SEEDS}
    batched = _scalars(stats.crossed_bootstrap(per, "a", "b", stats.ECE(10), -1, n_boot=300, seed=5))
    ece = stats.ECE(10)
    loop = _scalars(stats.crossed_bootstrap(per, "a", "b", lambda rows: ece(rows), -1, n_boot=300, seed=5))
    assert batched == pytest.approx(loop, rel=1e-9, abs=1e-12)


# ----------------------------------------------------------------------------------------------
def test_verdict_rule():
    assert stats.verdict(0.02, True, True) == "holds"
    assert stats.verdict(-0.02, True, True) == "contradicted"
    assert stats.verdict(0.02, True, False) == "inconclusive"
    assert stats.verdict(-0.02, False, True) == "inconclusive"
    assert stats.verdict(0.0, True, True) == "inconclusive"
    assert stats.verdict(0.001, False, False, True, True) == "equivalent"
    assert stats.verdict(0.001, False, False, True, False) == "inconclusive"
    assert stats.verdict(0.02, True, True, True, True) == "holds"  # a difference found outranks equivalence
    with pytest.raises(ValueError, match="mean = nan is invalid"):
        stats.verdict(float("nan"), True, True)


def _study(n: int = 300):
    """Arms 'best' (clearly higher), 'same' (equal to 'base'), 'worst' (clearly lower) and 'lonely' (one
    seed); per-image correctness-like values and their per-run means."""
    shift = {"base": 0.0, "best": 0.3, "same": 0.0, "worst": -0.3}
    per = _per_image(shift, n=n, noise=0.2)
    per[("lonely", 0)] = per[("base", 0)]
    runs = pd.DataFrame([{"arm": a, "seed": s, "acc": float(v.mean())} for (a, s), v in per.items()])
    return runs, per


def test_compare_verdicts_signs_and_holm():
    runs, per = _study()
    claims = [stats.Claim("accuracy", "acc", 1, None, unit="%", scale=100),
              stats.Claim("error", "acc", -1, np.mean)]
    family = [("best", "base"), ("worst", "base"), ("same", "base"), ("lonely", "base"), ("ghost", "base")]
    t = stats.compare(runs, {"acc": per}, family, claims, n_boot=300, seed=0)
    assert list(t.columns) == stats.COLUMNS
    assert len(t) == len(claims) * len(family)
    v = t.set_index(["claim", "arm"])["verdict"]
    assert v[("accuracy", "best")] == "holds" and v[("accuracy", "worst")] == "contradicted"
    assert v[("error", "best")] == "contradicted" and v[("error", "worst")] == "holds"
    assert v[("accuracy", "same")] == "inconclusive"
    assert v[("accuracy", "lonely")] == "not tested" and v[("accuracy", "ghost")] == "not tested"
    reason = t.set_index(["claim", "arm"])["reason"]
    assert reason[("accuracy", "ghost")] == "ghost did not run"
    assert reason[("accuracy", "lonely")] == "1 shared seed(s); a paired test needs at least 2"
    tested = t[t["verdict"] != "not tested"]
    assert t.loc[t["verdict"] == "not tested", ["t_p_holm", "boot_p_holm"]].isna().all().all()
    for col in ("t_p", "boot_p"):  # Holm over the 6 tested rows (2 claims × 3 pairs), not per claim
        assert tested[f"{col}_holm"].to_numpy() == pytest.approx(stats.holm(tested[col].to_numpy())[0])
    best = t[(t["claim"] == "accuracy") & (t["arm"] == "best")].iloc[0]
    assert best["diff"] == pytest.approx(best["boot_diff"]) and best["diff"] == pytest.approx(0.3, abs=0.05)
    assert best["t_lo"] < best["diff"] < best["t_hi"] and best["boot_lo"] < best["diff"] < best["boot_hi"]
    assert best["n_seeds"] == 5 and best["unit"] == "%" and best["scale"] == 100
    assert best["mde"] > 0 and best["n_images"] == 300


def test_compare_says_equivalent_only_within_the_sesoi():
    """'same' differs from 'base' by 0: equivalent within a generous Δ, inconclusive within a tiny one, and
    never equivalent for a claim without a Δ; a clear difference stays holds whatever Δ."""
    runs, per = _study()
    claims = [stats.Claim("accuracy", "acc", 1)]
    family = [("best", "base"), ("same", "base")]
    wide = stats.compare(runs, {"acc": per}, family, claims, 300, 0, sesoi={"acc": 0.2}).set_index("arm")
    assert wide.loc["same", "verdict"] == "equivalent" and wide.loc["best", "verdict"] == "holds"
    assert wide.loc["same", "tost_p_holm"] <= 0.05 and wide.loc["same", "boot_tost_p_holm"] <= 0.05
    tiny = stats.compare(runs, {"acc": per}, family, claims, 300, 0, sesoi={"acc": 1e-4}).set_index("arm")
    assert tiny.loc["same", "verdict"] == "inconclusive"
    none = stats.compare(runs, {"acc": per}, family, claims, 300, 0).set_index("arm")
    assert none.loc["same", "verdict"] == "inconclusive" and none["tost_p"].isna().all()


def test_compare_errors_before_work():
    runs, per = _study(n=20)
    c = stats.Claim("accuracy", "acc", 1)
    with pytest.raises(ValueError, match="claim 'accuracy': per_image has no entry 'ece'; it has \\['acc'\\]"):
        stats.compare(runs, {"acc": per}, [("best", "base")], [stats.Claim("accuracy", "ece", -1)], 10, 0)
    with pytest.raises(ValueError, match="sesoi\\['acc'\\] = -0.1 is invalid: expected a finite number > 0"):
        stats.compare(runs, {"acc": per}, [("best", "base")], [c], 10, 0, sesoi={"acc": -0.1})
    with pytest.raises(ValueError, match="claim 'accuracy': per_image has no entry 'acc'"):
        stats.compare(runs, {}, [("best", "base")], [c], 10, 0)
    with pytest.raises(ValueError, match="family pair \\('best', 'best'\\) is invalid"):
        stats.compare(runs, {"acc": per}, [("best", "best")], [c], 10, 0)
    with pytest.raises(ValueError, match="n_boot = 0 is invalid"):
        stats.compare(runs, {"acc": per}, [("best", "base")], [c], 0, 0)
    with pytest.raises(ValueError, match="sign = 2 is invalid"):
        stats.Claim("x", "acc", 2)
    missing = {k: v for k, v in per.items() if k != ("best", 2)}
    with pytest.raises(ValueError, match="claim 'accuracy': per_image\\['acc'\\] has no run \\('best', 2\\)"):
        stats.compare(runs, {"acc": missing}, [("best", "base")], [c], 10, 0)
