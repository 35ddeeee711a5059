"""Corruption grid (shared corrupted batches, seeding, model handling) and its summaries on crafted grids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from varmix.core.names import CORRUPTIONS
from varmix.evaluate import calibration as C
from varmix.evaluate import robustness as R

N, K = 12, 4
CORR = ("gaussian_noise", "contrast")
SEV = (1, 3)


class Linear(nn.Module):
    """A seeded linear classifier on flattened images; records what it sees and in which mode."""

    def __init__(self, seed: int, record: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(3 * 32 * 32, K)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(K, 3 * 32 * 32, generator=g) * 0.05)
            self.fc.bias.copy_(torch.randn(K, generator=g))
        self.record = record
        self.seen: list[torch.Tensor] = []
        self.modes: list[tuple[bool, bool]] = []

    def forward(self, x):
        if self.record:
            self.seen.append(x.clone())
            self.modes.append((self.training, torch.is_grad_enabled()))
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (N, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, K, (N,), generator=g)
    return x, y


def grid(models, data, **kw):
    x, y = data
    kw = {"corruptions": CORR, "severities": SEV, "batch_size": 5, **kw}
    return R.corruption_grid(models, x, y, progress=False, **kw)


# ----------------------------------------------------------------------------------------------
# corruption_seed
def test_corruption_seed_is_stable_distinct_and_in_range():
    seeds = {(b, c, s): R.corruption_seed(b, c, s) for b in (0, 1, 7) for c in CORRUPTIONS for s in range(1, 6)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(isinstance(v, int) and 0 <= v < 2 ** 63 for v in seeds.values())
    assert R.corruption_seed(0, "fog", 3) == seeds[(0, "fog", 3)]
    torch.Generator().manual_seed(seeds[(7, "fog", 5)])  # usable as a torch seed
    # pinned values: they must never change (stored grids depend on them), and they are the same in every
    # process, which a seed from Python's salted hash() would not be
    assert R.corruption_seed(0, "fog", 3) == 6882018518513459509
    assert R.corruption_seed(5, "snow", 1) == 4738553275025611165
    assert R.corruption_seed(0, "gaussian_noise", 1) == 7555266057329246729


@pytest.mark.parametrize("args, match", [
    ((0, "fogg", 1), "unknown corruption 'fogg'"),
    ((0, "clean", 1), "unknown corruption 'clean'"),
    ((0, "fog", 0), "severity = 0"),
    ((0, "fog", 6), "severity = 6"),
    ((-1, "fog", 1), "seed = -1"),
    ((1.0, "fog", 1), "seed = 1.0"),
])
def test_corruption_seed_errors(args, match):
    with pytest.raises(ValueError, match=match):
        R.corruption_seed(*args)


# ----------------------------------------------------------------------------------------------
# corruption_grid
def test_grid_rows_and_columns(data):
    g = grid({"erm": Linear(1), "varmixup": Linear(2)}, data)
    assert list(g.columns) == ["method", "corruption", "severity", "n", *R.METRICS]
    keys = list(zip(g["method"], g["corruption"], g["severity"]))
    conds = [("clean", 0)] + [(c, s) for c in CORR for s in SEV]
    assert keys == [(m, c, s) for m in ("erm", "varmixup") for c, s in conds]
    assert (g["n"] == N).all()
    assert g[list(R.METRICS)].notna().all().all()
    assert ((g["accuracy"] >= 0) & (g["accuracy"] <= 1)).all()


def test_clean_rows_equal_direct_metrics(data):
    x, y = data
    model = Linear(1)
    g = grid({"erm": model}, data, corruptions=(), severities=())
    assert len(g) == 1 and g.loc[0, "corruption"] == "clean" and g.loc[0, "severity"] == 0
    with torch.no_grad():
        expected = C.calibration_metrics(model(x.float() / 255), y)
    for k, v in expected.items():
        assert g.loc[0, k] == pytest.approx(v, abs=1e-6)


def test_same_seed_same_grid_and_other_seed_other_images(data):
    a = grid({"erm": Linear(1), "mixup": Linear(2)}, data, seed=3)
    b = grid({"erm": Linear(1), "mixup": Linear(2)}, data, seed=3)
    pd.testing.assert_frame_equal(a, b)
    r3, r4 = Linear(1, record=True), Linear(1, record=True)
    grid({"m": r3}, data, seed=3, corruptions=("gaussian_noise",), severities=(1,))
    grid({"m": r4}, data, seed=4, corruptions=("gaussian_noise",), severities=(1,))
    assert torch.equal(r3.seen[0], r4.seen[0])  # clean batch
    assert not torch.equal(r3.seen[3], r4.seen[3])  # first noisy batch


def test_every_model_sees_the_same_corrupted_images_generated_once(data, monkeypatch):
    from varmix.evaluate import corruptions as vc

    calls = []
    real = vc.corrupt

    def counting(x, name, severity, gen):
        calls.append((name, severity, x.shape[0]))
        return real(x, name, severity, gen)

    monkeypatch.setattr(vc, "corrupt", counting)
    a, b = Linear(1, record=True), Linear(2, record=True)
    grid({"a": a, "b": b}, data)
    n_batches = 3  # 12 images in batches of 5, 5, 2
    assert len(calls) == len(CORR) * len(SEV) * n_batches  # once per batch, not once per model
    assert [c[2] for c in calls[:3]] == [5, 5, 2]
    assert len(a.seen) == len(b.seen) == (1 + len(CORR) * len(SEV)) * n_batches
    for xa, xb in zip(a.seen, b.seen):
        assert torch.equal(xa, xb)
    x, _ = data
    assert torch.equal(torch.cat(a.seen[:3]), x.float() / 255)  # clean images unchanged
    noisy = torch.cat(a.seen[3:6])
    assert not torch.equal(noisy, x.float() / 255)
    # quantised to the 8-bit grid like the released CIFAR-10-C, and in [0, 1]
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert torch.allclose(noisy * 255, (noisy * 255).round(), atol=1e-4)


def test_a_corruption_does_not_depend_on_the_others_evaluated(data):
    alone, together = Linear(1, record=True), Linear(1, record=True)
    grid({"m": alone}, data, corruptions=("gaussian_noise",), severities=(3,))
    grid({"m": together}, data, corruptions=("contrast", "gaussian_noise"), severities=(1, 3))
    # together: clean (3 batches), contrast 1, contrast 3, gaussian_noise 1, then gaussian_noise 3
    assert all(torch.equal(p, q) for p, q in zip(alone.seen[3:6], together.seen[12:15]))


def test_models_run_in_eval_mode_without_grad_and_modes_are_restored(data):
    a, b = Linear(1, record=True), Linear(2, record=True)
    a.train()
    b.eval()
    grid({"a": a, "b": b}, data, corruptions=("contrast",), severities=(1,))
    assert set(a.modes) == {(False, False)} and set(b.modes) == {(False, False)}
    assert a.training is True and b.training is False


def test_unquantized_option_keeps_float_images(data):
    r = Linear(1, record=True)
    grid({"m": r}, data, corruptions=("gaussian_noise",), severities=(1,), quantize=False)
    noisy = torch.cat(r.seen[3:6]) * 255
    assert not torch.allclose(noisy, noisy.round(), atol=1e-3)


def test_quantize_uint8_truncates_like_the_release():
    x = torch.tensor([0.0, 1.0, 0.5, 3 / 255, (3.9) / 255, -0.2, 1.3])
    q = R.quantize_uint8(x) * 255
    assert q.tolist() == pytest.approx([0, 255, 127, 3, 3, 0, 255])


def test_grid_from_images_matches_corruption_grid(data):
    x, y = data
    rec, m1, m2 = Linear(1, record=True), Linear(1), Linear(2)
    g = grid({"rec": rec}, data, corruptions=("gaussian_noise",), severities=(2,))
    noisy = (torch.cat(rec.seen[3:6]) * 255).round().to(torch.uint8)
    images = {("clean", 0): x, ("gaussian_noise", 2): noisy.numpy()}
    h = R.grid_from_images({"rec": m1, "other": m2}, images, y.numpy(), batch_size=7, progress=False)
    assert list(zip(h["method"], h["corruption"], h["severity"])) == [
        ("rec", "clean", 0), ("rec", "gaussian_noise", 2), ("other", "clean", 0), ("other", "gaussian_noise", 2)]
    pd.testing.assert_frame_equal(h.iloc[:2].reset_index(drop=True), g, atol=1e-6)


def test_grid_from_logits():
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]], dtype=torch.float64)
    y = np.array([0, 0, 0])
    logits = {("erm", "clean", 0): probs.log(), ("erm", "fog", 2): probs.flip(1).log().numpy()}
    g = R.grid_from_logits(logits, y, n_bins=5)
    assert list(g.columns) == ["method", "corruption", "severity", "n", *R.METRICS]
    assert g["accuracy"].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert g.loc[0, "ece"] == pytest.approx(C.ece(probs.log(), y, 5))
    per_key = R.grid_from_logits(logits, {k: y for k in logits}, n_bins=5)
    pd.testing.assert_frame_equal(g, per_key)
    with pytest.raises(ValueError, match="labels has no entry"):
        R.grid_from_logits(logits, {("erm", "clean", 0): y})
    with pytest.raises(ValueError, match="unknown corruption 'fogg'"):
        R.grid_from_logits({("erm", "fogg", 1): probs.log()}, y)
    with pytest.raises(ValueError, match="clean set has severity 0"):
        R.grid_from_logits({("erm", "clean", 1): probs.log()}, y)
    with pytest.raises(ValueError, match=r"expected \(method, corruption, severity\)"):
        R.grid_from_logits({("clean", 0): probs.log()}, y)
    with pytest.raises(ValueError, match=r"logits\[\('erm', 'fog', 2\)\]: labels has 2 entries"):
        R.grid_from_logits({("erm", "fog", 2): probs.log()}, y[:2])


@pytest.mark.parametrize("kw, match", [
    ({"corruptions": ("gaussian_noise", "fogg")}, "unknown corruption 'fogg'"),
    ({"corruptions": "fog"}, "expected a list of names"),
    ({"corruptions": ("fog", "fog")}, "listed more than once"),
    ({"severities": (0, 1)}, "severity = 0"),
    ({"severities": ()}, "severities is empty"),
    ({"severities": (1, 1)}, "repeats"),
    ({"seed": -2}, "seed = -2"),
    ({"batch_size": 0}, "batch_size = 0"),
    ({"n_bins": 0}, "n_bins = 0"),
])
def test_grid_argument_errors_before_any_work(data, kw, match):
    model = Linear(1, record=True)
    with pytest.raises(ValueError, match=match):
        grid({"m": model}, data, **kw)
    assert model.seen == []


def test_grid_input_errors(data):
    x, y = data
    m = {"m": Linear(1)}
    with pytest.raises(ValueError, match="expected uint8 images"):
        R.corruption_grid(m, x.float() / 255, y, CORR, SEV)
    with pytest.raises(ValueError, match="expected uint8 images"):
        R.corruption_grid(m, x[0], y, CORR, SEV)
    with pytest.raises(ValueError, match="11 labels but there are 12 images"):
        R.corruption_grid(m, x, y[:-1], CORR, SEV)
    with pytest.raises(ValueError, match="integer labels"):
        R.corruption_grid(m, x, y.float(), CORR, SEV)
    with pytest.raises(ValueError, match="non-empty mapping"):
        R.corruption_grid({}, x, y, CORR, SEV)
    with pytest.raises(ValueError, match="expected an nn.Module"):
        R.corruption_grid({"m": lambda t: t}, x, y, CORR, SEV)
    with pytest.raises(ValueError, match="model 'bad' returned"):
        R.corruption_grid({"bad": nn.Flatten(0)}, x, y, (), (), progress=False)


# ----------------------------------------------------------------------------------------------
# summaries on a crafted grid
def crafted_grid() -> pd.DataFrame:
    acc = {
        "varmixup": {("clean", 0): 0.9, ("gaussian_noise", 1): 0.8, ("gaussian_noise", 2): 0.6,
                     ("contrast", 1): 0.7, ("contrast", 2): 0.5, ("speckle_noise", 1): 0.1, ("speckle_noise", 2): 0.1},
        "erm": {("clean", 0): 0.8, ("gaussian_noise", 1): 0.6, ("gaussian_noise", 2): 0.4,
                ("contrast", 1): 0.6, ("contrast", 2): 0.6, ("speckle_noise", 1): 0.2, ("speckle_noise", 2): 0.2},
    }
    ece = {
        "varmixup": {("clean", 0): 0.02, ("gaussian_noise", 1): 0.05, ("gaussian_noise", 2): 0.10,
                     ("contrast", 1): 0.07, ("contrast", 2): 0.12, ("speckle_noise", 1): 0.9, ("speckle_noise", 2): 0.9},
        "erm": {("clean", 0): 0.03, ("gaussian_noise", 1): 0.1, ("gaussian_noise", 2): 0.2,
                ("contrast", 1): 0.1, ("contrast", 2): 0.1, ("speckle_noise", 1): 0.9, ("speckle_noise", 2): 0.9},
    }
    rows = [{"method": m, "corruption": c, "severity": s, "accuracy": a, "ece": ece[m][(c, s)]}
            for m in acc for (c, s), a in acc[m].items()]
    rows = rows[::-1]  # order of rows must not matter (methods keep first-appearance order)
    return pd.DataFrame(rows)


def test_summarize_by_hand():
    s = R.summarize(crafted_grid())
    assert list(s.index) == ["erm", "varmixup"]
    assert list(s.columns) == ["clean_accuracy", "corruption_accuracy", "mce_unnormalised", "accuracy_s1",
                               "accuracy_s2", "clean_ece", "corruption_ece", "n_corruptions", "n_severities"]
    v, e = s.loc["varmixup"], s.loc["erm"]
    # varmixup: mean(mean(.8, .6), mean(.7, .5)) = .65; the extra corruption speckle_noise is not pooled
    assert v["clean_accuracy"] == pytest.approx(0.9)
    assert v["corruption_accuracy"] == pytest.approx(0.65)
    assert v["mce_unnormalised"] == pytest.approx(0.35)
    assert (v["accuracy_s1"], v["accuracy_s2"]) == pytest.approx((0.75, 0.55))
    assert v["corruption_ece"] == pytest.approx(0.085)
    assert v["clean_ece"] == pytest.approx(0.02)
    assert e["corruption_accuracy"] == pytest.approx(0.55)
    assert (e["accuracy_s1"], e["accuracy_s2"]) == pytest.approx((0.6, 0.5))
    assert e["corruption_ece"] == pytest.approx(0.125)
    assert (v["n_corruptions"], v["n_severities"]) == (2, 2)
    # explicit corruptions: speckle_noise alone
    only = R.summarize(crafted_grid(), corruptions=["speckle_noise"])
    assert only.loc["varmixup", "corruption_accuracy"] == pytest.approx(0.1)


def test_pooling_is_mean_of_means():
    # an incomplete grid would make "mean of means" and "mean of rows" differ: it is refused instead
    g = crafted_grid()
    g = g[~((g["method"] == "erm") & (g["corruption"] == "contrast") & (g["severity"] == 2))]
    with pytest.raises(ValueError, match="no row for method 'erm', corruption 'contrast', severity 2"):
        R.summarize(g)


def test_corruption_errors_and_unnormalised_mce_by_hand():
    ce = R.corruption_errors(crafted_grid())
    assert list(ce.columns) == ["gaussian_noise", "contrast"]  # benchmark order
    assert ce.loc["varmixup"].tolist() == pytest.approx([0.3, 0.4])
    assert ce.loc["erm"].tolist() == pytest.approx([0.5, 0.4])
    m = R.mce_unnormalised(crafted_grid())
    assert m.to_dict() == pytest.approx({"erm": 0.45, "varmixup": 0.35})


def test_relative_mce_by_hand():
    r = R.relative_mce(crafted_grid(), baseline="erm")
    assert r["erm"] == 1.0
    # gaussian: ((.2-.1)+(.4-.1)) / ((.4-.2)+(.6-.2)) = 2/3; contrast: ((.3-.1)+(.5-.1)) / (.2+.2) = 3/2
    assert r["varmixup"] == pytest.approx((2 / 3 + 1.5) / 2)
    assert R.relative_mce(crafted_grid(), baseline="varmixup")["varmixup"] == 1.0
    r2 = R.relative_mce(crafted_grid(), baseline="erm", corruptions=["speckle_noise"])
    assert r2["varmixup"] == pytest.approx((0.9 - 0.1) * 2 / ((0.8 - 0.2) * 2))


def test_relative_mce_errors():
    with pytest.raises(ValueError, match="baseline method 'mixup' is not in the grid"):
        R.relative_mce(crafted_grid(), baseline="mixup")
    g = crafted_grid()
    flat = (g["method"] == "erm") & (g["corruption"] == "contrast")
    g.loc[flat, "accuracy"] = 0.8  # erm loses nothing under contrast
    with pytest.warns(RuntimeWarning, match="loses no accuracy under contrast"):
        r = R.relative_mce(g, baseline="erm")
    assert r.isna().all()
    with pytest.raises(ValueError, match="no clean row"):
        R.relative_mce(crafted_grid()[lambda d: ~((d["method"] == "erm") & (d["corruption"] == "clean"))])


def test_severity_calibration_by_hand():
    t = R.severity_calibration(crafted_grid())
    assert list(t.columns) == [0, 1, 2]
    assert t.loc["varmixup"].tolist() == pytest.approx([0.02, 0.06, 0.11])
    assert t.loc["erm"].tolist() == pytest.approx([0.03, 0.1, 0.15])
    assert R.severity_calibration(crafted_grid(), "accuracy").loc["erm"].tolist() == pytest.approx([0.8, 0.6, 0.5])
    with pytest.raises(ValueError, match="metric = 'auc'"):
        R.severity_calibration(crafted_grid(), "auc")


def test_summaries_of_a_real_grid(data):
    g = grid({"erm": Linear(1), "mixup": Linear(2)}, data)
    s = R.summarize(g)
    for m in ("erm", "mixup"):
        rows = g[(g["method"] == m) & (g["corruption"] != "clean")]
        assert s.loc[m, "corruption_accuracy"] == pytest.approx(rows["accuracy"].mean())


def test_summary_errors():
    g = crafted_grid()
    with pytest.raises(ValueError, match="pandas DataFrame"):
        R.summarize(g.to_dict())
    with pytest.raises(ValueError, match="lacks column 'ece'"):
        R.summarize(g.drop(columns="ece"))
    with pytest.raises(ValueError, match="more than one row"):
        R.summarize(pd.concat([g, g]))
    with pytest.raises(ValueError, match="no rows for the benchmark corruptions"):
        R.summarize(g[g["corruption"].isin(["clean", "speckle_noise"])])
    with pytest.raises(ValueError, match="'fog' has no rows"):
        R.summarize(g, corruptions=["fog"])
    with pytest.raises(ValueError, match="unknown corruption 'fogg'"):
        R.summarize(g, corruptions=["fogg"])


def test_explicit_device_gives_the_same_grid(data):
    a = grid({"erm": Linear(1)}, data, corruptions=("gaussian_noise",), severities=(2,))
    b = grid({"erm": Linear(1)}, data, corruptions=("gaussian_noise",), severities=(2,), device="cpu")
    pd.testing.assert_frame_equal(a, b)


# ----------------------------------------------------------------------------------------------
# per-image correctness, corruption families
FAM_CORR = ("gaussian_noise", "defocus_blur", "brightness", "contrast")


def test_per_image_option_returns_the_same_grid_and_matching_counts(data):
    x, y = data
    models = {"erm": Linear(1), "varmixup_full": Linear(2)}
    g, per = grid(models, data, corruptions=FAM_CORR, per_image=True)
    pd.testing.assert_frame_equal(g, grid(models, data, corruptions=FAM_CORR))  # default path unchanged
    assert list(per) == ["erm", "varmixup_full"]
    s = R.summarize(g, FAM_CORR)
    fam = R.family_summary(g, FAM_CORR)
    for m, p in per.items():
        assert p.corruption_names == FAM_CORR and p.severities == SEV
        assert p.clean.dtype == np.bool_ and p.clean.shape == (N,)
        assert p.corruptions.dtype == np.uint8 and p.corruptions.shape == (N, len(FAM_CORR))
        with torch.no_grad():
            np.testing.assert_array_equal(p.clean, (models[m](x.float() / 255).argmax(1) == y).numpy())
        rows = g[g["method"] == m].set_index(["corruption", "severity"])["accuracy"]
        assert p.clean.mean() == rows[("clean", 0)]
        for j, c in enumerate(FAM_CORR):  # counts are the grid's accuracies times n, summed over severities
            assert int(p.corruptions[:, j].sum()) == round(sum(rows[(c, sv)] for sv in SEV) * N)
        acc = R.per_image_accuracy(p.corruptions, p.corruption_names, len(p.severities))
        assert acc.shape == (N,) and acc.mean() == pytest.approx(s.loc[m, "corruption_accuracy"], abs=1e-12)
        for col, values in R.family_per_image(p).items():
            expected = s.loc[m, "clean_accuracy"] if col == "clean_accuracy" else fam.loc[m, col]
            if np.isnan(expected):
                assert np.isnan(values).all()
            else:
                assert values.mean() == pytest.approx(expected, abs=1e-12)
    assert not (per["erm"].corruptions == per["varmixup_full"].corruptions).all()


def test_per_image_counts_severities_of_each_corruption(data):
    # a model that is always right counts every severity; one that is never right counts none
    x, y = data

    class Oracle(nn.Module):
        def __init__(self, right: bool):
            super().__init__()
            self.shift = 0 if right else 1

        def forward(self, xb):  # one batch of all N images (batch_size=N): predicts y, or y + 1
            return torch.nn.functional.one_hot((y + self.shift) % K, K).float() * 5

    _, per = grid({"right": Oracle(True), "wrong": Oracle(False)}, data, corruptions=FAM_CORR[:2],
                  batch_size=N, per_image=True)
    assert (per["right"].corruptions == len(SEV)).all() and per["right"].clean.all()
    assert (per["wrong"].corruptions == 0).all() and not per["wrong"].clean.any()


def test_per_image_argument_errors(data):
    with pytest.raises(ValueError, match="per_image = 1 is invalid"):
        grid({"erm": Linear(1)}, data, per_image=1)
    counts = np.array([[2, 0], [1, 2]], dtype=np.uint8)
    np.testing.assert_allclose(R.per_image_accuracy(counts, CORR, 2), [0.5, 0.75])
    np.testing.assert_allclose(R.per_image_accuracy(counts, CORR, 2, ["contrast"]), [0.0, 1.0])
    np.testing.assert_allclose(R.per_image_accuracy(counts, CORR, 2, ["contrast", "fog"]), [0.0, 1.0])  # fog skipped
    for args, match in [((counts, CORR, 6), "n_severities = 6"), ((counts, CORR, 1), "counts range 0..2"),
                        ((counts, CORR[:1], 2), "shape"), ((counts.astype(float), CORR, 2), "integer counts"),
                        ((counts, ("fogg", "fog"), 2), "unknown corruption 'fogg'"),
                        ((counts, CORR, 2, ["fog"]), "no corruption among")]:
        with pytest.raises(ValueError, match=match):
            R.per_image_accuracy(*args)
    with pytest.raises(ValueError, match="expected uint8"):
        R.PerImage(np.ones(2, bool), counts.astype(np.int64), CORR, SEV)
    with pytest.raises(ValueError, match="expected bool"):
        R.PerImage(np.ones(2, int), counts, CORR, SEV)
    with pytest.raises(ValueError, match="count of 3"):
        R.PerImage(np.ones(2, bool), counts + 1, CORR, SEV)
    with pytest.raises(ValueError, match="expected a PerImage"):
        R.family_per_image(counts)


def test_families_are_the_benchmark_grouping():
    from varmix.core.names import BENCHMARK_CORRUPTIONS

    assert list(R.FAMILIES) == ["noise", "blur", "weather", "digital"]
    members = [c for fam in R.FAMILIES.values() for c in fam]
    assert sorted(members) == sorted(BENCHMARK_CORRUPTIONS) and len(members) == 15
    assert R.FAMILIES["weather"] == ("snow", "frost", "fog", "brightness")
    assert R.FAMILIES["digital"] == ("contrast", "elastic_transform", "pixelate", "jpeg_compression")
    assert set(R.INTENSITY_SHIFT) == {"brightness", "contrast", "fog", "frost"}


def _grid_of(acc: dict) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "corruption": c, "severity": s, "accuracy": a, "ece": 0.0}
                         for m, table in acc.items() for (c, s), a in table.items()])


def test_family_summary_by_hand():
    table = {("clean", 0): 0.9, ("gaussian_noise", 1): 0.8, ("gaussian_noise", 2): 0.6,  # noise .7
             ("shot_noise", 1): 0.5, ("shot_noise", 2): 0.3,                                # noise .4
             ("fog", 1): 0.4, ("fog", 2): 0.2,                                              # weather, intensity .3
             ("contrast", 1): 0.2, ("contrast", 2): 0.0,                                    # digital, intensity .1
             ("pixelate", 1): 0.9, ("pixelate", 2): 0.7,                                    # digital .8
             ("speckle_noise", 1): 0.0, ("speckle_noise", 2): 0.0}                          # extra, no family
    g = _grid_of({"varmixup_full": table, "erm": {k: v / 2 for k, v in table.items()}})
    f = R.family_summary(g)
    assert list(f.index) == ["varmixup_full", "erm"]
    assert list(f.columns) == ["accuracy_noise", "accuracy_blur", "accuracy_weather", "accuracy_digital",
                               "corruption_accuracy", "corruption_accuracy_no_intensity",
                               "corruption_accuracy_intensity"]
    v = f.loc["varmixup_full"]
    assert v["accuracy_noise"] == pytest.approx(0.55)
    assert np.isnan(v["accuracy_blur"])  # no blur in the grid
    assert v["accuracy_weather"] == pytest.approx(0.3)
    assert v["accuracy_digital"] == pytest.approx(0.45)
    assert v["corruption_accuracy"] == pytest.approx((0.7 + 0.4 + 0.3 + 0.1 + 0.8) / 5)
    assert v["corruption_accuracy_no_intensity"] == pytest.approx((0.7 + 0.4 + 0.8) / 3)
    assert v["corruption_accuracy_intensity"] == pytest.approx(0.2)
    pd.testing.assert_series_equal(f.loc["erm"], v / 2, check_names=False)
    pd.testing.assert_series_equal(f["corruption_accuracy"], R.summarize(g)["corruption_accuracy"])
    # explicit corruptions, the extra included: it counts in the overall and no-intensity means only
    f2 = R.family_summary(g, ["gaussian_noise", "speckle_noise"])
    assert f2.loc["varmixup_full", "accuracy_noise"] == pytest.approx(0.7)
    assert f2.loc["varmixup_full", "corruption_accuracy"] == pytest.approx(0.35)
    assert f2.loc["varmixup_full", "corruption_accuracy_no_intensity"] == pytest.approx(0.35)
    assert f2.loc["varmixup_full", ["accuracy_digital", "corruption_accuracy_intensity"]].isna().all()
    pd.testing.assert_series_equal(f2["corruption_accuracy"],
                                   R.summarize(g, ["gaussian_noise", "speckle_noise"])["corruption_accuracy"])
    with pytest.raises(ValueError, match="'snow' has no rows"):
        R.family_summary(g, ["snow"])


def test_save_and_load_per_image_for_a_study(data, tmp_path):
    _, per = grid({"erm": Linear(1), "varmixup_full": Linear(2)}, data, corruptions=FAM_CORR[:2], per_image=True)
    _, per1 = grid({"erm": Linear(3), "varmixup_full": Linear(4)}, data, corruptions=FAM_CORR[:2], per_image=True)
    runs = {f"{m}-s{sd}": p for sd, pp in ((0, per), (1, per1)) for m, p in pp.items()}
    R.save_per_image(tmp_path / "per_image.npz", runs)
    back = R.load_per_image(tmp_path / "per_image.npz")
    assert list(back) == list(runs)
    for k, p in runs.items():
        assert back[k].corruption_names == p.corruption_names and back[k].severities == p.severities
        np.testing.assert_array_equal(back[k].clean, p.clean)
        np.testing.assert_array_equal(back[k].corruptions, p.corruptions)
        assert back[k].corruptions.dtype == np.uint8 and back[k].clean.dtype == np.bool_
    first = (tmp_path / "per_image.npz").read_bytes()
    R.save_per_image(tmp_path / "per_image.npz", dict(runs))
    assert (tmp_path / "per_image.npz").read_bytes() == first
    other = R.PerImage(p.clean, p.corruptions[:, :1], p.corruption_names[:1], p.severities)
    with pytest.raises(ValueError, match="expected the same for every run"):
        R.save_per_image(tmp_path / "x.npz", {"erm-s0": p, "erm-s1": other})
    with pytest.raises(ValueError, match="run key 'erm/s0'"):
        R.save_per_image(tmp_path / "x.npz", {"erm/s0": p})
    with pytest.raises(ValueError, match="expected a PerImage"):
        R.save_per_image(tmp_path / "x.npz", {"erm-s0": p.corruptions})
    assert not (tmp_path / "x.npz").exists()
    from varmix.core import io as vio

    vio.write_npz(tmp_path / "y.npz", {"erm-s0/clean": p.clean})
    with pytest.raises(ValueError, match="lacks 'corruption_names'"):
        R.load_per_image(tmp_path / "y.npz")
