"""Local linearity and loss surfaces: the paper's third claim (VarMixup models are more locally linear).

- ``local_linearity(model, x, y, eps, ...)``: Qin et al. (2019)'s local linearity measure
  γ(ε, x) = max_{‖δ‖∞ ≤ ε} |ℓ(x+δ) − ℓ(x) − δᵀ∇ₓℓ(x)| per example, found by projected sign-gradient
  ascent (steps, step size, random restarts and clipping the ball to [0, 1] are arguments; their
  defaults, 10 steps of 2.5·ε/steps from 1 start in the clipped ball, are measured against the
  alternatives in docs/DEPARTURES.md). ``linearity_table`` runs it over a list of ε (in 1/255) and
  ``summarize_linearity`` reduces the per-example values to mean / median / std / quartiles per ε;
  ``gamma_per_image`` lays them out as [ε, image] arrays per model for a paired bootstrap over images.
- ``input_surface(model, x, y, span, points, gen)``: the mean loss ℓ(x + a·u + b·v) over a grid in input
  space, u = sign(∇ₓℓ) per example, v a random sign direction.
- ``weight_surface(model, x, y, points, dims, span, gen)``: Li et al. (2018)'s weight-space loss surface
  along filter-normalised Gaussian directions (biases and BN parameters zeroed, "biasbn"), the model's
  weights restored bit for bit afterwards.

Conventions (docs/ARCHITECTURE.md): images are float tensors [N, C, H, W] in [0, 1] (the model normalises
internally); ε and spans are in [0, 1] pixel units (callers convert k/255); randomness comes from a CPU
``torch.Generator`` (``None`` means a fresh generator seeded 0, so every call is deterministic); random
tensors are drawn on the CPU and moved to the model's device. Every function puts the model in eval mode
(batch-norm with its running statistics, so examples do not interact) and restores each module's mode
afterwards; input gradients are taken with ``torch.autograd.grad`` so parameters' ``.grad`` are left as
they were. The loss is per example: ``loss='ce'`` is cross-entropy, or pass a callable
``(logits, y) -> Tensor[n]``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------------------
# validation helpers: each names the bad value and what was expected
def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model = {type(model).__name__} is invalid: expected a torch.nn.Module")


def _check_xy(x, y, loss, need_unit_range: bool = True) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        desc = f"a {x.dim()}-D {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x = {desc} is invalid: expected a float tensor [N, C, H, W]")
    if x.shape[0] < 1:
        raise ValueError(f"x has N = {x.shape[0]} images: expected at least 1")
    if need_unit_range:
        lo, hi = float(x.min()), float(x.max())
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            raise ValueError(f"x has values in [{lo}, {hi}]: expected images in [0, 1]")
    if not isinstance(y, torch.Tensor) or y.dim() < 1 or y.shape[0] != x.shape[0]:
        desc = f"shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"y = {desc} is invalid: expected a tensor with N = {x.shape[0]} rows (one per image)")
    if loss == "ce" and (y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool):
        raise ValueError(f"y has shape {tuple(y.shape)} and dtype {y.dtype}: loss='ce' expects integer "
                         f"class labels of shape [{x.shape[0]}]")


def _check_loss(loss) -> None:
    if not (loss == "ce" or callable(loss)):
        raise ValueError(f"loss = {loss!r} is invalid: expected 'ce' or a callable (logits, y) -> per-example loss")


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} = {v!r} is invalid: expected an integer >= {lo}")
    return int(v)


def _check_pos(name: str, v, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} = {v!r} is invalid: expected a number > 0" + (f" and <= {hi}" if hi else ""))
    v = float(v)
    if not (v > 0 and math.isfinite(v)) or (hi is not None and v > hi):
        raise ValueError(f"{name} = {v!r} is invalid: expected a number > 0" + (f" and <= {hi}" if hi else ""))
    return v


def _check_gen(gen) -> torch.Generator:
    if gen is None:
        return torch.Generator().manual_seed(0)
    if not isinstance(gen, torch.Generator) or gen.device.type != "cpu":
        raise ValueError(f"gen = {gen!r} is invalid: expected a CPU torch.Generator or None")
    return gen


# ----------------------------------------------------------------------------------------------
# shared machinery
def _model_device(model: nn.Module, x: torch.Tensor) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return x.device


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; every submodule's own training flag restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _loss_from_logits(logits: torch.Tensor, yb: torch.Tensor, loss) -> torch.Tensor:
    if loss == "ce":
        return F.cross_entropy(logits, yb, reduction="none")
    out = loss(logits, yb)
    n = yb.shape[0]
    if not isinstance(out, torch.Tensor) or out.shape != (n,):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"loss callable returned {got}: expected a per-example loss of shape [{n}]")
    return out


def _per_example_loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, loss) -> torch.Tensor:
    return _loss_from_logits(model(xb), yb, loss)


def _input_grad(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, loss) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example loss and its gradient w.r.t. the input (parameters' .grad untouched)."""
    with torch.enable_grad():
        xg = xb.detach().requires_grad_(True)
        lx = _per_example_loss(model, xg, yb, loss)
        (g,) = torch.autograd.grad(lx.sum(), xg)
    return lx.detach(), g.detach()


def _grid(span: float, points: int) -> np.ndarray:
    """``points`` values evenly spaced in [-span, span]; for odd ``points`` the centre is exactly 0."""
    c = (points - 1) / 2.0
    return span * (np.arange(points, dtype=np.float64) - c) / c


# ----------------------------------------------------------------------------------------------
# local linearity (Qin et al. 2019)
def default_step_size(eps: float, steps: int) -> float:
    """2.5·ε/steps (Madry et al.'s PGD convention): the ascent can travel 2.5 ball radii in total, so a
    coordinate can cross the whole ball from any start in the given number of steps."""
    return 2.5 * eps / steps


def local_linearity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10,
                    step_size: float | None = None, gen: torch.Generator | None = None,
                    batch_size: int = 256, loss="ce", return_delta: bool = False, restarts: int = 1,
                    clip: bool = True):
    """Qin et al. (2019)'s local linearity γ(ε, x) = max_{‖δ‖∞≤ε} |ℓ(x+δ) − ℓ(x) − δᵀ∇ₓℓ(x)| per example.

    ``eps`` is in [0, 1] pixel units (8/255 for the usual CIFAR radius). The inner max is found by
    projected gradient ascent on |·|: δ starts uniformly at random in the feasible box (drawn from
    ``gen``), takes ``steps`` signed-gradient steps of ``step_size`` (default
    ``default_step_size(eps, steps)`` = 2.5·ε/steps), each projected back onto the box; a run's value is
    the largest seen over all ``steps + 1`` iterates, start included (so a longer run with the same start
    and step size never reports less). The box is the ε-ball intersected with x+δ ∈ [0, 1] when ``clip``
    (only valid images are evaluated), else the plain ε-ball of the definition (x+δ may leave [0, 1]).
    ``restarts`` runs start from independent uniform draws, taken from ``gen`` in order (restart r's
    start for the whole of ``x`` after restart r−1's), and γ is the largest value over them; the first
    restart is the single-start run, so γ never decreases with more restarts on the same ``gen``. ℓ is
    the per-example loss (``'ce'`` or a callable ``(logits, y) -> Tensor[n]``), the model is evaluated in
    eval mode, and each start is drawn for the whole of ``x`` at once, so results do not depend on
    ``batch_size``.

    Returns γ as a detached CPU float32 tensor [N]; with ``return_delta=True`` returns ``(γ, δ)`` where δ
    (CPU, x's dtype, [N, C, H, W]) is the perturbation that attained γ (the earliest restart's on ties).
    """
    _check_model(model)
    _check_loss(loss)
    _check_xy(x, y, loss)
    eps = _check_pos("eps", eps, 1.0)
    steps = _check_int("steps", steps, 1)
    step_size = default_step_size(eps, steps) if step_size is None else _check_pos("step_size", step_size)
    batch_size = _check_int("batch_size", batch_size, 1)
    restarts = _check_int("restarts", restarts, 1)
    if not isinstance(clip, bool):
        raise ValueError(f"clip = {clip!r} is invalid: expected True (ε-ball ∩ [0, 1]) or False (plain ε-ball)")
    gen = _check_gen(gen)

    device = _model_device(model, x)
    best = best_delta = None
    with _eval_mode(model):
        for _ in range(restarts):  # restarts outside batches: one start tensor in memory at a time
            u = torch.rand(x.shape, generator=gen, dtype=x.dtype)  # this restart's start, for every image
            gammas, deltas = [], []
            for s in range(0, x.shape[0], batch_size):
                xb = x[s:s + batch_size].to(device)
                yb = y[s:s + batch_size].to(device)
                g, d = _linearity_batch(model, xb, yb, u[s:s + batch_size].to(device), eps, steps, step_size,
                                        loss, clip)
                gammas.append(g.cpu())
                if return_delta:
                    deltas.append(d.cpu())
            gamma = torch.cat(gammas)
            delta = torch.cat(deltas) if return_delta else None
            if best is None:
                best, best_delta = gamma, delta
            else:
                better = gamma > best
                best = torch.where(better, gamma, best)
                if return_delta:
                    best_delta = torch.where(better.view(-1, *([1] * (x.dim() - 1))), delta, best_delta)
    gamma = best.float()
    return (gamma, best_delta) if return_delta else gamma


def _linearity_batch(model, xb, yb, ub, eps, steps, step_size, loss, clip=True):
    l0, g0 = _input_grad(model, xb, yb, loss)
    if clip:
        lo = torch.clamp(-xb, min=-eps)          # δ ≥ max(−ε, −x)
        hi = torch.clamp(1.0 - xb, max=eps)      # δ ≤ min(ε, 1 − x)
    else:
        lo, hi = torch.full_like(xb, -eps), torch.full_like(xb, eps)
    delta = lo + (hi - lo) * ub
    best = torch.full_like(l0, -math.inf)
    best_delta = delta.clone()

    def gap(d: torch.Tensor) -> torch.Tensor:
        lx = _per_example_loss(model, xb + d, yb, loss)
        return (lx - l0 - (d * g0).flatten(1).sum(1)).abs()

    for it in range(steps + 1):
        last = it == steps
        with torch.enable_grad():
            d = delta.detach().requires_grad_(not last)
            gam = gap(d)
            grad = None if last else torch.autograd.grad(gam.sum(), d)[0]
        gam = gam.detach()
        better = gam > best
        best = torch.where(better, gam, best)
        best_delta = torch.where(better.view(-1, *([1] * (xb.dim() - 1))), delta, best_delta)
        if not last:
            delta = torch.minimum(torch.maximum(delta + step_size * grad.sign(), lo), hi)
    return best, best_delta


def linearity_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    eps_list_255: Sequence[float] = (1, 2, 4, 8, 16), steps: int = 10, gen_seed: int = 0,
                    step_size_factor: float = 2.5, batch_size: int = 256, loss="ce",
                    per_example: bool = False, restarts: int = 1, clip: bool = True):
    """γ(ε) for each ε in ``eps_list_255`` (units of 1/255, converted to ε = k/255 here).

    Each ε uses a fresh generator seeded ``gen_seed`` (the same random starts for every ε, so the curve
    γ(ε) is not blurred by start noise), step size ``step_size_factor``·ε/steps, ``restarts`` random
    starts and the clipped (``clip``) or plain ε-ball (``local_linearity``). Returns a pandas
    DataFrame: with ``per_example=True`` the long form (columns ``eps_255``, ``eps``, ``image``,
    ``gamma``; one row per ε and image, for distribution plots), otherwise its summary
    ``summarize_linearity(long)`` (one row per ε). To get both from one run, ask for the long form and
    summarise it.
    """
    import pandas as pd
    from tqdm import tqdm

    if isinstance(eps_list_255, (str, bytes)) or not isinstance(eps_list_255, Sequence) or not eps_list_255:
        raise ValueError(f"eps_list_255 = {eps_list_255!r} is invalid: expected a non-empty list of numbers in (0, 255]")
    eps_vals = [_check_pos(f"eps_list_255[{i}]", e, 255.0) for i, e in enumerate(eps_list_255)]
    steps = _check_int("steps", steps, 1)
    gen_seed = _check_int("gen_seed", gen_seed, 0)
    step_size_factor = _check_pos("step_size_factor", step_size_factor)
    _check_model(model)
    _check_loss(loss)
    _check_xy(x, y, loss)

    frames = []
    for e255 in tqdm(eps_vals, desc="local linearity", disable=None, leave=False):
        eps = e255 / 255.0
        gamma = local_linearity(model, x, y, eps, steps=steps, step_size=step_size_factor * eps / steps,
                                gen=torch.Generator().manual_seed(gen_seed), batch_size=batch_size, loss=loss,
                                restarts=restarts, clip=clip)
        frames.append(pd.DataFrame({"eps_255": e255, "eps": eps, "image": np.arange(len(gamma)),
                                    "gamma": gamma.double().numpy()}))
    long = pd.concat(frames, ignore_index=True)
    return long if per_example else summarize_linearity(long)


def summarize_linearity(long):
    """Summary of a long-form γ table: one row per ε (and per any extra column, e.g. method or seed)
    with n, mean, median, std (ddof 1), q25, q75, max. γ over images is right-skewed (in the committed
    default study, results/fashion-mnist/default/plots/linearity.csv, the mean exceeds the median for every
    method and ε, up to 2.7× at ε = 1/255), so the median is reported beside the mean."""
    import pandas as pd

    if not isinstance(long, pd.DataFrame) or not {"eps_255", "gamma"} <= set(long.columns):
        cols = list(long.columns) if isinstance(long, pd.DataFrame) else type(long).__name__
        raise ValueError(f"long = {cols} is invalid: expected a DataFrame with columns eps_255 and gamma")
    keys = [c for c in long.columns if c not in ("image", "gamma")]
    g = long.groupby(keys, sort=True)["gamma"]
    out = g.agg(n="count", mean="mean", median="median", std="std",
                q25=lambda s: s.quantile(0.25), q75=lambda s: s.quantile(0.75), max="max")
    return out.reset_index()


def gamma_per_image(long, by: Sequence[str] = ("method", "seed")):
    """Per-image γ of a long-form table (``linearity_table(..., per_example=True)``, optionally with
    ``by`` columns such as method and seed), for a paired bootstrap over images.

    Returns ``(eps_255, gammas)``: the ε values ascending (float64 [E]) and a dict from each ``by`` key
    (a tuple, in first-appearance order; ``()`` when ``by`` is empty) to float64 γ [E, n] with column i
    the image numbered i. Every key must have γ for every ε and the same images 0..n−1, so column i is
    the same test image for every model (linearity_table numbers the images of x in order).
    """
    import pandas as pd

    if not isinstance(long, pd.DataFrame) or not {"eps_255", "image", "gamma"} <= set(long.columns):
        cols = list(long.columns) if isinstance(long, pd.DataFrame) else type(long).__name__
        raise ValueError(f"long = {cols} is invalid: expected a DataFrame with columns eps_255, image and gamma "
                         f"(linearity_table(..., per_example=True))")
    if isinstance(by, str) or not all(isinstance(c, str) and c in long.columns for c in by):
        raise ValueError(f"by = {by!r} is invalid: expected a list of columns of long "
                         f"({', '.join(c for c in long.columns if c not in ('eps_255', 'eps', 'image', 'gamma'))})")
    by = list(by)
    other = [c for c in long.columns if c not in (*by, "eps_255", "eps", "image", "gamma") and long[c].nunique() > 1]
    if other:
        raise ValueError(f"long has several values in column {other[0]!r}, which is not in by = {by}: "
                         f"add it to by or select one value first")
    if long.empty:
        raise ValueError("long is empty: expected at least one γ")
    eps = np.sort(long["eps_255"].unique()).astype(np.float64)
    images = None
    out = {}
    groups = long.groupby(by, sort=False) if by else [((), long)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        if g.duplicated(["eps_255", "image"]).any():
            raise ValueError(f"long has more than one γ for one (ε, image) at {dict(zip(by, key))}: "
                             f"expected one (group by the columns that tell them apart)")
        wide = g.pivot(index="eps_255", columns="image", values="gamma")
        n = wide.shape[1]
        if not np.array_equal(wide.columns.to_numpy(), np.arange(n)) or (images is not None and n != images):
            raise ValueError(f"γ at {dict(zip(by, key))} is for images {wide.columns.tolist()[:5]}… ({n}): "
                             f"expected the images 0..{(images or n) - 1}, the same for every key")
        if not np.array_equal(wide.index.to_numpy(np.float64), eps) or wide.isna().any().any():
            raise ValueError(f"γ at {dict(zip(by, key))} lacks a value for some (ε, image): expected every "
                             f"ε in {eps.tolist()} for every image")
        images = n
        out[key] = wide.to_numpy(np.float64)
    return eps, out


# ----------------------------------------------------------------------------------------------
# input-space loss surface
def input_surface(model: nn.Module, x: torch.Tensor, y: torch.Tensor, span: float, points: int,
                  gen: torch.Generator | None = None, batch_size: int = 256, loss="ce") -> dict:
    """Mean per-example loss ℓ(clamp(x + a·u + b·v, 0, 1)) over the grid a, b ∈ [−span, span].

    u = sign(∇ₓℓ(x)) per image (the loss-ascent direction), v a random ±1 direction per image from
    ``gen``; ``span`` is in [0, 1] pixel units (e.g. 8/255). ``points`` values per axis, evenly spaced;
    with odd ``points`` the centre is exactly (0, 0) and equals the clean mean loss. (grid point, image)
    pairs are evaluated in flat batches of ``batch_size``. Returns ``dict(a=[points], b=[points],
    loss=[points, points])`` as float64 numpy arrays, ``loss[i, j]`` at (a[i], b[j]).
    """
    _check_model(model)
    _check_loss(loss)
    _check_xy(x, y, loss)
    span = _check_pos("span", span)
    points = _check_int("points", points, 3)
    batch_size = _check_int("batch_size", batch_size, 1)
    gen = _check_gen(gen)

    device = _model_device(model, x)
    n = x.shape[0]
    v = (torch.randint(0, 2, x.shape, generator=gen) * 2 - 1).to(dtype=x.dtype, device=device)
    grid = _grid(span, points)
    a_all = torch.tensor(np.repeat(grid, points), dtype=x.dtype, device=device)  # flat index k = i*points + j
    b_all = torch.tensor(np.tile(grid, points), dtype=x.dtype, device=device)
    total = torch.zeros(points * points, dtype=torch.float64, device=device)
    with _eval_mode(model):
        xd, yd = x.to(device), y.to(device)
        u = torch.cat([_input_grad(model, xd[s:s + batch_size], yd[s:s + batch_size], loss)[1].sign()
                       for s in range(0, n, batch_size)])
        with torch.no_grad():
            for s in range(0, points * points * n, batch_size):
                k = torch.arange(s, min(s + batch_size, points * points * n), device=device)
                pt, img = k // n, k % n
                shape = (-1,) + (1,) * (x.dim() - 1)
                xa = (xd[img] + a_all[pt].view(shape) * u[img] + b_all[pt].view(shape) * v[img]).clamp(0.0, 1.0)
                lx = _per_example_loss(model, xa, yd[img], loss)
                total.index_add_(0, pt, lx.double())
    return {"a": grid.copy(), "b": grid.copy(), "loss": (total / n).cpu().numpy().reshape(points, points)}


# ----------------------------------------------------------------------------------------------
# weight-space loss surface (Li et al. 2018)
def filter_normalized_direction(model: nn.Module, gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A random Gaussian direction in weight space, filter-normalised as in Li et al. (2018).

    One standard-normal tensor per parameter (drawn from ``gen`` on the CPU, in ``named_parameters``
    order, then moved to the parameter's device). Parameters with ≤ 1 dimension (biases, batch-norm
    weights and biases) get a zero direction ('biasbn' ignored); for the others, each filter (slice along
    dim 0: a conv output channel, a linear layer's row) is rescaled to the norm of the corresponding
    weight filter. Buffers (BN running statistics) are not part of the direction.
    """
    _check_model(model)
    gen = _check_gen(gen)
    out = {}
    for name, p in model.named_parameters():
        d = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        d = d.to(p.device)
        if p.dim() <= 1:
            d.zero_()
        else:
            w = p.detach()
            wn = w.flatten(1).norm(dim=1)
            dn = d.flatten(1).norm(dim=1)
            d = d * (wn / (dn + 1e-10)).view(-1, *([1] * (p.dim() - 1)))
        out[name] = d
    return out


def weight_surface(model: nn.Module, x: torch.Tensor, y: torch.Tensor, points: int = 21, dims: int = 1,
                   span: float = 1.0, gen: torch.Generator | None = None, batch_size: int = 256,
                   loss="ce") -> dict:
    """Li et al. (2018)'s loss surface: mean loss and accuracy on (x, y) at θ + α·d (+ β·e for dims=2).

    d (and e, drawn after d) come from ``filter_normalized_direction(model, gen)``; α, β run over
    ``points`` evenly spaced values in [−span, span] (odd ``points``: the centre is exactly θ). The model
    is evaluated in eval mode (BN running statistics, not updated) and its parameters are restored bit
    for bit afterwards, also when an error interrupts the scan. Accuracy is the fraction with argmax of
    the model output equal to y (NaN when y is not a label vector). Returns float64 numpy arrays:
    ``dict(alpha=[points], loss=[points], accuracy=[points])`` for dims=1, and additionally ``beta`` with
    ``loss``/``accuracy`` of shape [points, points] (``[i, j]`` at (alpha[i], beta[j])) for dims=2.
    """
    _check_model(model)
    _check_loss(loss)
    _check_xy(x, y, loss, need_unit_range=False)
    points = _check_int("points", points, 3)
    if dims not in (1, 2) or isinstance(dims, bool):
        raise ValueError(f"dims = {dims!r} is invalid: expected 1 or 2")
    span = _check_pos("span", span)
    batch_size = _check_int("batch_size", batch_size, 1)
    gen = _check_gen(gen)
    params = dict(model.named_parameters())
    if not params:
        raise ValueError("model has no parameters: a weight-space surface needs at least one")

    from tqdm import tqdm

    device = _model_device(model, x)
    d = filter_normalized_direction(model, gen)
    e = filter_normalized_direction(model, gen) if dims == 2 else None
    grid = _grid(span, points)
    saved = {name: p.detach().clone() for name, p in params.items()}
    coords = [(i, j) for i in range(points) for j in (range(points) if dims == 2 else [None])]
    losses = np.zeros(len(coords))
    accs = np.zeros(len(coords))
    xd, yd = x.to(device), y.to(device)
    label_acc = yd.dim() == 1 and not yd.is_floating_point()
    try:
        with _eval_mode(model), torch.no_grad():
            for k, (i, j) in enumerate(tqdm(coords, desc="weight surface", disable=None, leave=False)):
                for name, p in params.items():
                    w = saved[name] + grid[i] * d[name]
                    if j is not None:
                        w = w + grid[j] * e[name]
                    p.copy_(w)
                tot, correct = 0.0, 0
                for s in range(0, x.shape[0], batch_size):
                    xb, yb = xd[s:s + batch_size], yd[s:s + batch_size]
                    logits = model(xb)
                    lx = _loss_from_logits(logits, yb, loss)
                    tot += float(lx.double().sum())
                    if label_acc and logits.dim() == 2:
                        correct += int((logits.argmax(1) == yb).sum())
                losses[k] = tot / x.shape[0]
                accs[k] = correct / x.shape[0] if label_acc and logits.dim() == 2 else math.nan
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name])
    if dims == 1:
        return {"alpha": grid.copy(), "loss": losses, "accuracy": accs}
    return {"alpha": grid.copy(), "beta": grid.copy(),
            "loss": losses.reshape(points, points), "accuracy": accs.reshape(points, points)}
