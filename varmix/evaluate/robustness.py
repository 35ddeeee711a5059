"""Corruption robustness: the per-(method, corruption, severity) grid and its summaries.

The grid is a long ``pandas.DataFrame`` with one row per (method, corruption, severity): the key columns
``method``, ``corruption``, ``severity`` and ``n`` (images), then the metrics of
:func:`varmix.evaluate.calibration.calibration_metrics` (``accuracy``, ``ece``, ``mce``, ``nll``, ``brier``,
``overconfidence``, ``mean_confidence``). The clean test set is the row ``corruption == "clean"``,
``severity == 0``.

- :func:`corruption_grid` corrupts each batch **once** and evaluates every model on it, so all models see
  identical corrupted images (corruption is the expensive part). The corruption of (name, severity) is
  drawn from its own CPU generator seeded by :func:`corruption_seed`, so it does not depend on which other
  corruptions are evaluated or in which order. It does depend on ``batch_size`` (the random stream is
  consumed batch by batch) and on the image order: keep both fixed to compare runs.
- :func:`grid_from_images` evaluates precomputed corrupted images (e.g. the released CIFAR-10-C arrays)
  and :func:`grid_from_logits` turns precomputed logits into the same grid.

Summary metrics (the conventions AugMix reports for CIFAR-10-C; see the shared reference):

- **corruption accuracy** (:func:`summarize`): mean over corruptions of the mean over severities, i.e. the
  15 corruptions × 5 severities pooled with equal weight. By default only the *benchmark* corruptions
  (``varmix.core.names.BENCHMARK_CORRUPTIONS``) present in the grid are pooled; the 4 extras are not.
- **unnormalised mCE** (:func:`mce_unnormalised`): CE_c = mean over severities of the error 1 − accuracy,
  mCE = mean over corruptions of CE_c (= 1 − corruption accuracy). This is what CIFAR papers report; the
  AlexNet-normalised mCE is an ImageNet-C convention.
- **relative mCE** (:func:`relative_mce`, Hendrycks & Dietterich 2019): per corruption
  Σ_s (E_{c,s} − E_clean) / Σ_s (E^base_{c,s} − E^base_clean) against a baseline method, averaged over
  corruptions (1.0 for the baseline itself; below 1: the accuracy *drop* under corruption is smaller than
  the baseline's).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from varmix.core.names import BENCHMARK_CORRUPTIONS, CORRUPTIONS
from varmix.evaluate.calibration import calibration_metrics, check_bins, conf_correct

__all__ = [
    "CLEAN", "FAMILIES", "INTENSITY_SHIFT", "KEYS", "METRICS", "PerImage", "corruption_errors",
    "corruption_grid", "corruption_seed", "family_per_image", "family_summary", "grid_from_images",
    "grid_from_logits", "load_per_image", "mce_unnormalised", "per_image_accuracy", "relative_mce",
    "save_per_image", "severity_calibration", "summarize",
]

CLEAN = "clean"
KEYS = ("method", "corruption", "severity")
METRICS = ("accuracy", "ece", "mce", "nll", "brier", "overconfidence", "mean_confidence")
SEVERITIES = (1, 2, 3, 4, 5)

# Hendrycks & Dietterich (2019)'s grouping of the 15 benchmark corruptions (their Figure 1)
FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
# the corruptions that change the global intensity: on Fashion-MNIST they turn the black background grey
INTENSITY_SHIFT = ("brightness", "contrast", "fog", "frost")


@dataclass(frozen=True)
class PerImage:
    """One model's correctness per test image, in the order of the images evaluated.

    ``clean``: bool [n], whether the clean image is classified correctly. ``corruptions``: uint8
    [n, len(corruption_names)], at how many of ``severities`` the image is classified correctly under
    each corruption (0..len(severities)). The predictions are those the grid's accuracy counts, so
    ``clean.mean()`` is the clean accuracy and ``corruptions[:, j].sum()`` is Σ_s accuracy(c_j, s) · n."""

    clean: np.ndarray
    corruptions: np.ndarray
    corruption_names: tuple[str, ...]
    severities: tuple[int, ...]

    def __post_init__(self) -> None:
        clean, counts = np.asarray(self.clean), np.asarray(self.corruptions)
        names = _check_corruptions(self.corruption_names)
        sev = _check_severities(self.severities, needed=bool(names))
        if clean.dtype != np.bool_ or clean.ndim != 1 or clean.shape[0] < 1:
            raise ValueError(f"clean is {clean.dtype} of shape {clean.shape}: expected bool [n] with n >= 1")
        if counts.dtype != np.uint8 or counts.shape != (clean.shape[0], len(names)):
            raise ValueError(f"corruptions is {counts.dtype} of shape {counts.shape}: expected uint8 "
                             f"[{clean.shape[0]}, {len(names)}] (images × corruption_names)")
        if counts.size and int(counts.max()) > len(sev):
            raise ValueError(f"corruptions holds a count of {int(counts.max())}: expected at most "
                             f"{len(sev)} (the number of severities)")
        object.__setattr__(self, "clean", clean)
        object.__setattr__(self, "corruptions", counts)
        object.__setattr__(self, "corruption_names", names)
        object.__setattr__(self, "severities", sev)


# ----------------------------------------------------------------------------------------------
# checks
def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}: expected one of {', '.join(CORRUPTIONS)}")
    return name


def _check_severity(severity: Any) -> int:
    if not _is_int(severity) or not 1 <= severity <= 5:
        raise ValueError(f"severity = {severity!r} is invalid: expected an integer 1..5")
    return int(severity)


def _check_seed(seed: Any) -> int:
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed = {seed!r} is invalid: expected an integer >= 0")
    return int(seed)


def _check_models(models: Any) -> dict[str, nn.Module]:
    if not isinstance(models, Mapping) or not models:
        raise ValueError(f"models must be a non-empty mapping name -> nn.Module, got {type(models).__name__}")
    for name, model in models.items():
        if not isinstance(name, str) or not name or name == CLEAN:
            raise ValueError(f"model name {name!r} is invalid: expected a non-empty string other than {CLEAN!r}")
        if not isinstance(model, nn.Module):
            raise ValueError(f"models[{name!r}] is a {type(model).__name__}: expected an nn.Module")
    return dict(models)


def _check_images(x: Any, what: str = "x") -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} is a {type(x).__name__}: expected uint8 images [N, C, H, W]")
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[0] < 1:
        raise ValueError(f"{what} is a {x.dtype} tensor of shape {tuple(x.shape)}: expected uint8 images "
                         f"[N, C, H, W] with N >= 1 (as stored by varmix.learn.data)")
    return x


def _check_labels(y: Any, n: int, what: str = "y") -> torch.Tensor:
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(np.ascontiguousarray(y))
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{what} is a {type(y).__name__}: expected integer labels [N]")
    if y.ndim != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{what} is a {y.dtype} tensor of shape {tuple(y.shape)}: expected integer labels [N]")
    if y.shape[0] != n:
        raise ValueError(f"{what} has {y.shape[0]} labels but there are {n} images; expected equal")
    if (y < 0).any():
        raise ValueError(f"{what} holds a negative label ({int(y.min())}); expected labels >= 0")
    return y.to("cpu", torch.int64)


def _check_corruptions(corruptions: Any) -> tuple[str, ...]:
    if isinstance(corruptions, str) or not isinstance(corruptions, Iterable):
        raise ValueError(f"corruptions = {corruptions!r} is invalid: expected a list of names among "
                         f"{', '.join(CORRUPTIONS)}")
    names = tuple(_check_name(c) for c in corruptions)
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise ValueError(f"corruption {dup[0]!r} is listed more than once; expected each at most once")
    return names


def _check_severities(severities: Any, needed: bool) -> tuple[int, ...]:
    if isinstance(severities, str) or not isinstance(severities, Iterable):
        raise ValueError(f"severities = {severities!r} is invalid: expected a list of integers 1..5")
    sev = tuple(_check_severity(s) for s in severities)
    if len(set(sev)) != len(sev):
        raise ValueError(f"severities = {list(sev)} repeats a value; expected each severity at most once")
    if needed and not sev:
        raise ValueError("severities is empty: expected at least one of 1..5 when corruptions are given")
    return sev


def _check_batch_size(batch_size: Any) -> int:
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size = {batch_size!r} is invalid: expected an integer >= 1")
    return int(batch_size)


def _module_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# seeds and quantisation
def corruption_seed(base_seed: int, name: str, severity: int) -> int:
    """A stable 63-bit seed for (base_seed, corruption, severity).

    From a BLAKE2b digest of ``"{base_seed}:{name}:{severity}"`` (not Python's salted ``hash()``), so it is
    the same in every process and on every machine, and different for every corruption and severity.
    """
    base_seed = _check_seed(base_seed)
    name = _check_name(name)
    severity = _check_severity(severity)
    digest = hashlib.blake2b(f"varmix-corruption:{base_seed}:{name}:{severity}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2 ** 63 - 1)


def quantize_uint8(x: torch.Tensor) -> torch.Tensor:
    """Round float images in [0, 1] to the 8-bit grid the way the released CIFAR-10-C was stored
    (hendrycks' ``make_cifar_c.py`` saves ``np.uint8(255 * image)``, which truncates). A tolerance of
    1e-3 of a level keeps an exact level ``k/255`` that float error put a hair below ``k`` at ``k``."""
    return torch.floor(x.clamp(0.0, 1.0) * 255.0 + 1e-3).clamp_(max=255.0) / 255.0


# ----------------------------------------------------------------------------------------------
# the grid
def _progress_bar(total: int, progress: bool | None, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=None if progress is None else not progress)


def _evaluate(models: dict[str, nn.Module], conditions: Sequence[tuple[str, int, Callable[[], Iterator]]],
              labels: Mapping[tuple[str, int], torch.Tensor], n_batches: int, device: Any, n_bins: int,
              progress: bool | None, per_image: bool = False):
    """Run every model on every batch of every condition; ``conditions`` yields float batches. With
    ``per_image`` also return each model's :class:`PerImage` (``conditions``: the clean one first, then
    corruptions × severities, every corruption with the same severities)."""
    states = {name: m.training for name, m in models.items()}
    if device is not None:
        device = torch.device(device)
        for m in models.values():
            m.to(device)
    devices = {name: _module_device(m) for name, m in models.items()}
    logits: dict[tuple[str, str, int], list[torch.Tensor]] = {}
    bar = _progress_bar(len(conditions) * n_batches, progress, "corruption grid")
    try:
        for m in models.values():
            m.eval()
        with torch.no_grad():
            for corruption, severity, batches in conditions:
                bar.set_postfix_str(f"{corruption} {severity}" if severity else corruption, refresh=False)
                for xb in batches():
                    for name, m in models.items():
                        out = m(xb.to(devices[name]))
                        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != xb.shape[0]:
                            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                            raise ValueError(f"model {name!r} returned {shape} for a batch of {xb.shape[0]} "
                                             f"images: expected logits [{xb.shape[0]}, classes]")
                        logits.setdefault((name, corruption, severity), []).append(out.detach().float().cpu())
                    bar.update(1)
    finally:
        bar.close()
        for name, m in models.items():
            m.train(states[name])
    rows = []
    for name in models:
        for corruption, severity, _ in conditions:
            lg = torch.cat(logits[(name, corruption, severity)])
            y = labels[(corruption, severity)]
            rows.append({"method": name, "corruption": corruption, "severity": severity, "n": len(y),
                         **calibration_metrics(lg, y, n_bins)})
    grid = pd.DataFrame(rows, columns=[*KEYS, "n", *METRICS])
    if not per_image:
        return grid
    return grid, {name: _per_image_of(logits, name, conditions, labels) for name in models}


def _per_image_of(logits: Mapping[tuple[str, str, int], list[torch.Tensor]], name: str,
                  conditions: Sequence[tuple[str, int, Any]], labels: Mapping[tuple[str, int], torch.Tensor]):
    """One model's correctness per image, by the predictions calibration_metrics scores (conf_correct)."""
    def correct(corruption: str, severity: int) -> np.ndarray:
        return conf_correct(torch.cat(logits[(name, corruption, severity)]), labels[(corruption, severity)])[:, 1] == 1

    names = tuple(dict.fromkeys(c for c, _, _ in conditions if c != CLEAN))
    severities = tuple(dict.fromkeys(s for c, s, _ in conditions if c != CLEAN))
    clean = correct(CLEAN, 0)
    counts = np.zeros((len(clean), len(names)), dtype=np.uint8)
    for corruption, severity, _ in conditions:
        if corruption != CLEAN:
            counts[:, names.index(corruption)] += correct(corruption, severity)
    return PerImage(clean, counts, names, severities)


def corruption_grid(models: Mapping[str, nn.Module], x: Any, y: Any,
                    corruptions: Sequence[str] = BENCHMARK_CORRUPTIONS,
                    severities: Sequence[int] = SEVERITIES, seed: int = 0, batch_size: int = 500,
                    device: str | torch.device | None = None, n_bins: int = 15, progress: bool | None = None,
                    quantize: bool = True, per_image: bool = False):
    """Accuracy and calibration of every model on the clean images and on every (corruption, severity).

    ``x``: uint8 images [N, C, H, W] (tensor or array), ``y``: labels [N]. Each batch of ``batch_size``
    images is converted to float in [0, 1], corrupted once with ``varmix.evaluate.corruptions.corrupt(x, name,
    severity, gen)`` (``gen`` the CPU generator seeded with :func:`corruption_seed` (seed, name, severity),
    consumed batch after batch), rounded to 8 bits like the released CIFAR-10-C when ``quantize``, and
    passed to every ``model(x_float)`` in eval mode under ``no_grad`` (each model's train/eval mode is
    restored afterwards). Corruption runs on ``device`` (default: the first model's device); each model
    runs on its own device, or on ``device`` when one is given (the models are moved there).

    ``progress``: None shows a tqdm bar only on a terminal (``TQDM_DISABLE=1`` silences it), True/False
    force it on/off. Returns the grid described in the module docstring: the clean rows (``"clean"``,
    severity 0) first, then ``corruptions`` × ``severities`` in the given order, per method in ``models``
    order.

    ``per_image=True`` returns ``(grid, {model name: PerImage})`` instead: per model, which images it
    classifies correctly when clean and at how many of the ``severities`` of each corruption (the
    predictions the grid's accuracy counts), for a bootstrap over test images (:class:`PerImage`).
    """
    models = _check_models(models)
    x = _check_images(x)
    y = _check_labels(y, x.shape[0])
    corruptions = _check_corruptions(corruptions)
    severities = _check_severities(severities, needed=bool(corruptions))
    seed = _check_seed(seed)
    batch_size = _check_batch_size(batch_size)
    n_bins = check_bins(n_bins)
    if not isinstance(per_image, bool):
        raise ValueError(f"per_image = {per_image!r} is invalid: expected True or False")
    from varmix.evaluate import corruptions as vc  # imported here: the grid is the only user

    missing = [c for c in corruptions if c not in vc.CORRUPTIONS]
    if missing:
        raise ValueError(f"corruption {missing[0]!r} is not implemented in varmix.evaluate.corruptions; "
                         f"available: {', '.join(vc.CORRUPTIONS)}")
    work_device = torch.device(device) if device is not None else _module_device(next(iter(models.values())))
    n = x.shape[0]
    starts = range(0, n, batch_size)

    def clean_batches() -> Iterator[torch.Tensor]:
        for i in starts:
            yield x[i:i + batch_size].to(work_device).float().div_(255.0)

    def corrupted_batches(name: str, severity: int) -> Callable[[], Iterator[torch.Tensor]]:
        def gen_batches() -> Iterator[torch.Tensor]:
            gen = torch.Generator(device="cpu").manual_seed(corruption_seed(seed, name, severity))
            for xb in clean_batches():
                xc = vc.corrupt(xb, name, severity, gen)
                yield quantize_uint8(xc) if quantize else xc
        return gen_batches

    conditions = [(CLEAN, 0, clean_batches)]
    conditions += [(c, s, corrupted_batches(c, s)) for c in corruptions for s in severities]
    labels = {(c, s): y for c, s, _ in conditions}
    return _evaluate(models, conditions, labels, len(starts), device, n_bins, progress, per_image)


def _check_condition(key: Any, what: str) -> tuple[str, int]:
    if not isinstance(key, tuple) or len(key) != 2:
        raise ValueError(f"{what} key {key!r} is invalid: expected a (corruption, severity) pair")
    corruption, severity = key
    if corruption == CLEAN:
        if severity != 0 or isinstance(severity, bool):
            raise ValueError(f"{what} key {key!r}: the clean set has severity 0")
        return CLEAN, 0
    return _check_name(corruption), _check_severity(severity)


def grid_from_images(models: Mapping[str, nn.Module], images: Mapping[tuple[str, int], Any], y: Any,
                     batch_size: int = 500, device: str | torch.device | None = None, n_bins: int = 15,
                     progress: bool | None = None) -> pd.DataFrame:
    """The grid for precomputed uint8 images, e.g. the released CIFAR-10-C arrays: ``images`` maps
    ``(corruption, severity)`` (``("clean", 0)`` for the clean set) to uint8 [N, C, H, W]; ``y`` holds the
    N labels shared by all of them. Same columns and model handling as :func:`corruption_grid`."""
    models = _check_models(models)
    if not isinstance(images, Mapping) or not images:
        raise ValueError(f"images must be a non-empty mapping (corruption, severity) -> uint8 images, "
                         f"got {type(images).__name__}")
    batch_size = _check_batch_size(batch_size)
    n_bins = check_bins(n_bins)
    checked = {}
    for key, arr in images.items():
        cond = _check_condition(key, "images")
        checked[cond] = _check_images(arr, f"images[{key!r}]")
    n = {a.shape[0] for a in checked.values()}
    if len(n) != 1:
        raise ValueError(f"images hold different numbers of images {sorted(n)}; expected one N for all")
    n = n.pop()
    y = _check_labels(y, n)
    work_device = torch.device(device) if device is not None else _module_device(next(iter(models.values())))

    def batches(arr: torch.Tensor) -> Callable[[], Iterator[torch.Tensor]]:
        return lambda: (arr[i:i + batch_size].to(work_device).float().div_(255.0) for i in range(0, n, batch_size))

    conditions = [(c, s, batches(arr)) for (c, s), arr in checked.items()]
    labels = {(c, s): y for c, s, _ in conditions}
    n_batches = len(range(0, n, batch_size))
    return _evaluate(models, conditions, labels, n_batches, device, n_bins, progress)


def grid_from_logits(logits: Mapping[tuple[str, str, int], Any], labels: Any, n_bins: int = 15) -> pd.DataFrame:
    """The grid from precomputed logits: ``logits`` maps ``(method, corruption, severity)`` to logits
    [N, K] (``("erm", "clean", 0)`` for clean); ``labels`` is one label array for all of them or a mapping
    with the same keys. Rows come in the mapping's order."""
    if not isinstance(logits, Mapping) or not logits:
        raise ValueError(f"logits must be a non-empty mapping (method, corruption, severity) -> logits, "
                         f"got {type(logits).__name__}")
    n_bins = check_bins(n_bins)
    rows = []
    for key, lg in logits.items():
        if not isinstance(key, tuple) or len(key) != 3 or not isinstance(key[0], str) or not key[0]:
            raise ValueError(f"logits key {key!r} is invalid: expected (method, corruption, severity)")
        corruption, severity = _check_condition(key[1:], "logits")
        if isinstance(labels, Mapping):
            if key not in labels:
                raise ValueError(f"labels has no entry for {key!r}; expected the same keys as logits")
            y = labels[key]
        else:
            y = labels
        try:
            metrics = calibration_metrics(lg, y, n_bins)
        except ValueError as exc:
            raise ValueError(f"logits[{key!r}]: {exc}") from exc
        rows.append({"method": key[0], "corruption": corruption, "severity": severity, "n": len(y), **metrics})
    grid = pd.DataFrame(rows, columns=[*KEYS, "n", *METRICS])
    _check_unique(grid)
    return grid


# ----------------------------------------------------------------------------------------------
# summaries
def _check_unique(grid: pd.DataFrame) -> None:
    dup = grid.duplicated(list(KEYS), keep=False)
    if dup.any():
        row = grid.loc[dup, list(KEYS)].iloc[0].tolist()
        raise ValueError(f"grid has more than one row for (method, corruption, severity) = {tuple(row)}; "
                         f"expected one (summarise each seed separately, e.g. grid.groupby('seed'))")


def _prepare(grid: Any, metrics: Sequence[str], corruptions: Sequence[str] | None,
             need_clean: bool = True) -> tuple[pd.DataFrame, list[str], tuple[str, ...], list[int]]:
    """Check a grid; return (rows of the pooled corruptions, method order, corruptions, severities)."""
    if not isinstance(grid, pd.DataFrame):
        raise ValueError(f"grid must be a pandas DataFrame (from corruption_grid), got {type(grid).__name__}")
    missing = [c for c in (*KEYS, *metrics) if c not in grid.columns]
    if missing:
        raise ValueError(f"grid lacks column {missing[0]!r}; expected columns {', '.join((*KEYS, *metrics))}")
    if grid.empty:
        raise ValueError("grid is empty: expected at least one row per method")
    _check_unique(grid)
    methods = list(dict.fromkeys(grid["method"]))
    present = set(grid.loc[grid["corruption"] != CLEAN, "corruption"])
    if corruptions is None:
        corruptions = tuple(c for c in BENCHMARK_CORRUPTIONS if c in present)
        if not corruptions:
            raise ValueError(f"grid has no rows for the benchmark corruptions (it has: {sorted(present) or 'none'}); "
                             f"pass corruptions=[...] to pool others")
    else:
        corruptions = _check_corruptions(corruptions)
        absent = [c for c in corruptions if c not in present]
        if not corruptions or absent:
            raise ValueError(f"corruption {absent[0] if absent else None!r} has no rows in the grid; "
                             f"expected one of {sorted(present)}")
    if need_clean:
        clean = grid[grid["corruption"] == CLEAN]
        for m in methods:
            if not (clean["method"] == m).any():
                raise ValueError(f"grid has no clean row (corruption 'clean', severity 0) for method {m!r}")
    rows = grid[grid["corruption"].isin(corruptions)]
    severities = sorted(int(s) for s in set(rows["severity"]))
    have = set(zip(rows["method"], rows["corruption"], rows["severity"].astype(int)))
    for m in methods:
        for c in corruptions:
            for s in severities:
                if (m, c, s) not in have:
                    raise ValueError(f"grid has no row for method {m!r}, corruption {c!r}, severity {s}; "
                                     f"every method needs every (corruption, severity) that is pooled")
    return rows, methods, corruptions, severities


def _pooled(rows: pd.DataFrame, metric: str, methods: list[str]) -> pd.Series:
    """Mean over corruptions of the mean over severities, per method."""
    per_corruption = rows.groupby(["method", "corruption"], sort=False)[metric].mean()
    return per_corruption.groupby(level="method", sort=False).mean().reindex(methods)


def _clean(grid: pd.DataFrame, metric: str, methods: list[str]) -> pd.Series:
    clean = grid[grid["corruption"] == CLEAN].set_index("method")[metric]
    return clean.reindex(methods)


def summarize(grid: pd.DataFrame, corruptions: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per method (index ``method``, in grid order):

    ``clean_accuracy``, ``corruption_accuracy`` (mean over corruptions of the mean over severities),
    ``mce_unnormalised`` (= 1 − corruption_accuracy), ``accuracy_s1`` … (mean over corruptions at each
    severity), ``clean_ece``, ``corruption_ece`` (pooled like the accuracy), ``n_corruptions`` and
    ``n_severities`` pooled. ``corruptions``: which to pool (default: the benchmark corruptions in the grid).
    """
    rows, methods, corruptions, severities = _prepare(grid, ("accuracy", "ece"), corruptions)
    out = pd.DataFrame(index=pd.Index(methods, name="method"))
    out["clean_accuracy"] = _clean(grid, "accuracy", methods)
    out["corruption_accuracy"] = _pooled(rows, "accuracy", methods)
    out["mce_unnormalised"] = 1.0 - out["corruption_accuracy"]
    by_sev = rows.groupby(["method", "severity"], sort=False)["accuracy"].mean()
    for s in severities:
        out[f"accuracy_s{s}"] = by_sev.xs(s, level="severity").reindex(methods)
    out["clean_ece"] = _clean(grid, "ece", methods)
    out["corruption_ece"] = _pooled(rows, "ece", methods)
    out["n_corruptions"] = len(corruptions)
    out["n_severities"] = len(severities)
    return out


def corruption_errors(grid: pd.DataFrame, corruptions: Sequence[str] | None = None) -> pd.DataFrame:
    """Unnormalised corruption error CE_c = mean over severities of (1 − accuracy): methods × corruptions."""
    rows, methods, corruptions, _ = _prepare(grid, ("accuracy",), corruptions, need_clean=False)
    err = (1.0 - rows["accuracy"]).groupby([rows["method"], rows["corruption"]], sort=False).mean()
    return err.unstack("corruption").reindex(index=methods, columns=list(corruptions))


def mce_unnormalised(grid: pd.DataFrame, corruptions: Sequence[str] | None = None) -> pd.Series:
    """Unnormalised mCE per method: mean over corruptions of CE_c (CIFAR convention)."""
    return corruption_errors(grid, corruptions).mean(axis=1).rename("mce_unnormalised")


def relative_mce(grid: pd.DataFrame, baseline: str = "erm", corruptions: Sequence[str] | None = None) -> pd.Series:
    """Relative mCE (Hendrycks & Dietterich 2019) per method against ``baseline``:

    mean over corruptions c of Σ_s (E_{c,s} − E_clean) / Σ_s (E^base_{c,s} − E^base_clean), with E = 1 −
    accuracy. Exactly 1.0 for the baseline. Where the baseline's error does not change under a corruption
    the ratio is undefined: that corruption's ratio is NaN and so is the mean (a warning names it).
    """
    rows, methods, corruptions, _ = _prepare(grid, ("accuracy",), corruptions)
    if baseline not in methods:
        raise ValueError(f"baseline method {baseline!r} is not in the grid; expected one of {', '.join(map(str, methods))}")
    clean_err = 1.0 - _clean(grid, "accuracy", methods)
    drop = (1.0 - rows["accuracy"]) - rows["method"].map(clean_err)
    total = drop.groupby([rows["method"], rows["corruption"]], sort=False).sum().unstack("corruption")
    total = total.reindex(index=methods, columns=list(corruptions))
    base = total.loc[baseline]
    zero = [c for c in corruptions if base[c] == 0]
    if zero:
        import warnings

        warnings.warn(f"relative mCE: the baseline {baseline!r} loses no accuracy under {', '.join(zero)}; "
                      f"the ratio is undefined there (NaN)", RuntimeWarning, stacklevel=2)
    ratio = total.div(base.where(base != 0), axis=1)
    ratio.loc[baseline] = 1.0  # by definition (avoids 0/0 for the baseline's own row)
    if zero:
        ratio.loc[baseline, zero] = np.nan
    return ratio.mean(axis=1, skipna=False).rename("relative_mce")


def severity_calibration(grid: pd.DataFrame, metric: str = "ece",
                         corruptions: Sequence[str] | None = None) -> pd.DataFrame:
    """``metric`` (default ECE) per method × severity: column 0 is the clean set, column s the mean over
    the pooled corruptions at severity s — how calibration degrades as the shift grows."""
    if metric not in METRICS:
        raise ValueError(f"metric = {metric!r} is invalid: expected one of {', '.join(METRICS)}")
    rows, methods, _, severities = _prepare(grid, (metric,), corruptions)
    out = rows.groupby(["method", "severity"], sort=False)[metric].mean().unstack("severity")
    out = out.reindex(index=methods, columns=severities)
    out.insert(0, 0, _clean(grid, metric, methods))
    out.columns = pd.Index([int(c) for c in out.columns], name="severity")
    out.index.name = "method"
    return out


# ----------------------------------------------------------------------------------------------
# corruption families and the intensity shift
def _subsets(corruptions: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Column name -> the pooled corruptions it averages (only those in ``corruptions``, in its order)."""
    def among(names: Iterable[str]) -> tuple[str, ...]:
        names = set(names)
        return tuple(c for c in corruptions if c in names)

    out = {f"accuracy_{fam}": among(members) for fam, members in FAMILIES.items()}
    out["corruption_accuracy"] = tuple(corruptions)
    out["corruption_accuracy_no_intensity"] = tuple(c for c in corruptions if c not in INTENSITY_SHIFT)
    out["corruption_accuracy_intensity"] = among(INTENSITY_SHIFT)
    return out


def family_summary(grid: pd.DataFrame, corruptions: Sequence[str] | None = None) -> pd.DataFrame:
    """Corruption accuracy by family, one row per method (index ``method``, in grid order).

    Columns: ``accuracy_noise``, ``accuracy_blur``, ``accuracy_weather``, ``accuracy_digital``
    (:data:`FAMILIES`), ``corruption_accuracy`` (all pooled corruptions: equal to :func:`summarize`'s),
    ``corruption_accuracy_no_intensity`` (without :data:`INTENSITY_SHIFT`) and
    ``corruption_accuracy_intensity`` (only those). Each is the mean over its corruptions of the mean over
    severities, over the pooled corruptions it contains (``corruptions``, default: the benchmark ones in
    the grid); one that contains none is NaN. Extras outside FAMILIES count only in the last three.
    """
    rows, methods, corruptions, _ = _prepare(grid, ("accuracy",), corruptions, need_clean=False)
    out = pd.DataFrame(index=pd.Index(methods, name="method"))
    for column, names in _subsets(corruptions).items():
        out[column] = (_pooled(rows[rows["corruption"].isin(names)], "accuracy", methods) if names
                       else pd.Series(np.nan, index=methods))
    return out


def per_image_accuracy(counts: Any, corruption_names: Sequence[str], n_severities: int,
                       subset: Sequence[str] | None = None) -> np.ndarray:
    """Per image, the fraction of (corruption, severity) pairs classified correctly, over the
    corruptions in ``subset`` (default: all of ``corruption_names``; names not among them are skipped,
    as :func:`family_summary` does). ``counts``: :attr:`PerImage.corruptions` [n, len(corruption_names)].
    Returns float64 [n]; its mean over images is the grid's pooled accuracy over the same corruptions (up
    to float rounding), and a bootstrap resamples its entries."""
    names = _check_corruptions(corruption_names)
    if not _is_int(n_severities) or not 1 <= n_severities <= 5:
        raise ValueError(f"n_severities = {n_severities!r} is invalid: expected an integer 1..5")
    c = np.asarray(counts)
    if c.ndim != 2 or c.shape[1] != len(names) or not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"counts is {c.dtype} of shape {c.shape}: expected integer counts [n, {len(names)}] "
                         f"(one column per corruption name)")
    if c.size and (int(c.min()) < 0 or int(c.max()) > n_severities):
        raise ValueError(f"counts range {int(c.min())}..{int(c.max())}: expected 0..{n_severities} "
                         f"(correct severities per image)")
    chosen = names if subset is None else tuple(x for x in _check_corruptions(subset) if x in names)
    if not chosen:
        raise ValueError(f"subset {list(subset)} has no corruption among {list(names)}; expected at least one")
    cols = [names.index(x) for x in chosen]
    return c[:, cols].sum(axis=1, dtype=np.int64) / float(len(cols) * n_severities)


def family_per_image(per_image: PerImage) -> dict[str, np.ndarray]:
    """:func:`family_summary`'s columns per image: column name -> float64 [n] (all NaN for a column with no
    corruption in ``per_image``), plus ``clean_accuracy`` (0.0/1.0 per image)."""
    if not isinstance(per_image, PerImage):
        raise ValueError(f"per_image is a {type(per_image).__name__}: expected a PerImage (corruption_grid(..., "
                         f"per_image=True))")
    n = per_image.clean.shape[0]
    out = {"clean_accuracy": per_image.clean.astype(np.float64)}
    for column, names in _subsets(per_image.corruption_names).items():
        out[column] = (per_image_accuracy(per_image.corruptions, per_image.corruption_names,
                                          len(per_image.severities), names) if names else np.full(n, np.nan))
    return out


# ----------------------------------------------------------------------------------------------
# per-image correctness of a whole study in one file
def save_per_image(path: str | os.PathLike, runs: Mapping[str, PerImage]) -> None:
    """Write ``{run_key: PerImage}`` (e.g. ``"varmixup_full-s0"``) atomically to one compressed .npz with
    stable bytes (``varmix.core.io.write_npz``): ``<run>/clean``, ``<run>/corruptions`` and, once,
    ``corruption_names`` and ``severities``, which every run must share, as must the number of images."""
    from varmix.core import io as vio

    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("runs must be a non-empty mapping run key -> PerImage")
    first = None
    arrays: dict[str, np.ndarray] = {}
    for key, p in runs.items():
        if not isinstance(key, str) or not key or "/" in key:
            raise ValueError(f"run key {key!r} is invalid: expected a non-empty string without '/' (e.g. 'erm-s0')")
        if not isinstance(p, PerImage):
            raise ValueError(f"runs[{key!r}] is a {type(p).__name__}: expected a PerImage")
        first = first or (key, p)
        k0, p0 = first
        if (p.corruption_names, p.severities, p.clean.shape) != (p0.corruption_names, p0.severities, p0.clean.shape):
            raise ValueError(f"runs[{key!r}] has corruptions {list(p.corruption_names)}, severities "
                             f"{list(p.severities)} and {p.clean.shape[0]} images, runs[{k0!r}] "
                             f"{list(p0.corruption_names)}, {list(p0.severities)} and {p0.clean.shape[0]}: "
                             f"expected the same for every run")
        arrays[f"{key}/clean"] = p.clean
        arrays[f"{key}/corruptions"] = p.corruptions
    arrays["corruption_names"] = np.array(first[1].corruption_names, dtype=str)
    arrays["severities"] = np.array(first[1].severities, dtype=np.int64)
    vio.write_npz(path, arrays)


def load_per_image(path: str | os.PathLike) -> dict[str, PerImage]:
    """The ``{run_key: PerImage}`` written by :func:`save_per_image`, in the order written."""
    from varmix.core import io as vio

    arrays = vio.read_npz(path, "per-image file")
    if "corruption_names" not in arrays or "severities" not in arrays:
        raise ValueError(f"{path} lacks 'corruption_names' or 'severities': expected a file written by "
                         f"varmix.evaluate.robustness.save_per_image")
    names = tuple(str(c) for c in arrays["corruption_names"])
    severities = tuple(int(s) for s in arrays["severities"])
    runs = [k[:-len("/clean")] for k in arrays if k.endswith("/clean")]
    try:
        return {k: PerImage(arrays[f"{k}/clean"], arrays[f"{k}/corruptions"], names, severities) for k in runs}
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path} is not a valid per-image file ({exc})") from exc
