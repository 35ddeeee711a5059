"""The adversarial baselines' inner maximisation and TRADES's loss: pure functions over tensors.

- ``pgd_linf(model, x, y, eps, step, steps, gen, random_start=True, loss="ce")``: projected sign-gradient
  ascent in the l-inf ball of radius ``eps`` around ``x`` intersected with [0, 1] (Madry et al., "Towards
  Deep Learning Models Resistant to Adversarial Attacks"). ``loss="ce"`` ascends the cross-entropy of the
  labels ``y`` (AT, IAT); ``loss="kl"`` ascends KL(p(x) || p(x')) with p(x) fixed (TRADES's inner
  maximisation, Zhang et al., yaodongyu/TRADES ``trades_loss``).
- ``pgd_linf_objective(objective, x, eps, step, steps, gen, random_start=True)``: the same ascent (``loss="ce"``'s
  uniform start) of any scalar function of the images: adv-VarMixup's VAE attack (varmix.learn.vae).
- ``trades_loss(logits_clean, logits_adv, targets_soft, beta)``: CE(clean, y) + beta * KL(p(x) || p(x'))
  averaged over the batch, as the TRADES reference computes it (``nn.KLDivLoss(size_average=False)`` of
  ``log_softmax(model(x_adv))`` against ``softmax(model(x_natural))``, divided by the batch size).

Conventions (the references', docs/ADVERSARIAL.md):
- Model mode: the attack runs with the model in eval mode (batch norm uses its running statistics and
  is not updated by the attack's forward passes) and puts back the mode it found, as TRADES's reference
  (``model.eval()`` for the attack, ``model.train()`` after) and torchattacks (``Attack.__call__``
  switches to eval unless ``set_model_training_mode`` says otherwise).
- Random start: ``loss="ce"`` starts uniformly in the ball, x + U(-eps, eps), clipped to [0, 1]
  (torchattacks.PGD, Madry et al.); ``loss="kl"`` starts at x + 0.001 N(0, 1) (TRADES's reference).
  Both starts are projected on the ball ∩ [0, 1] before the first step (the TRADES reference lets the
  first forward pass see its start unprojected; it projects after each step).
- Each step: x' <- x' + step * sign(grad); delta = clamp(x' - x, -eps, eps); x' = clamp(x + delta, 0, 1)
  (torchattacks.PGD's order; TRADES's reference clamps x' to [x - eps, x + eps] then to [0, 1], which
  agrees up to float rounding of x ± eps). The CE is averaged over the batch (torchattacks'
  ``nn.CrossEntropyLoss()``), the KL summed (TRADES's ``size_average=False``): the sign of the gradient
  does not depend on that scale.
- Randomness: the start is drawn from the CPU generator ``gen`` (float32, on the CPU) and moved to x's
  device, so CPU and GPU runs see the same start, and the global RNG is left alone.

Why hand-written, not torchattacks (Harry24k/adversarial-attacks-pytorch): torchattacks.PGD draws its
random start with ``torch.empty_like(adv_images).uniform_(-eps, eps)`` (torchattacks 3.5.1,
attacks/pgd.py), i.e. from the global RNG of x's device, and takes no generator, so a run could not keep
its attack's draws in a stream of its own (varmix.learn.train's "attack" generator, checkpointed and resumed)
nor leave the other arms' random streams untouched; it has no TRADES KL variant; and torchattacks 3.5.1
pins ``requests~=2.25.1``, which would downgrade the project's environment. The update and projection
above follow torchattacks.PGD's, and with ``random_start=False`` the two give the same bytes (checked
once against torchattacks 3.5.1 on CPU, docs/ADVERSARIAL.md).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from varmix.learn.mixing import soft_cross_entropy

ATTACK_LOSSES = ("ce", "kl")
TRADES_START_STD = 0.001  # yaodongyu/TRADES: x_adv = x_natural + 0.001 * torch.randn(x_natural.shape)


# ----------------------------------------------------------------------------------------------
# checks
def check_attack(eps: Any, step: Any, steps: Any, name: str = "",
                 units: str = "pixel units, images in [0, 1]") -> tuple[float, float, int]:
    """``eps`` and ``step`` finite numbers >= 0, ``steps`` an integer >= 1; a ValueError naming the value
    and the allowed range otherwise. ``name`` prefixes the names (e.g. "cfg.adversarial."), ``units`` says
    in the message what eps and step are measured in."""
    for key, v in (("eps", eps), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0 <= v < math.inf):
            raise ValueError(f"{name}{key} = {v!r} is invalid: expected a finite number >= 0 ({units})")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"{name}steps = {steps!r} is invalid: expected an integer >= 1")
    return float(eps), float(step), int(steps)


def check_beta(beta: Any, name: str = "beta") -> float:
    """TRADES's beta: a finite number >= 0."""
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (0 <= beta < math.inf):
        raise ValueError(f"{name} = {beta!r} is invalid: expected a finite number >= 0")
    return float(beta)


def _check_images(x: Any, y: Any, loss: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        desc = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x is a {desc}: expected float images [B, C, H, W] in [0, 1]")
    if x.device.type == "cpu" and len(x) and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ValueError(f"x ranges over {float(x.min()):.4g}..{float(x.max()):.4g}: expected images in [0, 1]")
    if loss == "ce":
        if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.shape != (len(x),):
            desc = f"{y.dtype} tensor of shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"y is a {desc}: expected int64 labels of shape ({len(x)},)")
        if y.device != x.device:
            raise ValueError(f"y is on {y.device} but x on {x.device}: expected both on one device")


def _check_pgd(eps: Any, step: Any, steps: Any, gen: Any, random_start: Any) -> tuple[float, float, int, bool]:
    eps, step, steps = check_attack(eps, step, steps)
    if not isinstance(random_start, bool):
        raise ValueError(f"random_start = {random_start!r} is invalid: expected True or False")
    if not isinstance(gen, torch.Generator) or gen.device.type != "cpu":
        raise ValueError(f"gen = {gen!r} is invalid: expected a CPU torch.Generator")
    return eps, step, steps, random_start


def _project(adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """adv projected on the l-inf ball of radius eps around x intersected with [0, 1] (torchattacks' order)."""
    delta = torch.clamp(adv - x, min=-eps, max=eps)
    return torch.clamp(x + delta, min=0, max=1)


# ----------------------------------------------------------------------------------------------
def pgd_linf(model: nn.Module, x: Tensor, y: Tensor | None, eps: float, step: float, steps: int,
             gen: torch.Generator, random_start: bool = True, loss: str = "ce") -> Tensor:
    """Adversarial images (detached, x's shape, dtype and device) for ``model`` at ``x`` (float [B, C, H, W]
    in [0, 1]): ``steps`` projected sign-gradient ascent steps of size ``step`` in the l-inf ball of
    radius ``eps`` intersected with [0, 1] (module docstring). ``loss="ce"``: the cross-entropy of the
    int64 labels ``y``; ``loss="kl"``: KL(p(x) || p(x')) with p(x) the model's softmax at x, fixed (``y``
    is not used). ``eps = 0`` returns x's values exactly. The model runs in eval mode; its mode is put
    back afterwards; no parameter gradient is accumulated. Draws from ``gen`` (a CPU generator) only when
    ``random_start``: B·C·H·W float32 uniforms (ce) or normals (kl)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model is a {type(model).__name__}: expected a torch.nn.Module")
    if loss not in ATTACK_LOSSES:
        raise ValueError(f"loss = {loss!r} is invalid: expected one of {', '.join(ATTACK_LOSSES)}")
    eps, step, steps, random_start = _check_pgd(eps, step, steps, gen, random_start)
    _check_images(x, y, loss)

    x = x.detach()
    was_training = model.training
    model.eval()
    try:
        if loss == "kl":
            with torch.no_grad():
                p_clean = F.softmax(model(x).float(), dim=1)
        if random_start and loss == "kl":
            noise = TRADES_START_STD * torch.randn(x.shape, generator=gen)
            start = _project(x + noise.to(device=x.device, dtype=x.dtype), x, eps)
        else:
            start = _uniform_start(x, eps, gen) if random_start else x.clone()

        def objective(adv: Tensor) -> Tensor:
            logits = model(adv).float()
            if loss == "ce":
                return F.cross_entropy(logits, y)
            return F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="sum")

        adv = _ascend(objective, x, start, eps, step, steps)
    finally:
        model.train(was_training)
    return adv


def pgd_linf_objective(objective: Callable[[Tensor], Tensor], x: Tensor, eps: float, step: float, steps: int,
                       gen: torch.Generator, random_start: bool = True) -> Tensor:
    """``pgd_linf``'s ascent (the same start, steps and projection as its ``loss="ce"``) of any scalar
    ``objective(x')`` of float images ``x`` [B, C, H, W] in [0, 1], e.g. a VAE's loss
    (varmix.learn.vae.adversarial_batch). The gradient is taken w.r.t. x' alone (``torch.autograd.grad``): no
    parameter's ``.grad`` is touched. ``objective`` may draw from generators of its own. ``eps = 0``
    returns x's values exactly. Draws from ``gen`` (a CPU generator) only when ``random_start``: B·C·H·W
    float32 uniforms. Returns the attacked images, detached."""
    if not callable(objective):
        raise ValueError(f"objective is a {type(objective).__name__}: expected a function of the images")
    eps, step, steps, random_start = _check_pgd(eps, step, steps, gen, random_start)
    _check_images(x, None, "kl")
    x = x.detach()
    return _ascend(objective, x, _uniform_start(x, eps, gen) if random_start else x.clone(), eps, step, steps)


def _uniform_start(x: Tensor, eps: float, gen: torch.Generator) -> Tensor:
    """x + U(-eps, eps) drawn on the CPU from gen, projected on the ball ∩ [0, 1] (Madry et al.)."""
    noise = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    return _project(x + noise.to(device=x.device, dtype=x.dtype), x, eps)


def _ascend(objective: Callable[[Tensor], Tensor], x: Tensor, start: Tensor, eps: float, step: float,
            steps: int) -> Tensor:
    """``steps`` projected sign-gradient ascent steps of ``objective`` from ``start`` (module docstring)."""
    adv = start
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            value = objective(adv)
            grad, = torch.autograd.grad(value, [adv])
        adv = _project(adv.detach() + step * grad.sign(), x, eps)
    return adv.detach()


def trades_loss(logits_clean: Tensor, logits_adv: Tensor, targets_soft: Tensor, beta: float) -> Tensor:
    """Zhang et al.'s TRADES objective for one batch: the soft-target cross-entropy of the clean logits
    (``varmix.learn.mixing.soft_cross_entropy``; with one-hot targets, F.cross_entropy) plus ``beta`` times
    KL(p_clean || p_adv) summed over classes and averaged over the batch ("batchmean"), the gradient
    flowing through both logits, as the reference's
    ``criterion_kl(F.log_softmax(model(x_adv)), F.softmax(model(x_natural))) / batch_size``. With
    ``beta = 0`` the value (and gradient) is the cross-entropy's exactly."""
    beta = check_beta(beta)
    if not isinstance(logits_adv, Tensor) or not isinstance(logits_clean, Tensor) \
            or logits_adv.shape != logits_clean.shape:
        desc = lambda t: str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__  # noqa: E731
        raise ValueError(f"trades_loss: logits_clean {desc(logits_clean)} and logits_adv {desc(logits_adv)}: "
                         f"expected two [B, K] tensors of the same shape")
    ce = soft_cross_entropy(logits_clean, targets_soft)
    kl = F.kl_div(F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits_clean.float(), dim=1),
                  reduction="batchmean")
    return ce + beta * kl
