"""The report: every arm × every metric in one table, beside the paper's numbers, and the claims' verdicts.

Inputs are the metrics JSON files the evaluation chapters write (one entry per trained model, keyed
``<arm>-s<seed>``), read into a long table with :func:`per_run` (columns ``arm``, ``seed`` and one per
metric). The verdicts themselves (paired differences over seeds, two intervals, Holm over the family,
the rule fixed before looking) are :func:`varmix.study.stats.compare`; :func:`verdict_summary` lays its
table out as claim × pair.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from varmix.core.names import RUN_NAME, run_key
from varmix.study import paper


def per_run(metrics: Mapping[str, object]) -> pd.DataFrame:
    """A metrics dict ``{"<arm>-s<seed>": {name: value}}`` (other keys ignored) as a long table with
    columns arm, seed and one per metric."""
    rows = []
    for key, values in metrics.items():
        m = RUN_NAME.match(key)
        if m and isinstance(values, Mapping):
            rows.append({"arm": m["arm"], "seed": int(m["seed"]),
                         **{k: v for k, v in values.items() if not isinstance(v, Mapping)}})
    if not rows:
        raise ValueError(f"no '<arm>-s<seed>' entries among the metrics keys {sorted(metrics)}")
    return pd.DataFrame(rows)


def mean_std(runs: pd.DataFrame, columns: Sequence[str], arms: Sequence[str]) -> pd.DataFrame:
    """Mean and std (ddof 1; NaN for one seed) over seeds per arm, rows in the order of ``arms`` (those
    that ran): a frame with a (metric, mean/std) column index."""
    g = runs.groupby("arm", sort=False)[list(columns)]
    out = pd.concat({"mean": g.mean(), "std": g.std(ddof=1)}, axis=1).swaplevel(axis=1)
    out = out.reindex(columns=pd.MultiIndex.from_product([list(columns), ["mean", "std"]]))
    return out.reindex([a for a in arms if a in out.index])


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


def pgd_columns(columns) -> list[str]:
    """The per-ε PGD accuracy columns (``pgd_accuracy_eps_<ε>``) of a runs table, in ε order."""
    cols = [c for c in columns if re.fullmatch(r"pgd_accuracy_eps_[0-9.]+", c)]
    return sorted(cols, key=lambda c: float(c.rsplit("_", 1)[1]))


def sample_distance_table(*vae_metrics: Mapping[str, object]) -> pd.DataFrame:
    """FID and KID (mean ± std) of each set of images the VAE chapter measured (``sample_distance`` of
    the plain and the adversarial VAE's metrics; a set measured in both, e.g. the test images, is shown
    once), with the paper's CIFAR-10 FID/KID beside the mixers it reports."""
    rows: dict[str, dict] = {}
    for m in vae_metrics:
        for name, v in (m.get("sample_distance") or {}).items():
            rows.setdefault(name, dict(v))
    if not rows:
        raise ValueError("no sample_distance in the VAE metrics: run the VAE chapter (01_vae) first")
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("samples")
    fid_kid = paper.SAMPLE_DISTANCE.get("cifar10", {})
    table["paper FID (cifar10)"] = [fid_kid.get(n, (np.nan, np.nan))[0] for n in table.index]
    table["paper KID (cifar10)"] = [fid_kid.get(n, (np.nan, np.nan))[1] for n in table.index]
    return table


def verdict_summary(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`varmix.study.stats.compare`'s table as one row per claim and one column per "arm vs rival" pair
    (in the table's order), each cell the verdict."""
    missing = [c for c in ("claim", "arm", "rival", "verdict") if c not in table.columns]
    if missing:
        raise ValueError(f"columns {missing} are not among the table's columns {list(table.columns)}; "
                         f"expected varmix.study.stats.compare's table")
    pair = table["arm"] + " vs " + table["rival"]
    out = table.assign(pair=pair).pivot(index="claim", columns="pair", values="verdict")
    return out.reindex(index=list(dict.fromkeys(table["claim"])), columns=list(dict.fromkeys(pair)))


def formatted_comparisons(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`varmix.study.stats.compare`'s table for reading: one row per claim × pair, the differences
    multiplied by the claim's ``scale`` and followed by its ``unit`` (3 significant figures), each interval
    as "[lo, hi]", the Holm-adjusted p-values, the minimum detectable effect, the equivalence tests' Holm p
    (when the claim has a smallest effect of interest) and the verdict (and why a pair was not tested)."""
    def num(x, k):
        return "–" if pd.isna(x) else f"{x * k:+.3g}"

    rows = []
    for r in table.itertuples():
        k, unit = float(r.scale), r.unit or ""
        tested = r.verdict != "not tested"
        equivalence = tested and not pd.isna(r.tost_p_holm)
        rows.append({
            "claim": r.label, "pair": f"{r.arm} vs {r.rival}", "seeds": r.n_seeds,
            "images": int(r.n_images) if tested else "–",
            "difference": num(r.diff, k) + unit if tested else "–",
            "crossed t 95% CI": f"[{num(r.t_lo, k)}, {num(r.t_hi, k)}]" if tested else "–",
            "t p (Holm)": f"{r.t_p_holm:.3g}" if tested else "–",
            "bootstrap 95% CI": f"[{num(r.boot_lo, k)}, {num(r.boot_hi, k)}]" if tested else "–",
            "bootstrap p (Holm)": f"{r.boot_p_holm:.3g}" if tested else "–",
            "MDE": f"{r.mde * k:.3g}{unit}" if tested else "–",
            "equivalence p (Holm: t, bootstrap)": f"{r.tost_p_holm:.3g}, {r.boot_tost_p_holm:.3g}" if equivalence else "–",
            "VAE share (seed, mean)": vae_share(r) if tested else "–",
            "verdict": r.verdict if tested else f"not tested ({r.reason})",
        })
    return pd.DataFrame(rows)


def vae_share(row) -> str:
    """How much of a comparison's variance the VAE seed carries, for reading: ``vae_share`` (of one seed's
    difference) and ``vae_share_of_mean`` (of the mean difference's variance) as percentages, with the
    number of VAE seeds and "nested" when the tests treated the seeds as nested in them; "–" where it was
    not estimated (no VAE seeds given, or one VAE seed among the shared seeds, or none used by two)."""
    share = getattr(row, "vae_share", np.nan)
    if pd.isna(share):
        return "–"
    nested = " nested" if bool(getattr(row, "boot_nested", False)) else ""
    return f"{share:.0%}, {row.vae_share_of_mean:.0%} ({int(row.n_vae_seeds)} VAE seeds{nested})"


def formatted_power(power: pd.DataFrame) -> pd.DataFrame:
    """:func:`power_table` for reading: per claim, the MDE at the pilot's and the plan's sizes against the
    target, and the sizes that reach it (3 significant figures, in the claim's unit)."""
    def eff(x, r):
        return f"{x * r.scale:.3g}{r.unit or ''}"
    return pd.DataFrame([{
        "claim": r.claim, "target MDE": eff(r.target_mde, r), "pilot": f"{r.pilot_seeds} × {r.pilot_images}",
        "pilot MDE": eff(r.pilot_mde, r), "plan": f"{r.seeds} × {r.images}", "plan MDE": eff(r.mde, r),
        "target reached": "yes" if r.reached else "no",
        "sizes that reach it": f"{r.needed_seeds} × {r.needed_images}" if r.needed_seeds else "none up to "
                               f"{max(SEED_OPTIONS)} seeds × {max(IMAGE_OPTIONS[r.metric])} images",
    } for r in power.itertuples()])


# ----------------------------------------------------------------------------------------------
# the study's claims, fixed before looking (07_report runs them; tests/test_report.py pins them)
def study_claims(n_bins: int = 15):
    """The four claims the study decides, as :class:`varmix.study.stats.Claim`: higher corruption accuracy
    (mean over the 15 corruptions x 5 severities), lower clean ECE, lower mean γ at ε = 8/255, higher
    accuracy under PGD-ℓ∞ (per image: the share of the perturbation chapter's ε at which it stays robust;
    per run: the mean of the accuracies at those ε)."""
    from varmix.study import stats

    return [stats.Claim("1. corruptions", "corruption_accuracy", +1, label="corruption accuracy (15 corruptions)",
                        unit=" points", scale=100),
            stats.Claim("2. calibration", "ece", -1, statistic=stats.ECE(n_bins), label="clean ECE"),
            stats.Claim("3. local linearity", "gamma_8", -1, label="mean γ at ε = 8/255"),
            stats.Claim("4. perturbations", "pgd_accuracy", +1, label="accuracy under PGD (mean over ε)",
                        unit=" points", scale=100)]


def secondary_claims():
    """Readings that qualify the claims (their own Holm family, reported beside the verdicts): corruption
    accuracy without / with only the four intensity-shifting corruptions (the background artifact),
    clean NLL, clean accuracy."""
    from varmix.study import stats

    return [stats.Claim("1a. corruptions without intensity shift", "corruption_accuracy_no_intensity", +1,
                        label="corruption accuracy without brightness, contrast, fog, frost", unit=" points",
                        scale=100),
            stats.Claim("1b. intensity-shift corruptions only", "corruption_accuracy_intensity", +1,
                        label="accuracy under brightness, contrast, fog, frost", unit=" points", scale=100),
            stats.Claim("2a. clean NLL", "nll", -1, label="clean NLL"),
            stats.Claim("0. clean accuracy", "accuracy", +1, label="clean accuracy", unit=" points", scale=100)]


def per_image_inputs(corruptions: Mapping[str, object], logits: Mapping[str, tuple], gammas: pd.DataFrame,
                     eps_255: float = 8, perturbations: Mapping[str, Mapping[float, np.ndarray]] | None = None
                     ) -> dict[str, dict[tuple[str, int], np.ndarray]]:
    """The per-image arrays :func:`varmix.study.stats.compare` resamples, keyed metric -> (arm, seed):
    ``corruptions`` = ``robustness.load_per_image`` (run -> PerImage), ``logits`` = ``io.read_logits``
    (run -> (logits, labels)), ``gammas`` = the landscape chapter's per-image γ table (columns method =
    arm, seed, eps_255, image, gamma), ``perturbations`` = ``perturbation.load_masks`` (run -> {ε in
    1/255: robust per image}) as ``pgd_accuracy``, the mean over ε > 0 of each image's robustness."""
    from varmix.evaluate import calibration, robustness

    out: dict[str, dict[tuple[str, int], np.ndarray]] = {}
    for name, p in corruptions.items():
        for metric, values in robustness.family_per_image(p).items():
            out.setdefault(metric, {})[run_key(name)] = values
    for name, (t, y) in logits.items():
        key = run_key(name)
        rows = calibration.conf_correct(t, y)
        out.setdefault("ece", {})[key] = rows
        out.setdefault("accuracy", {})[key] = rows[:, 1]
        logp = np.log(calibration.probabilities(t).numpy())
        out.setdefault("nll", {})[key] = -logp[np.arange(len(y)), np.asarray(y)]
    at = gammas[np.isclose(gammas["eps_255"], eps_255)]
    if at.empty:
        raise ValueError(f"no γ at ε = {eps_255}/255 among {sorted(gammas['eps_255'].unique())}")
    for (arm, seed), g in at.groupby(["method", "seed"], sort=False):
        out.setdefault(f"gamma_{eps_255:g}", {})[(arm, int(seed))] = g.sort_values("image")["gamma"].to_numpy()
    for name, masks in (perturbations or {}).items():  # eps 0 (clean, if stored) is not a perturbation
        out.setdefault("pgd_accuracy", {})[run_key(name)] = np.mean(
            [np.asarray(m, dtype=np.float64) for e, m in masks.items() if e > 0], axis=0)
    return out


def family(comparisons: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """params.yaml's ``comparisons`` (arm -> rivals) as the (arm, rival) pairs of the family."""
    return [(arm, rival) for arm, rivals in comparisons.items() for rival in rivals]


def majority(values: pd.Series) -> str:
    """The most common value and how many runs have it, e.g. "under-confident (5/5)"."""
    counts = values.value_counts()
    return f"{counts.index[0]} ({int(counts.iloc[0])}/{len(values)})" if len(counts) else "–"


def verdict_lines(table: pd.DataFrame, secondary: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """One sentence per claim x pair: the verdict, the difference with both intervals, and what qualifies
    it: for the corruption claim, whether the intensity-shift corruptions (the background artifact)
    drive the verdict; for calibration, the regime each arm is in."""
    lines = []
    regimes = runs.groupby("arm")["regime"].agg(majority) if "regime" in runs.columns else {}
    no_int = secondary[secondary["metric"] == "corruption_accuracy_no_intensity"].set_index(["arm", "rival"])
    for r in table.itertuples():
        k = float(r.scale)
        if r.verdict == "not tested":
            lines.append(f"{r.claim}, {r.arm} vs {r.rival}: not tested ({r.reason})")
            continue
        text = (f"{r.claim}, {r.arm} vs {r.rival}: {r.verdict.upper()} — paired difference {r.diff * k:+.3g}{r.unit} "
                f"(positive = the paper's direction), crossed t 95% CI [{r.t_lo * k:+.3g}, {r.t_hi * k:+.3g}], "
                f"bootstrap [{r.boot_lo * k:+.3g}, {r.boot_hi * k:+.3g}], Holm p {r.t_p_holm:.3g} / {r.boot_p_holm:.3g}, "
                f"MDE {r.mde * k:.3g}{r.unit}")
        if r.metric == "corruption_accuracy" and (r.arm, r.rival) in no_int.index:
            other = no_int.loc[(r.arm, r.rival)]
            if other["verdict"] != r.verdict:
                text += (f". The background artifact drives this verdict: without brightness, contrast, fog "
                         f"and frost the difference is {other['diff'] * k:+.3g}{r.unit} ({other['verdict']})")
            else:
                text += (f"; without the intensity-shift corruptions: {other['diff'] * k:+.3g}{r.unit} "
                         f"({other['verdict']}), so the background artifact does not drive it")
        if r.metric == "ece" and len(regimes):
            text += f". Regimes: {r.arm} {regimes.get(r.arm, '–')}, {r.rival} {regimes.get(r.rival, '–')}"
        lines.append(text)
    return lines


def report_json(table: pd.DataFrame, secondary: pd.DataFrame, vaes: Mapping[int, Mapping[str, object]],
                vae_adversarial: Mapping[str, object], seeds: Sequence[int], params, environment: Mapping[str, str],
                plan=None, provenance: Mapping[str, object] | None = None, power: pd.DataFrame | None = None) -> dict:
    """report.json: the verdict per claim and pair, every comparison of both families (``stats.compare``'s
    rows without their display columns, with the VAE seed's share of each difference's variance), the
    gate numbers of the VAE of each VAE seed (``vaes``: VAE seed -> its metrics) and of the adversarial one,
    which VAE seed each classifier seed used, the settings that made them, and the analysis plan they were
    decided by (its version, commit and whether it precedes these results) with the power analysis
    (:func:`power_table`). ``vae_seeds_sampled``: whether the seeds spread over more than one VAE seed, so
    that the intervals carry the VAE's variance (else they are conditional on the one VAE)."""
    def rows(t: pd.DataFrame) -> list[dict]:
        return t.drop(columns=["label", "unit", "scale"]).to_dict(orient="records")
    gate = ("psnr", "recon_probe_accuracy")
    pairing = {int(sd): params.vae_seed_of(sd) for sd in seeds}
    return {"claims": {f"{r.claim} | {r.arm} vs {r.rival}": r.verdict for r in table.itertuples()},
            "comparisons": rows(table), "secondary": rows(secondary),
            "vae": {str(k): {g: m.get(g) for g in gate} for k, m in vaes.items()},
            "vae_adversarial": {k: vae_adversarial.get(k) for k in gate},
            "vae_seeds": list(params.vae_seeds), "vae_seed_of": {str(k): v for k, v in pairing.items()},
            "vae_seeds_sampled": len(set(pairing.values())) > 1,
            "n_boot": params.report.n_boot, "seeds": list(seeds),
            "rival_arms": list(params.rival_arms), "rival_seeds": list(params.rival_seeds),
            "environment": dict(environment),
            **({"plan": {"version": plan.version, "rule": plan.rule, "alpha": plan.alpha, "power": plan.power,
                         "sesoi": dict(plan.sesoi), "seeds": plan.seeds, "images": dict(plan.images),
                         "pilot_commit": plan.pilot_commit, **dict(provenance or {})}} if plan else {}),
            **({"power": power.to_dict(orient="records")} if power is not None else {})}


def pilot_components(per_image: Mapping[tuple[str, int], object], arm: str, rival: str, sign: int,
                     statistic=None) -> dict[str, float]:
    """A pilot's variance components of one comparison's paired differences (seeds × images): the two-way
    ANOVA's (``crossed.variance_components``) for a per-image mean; for a statistic of the whole image set
    (ECE), the per-seed differences' variance as the seed term and the image bootstrap's variance scaled
    to one image as the image term (no residual term: the seed term already holds it)."""
    from varmix.study import crossed

    seeds = sorted({s for a, s in per_image if a == arm} & {s for a, s in per_image if a == rival})
    arm_runs = [np.asarray(per_image[(arm, s)]) for s in seeds]
    rival_runs = [np.asarray(per_image[(rival, s)]) for s in seeds]
    n = len(arm_runs[0])
    if statistic is None:
        d = np.stack([sign * (a.astype(np.float64) - r.astype(np.float64)) for a, r in zip(arm_runs, rival_runs)])
        return crossed.variance_components(d)
    boot = crossed.crossed_bootstrap(arm_runs, rival_runs, statistic, sign, 400, 0)
    per_seed = [sign * (statistic(a) - statistic(r)) for a, r in zip(arm_runs, rival_runs)]
    return {"seeds": len(seeds), "images": n, "var_seed": float(np.var(per_seed, ddof=1)),
            "var_image": boot["image_var"] * n, "var_res": 0.0}


# the sizes the power analysis searches: seeds per arm, and test images per claim (calibration: at most the
# 10,000 test images of every supported dataset but Tiny-ImageNet's)
SEED_OPTIONS = (5, 8, 10, 12, 15, 20, 30)
IMAGE_OPTIONS = {"corruption_accuracy": (200, 500, 1000, 2000, 5000, 10000), "ece": (2000, 5000, 10000),
                 "gamma_8": (64, 128, 256, 500, 1000, 2000), "pgd_accuracy": (64, 128, 256, 500, 1000, 2000)}


def power_table(per_image: Mapping[str, Mapping[tuple[str, int], object]], family: Sequence[tuple[str, str]],
                claims: Sequence, targets: Mapping[str, float], planned: Mapping[str, tuple[int, int]],
                seed_options: Sequence[int], image_options: Mapping[str, Sequence[int]], alpha: float = 0.05,
                power: float = 0.8) -> pd.DataFrame:
    """Per claim, from a pilot: the median over the family's pairs of the variance components
    (:func:`pilot_components`) and the minimum detectable effect (``power`` at Holm's first step, α/m over
    the family's m comparisons, S − 1 degrees of freedom) at the pilot's sizes, at the ``planned`` sizes
    (seeds, images) and the smallest sizes among the options (fewest seeds first) that reach
    ``targets[metric]`` (none: ``needed_seeds`` and ``needed_images`` are 0)."""
    from varmix.study import crossed

    m = len(family) * len(claims)
    rows = []
    for c in claims:
        comps = [pilot_components(per_image[c.metric], arm, rival, c.sign, c.statistic) for arm, rival in family
                 if {arm, rival} <= {a for a, _ in per_image[c.metric]}]
        med = {k: float(np.median([x[k] for x in comps])) for k in ("var_seed", "var_image", "var_res")}

        def mde_at(S: int, N: int) -> float:
            return crossed.mde(crossed.planned_se(med, S, N), S - 1, alpha / m, power)
        target = float(targets[c.metric])
        S0, N0 = int(comps[0]["seeds"]), int(comps[0]["images"])
        S1, N1 = planned[c.metric]
        options = sorted((S, N) for S in seed_options for N in image_options[c.metric])
        needed = next(((S, N) for S, N in options if mde_at(S, N) <= target), (0, 0))
        rows.append({"claim": c.name, "metric": c.metric, "target_mde": target, **med,
                     "pilot_seeds": S0, "pilot_images": N0, "pilot_mde": mde_at(S0, N0),
                     "seeds": S1, "images": N1, "mde": mde_at(S1, N1), "reached": mde_at(S1, N1) <= target,
                     "needed_seeds": needed[0], "needed_images": needed[1], "scale": c.scale, "unit": c.unit})
    return pd.DataFrame(rows)
