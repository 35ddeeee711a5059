"""Vicinal methods behind one interface: ``f(x, y, gen, *, num_classes, alpha, lam=None, ...) -> MixedBatch``.

Conventions (as in facebookresearch/mixup-cifar10): one lambda ~ Beta(alpha, alpha) per batch, the partner
of sample i is ``perm[i]`` with ``perm = torch.randperm(B, generator=gen)``, targets are the mixed one-hot
labels and the loss is the soft-target cross-entropy (equal to the reference's
``lam * CE(y_a) + (1 - lam) * CE(y_b)``). Images are float [0, 1]; mixing happens before the model's
internal normalisation, which is linear, so mixing before or after it gives the same input.

Randomness is drawn from the CPU generator ``gen`` in a fixed order (lambda, permutation, then what the
method needs: CutMix's box centre, Manifold Mixup's layer) and moved to the data's device, so a seed fixes
the whole stream on CPU and GPU alike.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from scipy.special import betaincinv
from torch import Tensor

from varmix.core.names import MANIFOLD_LOSSES, VICINAL_METHODS


@dataclass
class MixedBatch:
    """What a training step needs. ``x`` is already mixed, except for Manifold Mixup, where the model mixes
    its hidden state at ``mix_layer`` as ``lam * h + (1 - lam) * h[perm]``. ``target`` holds soft labels
    [B, K] float32 whose rows sum to 1."""

    x: Tensor
    target: Tensor
    lam: float
    perm: Tensor | None
    mix_layer: int | None = None


# ----------------------------------------------------------------------------------------------
# helpers
def _check_gen(gen: Any) -> torch.Generator:
    if not isinstance(gen, torch.Generator) or gen.device.type != "cpu":
        raise ValueError(f"gen = {gen!r} is invalid: expected a CPU torch.Generator")
    return gen


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (0 < alpha < math.inf):
        raise ValueError(f"alpha = {alpha!r} is invalid: expected a finite number > 0 "
                         f"(lambda ~ Beta(alpha, alpha))")
    return float(alpha)


def sample_lambda(alpha: float, gen: torch.Generator) -> float:
    """lambda ~ Beta(alpha, alpha) from ``gen``.

    torch.distributions.Beta cannot take a generator (it samples from the global RNG through
    torch._sample_dirichlet), so one uniform u is drawn from ``gen`` and mapped through the inverse CDF
    (scipy.special.betaincinv, the inverse regularised incomplete beta function). One draw of ``gen``
    per lambda keeps the stream easy to reason about."""
    alpha = _check_alpha(alpha)
    u = torch.rand((), generator=_check_gen(gen), dtype=torch.float64).item()
    return float(betaincinv(alpha, alpha, u))


def one_hot(y: Tensor, num_classes: int) -> Tensor:
    """Integer labels [B] -> float32 one-hot targets [B, num_classes]."""
    return F.one_hot(y, num_classes).to(torch.float32)


def _check_logits_target(name: str, logits: Any, target: Any) -> None:
    if not isinstance(logits, Tensor) or not isinstance(target, Tensor) or logits.ndim != 2 \
            or logits.shape != target.shape:
        def desc(t: Any) -> str:
            return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name}: logits {desc(logits)} and target {desc(target)}: "
                         f"expected two [B, K] tensors of the same shape")


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of -sum_k target_k log softmax(logits)_k. With target = lam * onehot(y_a) +
    (1 - lam) * onehot(y_b) this equals lam * CE(logits, y_a) + (1 - lam) * CE(logits, y_b)."""
    _check_logits_target("soft_cross_entropy", logits, target)
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def bce_softmax(logits: Tensor, target: Tensor) -> Tensor:
    """vikasverma1077/manifold_mixup's training loss, ``nn.BCELoss()(softmax(logits), target)``: the binary
    cross-entropy of each class probability against its soft target, averaged over all B·K entries
    (torch's reduction 'mean'; torch clamps each log at −100). It is torch's own
    ``F.binary_cross_entropy``, so it matches the reference bit for bit in fp32. Its value and gradient
    are several times smaller than ``soft_cross_entropy``'s (docs/DEPARTURES.md measures both)."""
    _check_logits_target("bce_softmax", logits, target)
    return F.binary_cross_entropy(F.softmax(logits.float(), dim=1), target.float())


def mixed_loss(name: str, logits: Tensor, target: Tensor) -> Tensor:
    """The training loss ``name`` (one of names.MANIFOLD_LOSSES): 'soft_ce' -> ``soft_cross_entropy``,
    'bce_softmax' -> ``bce_softmax``. The trainer's one step calls this for every method."""
    if name == "soft_ce":
        return soft_cross_entropy(logits, target)
    if name == "bce_softmax":
        return bce_softmax(logits, target)
    raise ValueError(f"loss = {name!r} is invalid: expected one of {', '.join(MANIFOLD_LOSSES)}")


def _check_batch(x: Any, y: Any, num_classes: Any, min_batch: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes = {num_classes!r} is invalid: expected a positive integer")
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        desc = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x is a {desc}: expected float images [B, C, H, W] in [0, 1]")
    if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.ndim != 1 or len(y) != len(x):
        desc = f"{y.dtype} tensor of shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y is a {desc}: expected int64 labels of shape ({len(x)},)")
    if len(x) < min_batch:
        raise ValueError(f"batch size {len(x)} is too small: mixing needs at least {min_batch} images")
    if y.device != x.device:
        raise ValueError(f"y is on {y.device} but x on {x.device}: expected both on one device")
    # The range check reads the labels back to the host. On CPU that is free; on an accelerator it would
    # stall the trainer's otherwise sync-free step every batch, so there it is left to varmix.learn.data (which
    # checks every label when a dataset is loaded) and to one_hot's device-side assert.
    if len(y) and y.device.type == "cpu":
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels range over {lo}..{hi}: expected 0..{num_classes - 1} "
                             f"(num_classes = {num_classes})")


def _check_lam(lam: Any) -> float:
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not (0.0 <= lam <= 1.0):
        raise ValueError(f"lam = {lam!r} is invalid: expected a number in [0, 1] or None")
    return float(lam)


def check_prob(prob: Any, name: str = "prob") -> float:
    """A mixing probability in (0, 1] (``make_mixer``'s ``prob``, params.yaml's ``mix_prob``)."""
    if isinstance(prob, bool) or not isinstance(prob, numbers.Real) or not 0 < prob <= 1:
        raise ValueError(f"{name} = {prob!r} is invalid: expected a probability in (0, 1]")
    return float(prob)


_VAE_ATTRS = ("encode", "decode", "reconstruct", "in_channels", "image_size")


def resize_images(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Float images [N, C, H, W] in [0, 1] resized to ``size`` = (H', W'): bilinear, antialiased when
    either side shrinks, clamped back to [0, 1] (bilinear weights stay in [0, 1], but the antialiasing
    filter's rounding can step just outside).

    Why: the paper's cross-dataset row uses a VAE trained on Tiny-ImageNet (64x64) to mix CIFAR (32x32)
    images. VarMixup and Mixup-R then resize the classifier's images to the VAE's size before encoding and
    the decoded images back to the classifier's size (``to_vae_size`` / ``from_vae_size``). A VAE of the
    classifier's own size never calls this, so the same-size path stays bit-identical."""
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        desc = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"resize_images: x is a {desc}: expected float images [N, C, H, W] in [0, 1]")
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size)):
        raise ValueError(f"resize_images: size = {size!r} is invalid: expected (height, width), two positive "
                         f"integers")
    h, w = int(size[0]), int(size[1])
    shrink = h < x.shape[2] or w < x.shape[3]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink).clamp_(0, 1)


def vae_resizes(vae: Any, x: Tensor) -> bool:
    """Whether images ``x`` [N, C, H, W] must be resized for ``vae`` (a VAE of another image size: the
    paper's Tiny-ImageNet VAE on CIFAR). Only H x W may differ: a VAE for another number of channels is a
    ``ValueError`` naming both shapes."""
    want = (vae.in_channels, vae.image_size, vae.image_size)
    got = tuple(x.shape[1:])
    if got[0] != want[0]:
        raise ValueError(f"images of shape {got} do not fit a VAE for {want} images: the number of channels "
                         f"must match (only height and width may differ; they are resized)")
    return got[1:] != want[1:]


def to_vae_size(vae: Any, x: Tensor) -> Tensor:
    """``x`` as ``vae`` encodes it: unchanged when the sizes agree, else ``resize_images`` to the VAE's size."""
    return resize_images(x, (vae.image_size, vae.image_size)) if vae_resizes(vae, x) else x


def from_vae_size(vae: Any, decoded: Tensor, like: Tensor) -> Tensor:
    """The VAE's ``decoded`` images at the size of the classifier's images ``like``: unchanged when the sizes
    agree, else ``resize_images`` back to ``like``'s H x W."""
    return resize_images(decoded, (like.shape[2], like.shape[3])) if vae_resizes(vae, like) else decoded


def vae_reconstruct(vae: Any, x: Tensor) -> Tensor:
    """``vae.reconstruct(x)`` at ``x``'s size (resized in and out for a VAE of another image size;
    exactly ``vae.reconstruct(x)`` otherwise)."""
    return from_vae_size(vae, vae.reconstruct(to_vae_size(vae, x)), x)


def _check_vae(vae: Any, x: Tensor) -> None:
    if vae is None or not all(hasattr(vae, a) for a in _VAE_ATTRS):
        raise ValueError(f"vae = {type(vae).__name__}: expected a trained varmix.learn.vae.ConvVAE")
    vae_resizes(vae, x)  # channels must match; H x W may differ
    p = next(vae.parameters(), None)
    if p is not None and p.device != x.device:
        raise ValueError(f"the VAE is on {p.device} but the images are on {x.device}: move one of them")


def _setup(x: Tensor, y: Tensor, gen: Any, num_classes: Any, alpha: Any, lam: Any,
           vae: Any = None, needs_vae: bool = False) -> tuple[float, Tensor]:
    """Validate a mixing call, then draw lambda (unless forced) and the partner permutation."""
    _check_batch(x, y, num_classes, min_batch=2)
    if needs_vae:
        _check_vae(vae, x)
    alpha = _check_alpha(alpha)
    _check_gen(gen)
    lam = sample_lambda(alpha, gen) if lam is None else _check_lam(lam)
    # non_blocking: a host-to-device copy from pageable memory is staged at once, so it is safe and does
    # not wait for the device's queue (a blocking copy would synchronise every step)
    perm = torch.randperm(len(x), generator=gen).to(x.device, non_blocking=True)
    return lam, perm


def _mix_targets(y: Tensor, perm: Tensor, lam: float, num_classes: int) -> Tensor:
    t = one_hot(y, num_classes)
    return lam * t + (1 - lam) * t[perm]


# ----------------------------------------------------------------------------------------------
# methods
def erm(x: Tensor, y: Tensor, gen: torch.Generator, *, num_classes: int, alpha: float = 1.0,
        lam: float | None = None) -> MixedBatch:
    """Empirical risk minimisation: the batch unchanged, one-hot targets. Draws nothing from ``gen``;
    ``alpha`` is accepted (and checked) only so every method shares one signature."""
    _check_batch(x, y, num_classes, min_batch=1)
    _check_alpha(alpha)
    _check_gen(gen)
    if lam is not None and _check_lam(lam) != 1.0:
        raise ValueError(f"lam = {lam!r} is invalid for erm: it does not mix (expected None or 1)")
    return MixedBatch(x, one_hot(y, num_classes), 1.0, None)


def mix_images(method: str, a: Tensor, b: Tensor, lam: float, vae: Any = None) -> Tensor:
    """The image that ``method`` trains on when it mixes ``a`` with partner ``b`` at ``lam`` (pairwise,
    [N, C, H, W] floats in [0, 1]): the training mixers below and the method figures both call it.
    mixup: lam * a + (1 - lam) * b; mixup_r: the same on the VAE reconstructions; varmixup: the decoder
    mean at lam * mu(a) + (1 - lam) * mu(b)."""
    if method not in ("mixup", "mixup_r", "varmixup"):
        raise ValueError(f"method = {method!r}: mix_images pairs images for mixup, mixup_r or varmixup")
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.shape != b.shape:
        raise ValueError(f"images a {tuple(getattr(a, 'shape', ()))} and b {tuple(getattr(b, 'shape', ()))}: "
                         f"expected two tensors of the same shape")
    lam = _check_lam(lam)
    if method == "mixup":
        return lam * a + (1 - lam) * b
    _check_vae(vae, a)
    with torch.no_grad():
        if method == "mixup_r":
            return lam * vae_reconstruct(vae, a) + (1 - lam) * vae_reconstruct(vae, b)
        mu_a, mu_b = vae.encode(to_vae_size(vae, a))[0], vae.encode(to_vae_size(vae, b))[0]
        return from_vae_size(vae, vae.decode(lam * mu_a + (1 - lam) * mu_b), a)


def mixup(x: Tensor, y: Tensor, gen: torch.Generator, *, num_classes: int, alpha: float = 1.0,
          lam: float | None = None) -> MixedBatch:
    """Input mixup (Zhang et al.): lam * x + (1 - lam) * x[perm]."""
    lam, perm = _setup(x, y, gen, num_classes, alpha, lam)
    return MixedBatch(mix_images("mixup", x, x[perm], lam), _mix_targets(y, perm, lam, num_classes), lam, perm)


def cutmix(x: Tensor, y: Tensor, gen: torch.Generator, *, num_classes: int, alpha: float = 1.0,
           lam: float | None = None) -> MixedBatch:
    """CutMix (Yun et al.): a box of side sqrt(1 - lam) times the image side, centre uniform over the
    pixels, clipped to the image, is pasted from the partner; lam is then recomputed as the kept area
    fraction, so the target matches the pixels (clovaai/CutMix-PyTorch's rand_bbox)."""
    lam, perm = _setup(x, y, gen, num_classes, alpha, lam)
    h, w = x.shape[2], x.shape[3]
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    cy = int(torch.randint(h, (), generator=gen))
    cx = int(torch.randint(w, (), generator=gen))
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    mixed = x.clone()
    mixed[:, :, y1:y2, x1:x2] = x[perm][:, :, y1:y2, x1:x2]
    lam = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
    return MixedBatch(mixed, _mix_targets(y, perm, lam, num_classes), lam, perm)


def _check_layers(layers: Any) -> tuple[int, ...]:
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or not layers or any(
            isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in layers):
        raise ValueError(f"layers = {layers!r} is invalid: expected a non-empty sequence of layer indices >= 0")
    return tuple(layers)


def manifold_mixup(x: Tensor, y: Tensor, gen: torch.Generator, *, num_classes: int, alpha: float = 1.0,
                   lam: float | None = None, layers: Sequence[int] = (0, 1, 2)) -> MixedBatch:
    """Manifold Mixup (Verma et al.): a layer drawn uniformly from ``layers`` per batch; the model mixes
    its hidden state there (layer 0 = the input). ``x`` is returned unchanged."""
    layers = _check_layers(layers)
    lam, perm = _setup(x, y, gen, num_classes, alpha, lam)
    layer = layers[int(torch.randint(len(layers), (), generator=gen))]
    return MixedBatch(x, _mix_targets(y, perm, lam, num_classes), lam, perm, mix_layer=layer)


def mixup_r(x: Tensor, y: Tensor, gen: torch.Generator, *, num_classes: int, alpha: float = 1.0,
            lam: float | None = None, vae: Any = None) -> MixedBatch:
    """Mixup-R, the paper's control: input mixup of the VAE reconstructions decode(mu(x)), so the
    classifier sees VAE images but mixes them in pixel space."""
    lam, perm = _setup(x, y, gen, num_classes, alpha, lam, vae=vae, needs_vae=True)
    with torch.no_grad():
        xr = vae_reconstruct(vae, x)  # once per image, then paired (not twice as mix_images(a, b) would)
    return MixedBatch(mix_images("mixup", xr, xr[perm], lam), _mix_targets(y, perm, lam, num_classes),
                      lam, perm)


def varmixup(x: Tensor, y: Tensor, gen: torch.Generator, *, num_classes: int, alpha: float = 1.0,
             lam: float | None = None, vae: Any = None) -> MixedBatch:
    """VarMixup: z_m = lam * mu(x_i) + (1 - lam) * mu(x_perm(i)) (posterior means, as in the paper), the
    image is the decoder mean at z_m (used alone, not blended with pixels) and the target is
    lam * y_i + (1 - lam) * y_perm(i). With lam = 1 the image is vae.reconstruct(x). A VAE of another
    image size (the paper's Tiny-ImageNet VAE on CIFAR) encodes the batch resized to its size and its
    decodes are resized back (``resize_images``); a VAE of the batch's size never resizes."""
    lam, perm = _setup(x, y, gen, num_classes, alpha, lam, vae=vae, needs_vae=True)
    with torch.no_grad():
        # encode the batch once; mix_images(a, b) is the same for one pair
        mu, _ = vae.encode(to_vae_size(vae, x))
        mixed = from_vae_size(vae, vae.decode(lam * mu + (1 - lam) * mu[perm]), x)
    return MixedBatch(mixed, _mix_targets(y, perm, lam, num_classes), lam, perm)


MIXERS: dict[str, Callable[..., MixedBatch]] = {
    "erm": erm, "mixup": mixup, "mixup_r": mixup_r, "manifold_mixup": manifold_mixup,
    "cutmix": cutmix, "varmixup": varmixup,
}
assert set(MIXERS) == set(VICINAL_METHODS), \
    f"mixing.MIXERS {sorted(MIXERS)} != names.VICINAL_METHODS {sorted(VICINAL_METHODS)}"
_NEEDS_VAE = ("mixup_r", "varmixup")


def sometimes(x: Tensor, y: Tensor, gen: torch.Generator, *, mixer: Callable[..., MixedBatch], prob: float,
              num_classes: int) -> MixedBatch:
    """``mixer``'s batch with probability ``prob`` (one uniform draw from ``gen`` per batch), else the
    clean batch with one-hot targets (an ERM step), as CutMix's reference ``cutmix_prob``. For VarMixup
    it settles the paper's open point "whether clean images are also seen": with prob 1 the classifier
    sees decoded images only."""
    if float(torch.rand((), generator=gen, dtype=torch.float64)) < prob:
        return mixer(x, y, gen)
    return erm(x, y, gen, num_classes=num_classes)


def make_mixer(method: str, *, num_classes: int, alpha: float, vae: Any = None,
               layers: Sequence[int] = (0, 1, 2), prob: float = 1.0) -> Callable[[Tensor, Tensor, torch.Generator], MixedBatch]:
    """The mixer for ``method`` as a callable (x, y, gen) -> MixedBatch, its settings checked now."""
    if method not in MIXERS:
        raise ValueError(f"method = {method!r} is unknown: expected one of {', '.join(VICINAL_METHODS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes = {num_classes!r} is invalid: expected a positive integer")
    _check_alpha(alpha)
    extra: dict[str, Any] = {}
    if method in _NEEDS_VAE:
        if vae is None or not all(hasattr(vae, a) for a in ("encode", "decode", "reconstruct")):
            raise ValueError(f"method {method!r} needs a trained VAE: vae = {type(vae).__name__}")
        extra["vae"] = vae
    if method == "manifold_mixup":
        extra["layers"] = _check_layers(layers)
    prob = check_prob(prob)
    mixer = functools.partial(MIXERS[method], num_classes=num_classes, alpha=alpha, **extra)
    if prob == 1 or method == "erm":  # no draw: the random stream stays that of the references
        return mixer
    return functools.partial(sometimes, mixer=mixer, prob=prob, num_classes=num_classes)
