"""The paper's generative model: an MMD-VAE (InfoVAE, Zhao et al.) trained first and then frozen.

Objective (per batch): reconstruction + gamma * MMD(q(z), N(0, I)), where the reconstruction term is the
negative log-likelihood of the image under the decoder, summed over pixels and averaged over the batch,
and the MMD compares reparameterised posterior samples of the batch with as many prior samples. The
``kl`` objective (reconstruction + beta * KL(q(z|x) || N(0, I))) is kept as an ablation.

Choices the paper leaves open (documented here and in params.yaml):
- Architecture: stride-2 4x4 convolutions halve the image until it is 7x7 (28 px) or 4x4 (32 and 64 px),
  channels width, 2*width, 4*width, 8*width; one linear layer each for mu and logvar. The decoder
  mirrors it with stride-2 transposed convolutions and a final 3x3 convolution to the image channels;
  a sigmoid turns its logits into the decoder mean in [0, 1]. No batch norm: the encoding of an image
  then never depends on the other images in its batch or on train/eval mode, so ``mu(x)`` is a plain
  function of ``x``, which VarMixup's interpolation assumes.
- Scale: the reconstruction is a per-image negative log-likelihood (nats summed over pixels, so BCE on
  Fashion-MNIST is a few hundred) while the biased MMD^2 estimate with a Gaussian kernel lies in [0, 2].
  ``gamma`` (params.yaml) therefore has to be large for the MMD to shape q(z). Measured on Fashion-MNIST
  (10k images, 2 epochs, width 32, latent 16, BCE; test images): gamma = 10 leaves the posterior means
  spread with std ~6 per dimension and posterior std ~0.015 (q(z) far from N(0, I)); gamma = 100 gives
  mean std ~1.05, MMD(mu, prior) 0.05 at a PSNR of 16.3 dB (16.6 dB at gamma = 10); gamma = 1000 costs
  reconstruction (14.7 dB, posterior std ~0.6). InfoVAE's reference code (ShengjiaZhao/
  MMD-Variational-Autoencoder: deterministic encoder, per-pixel-mean MSE + 1 * MMD) corresponds to
  likelihood mse with gamma = number of pixels here, up to its flatter kernel (next point).
- Kernel: exp(-||a - b||^2 / dim), the bandwidth stated for InfoVAE's reference. (That TensorFlow code
  divides the *mean* squared difference by dim, i.e. ||a - b||^2 / dim^2, which makes the kernel almost
  flat for latent sizes above a few; with /dim, two N(0, I) samples are typically at kernel value
  exp(-2), where the estimate is most sensitive.)

The quality gate (``recon_probe``, ``check_gate``; notebooks/01_vae.ipynb): VarMixup trains only on
decodes, so a VAE whose decodes are blurred turns it into "soft labels on a blurred domain". The stage
fails (``errors.VAEBelowGate``) when the test PSNR is below ``vae.min_psnr`` or a probe classifier
trained only on reconstructions of training images is below ``vae.min_recon_accuracy`` on the clean
test images. benchmarks/vae_quality.py measures both for several settings.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from varmix.core.config import AdversarialVAEConfig, VAEConfig, to_dict
from varmix.core.errors import TrainingDiverged
from varmix.core.io import (
    load_module_state,
    load_torch,
    read_epoch_timings,
    remove_stale_temps,
    save_torch,
    timings_path,
    write_json,
)
from varmix.learn import attacks
from varmix.learn.data import to_float

IMAGE_SIZES = (28, 32, 64)
CHANNELS = (1, 3)
# number of stride-2 stages: 28 -> 14 -> 7; 32 -> 16 -> 8 -> 4; 64 -> 32 -> 16 -> 8 -> 4
_STAGES = {28: 2, 32: 3, 64: 4}
_FORMAT = "varmix-vae-1"


def positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} = {v!r} is invalid: expected a positive integer")
    return v


class ConvVAE(nn.Module):
    """Convolutional VAE for square 1- or 3-channel images of 28, 32 or 64 pixels in [0, 1]."""

    def __init__(self, in_channels: int, image_size: int, latent_dim: int, width: int = 32):
        super().__init__()
        if type(in_channels) is not int or in_channels not in CHANNELS:
            raise ValueError(f"in_channels = {in_channels!r} is invalid: expected one of {CHANNELS}")
        if type(image_size) is not int or image_size not in IMAGE_SIZES:
            raise ValueError(f"image_size = {image_size!r} is invalid: expected one of {IMAGE_SIZES}")
        self.in_channels = in_channels
        self.image_size = image_size
        self.latent_dim = positive_int("latent_dim", latent_dim)
        self.width = positive_int("width", width)

        n = _STAGES[image_size]
        chans = [width * 2 ** i for i in range(n)]
        self.feat_size = image_size // 2 ** n
        self.feat_shape = (chans[-1], self.feat_size, self.feat_size)
        feat = chans[-1] * self.feat_size ** 2

        enc: list[nn.Module] = []
        c_in = in_channels
        for c in chans:
            enc += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c_in = c
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        self.fc_mu = nn.Linear(feat, latent_dim)
        self.fc_logvar = nn.Linear(feat, latent_dim)

        self.fc_dec = nn.Linear(latent_dim, feat)
        dec: list[nn.Module] = []
        for i in reversed(range(n)):
            dec += [nn.ConvTranspose2d(chans[i], chans[max(i - 1, 0)], 4, stride=2, padding=1), nn.ReLU()]
        self.decoder = nn.Sequential(*dec, nn.Conv2d(chans[0], in_channels, 3, padding=1))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def _check_x(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"images of shape {got} given to a VAE for images [N, {self.in_channels}, "
                             f"{self.image_size}, {self.image_size}]")
        if not x.is_floating_point():
            raise ValueError(f"images of dtype {x.dtype} given to the VAE: expected float in [0, 1] "
                             f"(convert uint8 with varmix.learn.data.to_float)")

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior q(z|x) = N(mu, diag(exp(logvar)))."""
        self._check_x(x)
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z: Tensor) -> Tensor:
        """Decoder output before the sigmoid (used by the BCE loss for numerical stability)."""
        if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[1] != self.latent_dim:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"latent codes of shape {got}: expected [N, {self.latent_dim}]")
        h = F.relu(self.fc_dec(z)).view(len(z), *self.feat_shape)
        return self.decoder(h)

    def decode(self, z: Tensor) -> Tensor:
        """Decoder mean in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z))

    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder mean at the posterior mean: decode(mu(x))."""
        return self.decode(self.encode(x)[0])

    def forward(self, x: Tensor, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x)
        z = _reparameterise(mu, logvar, gen)
        return self.decode(z), mu, logvar, z


def _reparameterise(mu: Tensor, logvar: Tensor, gen: torch.Generator | None) -> Tensor:
    if gen is None:
        eps = torch.randn_like(mu)
    else:  # drawn on the CPU from the generator so CPU and GPU runs see the same noise
        eps = torch.randn(mu.shape, generator=gen, dtype=mu.dtype).to(mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


# ----------------------------------------------------------------------------------------------
# loss
def mmd(a: Tensor, b: Tensor) -> Tensor:
    """Biased estimate of MMD^2 between samples a [n, d] and b [m, d] with k(u, v) = exp(-||u - v||^2 / d)."""
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"mmd expects two 2-D tensors [n, dim], got shapes "
                         f"{getattr(a, 'shape', type(a).__name__)} and {getattr(b, 'shape', type(b).__name__)}")
    if a.shape[1] != b.shape[1] or len(a) == 0 or len(b) == 0:
        raise ValueError(f"mmd: samples of shapes {tuple(a.shape)} and {tuple(b.shape)}: expected non-empty "
                         f"samples of the same dimension")
    dim = a.shape[1]

    def k(u: Tensor, v: Tensor) -> Tensor:
        return torch.exp(-(u[:, None, :] - v[None, :, :]).pow(2).sum(-1) / dim)

    return k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()


def check_cfg(cfg: Any) -> VAEConfig:
    if not isinstance(cfg, VAEConfig):
        raise ValueError(f"cfg is a {type(cfg).__name__}: expected varmix.core.config.VAEConfig")
    return cfg


def _recon_per_image(logits: Tensor, x: Tensor, likelihood: str) -> Tensor:
    """Reconstruction negative log-likelihood per image, summed over pixels: bce = Bernoulli NLL
    (continuous targets in [0, 1]), mse = squared error of the decoder mean (a Gaussian NLL with
    variance 1/2, constants dropped)."""
    if likelihood == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    else:
        per_pixel = (torch.sigmoid(logits) - x).pow(2)
    return per_pixel.flatten(1).sum(1)


def vae_loss(vae: ConvVAE, x: Tensor, cfg: VAEConfig, gen: torch.Generator,
             target: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Training loss for a batch of float images in [0, 1]; returns (loss, parts as floats).

    mmd: recon + gamma * MMD(z, prior), z the reparameterised posterior samples of the batch and the
    prior sample of the same size drawn from ``gen``. kl: recon + beta * KL(q(z|x) || N(0, I)), summed
    over latent dimensions and averaged over the batch (the ELBO's scale when beta = 1). The encoder sees
    ``x``; the reconstruction term scores the decode against ``target`` (default: ``x`` itself; the
    adversarially trained VAE passes the clean batch while ``x`` is its attacked copy)."""
    cfg = check_cfg(cfg)
    if target is None:
        target = x
    elif not isinstance(target, Tensor) or not isinstance(x, Tensor) or target.shape != x.shape:
        desc = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"vae_loss: target {desc} for images {tuple(getattr(x, 'shape', ()))}: expected a "
                         f"tensor of the images' shape")
    mu, logvar = vae.encode(x)
    z = _reparameterise(mu, logvar, gen)
    recon = _recon_per_image(vae.decode_logits(z), target, cfg.likelihood).mean()
    if cfg.objective == "mmd":
        prior = torch.randn(z.shape, generator=gen, dtype=z.dtype).to(z.device)
        reg = mmd(z, prior)
        loss = recon + cfg.gamma * reg
    else:
        reg = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(1).mean()
        loss = recon + cfg.beta * reg
    parts = {"loss": float(loss.detach()), "recon": float(recon.detach()), cfg.objective: float(reg.detach())}
    return loss, parts


# ----------------------------------------------------------------------------------------------
# evaluation
@torch.no_grad()
def reconstruction_metrics(vae: ConvVAE, x_float: Tensor, batch_size: int = 500) -> dict[str, float]:
    """Quality of ``vae.reconstruct`` (decoder mean at the posterior mean), averaged over images:
    mse per pixel, psnr in dB for [0, 1] images (computed per image, then averaged; per-image mse is
    floored at 1e-10 so a perfect reconstruction gives 100 dB, not inf) and bce in nats per image
    (summed over pixels, the training loss's scale). uint8 images are accepted and converted per batch."""
    positive_int("batch_size", batch_size)
    if not isinstance(x_float, Tensor) or x_float.ndim != 4 or len(x_float) == 0:
        raise ValueError(f"reconstruction_metrics: images of shape {getattr(x_float, 'shape', x_float)!r}: "
                         f"expected a non-empty [N, C, H, W] tensor")
    device = next(vae.parameters()).device
    sums = {"mse": 0.0, "psnr": 0.0, "bce": 0.0}
    for i in range(0, len(x_float), batch_size):
        x = x_float[i:i + batch_size]
        x = (to_float(x) if x.dtype == torch.uint8 else x.float()).to(device)
        mu, _ = vae.encode(x)
        logits = vae.decode_logits(mu)
        mse = (torch.sigmoid(logits) - x).pow(2).flatten(1).mean(1)
        sums["mse"] += float(mse.sum())
        sums["psnr"] += float((-10 * torch.log10(mse.clamp_min(1e-10))).sum())
        sums["bce"] += float(_recon_per_image(logits, x, "bce").sum())
    return {k: v / len(x_float) for k, v in sums.items()}


# ----------------------------------------------------------------------------------------------
# save / load
def latent_metrics(vae: ConvVAE, x: Tensor, gen: torch.Generator, n: int = 2000,
                   batch_size: int = 500) -> dict[str, float]:
    """How close the aggregate posterior is to the N(0, I) prior that VarMixup's mixing assumes, on the
    first ``n`` images of ``x``: ``mu_std`` (std of the posterior means, averaged over dimensions; 1 for
    the prior), ``mu_mean_abs`` (|mean| per dimension, averaged; 0 for the prior), ``posterior_std``
    (mean exp(logvar / 2)) and ``mmd_prior`` (:func:`mmd` between the posterior means and as many prior
    samples drawn from ``gen``)."""
    positive_int("n", n)
    positive_int("batch_size", batch_size)
    x = x[:n]
    if len(x) < 2:
        raise ValueError(f"latent_metrics needs at least 2 images, got {len(x)}")
    device = next(vae.parameters()).device
    mus, stds = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            xb = (to_float(xb) if xb.dtype == torch.uint8 else xb.float()).to(device)
            mu, logvar = vae.encode(xb)
            mus.append(mu.double().cpu())
            stds.append(logvar.double().mul(0.5).exp().cpu())
        mu, std = torch.cat(mus), torch.cat(stds)
        prior = torch.randn(mu.shape, generator=gen, dtype=torch.float64)
        return {"mu_std": float(mu.std(0).mean()), "mu_mean_abs": float(mu.mean(0).abs().mean()),
                "posterior_std": float(std.mean()), "mmd_prior": float(mmd(mu, prior))}


def _freeze(vae: ConvVAE) -> ConvVAE:
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    return vae


def _config_dict(cfg: VAEConfig) -> dict:
    """``to_dict(cfg)`` without ``adversarial`` when it is None: a plain VAE's files and checkpoint keys
    are those written before the setting existed."""
    c = to_dict(check_cfg(cfg))
    if c["adversarial"] is None:
        c.pop("adversarial")
    return c


def save_vae(path: str | Path, vae: ConvVAE, cfg: VAEConfig | None = None) -> None:
    """Write the VAE's constructor arguments, weights (on CPU) and, optionally, its config atomically."""
    if not isinstance(vae, ConvVAE):
        raise ValueError(f"save_vae: got a {type(vae).__name__}, expected a ConvVAE")
    save_torch(path, {
        "format": _FORMAT,
        "args": {"in_channels": vae.in_channels, "image_size": vae.image_size,
                 "latent_dim": vae.latent_dim, "width": vae.width},
        "state_dict": {k: v.detach().cpu() for k, v in vae.state_dict().items()},
        "config": None if cfg is None else _config_dict(cfg),
    })


def load_vae(path: str | Path, device: str | torch.device | None = None) -> ConvVAE:
    """Read a VAE written by ``save_vae``: frozen, in eval mode, on ``device`` (default CPU)."""
    vae = load_module_state("varmix.learn.vae.save_vae", path, "VAE", _FORMAT, lambda obj: ConvVAE(**obj["args"]))
    return _freeze(vae.to(device or "cpu"))


# ----------------------------------------------------------------------------------------------
# training
def check_images(name: str, x: Any) -> None:
    if not isinstance(x, Tensor) or x.dtype != torch.uint8 or x.ndim != 4 or len(x) == 0:
        desc = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} is {desc}: expected non-empty uint8 images [N, C, H, W]")
    c, h, w = x.shape[1:]
    if c not in CHANNELS or h != w or h not in IMAGE_SIZES:
        raise ValueError(f"{name} has images of shape {(c, h, w)}: expected C in {CHANNELS} and square "
                         f"H = W in {IMAGE_SIZES}")


DIVERGENCE_FACTOR = 10.0  # an epoch's mean loss this many times the first step's is divergence


def check_divergence(epoch: int, loss: float, first_loss: float, lr: float) -> None:
    """Raise ``TrainingDiverged`` when an epoch's mean training loss exceeds ``DIVERGENCE_FACTOR`` times
    the first step's (the untrained VAE's). The loss is a sum of non-negative terms, so a healthy run
    stays below its first step's loss (tests/test_faults_stable.py)."""
    limit = DIVERGENCE_FACTOR * first_loss
    if loss > limit:
        raise TrainingDiverged(f"training diverged: VAE, epoch {epoch}: train loss {loss:.3g} (first-step loss "
                               f"{first_loss:.3g}, limit {limit:.3g}) at lr {lr:g}; lower vae.lr in params.yaml")


# settings that do not change the VAE's training (the gate and its probe, the mixed samples' FID/KID):
# changing them keeps a checkpoint
_NOT_TRAINING = ("min_psnr", "min_recon_accuracy", "probe_epochs", "probe_subset", "fid_features", "fid_samples")


def step_lr(cfg: VAEConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``total_steps``: ``cfg.lr`` throughout
    (constant) or cosine-annealed from ``cfg.lr`` towards 0 (cosine, SGDR without restarts). A function of
    the step alone, so a resumed run continues the schedule without scheduler state."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))


def _resume_key(cfg: VAEConfig, seed: int, n_train: int, n_test: int, shape: tuple) -> dict:
    """What must agree for a checkpoint to be continued (epochs may grow)."""
    c = _config_dict(cfg)
    if cfg.lr_schedule == "constant":  # a cosine schedule spans all epochs: more of them change every step
        c.pop("epochs")
    for k in _NOT_TRAINING:
        c.pop(k)
    if c["dataset"] is None:  # the classifier's dataset: the key of checkpoints written before the setting
        c.pop("dataset")
    return {"config": c, "seed": seed, "n_train": n_train, "n_test": n_test, "image_shape": list(shape)}


def _flat_key(key: Any) -> dict:
    """A resume key with the config's entries as ``config.<name>`` (the names the messages show)."""
    if not isinstance(key, dict):
        return {"key": key}
    flat = {k: v for k, v in key.items() if k != "config"}
    config = key.get("config")
    flat.update({f"config.{k}": v for k, v in config.items()} if isinstance(config, dict) else {"config": config})
    return flat


def _key_difference(saved: Any, now: dict) -> str:
    """The entries in which a checkpoint's resume key differs from this run's, as "name = saved there, now
    now" (an entry one key lacks shows as None: a plain VAE's key has no config.adversarial)."""
    old, new = _flat_key(saved), _flat_key(now)
    return "; ".join(f"{k} = {old.get(k)!r} there, {new.get(k)!r} now" for k in sorted(set(old) | set(new))
                     if old.get(k) != new.get(k))


# ----------------------------------------------------------------------------------------------
# adv-VarMixup's VAE (docs/ADVERSARIAL.md, "adv-VarMixup's VAE (our recipe)")
_ATTACK_STREAM = 0x7661_6561  # tags the attack generator's seed: SeedSequence([seed, tag])


def attack_seed(seed: int) -> int:
    """The seed of the adversarially trained VAE's attack generator, derived from the run's ``seed`` so it
    is not the main generator's stream (``torch.Generator().manual_seed(seed)``)."""
    return int(np.random.SeedSequence([seed, _ATTACK_STREAM]).generate_state(1)[0])


def _check_adversarial(cfg: VAEConfig) -> AdversarialVAEConfig | None:
    adv = cfg.adversarial
    if adv is None:
        return None
    if not isinstance(adv, AdversarialVAEConfig):
        raise ValueError(f"cfg.adversarial is a {type(adv).__name__}: expected None or a "
                         f"varmix.core.config.AdversarialVAEConfig")
    attacks.check_attack(adv.eps, adv.step, adv.steps, "cfg.adversarial.", units="units of 1/255")
    if not isinstance(adv.random_start, bool):
        raise ValueError(f"cfg.adversarial.random_start = {adv.random_start!r} is invalid: expected True or False")
    return adv


def adversarial_batch(vae: ConvVAE, x: Tensor, cfg: VAEConfig, gen: torch.Generator) -> Tensor:
    """The attacked copy x' of the float batch ``x`` (in [0, 1]) that adv-VarMixup's VAE trains on: PGD
    with ``cfg.adversarial``'s settings (``varmix.learn.attacks.pgd_linf_objective``: l-inf ball of radius eps/255
    around x intersected with [0, 1], a uniform random start if ``random_start``, sign-gradient steps of
    step/255) ascending ``vae_loss(vae, x', cfg, gen, target=x)``: the loss of reconstructing the clean x
    from the encoding of x', plus the MMD (or KL) term. Every draw (the start; each step's
    reparameterisation and MMD prior samples) comes from ``gen``. The VAE's mode is left as it is (it has
    no batch norm or dropout) and no parameter's ``.grad`` is touched. ``eps = 0`` returns x's values."""
    cfg = check_cfg(cfg)
    adv = _check_adversarial(cfg)
    if adv is None:
        raise ValueError("cfg.adversarial is None: adversarial_batch needs the attack's settings "
                         "(varmix.core.config.AdversarialVAEConfig)")
    x = x.detach()
    return attacks.pgd_linf_objective(lambda x_adv: vae_loss(vae, x_adv, cfg, gen, target=x)[0], x,
                                      adv.radius, adv.step_size, adv.steps, gen, adv.random_start)


# ----------------------------------------------------------------------------------------------
def train_vae(cfg: VAEConfig, train_x: Tensor, test_x: Tensor, out_dir: str | Path, seed: int,
              device: str | torch.device | None = None, progress: bool | None = None,
              timings: str | Path | None = None) -> ConvVAE:
    """Train the VAE on uint8 images and write ``checkpoint.pt`` (every epoch), ``history.json`` and
    ``vae.pt`` into ``out_dir``. A ``checkpoint.pt`` already there from the same config, seed and data
    is continued (the result on CPU is bit-identical to an uninterrupted run); one from a different run
    is an error. The files in ``out_dir`` depend only on the weights (equal runs give equal bytes); the
    per-epoch seconds go to ``timings`` (a JSON file outside ``out_dir``) when given. A loss that
    explodes stops the run (``check_divergence``). Returns the trained VAE frozen in eval mode on
    ``device``.

    With ``cfg.adversarial`` set (adv-VarMixup's VAE), each batch x is first attacked
    (``adversarial_batch``, drawing from a second generator seeded with ``attack_seed(seed)`` and
    checkpointed with the first) and the step minimises ``vae_loss(vae, x', cfg, gen, target=x)``; the
    main generator's draws (order, reparameterisation, prior) are then those of the plain run, so at
    eps = 0 the weights are the plain VAE's bit for bit. The history's train parts are those of the
    attacked batches."""
    cfg = check_cfg(cfg)
    adversarial = _check_adversarial(cfg)
    check_images("train_x", train_x)
    check_images("test_x", test_x)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(f"train_x images {tuple(train_x.shape[1:])} and test_x images "
                         f"{tuple(test_x.shape[1:])} differ in shape")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed = {seed!r} is invalid: expected a non-negative integer")
    out_dir = Path(out_dir)
    times_file = timings_path(timings, out_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    train_x = train_x[:cfg.train_subset]
    n = len(train_x)
    c, s = train_x.shape[1], train_x.shape[2]
    steps = math.ceil(n / cfg.batch_size)
    key = _resume_key(cfg, seed, n, len(test_x), (c, s, s))

    # weights initialised from the seed without touching the global RNG stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = ConvVAE(c, s, cfg.latent_dim, cfg.width)
    vae.to(device)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    attack_gen = None if adversarial is None else torch.Generator().manual_seed(attack_seed(seed))
    history: list[dict] = []
    start = 0
    first_loss = None  # the first step's loss (the untrained VAE's): divergence is measured against it

    ckpt_path = out_dir / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = load_torch(ckpt_path, what="VAE checkpoint")
        if not isinstance(ckpt, dict) or ckpt.get("key") != key:
            saved = ckpt.get("key") if isinstance(ckpt, dict) else type(ckpt).__name__
            raise ValueError(f"{ckpt_path} belongs to a different run: {_key_difference(saved, key)}; delete it "
                             f"to start over")
        if ckpt["epoch"] > cfg.epochs:
            raise ValueError(f"{ckpt_path} holds {ckpt['epoch']} epochs but cfg.epochs = {cfg.epochs}; "
                             f"delete it to train a shorter run")
        vae.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["generator"])
        if attack_gen is not None:
            attack_gen.set_state(ckpt["attack_generator"])
        history, start = ckpt["history"], ckpt["epoch"]
        first_loss = ckpt.get("first_loss", history[0]["train"]["loss"])
    remove_stale_temps(out_dir)
    times = read_epoch_timings(times_file, start)

    bar = tqdm(total=cfg.epochs * steps, initial=start * steps, desc="VAE", unit="step",
               disable=None if progress is None else not progress)
    try:
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            vae.train()
            sums: dict[str, float] = {}
            order = torch.randperm(n, generator=gen)
            for step in range(steps):
                idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                x = to_float(train_x[idx]).to(device, non_blocking=True)
                lr = step_lr(cfg, epoch * steps + step, cfg.epochs * steps)
                for group in opt.param_groups:
                    group["lr"] = lr
                if attack_gen is None:
                    loss, parts = vae_loss(vae, x, cfg, gen)
                else:  # the attacked batch, reconstructed towards the clean one
                    loss, parts = vae_loss(vae, adversarial_batch(vae, x, cfg, attack_gen), cfg, gen, target=x)
                if not math.isfinite(parts["loss"]):
                    raise FloatingPointError(
                        f"VAE loss is {parts['loss']} at epoch {epoch + 1} step {step + 1}/{steps} "
                        f"(parts {parts}); lower vae.lr or check the data")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if first_loss is None:
                    first_loss = parts["loss"]
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v * len(idx)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{parts['loss']:.2f}")
            vae.eval()
            test = reconstruction_metrics(vae, test_x)
            seconds = time.perf_counter() - t0
            train = {k: v / n for k, v in sums.items()}
            check_divergence(epoch + 1, train["loss"], first_loss, cfg.lr)  # the schedule's peak
            history.append({"epoch": epoch + 1, "train": train, "test": test})
            times.append({"epoch": epoch + 1, "seconds": seconds})
            if times_file is not None:  # before the checkpoint: a resumed run keeps the epochs it continues
                write_json(times_file, times)
            state = {"key": key, "epoch": epoch + 1, "model": vae.state_dict(), "optimizer": opt.state_dict(),
                     "generator": gen.get_state(), "history": history, "first_loss": first_loss}
            if attack_gen is not None:  # a plain run's checkpoint keeps the entries it always had
                state["attack_generator"] = attack_gen.get_state()
            save_torch(ckpt_path, state)
            write_json(out_dir / "history.json", history)
    finally:
        bar.close()

    write_json(out_dir / "history.json", history)
    save_vae(out_dir / "vae.pt", vae, cfg)
    return _freeze(vae)
