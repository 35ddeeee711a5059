"""The VAE's quality gate: is the VAE good enough for VarMixup? A probe classifier trained on its
reconstructions is scored on the clean test images (``recon_probe``), and ``check_gate`` compares that and
the PSNR with params.yaml's thresholds."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from varmix.core.config import TrainConfig, VAEConfig
from varmix.core.errors import TrainingDiverged, VAEBelowGate
from varmix.core.io import write_json
from varmix.core.names import METHODS
from varmix.learn.data import ImageData, to_float
from varmix.learn.mixing import vae_reconstruct
from varmix.learn.train import train_classifier
from varmix.learn.vae import ConvVAE, check_cfg, check_images, positive_int

PROBE_DIR = "probe"  # the probe classifier's folder inside the VAE's run folder


@torch.no_grad()
def reconstruct_uint8(vae: ConvVAE, x: Tensor, batch_size: int = 500) -> Tensor:
    """``vae.reconstruct`` (decoder mean at the posterior mean: deterministic) of uint8 images (at their own
    size: ``varmix.learn.mixing.vae_reconstruct`` resizes for a VAE of another image size), quantised
    back to uint8 as the datasets are stored (round to the nearest of 0..255), on the CPU."""
    check_images("x", x)
    positive_int("batch_size", batch_size)
    device = next(vae.parameters()).device
    out = [vae_reconstruct(vae, to_float(x[i:i + batch_size]).to(device)).mul(255).round_().clamp_(0, 255)
           .to(torch.uint8).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def probe_config(cfg: VAEConfig, augment: bool = True) -> TrainConfig:
    """The probe classifier's settings: small_cnn, Adam lr 1e-3, batch 128, ERM for ``cfg.probe_epochs``
    epochs, ``augment`` as the profile's classifiers."""
    cfg = check_cfg(cfg)
    if not isinstance(augment, bool):
        raise ValueError(f"augment = {augment!r} is invalid: expected true or false")
    return TrainConfig(arch="small_cnn", optimizer="adam", lr=1e-3, batch_size=128,
                       epochs={m: cfg.probe_epochs for m in METHODS}, alpha={m: 1.0 for m in METHODS},
                       augment=augment)


def _md5(x: Tensor) -> str:
    import hashlib

    return hashlib.md5(x.contiguous().numpy().tobytes()).hexdigest()


def recon_probe(vae: ConvVAE, data: ImageData, cfg: VAEConfig, seed: int,
                device: str | torch.device | None = None, *, out_dir: str | Path, augment: bool = True,
                progress: bool | None = None, timings: str | Path | None = None) -> dict[str, Any]:
    """How usable the VAE's decodes are as training data: reconstruct the first ``cfg.probe_subset``
    training images once (:func:`reconstruct_uint8`), train the probe (:func:`probe_config`, ERM, via
    ``varmix.learn.train.train_classifier``) on them with their labels, and test it on the clean test images.
    The probe's trained-model folder is ``out_dir`` (by convention ``<vae run folder>/probe``): it
    resumes and is reused like any run; a folder made from other reconstructions (``recon.json`` holds
    their md5) has its checkpoint removed first, since it belongs to another VAE. A probe that stays at
chance (``TrainingDiverged`` from the trainer's check, from its epoch 2 on) raises ``VAEBelowGate``. Returns
    ``recon_probe_accuracy`` (clean test accuracy), ``recon_probe_images`` and ``recon_probe_epochs``."""
    cfg = check_cfg(cfg)
    if not isinstance(vae, ConvVAE):
        raise ValueError(f"vae is a {type(vae).__name__}: expected a varmix.learn.vae.ConvVAE")
    if not isinstance(data, ImageData):
        raise ValueError(f"data is a {type(data).__name__}: expected a varmix.learn.data.ImageData")
    if data.train_x.ndim != 4 or data.train_x.shape[1] != vae.in_channels:  # H x W may differ (resized)
        raise ValueError(f"{data.name} images of shape {tuple(data.train_x.shape[1:])} given to a VAE for "
                         f"images {vae.image_shape}: the channels must match")
    tcfg = probe_config(cfg, augment)
    n = min(cfg.probe_subset, len(data.train_x))
    recon = reconstruct_uint8(vae, data.train_x[:n])
    out = Path(out_dir)
    stamp = {"recon_md5": _md5(recon), "n_train": n}
    stamp_path = out / "recon.json"
    if stamp_path.exists() and json.loads(stamp_path.read_text()) != stamp:
        (out / "checkpoint.pt").unlink(missing_ok=True)  # trained on another VAE's reconstructions
    write_json(stamp_path, stamp)
    probe_data = ImageData(data.name, recon, data.train_y[:n], data.test_x, data.test_y)
    try:
        summary = train_classifier("erm", tcfg, probe_data, out, seed, device=device, progress=progress,
                                   timings=timings)
    except TrainingDiverged as exc:  # at lr 1e-3 on real images: the reconstructions are what fails
        raise VAEBelowGate(
            f"the probe classifier trained on the VAE's reconstructions learnt nothing ({exc}): they keep "
            f"too little of the images to classify. Train a better VAE (more vae.epochs or vae.train_subset, "
            f"a larger vae.width or vae.latent_dim) in params.yaml") from exc
    return {"recon_probe_accuracy": summary["test_acc"], "recon_probe_images": n,
            "recon_probe_epochs": cfg.probe_epochs}


def check_gate(metrics: dict[str, Any], cfg: VAEConfig, profile: str = "<profile>") -> None:
    """Raise ``errors.VAEBelowGate`` when ``metrics['psnr']`` is below ``cfg.min_psnr`` or
    ``metrics['recon_probe_accuracy']`` below ``cfg.min_recon_accuracy`` (a threshold of None is no
    check; a value at the threshold passes). The message names every failed check: the measured value,
    the threshold, the params.yaml key (profiles.<profile>.vae.min_psnr ...) and what to change."""
    cfg = check_cfg(cfg)
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics is a {type(metrics).__name__}: expected a dict with psnr and "
                         f"recon_probe_accuracy")
    checks = (("psnr", cfg.min_psnr, "min_psnr", "test PSNR {v:.2f} dB is below min_psnr = {t:g} dB"),
              ("recon_probe_accuracy", cfg.min_recon_accuracy, "min_recon_accuracy",
               "a classifier trained on its reconstructions reaches {v:.4f} clean test accuracy, below "
               "min_recon_accuracy = {t:g}"))
    failed = []
    for name, threshold, key, text in checks:
        if threshold is None:
            continue
        value = metrics.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"metrics[{name!r}] = {value!r}: expected a finite number to check against "
                             f"vae.{key}")
        if value < threshold:
            failed.append(text.format(v=value, t=threshold) + f" (profiles.{profile}.vae.{key})")
    if failed:
        raise VAEBelowGate(
            "the VAE is below its quality gate: " + "; ".join(failed) + ". Train a better VAE (more "
            "vae.epochs or vae.train_subset, a larger vae.width or vae.latent_dim) in params.yaml, or lower "
            "the threshold there if this quality is enough")
