"""The figures' look, as behaviour: one colour and one display name per arm in every figure, legends off
the data, labelled colour bars, whole-number epochs, a full-width forest plot that prints its values, and
every arm's learning curve (mean line and seed band) on one figure."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_hex, to_rgb

from varmix.core import names
from varmix.evaluate import calibration
from varmix.study import figures

from test_report import _compared  # two claims x three pairs, the third not tested

ROOT = Path(__file__).resolve().parents[1]
ARMS = list(yaml.safe_load((ROOT / "params.yaml").read_text())["arm_settings"])
SEEDS = (0, 1, 2)


def _lab(colour) -> np.ndarray:
    """CIE L*a*b* (D65) of an sRGB colour, for a perceptual distance (CIE76 ΔE)."""
    rgb = np.array(to_rgb(colour))
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ lin
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])  # relative to D65 white
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _drawn(fig):
    """``fig`` laid out and drawn (constrained layout runs at draw time), with its renderer."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _lines(ax) -> dict[str, str]:
    """label -> colour (hex) of an axes' labelled lines."""
    return {l.get_label(): to_hex(l.get_color()) for l in ax.get_lines() if not l.get_label().startswith("_")}


def _bands(ax) -> list:
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def _history(arms=ARMS, seeds=SEEDS, epochs=3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame([{"arm": a, "seed": s, "epoch": e, "train_loss": 2 / e + rng.random() * 0.1,
                          "test_loss": 1.5 / e + rng.random() * 0.1, "test_acc": 0.5 + 0.1 * e + rng.random() * 0.02,
                          "lr": 1e-3} for a in arms for s in seeds for e in range(1, epochs + 1)])


def _grid(arms=ARMS) -> pd.DataFrame:
    return pd.DataFrame([{"method": a, "corruption": c, "severity": sev, "accuracy": 0.7 - 0.05 * sev + 0.01 * s,
                          "ece": 0.1 + 0.01 * sev, "seed": s}
                         for s in SEEDS for a in arms for c, sevs in (("clean", [0]), ("fog", [1, 2, 3]),
                                                                      ("snow", [1, 2, 3])) for sev in sevs])


def _arm_figures():
    """Every figure that shows arms, drawn over every arm of params.yaml: (name, figure, the axes whose
    lines carry the arms)."""
    grid = _grid()
    curve = pd.DataFrame([{"arm": a, "seed": s, "eps_255": e, "accuracy": 0.6 - 0.05 * e + 0.01 * s}
                          for a in ARMS for s in SEEDS for e in (0.0, 1.0, 2.0, 4.0)])
    long = pd.DataFrame([{"method": a, "seed": s, "eps_255": e, "image": i, "gamma": 0.01 * e * (1 + i)}
                         for a in ARMS for s in SEEDS for e in (1.0, 2.0) for i in range(3)])
    ece = pd.concat([pd.DataFrame({1: [0.1 + 0.01 * s] * len(ARMS), 2: [0.2] * len(ARMS)},
                                  index=pd.Index(ARMS, name="method")) for s in SEEDS])
    alpha = np.linspace(-1, 1, 5)
    lines = {a: {"alpha": alpha, "loss": 1 + alpha ** 2} for a in ARMS}
    planes = {a: {"alpha": alpha, "beta": alpha, "loss": 1 + np.add.outer(alpha ** 2, alpha ** 2)} for a in ARMS}
    out = []
    for name, fig in (("learning_curves", figures.learning_curves(_history())),
                      ("severity_lines", figures.severity_lines(grid)),
                      ("ece_by_severity", figures.ece_by_severity(ece)),
                      ("perturbation_curves", figures.perturbation_curves(curve)),
                      ("linearity_plot", figures.linearity_plot(long)),
                      ("weight_surfaces", figures.weight_surfaces(lines, planes))):
        out.append((name, fig, fig.axes[0]))
    return out


def test_every_arm_has_its_own_colour_and_display_name():
    assert set(ARMS) <= set(figures.ARM_COLOURS), "an arm of params.yaml has no colour"
    assert set(ARMS) <= set(names.ARM_LABELS), "an arm of params.yaml has no display name"
    labels = [names.arm_label(a) for a in ARMS]
    assert len(set(labels)) == len(ARMS)
    # distinct to the eye, not only as hex strings: CIE76 ΔE >= 20 between any two arms
    closest = min((float(np.linalg.norm(_lab(figures.arm_colour(a)) - _lab(figures.arm_colour(b)))), a, b)
                  for a, b in itertools.combinations(ARMS, 2))
    assert closest[0] >= 20, f"{closest[1]} and {closest[2]} look alike (ΔE {closest[0]:.1f})"
    # an arm added later gets a colour too, the same every time
    assert figures.arm_colour("new_arm") == figures.arm_colour("new_arm") in figures.SPARE_COLOURS
    assert names.arm_label("new_arm") == "new_arm"
    with pytest.raises(ValueError, match="expected an arm's name"):
        figures.arm_colour(3)


def test_an_arm_has_the_same_colour_and_name_in_every_figure():
    expected = {names.arm_label(a): to_hex(figures.arm_colour(a)) for a in ARMS}
    for name, fig, ax in _arm_figures():
        assert _lines(ax) == expected, name
        legend = fig.legends[0]
        assert [t.get_text() for t in legend.get_texts()] == [names.arm_label(a) for a in ARMS], name
    # the same colours whatever subset of arms a figure shows
    two = figures.learning_curves(_history(arms=["cutmix", "erm"]))
    assert _lines(two.axes[0]) == {names.arm_label(a): expected[names.arm_label(a)] for a in ("cutmix", "erm")}


def test_legends_lie_outside_the_axes_data_area():
    for name, fig, _ in _arm_figures():
        renderer = _drawn(fig)
        assert fig.legends, f"{name}: no figure legend"
        assert all(ax.get_legend() is None for ax in fig.axes), f"{name}: a legend inside an axes"
        box = fig.legends[0].get_window_extent(renderer)
        for ax in fig.axes:
            if ax.get_visible():
                assert not box.overlaps(ax.get_window_extent(renderer)), f"{name}: the legend covers {ax.get_title()!r}"


def test_epoch_ticks_are_whole_numbers():
    for epochs in (1, 3, 7):
        fig = figures.learning_curves(_history(arms=["erm", "mixup"], epochs=epochs))
        _drawn(fig)
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            shown = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert shown and all(float(t).is_integer() for t in shown), (epochs, shown)


def test_learning_curves_draw_one_line_and_one_band_per_arm_on_one_figure():
    history = _history()
    fig = figures.learning_curves(history)
    assert len(fig.axes) == 3 and fig.get_size_inches()[0] == figures.FULL_WIDTH
    for ax in fig.axes:
        assert len(_lines(ax)) == len(ARMS) and len(_bands(ax)) == len(ARMS)
    # the line is the mean over seeds, the band mean ± sd over seeds
    erm = history[history["arm"] == "erm"].groupby("epoch")["test_acc"]
    line = next(l for l in fig.axes[2].get_lines() if l.get_label() == "ERM")
    assert line.get_ydata() == pytest.approx(erm.mean().to_numpy())
    band = _bands(fig.axes[2])[0].get_paths()[0].vertices[:, 1]
    assert band.max() == pytest.approx((erm.mean() + erm.std()).max())
    assert band.min() == pytest.approx((erm.mean() - erm.std()).min())
    with pytest.raises(ValueError, match=r"columns \['arm'\] are not among"):
        figures.learning_curves(history.rename(columns={"arm": "method"}))


def test_colour_bars_have_labels():
    heat = figures.corruption_heatmaps(_grid())
    bars = [ax for ax in heat.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "accuracy (mean over seeds)"
    titles = [ax.get_title() for ax in heat.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert titles == [names.arm_label(a) for a in ARMS]  # display names, never arm ids
    texts = [t for ax in heat.axes for t in ax.texts]
    assert texts and min(t.get_fontsize() for t in texts) >= 9
    b = np.linspace(-1, 1, 3)
    surfaces = figures.input_surfaces({a: {"a": b, "b": b, "loss": np.add.outer(b, b) + 2} for a in ARMS[:4]}, 8)
    bars = [ax for ax in surfaces.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "mean loss (cross-entropy)"


def test_forest_plot_is_full_width_and_prints_each_rows_difference_and_interval():
    table = _compared()
    fig = figures.forest_plot(table)
    renderer = _drawn(fig)
    assert fig.get_size_inches()[0] == figures.FULL_WIDTH
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    for r in table.iloc[:2].itertuples():
        printed = f"{r.diff * 100:+.3g}% [{r.t_lo * 100:+.3g}, {r.t_hi * 100:+.3g}]"
        assert any(printed in t and r.verdict in t for t in texts), (printed, texts)
    assert "not tested" in texts
    # rows named by display names; the values right of the data, the legend above it
    assert [t.get_text() for t in sorted(ax.get_yticklabels(), key=lambda t: -t.get_position()[1])] == [
        "VarMixup (full) vs Mixup (half)", "VarMixup (full) vs ERM", "VarMixup (full) vs CutMix"]
    data = ax.get_window_extent(renderer)
    values = [t for t in ax.texts if t.get_text().startswith(("+", "-"))]
    assert values and all(t.get_window_extent(renderer).x0 > data.x1 for t in values)
    assert not fig.legends[0].get_window_extent(renderer).overlaps(data)


def test_reliability_grid_titles_are_display_names():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 50)
    fig = calibration.reliability_grid({a: rng.normal(size=(50, 3)) for a in ("varmixup", "mixup_r_full")}, labels, 5)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["VarMixup (half)", "Mixup-R (full)"]


def _rc_after(theme_call) -> tuple[dict, dict]:
    """matplotlib's rcParams and one-letter colours after ``theme_call``, from defaults plus what the inline
    backend sets (so a key the theme resets to matplotlib's default is checked too), then restored."""
    import matplotlib as mpl

    codes = dict(mpl.colors.colorConverter.colors)
    with mpl.rc_context():
        mpl.rcdefaults()
        mpl.rcParams.update({"figure.facecolor": (1, 1, 1, 0), "font.size": 10, "axes.spines.top": False})
        theme_call()
        rc = {k: v for k, v in mpl.rcParams.items() if k != "image.cmap"}
        after = {c: mpl.colors.colorConverter.colors[c] for c in "bgrmyck"}
    for c, v in codes.items():
        mpl.colors.colorConverter.colors[c] = v
    return rc, after


def test_theme_draws_as_seaborns_set_theme():
    """figures applies seaborn's theme without importing seaborn (issue 26: scipy.stats at every kernel start);
    the settings it applies must stay exactly seaborn's, every rcParam and one-letter colour (but the colour
    map default, which needs seaborn's import and which no figure uses), whatever seaborn version is locked."""
    import seaborn as sns

    ours = _rc_after(figures.apply_theme)
    theirs = _rc_after(lambda: sns.set_theme(context="notebook", style="whitegrid"))
    assert ours[1] == theirs[1]
    diff = {k: (ours[0][k], theirs[0][k]) for k in theirs[0] if ours[0][k] != theirs[0][k]}
    assert not diff, f"figures.THEME differs from sns.set_theme: {diff}"
    assert set(sns.axes_style("whitegrid")) - {"image.cmap"} <= set(figures.THEME)


def test_importing_figures_does_not_import_seaborn():
    """The chapters that draw with matplotlib alone must not pay seaborn's (and scipy.stats') import."""
    import subprocess
    import sys

    code = "import sys, varmix.study.figures; print('seaborn' in sys.modules, 'scipy.stats' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]
