"""One trainer for every method: ``train_classifier(method, cfg, data, out_dir, seed, vae=None)``.

The loop follows torchvision's references/classification/train.py, with the data kept on the device:

- The (subset of the) dataset lives on the device as one uint8 tensor; each epoch draws a permutation
  from a CPU ``torch.Generator`` seeded from ``seed`` (the "order" stream); each batch is augmented on the
  device (random crop with zero padding + horizontal flip, one vectorised gather, offsets drawn from the
  "augment" stream), converted to float [0, 1], mixed by ``varmix.learn.mixing`` (its draws from the "mix"
  stream) and fed to the model; the loss is the soft-target cross-entropy (for Manifold Mixup
  ``cfg.manifold_loss`` may choose its reference's BCE on the softmax instead; the history's train_loss is
  then that loss). Random numbers are drawn on the CPU, so CPU and GPU runs see the same streams.
- Init: ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng`` (the caller's global RNG state is left
  alone). The three data generators are seeded with values derived from ``seed`` (numpy SeedSequence), so
  that weight init and data are not the same Mersenne-Twister stream, and so that arms are paired: one
  seed gives every method the same initial weights, image order, crops and flips (``_data_seed``).
- The adversarial methods (at, trades, iat; ``adversarial_loss``, docs/ADVERSARIAL.md) attack the augmented
  clean batch with ``varmix.learn.attacks.pgd_linf`` (settings ``cfg.adversarial``), drawing random starts from a
  fourth generator ("attack") that only they have, then train on it (AT), on TRADES's loss, or on mixup of
  the clean and of the attacked batch (IAT, ``mixing``'s mixup mixer).
- CUDA: bf16 autocast (``cfg.amp``), channels_last (``cfg.channels_last``), fused optimisers, the training
  loss accumulated on the device and read once per epoch. CPU: the same code in fp32. Evaluation is
  always fp32 (no autocast), so reported test numbers do not depend on ``cfg.amp``.
- Each epoch writes ``checkpoint.pt`` (model, optimiser, scheduler, generator states, history) and
  ``history.json`` atomically. A run finding a checkpoint of the same run (equal ``RunSettings.record()``, arm,
  seed, data and VAE) in ``out_dir`` resumes from it;
  on CPU the resumed run ends with bit-identical weights to an uninterrupted one. A checkpoint may also
  be continued with more epochs (the run's ``epochs`` is the only setting allowed to differ), which
  equals training that many epochs in one go as long as the lr schedule agrees (milestones; a cosine
  schedule's length is its epochs, so a cosine run is never continued).
- Every file in ``out_dir`` depends only on the weights and settings (equal runs, resumed or not, give
  equal bytes, so DVC sees an unchanged folder); the per-epoch seconds go to the ``timings`` file, which
  must lie outside ``out_dir``. Stale temporaries of killed writes in ``out_dir`` are removed at the start.
- Several processes (``cfg.processes`` > 1; varmix.learn.distributed, docs/DISTRIBUTED.md): the call starts
  torchrun, whose workers run this same function; each trains on its slice of every global batch (the same
  permutation, augmentation, mixing and attack on every process, batch norm synchronised, DDP averaging
  the gradients) and rank 0 alone writes. The checkpoint does not depend on the process count.
- Divergence: non-finite losses stop the run at once (CPU: at the step; CUDA: at the epoch's end); a
  finite loss that explodes, or a collapse to chance accuracy, stops it at the epoch's end
  (``check_divergence``) with ``errors.TrainingDiverged``.

Choices the paper leaves open (see also params.yaml):
- Augmentation: random crop with 4 px zero padding for 32 and 64 px images (the mixup literature's
  CIFAR recipe; Tiny-ImageNet uses the same 4 px) and 2 px for 28 px Fashion-MNIST (a smaller image whose
  objects fill the frame), plus horizontal flips (Fashion-MNIST's clothes are left-right symmetric
  classes). Mixing comes after augmentation, as in mixup-cifar10.
- Batches: a shuffled pass over the data per epoch; a last partial batch is kept when it holds at least
  2 images (mixing needs a partner, batch norm more than one value) and dropped otherwise.
- Optimiser: ``adam`` (the paper: Adam, lr 1e-3, no schedule) or ``sgd`` (momentum, weight decay:
  mixup-cifar10's recipe with ``schedule: step`` at its ``milestones`` x ``lr_gamma``). The schedule
  (``cfg.schedule``: constant, step, cosine) is one LambdaLR stepped after every optimiser step
  (``make_optimizer``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from varmix.core import config, errors, io, names
from varmix.learn import attacks, distributed, mixing
from varmix.learn.data import ImageData, to_float
from varmix.learn.inference import inference_copy
from varmix.learn.models import build_model, mix_hidden

CHECKPOINT_FORMAT = "varmix-classifier-checkpoint-2"  # 2: three generators (order, augmentation, mixing)
MODEL_FORMAT = "varmix-classifier-1"
VAE_METHODS = names.VAE_METHODS
EVAL_BATCH_SIZE = 500


# ----------------------------------------------------------------------------------------------
# small pieces, shared with benchmarks/throughput.py
def crop_padding(image_size: int) -> int:
    """Zero padding of the random crop: 2 px for 28 px images, 4 px for 32 and 64 px (module docstring)."""
    return 2 if image_size < 32 else 4


def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int) -> torch.Tensor:
    """Random crop (``pad`` px of zeros around the image, then a crop of the original size at a uniform
    offset) and horizontal flip with probability 1/2, per sample, for a batch ``[B, C, H, W]`` of any
    dtype on any device. Vectorised: the offsets and flips become row/column indices of one gather.
    Draws from ``gen`` on the CPU: B row offsets, B column offsets, B flip coins (in that order)."""
    n, c, h, w = x.shape
    dev = x.device
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    oy, ox, flip = oy.to(dev), ox.to(dev), flip.to(dev)
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    ar_h, ar_w = torch.arange(h, device=dev), torch.arange(w, device=dev)
    rows = oy[:, None] + ar_h                                            # [B, H] rows of the padded image
    cols = ox[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # [B, W] flipped crop columns
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, padded.shape[3]))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, mixer, x: torch.Tensor, y: torch.Tensor,
               gen: torch.Generator, *, pad: int | None, amp: bool, channels_last: bool,
               loss: str = "soft_ce", aug_gen: torch.Generator | None = None,
               adversary: "Adversary | None" = None, attack_gen: torch.Generator | None = None,
               shard: distributed.Shard | None = None) -> torch.Tensor:
    """One optimisation step on a uint8 batch already on the model's device; returns the (detached)
    loss as a device tensor (no host sync). ``pad=None`` switches augmentation off. ``loss`` names the
    training loss (``varmix.learn.mixing.mixed_loss``; see ``loss_for``). The mixer draws from ``gen``, the
    augmentation from ``aug_gen`` (default: ``gen`` too). ``adversary`` (an adversarial method's
    settings) replaces the loss by ``adversarial_loss``'s, whose attack draws from ``attack_gen``.

    ``shard`` (a process of a distributed run, varmix.learn.distributed): x and y are the whole global batch and
    ``model`` the DDP-wrapped classifier (``distributed.wrap``). Augmentation, mixing (the VAE's too) and
    the attack are computed for the global batch on every process, from the same generators, so every
    process draws the same numbers; each process passes its slice through the classifier (``_slice_loss``)
    and its loss, weighted by ``shard.weight``, gives DDP's averaged gradient the global batch's. The
    returned loss is the mean over this process's slice."""
    if pad is not None:
        x = augment_batch(x, gen if aug_gen is None else aug_gen, pad)
    x = to_float(x)
    if shard is not None:
        value = model(functools.partial(_slice_loss, shard=shard, mixer=mixer, x=x, y=y, gen=gen, amp=amp,
                                        channels_last=channels_last, loss=loss, adversary=adversary,
                                        attack_gen=attack_gen))
    elif adversary is not None:
        value = adversarial_loss(adversary, model, mixer, x, y, gen, attack_gen, amp=amp,
                                 channels_last=channels_last)
    else:
        with torch.no_grad():  # the mixed batch is an input: no gradient into the (frozen) VAE
            mb = mixer(x, y, gen)
        value = mixing.mixed_loss(loss, _logits(model, mb, amp, channels_last), mb.target)
    optimizer.zero_grad(set_to_none=True)
    (value if shard is None else value * shard.weight(len(x))).backward()
    optimizer.step()
    return value.detach()


def _slice_loss(model: nn.Module, *, shard: distributed.Shard, mixer, x: torch.Tensor, y: torch.Tensor,
                gen: torch.Generator, amp: bool, channels_last: bool, loss: str, adversary: "Adversary | None",
                attack_gen: torch.Generator | None) -> torch.Tensor:
    """``train_step``'s loss on this process's slice of the global float batch x (run inside DDP's forward)."""
    if adversary is not None:
        return adversarial_loss(adversary, model, mixer, x, y, gen, attack_gen, amp=amp,
                                channels_last=channels_last, shard=shard)
    with torch.no_grad():
        mb = mixer(x, y, gen)
    return mixing.mixed_loss(loss, *_logits_target(model, mb, amp, channels_last, shard))


def _logits(model: nn.Module, mb: mixing.MixedBatch, amp: bool, channels_last: bool) -> torch.Tensor:
    """The model's (float32) logits for a mixed batch, in train mode under the step's autocast."""
    xm = mb.x.contiguous(memory_format=torch.channels_last) if channels_last else mb.x
    with torch.autocast(device_type=xm.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(xm, mix_layer=mb.mix_layer, lam=mb.lam, perm=mb.perm)
    return logits.float()


def _logits_target(model: nn.Module, mb: mixing.MixedBatch, amp: bool, channels_last: bool,
                   shard: distributed.Shard | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``_logits`` and the targets of a mixed batch; with ``shard``, of this process's slice of the global
    batch mb. Manifold Mixup's partners come from the whole global batch: at the input (layer 0) the batch
    is mixed here before slicing, with the model's own expression; at a hidden layer a forward hook mixes
    the layer's output with that of every process (``shard.gather``)."""
    if shard is None:
        return _logits(model, mb, amp, channels_last), mb.target
    x, layer, lam, perm = mb.x, mb.mix_layer, mb.lam, mb.perm
    if layer == 0:
        x = mix_hidden(x, x[perm], lam)  # before slicing: partners come from the global batch
    local = mixing.MixedBatch(shard.take(x), shard.take(mb.target), lam, None)
    if layer is None or layer == 0:
        return _logits(model, local, amp, channels_last), local.target
    a, b = shard.bounds(len(perm))
    handle = model.stages[layer - 1].register_forward_hook(
        lambda module, inputs, h: mix_hidden(h, shard.gather(h, len(perm))[perm[a:b]], lam))
    try:
        return _logits(model, local, amp, channels_last), local.target
    finally:
        handle.remove()


# ----------------------------------------------------------------------------------------------
# the adversarial methods (names.ADVERSARIAL_METHODS; docs/ADVERSARIAL.md)
# Each is a vicinal method's mixer applied around an attack: AT and TRADES use erm's (the batch, one-hot
# targets; no draws), IAT mixup's (varmix.learn.mixing.mixup, the same mixer as the mixup arm).
ADVERSARIAL_MIXER = {"at": "erm", "trades": "erm", "iat": "mixup"}
assert set(ADVERSARIAL_MIXER) == set(names.ADVERSARIAL_METHODS)


@dataclass(frozen=True)
class Adversary:
    """An adversarial method and its attack in pixel units (``from_config`` converts params.yaml's 1/255)."""

    method: str          # at | trades | iat
    eps: float           # l-inf radius, pixel units
    step: float          # step size, pixel units
    steps: int
    random_start: bool
    beta: float          # TRADES only

    @classmethod
    def from_config(cls, method: str, adv: config.AdversarialConfig) -> "Adversary":
        if method not in ADVERSARIAL_MIXER:
            raise ValueError(f"method {method!r} is not adversarial: expected one of "
                             f"{', '.join(names.ADVERSARIAL_METHODS)}")
        if not isinstance(adv, config.AdversarialConfig):
            raise ValueError(f"cfg.adversarial is a {type(adv).__name__}: expected a "
                             f"varmix.core.config.AdversarialConfig")
        attacks.check_attack(adv.eps, adv.step, adv.steps, "cfg.adversarial.", units="units of 1/255")
        if not isinstance(adv.random_start, bool):
            raise ValueError(f"cfg.adversarial.random_start = {adv.random_start!r} is invalid: expected True or "
                             f"False")
        return cls(method, adv.radius, adv.step_size, int(adv.steps), adv.random_start,
                   attacks.check_beta(adv.beta, "cfg.adversarial.beta"))

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, *,
               amp: bool = False) -> torch.Tensor:
        """The method's adversarial batch for clean images x (TRADES: the KL attack, else the CE one)."""
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
            return attacks.pgd_linf(model, x, y, self.eps, self.step, self.steps, gen,
                                    random_start=self.random_start, loss="kl" if self.method == "trades" else "ce")


def iat_batches(adversary: Adversary, model: nn.Module, mixer, x: torch.Tensor, y: torch.Tensor,
                gen: torch.Generator, attack_gen: torch.Generator, *, amp: bool = False
                ) -> tuple[mixing.MixedBatch, mixing.MixedBatch]:
    """IAT's two batches (Lamb et al., "Interpolated Adversarial Training"): the attack on the clean batch
    (labels y) first, then ``mixer`` (mixup's) on the clean batch and on the adversarial batch, in that
    order, each with its own lambda and partners from ``gen``."""
    x_adv = adversary.attack(model, x, y, attack_gen, amp=amp)
    with torch.no_grad():
        return mixer(x, y, gen), mixer(x_adv, y, gen)


def adversarial_loss(adversary: Adversary, model: nn.Module, mixer, x: torch.Tensor, y: torch.Tensor,
                     gen: torch.Generator, attack_gen: torch.Generator, *, amp: bool = False,
                     channels_last: bool = False, shard: distributed.Shard | None = None) -> torch.Tensor:
    """The training loss of an adversarial method on the float batch x (the attack first, on the model as
    it stands, in eval mode; then the train-mode forward passes):

    - at: the soft CE (= CE) of the PGD batch with one-hot targets (Madry et al.);
    - trades: ``attacks.trades_loss`` of the clean and the KL-attacked batch's logits (two forward
      passes: clean, then adversarial), with one-hot targets and ``adversary.beta``;
    - iat: (soft CE of mixup on the clean batch + soft CE of mixup on the PGD batch) / 2 (Lamb et al.),
      two forward passes, clean first.

    ``shard``: x is a distributed run's global batch; the attack and the mixing are computed for all of it,
    the forward passes for this process's slice (``_logits_target``)."""
    m = adversary.method
    if m == "iat":
        clean, adv = iat_batches(adversary, model, mixer, x, y, gen, attack_gen, amp=amp)
        return 0.5 * (mixing.soft_cross_entropy(*_logits_target(model, clean, amp, channels_last, shard))
                      + mixing.soft_cross_entropy(*_logits_target(model, adv, amp, channels_last, shard)))
    x_adv = adversary.attack(model, x, y, attack_gen, amp=amp)
    with torch.no_grad():
        adv = mixer(x_adv, y, gen)  # erm's: the batch with one-hot targets, no draws
    if m == "at":
        return mixing.soft_cross_entropy(*_logits_target(model, adv, amp, channels_last, shard))
    with torch.no_grad():
        clean = mixer(x, y, gen)
    logits_clean, target = _logits_target(model, clean, amp, channels_last, shard)
    return attacks.trades_loss(logits_clean, _logits_target(model, adv, amp, channels_last, shard)[0],
                               target, adversary.beta)


def loss_for(method: str, cfg: config.TrainConfig) -> str:
    """The training loss of ``method``: ``cfg.manifold_loss`` for manifold_mixup, soft_ce for the rest."""
    return cfg.manifold_loss if method == "manifold_mixup" else "soft_ce"


def make_optimizer(cfg: config.TrainConfig, model: nn.Module, device: torch.device, epochs: int = 1,
                   steps_per_epoch: int = 1):
    """Adam or SGD (cfg.optimizer) and the lr schedule of cfg.schedule: a LambdaLR stepped once per
    optimiser step, over ``epochs`` x ``steps_per_epoch`` steps.

    - constant: lr throughout;
    - step: lr x lr_gamma at each of cfg.milestones (epochs; the step count is milestone x steps/epoch);
    - cosine: lr x (1 + cos(pi t / total_steps)) / 2 at step t: from lr down to 0 at the run's end."""
    fused = device.type == "cuda"  # fused kernels on CUDA; the plain loop on CPU (deterministic)
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                               fused=fused or None)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay, fused=fused or None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, epochs, steps_per_epoch))
    return opt, sched


def lr_factor(cfg: config.TrainConfig, epochs: int, steps_per_epoch: int):
    """The schedule's multiplier of cfg.lr as a function of the optimiser step t (0-based)."""
    total = max(int(epochs) * int(steps_per_epoch), 1)
    if cfg.schedule == "cosine":
        return lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
    if cfg.schedule == "step":
        bounds = [m * int(steps_per_epoch) for m in cfg.milestones]
        return lambda t: cfg.lr_gamma ** sum(t >= b for b in bounds)
    return lambda t: 1.0


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device = {device!r} is invalid: expected 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device = {device!r}: CUDA is not available on this machine (use 'cpu')")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device = {device!r} is unsupported: expected 'cpu' or 'cuda'")
    return dev


def _tqdm_disable(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None (quiet off a TTY) unless ``progress`` says otherwise. An explicit
    ``disable`` overrides tqdm's own TQDM_DISABLE handling, so that variable is honoured here."""
    if progress is not None:
        return not progress
    if os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no", "off"):
        return True
    return None


def _data_seed(seed: int, stream: int = 0) -> int:
    """The seed of a data generator: derived from ``seed`` so it is not the init's stream. Streams: 0 the
    order of the training images, 1 augmentation, 2 the method's own draws (lambda, partners, boxes, layers,
    clean-or-mixed coins), 3 the adversarial methods' attacks (random starts; only those methods have it, so
    the other arms' checkpoints hold the three streams they always held). Separate streams pair the arms of
    a study: for one seed every arm sees the same images in the same order with the same crops and flips,
    whatever its method draws."""
    key = [seed, 0x6461_7461] if stream == 0 else [seed, 0x6461_7461, stream]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


GENERATORS = ("order", "augment", "mix")  # _data_seed's streams 0, 1, 2
ATTACK_GENERATOR, ATTACK_STREAM = "attack", 3  # the adversarial methods' fourth stream


def _state_md5(module: nn.Module) -> str:
    h = hashlib.md5()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _save_checkpoint(path: Path, state: dict) -> None:
    io.save_torch(path, state)


# ----------------------------------------------------------------------------------------------
# divergence
DIVERGENCE_FACTOR = 10.0   # an epoch's mean train loss this many times the start's is divergence
CHANCE_MARGIN = 0.02       # test accuracy within this of 1/classes counts as chance
CHANCE_LOSS = 0.97         # ... when the train loss has not fallen below this fraction of ln(classes)


def check_divergence(method: str, epoch: int, train_loss: float, first_loss: float, test_acc: float,
                     num_classes: int, lr: float) -> None:
    """Raise ``errors.TrainingDiverged`` after an epoch whose mean train loss exceeds ``DIVERGENCE_FACTOR``
    times the larger of the run's first-step loss (the untrained model's) and ln(num_classes) (the loss
    of a uniform prediction), or, from epoch 2 on, whose test accuracy is at chance (within
    ``CHANCE_MARGIN`` of 1/num_classes) while the train loss is still at least ``CHANCE_LOSS`` x
    ln(num_classes), i.e. the model has learnt nothing. Measured on Fashion-MNIST (every method, seed 0):
    healthy runs' epoch losses stay below the first step's (at most 2.17 against a limit of 23); the
    closest to the accuracy check were the smoke profile's Mixup-R and VarMixup at epoch 2 (a 1-epoch
    VAE): accuracy 0.13 with train loss 2.04, below the 2.23 the check needs. Adam at lr 1e6 is stopped
    at epoch 1 (loss 7.7e13), at lr 1 too (loss 106); lr 0.1 recovers and is not stopped."""
    ln_k = math.log(num_classes)
    limit = DIVERGENCE_FACTOR * max(first_loss, ln_k)
    if train_loss > limit:
        raise errors.TrainingDiverged(
            f"training diverged: method {method}, epoch {epoch}: train loss {train_loss:.3g} (first-step "
            f"loss {first_loss:.3g}, limit {limit:.3g}) at lr {lr:g}; lower train.lr in params.yaml")
    chance = 1.0 / num_classes
    if epoch >= 2 and test_acc <= chance + CHANCE_MARGIN and train_loss >= CHANCE_LOSS * ln_k:
        raise errors.TrainingDiverged(
            f"training diverged: method {method}, epoch {epoch}: test accuracy {test_acc:.3f} is at chance "
            f"(1/{num_classes} = {chance:.3f}) and train loss {train_loss:.3g} is no lower than a uniform "
            f"guess's ({ln_k:.3g}) at lr {lr:g}; lower train.lr in params.yaml")


# ----------------------------------------------------------------------------------------------
# validation
def _check_data(run: config.RunSettings, data, seed, vae) -> ImageData:
    """The run's data subset, after checking what ``train_run`` is given beside the (already checked) run."""
    if not isinstance(run, config.RunSettings):
        raise ValueError(f"run is a {type(run).__name__}: expected a varmix.core.config.RunSettings "
                         f"(Params.run_settings(arm), or RunSettings.of(method, TrainConfig(...)))")
    method, cfg = run.method, run.train
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed = {seed!r} is invalid: expected an integer >= 0")
    if not isinstance(data, ImageData):
        raise ValueError(f"data is a {type(data).__name__}: expected a varmix.learn.data.ImageData")

    d = data.subset(cfg.train_subset, cfg.test_subset)
    k = data.num_classes
    shape = None
    for split, x, y in (("train", d.train_x, d.train_y), ("test", d.test_x, d.test_y)):
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[2] != x.shape[3]:
            raise ValueError(f"{data.name} {split} images: {x.dtype} tensor of shape {tuple(x.shape)}, "
                             f"expected uint8 [N, C, S, S]")
        if shape is not None and tuple(x.shape[1:]) != shape:
            raise ValueError(f"{data.name} test images of shape {tuple(x.shape[1:])} differ from the "
                             f"training images' {shape}")
        shape = tuple(x.shape[1:])
        if y.dtype != torch.int64 or y.shape != (len(x),):
            raise ValueError(f"{data.name} {split} labels: {y.dtype} tensor of shape {tuple(y.shape)}, "
                             f"expected int64 of shape ({len(x)},)")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            raise ValueError(f"wrong number of classes: {data.name} {split} labels range over "
                             f"{int(y.min())}..{int(y.max())}, but the dataset has {k} classes "
                             f"(labels 0..{k - 1})")
    if len(d.train_x) < 2:
        raise ValueError(f"{len(d.train_x)} training image(s) (cfg.train_subset = {cfg.train_subset!r}): "
                         f"expected at least 2")
    if len(d.test_x) < 1:
        raise ValueError(f"no test images (cfg.test_subset = {cfg.test_subset!r}): expected at least 1")
    c, s = shape[0], shape[1]
    if method in VAE_METHODS:
        if vae is None:
            raise ValueError(f"method {method!r} needs a trained VAE (vae=...), got None")
        if not isinstance(vae, nn.Module):
            raise ValueError(f"vae is a {type(vae).__name__}: expected a varmix.learn.vae.ConvVAE")
        vae_shape = (getattr(vae, "in_channels", None), getattr(vae, "image_size", None))
        if vae_shape[0] != c or vae_shape[1] is None:  # only the size may differ (mixing.resize_images)
            raise ValueError(f"the VAE is for {vae_shape[0]}-channel {vae_shape[1]} px images, but "
                             f"{data.name} has {c}-channel {s} px images: the channels must match")
    return d


def _check_resume(state: Any, params: dict, epochs: int, path: Path) -> None:
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a varmix classifier checkpoint (format {found!r}, expected "
                         f"{CHECKPOINT_FORMAT!r}); delete it or choose another out_dir")
    old = state["params"]
    per_method = [k for k in ("epochs", "alpha", "mix_prob") if isinstance(old.get(k), Mapping)]
    if per_method:  # written before RunSettings.record: it recorded every method's settings, not this run's own
        raise ValueError(f"{path} records the settings of every method ({', '.join(per_method)} per method: "
                         f"an older varmix's format), so it cannot be checked to be the same run as this one. "
                         f"Delete the checkpoint (or the folder) to start afresh")
    if params.get("schedule") == "cosine" and old.get("epochs") != params.get("epochs"):
        raise ValueError(f"{path} was trained for {old.get('epochs')!r} epochs on a cosine schedule, "
                         f"and the schedule's length is fixed by its epochs: continuing to {epochs} would not give "
                         f"the same run as training {epochs} from the start. Delete the checkpoint (or the folder) "
                         f"to start afresh")
    for key in sorted(set(old) | set(params)):
        if key == "epochs":  # more (or the same) epochs may continue a run
            continue
        if old.get(key) != params.get(key):
            raise ValueError(
                f"{path} belongs to a different run: {key} = {old.get(key)!r} there, {params.get(key)!r} "
                f"now. Delete the checkpoint (or the folder) to start afresh, or choose another out_dir")
    if state["epoch"] > epochs:
        raise ValueError(f"{path} has already trained {state['epoch']} epochs, more than the "
                         f"cfg.epochs[{params['method']!r}] = {epochs} asked for")


# ----------------------------------------------------------------------------------------------
def train_classifier(method: str, cfg: config.TrainConfig, data: ImageData, out_dir: str | os.PathLike,
                     seed: int, vae: nn.Module | None = None, device: str | torch.device | None = None,
                     progress: bool | None = None, timings: str | os.PathLike | None = None,
                     arm: str | None = None) -> dict:
    """Train ``cfg.arch`` on ``data`` with ``method`` for ``cfg.epochs[method]`` epochs; write the
    trained-model folder (docs/ARCHITECTURE.md) into ``out_dir`` and return a summary dict: the library's
    entry for a method and a TrainConfig built in code (``train_run`` with ``RunSettings.of(method, cfg,
    arm)``, which checks them).

    ``vae`` (a frozen ``varmix.learn.vae.ConvVAE``) is required by mixup_r and varmixup and is moved to
    ``device``. ``progress``: None shows tqdm bars on a TTY only, True/False forces them on/off.
    ``timings``: a JSON file (outside ``out_dir``) for the per-epoch seconds and images/s.
    ``arm``: the study's name for this method + settings (params.yaml's arms; default: the method's name),
    recorded with the run and shown in progress bars and messages."""
    return train_run(config.RunSettings.of(method, cfg, arm), data, out_dir, seed, vae, device, progress, timings)


def train_run(run: config.RunSettings, data: ImageData, out_dir: str | os.PathLike, seed: int,
              vae: nn.Module | None = None, device: str | torch.device | None = None,
              progress: bool | None = None, timings: str | os.PathLike | None = None) -> dict:
    """Train one run (``Params.run_settings(arm)``, or ``RunSettings.of``): its settings as resolved and
    checked there, passed down unchanged (``train_classifier`` says what the other arguments are)."""
    d = _check_data(run, data, seed, vae)
    method, cfg, arm, epochs, alpha = run.method, run.train, run.arm, run.epochs, run.alpha
    adversary = Adversary.from_config(method, cfg.adversarial) if method in ADVERSARIAL_MIXER else None
    dev = resolve_device(device)
    out = Path(out_dir)
    timings_path = io.timings_path(timings, out)
    c, s = int(d.train_x.shape[1]), int(d.train_x.shape[2])
    k = data.num_classes
    build = {"arch": cfg.arch, "in_channels": c, "num_classes": k, "image_size": s,
             "mean": list(data.spec.mean), "std": list(data.spec.std)}
    if len(build["mean"]) != c:  # a dataset whose spec does not match its images
        raise ValueError(f"{data.name}: spec mean {data.spec.mean} has {len(build['mean'])} channel(s), "
                         f"the images have {c}")
    use_vae = method in VAE_METHODS
    params = {**run.record(), "arm": arm, "method": method, "seed": seed, "arch": cfg.arch,
              "dataset": data.name,
              "n_train": len(d.train_x), "n_test": len(d.test_x), "image_shape": [c, s, s],
              "vae_md5": _state_md5(vae) if use_vae else None}

    ckpt_path = out / "checkpoint.pt"
    state = None
    if ckpt_path.exists():
        state = io.load_torch(ckpt_path, "checkpoint")  # a corrupt file -> ValueError naming it
        _check_resume(state, params, epochs, ckpt_path)
    n = len(d.train_x)
    bs = min(cfg.batch_size, n)
    starts = [i for i in range(0, n, bs) if n - i >= 2]  # drop a last batch of one image
    nproc = distributed.resolve_processes(cfg.processes, dev)
    distributed.check_batches(nproc, [min(bs, n - i) for i in starts], bs, n)
    if nproc > 1 and not distributed.in_worker():  # start torchrun's workers, each runs this function
        # (the data as clones: torch.save would write a subset's whole underlying storage)
        data_only = ImageData(d.name, *(t.clone() for t in (d.train_x, d.train_y, d.test_x, d.test_y)))
        return _launch(nproc, out, timings_path, state, dev, dict(
            run=run, data=data_only, out_dir=str(out), seed=seed, vae=vae, device=dev.type, progress=progress))
    shard, dev = distributed.join(dev)  # a torchrun worker: its slice of every batch; else None

    # ---- set up (everything above was checking)
    distributed.on_main(shard, io.remove_stale_temps, out)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(**build)
    channels_last = cfg.channels_last
    if shard is not None:
        model = distributed.sync_batchnorm(model, dev)
    model.to(dev, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer, scheduler = make_optimizer(cfg, model, dev, epochs, len(starts))
    gens = {name: torch.Generator().manual_seed(_data_seed(seed, i)) for i, name in enumerate(GENERATORS)}
    if adversary is not None:  # a stream of its own: the other streams (and the other arms) stay as they were
        gens[ATTACK_GENERATOR] = torch.Generator().manual_seed(_data_seed(seed, ATTACK_STREAM))
    history: list[dict] = []
    start_epoch = 0
    first_loss = None  # the first step's loss (the untrained model's): divergence is measured against it
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for name, g in gens.items():
            g.set_state(state["generators"][name])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        first_loss = float(state.get("first_loss", history[0]["train_loss"]))
    times = io.read_epoch_timings(timings_path, start_epoch)
    distributed.on_main(shard, io.write_json, out / "params.json", params)
    stepper = model if shard is None else distributed.wrap(model, dev)  # what train_step passes batches to

    if use_vae:
        vae = vae.to(dev).eval()
    mixer = mixing.make_mixer(ADVERSARIAL_MIXER.get(method, method), num_classes=k, alpha=alpha,
                              vae=vae if use_vae else None,
                              layers=cfg.manifold_layers, prob=run.mix_prob)
    loss_name = loss_for(method, cfg)
    amp = cfg.amp and dev.type == "cuda"
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    pad = crop_padding(s) if cfg.augment else None
    train_x, train_y = d.train_x.to(dev), d.train_y.to(dev)
    test_x, test_y = d.test_x.to(dev), d.test_y
    n_seen = sum(min(bs, n - i) for i in starts)
    check_each_step = dev.type == "cpu"  # a host sync is free on the CPU; on CUDA check once per epoch

    disable = _tqdm_disable(progress) if shard is None or shard.rank == 0 else True
    logits = None
    epoch_bar = tqdm(range(start_epoch + 1, epochs + 1), desc=f"{arm} seed {seed}", unit="epoch",
                     initial=start_epoch, total=epochs, disable=disable)
    for epoch in epoch_bar:
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        perm = torch.randperm(n, generator=gens["order"]).to(dev)
        loss_sum = torch.zeros((), device=dev)
        first_bad = torch.full((), -1, device=dev, dtype=torch.long)
        first_step = None
        t0 = time.perf_counter()
        for step, i in enumerate(tqdm(starts, desc=f"epoch {epoch}", unit="batch", leave=False,
                                      disable=disable), start=1):
            idx = perm[i:i + bs]
            loss = train_step(stepper, optimizer, mixer, train_x[idx], train_y[idx], gens["mix"], pad=pad,
                              amp=amp, channels_last=channels_last, loss=loss_name, aug_gen=gens["augment"],
                              adversary=adversary, attack_gen=gens.get(ATTACK_GENERATOR), shard=shard)
            scheduler.step()
            if check_each_step:
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{method}: training loss is {loss.item()} at epoch {epoch}, "
                                             f"step {step} of {len(starts)} (lr {lr:g})")
            else:
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss),
                                        torch.full_like(first_bad, step), first_bad)
            if shard is not None:  # the slice's share of the global batch's mean (summed over processes below)
                lo, hi = shard.bounds(len(idx))
                loss = loss * ((hi - lo) / len(idx))
            if first_step is None:
                first_step = loss
            loss_sum += loss * len(idx)
        if shard is not None:  # the global batches' losses: every process records and checks the same
            loss_sum, first_step = shard.sum(torch.stack([loss_sum, first_step]))
        train_loss = loss_sum.item() / n_seen  # one host sync per epoch
        seconds = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"{method}: training loss is {train_loss} at epoch {epoch}, first at "
                                     f"step {int(first_bad)} of {len(starts)} (lr {lr:g})")
        if first_loss is None:
            first_loss = float(first_step)
        logits, test_loss, test_acc = _evaluate(model, test_x, test_y, dev)
        check_divergence(method, epoch, train_loss, first_loss, test_acc, k, lr)
        history.append({"epoch": epoch, "train_loss": train_loss, "test_loss": test_loss,
                        "test_acc": test_acc, "lr": lr})
        times.append({"epoch": epoch, "seconds": seconds, "images_per_s": n_seen / seconds})
        if timings_path is not None:  # before the checkpoint: a resumed run keeps the epochs it continues
            distributed.on_main(shard, io.write_json, timings_path, times)
        distributed.on_main(shard, _save_checkpoint, ckpt_path, {
            "format": CHECKPOINT_FORMAT, "params": params, "epoch": epoch,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "generators": {k: g.get_state() for k, g in gens.items()},
            "history": history,
            "first_loss": first_loss})
        distributed.on_main(shard, io.write_json, out / "history.json", history)
        epoch_bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{test_acc:.3f}")
    epoch_bar.close()

    if logits is None:  # nothing left to train: the checkpoint was already at the last epoch
        logits, test_loss, test_acc = _evaluate(model, test_x, test_y, dev)
        distributed.on_main(shard, io.write_json, out / "history.json", history)
    distributed.on_main(shard, io.save_torch, out / "model.pt", {
        "format": MODEL_FORMAT, "build": build, "arm": arm, "method": method, "seed": seed, "dataset": data.name,
        "epochs": epochs, "state_dict": {k_: v.detach().cpu().contiguous() for k_, v in model.state_dict().items()}})
    distributed.on_main(shard, io.write_npy, out / "test_logits.npy", logits.numpy().astype(np.float32))
    distributed.on_main(shard, io.write_npy, out / "test_labels.npy", test_y.numpy().astype(np.int64))
    if shard is not None:  # every process returns once rank 0 has written everything
        shard.barrier()
    run = {"arm": arm, "method": method, "seed": seed, "arch": cfg.arch, "dataset": data.name, "epochs": epochs}
    return _summary(run, start_epoch, history[-1]["train_loss"], test_loss, test_acc, times, dev, out)


def _summary(run: Mapping, resumed_from: int, train_loss: float, test_loss: float, test_acc: float,
             times: list[dict], dev: torch.device, out: Path) -> dict:
    """What ``train_classifier`` returns, in one process or several."""
    return {**{k: run[k] for k in ("arm", "method", "seed", "arch", "dataset", "epochs")},
            "resumed_from_epoch": resumed_from, "train_loss": train_loss, "test_loss": test_loss,
            "test_acc": test_acc, "seconds": sum(t["seconds"] for t in times),
            "images_per_s": times[-1]["images_per_s"] if times else None, "device": str(dev), "out_dir": str(out)}


def _launch(nproc: int, out: Path, timings_path: Path | None, state: dict | None, dev: torch.device,
            call: dict) -> dict:
    """``train_classifier``'s run in ``nproc`` torchrun workers (``distributed.launch``), and its summary,
    read from the files rank 0 wrote (history.json, params.json, the timings: a temporary file when the
    caller gave none)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="varmix-timings-") as tmp:
        timings = timings_path or Path(tmp) / "timings.json"
        distributed.launch(nproc, {**call, "timings": str(timings)})
        times = io.read_epoch_timings(timings, 10**9)
    history, params = io.read_json(out / "history.json"), io.read_json(out / "params.json")
    last = history[-1]
    return _summary(params, 0 if state is None else int(state["epoch"]), last["train_loss"], last["test_loss"],
                    last["test_acc"], times, dev, out)


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dev: torch.device):
    """The test pass after each epoch, on an eval-mode ``inference_copy`` of ``model``: its max-pooling gives
    ``nn.MaxPool2d``'s bits faster (docs/benchmarks.md), so the logits and the history are those of ``model``
    itself; ``model`` keeps its mode."""
    was_training = model.training
    copy = inference_copy(model.eval())
    model.train(was_training)
    logits = predict_logits(copy, x, EVAL_BATCH_SIZE, dev)
    loss = F.cross_entropy(logits, y).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    return logits, loss, acc


# ----------------------------------------------------------------------------------------------
def load_classifier(out_dir: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The trained model of a ``train_classifier`` folder, in eval mode on ``device``."""
    model = io.load_module_state("varmix.learn.train", Path(out_dir) / "model.pt", "trained model",
                                 MODEL_FORMAT, lambda obj: build_model(**obj["build"]))
    return model.to(resolve_device(device)).eval()


def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE,
                   device: str | torch.device | None = None) -> torch.Tensor:
    """Logits (float32 [N, K] on the CPU) of ``model`` in eval mode for images ``x``: uint8 [N, C, H, W]
    or float in [0, 1]. Batches go to ``device`` (default: the model's device; a given device moves the
    model there). Runs in fp32 without grad; the model's train/eval mode is restored afterwards."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not (x.dtype == torch.uint8 or x.is_floating_point()):
        desc = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x is a {desc}: expected images [N, C, H, W], uint8 or float in [0, 1]")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size = {batch_size!r} is invalid: expected an integer >= 1")
    if device is None:
        dev = next(model.parameters()).device
    else:
        dev = resolve_device(device)
        model.to(dev)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size].to(dev)
                xb = to_float(xb) if xb.dtype == torch.uint8 else xb.float()
                out.append(model(xb).float().cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0, getattr(model, "num_classes", 0), dtype=torch.float32)
    return torch.cat(out)


def worker_main(spec_path: str | os.PathLike) -> int:
    """``python -m varmix train-worker SPEC``, one torchrun worker: ``launch``'s call with its settings."""
    spec = torch.load(spec_path, map_location="cpu", weights_only=False)
    if not isinstance(spec, dict) or spec.get("format") != distributed.SPEC_FORMAT:
        raise ValueError(f"{spec_path} is not a varmix training spec (expected format {distributed.SPEC_FORMAT!r})")
    s = spec["settings"]
    torch.set_num_threads(s["threads"])
    torch.backends.mkldnn.enabled = s["mkldnn"]
    torch.use_deterministic_algorithms(s["deterministic"], warn_only=True)
    try:
        train_run(**spec["call"])
    finally:
        distributed.destroy()
    return 0
