"""The report's tables and verdict summaries, the method figure's mixing helper, and the figures."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from varmix.learn import mixing
from varmix.learn.vae import ConvVAE, latent_metrics
from varmix.study import figures, paper, report, stats


def _runs():
    return report.per_run({
        "erm-s0": {"acc": 0.50, "ece": 0.20}, "erm-s1": {"acc": 0.54, "ece": 0.22},
        "mixup_half-s0": {"acc": 0.60, "ece": 0.10}, "mixup_half-s1": {"acc": 0.62, "ece": 0.12},
        "varmixup2-s0": {"acc": 0.70, "ece": 0.15}, "varmixup2-s1": {"acc": 0.71, "ece": 0.13},
        "wall_seconds": 3.0, "2mixup-s0": {"acc": 0.1}, "Mixup-s0": {"acc": 0.1}, "erm-s": {"acc": 0.1},
    })


def test_per_run_parses_arm_keys_and_ignores_the_rest():
    runs = _runs()
    assert list(runs.columns) == ["arm", "seed", "acc", "ece"]
    assert runs[["arm", "seed"]].values.tolist() == [["erm", 0], ["erm", 1], ["mixup_half", 0],
                                                     ["mixup_half", 1], ["varmixup2", 0], ["varmixup2", 1]]
    with pytest.raises(ValueError, match="no '<arm>-s<seed>' entries"):
        report.per_run({"wall_seconds": 1.0})


def test_mean_std_and_formatting():
    t = report.mean_std(_runs(), ["acc", "ece"], ["varmixup2", "erm", "mixup_half", "cutmix"])
    assert list(t.index) == ["varmixup2", "erm", "mixup_half"]
    assert t.loc["erm", ("acc", "mean")] == pytest.approx(0.52)
    assert t.loc["erm", ("acc", "std")] == pytest.approx(math.sqrt(0.0008))
    f = report.formatted(t, scale={"acc": 100})
    assert f.loc["erm", "acc"] == "52.00 ± 2.83"
    assert f.loc["mixup_half", "ece"] == "0.1100 ± 0.0141"
    one = report.formatted(report.mean_std(_runs().query("seed == 0"), ["acc"], ["erm"]), scale={"acc": 100})
    assert one.loc["erm", "acc"] == "50.00"


def _compared():
    runs = pd.DataFrame([{"arm": a, "seed": s, "acc": base + 0.01 * s + (0.002 if s % 2 else 0)}
                         for a, base in (("erm", 0.4), ("mixup_half", 0.55), ("varmixup_full", 0.75))
                         for s in range(5)])
    rng = np.random.default_rng(0)
    per = {(a, s): (rng.random(400) < v).astype(float) for a, s, v in runs[["arm", "seed", "acc"]].itertuples(index=False)}
    claims = [stats.Claim("robustness", "acc", 1, label="1. robustness", unit="%", scale=100),
              stats.Claim("error", "acc", -1, label="error")]
    family = [("varmixup_full", "mixup_half"), ("varmixup_full", "erm"), ("varmixup_full", "cutmix")]
    return stats.compare(runs, {"acc": per}, family, claims, n_boot=200, seed=0)


def test_verdict_summary_is_claim_by_pair():
    table = _compared()
    v = report.verdict_summary(table)
    assert list(v.index) == ["robustness", "error"]
    assert list(v.columns) == ["varmixup_full vs mixup_half", "varmixup_full vs erm", "varmixup_full vs cutmix"]
    assert v.loc["robustness", "varmixup_full vs erm"] == "holds" == table.loc[1, "verdict"]
    assert v.loc["error", "varmixup_full vs mixup_half"] == "contradicted" == table.loc[3, "verdict"]
    assert v.loc["error", "varmixup_full vs cutmix"] == "not tested"
    with pytest.raises(ValueError, match="columns \\['rival'\\] are not among the table's columns"):
        report.verdict_summary(table.drop(columns="rival"))


def test_formatted_comparisons_scale_units_and_reasons():
    table = _compared()
    f = report.formatted_comparisons(table)
    first = table.iloc[0]
    assert f.loc[0, "claim"] == "1. robustness" and f.loc[0, "pair"] == "varmixup_full vs mixup_half"
    assert f.loc[0, "difference"] == f"{first['diff'] * 100:+.3g}%"
    assert f.loc[0, "crossed t 95% CI"] == f"[{first['t_lo'] * 100:+.3g}, {first['t_hi'] * 100:+.3g}]"
    assert f.loc[0, "bootstrap p (Holm)"] == f"{first['boot_p_holm']:.3g}"
    assert f.loc[0, "MDE"] == f"{first['mde'] * 100:.3g}%" and f.loc[0, "images"] == 400
    assert f.loc[0, "equivalence p (Holm: t, bootstrap)"] == "–"  # no smallest effect of interest given
    assert f.loc[2, "verdict"] == "not tested (cutmix did not run)" and f.loc[2, "crossed t 95% CI"] == "–"


def test_forest_plot_one_panel_per_claim_one_row_per_pair():
    table = _compared()
    fig = figures.forest_plot(table)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    top = fig.axes[0]
    top_down = sorted(top.get_yticklabels(), key=lambda t: -t.get_position()[1])
    assert [t.get_text() for t in top_down] == [  # the table's order, read from the top, in display names
        "VarMixup (full) vs Mixup (half)", "VarMixup (full) vs ERM", "VarMixup (full) vs CutMix"]
    assert top.get_title(loc="left") == "1. robustness"
    assert top.get_xlabel() == "difference (positive = paper's direction), %"
    points = [l for l in top.get_lines() if l.get_marker() == "o"]
    assert sorted(float(l.get_xdata()[0]) for l in points) == pytest.approx(sorted(table["diff"].iloc[:2] * 100))
    assert {l.get_color() for l in points} == {figures.VERDICT_COLOURS["holds"]}
    assert any(t.get_text() == "not tested: cutmix did not run" for t in top.texts)
    with pytest.raises(ValueError, match="columns \\['boot_lo'\\] are not among the table's columns"):
        figures.forest_plot(table.drop(columns="boot_lo"))


def test_gamma_columns_in_eps_order():
    assert report.gamma_columns(["method", "gamma_16", "gamma_2", "gamma_1", "gamma_0.5", "gammas"]) == [
        "gamma_0.5", "gamma_1", "gamma_2", "gamma_16"]


def test_paper_table_holds_the_papers_numbers():
    t = report.paper_table("cifar10")
    assert t.loc["varmixup", "corruption_accuracy"] == 82.57
    assert t.loc["mixup", "ece"] == paper.ECE["cifar10"]["mixup"]
    assert t.loc["varmixup", "gamma_16"] == 10.05
    assert np.isnan(t.loc["erm", "ece"])
    with pytest.raises(ValueError, match="no numbers for 'fashion-mnist'"):
        report.paper_table("fashion-mnist")


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return ConvVAE(1, 28, latent_dim=4, width=4).eval()


def test_mix_images_is_what_the_mixers_train_on(vae):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(6, 1, 28, 28, generator=gen)
    y = torch.arange(6) % 3
    a, b = x[:3], x[3:]
    assert torch.equal(mixing.mix_images("mixup", a, b, 0.25), 0.25 * a + 0.75 * b)
    with torch.no_grad():
        assert torch.allclose(mixing.mix_images("varmixup", a, b, 1.0, vae), vae.reconstruct(a), atol=1e-6)
        mu = vae.encode(a)[0] * 0.3 + vae.encode(b)[0] * 0.7
        assert torch.allclose(mixing.mix_images("varmixup", a, b, 0.3, vae), vae.decode(mu), atol=1e-6)
    for method in ("mixup", "mixup_r", "varmixup"):
        kw = {"vae": vae} if method != "mixup" else {}
        batch = mixing.MIXERS[method](x, y, torch.Generator().manual_seed(1), num_classes=3, lam=0.4, **kw)
        expected = mixing.mix_images(method, x, x[batch.perm], 0.4, vae)
        assert torch.allclose(batch.x, expected, atol=1e-6), method
    with pytest.raises(ValueError, match="method = 'cutmix': mix_images pairs images for mixup"):
        mixing.mix_images("cutmix", a, b, 0.5)
    with pytest.raises(ValueError, match=r"images a \(3, 1, 28, 28\) and b \(2, 1, 28, 28\)"):
        mixing.mix_images("mixup", a, b[:2], 0.5)


def test_latent_metrics_of_a_constant_encoder(vae):
    v = ConvVAE(1, 28, latent_dim=4, width=4).eval()
    with torch.no_grad():
        v.fc_mu.weight.zero_()
        v.fc_mu.bias.copy_(torch.tensor([1.0, -1.0, 0.5, 0.0]))
        v.fc_logvar.weight.zero_()
        v.fc_logvar.bias.fill_(math.log(0.25))
    m = latent_metrics(v, torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert m["mu_std"] == pytest.approx(0.0, abs=1e-7)
    assert m["mu_mean_abs"] == pytest.approx(0.625)
    assert m["posterior_std"] == pytest.approx(0.5)
    assert m["mmd_prior"] > 0.1
    with pytest.raises(ValueError, match="at least 2 images"):
        latent_metrics(v, torch.zeros(1, 1, 28, 28), torch.Generator())


def test_figures_draw_from_library_tables(vae):
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    fig = figures.mixing_figure(vae, x[:1], x[1:], [1.0, 0.5, 0.0])
    assert isinstance(fig, Figure) and len(fig.axes) == 2 * 3
    grid = pd.DataFrame([{"method": m, "corruption": c, "severity": s, "accuracy": 0.5 + 0.01 * s, "seed": 0}
                         for m in ("erm", "varmixup") for c, sev in (("clean", [0]), ("fog", [1, 2]),
                                                                      ("snow", [1, 2])) for s in sev])
    assert len(figures.corruption_heatmaps(grid).axes) == 2 + 1  # two heat maps and one colour bar
    assert len(figures.severity_lines(grid).axes) == 1
    long = pd.DataFrame({"method": ["erm", "erm", "varmixup", "varmixup"], "eps_255": [1, 2, 1, 2],
                         "gamma": [0.1, 0.3, 0.05, 0.2], "image": [0, 0, 0, 0]})
    assert len(figures.linearity_plot(long).axes) == 2
    with pytest.raises(ValueError, match="rows of lengths"):
        figures.image_grid([x, x[:1]])


def _study(shift=0):
    """Two arms x 4 seeds over 300 images: "vm" gets ``shift`` more correct severities on the four
    intensity-shifting corruptions only, and is otherwise the same model as "mx"."""
    from varmix.core import config as cfg
    from varmix.evaluate import robustness

    rng = np.random.default_rng(0)
    names = cfg.BENCHMARK_CORRUPTIONS
    intensity = [names.index(c) for c in robustness.INTENSITY_SHIFT]
    corr, logits, gam = {}, {}, []
    labels = rng.integers(0, 10, 300)
    for sd in range(4):
        base = rng.integers(0, 4, (300, len(names))).astype(np.uint8)
        t = rng.normal(size=(300, 10)) * 3
        for arm in ("mx", "vm"):
            counts = base.copy()
            if arm == "vm":
                counts[:, intensity] += shift
            corr[f"{arm}-s{sd}"] = robustness.PerImage(np.ones(300, bool), counts, names, (1, 2, 3, 4, 5))
            logits[f"{arm}-s{sd}"] = (t, labels)
            gam.append(pd.DataFrame({"method": arm, "seed": sd, "eps_255": 8.0, "image": np.arange(300),
                                     "gamma": rng.random(300)}))
    return corr, logits, pd.concat(gam, ignore_index=True)


def test_per_image_inputs_and_the_artifact_sentence():
    from varmix.evaluate import calibration, robustness
    from varmix.study import stats

    corr, logits, gam = _study(shift=1)
    per = report.per_image_inputs(corr, logits, gam)
    assert {"corruption_accuracy", "corruption_accuracy_no_intensity", "ece", "nll", "accuracy",
            "gamma_8"} <= set(per)
    assert per["ece"][("vm", 2)].shape == (300, 2) and per["gamma_8"][("mx", 0)].shape == (300,)
    nll = per["nll"][("mx", 0)].mean()
    assert nll == pytest.approx(calibration.nll(*logits["mx-s0"]), rel=1e-9)
    # runs-level metrics as the chapters write them: per-image means
    rows = []
    for (arm, sd), v in per["corruption_accuracy"].items():
        rows.append({"arm": arm, "seed": sd, "corruption_accuracy": v.mean(),
                     "corruption_accuracy_no_intensity": per["corruption_accuracy_no_intensity"][arm, sd].mean(),
                     "ece": calibration.ece(*logits[f"{arm}-s{sd}"]), "gamma_8": per["gamma_8"][arm, sd].mean(),
                     "regime": "under-confident"})
    runs = pd.DataFrame(rows)
    claims = [c for c in report.study_claims() if c.metric not in ("ece", "pgd_accuracy")] + [report.study_claims()[1]]
    table = stats.compare(runs, per, [("vm", "mx")], claims, 200, 0)
    secondary = stats.compare(runs, per, [("vm", "mx")], report.secondary_claims()[:1], 200, 0)
    assert table.set_index("metric").loc["corruption_accuracy", "verdict"] == "holds"
    assert secondary.loc[0, "verdict"] == "inconclusive"  # identical models without those four
    lines = report.verdict_lines(table, secondary, runs)
    corruption = next(line for line in lines if line.startswith("1. corruptions"))
    assert "HOLDS" in corruption and "The background artifact drives this verdict" in corruption
    assert "Regimes: vm under-confident (4/4), mx under-confident (4/4)" in next(
        line for line in lines if line.startswith("2. calibration"))
    # without the shift, the artifact sentence says it does not drive the verdict
    corr, logits, gam = _study(shift=0)
    with pytest.raises(ValueError, match=r"no γ at ε = 2/255"):
        report.per_image_inputs(corr, logits, gam, eps_255=2)
    assert report.family({"vm": ["mx", "erm"]}) == [("vm", "mx"), ("vm", "erm")]
    assert report.majority(pd.Series(["a", "b", "a"])) == "a (2/3)"
    assert robustness.INTENSITY_SHIFT == ("brightness", "contrast", "fog", "frost")


def test_perturbation_claim_reads_the_per_image_robustness():
    """pgd_accuracy per image = the share of the ε grid at which the image stays robust; its mean is the
    run's mean PGD accuracy over ε, and the claim (higher is better) holds when one arm keeps more."""
    from varmix.study import stats

    corr, logits, gam = _study()
    rng = np.random.default_rng(1)
    masks, rows = {}, []
    for sd in range(4):
        base = rng.random((3, 300))
        for arm, extra in (("mx", 0.0), ("vm", 0.25)):
            m = {e: base[i] < 0.6 - 0.2 * i + extra for i, e in enumerate((2.0, 4.0, 8.0))}
            masks[f"{arm}-s{sd}"] = m
            rows.append({"arm": arm, "seed": sd, "pgd_accuracy": np.mean([v.mean() for v in m.values()])})
    per = report.per_image_inputs(corr, logits, gam, perturbations=masks)
    v = per["pgd_accuracy"][("vm", 1)]
    assert v.shape == (300,) and set(np.unique(v)) <= {0, 1 / 3, 2 / 3, 1}
    assert v.mean() == pytest.approx(rows[3]["pgd_accuracy"], rel=1e-12)
    claim = next(c for c in report.study_claims() if c.metric == "pgd_accuracy")
    assert claim.sign == +1
    table = stats.compare(pd.DataFrame(rows), per, [("vm", "mx")], [claim], 200, 0)
    assert table.loc[0, "verdict"] == "holds" and table.loc[0, "diff"] > 0.2
    # without masks there is no pgd_accuracy to resample
    assert "pgd_accuracy" not in report.per_image_inputs(corr, logits, gam)


def test_pgd_columns_and_sample_distance_table():
    assert report.pgd_columns(["pgd_accuracy", "pgd_accuracy_eps_8", "pgd_accuracy_eps_1", "x",
                               "pgd_accuracy_eps_2"]) == ["pgd_accuracy_eps_1", "pgd_accuracy_eps_2",
                                                          "pgd_accuracy_eps_8"]
    plain = {"sample_distance": {"test images": {"fid": 1.0, "kid_mean": 0.0, "kid_std": 0.0},
                                 "mixup": {"fid": 5.0, "kid_mean": 0.01, "kid_std": 0.001},
                                 "varmixup": {"fid": 9.0, "kid_mean": 0.02, "kid_std": 0.002}}}
    adv = {"sample_distance": {"test images": {"fid": 1.5, "kid_mean": 0.0, "kid_std": 0.0},
                               "adv_varmixup": {"fid": 7.0, "kid_mean": 0.015, "kid_std": 0.001}}}
    t = report.sample_distance_table(plain, adv)
    assert list(t.index) == ["test images", "mixup", "varmixup", "adv_varmixup"]
    assert t.loc["test images", "fid"] == 1.0  # the first VAE's measurement of a shared set
    assert t.loc["varmixup", "paper FID (cifar10)"] == 33.0 and t.loc["mixup", "paper KID (cifar10)"] == 0.013
    assert np.isnan(t.loc["adv_varmixup", "paper FID (cifar10)"])
    with pytest.raises(ValueError, match="no sample_distance in the VAE metrics"):
        report.sample_distance_table({}, {})
