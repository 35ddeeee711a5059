"""Calibration of a classifier, computed from its logits.

Every function takes ``logits`` ``[N, K]`` (a float torch tensor or numpy array, any device) and
``labels`` ``[N]`` (integers in ``0..K-1``), checks them before any work, and computes in float64 on
the CPU; scalar metrics come back as Python floats.

Conventions (see docs/ARCHITECTURE.md and the Calibration section of the shared reference):

- **Confidence** is the top-label softmax probability ``max_k p_k``; a prediction is correct when its
  arg-max (first index on ties, as ``torch.argmax``) equals the label.
- **Bins**: ``n_bins`` equal-width bins over [0, 1], each **(lower, upper]** — the convention of
  Guo et al. 2017 and gpleiss/temperature_scaling — so a confidence of exactly 1.0 lands in the last bin
  and one exactly on an inner edge ``b/n_bins`` lands in the bin *below* it. Edges are
  ``torch.linspace(0, 1, n_bins + 1)`` in float64. torchmetrics (``CalibrationError``,
  ``MulticlassCalibrationError``) uses [lower, upper) instead: an inner edge lands in the bin above, and a
  confidence of exactly 1.0 falls out of its last bin into an extra one-point bin [1, 1] of its own. The two
  agree whenever no confidence sits exactly on an edge (tests/test_calibration.py shows both cases).
- **ECE** = Σ_b (n_b / N) · |acc_b − conf_b| over the bins; **MCE** = max_b |acc_b − conf_b| over the
  non-empty bins.
- **NLL**: mean over samples of −log p_y. **Brier**: the multi-class sum Σ_k (p_k − 1[k = y])², averaged
  over samples (ranges 0..2; the variant that scores only the true class is *not* used).
- **Overconfidence** = mean confidence − accuracy (positive: overconfident).
- **Temperature scaling** (Guo et al.): ``T`` minimising the NLL of ``logits / T``, fitted by LBFGS on
  ``log T`` (so ``T > 0``) starting from ``init = 1.5``; fit it on held-out data, not the test set.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from varmix.core.names import arm_label

__all__ = [
    "REGIME_TOL", "accuracy", "apply_temperature", "bin_edges", "brier", "calibration_metrics", "conf_correct",
    "confidences", "ece", "ece_from_conf_correct", "fit_temperature", "mce", "mean_confidence", "nll",
    "overconfidence", "probabilities", "regime", "reliability_bins", "reliability_diagram", "reliability_grid",
    "temperature_scaled_metrics",
]


# ----------------------------------------------------------------------------------------------
# input checks
def _as_tensor(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{what} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _check_logits(logits: Any) -> torch.Tensor:
    t = _as_tensor(logits, "logits")
    if t.ndim != 2:
        raise ValueError(f"logits must be 2-D [N, classes], got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"logits must be a floating-point array, got dtype {t.dtype}")
    n, k = t.shape
    if n < 1:
        raise ValueError(f"logits must hold at least one sample, got shape {tuple(t.shape)}")
    if k < 2:
        raise ValueError(f"logits must have at least 2 classes (columns), got shape {tuple(t.shape)}")
    t = t.to(device="cpu", dtype=torch.float64)
    if torch.isnan(t).any():
        row = int(torch.isnan(t).any(dim=1).nonzero()[0])
        raise ValueError(f"logits contain NaN (first at row {row}); expected real numbers")
    if (t == math.inf).any():
        row = int((t == math.inf).any(dim=1).nonzero()[0])
        raise ValueError(f"logits contain +inf (first at row {row}); expected finite values or -inf")
    if (t == -math.inf).all(dim=1).any():
        row = int((t == -math.inf).all(dim=1).nonzero()[0])
        raise ValueError(f"logits row {row} is all -inf; expected at least one finite value per row")
    return t


def _check(logits: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    t = _check_logits(logits)
    y = _as_tensor(labels, "labels")
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D [N], got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must have an integer dtype, got {y.dtype}")
    if y.shape[0] != t.shape[0]:
        raise ValueError(f"labels has {y.shape[0]} entries but logits has {t.shape[0]} rows; expected equal")
    y = y.to(device="cpu", dtype=torch.int64)
    k = t.shape[1]
    bad = (y < 0) | (y >= k)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"labels[{i}] = {int(y[i])} is out of range; expected 0 <= label < {k} (number of classes)")
    return t, y


def check_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins = {n_bins!r} is invalid: expected an integer >= 1")
    return int(n_bins)


# ----------------------------------------------------------------------------------------------
# building blocks
def probabilities(logits: Any) -> torch.Tensor:
    """Softmax probabilities ``[N, K]`` (float64, CPU)."""
    return torch.softmax(_check_logits(logits), dim=1)


def confidences(logits: Any) -> torch.Tensor:
    """Top-label confidence ``max_k p_k`` per sample (float64, CPU)."""
    return probabilities(logits).max(dim=1).values


def bin_edges(n_bins: int) -> torch.Tensor:
    """The ``n_bins + 1`` equal-width bin edges over [0, 1] (float64)."""
    return torch.linspace(0.0, 1.0, check_bins(n_bins) + 1, dtype=torch.float64)


def _bin_index(conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin of each confidence under the (lower, upper] convention: ``bucketize`` with ``right=False``
    returns i with edges[i-1] < c <= edges[i] over the inner edges, i.e. bin i = (i/n, (i+1)/n]."""
    inner = bin_edges(n_bins)[1:-1]
    return torch.bucketize(conf, inner, right=False)


def _conf_correct(t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.softmax(t, dim=1)
    conf, pred = p.max(dim=1)
    return conf, (pred == y).to(torch.float64)


def _bin_stats(t: torch.Tensor, y: torch.Tensor, n_bins: int):
    """Per-bin count, mean accuracy and mean confidence (NaN for empty bins)."""
    return _bin_stats_of(*_conf_correct(t, y), n_bins)


def _bin_stats_of(conf: torch.Tensor, correct: torch.Tensor, n_bins: int):
    """:func:`_bin_stats` from per-sample confidences and 0/1 correctness (float64)."""
    idx = _bin_index(conf, n_bins)
    count = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, torch.ones_like(conf))
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, correct)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, conf)
    return count, acc_sum / count, conf_sum / count  # 0/0 = NaN for empty bins


# ----------------------------------------------------------------------------------------------
# metrics
def accuracy(logits: Any, labels: Any) -> float:
    """Fraction of samples whose arg-max equals the label."""
    t, y = _check(logits, labels)
    return float((t.argmax(dim=1) == y).to(torch.float64).mean())


def mean_confidence(logits: Any, labels: Any) -> float:
    """Mean top-label confidence (``labels`` are only checked, for a uniform signature)."""
    t, y = _check(logits, labels)
    return float(torch.softmax(t, dim=1).max(dim=1).values.mean())


def _ece_of(count: torch.Tensor, acc: torch.Tensor, cbin: torch.Tensor) -> float:
    nonempty = count > 0
    gap = (acc[nonempty] - cbin[nonempty]).abs()
    return float((count[nonempty] / count.sum() * gap).sum())


def ece(logits: Any, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error, Σ_b (n_b/N)|acc_b − conf_b| over ``n_bins`` (lower, upper] bins."""
    n_bins = check_bins(n_bins)
    t, y = _check(logits, labels)
    return _ece_of(*_bin_stats(t, y, n_bins))


def conf_correct(logits: Any, labels: Any) -> np.ndarray:
    """Per-sample rows ``[N, 2]`` (float64): the top-label confidence and 1.0/0.0 for a correct/wrong
    prediction, exactly the values :func:`ece` bins. For a bootstrap of the ECE over test images:
    resample rows and call :func:`ece_from_conf_correct` on them."""
    t, y = _check(logits, labels)
    conf, correct = _conf_correct(t, y)
    return torch.stack([conf, correct], dim=1).numpy()


def ece_from_conf_correct(rows: Any, n_bins: int = 15) -> float:
    """The ECE of per-sample rows from :func:`conf_correct` (same bins and arithmetic as :func:`ece`, so
    ``ece_from_conf_correct(conf_correct(logits, labels)) == ece(logits, labels)`` exactly)."""
    n_bins = check_bins(n_bins)
    r = np.asarray(rows)
    if r.ndim != 2 or r.shape[1] != 2 or r.shape[0] < 1 or not np.issubdtype(r.dtype, np.floating):
        raise ValueError(f"rows is {r.dtype} of shape {r.shape}: expected float rows [N, 2] "
                         f"(confidence, correct) from conf_correct with N >= 1")
    conf, correct = (torch.from_numpy(np.ascontiguousarray(r[:, j], dtype=np.float64)) for j in (0, 1))
    if not ((conf >= 0) & (conf <= 1)).all() or not ((correct == 0) | (correct == 1)).all():
        raise ValueError("rows hold a confidence outside [0, 1] or a correctness other than 0/1: expected "
                         "rows from conf_correct")
    return _ece_of(*_bin_stats_of(conf, correct, n_bins))


def mce(logits: Any, labels: Any, n_bins: int = 15) -> float:
    """Maximum calibration error, max_b |acc_b − conf_b| over the non-empty (lower, upper] bins."""
    n_bins = check_bins(n_bins)
    t, y = _check(logits, labels)
    count, acc, cbin = _bin_stats(t, y, n_bins)
    nonempty = count > 0
    return float((acc[nonempty] - cbin[nonempty]).abs().max())


def nll(logits: Any, labels: Any) -> float:
    """Mean negative log-likelihood of the true class (natural log)."""
    t, y = _check(logits, labels)
    return float(-torch.log_softmax(t, dim=1).gather(1, y[:, None]).mean())


def brier(logits: Any, labels: Any) -> float:
    """Multi-class Brier score Σ_k (p_k − y_k)² with one-hot y, averaged over samples (0..2)."""
    t, y = _check(logits, labels)
    p = torch.softmax(t, dim=1)
    onehot = torch.nn.functional.one_hot(y, t.shape[1]).to(torch.float64)
    return float(((p - onehot) ** 2).sum(dim=1).mean())


def overconfidence(logits: Any, labels: Any) -> float:
    """Mean confidence − accuracy (positive: the model is overconfident on average)."""
    t, y = _check(logits, labels)
    conf, correct = _conf_correct(t, y)
    return float(conf.mean() - correct.mean())


def calibration_metrics(logits: Any, labels: Any, n_bins: int = 15) -> dict[str, float]:
    """All scalar metrics at once: accuracy, ece, mce, nll, brier, overconfidence, mean_confidence."""
    n_bins = check_bins(n_bins)
    t, y = _check(logits, labels)
    conf, correct = _conf_correct(t, y)
    count, acc, cbin = _bin_stats_of(conf, correct, n_bins)
    nonempty = count > 0
    gap = (acc[nonempty] - cbin[nonempty]).abs()
    logp = torch.log_softmax(t, dim=1)
    p = logp.exp()
    onehot = torch.nn.functional.one_hot(y, t.shape[1]).to(torch.float64)
    return {
        "accuracy": float(correct.mean()),
        "ece": _ece_of(count, acc, cbin),
        "mce": float(gap.max()),
        "nll": float(-logp.gather(1, y[:, None]).mean()),
        "brier": float(((p - onehot) ** 2).sum(dim=1).mean()),
        "overconfidence": float(conf.mean() - correct.mean()),
        "mean_confidence": float(conf.mean()),
    }


def reliability_bins(logits: Any, labels: Any, n_bins: int = 15):
    """One row per bin: ``bin``, ``lower``, ``upper`` (the bin is (lower, upper]), ``count``,
    ``accuracy`` and ``confidence`` (means over the bin; NaN when empty) and ``gap`` = confidence − accuracy."""
    import pandas as pd

    n_bins = check_bins(n_bins)
    t, y = _check(logits, labels)
    count, acc, cbin = _bin_stats(t, y, n_bins)
    edges = bin_edges(n_bins).numpy()
    return pd.DataFrame({
        "bin": np.arange(n_bins),
        "lower": edges[:-1],
        "upper": edges[1:],
        "count": count.numpy().astype(np.int64),
        "accuracy": acc.numpy(),
        "confidence": cbin.numpy(),
        "gap": (cbin - acc).numpy(),
    })


def reliability_diagram(logits: Any, labels: Any, n_bins: int = 15, ax: Any = None, title: str | None = None):
    """Reliability diagram in the style of Guo et al. 2017, Fig. 1; returns the matplotlib Figure.

    Top panel: accuracy per bin (bars) against the diagonal, the gap between each bin's accuracy and its
    mean confidence shaded (hatched), and the ECE printed on the plot. Bottom panel: the histogram of
    confidences (fraction of samples per bin) with vertical lines at the mean accuracy and the mean
    confidence. ``ax``: None (a new two-panel figure), one Axes (only the reliability panel is drawn there)
    or a pair of Axes (reliability, histogram). Only the object-oriented API is used, so it works under the
    Agg backend and leaves pyplot's state alone.
    """
    n_bins = check_bins(n_bins)
    t, y = _check(logits, labels)
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.2, 5.6), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    elif isinstance(ax, Sequence) or isinstance(ax, np.ndarray):
        axes = list(np.ravel(ax)) if isinstance(ax, np.ndarray) else list(ax)
        if len(axes) != 2:
            raise ValueError(f"ax must be None, one Axes or a pair of Axes, got a sequence of {len(axes)}")
        top, bottom = axes
        fig = top.figure
    elif hasattr(ax, "bar") and hasattr(ax, "figure"):
        top, bottom, fig = ax, None, ax.figure
    else:
        raise ValueError(f"ax must be None, one matplotlib Axes or a pair of Axes, got {type(ax).__name__}")

    count, acc, cbin = _bin_stats(t, y, n_bins)
    conf, correct = _conf_correct(t, y)
    m = calibration_metrics(t, y, n_bins)
    edges = bin_edges(n_bins).numpy()
    width = 1.0 / n_bins
    left = edges[:-1]
    nonempty = (count > 0).numpy()
    acc_np = np.where(nonempty, acc.numpy(), 0.0)
    conf_np = np.where(nonempty, cbin.numpy(), 0.0)

    top.bar(left, acc_np, width=width, align="edge", color="#1f77b4", edgecolor="black", linewidth=0.6,
            label="Outputs (accuracy)")
    gap = conf_np - acc_np
    top.bar(left[nonempty], gap[nonempty], bottom=acc_np[nonempty], width=width, align="edge",
            color="#d62728", alpha=0.3, edgecolor="#d62728", hatch="//", linewidth=0.6, label="Gap")
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1.0)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("Accuracy")
    top.legend(loc="upper left", fontsize=8, frameon=True)
    top.text(0.96, 0.04, f"ECE = {m['ece']:.4f}", transform=top.transAxes, ha="right", va="bottom",
             fontsize=10, bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "gray", "alpha": 0.9})
    if title is not None:
        top.set_title(title)

    if bottom is not None:
        frac = (count / count.sum()).numpy()
        bottom.bar(left, frac, width=width, align="edge", color="#1f77b4", edgecolor="black", linewidth=0.6)
        bottom.axvline(m["accuracy"], color="black", linestyle="--", linewidth=1.2,
                       label=f"Accuracy ({m['accuracy']:.3f})")
        bottom.axvline(m["mean_confidence"], color="#d62728", linestyle=":", linewidth=1.5,
                       label=f"Avg. confidence ({m['mean_confidence']:.3f})")
        bottom.set_xlim(0, 1)
        bottom.set_xlabel("Confidence")
        bottom.set_ylabel("% of samples")
        bottom.yaxis.set_major_formatter(_percent_formatter())
        bottom.legend(loc="upper left", fontsize=7, frameon=True)
    else:
        top.set_xlabel("Confidence")
    return fig


def _percent_formatter():
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=0)


# ----------------------------------------------------------------------------------------------
# temperature scaling
def _check_temperature(temperature: Any, what: str = "temperature") -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what} = {temperature!r} is invalid: expected a positive finite number")
    value = float(temperature)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{what} = {temperature!r} is invalid: expected a positive finite number")
    return value


def apply_temperature(logits: Any, temperature: float):
    """``logits / temperature``, returned as the same kind of array (torch or numpy, dtype kept)."""
    temperature = _check_temperature(temperature)
    if isinstance(logits, np.ndarray):
        if logits.ndim != 2 or not np.issubdtype(logits.dtype, np.floating):
            raise ValueError(f"logits must be a 2-D float array, got shape {logits.shape} dtype {logits.dtype}")
        return logits / np.asarray(temperature, dtype=logits.dtype)
    if isinstance(logits, torch.Tensor):
        if logits.ndim != 2 or not logits.is_floating_point():
            raise ValueError(f"logits must be a 2-D float tensor, got shape {tuple(logits.shape)} dtype {logits.dtype}")
        return logits / temperature
    raise TypeError(f"logits must be a torch.Tensor or numpy.ndarray, got {type(logits).__name__}")


def fit_temperature(logits: Any, labels: Any, init: float = 1.5, max_iter: int = 50) -> float:
    """Temperature ``T > 0`` minimising the mean NLL of ``logits / T`` (Guo et al. 2017).

    LBFGS (strong-Wolfe line search) over ``log T`` from ``log(init)``; ``max_iter`` bounds LBFGS
    iterations. Fit on held-out (validation) logits. Raises ValueError for non-finite logits.
    """
    init = _check_temperature(init, "init")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter = {max_iter!r} is invalid: expected an integer >= 1")
    t, y = _check(logits, labels)
    if not torch.isfinite(t).all():
        raise ValueError("fit_temperature needs finite logits (found -inf); expected finite values")
    log_t = torch.tensor([math.log(init)], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=int(max_iter), line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(t / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    value = float(log_t.detach().exp())
    if not (math.isfinite(value) and value > 0):
        raise RuntimeError(f"temperature fit diverged (T = {value}); the logits may be perfectly separable")
    return value


def temperature_scaled_metrics(logits: Any, labels: Any, n_bins: int = 15, fit_fraction: float = 0.5,
                               tol: float | None = None) -> dict[str, Any]:
    """Temperature scaling evaluated on data it was not fitted on (docs/DEPARTURES.md, row 12).

    ``T = fit_temperature`` on the first ``floor(N · fit_fraction)`` samples (in the given order), then
    the metrics of ``logits / T`` on the remaining ones. Returns ``temperature``, ``n_fit``, ``n_eval``,
    ``ece_temperature_scaled``, ``nll_temperature_scaled``, ``overconfidence_temperature_scaled``,
    ``accuracy_temperature_scaled`` (the accuracy of the evaluated part: T > 0 keeps every prediction)
    and ``regime_temperature_scaled`` (:func:`regime` of the scaled overconfidence with ``tol``, default
    :data:`REGIME_TOL`).
    """
    n_bins = check_bins(n_bins)
    if isinstance(fit_fraction, bool) or not isinstance(fit_fraction, (int, float, np.integer, np.floating)) \
            or not 0 < float(fit_fraction) < 1:
        raise ValueError(f"fit_fraction = {fit_fraction!r} is invalid: expected a number in (0, 1)")
    tol = REGIME_TOL if tol is None else _check_tol(tol)
    t, y = _check(logits, labels)
    n_fit = int(math.floor(t.shape[0] * float(fit_fraction)))
    if n_fit < 1 or n_fit >= t.shape[0]:
        raise ValueError(f"{t.shape[0]} samples with fit_fraction = {fit_fraction!r} leave {n_fit} to fit and "
                         f"{t.shape[0] - n_fit} to evaluate: expected at least 1 in each part")
    temp = fit_temperature(t[:n_fit], y[:n_fit])
    scaled = calibration_metrics(t[n_fit:] / temp, y[n_fit:], n_bins)
    return {
        "temperature": temp,
        "n_fit": n_fit,
        "n_eval": int(t.shape[0] - n_fit),
        "ece_temperature_scaled": scaled["ece"],
        "nll_temperature_scaled": scaled["nll"],
        "overconfidence_temperature_scaled": scaled["overconfidence"],
        "accuracy_temperature_scaled": scaled["accuracy"],
        "regime_temperature_scaled": regime(scaled["overconfidence"], tol),
    }


# ----------------------------------------------------------------------------------------------
# the sign of the calibration gap, in words
REGIME_TOL = 0.01
"""|overconfidence| below which :func:`regime` calls a model calibrated: one percentage point, the
resolution the accuracy tables report. It is also about two standard errors of a test accuracy near 0.9
on 5,000 images (sqrt(0.9 · 0.1 / 5000) = 0.0042), the size of gap one test set cannot tell from zero."""


def _check_tol(tol: Any) -> float:
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)) \
            or not (0 < float(tol) < 1):
        raise ValueError(f"tol = {tol!r} is invalid: expected a number in (0, 1)")
    return float(tol)


def regime(overconfidence: float, tol: float = REGIME_TOL) -> str:
    """``"over-confident"`` when ``overconfidence`` (mean confidence − accuracy, as in
    :func:`calibration_metrics`) is >= ``tol``, ``"under-confident"`` when it is <= −``tol``, else
    ``"calibrated (|gap| < {tol:g})"``. ``tol``: :data:`REGIME_TOL` (0.01) by default."""
    tol = _check_tol(tol)
    if isinstance(overconfidence, bool) or not isinstance(overconfidence, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(overconfidence)):
        raise ValueError(f"overconfidence = {overconfidence!r} is invalid: expected a finite number "
                         f"(mean confidence − accuracy)")
    gap = float(overconfidence)
    if gap >= tol:
        return "over-confident"
    if gap <= -tol:
        return "under-confident"
    return f"calibrated (|gap| < {tol:g})"


def reliability_grid(logits: Mapping[str, Any], labels: Any, n_bins: int = 15):
    """One Guo et al. reliability diagram per arm, side by side (``logits``: {arm: [N, K]}), titled with the
    arm's display name (``varmix.core.names.arm_label``, as every figure names it)."""
    from matplotlib.figure import Figure

    methods = list(logits)
    cols = min(len(methods), 3)
    n_rows = (len(methods) + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 4.6 * n_rows))
    sub = fig.subfigures(n_rows, cols, squeeze=False)
    for k, m in enumerate(methods):
        panel = sub[k // cols, k % cols]
        gs = panel.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
        reliability_diagram(logits[m], labels, n_bins=n_bins, ax=(panel.add_subplot(gs[0]), panel.add_subplot(gs[1])),
                            title=arm_label(m))
    return fig
