"""The paper's figures, drawn with seaborn/matplotlib from the library's tables.

Each function takes results (tensors, the DataFrames of ``robustness``/``landscape``, training histories)
and returns a matplotlib Figure made outside pyplot; the notebooks only call them and display the Figure. Method colours are fixed across every figure
(``PALETTE``) so a method looks the same in each chapter.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from varmix.core.names import METHOD_LABELS, METHODS
from varmix.learn.mixing import mix_images

PALETTE = dict(zip(METHODS, sns.color_palette("colorblind", len(METHODS))))
LABELS = METHOD_LABELS

sns.set_theme(context="notebook", style="whitegrid")


def _subplots(nrows: int = 1, ncols: int = 1, figsize=None, **kw):
    """A figure outside pyplot (nothing is shown twice or kept alive): the notebook displays the
    returned Figure as its cell's value."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def _palette(methods: Sequence[str]) -> dict[str, Any]:
    """A method's own colour; arms that are not a method's name (mixup_half, adv_varmixup, ...) take the
    next unused colours of a wider palette, in order, so no two lines share one."""
    extra = iter(c for c in sns.color_palette("tab20", 20) if c not in PALETTE.values())
    return {m: PALETTE[m] if m in PALETTE else next(extra, "grey") for m in methods}


def _to_image(x: torch.Tensor) -> np.ndarray:
    """[C, H, W] in [0, 1] (or uint8) -> an array imshow draws (grey for one channel)."""
    x = x.detach().cpu()
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    x = x.clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def image_grid(rows: Sequence[torch.Tensor], row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None, title: str | None = None, size: float = 1.1):
    """Images in a grid: ``rows`` is a list of [N, C, H, W] batches (one per row, equal N)."""
    n_rows, n_cols = len(rows), len(rows[0])
    if any(len(r) != n_cols for r in rows):
        raise ValueError(f"image_grid: rows of lengths {[len(r) for r in rows]}: expected equal lengths")
    fig, axes = _subplots(n_rows, n_cols, figsize=(size * n_cols + (1.4 if row_labels else 0), size * n_rows),
                             squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.imshow(_to_image(row[j]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if col_labels is not None and i == 0:
                ax.set_title(col_labels[j], fontsize=9)
        if row_labels is not None:
            axes[i, 0].set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def mixing_figure(vae, a: torch.Tensor, b: torch.Tensor, lams: Sequence[float],
                  methods: Sequence[str] = ("mixup", "varmixup"), title: str | None = None):
    """For each pair (a[i], b[i]) one row per method, columns λ: the training image that method makes
    from that pair at that λ (``varmix.learn.mixing.mix_images``, the code the trainer runs)."""
    rows, labels = [], []
    for i in range(len(a)):
        for m in methods:
            rows.append(torch.cat([mix_images(m, a[i:i + 1], b[i:i + 1], lam, vae) for lam in lams]))
            labels.append(f"pair {i + 1}\n{LABELS.get(m, m)}")
    return image_grid(rows, labels, [f"λ={lam:g}" for lam in lams], title)


def learning_curves(history: pd.DataFrame):
    """Training loss, test loss and test accuracy per epoch; one line per method (band over seeds)."""
    methods = list(dict.fromkeys(history["method"]))
    fig, axes = _subplots(1, 3, figsize=(14, 3.6))
    for ax, (col, name) in zip(axes, [("train_loss", "training loss (mixed targets)"),
                                      ("test_loss", "test loss"), ("test_acc", "test accuracy")]):
        sns.lineplot(data=history, x="epoch", y=col, hue="method", hue_order=methods,
                     palette=_palette(methods), marker="o", errorbar=("sd", 1), ax=ax)
        ax.set_title(name)
        ax.set_ylabel("")
        if ax is not axes[-1]:
            ax.get_legend().remove()
    axes[-1].legend(title="", loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def corruption_heatmaps(grid: pd.DataFrame, metric: str = "accuracy"):
    """``metric`` for every corruption × severity, one heat map per method (mean over seeds)."""
    rows = grid[grid["corruption"] != "clean"]
    methods = list(dict.fromkeys(rows["method"]))
    order = list(dict.fromkeys(rows["corruption"]))
    n = len(methods)
    cols = min(n, 3)
    fig, axes = _subplots((n + cols - 1) // cols, cols, figsize=(4.4 * cols, 0.32 * len(order) * ((n + cols - 1) // cols) + 1.2),
                             squeeze=False, sharey=True)
    vmin, vmax = rows[metric].min(), rows[metric].max()
    for k, m in enumerate(methods):
        ax = axes[k // cols, k % cols]
        table = rows[rows["method"] == m].pivot_table(index="corruption", columns="severity", values=metric,
                                                      aggfunc="mean").reindex(order)
        sns.heatmap(table, ax=ax, vmin=vmin, vmax=vmax, cmap="viridis", annot=len(table.columns) <= 5,
                    fmt=".2f", annot_kws={"fontsize": 7}, cbar=k % cols == cols - 1)
        ax.set_title(LABELS.get(m, m))
        ax.set_ylabel("")
    for k in range(n, axes.size):
        axes.flat[k].set_visible(False)
    fig.tight_layout()
    return fig


def severity_lines(grid: pd.DataFrame, metric: str = "accuracy"):
    """``metric`` against severity (0 = clean), averaged over corruptions; one line per method."""
    g = grid.copy()
    methods = list(dict.fromkeys(g["method"]))
    fig, ax = _subplots(figsize=(6, 4))
    per = g.groupby([c for c in ("method", "seed", "severity") if c in g.columns], sort=False)[metric].mean().reset_index()
    sns.lineplot(data=per, x="severity", y=metric, hue="method", hue_order=methods, palette=_palette(methods),
                 marker="o", errorbar=("sd", 1), ax=ax)
    ax.set_xticks(sorted(per["severity"].unique()))
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel(f"{metric} (mean over corruptions)")
    ax.legend(title="", fontsize=8)
    fig.tight_layout()
    return fig


def corruption_examples(rows: Sequence[torch.Tensor], names: Sequence[str], severities: Sequence[int]):
    """One test image under every corruption (rows, ``corruptions.example_rows``) and severity (columns)."""
    return image_grid(rows, list(names), [f"severity {s}" for s in severities], size=0.9)


def ece_by_severity(table: pd.DataFrame, metric: str = "ECE"):
    """A methods × severity table (``robustness.severity_calibration``) as lines."""
    long = table.reset_index().melt(id_vars="method", var_name="severity", value_name=metric)
    methods = list(table.index)
    fig, ax = _subplots(figsize=(6, 4))
    sns.lineplot(data=long, x="severity", y=metric, hue="method", hue_order=methods, palette=_palette(methods),
                 marker="o", errorbar=("sd", 1), ax=ax)
    ax.set_xlabel("severity (0 = clean)")
    ax.legend(title="", fontsize=8)
    fig.tight_layout()
    return fig


def linearity_plot(long: pd.DataFrame):
    """γ(ε) of Qin et al.: left, the mean per method against ε; right, the distribution over images."""
    methods = list(dict.fromkeys(long["method"]))
    fig, axes = _subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": (1, 1.6)})
    sns.lineplot(data=long, x="eps_255", y="gamma", hue="method", hue_order=methods, palette=_palette(methods),
                 marker="o", errorbar=("se", 1), ax=axes[0])
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("ε (×1/255)")
    axes[0].set_ylabel("mean γ(ε) (± s.e.)")
    axes[0].legend(title="", fontsize=8)
    sns.boxplot(data=long, x="eps_255", y="gamma", hue="method", hue_order=methods, palette=_palette(methods),
                fliersize=1.5, ax=axes[1])
    axes[1].set_yscale("symlog", linthresh=1e-3)
    axes[1].set_xlabel("ε (×1/255)")
    axes[1].set_ylabel("γ per image")
    axes[1].get_legend().remove()
    fig.tight_layout()
    return fig


def input_surfaces(surfaces: Mapping[str, Mapping[str, np.ndarray]], span_255: float):
    """Input-space loss surfaces (``landscape.input_surface``): a contour per method, same colour scale."""
    methods = list(surfaces)
    cols = min(len(methods), 3)
    n_rows = (len(methods) + cols - 1) // cols
    fig, axes = _subplots(n_rows, cols, figsize=(4.2 * cols, 3.6 * n_rows), squeeze=False)
    vmax = max(float(np.max(s["loss"])) for s in surfaces.values())
    levels = np.linspace(0, vmax, 15)
    for k, m in enumerate(methods):
        s, ax = surfaces[m], axes[k // cols, k % cols]
        cs = ax.contourf(s["b"] * 255, s["a"] * 255, s["loss"], levels=levels, cmap="magma")
        ax.set_title(LABELS.get(m, m))
        ax.set_xlabel("random sign direction (×1/255)")
        ax.set_ylabel("gradient sign direction (×1/255)")
    for k in range(len(methods), axes.size):
        axes.flat[k].set_visible(False)
    fig.colorbar(cs, ax=axes.ravel().tolist(), label="mean loss")
    fig.suptitle(f"loss around test images, ±{span_255:g}/255")
    return fig


def weight_surfaces(lines: Mapping[str, Mapping[str, np.ndarray]], planes: Mapping[str, Mapping[str, np.ndarray]]):
    """Filter-normalised weight-space surfaces (``landscape.weight_surface``): 1-D loss curves of every
    method on one axis, then a 2-D contour per method."""
    methods = list(lines)
    cols = min(len(methods), 3) + 1
    n_rows = (len(methods) + cols - 2) // (cols - 1)
    fig, axes = _subplots(n_rows, cols, figsize=(4 * cols, 3.6 * n_rows), squeeze=False)
    ax = axes[0, 0]
    for m in methods:
        ax.plot(lines[m]["alpha"], lines[m]["loss"], marker=".", color=PALETTE.get(m, "grey"), label=LABELS.get(m, m))
    ax.set_yscale("log")
    ax.set_xlabel("α (filter-normalised direction)")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    ax.set_title("1-D")
    for k in range(1, n_rows):
        axes[k, 0].set_visible(False)
    for k, m in enumerate(methods):
        s, a = planes[m], axes[k // (cols - 1), 1 + k % (cols - 1)]
        cs = a.contour(s["beta"], s["alpha"], np.log10(s["loss"]), levels=12, cmap="viridis")
        a.clabel(cs, fontsize=6, fmt="%.1f")
        a.set_title(f"{LABELS.get(m, m)}: log10 loss")
    for k in range(len(methods), n_rows * (cols - 1)):
        axes[k // (cols - 1), 1 + k % (cols - 1)].set_visible(False)
    fig.tight_layout()
    return fig


VERDICT_COLOURS = {"holds": "#1b9e77", "contradicted": "#d95f02", "equivalent": "#1f78b4",
                   "inconclusive": "#7f7f7f", "not tested": "#c7c7c7"}


def forest_plot(table: pd.DataFrame):
    """``varmix.study.stats.compare``'s table as a forest plot: one panel per claim, one row per arm-vs-rival
    pair; the mean paired difference (×``scale``, in the claim's ``unit``) with the t interval as a thick
    line and the bootstrap interval as a thin one, a vertical line at 0, points coloured by verdict.
    Pairs that were not tested keep their row, with the reason written in it."""
    from matplotlib.lines import Line2D

    need = ["claim", "arm", "rival", "diff", "t_lo", "t_hi", "boot_lo", "boot_hi", "verdict", "reason",
            "label", "unit", "scale"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ValueError(f"forest_plot: columns {missing} are not among the table's columns; "
                         f"expected varmix.study.stats.compare's table")
    if table.empty:
        raise ValueError("forest_plot: the table has no rows")
    claims = list(dict.fromkeys(table["claim"]))
    sizes = [int((table["claim"] == c).sum()) for c in claims]
    fig, axes = _subplots(len(claims), 1, figsize=(7.5, 0.42 * sum(sizes) + 1.1 * len(claims) + 0.6),
                          squeeze=False, gridspec_kw={"height_ratios": sizes})
    for ax, claim in zip(axes[:, 0], claims):
        rows = table[table["claim"] == claim].reset_index(drop=True)
        k, unit = float(rows["scale"].iloc[0]), str(rows["unit"].iloc[0] or "")
        y = np.arange(len(rows))[::-1]
        for yi, r in zip(y, rows.itertuples()):
            colour = VERDICT_COLOURS.get(r.verdict, "black")
            if r.verdict == "not tested":
                ax.text(0.5, yi, f"not tested: {r.reason}", ha="center", va="center", fontsize=8, color="dimgray",
                        transform=ax.get_yaxis_transform())  # x in axes fractions: mid-panel, whatever the data
                continue
            ax.hlines(yi, r.t_lo * k, r.t_hi * k, color=colour, linewidth=5, alpha=0.55)
            ax.hlines(yi, r.boot_lo * k, r.boot_hi * k, color=colour, linewidth=1.3)
            ax.plot([r.diff * k], [yi], marker="o", markersize=6, color=colour, markeredgecolor="black",
                    markeredgewidth=0.6, linestyle="none")
        ax.axvline(0, color="black", linewidth=0.9)
        ax.set_yticks(y, [f"{r.arm} vs {r.rival}" for r in rows.itertuples()], fontsize=8)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_title(str(rows["label"].iloc[0] or claim), fontsize=10)
        ax.set_xlabel("difference (positive = paper's direction)" + (f", {unit}" if unit else ""), fontsize=9)
    handles = [Line2D([], [], marker="o", linestyle="none", color=c, markeredgecolor="black",
                      markeredgewidth=0.6, label=v) for v, c in VERDICT_COLOURS.items() if v != "not tested"]
    handles += [Line2D([], [], color="grey", linewidth=5, alpha=0.55, label="crossed t 95% CI"),
                Line2D([], [], color="grey", linewidth=1.3, label="pigeonhole bootstrap 95% CI")]
    axes[0, 0].legend(handles=handles, fontsize=7, loc="lower left", bbox_to_anchor=(1.01, 0.0), frameon=False)
    fig.tight_layout()
    return fig


def sample_distances(table: pd.DataFrame):
    """``varmix.evaluate.sample_distance.mixer_distances``'s table as bars: FID and KID (mean, with the spread
    over KID's subsets as error bars) of each set of images against the training images."""
    need = ["samples", "fid", "kid_mean", "kid_std"]
    missing = [c for c in need if c not in table.columns]
    if missing or table.empty:
        raise ValueError(f"sample_distances: columns {missing} missing or no rows; expected "
                         f"varmix.evaluate.sample_distance.distances's table")
    names = list(table["samples"])
    colours = [PALETTE.get(n, "grey") for n in names]
    labels = [LABELS.get(n, n) for n in names]
    fig, axes = _subplots(1, 2, figsize=(10, 0.45 * len(names) + 1.2))
    for ax, col, title in ((axes[0], "fid", "FID"), (axes[1], "kid_mean", "KID")):
        sns.barplot(x=table[col].to_numpy(), y=labels, hue=labels, palette=dict(zip(labels, colours)),
                    legend=False, ax=ax, orient="h")
        if col == "kid_mean":
            ax.errorbar(table["kid_mean"], np.arange(len(names)), xerr=table["kid_std"], fmt="none",
                        ecolor="black", capsize=3, linewidth=1)
        ax.set_title(f"{title} against the training images (lower: closer)", fontsize=10)
        ax.set_xlabel(title)
    axes[1].set_yticklabels([])
    fig.tight_layout()
    return fig


def perturbation_curves(curve: pd.DataFrame):
    """Accuracy under PGD-ℓ∞ against ε (``curve``: columns arm, seed, eps_255, accuracy; ε = 0 is clean):
    the mean over seeds per arm with its standard deviation as a band, accuracy in %."""
    arms = list(dict.fromkeys(curve["arm"]))
    fig, ax = _subplots(figsize=(8, 4.5))
    data = curve.assign(accuracy=100 * curve["accuracy"])
    sns.lineplot(data=data, x="eps_255", y="accuracy", hue="arm", hue_order=arms, palette=_palette(arms),
                 marker="o", errorbar="sd", ax=ax)
    ax.set_xscale("symlog", linthresh=1, base=2)
    ticks = sorted(curve["eps_255"].unique())
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel("ε (×1/255; 0 = clean)")
    ax.set_ylabel("accuracy under PGD (%, ± sd over seeds)")
    ax.legend(title="", fontsize=8, ncol=2)
    fig.tight_layout()
    return fig
