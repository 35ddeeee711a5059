"""Calibration metrics against hand-computed values, torchmetrics, and synthetic calibrated predictors."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from varmix.evaluate import calibration as C

# Five samples, three classes, chosen probabilities (no confidence on a bin edge for n_bins=5).
PROBS = np.array([
    [0.70, 0.20, 0.10],   # y=0: conf .70 correct  -> bin (.6, .8]
    [0.30, 0.50, 0.20],   # y=2: conf .50 wrong    -> bin (.4, .6]
    [0.90, 0.05, 0.05],   # y=0: conf .90 correct  -> bin (.8, 1]
    [0.10, 0.15, 0.75],   # y=1: conf .75 wrong    -> bin (.6, .8]
    [0.45, 0.35, 0.20],   # y=0: conf .45 correct  -> bin (.4, .6]
])
LABELS = np.array([0, 2, 0, 1, 0])


def crafted():
    return torch.log(torch.tensor(PROBS, dtype=torch.float64)), torch.tensor(LABELS)


# ----------------------------------------------------------------------------------------------
# hand-computed values
def test_ece_mce_by_hand():
    logits, y = crafted()
    # bin (.4,.6]: acc 1/2, conf (.5+.45)/2 = .475, gap .025, weight 2/5
    # bin (.6,.8]: acc 1/2, conf (.7+.75)/2 = .725, gap .225, weight 2/5
    # bin (.8, 1]: acc 1,   conf .9,              gap .1,   weight 1/5
    assert C.ece(logits, y, n_bins=5) == pytest.approx(0.4 * 0.025 + 0.4 * 0.225 + 0.2 * 0.1, abs=1e-12)
    assert C.ece(logits, y, n_bins=5) == pytest.approx(0.12, abs=1e-12)
    assert C.mce(logits, y, n_bins=5) == pytest.approx(0.225, abs=1e-12)
    # one bin: |mean acc - mean conf| = |.6 - .66|
    assert C.ece(logits, y, n_bins=1) == pytest.approx(0.06, abs=1e-12)
    assert C.mce(logits, y, n_bins=1) == pytest.approx(0.06, abs=1e-12)


def test_nll_brier_accuracy_overconfidence_by_hand():
    logits, y = crafted()
    assert C.nll(logits, y) == pytest.approx(
        -(math.log(0.7) + math.log(0.2) + math.log(0.9) + math.log(0.15) + math.log(0.45)) / 5, abs=1e-12)
    # per sample Σ_k (p_k - y_k)^2: .14, .98, .015, 1.295, .465 -> mean 2.895 / 5
    assert C.brier(logits, y) == pytest.approx(0.579, abs=1e-12)
    assert C.accuracy(logits, y) == pytest.approx(0.6, abs=1e-15)
    assert C.mean_confidence(logits, y) == pytest.approx(0.66, abs=1e-12)
    assert C.overconfidence(logits, y) == pytest.approx(0.06, abs=1e-12)


def test_calibration_metrics_dict_matches_single_functions():
    logits, y = crafted()
    m = C.calibration_metrics(logits, y, n_bins=5)
    assert set(m) == {"accuracy", "ece", "mce", "nll", "brier", "overconfidence", "mean_confidence"}
    assert m["ece"] == pytest.approx(0.12, abs=1e-12)
    assert m["mce"] == pytest.approx(0.225, abs=1e-12)
    assert m["brier"] == pytest.approx(0.579, abs=1e-12)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["mean_confidence"] == pytest.approx(0.66)
    assert m["overconfidence"] == pytest.approx(0.06)
    assert m["nll"] == pytest.approx(C.nll(logits, y), abs=1e-15)
    assert all(isinstance(v, float) for v in m.values())


def test_numpy_and_float32_inputs_agree_with_torch():
    logits, y = crafted()
    a = C.calibration_metrics(logits, y, n_bins=5)
    b = C.calibration_metrics(logits.numpy(), LABELS.astype(np.int32), n_bins=5)
    c = C.calibration_metrics(logits.float(), y, n_bins=5)
    for k in a:
        assert b[k] == pytest.approx(a[k], abs=1e-12)
        assert c[k] == pytest.approx(a[k], abs=1e-6)


def test_logits_are_shift_invariant():
    logits, y = crafted()
    assert C.ece(logits + 7.0, y, 5) == pytest.approx(C.ece(logits, y, 5), abs=1e-12)
    assert C.nll(logits - 3.0, y) == pytest.approx(C.nll(logits, y), abs=1e-12)


def test_reliability_bins_by_hand():
    logits, y = crafted()
    df = C.reliability_bins(logits, y, n_bins=5)
    assert list(df.columns) == ["bin", "lower", "upper", "count", "accuracy", "confidence", "gap"]
    assert df["lower"].tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])
    assert df["upper"].tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert df["count"].tolist() == [0, 0, 2, 2, 1]
    assert df["accuracy"].iloc[:2].isna().all() and df["confidence"].iloc[:2].isna().all()
    assert df["accuracy"].iloc[2:].tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert df["confidence"].iloc[2:].tolist() == pytest.approx([0.475, 0.725, 0.9])
    assert df["gap"].iloc[2:].tolist() == pytest.approx([-0.025, 0.225, -0.1])


def test_bin_convention_lower_open_upper_closed():
    # softmax([0, 0]) is exactly 0.5: on the inner edge of 2 bins, it belongs to (0, .5], the bin below.
    logits = torch.zeros(3, 2, dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    assert C.reliability_bins(logits, y, n_bins=2)["count"].tolist() == [3, 0]
    # a confidence of exactly 1.0 belongs to the last bin (.5, 1]
    one = torch.tensor([[0.0, -math.inf]], dtype=torch.float64)
    assert float(torch.softmax(one, 1).max()) == 1.0
    assert C.reliability_bins(one, torch.tensor([0]), n_bins=2)["count"].tolist() == [0, 1]
    assert C.ece(one, torch.tensor([0]), n_bins=15) == 0.0
    assert C.ece(one, torch.tensor([1]), n_bins=15) == 1.0


# ----------------------------------------------------------------------------------------------
# torchmetrics
def test_agrees_with_torchmetrics_off_the_edges():
    g = torch.Generator().manual_seed(0)
    n, k = 4000, 10
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 2.5
    y = torch.randint(0, k, (n,), generator=g)
    # make accuracy interesting: the true class gets a boost on 60% of the samples
    boost = torch.rand(n, generator=g, dtype=torch.float64) < 0.6
    logits[boost, y[boost]] += 3.0
    probs = torch.softmax(logits, 1)
    conf = probs.max(1).values
    edges = torch.linspace(0, 1, 16, dtype=torch.float64)
    assert (conf[:, None] - edges[None]).abs().min() > 1e-6  # precondition: nothing on a bin edge

    tm_ece = MulticlassCalibrationError(num_classes=k, n_bins=15, norm="l1")(probs.float(), y)
    tm_mce = MulticlassCalibrationError(num_classes=k, n_bins=15, norm="max")(probs.float(), y)
    tm_acc = MulticlassAccuracy(num_classes=k, average="micro")(probs.float(), y)
    assert 0.05 < C.ece(logits, y) < 0.5  # not a trivial comparison
    assert C.ece(logits, y) == pytest.approx(float(tm_ece), abs=1e-5)
    assert C.mce(logits, y) == pytest.approx(float(tm_mce), abs=1e-5)
    assert C.accuracy(logits, y) == pytest.approx(float(tm_acc), abs=1e-6)
    assert C.nll(logits, y) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), abs=1e-10)


def test_documented_difference_from_torchmetrics_at_confidence_one():
    # sample 0: confidence exactly 1.0, wrong; sample 1: confidence .95, right.
    logits = torch.tensor([[0.0, -math.inf], [math.log(0.95), math.log(0.05)]], dtype=torch.float64)
    y = torch.tensor([1, 0])
    probs = torch.softmax(logits, 1)
    assert probs[0, 0] == 1.0
    # ours, (lower, upper]: both in the last bin (14/15, 1]: |1/2 - (1 + .95)/2| = .475
    assert C.ece(logits, y) == pytest.approx(0.475, abs=1e-12)
    # torchmetrics, [lower, upper): .95 alone in [14/15, 1) (gap .05), 1.0 in an extra bin (gap 1): .525
    tm = float(MulticlassCalibrationError(num_classes=2, n_bins=15, norm="l1")(probs.float(), y))
    assert tm == pytest.approx(0.525, abs=1e-6)


# ----------------------------------------------------------------------------------------------
# synthetic predictors
def _synthetic(n, shift, seed):
    """Binary predictor with confidence c ~ U(.5, 1) for class 0, right with probability c - shift."""
    g = torch.Generator().manual_seed(seed)
    c = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    c = c.clamp(0.5 + 1e-9, 1 - 1e-9)
    right = torch.rand(n, generator=g, dtype=torch.float64) < (c - shift)
    logits = torch.stack([c.log(), (1 - c).log()], 1)
    return logits, (~right).long()


def test_perfectly_calibrated_predictor_has_ece_near_zero():
    logits, y = _synthetic(200_000, 0.0, seed=1)
    assert C.ece(logits, y) < 0.01
    assert abs(C.overconfidence(logits, y)) < 0.01


def test_overconfident_predictor_has_the_shift_as_ece():
    logits, y = _synthetic(200_000, 0.1, seed=2)
    assert C.ece(logits, y) == pytest.approx(0.1, abs=0.01)
    assert C.overconfidence(logits, y) == pytest.approx(0.1, abs=0.01)


def test_temperature_scaling_recovers_a_known_temperature():
    g = torch.Generator().manual_seed(3)
    n, k = 20_000, 10
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 2.0  # the calibrated model's logits
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    for t0 in (2.5, 0.5):
        seen = z * t0  # a model whose logits are T0 times too large (T0 > 1: overconfident)
        t = C.fit_temperature(seen, y)
        assert t == pytest.approx(t0, rel=0.05)
        scaled = C.apply_temperature(seen, t)
        assert C.nll(scaled, y) < C.nll(seen, y)
        assert C.ece(scaled, y) < 0.02
    assert C.fit_temperature(z.float(), y, init=1.0, max_iter=100) == pytest.approx(1.0, rel=0.05)


def test_apply_temperature_keeps_array_kind():
    x = np.array([[2.0, -1.0]], dtype=np.float32)
    out = C.apply_temperature(x, 2.0)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, [[1.0, -0.5]])
    t = C.apply_temperature(torch.tensor([[3.0, 1.5]]), 1.5)
    assert isinstance(t, torch.Tensor)
    torch.testing.assert_close(t, torch.tensor([[2.0, 1.0]]))


# ----------------------------------------------------------------------------------------------
# reliability diagram
def test_reliability_diagram_returns_figure_with_ece_text():
    logits, y = _synthetic(2000, 0.1, seed=4)
    fig = C.reliability_diagram(logits, y, n_bins=10, title="synthetic")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    texts = [t.get_text() for a in fig.axes for t in a.texts]
    assert f"ECE = {C.ece(logits, y, n_bins=10):.4f}" in texts
    assert fig.axes[0].get_title() == "synthetic"
    # bars: 10 accuracy bars in the top panel, 10 histogram bars in the bottom one
    assert len(fig.axes[1].patches) == 10
    heights = sorted(p.get_height() for p in fig.axes[1].patches)
    assert sum(heights) == pytest.approx(1.0)
    # two vertical lines: mean accuracy and mean confidence
    xs = sorted(line.get_xdata()[0] for line in fig.axes[1].lines)
    assert xs == pytest.approx(sorted([C.accuracy(logits, y), C.mean_confidence(logits, y)]))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_reliability_diagram_on_given_axes():
    logits, y = crafted()
    fig = Figure()
    ax = fig.add_subplot(1, 1, 1)
    assert C.reliability_diagram(logits, y, n_bins=5, ax=ax) is fig
    assert any("ECE = 0.1200" == t.get_text() for t in ax.texts)
    fig2 = Figure()
    axes = fig2.subplots(2, 1)
    assert C.reliability_diagram(logits, y, n_bins=5, ax=axes) is fig2
    with pytest.raises(ValueError, match="pair of Axes"):
        C.reliability_diagram(logits, y, ax=[ax, ax, ax])


# ----------------------------------------------------------------------------------------------
# errors
@pytest.mark.parametrize("logits, labels, match", [
    (np.zeros(3), np.zeros(3, dtype=int), "2-D"),
    (np.zeros((3, 2), dtype=np.int64), np.zeros(3, dtype=int), "floating-point"),
    (np.zeros((0, 2)), np.zeros(0, dtype=int), "at least one sample"),
    (np.zeros((3, 1)), np.zeros(3, dtype=int), "at least 2 classes"),
    (np.array([[0.0, np.nan]]), np.zeros(1, dtype=int), "NaN"),
    (np.array([[0.0, np.inf]]), np.zeros(1, dtype=int), r"\+inf"),
    (np.array([[-np.inf, -np.inf]]), np.zeros(1, dtype=int), "all -inf"),
    (np.zeros((3, 2)), np.zeros(3), "integer dtype"),
    (np.zeros((3, 2)), np.zeros((3, 1), dtype=int), "1-D"),
    (np.zeros((3, 2)), np.zeros(4, dtype=int), "4 entries but logits has 3 rows"),
    (np.zeros((3, 2)), np.array([0, 2, 1]), r"labels\[1\] = 2 is out of range"),
    (np.zeros((3, 2)), np.array([0, -1, 1]), r"labels\[1\] = -1"),
])
def test_bad_inputs_raise(logits, labels, match):
    for fn in (C.ece, C.mce, C.nll, C.brier, C.accuracy, C.overconfidence, C.calibration_metrics,
               C.reliability_bins, C.fit_temperature):
        with pytest.raises(ValueError, match=match):
            fn(logits, labels)


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True, "15"])
def test_bad_n_bins(n_bins):
    logits, y = crafted()
    for fn in (C.ece, C.mce, C.calibration_metrics, C.reliability_bins, C.reliability_diagram):
        with pytest.raises(ValueError, match="n_bins"):
            fn(logits, y, n_bins)


def test_not_an_array():
    with pytest.raises(TypeError, match="logits must be a torch.Tensor or numpy.ndarray"):
        C.ece([[0.0, 1.0]], [0])


def test_bad_temperature_arguments():
    logits, y = crafted()
    for bad in (0, -1.0, float("nan"), float("inf"), "2"):
        with pytest.raises(ValueError, match="temperature"):
            C.apply_temperature(logits, bad)
        with pytest.raises(ValueError, match="init"):
            C.fit_temperature(logits, y, init=bad)
    with pytest.raises(ValueError, match="max_iter"):
        C.fit_temperature(logits, y, max_iter=0)
    with pytest.raises(ValueError, match="finite logits"):
        C.fit_temperature(torch.tensor([[0.0, -math.inf]], dtype=torch.float64), torch.tensor([0]))


# ----------------------------------------------------------------------------------------------
# per-sample rows for a bootstrap, temperature scaling on held-out data, the regime in words
def test_conf_correct_rows_give_exactly_the_ece():
    logits, y = crafted()
    rows = C.conf_correct(logits, y)
    assert rows.shape == (5, 2) and rows.dtype == np.float64
    np.testing.assert_allclose(rows[:, 0], [0.70, 0.50, 0.90, 0.75, 0.45], atol=1e-12)
    assert rows[:, 1].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert C.ece_from_conf_correct(rows, 5) == pytest.approx(0.12, abs=1e-12)
    z, lab = _synthetic(5000, 0.05, seed=4)
    for bins in (1, 7, 15):
        assert C.ece_from_conf_correct(C.conf_correct(z, lab), bins) == C.ece(z, lab, bins)
    # a bootstrap resample is just rows[idx]
    idx = np.random.default_rng(0).integers(0, 5000, 5000)
    assert C.ece_from_conf_correct(C.conf_correct(z, lab)[idx], 15) == C.ece(z[idx], lab[idx], 15)


def test_conf_correct_rows_bin_an_edge_confidence_like_ece():
    # confidence exactly 0.5 (an inner edge for 2 bins) belongs to the lower bin (0, .5]: a correct one
    # there and a wrong one at .75 give |1 - .5|/2 + |0 - .75|/2; the upper-bin convention would give .125
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.75, 0.25, 0.0]], dtype=torch.float64))
    y = torch.tensor([0, 1])
    rows = C.conf_correct(logits, y)
    assert rows[0, 0] == 0.5
    assert C.ece_from_conf_correct(rows, 2) == C.ece(logits, y, 2) == pytest.approx(0.625, abs=1e-12)


@pytest.mark.parametrize("rows, match", [
    (np.zeros((3, 3)), r"rows \[N, 2\]"),
    (np.zeros((0, 2)), "N >= 1"),
    (np.array([[0.5, 2.0]]), "0/1"),
    (np.array([[1.5, 1.0]]), "outside"),
])
def test_ece_from_conf_correct_errors(rows, match):
    with pytest.raises(ValueError, match=match):
        C.ece_from_conf_correct(rows)


def test_temperature_scaled_metrics_fit_on_first_part_evaluate_on_the_rest():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(4001, 10, generator=g, dtype=torch.float64) * 2.0
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    seen = z * 2.5
    out = C.temperature_scaled_metrics(seen, y, 15)
    assert out["n_fit"] == 2000 and out["n_eval"] == 2001
    assert out["temperature"] == C.fit_temperature(seen[:2000], y[:2000])
    assert out["temperature"] == pytest.approx(2.5, rel=0.1)
    scaled = C.calibration_metrics(seen[2000:] / out["temperature"], y[2000:], 15)
    assert out["ece_temperature_scaled"] == scaled["ece"]
    assert out["nll_temperature_scaled"] == scaled["nll"]
    assert out["overconfidence_temperature_scaled"] == scaled["overconfidence"]
    assert out["accuracy_temperature_scaled"] == C.accuracy(seen[2000:], y[2000:])
    assert out["regime_temperature_scaled"] == C.regime(scaled["overconfidence"])
    assert out["ece_temperature_scaled"] < C.ece(seen[2000:], y[2000:], 15)
    # the notebook's former inline computation (first half / second half) is fit_fraction 0.5
    other = C.temperature_scaled_metrics(seen.numpy().astype(np.float32), y.numpy(), 15, fit_fraction=0.25)
    assert other["n_fit"] == 1000 and other["n_eval"] == 3001


@pytest.mark.parametrize("kw, match", [
    ({"fit_fraction": 0.0}, "fit_fraction = 0.0"),
    ({"fit_fraction": 1}, "fit_fraction = 1"),
    ({"fit_fraction": True}, "fit_fraction = True"),
    ({"fit_fraction": 0.1}, "leave 0 to fit"),
    ({"tol": 0}, "tol = 0"),
    ({"n_bins": 0}, "n_bins = 0"),
])
def test_temperature_scaled_metrics_errors(kw, match):
    logits, y = crafted()
    with pytest.raises(ValueError, match=match):
        C.temperature_scaled_metrics(logits, y, **kw)


def test_regime_in_words():
    assert C.REGIME_TOL == 0.01
    assert C.regime(0.05) == "over-confident"
    assert C.regime(0.01) == "over-confident"
    assert C.regime(-0.01) == "under-confident"
    assert C.regime(-0.2) == "under-confident"
    assert C.regime(0.0099) == "calibrated (|gap| < 0.01)"
    assert C.regime(-0.0099) == "calibrated (|gap| < 0.01)"
    assert C.regime(0.03, tol=0.05) == "calibrated (|gap| < 0.05)"
    logits, y = crafted()  # mean confidence .66, accuracy .6
    assert C.regime(C.calibration_metrics(logits, y)["overconfidence"]) == "over-confident"
    for bad, match in ((float("nan"), "overconfidence = nan"), ("0.1", "overconfidence = '0.1'"),
                       (True, "overconfidence = True")):
        with pytest.raises(ValueError, match=match):
            C.regime(bad)
    for tol in (0, -0.1, 1.0, None):
        with pytest.raises(ValueError, match="tol = "):
            C.regime(0.0, tol)
