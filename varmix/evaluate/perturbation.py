"""Accuracy under adversarial perturbations (l-inf, images in [0, 1]): which test images a model still
classifies correctly after an attack of radius eps.

- ``pgd_robust(model, x, y, eps_list, *, steps, restarts, step_factor=2.5, gen, batch_size=500, device=None)``:
  per eps, a bool mask [N] (CPU), True where the image survives PGD (``varmix.learn.attacks.pgd_linf``, CE loss,
  random start drawn from ``gen``, step ``step_factor * eps / steps``, Madry et al.'s 2.5) from every one
  of ``restarts`` random starts (worst case over restarts).
- ``autoattack_robust(model, x, y, eps, *, seed, version="standard", batch_size=500, device=None)``: the
  same mask under torchattacks' AutoAttack (Croce & Hein; "standard": APGD-CE, APGD-T, FAB-T, Square;
  "apgd": its APGD-CE and APGD-T alone).
- ``robust_accuracy_table(masks)``: accuracy per eps as a DataFrame (columns eps, eps_255, n, robust,
  accuracy); ``accuracy_table(runs)`` the same for every run (arm, seed, eps_255, accuracy);
  ``save_masks``/``load_masks`` every run's masks in one committed .npz (the report's per-image input).

Our classifiers normalise inside (``varmix.learn.models``: mean/std buffers), so both attacks see images in
[0, 1], as pgd_linf and torchattacks expect.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from varmix.core.names import AUTOATTACK_VERSIONS  # standard, rand (torchattacks' AutoAttack) and apgd (below)
from varmix.learn.attacks import pgd_linf
from varmix.learn.train import predict_logits, resolve_device

TORCHATTACKS_INSTALL = "pip install --no-deps torchattacks==3.5.1"
# why --no-deps: torchattacks 3.5.1's metadata pins requests~=2.25.1, which would downgrade the requests
# that dvc and jupyterlab need; torchattacks itself imports and runs with the newer requests.


# ----------------------------------------------------------------------------------------------
# checks (all before any work)
def _check_eps(eps: Any, name: str = "eps") -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (0 <= eps <= 1):
        raise ValueError(f"{name} = {eps!r} is invalid: expected a finite number in [0, 1] "
                         f"(image units, images in [0, 1]: e.g. 8/255)")
    return float(eps)


def _check_int(value: Any, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"{name} = {value!r} is invalid: expected an integer >= {lo}")
    return int(value)


def _check_data(model: Any, x: Any, y: Any) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model is a {type(model).__name__}: expected a torch.nn.Module")
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        desc = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x is a {desc}: expected float images [N, C, H, W] in [0, 1]")
    if len(x) and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ValueError(f"x ranges over {float(x.min()):.4g}..{float(x.max()):.4g}: expected images in [0, 1]")
    if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.shape != (len(x),):
        desc = f"{y.dtype} tensor of shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y is a {desc}: expected int64 labels of shape ({len(x)},)")


def _device(model: nn.Module, device: Any) -> torch.device:
    """``device`` (the model is moved there), or the model's own device when None (train.predict_logits's
    rule; the CPU for a model without parameters)."""
    if device is None:
        first = next(model.parameters(), None)
        return first.device if first is not None else torch.device("cpu")
    dev = resolve_device(device)
    model.to(dev)
    return dev


def _predict(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).float().argmax(1)


# ----------------------------------------------------------------------------------------------
def pgd_robust(model: nn.Module, x: Tensor, y: Tensor, eps_list: Iterable[float], *, steps: int,
               restarts: int, step_factor: float = 2.5, gen: torch.Generator, batch_size: int = 500,
               device: str | torch.device | None = None) -> dict[float, Tensor]:
    """For each eps of ``eps_list`` (image units: 8/255 for images in [0, 1]), a bool tensor [N] on the CPU:
    True where ``model`` still classifies ``x[i]`` as ``y[i]`` after ``restarts`` PGD attacks
    (``varmix.learn.attacks.pgd_linf``: CE loss, ``steps`` sign steps of ``step_factor * eps / steps``, each
    from a fresh uniform random start in the ball drawn from the CPU generator ``gen``). An image counts
    as robust only if it survives every restart (the worst case over restarts). eps = 0 gives the clean
    correctness (no attack is run, and pgd_linf at eps 0 returns x unchanged).

    Attacks are run only where they can change the answer, which keeps the masks the same as attacking
    every image from every restart at every eps while the random starts are the same (tests/test_perturbation.py
    checks it against that slow reference with a model whose PGD outcome does not depend on the start):
    - images misclassified clean are never attacked (they are not robust at any eps);
    - eps are processed in ascending order and an image broken at a smaller eps is not attacked at larger
      ones: the adversarial image found lies in the smaller ball, hence in every larger one, so it breaks
      the image there too (the reported mask at eps is the worst case over the attacks at every eps' <= eps,
      each of which is a valid attack at eps);
    - within an eps, restart r attacks only the images that survived restarts 0..r-1.
    So ``masks[a] <= masks[b]`` elementwise for a > b, and every mask implies clean correctness.

    Randomness: ``gen`` is drawn from in the order eps (ascending), restart, batch of ``batch_size``
    survivors (in index order), C·H·W float32 uniforms per attacked image; the same ``gen`` state gives
    the same masks, bit for bit on the CPU. Which draws an image gets depends on which images are still
    alive, so two models (or two eps lists) do not see the same starts for an image.

    Batches of ``batch_size`` go to ``device`` (default: the model's device; a given device moves the
    model there); ``x`` and ``y`` may stay on the CPU. The model runs in eval mode; its train/eval mode is
    put back afterwards. Duplicated eps are evaluated once."""
    _check_data(model, x, y)
    if isinstance(eps_list, (str, bytes)) or not isinstance(eps_list, Iterable):
        raise ValueError(f"eps_list = {eps_list!r} is invalid: expected a list of numbers in [0, 1]")
    eps_values = sorted({_check_eps(e, "eps_list entry") for e in eps_list})
    if not eps_values:
        raise ValueError("eps_list = [] is invalid: expected at least one eps in [0, 1]")
    steps = _check_int(steps, "steps", 1)
    restarts = _check_int(restarts, "restarts", 1)
    if isinstance(step_factor, bool) or not isinstance(step_factor, numbers.Real) \
            or not (0 < step_factor < math.inf):
        raise ValueError(f"step_factor = {step_factor!r} is invalid: expected a finite number > 0 "
                         f"(step = step_factor * eps / steps)")
    if not isinstance(gen, torch.Generator) or gen.device.type != "cpu":
        raise ValueError(f"gen = {gen!r} is invalid: expected a CPU torch.Generator")
    batch_size = _check_int(batch_size, "batch_size", 1)
    dev = _device(model, device)

    x, y = x.detach().cpu(), y.detach().cpu()
    was_training = model.training
    model.eval()
    try:
        alive = predict_logits(model, x, batch_size, dev).argmax(1) == y   # clean-correct
        masks = {}
        for eps in eps_values:
            for _ in range(restarts if eps > 0 else 0):
                idx = alive.nonzero().squeeze(1)
                for i in range(0, len(idx), batch_size):
                    b = idx[i:i + batch_size]
                    xb, yb = x[b].to(dev), y[b].to(dev)
                    adv = pgd_linf(model, xb, yb, eps, step_factor * eps / steps, steps, gen)
                    alive[b] = (_predict(model, adv) == yb).cpu()
            masks[eps] = alive.clone()
    finally:
        model.train(was_training)
    return masks


# ----------------------------------------------------------------------------------------------
def _import_torchattacks():
    try:
        import torchattacks
    except ImportError as exc:
        raise ImportError(f"autoattack_robust needs torchattacks, which is not installed: run "
                          f"`{TORCHATTACKS_INSTALL}` (--no-deps: its metadata pins requests~=2.25.1, "
                          f"which clashes with what dvc and jupyterlab need)") from exc
    return torchattacks


def autoattack_robust(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, seed: int,
                      version: str = "standard", batch_size: int = 500,
                      device: str | torch.device | None = None) -> Tensor:
    """A bool tensor [N] on the CPU: True where ``model`` still classifies ``x[i]`` (float [N, C, H, W] in
    [0, 1]) as ``y[i]`` after torchattacks' AutoAttack (norm Linf, radius ``eps`` in image units, the
    number of classes read from the model's output). ``version="standard"``: APGD-CE, APGD-T, FAB-T and
    Square, each image attacked by the next one only while it survives (torchattacks' MultiAttack);
    ``"rand"``: APGD-CE and APGD-DLR with 20 EOT iterations (for randomised models); ``"apgd"``: the
    standard version's first two attacks alone, built as torchattacks.AutoAttack builds them (APGD-CE,
    then APGD-T on the survivors), without FAB-T and Square, which cost the rest: each alone, on the 40
    clean-correct of 64 Fashion-MNIST test images, for the default profile's ERM small CNN at 8/255, on a
    busy 2-core EPYC, APGD-CE took 0.5 s, APGD-T 4 s, FAB-T 50 s and Square 457 s. torchattacks 3.5.1
    builds these with its own defaults: APGD, APGD-T and FAB run 10 iterations (fra31/auto-attack's
    standard version runs 100), APGD-T and FAB-T take n_classes - 1 target classes, Square 5000 queries.

    Only clean-correct images are attacked (the others are not robust), in batches of ``batch_size`` of
    them in index order, on ``device`` (default: the model's device; a given device moves the model
    there). The sub-attacks seed torch's global RNG with ``seed`` themselves; the call runs inside
    ``torch.random.fork_rng``, so the caller's CPU and CUDA RNG states are as they were afterwards, and the
    same seed, batch size and device give the same mask. The model's train/eval mode is put back."""
    _check_data(model, x, y)
    eps = _check_eps(eps)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not (0 <= seed < 2 ** 63):
        raise ValueError(f"seed = {seed!r} is invalid: expected an integer in [0, 2**63)")
    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"version = {version!r} is invalid: expected one of {', '.join(AUTOATTACK_VERSIONS)}")
    batch_size = _check_int(batch_size, "batch_size", 1)
    torchattacks = _import_torchattacks()
    dev = _device(model, device)

    x, y = x.detach().cpu(), y.detach().cpu()
    was_training = model.training
    model.eval()
    try:
        logits = predict_logits(model, x, batch_size, dev)
        robust = logits.argmax(1) == y
        idx = robust.nonzero().squeeze(1)
        if eps == 0 or len(idx) == 0:
            return robust
        # torchattacks draws from torch's GLOBAL RNG (each sub-attack calls torch.random.manual_seed(seed)
        # and torch.cuda.random.manual_seed(seed) in its perturb): fork the CPU RNG and every CUDA device's
        # so the caller's streams are untouched, and seed them so the run repeats.
        cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            if version == "apgd":  # torchattacks.AutoAttack's "standard" list, cut after its APGD-T
                attack = torchattacks.MultiAttack([
                    torchattacks.APGD(model, norm="Linf", eps=eps, seed=int(seed), verbose=False, loss="ce",
                                      n_restarts=1),
                    torchattacks.APGDT(model, norm="Linf", eps=eps, seed=int(seed), verbose=False,
                                       n_classes=logits.shape[1], n_restarts=1)])
            else:
                attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version=version,
                                                 n_classes=logits.shape[1], seed=int(seed), verbose=False)
            for i in range(0, len(idx), batch_size):
                b = idx[i:i + batch_size]
                xb, yb = x[b].to(dev), y[b].to(dev)
                adv = attack(xb, yb)
                robust[b] = (_predict(model, adv) == yb).cpu()
    finally:
        model.train(was_training)
    return robust


# ----------------------------------------------------------------------------------------------
def robust_accuracy_table(masks: dict[float, Tensor]) -> pd.DataFrame:
    """One row per eps (ascending) of ``masks`` ({eps: bool [N]}, as pgd_robust returns): eps, eps_255
    (eps * 255, rounded to 6 decimals), n (images), robust (how many are True) and accuracy (robust / n)."""
    if not isinstance(masks, dict) or not masks:
        raise ValueError(f"masks is a {type(masks).__name__} of {len(masks) if isinstance(masks, dict) else '?'}"
                         f" entries: expected a non-empty dict {{eps: bool tensor [N]}}")
    lengths = set()
    rows = []
    for eps, m in sorted(masks.items()):
        eps = _check_eps(eps, "masks key")
        if not isinstance(m, Tensor) or m.dtype != torch.bool or m.ndim != 1 or len(m) == 0:
            desc = f"{m.dtype} tensor of shape {tuple(m.shape)}" if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(f"masks[{eps!r}] is a {desc}: expected a non-empty bool tensor [N]")
        lengths.add(len(m))
        n, k = len(m), int(m.sum())
        rows.append({"eps": eps, "eps_255": round(eps * 255, 6), "n": n, "robust": k, "accuracy": k / n})
    if len(lengths) > 1:
        raise ValueError(f"masks have lengths {sorted(lengths)}: expected one N for every eps")
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# every run's masks: the perturbation chapter's table and per-image file (what the report resamples)
def _eps_key(eps_255: float) -> str:
    return f"eps_{eps_255:g}"


def accuracy_table(runs: Mapping[str, Mapping[float, Tensor]]) -> pd.DataFrame:
    """``{"<arm>-s<seed>": pgd_robust's masks}`` as one long table: arm, seed, eps_255, accuracy (one row
    per run and eps, in the runs' order, eps ascending; eps 0 = clean accuracy on the same images)."""
    from varmix.core.names import run_key

    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("runs must be a non-empty mapping '<arm>-s<seed>' -> {eps: bool mask}")
    frames = []
    for name, masks in runs.items():
        arm, seed = run_key(name)
        t = robust_accuracy_table(dict(masks))
        frames.append(t.assign(arm=arm, seed=seed)[["arm", "seed", "eps_255", "accuracy"]])
    return pd.concat(frames, ignore_index=True)


def save_masks(path: str | os.PathLike, runs: Mapping[str, Mapping[float, Tensor]]) -> None:
    """Write ``{"<arm>-s<seed>": {eps: bool mask [N]}}`` (eps in pixel units, as pgd_robust returns) to one
    compressed .npz with stable bytes (``varmix.core.io.write_npz``), keys ``<run>/eps_<eps*255>``. Every run
    must have the same eps and the same N: the report pairs them image by image."""
    from varmix.core import io as vio

    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("runs must be a non-empty mapping '<arm>-s<seed>' -> {eps: bool mask}")
    arrays, first = {}, None
    for name, masks in runs.items():
        table = robust_accuracy_table(dict(masks))  # checks: bool masks [N] of one length
        shape = (tuple(table["eps_255"]), int(table["n"].iloc[0]))
        first = first or (name, shape)
        if shape != first[1]:
            raise ValueError(f"runs[{name!r}] has eps {list(shape[0])}/255 and {shape[1]} images, runs[{first[0]!r}] "
                             f"{list(first[1][0])} and {first[1][1]}: every run needs the same eps and images")
        for eps, m in sorted(masks.items()):
            arrays[f"{name}/{_eps_key(round(eps * 255, 6))}"] = m.cpu().numpy()
    vio.write_npz(path, arrays)


def load_masks(path: str | os.PathLike) -> dict[str, dict[float, np.ndarray]]:
    """``save_masks``'s file as ``{run: {eps_255: bool [N]}}`` (eps in units of 1/255)."""
    from varmix.core import io as vio

    out: dict[str, dict[float, np.ndarray]] = {}
    for key, arr in vio.read_npz(path, "per-image perturbation masks").items():
        run, _, eps = key.partition("/")
        if not eps.startswith("eps_") or arr.dtype != np.bool_:
            raise ValueError(f"{path}: entry {key!r} ({arr.dtype}) is not '<run>/eps_<eps>' holding a bool mask")
        out.setdefault(run, {})[float(eps[4:])] = arr
    return out
