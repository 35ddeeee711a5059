"""params.yaml: loaded and validated in one place.

``load_params()`` reads params.yaml, picks the profile named by its ``profile`` key and returns one frozen
``Params`` object. Every problem (unknown key, unknown dataset or method, value out of range) raises
``ConfigError`` naming the key path, the bad value and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from varmix.errors import UserError

# Names shared by the whole library (the modules that implement them check they agree).
DATASETS = ("fashion-mnist", "cifar10", "cifar100", "tiny-imagenet")
# The vicinal methods (varmix.mixing's mixers) and the paper's adversarial baselines (varmix.attacks; the
# trainer runs them: at = Madry et al.'s PGD training, trades = Zhang et al., iat = Lamb et al.'s
# interpolated adversarial training, whose mixing is mixup's).
VICINAL_METHODS = ("erm", "mixup", "mixup_r", "manifold_mixup", "cutmix", "varmixup")
ADVERSARIAL_METHODS = ("at", "trades", "iat")
METHODS = VICINAL_METHODS + ADVERSARIAL_METHODS
VAE_METHODS = ("mixup_r", "varmixup")  # the methods that need the frozen VAE
ARCHS = ("small_cnn", "preact_resnet18", "resnet34")
# Mixable layers per architecture for manifold mixup: the input + one per stage (varmix.models builds them).
NUM_MIX_LAYERS = {"small_cnn": 4, "preact_resnet18": 5, "resnet34": 5}
assert set(NUM_MIX_LAYERS) == set(ARCHS)
PROFILES = ("smoke", "default", "paper")
SCHEDULES = ("constant", "step", "cosine")  # see TrainConfig.schedule (varmix.train.make_optimizer)
# An arm's name: lower-case letters, digits and underscores, starting with a letter (it names folders and
# metrics keys "<arm>-s<seed>").
ARM_NAME = r"[a-z][a-z0-9_]*"
CPU_KERNELS = ("portable", "fast")  # see Profile.cpu_kernels
MANIFOLD_LOSSES = ("soft_ce", "bce_softmax")  # see TrainConfig.manifold_loss (varmix.mixing.mixed_loss)
FID_FEATURES = ("classifier", "inception")  # see VAEConfig.fid_features (varmix.sample_distance)
# The 15 benchmark corruptions of CIFAR-10-C (Hendrycks & Dietterich), then the 4 extras.
BENCHMARK_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "saturate", "spatter")
CORRUPTIONS = BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS

# Upper bounds: far above any setting that makes sense on today's hardware, low enough that a typo (an
# extra zero, 1e12) stops here with a message instead of as a terabyte allocation or a run that never ends.
MAX_LATENT_DIM = 4096
MAX_WIDTH = 1024            # base number of conv channels (the paper profile uses 64)
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_SUBSET = 10_000_000     # images; the largest supported dataset has 100,000 training images
MAX_STEPS = 10_000          # linearity_steps, ece_bins, milestones (epochs)
MAX_SURFACE_POINTS = 1_001  # per axis: points**2 loss evaluations
MAX_SEED = 2**32 - 1        # numpy's seed range
MAX_THREADS = 1024
MAX_BETA = 1_000.0          # TRADES's beta (Zhang et al. use 1 to 6)
MAX_PROCESSES = 1024        # training processes per node (varmix.distributed)


class ConfigError(ValueError):
    """A params.yaml value is missing, unknown or out of range."""


class TrainingDiverged(UserError, RuntimeError):
    """Training blew up with finite numbers (a loss far above its start, accuracy at chance): a setting,
    usually the learning rate, is too large. Raised by varmix.train and varmix.vae; the message names the
    run, the epoch, the loss, the lr and the params.yaml key to lower."""


class VAEBelowGate(UserError, RuntimeError):
    """The trained VAE misses a quality gate (vae.min_psnr, vae.min_recon_accuracy): VarMixup would train
    on decodes too far from the data. Raised by varmix.vae.check_gate; the message names the measured
    value, the threshold, the params.yaml key and what to change."""


# ----------------------------------------------------------------------------------------------
# small checkers: each names the key path, the value and what is allowed
def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"params: {key} = {value!r} is invalid: expected {allowed}")


def _int(key: str, v: Any, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(key, v, "an integer" + _range(lo, hi))
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise _fail(key, v, "an integer" + _range(lo, hi))
    return v


def _num(key: str, v: Any, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False, hi_open: bool = False) -> float:
    if isinstance(v, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _fail(key, v, "a number" + _range(lo, hi, lo_open, hi_open))
    v = float(v)
    bad = (lo is not None and (v <= lo if lo_open else v < lo)) or (
        hi is not None and (v >= hi if hi_open else v > hi))
    if not math.isfinite(v):  # NaN, .inf, -.inf
        raise _fail(key, v, "a finite number" + _range(lo, hi, lo_open, hi_open))
    if bad:
        raise _fail(key, v, "a number" + _range(lo, hi, lo_open, hi_open))
    return v


def _range(lo, hi, lo_open=False, hi_open=False) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
    return (" " + " and ".join(parts)) if parts else ""


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _fail(key, v, "true or false")
    return v


def _choice(key: str, v: Any, allowed: tuple[str, ...]) -> str:
    if v not in allowed:
        raise _fail(key, v, "one of " + ", ".join(allowed))
    return v


def _arm_name(key: str, v: Any, allowed: tuple[str, ...], other: str = "") -> str:
    if v not in allowed:
        names = ", ".join(sorted(allowed))
        raise _fail(key, v, f"one of the {other}arms ({names})" if key.startswith("comparisons")
                    else f"an arm declared in arm_settings or named after a method ({names})")
    return v


def _opt_int(key: str, v: Any, lo: int = 1, hi: int | None = None) -> int | None:
    return None if v is None else _int(key, v, lo, hi)


def _list(key: str, v: Any, nonempty: bool = True) -> list:
    if not isinstance(v, list) or (nonempty and not v):
        raise _fail(key, v, "a non-empty list" if nonempty else "a list")
    return v


def _check_keys(key: str, section: Any, cls: type) -> Mapping[str, Any]:
    if not isinstance(section, Mapping):
        raise _fail(key, section, f"a mapping with keys {', '.join(_fields(cls))}")
    known = set(_fields(cls))
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(
            f"params: unknown key {key}.{unknown[0]}; allowed keys in {key}: {', '.join(sorted(known))}")
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(section))
    if missing:
        raise ConfigError(f"params: missing key {key}.{missing[0]}")
    return section


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _per_method(key: str, v: Any, check) -> dict[str, Any]:
    """A value given per method: either one value for all, or a mapping method -> value."""
    if isinstance(v, Mapping):
        unknown = sorted(set(v) - set(METHODS))
        if unknown:
            raise _fail(f"{key}.{unknown[0]}", v[unknown[0]], "a key among methods " + ", ".join(METHODS))
        missing = [m for m in METHODS if m not in v]
        if missing:
            raise ConfigError(f"params: missing key {key}.{missing[0]} (give a value for every method)")
        return {m: check(f"{key}.{m}", v[m]) for m in METHODS}
    return {m: check(key, v) for m in METHODS}


# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VAEConfig:
    """The MMD-VAE (InfoVAE). The paper leaves architecture, latent size and gamma open.

    The gate (varmix.vae.check_gate; None switches a check off): ``min_psnr`` (dB, test set, as
    varmix.vae.reconstruction_metrics) and ``min_recon_accuracy`` (clean test accuracy of the probe: a
    classifier trained only on the VAE's reconstructions of the first ``probe_subset`` training images
    for ``probe_epochs`` epochs, varmix.vae.recon_probe).

    ``dataset``: the dataset the VAE trains on (None: the classifier's, params.yaml's ``dataset``); its
    images must have the classifier data's shape (varmix.pipeline.Session.load_vae_data checks it).
    ``fid_features``/``fid_samples``: how far the mixers' images are from the data
    (varmix.sample_distance): FID/KID over ``fid_samples`` training images and as many mixed ones, in
    the features of ``classifier`` (an ERM small CNN trained with the probe's settings on real images)
    or ``inception`` (torchmetrics' Inception-v3; needs torch-fidelity and its weights).
    ``adversarial``: None (absent or null in params.yaml) trains the plain VAE; an ``AdversarialVAEConfig``
    trains adv-VarMixup's VAE on PGD-attacked batches (varmix.vae.train_vae)."""

    latent_dim: int = 16
    objective: str = "mmd"          # mmd (the paper's InfoVAE) | kl (beta-VAE ablation)
    gamma: float = 100.0            # weight of MMD(q(z) || N(0, I))
    beta: float = 1.0               # weight of KL for the kl ablation
    likelihood: str = "bce"         # bce | mse reconstruction term
    width: int = 32                 # base number of conv channels
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"   # constant | cosine (per step, from lr to 0 over all epochs)
    train_subset: int | None = None  # first N training images (None: all)
    min_psnr: float | None = None            # dB; None: no PSNR gate
    min_recon_accuracy: float | None = None  # in [0, 1]; None: no probe gate
    probe_epochs: int = 3
    probe_subset: int = 10_000
    dataset: str | None = None      # None: the classifier's dataset
    fid_features: str = "classifier"  # classifier | inception
    fid_samples: int = 1000
    # adv-VarMixup's adversarially trained VAE (AdversarialVAEConfig); None: the plain VAE
    adversarial: "AdversarialVAEConfig | None" = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str) -> "VAEConfig":
        d = _check_keys(key, d, cls)
        g = lambda k: d.get(k, getattr(cls, k))  # noqa: E731
        opt_num = lambda k, lo, hi: None if g(k) is None else _num(f"{key}.{k}", g(k), lo, hi)  # noqa: E731
        return cls(
            latent_dim=_int(f"{key}.latent_dim", g("latent_dim"), 1, MAX_LATENT_DIM),
            objective=_choice(f"{key}.objective", g("objective"), ("mmd", "kl")),
            gamma=_num(f"{key}.gamma", g("gamma"), 0),
            beta=_num(f"{key}.beta", g("beta"), 0),
            likelihood=_choice(f"{key}.likelihood", g("likelihood"), ("bce", "mse")),
            width=_int(f"{key}.width", g("width"), 1, MAX_WIDTH),
            epochs=_int(f"{key}.epochs", g("epochs"), 1, MAX_EPOCHS),
            batch_size=_int(f"{key}.batch_size", g("batch_size"), 2, MAX_BATCH_SIZE),
            lr=_num(f"{key}.lr", g("lr"), 0, lo_open=True),
            lr_schedule=_choice(f"{key}.lr_schedule", g("lr_schedule"), ("constant", "cosine")),
            train_subset=_opt_int(f"{key}.train_subset", g("train_subset"), hi=MAX_SUBSET),
            # reconstruction_metrics floors the per-image mse at 1e-10: PSNR never exceeds 100 dB
            min_psnr=opt_num("min_psnr", 0, 100),
            min_recon_accuracy=opt_num("min_recon_accuracy", 0, 1),
            probe_epochs=_int(f"{key}.probe_epochs", g("probe_epochs"), 1, MAX_EPOCHS),
            probe_subset=_int(f"{key}.probe_subset", g("probe_subset"), 2, MAX_SUBSET),
            dataset=None if g("dataset") is None else _choice(f"{key}.dataset", g("dataset"), DATASETS),
            fid_features=_choice(f"{key}.fid_features", g("fid_features"), FID_FEATURES),
            # KID needs at least 2 images per subset (its unbiased MMD divides by m(m - 1))
            fid_samples=_int(f"{key}.fid_samples", g("fid_samples"), 2, MAX_SUBSET),
            adversarial=None if g("adversarial") is None
            else AdversarialVAEConfig.from_dict(g("adversarial"), f"{key}.adversarial"),
        )


@dataclass(frozen=True)
class PGDConfig:
    """The settings of a PGD attack in the l-inf ball of radius ``eps`` intersected with [0, 1]: ``steps``
    sign-gradient steps of ``step``; ``eps`` and ``step`` in units of 1/255 (as eval.linearity_eps);
    ``random_start``: start at a random point of the ball, else at x. Shared by the classifiers' attack
    (``AdversarialConfig``) and the adversarially trained VAE's (``AdversarialVAEConfig``), which parse and
    check these four keys here, once."""

    eps: float = 8.0
    step: float = 2.0
    steps: int = 7
    random_start: bool = True

    @property
    def radius(self) -> float:
        """eps in pixel units ([0, 1] images)."""
        return self.eps / 255.0

    @property
    def step_size(self) -> float:
        """step in pixel units."""
        return self.step / 255.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str) -> "PGDConfig":
        d = _check_keys(key, d, cls)
        return cls(**cls._pgd_settings(d, key))

    @classmethod
    def _pgd_settings(cls, d: Mapping[str, Any], key: str) -> dict[str, Any]:
        """The four PGD keys of the checked mapping ``d`` (defaults for missing ones), validated."""
        g = lambda k: d.get(k, getattr(cls, k))  # noqa: E731
        return dict(eps=_num(f"{key}.eps", g("eps"), 0, 255),
                    step=_num(f"{key}.step", g("step"), 0, 255, lo_open=True),
                    steps=_int(f"{key}.steps", g("steps"), 1, MAX_STEPS),
                    random_start=_bool(f"{key}.random_start", g("random_start")))


@dataclass(frozen=True)
class AdversarialConfig(PGDConfig):
    """The inner maximisation of the adversarial methods (config.ADVERSARIAL_METHODS; varmix.attacks): PGD
    in the l-inf ball of radius ``eps`` intersected with [0, 1], ``steps`` sign-gradient steps of ``step``.
    ``eps`` and ``step`` are in units of 1/255 (as eval.linearity_eps); the paper: eps 8, step 2 (Madry et
    al.'s CIFAR-10 setting), steps not given. ``random_start``: AT and IAT start uniformly in the ball
    (Madry et al.), TRADES at x + 0.001 N(0, 1) (its reference); false starts at x. ``beta``: TRADES's
    weight of the KL term (Zhang et al.'s CIFAR-10 setting: 6). docs/ADVERSARIAL.md."""

    beta: float = 6.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str) -> "AdversarialConfig":
        d = _check_keys(key, d, cls)
        return cls(**cls._pgd_settings(d, key), beta=_num(f"{key}.beta", d.get("beta", cls.beta), 0, MAX_BETA))


@dataclass(frozen=True)
class AdversarialVAEConfig(PGDConfig):
    """adv-VarMixup's VAE (params.yaml ``vae.adversarial``; varmix.vae.train_vae, docs/ADVERSARIAL.md): every
    training batch is attacked by PGD (these settings, in units of 1/255, as ``train.adversarial``) ascending
    the VAE's loss of reconstructing the clean batch from the attacked one, and the VAE is trained on that
    loss. The paper gives no recipe; this one is ours."""


@dataclass(frozen=True)
class TrainConfig:
    """The classifier. Paper: ResNet-34, Adam lr 1e-3, ERM 100 epochs, mixers 150."""

    arch: str = "small_cnn"
    optimizer: str = "adam"          # adam (the paper) | sgd (the mixup literature's schedule)
    lr: float = 1e-3
    momentum: float = 0.9            # sgd only
    weight_decay: float = 0.0
    # lr schedule: constant; step (x lr_gamma at each of milestones, in epochs); cosine (per step, from lr to
    # 0 over the run's epochs: torch's CosineAnnealingLR with T_max = all steps, Loshchilov & Hutter without
    # restarts). The paper gives no schedule for its Adam runs; ours is our choice (params.yaml says so).
    schedule: str = "constant"
    milestones: tuple[int, ...] = ()  # epochs at which lr is multiplied by lr_gamma (schedule: step)
    lr_gamma: float = 0.1
    batch_size: int = 128
    epochs: Mapping[str, int] = field(default_factory=lambda: {m: 1 for m in METHODS})
    alpha: Mapping[str, float] = field(default_factory=lambda: {m: 1.0 for m in METHODS})
    # probability that a batch is mixed (else it is used clean, an ERM step); 1 = always, as the mixup
    # references. CutMix's reference has cutmix_prob; for VarMixup the paper leaves open whether clean
    # images are also seen (varmix.mixing.sometimes).
    mix_prob: Mapping[str, float] = field(default_factory=lambda: {m: 1.0 for m in METHODS})
    manifold_layers: tuple[int, ...] = (0, 1, 2)
    # Manifold Mixup's training loss: soft_ce (the soft-target cross-entropy every arm here uses) or
    # bce_softmax (vikasverma1077/manifold_mixup's BCELoss(softmax(logits), target)); docs/DEPARTURES.md
    manifold_loss: str = "soft_ce"
    augment: bool = True             # random crop (pad 4 / 2 for 28 px) + horizontal flip
    channels_last: bool = True
    amp: bool = True                 # bf16 autocast on CUDA (ignored on CPU)
    train_subset: int | None = None
    test_subset: int | None = None
    # the adversarial methods' attack and TRADES's beta (AdversarialConfig); the other methods ignore it
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    # training processes per node (varmix.distributed, docs/DISTRIBUTED.md): 1 trains in the stage's own
    # process; N > 1 starts torchrun with N processes (DDP: gloo on CPU, NCCL with one GPU each); auto: every
    # visible GPU (1 on a CPU). Not a setting of the run: a checkpoint resumes with another count.
    processes: int | str = 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str) -> "TrainConfig":
        d = _check_keys(key, d, cls)
        g = lambda k: d.get(k, getattr(cls, k) if k not in ("epochs", "alpha") else None)  # noqa: E731
        if "epochs" not in d or "alpha" not in d:
            raise ConfigError(f"params: missing key {key}.{'epochs' if 'epochs' not in d else 'alpha'}")
        milestones = tuple(_int(f"{key}.milestones[{i}]", m, 1, MAX_STEPS)
                           for i, m in enumerate(_list(f"{key}.milestones", g("milestones") or [], False)))
        schedule = _choice(f"{key}.schedule", d.get("schedule", "step" if milestones else "constant"), SCHEDULES)
        if milestones and schedule != "step":
            raise _fail(f"{key}.milestones", list(milestones), f"none with schedule {schedule} (milestones "
                        f"belong to schedule: step)")
        arch = _choice(f"{key}.arch", g("arch"), ARCHS)
        # checked against the profile's own arch whether or not manifold_mixup is among the methods: the
        # value belongs to this profile, and a wrong one should not wait until someone adds the method
        n_mix = NUM_MIX_LAYERS[arch]
        layers = tuple(_int(f"{key}.manifold_layers[{i}]", m, 0, n_mix - 1)
                       for i, m in enumerate(_list(f"{key}.manifold_layers", list(g("manifold_layers")))))
        if len(set(layers)) != len(layers):
            raise _fail(f"{key}.manifold_layers", list(layers), "each layer at most once")
        return cls(
            arch=arch,
            optimizer=_choice(f"{key}.optimizer", g("optimizer"), ("adam", "sgd")),
            lr=_num(f"{key}.lr", g("lr"), 0, lo_open=True),
            momentum=_num(f"{key}.momentum", g("momentum"), 0, 1, hi_open=True),
            weight_decay=_num(f"{key}.weight_decay", g("weight_decay"), 0),
            schedule=schedule,
            milestones=milestones,
            lr_gamma=_num(f"{key}.lr_gamma", g("lr_gamma"), 0, 1, lo_open=True),
            batch_size=_int(f"{key}.batch_size", g("batch_size"), 2, MAX_BATCH_SIZE),
            epochs=_per_method(f"{key}.epochs", d["epochs"], lambda k, v: _int(k, v, 1, MAX_EPOCHS)),
            alpha=_per_method(f"{key}.alpha", d["alpha"], lambda k, v: _num(k, v, 0, lo_open=True)),
            mix_prob=_per_method(f"{key}.mix_prob", d.get("mix_prob", 1.0),
                                 lambda k, v: _num(k, v, 0, 1, lo_open=True)),
            manifold_layers=layers,
            manifold_loss=_choice(f"{key}.manifold_loss", g("manifold_loss"), MANIFOLD_LOSSES),
            augment=_bool(f"{key}.augment", g("augment")),
            channels_last=_bool(f"{key}.channels_last", g("channels_last")),
            amp=_bool(f"{key}.amp", g("amp")),
            train_subset=_opt_int(f"{key}.train_subset", g("train_subset"), hi=MAX_SUBSET),
            test_subset=_opt_int(f"{key}.test_subset", g("test_subset"), hi=MAX_SUBSET),
            adversarial=AdversarialConfig.from_dict(d.get("adversarial", {}), f"{key}.adversarial"),
            processes=_processes(f"{key}.processes", g("processes")),
        )


def _processes(key: str, v: Any) -> int | str:
    if v == "auto" and isinstance(v, str):
        return v
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_PROCESSES:
        raise _fail(key, v, f"an integer from 1 to {MAX_PROCESSES}, or auto (every visible GPU; 1 on a CPU)")
    return v


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation of the paper's three claims: corruptions, calibration, local linearity."""

    corruptions: tuple[str, ...] = BENCHMARK_CORRUPTIONS
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    test_subset: int | None = None      # first N test images for the corruption suite
    batch_size: int = 500
    ece_bins: int = 15
    linearity_eps: tuple[float, ...] = (1, 2, 4, 8, 16)  # in units of 1/255
    linearity_steps: int = 10           # projected gradient ascent steps (Qin et al.'s reference: 10)
    # the inner maximisation of γ (varmix.landscape.local_linearity; measured in docs/DEPARTURES.md):
    linearity_step_factor: float = 2.5  # step size = factor·ε/steps (Madry et al.'s PGD convention)
    linearity_restarts: int = 1         # random starts drawn from the generator; γ is the max over them
    linearity_clip: bool = True         # search the ε-ball ∩ [0, 1] (true) or the plain ε-ball (false)
    linearity_images: int = 256         # fixed set: the first N test images
    surface_points: int = 21            # grid points per axis of loss surfaces
    surface_images: int = 64
    # robustness to adversarial perturbations (varmix.perturbation; 06_perturbations): PGD-l-inf with CE at
    # each eps (units of 1/255), perturbation_steps steps of step_factor*eps/steps, worst case over
    # perturbation_restarts random starts, on the first perturbation_images test images; then torchattacks'
    # AutoAttack (autoattack_version) at autoattack_eps on the first autoattack_images of them, seed 0's runs
    perturbation_eps: tuple[float, ...] = (1, 2, 4, 8)
    perturbation_steps: int = 20
    perturbation_restarts: int = 2
    perturbation_step_factor: float = 2.5
    perturbation_images: int = 500
    autoattack_eps: float = 8.0
    autoattack_images: int = 100
    autoattack_version: str = "standard"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str) -> "EvalConfig":
        d = _check_keys(key, d, cls)
        g = lambda k: d.get(k, getattr(cls, k))  # noqa: E731
        corr = tuple(_choice(f"{key}.corruptions[{i}]", c, CORRUPTIONS)
                     for i, c in enumerate(_list(f"{key}.corruptions", list(g("corruptions")))))
        sev = tuple(_int(f"{key}.severities[{i}]", s, 1, 5)
                    for i, s in enumerate(_list(f"{key}.severities", list(g("severities")))))
        eps = tuple(_num(f"{key}.linearity_eps[{i}]", e, 0, 255, lo_open=True)
                    for i, e in enumerate(_list(f"{key}.linearity_eps", list(g("linearity_eps")))))
        return cls(
            corruptions=corr,
            severities=sev,
            test_subset=_opt_int(f"{key}.test_subset", g("test_subset"), hi=MAX_SUBSET),
            batch_size=_int(f"{key}.batch_size", g("batch_size"), 1, MAX_BATCH_SIZE),
            ece_bins=_int(f"{key}.ece_bins", g("ece_bins"), 2, MAX_STEPS),
            linearity_eps=eps,
            linearity_steps=_int(f"{key}.linearity_steps", g("linearity_steps"), 1, MAX_STEPS),
            linearity_step_factor=_num(f"{key}.linearity_step_factor", g("linearity_step_factor"), 0, 100,
                                       lo_open=True),
            linearity_restarts=_int(f"{key}.linearity_restarts", g("linearity_restarts"), 1, MAX_STEPS),
            linearity_clip=_bool(f"{key}.linearity_clip", g("linearity_clip")),
            linearity_images=_int(f"{key}.linearity_images", g("linearity_images"), 1, MAX_SUBSET),
            surface_points=_int(f"{key}.surface_points", g("surface_points"), 3, MAX_SURFACE_POINTS),
            surface_images=_int(f"{key}.surface_images", g("surface_images"), 1, MAX_SUBSET),
            perturbation_eps=tuple(_num(f"{key}.perturbation_eps[{i}]", e, 0, 255, lo_open=True) for i, e in
                                   enumerate(_list(f"{key}.perturbation_eps", list(g("perturbation_eps"))))),
            perturbation_steps=_int(f"{key}.perturbation_steps", g("perturbation_steps"), 1, MAX_STEPS),
            perturbation_restarts=_int(f"{key}.perturbation_restarts", g("perturbation_restarts"), 1, MAX_STEPS),
            perturbation_step_factor=_num(f"{key}.perturbation_step_factor", g("perturbation_step_factor"), 0,
                                          100, lo_open=True),
            perturbation_images=_int(f"{key}.perturbation_images", g("perturbation_images"), 1, MAX_SUBSET),
            autoattack_eps=_num(f"{key}.autoattack_eps", g("autoattack_eps"), 0, 255, lo_open=True),
            autoattack_images=_int(f"{key}.autoattack_images", g("autoattack_images"), 0, MAX_SUBSET),
            autoattack_version=_choice(f"{key}.autoattack_version", g("autoattack_version"), AUTOATTACK_VERSIONS),
        )


@dataclass(frozen=True)
class Profile:
    vae: VAEConfig
    train: TrainConfig
    eval: EvalConfig
    # CPU runs only. "portable": the same bits on every x86-64 CPU with AVX2 (at the same thread count),
    # because oneDNN is off (its convolutions block by the CPU's cache sizes, so the summation order
    # follows the machine); ~1.4x slower. "fast": oneDNN on, the same bits on the same machine.
    cpu_kernels: str = "fast"
    # CPU runs only: torch's intra-op threads (null: torch's default, one per core). A reduction split over
    # another number of threads sums in another order, so bit-for-bit results need the same count on every
    # machine; pipeline.start sets it (a machine with fewer cores still gets the same bits, only slower).
    cpu_threads: int | None = None
    # adv-VarMixup's VAE (the vae_adversarial stage): the profile's vae trained with this PGD
    # (AdversarialVAEConfig; None: the profile has no adversarial VAE, and no arm may ask for one)
    vae_adversarial: "AdversarialVAEConfig | None" = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str) -> "Profile":
        d = _check_keys(key, d, cls)
        vae = VAEConfig.from_dict(d["vae"], f"{key}.vae")
        if vae.adversarial is not None:
            # one place per VAE: the vae stage trains the plain one, vae_adversarial the adversarial one
            raise _fail(f"{key}.vae.adversarial", to_dict(vae.adversarial),
                        f"null here: the adversarial VAE's PGD goes in {key}.vae_adversarial (its own stage)")
        adv = d.get("vae_adversarial")
        return cls(vae=vae,
                   vae_adversarial=None if adv is None else AdversarialVAEConfig.from_dict(
                       adv, f"{key}.vae_adversarial"),
                   train=TrainConfig.from_dict(d["train"], f"{key}.train"),
                   eval=EvalConfig.from_dict(d["eval"], f"{key}.eval"),
                   cpu_kernels=_choice(f"{key}.cpu_kernels", d.get("cpu_kernels", "fast"), CPU_KERNELS),
                   cpu_threads=_opt_int(f"{key}.cpu_threads", d.get("cpu_threads"), hi=MAX_THREADS))


# AutoAttack's versions in torchattacks (standard: APGD-CE, APGD-T, FAB-T, Square; rand: APGD-CE and APGD-DLR
# with EOT, for randomised defences) and apgd: standard's two white-box gradient attacks alone, APGD-CE then
# APGD-T (varmix.perturbation.autoattack_robust), without FAB-T and Square, which cost ~99% of its CPU time
AUTOATTACK_VERSIONS = ("standard", "rand", "apgd")
# which VAE an arm of a VAE method uses: the vae stage's, or the vae_adversarial stage's (adv-VarMixup)
VAE_KINDS = ("plain", "adversarial")


def check_vae_kind(kind: Any) -> str:
    """``kind`` if it is one of VAE_KINDS, else a ValueError naming them."""
    if kind not in VAE_KINDS:
        raise ValueError(f"vae kind = {kind!r}: expected one of {', '.join(VAE_KINDS)}")
    return kind


@dataclass(frozen=True)
class Arm:
    """One arm of the study: a method with its settings (params.yaml's ``arm_settings``). Settings left out
    come from the profile's ``train`` section (``alpha``/``epochs``/``mix_prob`` per method); ``mix_prob``
    is the share of batches that are mixed (the rest are clean ERM batches)."""

    name: str
    method: str
    mix_prob: float | None = None  # None: the profile's train.mix_prob[method] (1 unless set)
    alpha: float | None = None   # None: the profile's train.alpha[method]
    epochs: int | None = None    # None: the profile's train.epochs[method]
    vae: str = "plain"           # VAE methods only: plain (the vae stage's) | adversarial (adv-VarMixup's)

    @classmethod
    def from_dict(cls, name: Any, d: Any, key: str) -> "Arm":
        if not isinstance(name, str) or not re.fullmatch(ARM_NAME, name):
            raise _fail(key, name, "an arm name of lower-case letters, digits and underscores, starting "
                                   "with a letter")
        if not isinstance(d, Mapping):
            raise _fail(f"{key}.{name}", d, "a mapping with keys method, mix_prob, alpha, epochs, vae")
        unknown = sorted(set(d) - {"method", "mix_prob", "alpha", "epochs", "vae"})
        if unknown:
            raise ConfigError(f"params: unknown key {key}.{name}.{unknown[0]}; allowed keys in {key}.{name}: "
                              f"alpha, epochs, method, mix_prob, vae")
        if "method" not in d:
            raise ConfigError(f"params: missing key {key}.{name}.method")
        k = f"{key}.{name}"
        method = _choice(f"{k}.method", d["method"], METHODS)
        vae = _choice(f"{k}.vae", d.get("vae", "plain"), VAE_KINDS)
        if vae != "plain" and method not in VAE_METHODS:
            raise _fail(f"{k}.vae", vae, f"plain for method {method} (only {', '.join(VAE_METHODS)} use a VAE)")
        return cls(name=name, method=method, vae=vae,
                   mix_prob=None if d.get("mix_prob") is None else _num(f"{k}.mix_prob", d["mix_prob"], 0, 1,
                                                                        lo_open=True),
                   alpha=None if d.get("alpha") is None else _num(f"{k}.alpha", d["alpha"], 0, lo_open=True),
                   epochs=_opt_int(f"{k}.epochs", d.get("epochs"), hi=MAX_EPOCHS))

    def train_config(self, train: "TrainConfig") -> "TrainConfig":
        """The profile's ``train`` with this arm's settings for its method: what the trainer gets."""
        m = self.method
        return dataclasses.replace(
            train,
            mix_prob={**train.mix_prob, m: train.mix_prob[m] if self.mix_prob is None else self.mix_prob},
            alpha={**train.alpha, m: train.alpha[m] if self.alpha is None else self.alpha},
            epochs={**train.epochs, m: train.epochs[m] if self.epochs is None else self.epochs})


@dataclass(frozen=True)
class Params:
    """The validated params.yaml, with the selected profile resolved."""

    profile: str
    dataset: str
    data_dir: str
    raw_dir: str | None
    # every arm dvc repro trains, in the tables' order: params.yaml's arms (dvc.yaml's train matrix, x seeds),
    # then its rival_arms (the train_rivals matrix, x rival_seeds); seeds_of(arm) gives an arm's seeds
    arms: tuple[str, ...]
    seeds: tuple[int, ...]
    profiles: Mapping[str, Profile]
    arm_settings: Mapping[str, Arm] = field(default_factory=dict)  # every declared arm, by name
    # the report's family of comparisons, fixed before looking: arm -> its rivals
    comparisons: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rival_arms: tuple[str, ...] = ()      # the arms of ``arms`` trained with rival_seeds only
    rival_seeds: tuple[int, ...] = ()     # a subset of seeds holding seeds[0]

    def seeds_of(self, arm: str) -> tuple[int, ...]:
        """The seeds ``arm`` is trained with: ``rival_seeds`` for a rival arm, else ``seeds``."""
        if arm not in self.arms:
            raise ValueError(f"arm = {arm!r} is not in params.yaml's arms or rival_arms ({', '.join(self.arms)})")
        return self.rival_seeds if arm in self.rival_arms else self.seeds

    @property
    def runs(self) -> tuple[tuple[str, int], ...]:
        """Every (arm, seed) dvc repro trains, arm by arm in ``arms``' order."""
        return tuple((a, sd) for a in self.arms for sd in self.seeds_of(a))

    @property
    def selected(self) -> Profile:
        return self.profiles[self.profile]

    @property
    def vae(self) -> VAEConfig:
        return self.selected.vae

    @property
    def train(self) -> TrainConfig:
        return self.selected.train

    @property
    def eval(self) -> EvalConfig:
        return self.selected.eval

    def vae_of(self, kind: str = "plain") -> VAEConfig:
        """The selected profile's VAE settings of ``kind`` (VAE_KINDS): ``vae`` as it is (plain), or with
        the profile's ``vae_adversarial`` as its adversarial training (adversarial)."""
        if check_vae_kind(kind) == "plain":
            return self.vae
        adv = self.selected.vae_adversarial
        if adv is None:
            raise ConfigError(f"params: profiles.{self.profile}.vae_adversarial is not set: the adversarial VAE "
                              f"(arms with vae: adversarial) needs its PGD settings there")
        return dataclasses.replace(self.vae, adversarial=adv)

    def arm(self, name: str) -> Arm:
        """The declared arm ``name`` (a ValueError naming the declared ones otherwise)."""
        if name not in self.arm_settings:
            raise ValueError(f"arm {name!r} is not declared in params.yaml's arm_settings (declared: "
                             f"{', '.join(self.arm_settings)})")
        return self.arm_settings[name]

    def arm_train(self, name: str) -> tuple[str, TrainConfig]:
        """(method, TrainConfig) that train the arm ``name`` under the selected profile."""
        a = self.arm(name)
        return a.method, a.train_config(self.train)

    def methods_of(self, arms: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """The methods the given arms (default: ``arms``) use, each once, in order."""
        return tuple(dict.fromkeys(self.arm(a).method for a in (self.arms if arms is None else arms)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Params":
        top = ("profile", "dataset", "data_dir", "raw_dir", "arms", "arm_settings", "comparisons", "seeds",
               "rival_arms", "rival_seeds", "profiles")
        if not isinstance(d, Mapping):
            raise ConfigError(f"params: expected a mapping at the top level, got {type(d).__name__}")
        if "methods" in d:
            raise ConfigError("params: the top-level key methods is now arms (named arms declared in "
                              "arm_settings; an arm named after a method needs no declaration)")
        unknown = sorted(set(d) - set(top))
        if unknown:
            raise ConfigError(f"params: unknown key {unknown[0]}; allowed top-level keys: {', '.join(top)}")
        for k in ("profile", "dataset", "arms", "seeds", "profiles"):
            if k not in d:
                raise ConfigError(f"params: missing key {k}")
        profiles_raw = d["profiles"]
        if not isinstance(profiles_raw, Mapping) or not profiles_raw:
            raise _fail("profiles", profiles_raw, "a mapping of profile name -> settings")
        bad = sorted(set(profiles_raw) - set(PROFILES))
        if bad:
            raise _fail(f"profiles.{bad[0]}", "...", "profile names among " + ", ".join(PROFILES))
        profile = _choice("profile", d["profile"], tuple(p for p in PROFILES if p in profiles_raw))
        settings_raw = d.get("arm_settings") or {}
        if not isinstance(settings_raw, Mapping):
            raise _fail("arm_settings", settings_raw, "a mapping of arm name -> {method, mix_prob, alpha, epochs}")
        settings = {name: Arm.from_dict(name, v, "arm_settings") for name, v in settings_raw.items()}
        for m in METHODS:  # an arm named after a method, not declared: that method as the profile sets it
            settings.setdefault(m, Arm(name=m, method=m))
        arms = tuple(_arm_name(f"arms[{i}]", a, tuple(settings)) for i, a in enumerate(_list("arms", d["arms"])))
        if len(set(arms)) != len(arms):
            raise _fail("arms", list(arms), "each arm at most once")
        rival_arms = tuple(_arm_name(f"rival_arms[{i}]", a, tuple(settings))
                           for i, a in enumerate(_list("rival_arms", d.get("rival_arms") or [], nonempty=False)))
        if len(set(rival_arms)) != len(rival_arms):
            raise _fail("rival_arms", list(rival_arms), "each arm at most once")
        both = [a for a in rival_arms if a in arms]
        if both:
            raise _fail("rival_arms", list(rival_arms), f"arms not in arms (given in both: {', '.join(both)})")
        comparisons_raw = d.get("comparisons") or {}
        if not isinstance(comparisons_raw, Mapping):
            raise _fail("comparisons", comparisons_raw, "a mapping of arm -> list of rival arms")
        comparisons = {}
        for arm, rivals in comparisons_raw.items():
            _arm_name("comparisons", arm, arms)
            rivals = tuple(_arm_name(f"comparisons.{arm}[{i}]", r, tuple(a for a in arms if a != arm), "other ")
                           for i, r in enumerate(_list(f"comparisons.{arm}", rivals)))
            if len(set(rivals)) != len(rivals):
                raise _fail(f"comparisons.{arm}", list(rivals), "each rival at most once")
            comparisons[arm] = rivals
        seeds = tuple(_int(f"seeds[{i}]", s, 0, MAX_SEED) for i, s in enumerate(_list("seeds", d["seeds"])))
        if len(set(seeds)) != len(seeds):
            raise _fail("seeds", list(seeds), "each seed at most once")
        rival_seeds = seeds
        if d.get("rival_seeds") is not None:
            rival_seeds = tuple(_int(f"rival_seeds[{i}]", s, 0, MAX_SEED)
                                for i, s in enumerate(_list("rival_seeds", d["rival_seeds"])))
            if len(set(rival_seeds)) != len(rival_seeds):
                raise _fail("rival_seeds", list(rival_seeds), "each seed at most once")
            # the chapters draw their one-seed figures (reliability diagrams, loss surfaces, AutoAttack) from
            # seeds[0], for every arm
            if not set(rival_seeds) <= set(seeds) or seeds[0] not in rival_seeds:
                raise _fail("rival_seeds", list(rival_seeds), f"seeds among seeds {list(seeds)}, holding its "
                            f"first, {seeds[0]}")
        data_dir = d.get("data_dir", "data")
        if not isinstance(data_dir, str) or not data_dir:
            raise _fail("data_dir", data_dir, "a folder path")
        raw_dir = d.get("raw_dir")
        if raw_dir is not None and not isinstance(raw_dir, str):
            raise _fail("raw_dir", raw_dir, "a folder path or null")
        profiles = {name: Profile.from_dict(p, f"profiles.{name}") for name, p in profiles_raw.items()}
        arms = arms + rival_arms
        needs_adv = [a for a in arms if settings[a].vae == "adversarial"]
        if needs_adv and profiles[profile].vae_adversarial is None:
            raise ConfigError(f"params: profiles.{profile}.vae_adversarial is not set, but the arms "
                              f"{', '.join(needs_adv)} use the adversarial VAE (arm_settings' vae: adversarial): "
                              f"give it the VAE's PGD settings (eps, step, steps, random_start)")
        return cls(
            profile=profile,
            dataset=_choice("dataset", d["dataset"], DATASETS),
            data_dir=data_dir,
            raw_dir=raw_dir,
            arms=arms,
            seeds=seeds,
            profiles=profiles,
            arm_settings=settings,
            comparisons=comparisons,
            rival_arms=rival_arms,
            rival_seeds=rival_seeds,
        )


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error: PyYAML keeps the last
    value silently, while DVC refuses such a params.yaml, so the two would read different settings."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"duplicate key {key!r} on line {line} (first given on line {seen[key]}): "
                                  f"give each key once")
            seen[key] = line
        return super().construct_mapping(node, deep)


def load_params(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> Params:
    """Read and validate params.yaml (default: the project's). ``overrides`` replace top-level keys,
    e.g. ``{"profile": "smoke"}`` as a notebook's parameters cell passes them."""
    if path is None:
        from varmix.io import project_root

        path = project_root() / "params.yaml"
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"params: {path} is not valid YAML: {exc}") from exc
    except ConfigError as exc:  # _UniqueKeyLoader's duplicate key
        raise ConfigError(f"params: {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"params: {path} must hold a mapping at the top level")
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return Params.from_dict(raw)


def to_dict(obj: Any) -> Any:
    """A JSON-friendly copy of a config object (for saving next to results)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj
