"""The study's headline as the small files DVC shows in a terminal of 200 columns.

- ``metrics/headline.json``, the one file dvc.yaml declares as metrics (what `dvc metrics show`,
  `dvc metrics diff` and `dvc exp show` print): over the primary comparisons of params.yaml's
  ``comparisons``, how many hold (``holds.<claim>``) and how many are contradicted
  (``contradicted.<claim>``) per claim (``corr``, ``ece``, ``gamma``, ``pgd``: TALLY_KEYS), and how many
  in all are shown equivalent (``equiv``); the rest are inconclusive or not tested. Nine short
  columns: `dvc exp show --only-changed` compares experiments
  (seeds, datasets, settings) on them in one row each. DVC names a column by its key alone only when no
  other metrics file has that key (``path:key`` otherwise), so declaring the per-arm files below, whose
  keys repeat, would make `dvc exp show` one ~60-character column per arm and number.
- ``metrics/summary/``, one JSON file per arm, ``<arm>.json``: the mean over seeds of clean accuracy
  (``acc``), corruption accuracy over the 15 corruptions x severities (``corr_acc``), clean ``ece``,
  clean ``nll``, mean γ at ε = 8/255 (``gamma_8``) and accuracy under PGD-ℓ∞ averaged over the
  perturbation chapter's ε (``pgd_acc``), rounded to 4 digits; and one file per primary comparison,
  ``<arm>-vs-<rival>.json``, holding its verdicts (holds / contradicted / equivalent / inconclusive / not tested) under
  the column of the claim's metric. `dvc metrics show <that folder>` prints one row per file and six
  columns whatever the number of arms.

The detailed per-run files stay outputs of their stages.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from varmix.core import io

# column -> the runs table's metric (varmix.study.report.per_run merged over the stages' metrics files)
COLUMNS = {"acc": "accuracy", "corr_acc": "corruption_accuracy", "ece": "ece", "nll": "nll", "gamma_8": "gamma_8",
           "pgd_acc": "pgd_accuracy"}
# the short names tally() uses for the same columns (metrics/headline.json)
TALLY_KEYS = {"acc": "acc", "corr_acc": "corr", "ece": "ece", "nll": "nll", "gamma_8": "gamma", "pgd_acc": "pgd"}
assert set(TALLY_KEYS) == set(COLUMNS)
DIGITS = 4
_NAME = re.compile(r"[a-z][a-z0-9_]*(-vs-[a-z][a-z0-9_]*)?")


def summary(runs: pd.DataFrame, table: pd.DataFrame, arms: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``{arm: {column: mean over seeds}}`` for every arm in ``arms`` (in that order), then
    ``{"<arm>-vs-<rival>": {column: verdict}}`` for every pair of ``table`` (varmix.study.stats.compare's
    table of the study's claims, whose ``metric`` must be one of COLUMNS' metrics)."""
    need = {"arm", *COLUMNS.values()}
    missing = sorted(need - set(runs.columns))
    if missing:
        raise ValueError(f"runs table lacks the columns {missing}: expected varmix.study.report.per_run's table "
                         f"merged over the train, corruptions, calibration, linearity and perturbations metrics")
    by_metric = _check_table(table, {"arm", "rival", "metric", "verdict"})
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


def _check_table(table: pd.DataFrame, need: set[str]) -> dict[str, str]:
    """Refuse a comparison table without the columns ``need`` or with a claim on a metric that has no
    headline column; return {metric: headline column}."""
    missing = sorted(need - set(table.columns))
    if missing:
        raise ValueError(f"comparison table lacks the columns {missing}: expected varmix.study.stats.compare's table")
    by_metric = {metric: col for col, metric in COLUMNS.items()}
    unknown = sorted(set(table["metric"]) - set(by_metric))
    if unknown:
        raise ValueError(f"claims on metrics {unknown} have no headline column: expected metrics among "
                         f"{sorted(by_metric)}")
    return by_metric


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


def tally(table: pd.DataFrame) -> dict[str, dict[str, int] | int]:
    """``{"holds": {key: n}, "contradicted": {key: n}, "equiv": n}`` over varmix.study.stats.compare's
    table of the study's claims: per claim, how many of the primary comparisons hold and how many are
    contradicted, and how many comparisons in all are shown equivalent (the others are inconclusive or not
    tested; report.json has every verdict). Keys are TALLY_KEYS' short names of the claims' headline
    columns, in COLUMNS' order: nine short columns, so that `dvc metrics show` fits a terminal of 200
    columns."""
    _check_table(table, {"metric", "verdict"})
    metrics = set(table["metric"])
    claimed = [col for col, metric in COLUMNS.items() if metric in metrics]
    out: dict[str, dict[str, int] | int] = {
        verdict: {TALLY_KEYS[col]: int(((table["metric"] == COLUMNS[col]) & (table["verdict"] == verdict)).sum())
                  for col in claimed} for verdict in ("holds", "contradicted")}
    out["equiv"] = int(table["metric"].isin([COLUMNS[c] for c in claimed]).mul(table["verdict"] == "equivalent").sum())
    return out
