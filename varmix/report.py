"""The report: every method × every metric in one table, beside the paper's numbers, and a verdict per claim.

Inputs are the metrics JSON files the evaluation chapters write (one entry per trained model, keyed
``<method>-s<seed>``), read into a long table with :func:`per_run`. Verdicts compare VarMixup with Mixup
and ERM on the seeds that ran: a claim *holds* when VarMixup's mean is better than each rival's, and
the verdict says whether the gap exceeds the seed spread (the larger of the two standard deviations;
with one seed there is no spread to compare against, and the verdict says so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from varmix import paper

_RUN = re.compile(r"^(?P<method>[a-z_]+)-s(?P<seed>\d+)$")


def per_run(metrics: Mapping[str, object]) -> pd.DataFrame:
    """A metrics dict ``{"<method>-s<seed>": {name: value}}`` (other keys ignored) as a long table with
    columns method, seed and one per metric."""
    rows = []
    for key, values in metrics.items():
        m = _RUN.match(key)
        if m and isinstance(values, Mapping):
            rows.append({"method": m["method"], "seed": int(m["seed"]),
                         **{k: v for k, v in values.items() if not isinstance(v, Mapping)}})
    if not rows:
        raise ValueError(f"no '<method>-s<seed>' entries among the metrics keys {sorted(metrics)}")
    return pd.DataFrame(rows)


def mean_std(runs: pd.DataFrame, columns: Sequence[str], methods: Sequence[str]) -> pd.DataFrame:
    """Mean and std (ddof 1; NaN for one seed) over seeds: a frame with a (metric, mean/std) column index."""
    g = runs.groupby("method", sort=False)[list(columns)]
    out = pd.concat({"mean": g.mean(), "std": g.std(ddof=1)}, axis=1).swaplevel(axis=1)
    out = out.reindex(columns=pd.MultiIndex.from_product([list(columns), ["mean", "std"]]))
    return out.reindex([m for m in methods if m in out.index])


def formatted(table: pd.DataFrame, scale: Mapping[str, float] | None = None, digits: int = 4) -> pd.DataFrame:
    """``mean_std`` output as strings "mean ± std" (just "mean" for one seed): metrics named in ``scale``
    are multiplied (e.g. ×100 for percentages) and shown with 2 decimals, the others with ``digits``."""
    scale = scale or {}
    out = {}
    for metric in dict.fromkeys(table.columns.get_level_values(0)):
        k = scale.get(metric, 1.0)
        n = 2 if metric in scale else digits
        mean, std = table[(metric, "mean")] * k, table[(metric, "std")] * k
        out[metric] = [f"{m:.{n}f}" + ("" if np.isnan(s) else f" ± {s:.{n}f}") if not np.isnan(m) else "–"
                       for m, s in zip(mean, std)]
    return pd.DataFrame(out, index=table.index)


def paper_table(dataset: str = "cifar10") -> pd.DataFrame:
    """The paper's numbers for ``dataset``: corruption accuracy (%), its std, clean accuracy (%), ECE and
    γ(ε) at ε = 1, 2, 4, 8, 16 (/255); NaN where the paper gives none."""
    if dataset not in paper.CORRUPTION_ACCURACY:
        raise ValueError(f"the paper reports no numbers for {dataset!r}; it has "
                         f"{', '.join(paper.CORRUPTION_ACCURACY)}")
    rows = {}
    for method, (acc, std, clean) in paper.CORRUPTION_ACCURACY[dataset].items():
        row = {"corruption_accuracy": acc, "corruption_accuracy_std": std, "clean_accuracy": clean,
               "ece": paper.ECE.get(dataset, {}).get(method, np.nan)}
        for eps, g in zip(paper.LINEARITY_EPS, paper.LOCAL_LINEARITY.get(dataset, {}).get(method, (np.nan,) * 5)):
            row[f"gamma_{eps}"] = g
        rows[method] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method").astype(float)


def gamma_columns(columns) -> list[str]:
    """The ``gamma_<eps>`` columns among ``columns``, in increasing ε (not string order)."""
    return sorted((c for c in columns if re.fullmatch(r"gamma_[0-9.]+", str(c))), key=lambda c: float(c[6:]))


@dataclass(frozen=True)
class Verdict:
    claim: str
    metric: str
    holds: bool | None          # None: a method it needs did not run
    text: str
    beats: dict | None = None   # rival -> whether the method's mean is better


def verdict(runs: pd.DataFrame, metric: str, higher_is_better: bool, claim: str,
            method: str = "varmixup", rivals: Sequence[str] = ("mixup", "erm"), scale: float = 1.0,
            unit: str = "") -> Verdict:
    """Does ``method`` beat every rival on ``metric`` (mean over seeds)? The text gives the numbers, the
    gap and whether it exceeds the seed spread."""
    if metric not in runs.columns:
        raise ValueError(f"metric {metric!r} is not among the columns {list(runs.columns)}")
    stats = runs.groupby("method")[metric].agg(["mean", "std", "count"])
    missing = [m for m in (method, *rivals) if m not in stats.index]
    if missing:
        return Verdict(claim, metric, None, f"not tested: {', '.join(missing)} did not run")
    ours = stats.loc[method]
    parts, holds, beats = [], True, {}
    for rival in rivals:
        r = stats.loc[rival]
        gap = (ours["mean"] - r["mean"]) * (1 if higher_is_better else -1)
        better = bool(gap > 0)
        holds &= better
        beats[rival] = better
        spread = np.nanmax([ours["std"], r["std"]]) if min(ours["count"], r["count"]) > 1 else np.nan
        if np.isnan(spread):
            note = "one seed, no spread to compare"
        elif abs(gap) > spread:
            note = f"gap larger than the seed spread {spread * scale:.3g}{unit}"
        else:
            note = f"gap within the seed spread {spread * scale:.3g}{unit}"
        parts.append(f"{'better' if better else 'not better'} than {rival} "
                     f"({ours['mean'] * scale:.3g}{unit} vs {r['mean'] * scale:.3g}{unit}; {note})")
    word = "HOLDS" if holds else "DOES NOT HOLD"
    return Verdict(claim, metric, holds, f"{word} here: {method} is " + "; ".join(parts), beats)


def verdict_table(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """One row per verdict: claim, metric, one ``beats <rival>`` column per rival (yes/no), and the
    verdict (holds only when it beats every rival)."""
    rows = []
    for v in verdicts:
        row = {"claim": v.claim, "metric": v.metric}
        row.update({f"beats {r}": "yes" if b else "no" for r, b in (v.beats or {}).items()})
        row["verdict"] = {True: "holds", False: "does not hold", None: "not tested"}[v.holds]
        rows.append(row)
    return pd.DataFrame(rows)
