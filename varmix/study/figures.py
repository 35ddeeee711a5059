"""The paper's figures, drawn with seaborn/matplotlib from the library's tables.

Each function takes results (tensors, the DataFrames of ``robustness``/``landscape``, training histories)
and returns a matplotlib Figure made outside pyplot; the notebooks only call them and display the Figure.

Every figure that shows arms draws an arm in its own colour (``ARM_COLOURS``, via ``arm_colour``) and names it
by its one display name (``varmix.core.names.arm_label``), so an arm looks and reads the same in every chapter;
legends sit outside the axes, beside the data rather than on it; colour bars say what they measure; epochs
are whole numbers on the axis. Figures meant to span the results site's page are ``FULL_WIDTH`` wide.
"""

from __future__ import annotations

import zlib
from typing import Mapping, Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
import torch
from matplotlib import cycler
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from varmix.core.names import METHOD_LABELS, arm_label
from varmix.learn.mixing import mix_images

# One colour per arm of params.yaml's arm_settings, fixed for every figure. Families share a hue (Mixup blues,
# Mixup-R greens, VarMixup orange to red) with the two shares of mixed batches apart in lightness; any two
# colours differ by a CIE76 ΔE of at least 23 (tests/test_figures.py checks >= 20), so no two arms look alike.
ARM_COLOURS = {
    "erm": "#3b3b3b",
    "mixup": "#1f5fbf", "mixup_half": "#7fb2f0",
    "mixup_r": "#5fc25f", "mixup_r_full": "#1b7a2e",
    "varmixup": "#f28e2b", "varmixup_full": "#c0161d",
    "manifold_mixup": "#8c5fc7", "cutmix": "#8c5a3c",
    "at": "#e377c2", "trades": "#b5b51a", "iat": "#17becf", "adv_varmixup": "#f5c342",
}
# Arms added to params.yaml without a colour above take one of these, picked by a checksum of the name, so
# the same arm gets the same colour in every figure whatever other arms it is drawn with.
SPARE_COLOURS = ("#6b6ecf", "#b5cf6b", "#bd9e39", "#ad494a", "#a55194", "#7b4173", "#637939", "#9c9ede")
# The results site's notebook column at the inline backend's 100 dpi (~1,100 px): figures meant to use the
# page's width, not half of it.
FULL_WIDTH = 11.0

# seaborn's theme, sns.set_theme(context="notebook", style="whitegrid"), as the matplotlib settings it makes,
# applied without importing seaborn: seaborn's import pulls in scipy.stats, which the kernel start of every
# chapter that draws with matplotlib alone paid for (the training stages among them; issue 26,
# docs/benchmarks.md has the measurement). The three figures drawn with seaborn (heat maps, box plots, bar
# plots) import it where they draw. Left out: the theme's default colour map (image.cmap "rocket"), which
# only seaborn's import registers; every figure here names its colour map. tests/test_figures.py checks
# that apply_theme leaves matplotlib as set_theme does.
_DEEP = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD")
THEME = {
    "axes.axisbelow": True, "axes.edgecolor": ".8", "axes.facecolor": "white", "axes.grid": True,
    "axes.labelcolor": ".15", "axes.labelsize": 12, "axes.linewidth": 1.25, "axes.spines.bottom": True,
    "axes.spines.left": True, "axes.spines.right": True, "axes.spines.top": True, "axes.titlesize": 12,
    "figure.facecolor": "white", "font.family": "sans-serif",
    "font.sans-serif": ["Arial", "DejaVu Sans", "Liberation Sans", "Bitstream Vera Sans", "sans-serif"],
    "font.size": 12, "grid.color": ".8", "grid.linestyle": "-", "grid.linewidth": 1, "legend.fontsize": 11,
    "legend.title_fontsize": 12, "lines.linewidth": 1.5, "lines.markersize": 6, "lines.solid_capstyle": "round",
    "patch.edgecolor": "w", "patch.force_edgecolor": True, "patch.linewidth": 1, "text.color": ".15",
    "xtick.bottom": False, "xtick.color": ".15", "xtick.direction": "out", "xtick.labelsize": 11,
    "xtick.major.size": 6, "xtick.major.width": 1.25, "xtick.minor.size": 4, "xtick.minor.width": 1,
    "xtick.top": False, "ytick.color": ".15", "ytick.direction": "out", "ytick.labelsize": 11,
    "ytick.left": False, "ytick.major.size": 6, "ytick.major.width": 1.25, "ytick.minor.size": 4,
    "ytick.minor.width": 1, "ytick.right": False,
    "axes.prop_cycle": cycler("color", [to_rgb(c) for c in _DEEP]),
}
# set_theme's colour codes: matplotlib's one-letter colours ("b", "g", ...) as seaborn's deep palette
COLOUR_CODES = dict(zip("bgrmyck", [to_rgb(c) for c in _DEEP[0:1] + _DEEP[2:5] + _DEEP[8:10]] + [(0.1, 0.1, 0.1)]))


def apply_theme() -> None:
    """Make matplotlib draw as after ``sns.set_theme(context="notebook", style="whitegrid")`` (``THEME``,
    ``COLOUR_CODES``); done once, at import, as seaborn's call was."""
    mpl.rcParams.update(THEME)
    for code, rgb in COLOUR_CODES.items():
        mpl.colors.colorConverter.colors[code] = rgb


apply_theme()


def arm_colour(arm: str) -> str:
    """An arm's colour: ``ARM_COLOURS``'s, or for an arm without one a ``SPARE_COLOURS`` entry chosen by the
    CRC-32 of its name (the same in every figure and every Python process)."""
    if not isinstance(arm, str):
        raise ValueError(f"arm = {arm!r}: expected an arm's name (a string)")
    if arm in ARM_COLOURS:
        return ARM_COLOURS[arm]
    return SPARE_COLOURS[zlib.crc32(arm.encode()) % len(SPARE_COLOURS)]


def _subplots(nrows: int = 1, ncols: int = 1, figsize=None, layout: str | None = "constrained", **kw):
    """A figure outside pyplot (nothing is shown twice or kept alive): the notebook displays the
    returned Figure as its cell's value. Constrained layout by default, which makes room for the legends,
    colour bars and printed values placed outside the axes."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kw)


def _need(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """A ValueError naming the columns ``table`` lacks (or saying it has no rows), before any drawing."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what}: columns {missing} are not among the table's columns {list(table.columns)}")
    if table.empty:
        raise ValueError(f"{what}: the table has no rows")


def _arms(table: pd.DataFrame, column: str) -> list[str]:
    """The arms of ``column`` in their order of first appearance (the order params.yaml lists them in)."""
    return list(dict.fromkeys(table[column]))


def _hue_palette(arms: Sequence[str]) -> dict[str, str]:
    """display name -> colour, for seaborn's ``hue`` over a column of display names."""
    return {arm_label(a): arm_colour(a) for a in arms}


def _legend_outside(fig: Figure, ax, title: str | None = None) -> None:
    """One legend for the figure, right of every axes (constrained layout keeps it off the data), from
    ``ax``'s labelled artists; the axes' own legends are removed."""
    handles, labels = ax.get_legend_handles_labels()
    for a in fig.axes:
        if a.get_legend() is not None:
            a.get_legend().remove()
    fig.legend(handles, labels, loc="outside right upper", title=title, fontsize=9, title_fontsize=10, frameon=False)


def _mean_band(ax, table: pd.DataFrame, x: str, y: str, arm: str = "arm", spread: str = "sd",
               marker: str = "o") -> None:
    """Per arm (column ``arm``, first-appearance order): the mean of ``y`` at each ``x`` as a line in the
    arm's colour, labelled with its display name, and mean ± ``spread`` (``sd``: standard deviation over the
    rows at that x, e.g. the seeds; ``se``: standard error) as a band of the same colour; no band where an arm
    has one row per x (a spread of one value is undefined)."""
    if spread not in ("sd", "se"):
        raise ValueError(f"spread = {spread!r}: expected 'sd' or 'se'")
    for a in _arms(table, arm):
        g = table[table[arm] == a].groupby(x, sort=True)[y]
        mean, sd, n = g.mean(), g.std(ddof=1), g.count()
        colour = arm_colour(a)
        ax.plot(mean.index, mean.to_numpy(), color=colour, marker=marker, markersize=4, linewidth=1.6,
                label=arm_label(a))
        if (n > 1).any():
            half = sd if spread == "sd" else sd / np.sqrt(n)
            ok = (n > 1).to_numpy()
            ax.fill_between(mean.index[ok], (mean - half)[ok], (mean + half)[ok], color=colour, alpha=0.18,
                            linewidth=0, label=f"_band {a}")


def _integer_ticks(ax) -> None:
    """Whole-number ticks only on the x axis (epochs, severities): never 1.5 or 2.5, and a tick at the one
    epoch of a one-epoch run (min_n_ticks=1; MaxNLocator's default of 2 falls back to fractions there)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


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
                          layout="tight", squeeze=False)
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
    return fig


def mixing_figure(vae, a: torch.Tensor, b: torch.Tensor, lams: Sequence[float],
                  methods: Sequence[str] = ("mixup", "varmixup"), title: str | None = None):
    """For each pair (a[i], b[i]) one row per method (named as the method, ``METHOD_LABELS``), columns λ: the
    training image that method makes from that pair at that λ (``varmix.learn.mixing.mix_images``, the code
    the trainer runs)."""
    rows, labels = [], []
    for i in range(len(a)):
        for m in methods:
            rows.append(torch.cat([mix_images(m, a[i:i + 1], b[i:i + 1], lam, vae) for lam in lams]))
            labels.append(f"pair {i + 1}\n{METHOD_LABELS.get(m, m)}")
    return image_grid(rows, labels, [f"λ={lam:g}" for lam in lams], title)


def learning_curves(history: pd.DataFrame):
    """Training loss, test loss and test accuracy against the epoch, every arm on one figure: per arm the mean
    over its seeds with ± one standard deviation as a band (``history``: columns arm, seed, epoch, train_loss,
    test_loss, test_acc; the per-run plots/train-<run>.csv with their run's arm and seed)."""
    _need(history, ["arm", "seed", "epoch", "train_loss", "test_loss", "test_acc"], "learning_curves")
    fig, axes = _subplots(1, 3, figsize=(FULL_WIDTH, 3.8))
    for ax, (col, name) in zip(axes, [("train_loss", "training loss (mixed targets)"),
                                      ("test_loss", "test loss"), ("test_acc", "test accuracy")]):
        _mean_band(ax, history, "epoch", col)
        _integer_ticks(ax)
        ax.set_title(name, fontsize=11)
        ax.set_xlabel("epoch")
    axes[2].yaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")
    _legend_outside(fig, axes[0], title="arm (± sd over seeds)")
    return fig


def corruption_heatmaps(grid: pd.DataFrame, metric: str = "accuracy"):
    """``metric`` for every corruption × severity, one heat map per arm (mean over seeds), titled with the
    arm's display name, the numbers printed in each cell and one labelled colour bar for every map."""
    import seaborn as sns  # imported where it draws (THEME says why)

    _need(grid, ["method", "corruption", "severity", metric], "corruption_heatmaps")
    rows = grid[grid["corruption"] != "clean"]
    arms = _arms(rows, "method")
    order = list(dict.fromkeys(rows["corruption"]))
    n, cols = len(arms), min(len(arms), 3)
    n_rows = (n + cols - 1) // cols
    fig, axes = _subplots(n_rows, cols, figsize=(FULL_WIDTH, 0.3 * len(order) * n_rows + 0.9 * n_rows + 0.4),
                          squeeze=False, sharey=True)
    vmin, vmax = rows[metric].min(), rows[metric].max()
    for k, m in enumerate(arms):
        ax = axes[k // cols, k % cols]
        table = rows[rows["method"] == m].pivot_table(index="corruption", columns="severity", values=metric,
                                                      aggfunc="mean").reindex(order)
        sns.heatmap(table, ax=ax, vmin=vmin, vmax=vmax, cmap="viridis", annot=len(table.columns) <= 5,
                    fmt=".2f", annot_kws={"fontsize": 9}, cbar=False)
        ax.set_title(arm_label(m), fontsize=11)
        ax.set_ylabel("")
        ax.tick_params(labelsize=9)
    for k in range(n, axes.size):
        axes.flat[k].set_visible(False)
    fig.colorbar(axes[0, 0].collections[0], ax=axes.ravel().tolist(), shrink=0.6, aspect=40,
                 label=f"{metric} (mean over seeds)")
    return fig


def severity_lines(grid: pd.DataFrame, metric: str = "accuracy"):
    """``metric`` against severity (0 = clean), averaged over corruptions; per arm the mean over seeds with
    ± one standard deviation as a band."""
    _need(grid, ["method", "severity", metric], "severity_lines")
    keys = [c for c in ("method", "seed", "severity") if c in grid.columns]
    per = grid.groupby(keys, sort=False)[metric].mean().reset_index()
    fig, ax = _subplots(figsize=(8.5, 4.5))
    _mean_band(ax, per, "severity", metric, arm="method")
    _integer_ticks(ax)
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel(f"{metric} (mean over corruptions)")
    _legend_outside(fig, ax, title="arm (± sd over seeds)")
    return fig


def corruption_examples(rows: Sequence[torch.Tensor], names: Sequence[str], severities: Sequence[int]):
    """One test image under every corruption (rows, ``corruptions.example_rows``) and severity (columns)."""
    return image_grid(rows, list(names), [f"severity {s}" for s in severities], size=0.9)


def ece_by_severity(table: pd.DataFrame, metric: str = "ECE"):
    """An arms × severity table (``robustness.severity_calibration``, one row per arm and seed, concatenated
    over seeds) as lines: per arm the mean over its rows with ± one standard deviation as a band."""
    if table.empty or table.index.name != "method":
        raise ValueError(f"ece_by_severity: expected robustness.severity_calibration's table (index 'method', one "
                         f"column per severity), got index {table.index.name!r} with {len(table)} rows")
    long = table.reset_index().melt(id_vars="method", var_name="severity", value_name=metric)
    fig, ax = _subplots(figsize=(8.5, 4.5))
    _mean_band(ax, long, "severity", metric, arm="method")
    _integer_ticks(ax)
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel(metric)
    _legend_outside(fig, ax, title="arm (± sd over seeds)")
    return fig


def linearity_plot(long: pd.DataFrame):
    """γ(ε) of Qin et al.: left, the mean per arm against ε (± its standard error over images and seeds);
    right, the distribution over images as boxes, one per arm at each ε."""
    import seaborn as sns  # imported where it draws (THEME says why)

    _need(long, ["method", "eps_255", "gamma"], "linearity_plot")
    arms = _arms(long, "method")
    fig, axes = _subplots(1, 2, figsize=(FULL_WIDTH, 4.2), gridspec_kw={"width_ratios": (1, 1.6)})
    _mean_band(axes[0], long, "eps_255", "gamma", arm="method", spread="se")
    axes[0].set_xscale("log", base=2)
    ticks = sorted(long["eps_255"].unique())
    axes[0].set_xticks(ticks, [f"{t:g}" for t in ticks])
    axes[0].set_xlabel("ε (×1/255)")
    axes[0].set_ylabel("mean γ(ε) (± s.e.)")
    named = long.assign(arm=long["method"].map(arm_label))
    sns.boxplot(data=named, x="eps_255", y="gamma", hue="arm", hue_order=[arm_label(a) for a in arms],
                palette=_hue_palette(arms), fliersize=1.5, linewidth=0.8, ax=axes[1], legend=False)
    axes[1].set_yscale("symlog", linthresh=1e-3)
    axes[1].set_xticks(range(len(ticks)), [f"{t:g}" for t in ticks])
    axes[1].set_xlabel("ε (×1/255)")
    axes[1].set_ylabel("γ per image")
    _legend_outside(fig, axes[0], title="arm")
    return fig


def _grid(n: int, cols: int, width: float, row_height: float, **kw):
    """``n`` panels in rows of ``cols`` on a figure ``width`` wide; the cells left over are hidden."""
    cols = min(n, cols)
    n_rows = (n + cols - 1) // cols
    fig, axes = _subplots(n_rows, cols, figsize=(width, row_height * n_rows), squeeze=False, **kw)
    for k in range(n, axes.size):
        axes.flat[k].set_visible(False)
    return fig, axes


def input_surfaces(surfaces: Mapping[str, Mapping[str, np.ndarray]], span_255: float):
    """Input-space loss surfaces (``landscape.input_surface``): a filled contour per arm on one colour scale,
    with one labelled colour bar; the directions are named once, on the figure's edges."""
    if not surfaces:
        raise ValueError("input_surfaces: no surfaces; expected {arm: landscape.input_surface(...)}")
    arms = list(surfaces)
    fig, axes = _grid(len(arms), 4, FULL_WIDTH, 2.5, sharex=True, sharey=True)
    vmax = max(float(np.max(s["loss"])) for s in surfaces.values())
    levels = np.linspace(0, vmax, 15)
    for k, m in enumerate(arms):
        s, ax = surfaces[m], axes.flat[k]
        cs = ax.contourf(s["b"] * 255, s["a"] * 255, s["loss"], levels=levels, cmap="magma")
        ax.set_title(arm_label(m), fontsize=10)
        ax.grid(False)
    fig.colorbar(cs, ax=axes.ravel().tolist(), shrink=0.6, aspect=40, format="%.2f",
                 label="mean loss (cross-entropy)")
    fig.supxlabel("random sign direction (×1/255)", fontsize=10)
    fig.supylabel("gradient sign direction (×1/255)", fontsize=10)
    fig.suptitle(f"loss around test images, ±{span_255:g}/255", fontsize=11)
    return fig


def weight_surfaces(lines: Mapping[str, Mapping[str, np.ndarray]], planes: Mapping[str, Mapping[str, np.ndarray]]):
    """Filter-normalised weight-space surfaces (``landscape.weight_surface``): the 1-D loss curves of every
    arm on one axis (legend right of the figure), then a 2-D contour of log10 loss per arm, its levels
    written on the lines."""
    arms = list(lines)
    if not arms or set(arms) != set(planes):
        raise ValueError(f"weight_surfaces: lines for {arms} and planes for {list(planes)}: expected the same "
                         f"arms, at least one")
    cols = min(len(arms), 3) + 1
    n_rows = (len(arms) + cols - 2) // (cols - 1)
    fig, axes = _subplots(n_rows, cols, figsize=(FULL_WIDTH, 2.9 * n_rows), squeeze=False)
    ax = axes[0, 0]
    for m in arms:
        ax.plot(lines[m]["alpha"], lines[m]["loss"], marker=".", color=arm_colour(m), label=arm_label(m))
    ax.set_yscale("log")
    ax.set_xlabel("α (filter-normalised direction)")
    ax.set_ylabel("loss")
    ax.set_title("1-D, every arm", fontsize=10)
    for k in range(1, n_rows):
        axes[k, 0].set_visible(False)
    for k, m in enumerate(arms):
        s, a = planes[m], axes[k // (cols - 1), 1 + k % (cols - 1)]
        cs = a.contour(s["beta"], s["alpha"], np.log10(s["loss"]), levels=12, cmap="viridis")
        a.clabel(cs, fontsize=7, fmt="%.1f")
        a.set_title(f"{arm_label(m)}: log10 loss", fontsize=10)
    for k in range(len(arms), n_rows * (cols - 1)):
        axes[k // (cols - 1), 1 + k % (cols - 1)].set_visible(False)
    _legend_outside(fig, ax, title="arm")
    return fig


VERDICT_COLOURS = {"holds": "#1b9e77", "contradicted": "#d95f02", "equivalent": "#1f78b4",
                   "inconclusive": "#7f7f7f", "not tested": "#c7c7c7"}


def _interval_text(diff: float, lo: float, hi: float, unit: str) -> str:
    """A row's printed value: the difference and its interval, three significant figures, signed (as the
    report's tables print them, varmix.study.report.formatted_comparisons)."""
    return f"{diff:+.3g}{unit} [{lo:+.3g}, {hi:+.3g}]"


def forest_plot(table: pd.DataFrame):
    """``varmix.study.stats.compare``'s table as a forest plot, the page's full width: one panel per claim, one
    row per arm-vs-rival pair (display names); the mean paired difference (×``scale``, in the claim's
    ``unit``) with the crossed t interval as a thick line and the bootstrap interval as a thin one, a vertical
    line at 0, points coloured by verdict, and right of each row the difference, its t interval and the
    verdict printed. Pairs that were not tested keep their row, with the reason written in it."""
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
    fig, axes = _subplots(len(claims), 1, figsize=(FULL_WIDTH, 0.4 * sum(sizes) + 0.95 * len(claims) + 0.7),
                          squeeze=False, gridspec_kw={"height_ratios": sizes})
    for ax, claim in zip(axes[:, 0], claims):
        rows = table[table["claim"] == claim].reset_index(drop=True)
        k, unit = float(rows["scale"].iloc[0]), str(rows["unit"].iloc[0] or "")
        y = np.arange(len(rows))[::-1]
        values = ax.get_yaxis_transform()  # x in axes fractions, y in rows: the column right of the panel
        for yi, r in zip(y, rows.itertuples()):
            colour = VERDICT_COLOURS.get(r.verdict, "black")
            if r.verdict == "not tested":
                ax.text(0.5, yi, f"not tested: {r.reason}", ha="center", va="center", fontsize=9, color="dimgray",
                        transform=values)  # mid-panel, whatever the data
                ax.text(1.02, yi, "not tested", ha="left", va="center", fontsize=9, color="dimgray", transform=values)
                continue
            ax.hlines(yi, r.t_lo * k, r.t_hi * k, color=colour, linewidth=6, alpha=0.55)
            ax.hlines(yi, r.boot_lo * k, r.boot_hi * k, color=colour, linewidth=1.4)
            ax.plot([r.diff * k], [yi], marker="o", markersize=7, color=colour, markeredgecolor="black",
                    markeredgewidth=0.6, linestyle="none")
            ax.text(1.02, yi, f"{_interval_text(r.diff * k, r.t_lo * k, r.t_hi * k, unit)}  {r.verdict}",
                    ha="left", va="center", fontsize=9, color="black" if r.verdict == "inconclusive" else colour,
                    fontweight="normal" if r.verdict == "inconclusive" else "bold", transform=values)
        ax.axvline(0, color="black", linewidth=0.9)
        ax.set_yticks(y, [f"{arm_label(r.arm)} vs {arm_label(r.rival)}" for r in rows.itertuples()], fontsize=9)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_title(str(rows["label"].iloc[0] or claim), fontsize=11, loc="left")
        ax.text(1.02, 1.0, "difference [crossed t 95% CI]", ha="left", va="bottom", fontsize=9, color="dimgray",
                transform=ax.transAxes)
        ax.set_xlabel("difference (positive = paper's direction)" + (f", {unit.strip()}" if unit.strip() else ""),
                      fontsize=9)
    handles = [Line2D([], [], marker="o", linestyle="none", color=c, markeredgecolor="black",
                      markeredgewidth=0.6, label=v) for v, c in VERDICT_COLOURS.items() if v != "not tested"]
    handles += [Line2D([], [], color="grey", linewidth=6, alpha=0.55, label="crossed t 95% CI"),
                Line2D([], [], color="grey", linewidth=1.4, label="pigeonhole bootstrap 95% CI")]
    fig.legend(handles=handles, fontsize=9, loc="outside upper center", ncol=len(handles), frameon=False)
    return fig


def sample_distances(table: pd.DataFrame):
    """``varmix.evaluate.sample_distance.mixer_distances``'s table as bars: FID and KID (mean, with the spread
    over KID's subsets as error bars) of each set of images against the training images. A mixer's images are
    named and coloured as its method (an arm of the same name has that colour); other sets are grey."""
    import seaborn as sns  # imported where it draws (THEME says why)

    need = ["samples", "fid", "kid_mean", "kid_std"]
    missing = [c for c in need if c not in table.columns]
    if missing or table.empty:
        raise ValueError(f"sample_distances: columns {missing} missing or no rows; expected "
                         f"varmix.evaluate.sample_distance.distances's table")
    names = list(table["samples"])
    colours = [ARM_COLOURS.get(n, "grey") for n in names]
    labels = [METHOD_LABELS.get(n, arm_label(n)) for n in names]
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
    return fig


def perturbation_curves(curve: pd.DataFrame):
    """Accuracy under PGD-ℓ∞ against ε (``curve``: columns arm, seed, eps_255, accuracy; ε = 0 is clean):
    per arm the mean over seeds with ± one standard deviation as a band, accuracy in %."""
    _need(curve, ["arm", "seed", "eps_255", "accuracy"], "perturbation_curves")
    fig, ax = _subplots(figsize=(8.5, 4.5))
    _mean_band(ax, curve.assign(accuracy=100 * curve["accuracy"]), "eps_255", "accuracy")
    ax.set_xscale("symlog", linthresh=1, base=2)
    ticks = sorted(curve["eps_255"].unique())
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel("ε (×1/255; 0 = clean)")
    ax.set_ylabel("accuracy under PGD (%)")
    _legend_outside(fig, ax, title="arm (± sd over seeds)")
    return fig
