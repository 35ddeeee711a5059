"""How far each mixer's training images lie from the data: FID and KID against the training images.

The paper measures its mixed samples with FID and KID (CIFAR-10: Mixup ~17.6 / 0.013, VarMixup ~33 /
0.030): VarMixup's images are further from the data, yet train more robust models. Both distances here
are torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance``, given a feature extractor:

- ``"classifier"`` (the default, ``ClassifierFeatures``): the penultimate layer (the pooled features the
  last linear layer reads) of a classifier the pipeline trains itself (``train_feature_classifier``: an
  ERM small CNN on real training images). Inception-v3's weights cannot be downloaded on our machines, and
  Inception was trained on 299 px ImageNet photographs, not 28 px clothes. The scale and meaning of these
  features differ from Inception's, so the numbers are **not comparable with the paper's**; they order
  the mixers on one scale.
- ``"inception"``: torchmetrics' default, Inception-v3's 2048 pool features (needs torch-fidelity and the
  weights, which it downloads on first use). Grey images are repeated to three channels.

The mixed images come from ``varmix.learn.mixing``'s own mixers (``mixed_samples``), batch by batch as the
trainer mixes them, so what is measured is what the classifiers train on. Manifold Mixup is left out: it
mixes hidden states, not images. ERM does not mix.
"""

from __future__ import annotations

import copy
import importlib.util
import numbers
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from varmix.core.config import VAEConfig
from varmix.core.errors import UserError
from varmix.core.names import FID_FEATURES
from varmix.learn.data import ImageData
from varmix.learn.mixing import make_mixer, vae_reconstruct
from varmix.learn.models import MixableClassifier

SAMPLE_METHODS = ("mixup", "mixup_r", "varmixup", "cutmix")  # the mixers whose outputs are images
INCEPTION_FEATURES = 2048  # torchmetrics' default: Inception-v3's pool features
FEATURES_DIR = "fid_features"  # the feature classifier's folder inside the VAE's run folder
KID_SUBSET_SIZE = 1000  # torchmetrics' (and Binkowski et al.'s) subset size, capped at half the images
KID_SUBSETS = 100       # torchmetrics' number of subsets


class InceptionUnavailable(UserError, RuntimeError):
    """``fid_features: inception`` was asked for where torch-fidelity (or Inception's weights) is missing."""


class ClassifierFeatures(nn.Module):
    """A feature extractor for torchmetrics' FID/KID from a varmix classifier: float images
    ``[N, C, H, W]`` in [0, 1] -> float64 features ``[N, num_features]``, the input of the classifier's
    last linear layer. It holds a frozen copy of the classifier and stays in eval mode (batch norm uses
    its running statistics, so an image's features do not depend on its batch).

    ``num_features`` tells torchmetrics the feature size (otherwise FID probes the module with a 3 x 299 x
    299 image). The output is float64, in which torchmetrics' FID keeps its sums anyway, so KID's kernel
    sums are float64 too (with the smoke profile's features float32 moved KID by under 1e-4 relative)."""

    def __init__(self, model: MixableClassifier):
        super().__init__()
        if not isinstance(model, MixableClassifier) or not isinstance(model.head, nn.Linear):
            raise ValueError(f"model is a {type(model).__name__}: expected a varmix classifier "
                             f"(varmix.learn.models.build_model) whose head is one linear layer")
        body = copy.deepcopy(model)
        body.head = nn.Identity()
        self.body = body.requires_grad_(False)
        self.num_features = int(model.head.in_features)
        self.in_channels = int(model.in_channels)
        self.eval()

    def train(self, mode: bool = True) -> "ClassifierFeatures":
        return super().train(False)  # always eval mode, as torchmetrics' own Inception wrapper

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point() or x.shape[1] != self.in_channels:
            desc = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"images are {desc}: expected float images [N, {self.in_channels}, H, W] in [0, 1]")
        with torch.no_grad():
            return self.body(x.float()).double()


def feature_extractor(name: str, model: MixableClassifier | None = None) -> nn.Module | int:
    """What torchmetrics' ``feature=`` gets for ``name`` (one of names.FID_FEATURES): a
    ``ClassifierFeatures`` of ``model`` for ``"classifier"``, ``INCEPTION_FEATURES`` for ``"inception"``
    (an ``InceptionUnavailable`` error when torch-fidelity is not installed)."""
    if name not in FID_FEATURES:
        raise ValueError(f"fid_features = {name!r} is unknown: expected one of {', '.join(FID_FEATURES)}")
    if name == "inception":
        if importlib.util.find_spec("torch_fidelity") is None:
            raise InceptionUnavailable(
                "fid_features = 'inception' needs torch-fidelity, which is not installed: `pip install "
                "torch-fidelity` (it downloads Inception-v3's weights on first use, so the machine must be "
                "online once), or set vae.fid_features: classifier in params.yaml")
        return INCEPTION_FEATURES
    if model is None:
        raise ValueError("fid_features = 'classifier' needs the trained classifier: model is None")
    return ClassifierFeatures(model)


def train_feature_classifier(data: ImageData, cfg: VAEConfig, out_dir: str | Path, seed: int = 0,
                             device: str | torch.device | None = None, augment: bool = True,
                             progress: bool | None = None,
                             timings: str | Path | None = None) -> tuple[ClassifierFeatures, dict]:
    """The ``"classifier"`` features: an ERM small CNN with the gate probe's settings
    (``varmix.learn.gate.probe_config``: Adam lr 1e-3, batch 128, ``cfg.probe_epochs`` epochs) trained on the
    first ``cfg.probe_subset`` **real** training images of ``data`` (``varmix.learn.train.train_classifier``;
    ``out_dir`` is its trained-model folder, which resumes and is reused like any run). Returns the
    extractor and the trainer's summary (its ``test_acc``, on the first ``cfg.fid_samples`` test images,
    says how good the features are)."""
    from varmix.learn.gate import probe_config
    from varmix.learn.train import load_classifier, train_classifier

    if not isinstance(data, ImageData):
        raise ValueError(f"data is a {type(data).__name__}: expected a varmix.learn.data.ImageData")
    # tested on the first fid_samples test images only: evaluating all 10,000 every epoch more than doubled
    # its time on the smoke settings (1,024 training images, one thread: 12.1 s, against 2.2-4.9 s with 256)
    summary = train_classifier("erm", probe_config(cfg, augment),
                               data.subset(train=cfg.probe_subset, test=cfg.fid_samples), out_dir, seed,
                               device=device, progress=progress, timings=timings)
    return ClassifierFeatures(load_classifier(out_dir, device or "cpu")), summary


# ----------------------------------------------------------------------------------------------
# the mixed images
def mixed_samples(x: Tensor, y: Tensor, gen: torch.Generator, *, num_classes: int,
                  methods: Sequence[str] = SAMPLE_METHODS, alpha: float | Mapping[str, float] = 1.0,
                  vae: Any = None, batch_size: int = 128) -> dict[str, Tensor]:
    """Each method's training images for the images ``x`` (float [N, C, H, W] in [0, 1]) with labels
    ``y``: ``x`` is cut into batches of ``batch_size`` in order (a last batch of one image joins the one
    before: mixing needs a partner) and each batch is mixed by ``varmix.learn.mixing.make_mixer(method)``, as the
    trainer does (one lambda ~ Beta(alpha, alpha) and one partner permutation per batch).

    Paired: one seed per batch is drawn from ``gen`` (one draw of ``gen`` per call), and every method
    mixes batch b from a generator seeded with it, so all methods mix the same pairs at the same lambda
    (CutMix then sets lambda to the kept area of its box). ``alpha`` is one value or one per method (the
    profile's ``train.alpha``); ``vae`` is needed by mixup_r and varmixup. Returns {method: images}."""
    if isinstance(methods, str) or not isinstance(methods, Sequence) or not methods:
        raise ValueError(f"methods = {methods!r} is invalid: expected a non-empty list of {', '.join(SAMPLE_METHODS)}")
    for m in methods:
        if m not in SAMPLE_METHODS:
            raise ValueError(f"method {m!r} has no mixed images to measure: expected one of "
                             f"{', '.join(SAMPLE_METHODS)} (manifold_mixup mixes hidden states, erm does not mix)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size = {batch_size!r} is invalid: expected an integer >= 2")
    _check_images("x", x)
    if len(x) < 2:
        raise ValueError(f"x holds {len(x)} image(s): mixing needs at least 2")
    if not isinstance(gen, torch.Generator) or gen.device.type != "cpu":
        raise ValueError(f"gen = {gen!r} is invalid: expected a CPU torch.Generator")
    alphas = alpha if isinstance(alpha, Mapping) else {m: alpha for m in methods}
    missing = [m for m in methods if m not in alphas]
    if missing:
        raise ValueError(f"alpha has no value for {missing[0]!r}: expected one number or one per method")
    mixers = {m: make_mixer(m, num_classes=num_classes, alpha=alphas[m],
                            vae=vae if m in ("mixup_r", "varmixup") else None) for m in methods}
    starts = list(range(0, len(x), batch_size))
    if len(x) - starts[-1] == 1:
        starts.pop()
    bounds = list(zip(starts, starts[1:] + [len(x)]))
    seeds = torch.randint(2**62, (len(bounds),), generator=gen).tolist()
    out = {}
    for m, mixer in mixers.items():
        parts = [mixer(x[a:b], y[a:b], torch.Generator().manual_seed(sd)).x for (a, b), sd in zip(bounds, seeds)]
        out[m] = torch.cat(parts)
    return out


# ----------------------------------------------------------------------------------------------
# the distances
def _check_images(name: str, x: Any) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        desc = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} is {desc}: expected float images [N, C, H, W] in [0, 1]")
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"{name} has values in [{lo:.4g}, {hi:.4g}]: expected images in [0, 1]")


def _positive(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{name} = {v!r} is invalid: expected an integer >= {lo}")
    return int(v)


def distances(real: Tensor, samples: Mapping[str, Tensor], feature: nn.Module | int, *,
              subsets: int = KID_SUBSETS, subset_size: int | None = None, seed: int = 0, batch_size: int = 500,
              device: str | torch.device | None = None) -> pd.DataFrame:
    """FID and KID of each image set in ``samples`` against the images ``real`` (float [N, C, H, W] in
    [0, 1], the same C, H, W), in the features ``feature`` (``feature_extractor``'s result).

    ``real``'s features are computed once (torchmetrics' ``reset_real_features=False``). KID averages
    ``subsets`` draws of ``subset_size`` images per side (default: 1000, or half the smallest set if
    that is less, so that the subsets differ and ``kid_std`` shows their spread; more than the smallest
    set is an error: the subsets are drawn without replacement); its draws use torch's global
    RNG inside torchmetrics, so they run under ``torch.random.fork_rng`` seeded with ``seed``: the same
    inputs give the same numbers and the caller's RNG is left alone. Returns a DataFrame with one row per
    set: samples, n, fid, kid_mean, kid_std (plain floats)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    _check_images("real", real)
    if not isinstance(samples, Mapping) or not samples:
        raise ValueError(f"samples is a {type(samples).__name__}: expected a non-empty mapping name -> images")
    for name, x in samples.items():
        _check_images(f"samples[{name!r}]", x)
        if x.shape[1:] != real.shape[1:]:
            raise ValueError(f"samples[{name!r}] has images of shape {tuple(x.shape[1:])}, the real images "
                             f"{tuple(real.shape[1:])}: expected the same shape")
    inception = not isinstance(feature, nn.Module)
    if inception and (isinstance(feature, bool) or feature != INCEPTION_FEATURES):
        raise ValueError(f"feature = {feature!r} is invalid: expected a feature module (feature_extractor("
                         f"'classifier', model)) or {INCEPTION_FEATURES} (Inception-v3's pool features)")
    channels = getattr(feature, "in_channels", None)
    if channels is not None and real.shape[1] != channels:
        raise ValueError(f"images with {real.shape[1]} channel(s) given to features for {channels}-channel images")
    if inception and real.shape[1] not in (1, 3):
        raise ValueError(f"images with {real.shape[1]} channels: Inception-v3 takes 1 (repeated) or 3")
    subsets = _positive("subsets", subsets, 1)
    batch_size = _positive("batch_size", batch_size, 1)
    smallest = min(len(real), *(len(x) for x in samples.values()))
    if smallest < 2:
        raise ValueError(f"a set of {smallest} image(s): FID and KID need at least 2 images per set")
    if subset_size is None:  # half the smallest set at most: subsets of a whole set would all be equal
        subset_size = max(2, min(KID_SUBSET_SIZE, smallest // 2))
    subset_size = _positive("subset_size", subset_size, 2)
    if subset_size > smallest:
        raise ValueError(f"subset_size = {subset_size} is larger than the smallest set ({smallest} images): "
                         f"KID draws subsets without replacement; expected at most {smallest}")
    dev = torch.device(device or "cpu")

    # normalize=True: torchmetrics turns [0, 1] floats into the uint8 its Inception takes; a custom module
    # gets the floats unchanged
    kw = {"reset_real_features": False, "normalize": True}
    if inception:
        feature = feature_extractor("inception")  # torch-fidelity present (a clear error otherwise)
    fid = FrechetInceptionDistance(feature=feature, **kw).to(dev)
    with warnings.catch_warnings():  # "will save all extracted features in buffer": a few MB here
        warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance` will save")
        kid = KernelInceptionDistance(feature=feature, subsets=subsets, subset_size=subset_size, **kw).to(dev)

    def update(x: Tensor, real_side: bool) -> None:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(dev)
            if inception and xb.shape[1] == 1:
                xb = xb.expand(-1, 3, -1, -1)
            fid.update(xb, real=real_side)
            kid.update(xb, real=real_side)

    update(real, True)
    rows = []
    for name, x in samples.items():
        update(x, False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            kid_mean, kid_std = kid.compute()
        rows.append({"samples": name, "n": len(x), "fid": float(fid.compute()),
                     "kid_mean": float(kid_mean), "kid_std": float(kid_std)})
        fid.reset()
        kid.reset()
    return pd.DataFrame(rows, columns=["samples", "n", "fid", "kid_mean", "kid_std"])


def distance(real: Tensor, fake: Tensor, feature: nn.Module | int, **kwargs: Any) -> dict[str, float]:
    """FID and KID of the images ``fake`` against ``real`` (``distances`` with one set): a dict with
    fid, kid_mean, kid_std."""
    row = distances(real, {"fake": fake}, feature, **kwargs).iloc[0]
    return {k: float(row[k]) for k in ("fid", "kid_mean", "kid_std")}


# ----------------------------------------------------------------------------------------------
# the pipeline's use (notebooks/01_vae.ipynb)
def fid_features(cfg: VAEConfig, data: ImageData, out_dir: str | Path, seed: int = 0,
                 device: str | torch.device | None = None, augment: bool = True, progress: bool | None = None,
                 timings: str | Path | None = None) -> tuple[nn.Module | int, dict[str, Any]]:
    """The features ``cfg.fid_features`` names, and what to record about them: for ``"classifier"``
    the extractor of ``train_feature_classifier`` (trained into ``out_dir``) and its clean test accuracy;
    for ``"inception"`` ``INCEPTION_FEATURES`` (nothing is trained)."""
    if not isinstance(cfg, VAEConfig):
        raise ValueError(f"cfg is a {type(cfg).__name__}: expected a varmix.core.config.VAEConfig")
    if cfg.fid_features == "inception":
        return feature_extractor("inception"), {"fid_features": "inception"}
    feature, summary = train_feature_classifier(data, cfg, out_dir, seed, device, augment, progress, timings)
    return feature, {"fid_features": "classifier", "fid_feature_classifier_accuracy": summary["test_acc"],
                     "fid_feature_classifier_test_images": min(cfg.fid_samples, len(data.test_x)),
                     "fid_feature_classifier_images": min(cfg.probe_subset, len(data.train_x)),
                     "fid_feature_classifier_epochs": cfg.probe_epochs}


def mixer_distances(train_x: Tensor, train_y: Tensor, test_x: Tensor, feature: nn.Module | int,
                    gen: torch.Generator, *, num_classes: int, vae: Any = None,
                    methods: Sequence[str] = SAMPLE_METHODS, alpha: float | Mapping[str, float] = 1.0,
                    batch_size: int = 128, seed: int = 0,
                    device: str | torch.device | None = None) -> pd.DataFrame:
    """FID and KID against the training images ``train_x`` (uint8 as stored, labels ``train_y``) of:
    the test images ``test_x`` (real images none of the sets was made from: the floor of both distances at
    this number of images), the VAE's reconstructions of ``train_x`` (where Mixup-R and VarMixup start;
    with a ``vae``), and each mixer's images (``mixed_samples`` of ``train_x``, drawn from ``gen``).
    ``distances``'s table, in that order."""
    from varmix.learn.data import to_float

    for name, x in (("train_x", train_x), ("test_x", test_x)):
        if not isinstance(x, Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
            desc = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} is {desc}: expected uint8 images [N, C, H, W] as the datasets store them")
    dev = torch.device(device or "cpu")
    real = to_float(train_x.to(dev))
    sets = {"test images": to_float(test_x.to(dev))}
    if vae is not None:
        with torch.no_grad():
            sets["VAE reconstructions"] = torch.cat([vae_reconstruct(vae, real[i:i + batch_size])
                                                     for i in range(0, len(real), batch_size)])
    sets.update(mixed_samples(real, train_y.to(dev), gen, num_classes=num_classes, methods=methods,
                              alpha=alpha, vae=vae, batch_size=batch_size))
    return distances(real, sets, feature, seed=seed, device=dev)
