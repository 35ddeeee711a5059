"""The study's headline numbers as the small files DVC declares as metrics (`dvc metrics show`,
`dvc metrics diff`, `dvc exp show`), so that a terminal of 200 columns shows them.

One JSON file per arm, ``<arm>.json``: the mean over seeds of clean accuracy (``acc``), corruption
accuracy over the 15 corruptions x severities (``corr_acc``), clean ``ece``, clean ``nll`` and mean γ at
ε = 8/255 (``gamma_8``) and accuracy under PGD-ℓ∞ averaged over the perturbation chapter's ε
(``pgd_acc``), rounded to 4 digits; and one file per primary comparison,
``<arm>-vs-<rival>.json``, holding its verdicts (holds / contradicted / inconclusive / not tested) under
the column of the claim's metric. DVC prints one row per file and one column per key, so the table
has six columns whatever the number of arms; the detailed per-run files stay outputs of their stages.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from varmix import io

# column -> the runs table's metric (varmix.report.per_run merged over the stages' metrics files)
COLUMNS = {"acc": "accuracy", "corr_acc": "corruption_accuracy", "ece": "ece", "nll": "nll", "gamma_8": "gamma_8",
           "pgd_acc": "pgd_accuracy"}
DIGITS = 4
_NAME = re.compile(r"[a-z][a-z0-9_]*(-vs-[a-z][a-z0-9_]*)?")


def summary(runs: pd.DataFrame, table: pd.DataFrame, arms: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``{arm: {column: mean over seeds}}`` for every arm in ``arms`` (in that order), then
    ``{"<arm>-vs-<rival>": {column: verdict}}`` for every pair of ``table`` (varmix.stats.compare's
    table of the study's claims, whose ``metric`` must be one of COLUMNS' metrics)."""
    need = {"arm", *COLUMNS.values()}
    missing = sorted(need - set(runs.columns))
    if missing:
        raise ValueError(f"runs table lacks the columns {missing}: expected varmix.report.per_run's table "
                         f"merged over the train, corruptions, calibration, linearity and perturbations metrics")
    missing = sorted({"arm", "rival", "metric", "verdict"} - set(table.columns))
    if missing:
        raise ValueError(f"comparison table lacks the columns {missing}: expected varmix.stats.compare's table")
    by_metric = {metric: col for col, metric in COLUMNS.items()}
    unknown = sorted(set(table["metric"]) - set(by_metric))
    if unknown:
        raise ValueError(f"claims on metrics {unknown} have no headline column: expected metrics among "
                         f"{sorted(by_metric)}")
    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        rows = runs[runs["arm"] == arm]
        if rows.empty:
            raise ValueError(f"arm {arm!r} has no runs in the runs table (arms there: "
                             f"{sorted(runs['arm'].unique())})")
        out[arm] = {col: _mean(rows[metric]) for col, metric in COLUMNS.items()}
    for r in table.itertuples():
        out.setdefault(f"{r.arm}-vs-{r.rival}", {})[by_metric[r.metric]] = r.verdict
    return out


def _mean(values: pd.Series) -> float | None:
    m = float(values.mean())
    return None if math.isnan(m) else round(m, DIGITS)


def write(folder: str | os.PathLike, headline: dict[str, dict[str, Any]]) -> list[Path]:
    """Write each entry of :func:`summary` to ``folder/<name>.json`` (each file atomically; the folder is
    created) and return the paths. Names must be arm names or ``<arm>-vs-<rival>``."""
    folder = Path(folder)
    bad = [n for n in headline if not isinstance(n, str) or not _NAME.fullmatch(n)]
    if bad:
        raise ValueError(f"headline names {bad} are invalid: expected arm names ([a-z][a-z0-9_]*) or "
                         f"'<arm>-vs-<rival>'")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, values in headline.items():
        path = folder / f"{name}.json"
        io.write_json(path, values)
        paths.append(path)
    return paths
