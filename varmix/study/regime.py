"""The regime chapter (08_regime): do the report's differences move with training?

The primary pair's arms (params.yaml's ``regime_arms``) are trained with a longer budget (the profile's
``regime``: more images and epochs, the recipe otherwise the study's) and ``regime_seeds``, then scored on the
study's four claims with the study's own evaluation functions, settings and test images
(:func:`per_image`), compared pair by pair with the study's crossed intervals (``stats.compare``), and set
beside the study's own differences from report.json (:func:`beside`). Descriptive: the analysis plan's family
and its verdicts are the study's; this chapter reports intervals and whether the direction and the size of
each difference moved, no verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from varmix.core.names import run_name

# the columns report.json's comparisons and stats.compare share that this chapter sets side by side
_SIDE = ("diff", "t_lo", "t_hi", "boot_lo", "boot_hi", "n_seeds")


def per_image(folders: Mapping[tuple[str, int], Path], logits: Mapping[str, tuple[Any, Any]], data, ev,
              device: str | torch.device | None = None) -> dict[str, dict[tuple[str, int], np.ndarray]]:
    """The four claims' per-image arrays of the trained runs in ``folders`` ((arm, seed) -> a
    ``train_classifier`` folder), keyed metric -> (arm, seed) as ``stats.compare`` takes them
    (``report.per_image_inputs``), made by the chapters' own functions with the profile's ``eval`` settings
    ``ev`` on the chapters' test images: the corruption grid (03; the first ``test_subset`` images, seed 0),
    the clean test ``logits`` (04; run name -> (logits, labels) as ``io.read_logits`` returns the committed
    file the chapter writes :func:`stored_logits` to, so every number recomputes from it), γ at 8/255 (05;
    the first ``linearity_images``) and PGD at every
    ``perturbation_eps`` (06; the first ``perturbation_images``, generator seed 0). Also ``accuracy`` (clean,
    from the logits), so the chapter can show how far the longer training got."""
    from varmix.evaluate import perturbation, robustness
    from varmix.evaluate.landscape import linearity_table
    from varmix.learn.data import to_float
    from varmix.learn.train import load_classifier
    from varmix.study.report import per_image_inputs

    if not folders:
        raise ValueError("no runs: expected at least one (arm, seed) -> model folder")
    missing = sorted({run_name(a, sd) for a, sd in folders} - set(logits))
    if missing:
        raise ValueError(f"no clean test logits for the runs {missing}: expected one (logits, labels) pair per "
                         f"run of folders (stored_logits)")
    models = {key: load_classifier(folder, device) for key, folder in folders.items()}
    n = ev.test_subset
    x, y = data.test_x[:n], data.test_y[:n]
    corrupted = {}
    for sd in sorted({sd for _, sd in models}):
        _, images = robustness.corruption_grid({a: m for (a, s), m in models.items() if s == sd}, x, y,
                                               ev.corruptions, ev.severities, seed=0, batch_size=ev.batch_size,
                                               device=device, n_bins=ev.ece_bins, per_image=True)
        corrupted.update({run_name(a, sd): v for a, v in images.items()})
    k = ev.linearity_images
    xl, yl = to_float(data.test_x[:k]), data.test_y[:k]
    gammas = pd.concat([linearity_table(m, xl, yl, [8], steps=ev.linearity_steps, gen_seed=0,
                                        step_size_factor=ev.linearity_step_factor, restarts=ev.linearity_restarts,
                                        clip=ev.linearity_clip, per_example=True).assign(method=a, seed=sd)
                        for (a, sd), m in models.items()], ignore_index=True)
    p = min(ev.perturbation_images, len(data.test_x))
    xp, yp = to_float(data.test_x[:p]), data.test_y[:p]
    masks = {run_name(a, sd): perturbation.pgd_robust(
        m, xp, yp, [e / 255 for e in ev.perturbation_eps], steps=ev.perturbation_steps,
        restarts=ev.perturbation_restarts, step_factor=ev.perturbation_step_factor,
        gen=torch.Generator().manual_seed(0), batch_size=ev.batch_size, device=device)
        for (a, sd), m in models.items()}
    return per_image_inputs(corrupted, {run_name(a, sd): logits[run_name(a, sd)] for a, sd in folders}, gammas, 8,
                            perturbations=masks)


def stored_logits(folders: Mapping[tuple[str, int], Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Run name -> (clean test logits, labels) of the trained runs in ``folders``, as each run stored them
    (``test_logits.npy``, ``test_labels.npy``): what the chapter writes to its committed logits file
    (``io.write_logits``), like 04_calibration's for the study's runs."""
    return {run_name(a, sd): (np.load(f / "test_logits.npy"), np.load(f / "test_labels.npy"))
            for (a, sd), f in folders.items()}


def run_means(per_image: Mapping[str, Mapping[tuple[str, int], Any]], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per run (arm, seed) with the mean over images of each 1-D per-image metric in ``metrics``
    (accuracies, γ); ECE, a statistic of the whole image set, is ``stats.ECE`` of the run's rows."""
    from varmix.study.stats import ECE

    keys = list(dict.fromkeys(k for m in metrics for k in per_image[m]))
    rows = []
    for arm, seed in keys:
        row = {"arm": arm, "seed": seed}
        for m in metrics:
            v = np.asarray(per_image[m][(arm, seed)])
            row[m] = ECE()(v) if m == "ece" else float(v.mean())
        rows.append(row)
    return pd.DataFrame(rows)


def clean_accuracy(logits: Mapping[str, tuple[Any, Any]], arms: Sequence[str]) -> pd.DataFrame:
    """One row per run of ``arms`` (arm, seed, accuracy) from clean test logits (``io.read_logits``: run name
    -> (logits, labels)), e.g. the study's committed ones, to set beside the longer regime's."""
    from varmix.core.names import run_key

    rows = []
    for name, (t, y) in logits.items():
        arm, seed = run_key(name)
        if arm in arms:
            rows.append({"arm": arm, "seed": seed,
                         "accuracy": float((np.asarray(t).argmax(axis=1) == np.asarray(y)).mean())})
    return pd.DataFrame(rows, columns=["arm", "seed", "accuracy"])


def beside(regime: pd.DataFrame, study: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Per claim and pair of ``regime`` (``stats.compare``'s table over the regime's runs), the study's
    difference and intervals (``study``: report.json's ``comparisons``) beside the longer regime's, and how
    it moved: ``direction`` (same: both differences of one sign; reversed: of opposite signs; zero: one is
    0), ``ratio`` (the regime's difference over the study's), and whether each crossed t interval holds the
    other's difference (``study_in_regime_ci``, ``regime_in_study_ci``: the size did not move beyond what
    the intervals allow when both hold). Differences are signed as the report's: positive = the paper's
    direction."""
    main = {(r["claim"], r["arm"], r["rival"]): r for r in study}
    rows = []
    for r in regime.itertuples():
        m = main.get((r.claim, r.arm, r.rival))
        row = {"claim": r.claim, "arm": r.arm, "rival": r.rival, "label": r.label, "unit": r.unit, "scale": r.scale,
               **{f"regime_{k}": getattr(r, k) for k in _SIDE},
               **{f"study_{k}": (m or {}).get(k, np.nan) for k in _SIDE}}
        a, b = row["study_diff"], row["regime_diff"]
        if m is None or r.verdict == "not tested" or pd.isna(a) or pd.isna(b):
            row.update(direction="not compared", ratio=np.nan, study_in_regime_ci=None, regime_in_study_ci=None)
        else:
            row.update(direction="zero" if a == 0 or b == 0 else ("same" if np.sign(a) == np.sign(b) else "reversed"),
                       ratio=b / a if a != 0 else np.nan,
                       study_in_regime_ci=bool(row["regime_t_lo"] <= a <= row["regime_t_hi"]),
                       regime_in_study_ci=bool(row["study_t_lo"] <= b <= row["study_t_hi"]))
        rows.append(row)
    columns = ["claim", "arm", "rival", "label", "unit", "scale", *(f"{w}_{k}" for w in ("regime", "study") for k in _SIDE),
               "direction", "ratio", "study_in_regime_ci", "regime_in_study_ci"]
    return pd.DataFrame(rows, columns=columns)


def formatted(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`beside` for reading: the differences scaled to the claim's unit with their crossed t 95%
    intervals, and how they moved."""
    def cell(r, side):
        k, d = float(r["scale"]), r[f"{side}_diff"]
        if pd.isna(d):
            return "–"
        return f"{d * k:+.3g}{r['unit'] or ''} [{r[f'{side}_t_lo'] * k:+.3g}, {r[f'{side}_t_hi'] * k:+.3g}]"
    return pd.DataFrame([{"claim": r["label"], "pair": f"{r['arm']} vs {r['rival']}",
                          "study (t 95% CI)": cell(r, "study"), "longer regime (t 95% CI)": cell(r, "regime"),
                          "direction": r["direction"],
                          "ratio (regime / study)": "–" if pd.isna(r["ratio"]) else f"{r['ratio']:.2g}",
                          "study's difference in the regime's CI": r["study_in_regime_ci"],
                          "regime's difference in the study's CI": r["regime_in_study_ci"]}
                         for _, r in table.iterrows()],
                        columns=["claim", "pair", "study (t 95% CI)", "longer regime (t 95% CI)", "direction",
                                 "ratio (regime / study)", "study's difference in the regime's CI",
                                 "regime's difference in the study's CI"])
