"""params.yaml: loaded and validated in one place.

``load_params()`` reads params.yaml, picks the profile named by its ``profile`` key and returns one frozen
``Params`` object. Every problem (unknown key, unknown dataset or method, value out of range) raises
``ConfigError`` naming the key path, the bad value and what is allowed, before any work starts. pydantic
validates (a ``TypeAdapter`` over the frozen stdlib dataclasses below, whose annotated field types are the
checks); a config built in code (``TrainConfig(...)``, ``dataclasses.replace``) is not checked here.
"""

import dataclasses
import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Self, Union

import yaml
from pydantic import (AfterValidator, BeforeValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError, WrapValidator,
                      model_validator)
from pydantic_core import PydanticCustomError

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
# Validation is pydantic's (TypeAdapter over these stdlib dataclasses, so building one in code and
# dataclasses.replace stay unchecked, as before): each field's annotation below is its check. Every error
# becomes one ConfigError "params: <key path> = <value> is invalid: expected <what is allowed>".
def _bad(value: Any, allowed: str, *sub: str | int) -> PydanticCustomError:
    """The value at the field being validated (or at ``sub`` below it) is bad; ``{key}`` in ``allowed``
    becomes that field's key path."""
    return PydanticCustomError("varmix", "{allowed}", {"value": value, "allowed": allowed, "sub": sub})


def _said(text: str, *sub: str | int) -> PydanticCustomError:
    """An error worded by ``text`` (``{key}``: the key path)."""
    return PydanticCustomError("varmix_text", "{text}", {"text": text, "sub": sub})


def _config_error(e: Mapping[str, Any], prefix: str) -> ConfigError:
    """pydantic's first error as ConfigError; a mapping key's own error ([key]) is named by its mapping."""
    ctx = e.get("ctx") or {}
    loc = [k for i, k in enumerate(e["loc"]) if "[key]" not in e["loc"][i:i + 2]]
    where, path = _path([prefix, *loc]), _path([prefix, *loc, *ctx.get("sub", ())])
    if e["type"] == "varmix":
        return ConfigError(f"params: {path} = {ctx['value']!r} is invalid: expected "
                           f"{ctx['allowed'].replace('{key}', where)}")
    if e["type"] == "varmix_text":
        return ConfigError("params: " + ctx["text"].replace("{key}", path))
    if e["type"] == "missing":
        return ConfigError(f"params: missing key {path}")
    return ConfigError(f"params: {path} = {e['input']!r} is invalid: {e['msg']}")  # not reached by the types here


def _path(keys: list[str | int]) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys if k != "").lstrip(".")


@functools.cache
def _adapter(kind: Any) -> TypeAdapter:
    return TypeAdapter(kind)


def _validate(kind: Any, d: Any, key: str) -> Any:
    """``d`` validated as ``kind``, its errors named under the key path ``key``."""
    try:
        return _adapter(kind).validate_python(d)
    except ValidationError as exc:
        raise _config_error(exc.errors()[0], key) from None


def _explained(allowed: str) -> WrapValidator:
    """Any failure of the annotated type is reported as the given value and ``allowed``."""
    def wrap(v: Any, handler: Any) -> Any:
        try:
            return handler(v)
        except ValidationError:
            raise _bad(v, allowed) from None
    return WrapValidator(wrap)


def _range(lo, hi, lo_open=False, hi_open=False) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
    return (" " + " and ".join(parts)) if parts else ""


def _int(lo: int | None = None, hi: int | None = None) -> Any:
    """An int (not a bool, not 2.0) in [lo, hi]."""
    return Annotated[int, Strict(), Field(ge=lo, le=hi), _explained("an integer" + _range(lo, hi))]


def _num(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Any:
    """A finite number (YAML 1.1 reads "1e-3" as a string: numeric strings count; bools do not) in the range,
    as a float; a bad one is shown as a float where it reads as one (0 -> 0.0, as the check sees it)."""
    def wrap(v: Any, handler: Any) -> float:
        if not isinstance(v, bool):
            try:
                return handler(v)
            except ValidationError:
                pass
            try:
                v = float(v)
            except (TypeError, ValueError):
                pass
        finite = not isinstance(v, float) or math.isfinite(v)
        raise _bad(v, ("a number" if finite else "a finite number") + _range(lo, hi, lo_open, hi_open))
    bounds = {"gt" if lo_open else "ge": lo, "lt" if hi_open else "le": hi}
    return Annotated[float, Field(allow_inf_nan=False, **bounds), WrapValidator(wrap)]


def _choice(allowed: tuple[str, ...]) -> Any:
    return Annotated[Literal[allowed], _explained("one of " + ", ".join(allowed))]


_BOOL = Annotated[bool, Strict(), _explained("true or false")]
_ARM_NAME = Annotated[str, Strict(), Field(pattern=f"^{ARM_NAME}$"),
                      _explained("an arm name of lower-case letters, digits and underscores, starting with a letter")]


def _items(item: Any, each: str = "", empty_ok: bool = False) -> Any:
    """A YAML list (non-empty unless ``empty_ok``; each value once if ``each`` names them) as a tuple."""
    def is_list(v: Any) -> Any:
        if not isinstance(v, (list, tuple)) or not (v or empty_ok):  # tuple: the defaults
            raise _bad(v, "a list" if empty_ok else "a non-empty list")
        return v

    def once(v: tuple) -> tuple:
        if each and len(set(v)) != len(v):
            raise _bad(list(v), f"each {each} at most once")
        return v
    return Annotated[tuple[item, ...], BeforeValidator(is_list), AfterValidator(once)]


def _mapping(allowed: str, empty_ok: bool = True) -> BeforeValidator:
    def is_mapping(v: Any) -> Any:
        if not isinstance(v, Mapping) or not (v or empty_ok):
            raise _bad(v, allowed)
        return v
    return BeforeValidator(is_mapping)


def _per_method(item: Any) -> Any:
    """A value given per method: either one value for all, or a mapping method -> value (in METHODS' order)."""
    def expand(v: Any) -> dict[str, Any]:
        if not isinstance(v, Mapping):
            try:  # checked once, so that the error names the key itself
                _adapter(item).validate_python(v)
            except ValidationError as exc:
                ctx = exc.errors()[0]["ctx"]
                raise _bad(ctx["value"], ctx["allowed"]) from None
            return {m: v for m in METHODS}
        unknown = sorted(set(v) - set(METHODS))
        if unknown:
            raise _bad(v[unknown[0]], "a key among methods " + ", ".join(METHODS), unknown[0])
        missing = [m for m in METHODS if m not in v]
        if missing:
            raise _said(f"missing key {{key}}.{missing[0]} (give a value for every method)")
        return {m: v[m] for m in METHODS}
    return Annotated[dict[str, item], BeforeValidator(expand)]


class _Section:
    """A params.yaml section: ``from_dict`` validates a mapping into the dataclass. Written here rather than
    left to pydantic's extra='forbid': its error names the unknown key, not the keys allowed there."""

    _required: tuple[str, ...] = ()  # keys params.yaml must give although the dataclass has a default
    _internal: tuple[str, ...] = ()  # fields set by the enclosing section, not by params.yaml
    # defaults pass the checks too: (1, 2) for a tuple of numbers becomes (1.0, 2.0), as a given value does
    __pydantic_config__ = ConfigDict(validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _check_keys(cls, d: Any) -> Any:
        keys = [f.name for f in dataclasses.fields(cls) if f.name not in cls._internal]
        if not isinstance(d, Mapping):
            raise _bad(d, "a mapping with keys " + ", ".join(keys))
        unknown = sorted(set(d) - set(keys) - set(cls._internal))
        if unknown:
            raise _said(f"unknown key {{key}}.{unknown[0]}; allowed keys in {{key}}: {', '.join(sorted(keys))}")
        missing = [k for k in cls._required if k not in d]
        if missing:
            raise _said(f"missing key {{key}}.{missing[0]}")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str) -> Self:
        return _validate(cls, d, key)


# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PGDConfig(_Section):
    """The settings of a PGD attack in the l-inf ball of radius ``eps`` intersected with [0, 1]: ``steps``
    sign-gradient steps of ``step``; ``eps`` and ``step`` in units of 1/255 (as eval.linearity_eps);
    ``random_start``: start at a random point of the ball, else at x. Shared by the classifiers' attack
    (``AdversarialConfig``) and the adversarially trained VAE's (``AdversarialVAEConfig``), which inherit
    these four keys and their checks."""

    eps: _num(0, 255) = 8.0
    step: _num(0, 255, lo_open=True) = 2.0
    steps: _int(1, MAX_STEPS) = 7
    random_start: _BOOL = True

    @property
    def radius(self) -> float:
        """eps in pixel units ([0, 1] images)."""
        return self.eps / 255.0

    @property
    def step_size(self) -> float:
        """step in pixel units."""
        return self.step / 255.0


@dataclass(frozen=True)
class AdversarialConfig(PGDConfig):
    """The inner maximisation of the adversarial methods (config.ADVERSARIAL_METHODS; varmix.attacks): PGD
    in the l-inf ball of radius ``eps`` intersected with [0, 1], ``steps`` sign-gradient steps of ``step``.
    ``eps`` and ``step`` are in units of 1/255 (as eval.linearity_eps); the paper: eps 8, step 2 (Madry et
    al.'s CIFAR-10 setting), steps not given. ``random_start``: AT and IAT start uniformly in the ball
    (Madry et al.), TRADES at x + 0.001 N(0, 1) (its reference); false starts at x. ``beta``: TRADES's
    weight of the KL term (Zhang et al.'s CIFAR-10 setting: 6). docs/ADVERSARIAL.md."""

    beta: _num(0, MAX_BETA) = 6.0


@dataclass(frozen=True)
class AdversarialVAEConfig(PGDConfig):
    """adv-VarMixup's VAE (params.yaml ``vae.adversarial``; varmix.vae.train_vae, docs/ADVERSARIAL.md): every
    training batch is attacked by PGD (these settings, in units of 1/255, as ``train.adversarial``) ascending
    the VAE's loss of reconstructing the clean batch from the attacked one, and the VAE is trained on that
    loss. The paper gives no recipe; this one is ours."""


@dataclass(frozen=True)
class VAEConfig(_Section):
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

    latent_dim: _int(1, MAX_LATENT_DIM) = 16
    objective: _choice(("mmd", "kl")) = "mmd"  # mmd (the paper's InfoVAE) | kl (beta-VAE ablation)
    gamma: _num(0) = 100.0            # weight of MMD(q(z) || N(0, I))
    beta: _num(0) = 1.0               # weight of KL for the kl ablation
    likelihood: _choice(("bce", "mse")) = "bce"  # reconstruction term
    width: _int(1, MAX_WIDTH) = 32    # base number of conv channels
    epochs: _int(1, MAX_EPOCHS) = 10
    batch_size: _int(2, MAX_BATCH_SIZE) = 128
    lr: _num(0, lo_open=True) = 1e-3
    lr_schedule: _choice(("constant", "cosine")) = "constant"  # cosine: per step, from lr to 0 over all epochs
    train_subset: Optional[_int(1, MAX_SUBSET)] = None  # first N training images (None: all)
    # dB; None: no PSNR gate. reconstruction_metrics floors the per-image mse at 1e-10: PSNR never exceeds 100 dB
    min_psnr: Optional[_num(0, 100)] = None
    min_recon_accuracy: Optional[_num(0, 1)] = None  # None: no probe gate
    probe_epochs: _int(1, MAX_EPOCHS) = 3
    probe_subset: _int(2, MAX_SUBSET) = 10_000
    dataset: Optional[_choice(DATASETS)] = None  # None: the classifier's dataset
    fid_features: _choice(FID_FEATURES) = "classifier"
    # KID needs at least 2 images per subset (its unbiased MMD divides by m(m - 1))
    fid_samples: _int(2, MAX_SUBSET) = 1000
    # adv-VarMixup's adversarially trained VAE (AdversarialVAEConfig); None: the plain VAE
    adversarial: Optional[AdversarialVAEConfig] = None


_PROCESSES = Annotated[Union[Annotated[int, Strict(), Field(ge=1, le=MAX_PROCESSES)], Literal["auto"]],
                       _explained(f"an integer from 1 to {MAX_PROCESSES}, or auto (every visible GPU; 1 on a CPU)")]


@dataclass(frozen=True)
class TrainConfig(_Section):
    """The classifier. Paper: ResNet-34, Adam lr 1e-3, ERM 100 epochs, mixers 150."""

    _required = ("epochs", "alpha")

    arch: _choice(ARCHS) = "small_cnn"
    optimizer: _choice(("adam", "sgd")) = "adam"  # adam (the paper) | sgd (the mixup literature's schedule)
    lr: _num(0, lo_open=True) = 1e-3
    momentum: _num(0, 1, hi_open=True) = 0.9  # sgd only
    weight_decay: _num(0) = 0.0
    # lr schedule: constant; step (x lr_gamma at each of milestones, in epochs); cosine (per step, from lr to
    # 0 over the run's epochs: torch's CosineAnnealingLR with T_max = all steps, Loshchilov & Hutter without
    # restarts). The paper gives no schedule for its Adam runs; ours is our choice (params.yaml says so).
    # Left out: step if milestones are given, else constant.
    schedule: _choice(SCHEDULES) = "constant"
    # epochs at which lr is multiplied by lr_gamma (schedule: step)
    milestones: _items(_int(1, MAX_STEPS), empty_ok=True) = ()
    lr_gamma: _num(0, 1, lo_open=True) = 0.1
    batch_size: _int(2, MAX_BATCH_SIZE) = 128
    epochs: _per_method(_int(1, MAX_EPOCHS)) = field(default_factory=lambda: {m: 1 for m in METHODS})
    alpha: _per_method(_num(0, lo_open=True)) = field(default_factory=lambda: {m: 1.0 for m in METHODS})
    # probability that a batch is mixed (else it is used clean, an ERM step); 1 = always, as the mixup
    # references. CutMix's reference has cutmix_prob; for VarMixup the paper leaves open whether clean
    # images are also seen (varmix.mixing.sometimes).
    mix_prob: _per_method(_num(0, 1, lo_open=True)) = field(default_factory=lambda: {m: 1.0 for m in METHODS})
    # at most NUM_MIX_LAYERS[arch] - 1 (checked below)
    manifold_layers: _items(_int(0), each="layer") = (0, 1, 2)
    # Manifold Mixup's training loss: soft_ce (the soft-target cross-entropy every arm here uses) or
    # bce_softmax (vikasverma1077/manifold_mixup's BCELoss(softmax(logits), target)); docs/DEPARTURES.md
    manifold_loss: _choice(MANIFOLD_LOSSES) = "soft_ce"
    augment: _BOOL = True             # random crop (pad 4 / 2 for 28 px) + horizontal flip
    channels_last: _BOOL = True
    amp: _BOOL = True                 # bf16 autocast on CUDA (ignored on CPU)
    train_subset: Optional[_int(1, MAX_SUBSET)] = None
    test_subset: Optional[_int(1, MAX_SUBSET)] = None
    # the adversarial methods' attack and TRADES's beta (AdversarialConfig); the other methods ignore it
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    # training processes per node (varmix.distributed, docs/DISTRIBUTED.md): 1 trains in the stage's own
    # process; N > 1 starts torchrun with N processes (DDP: gloo on CPU, NCCL with one GPU each); auto: every
    # visible GPU (1 on a CPU). Not a setting of the run: a checkpoint resumes with another count.
    processes: _PROCESSES = 1

    @model_validator(mode="before")
    @classmethod
    def _default_schedule(cls, d: Any) -> Any:
        if isinstance(d, Mapping):
            d = {k: v for k, v in d.items() if not (k == "milestones" and v is None)}
            d.setdefault("schedule", "step" if d.get("milestones") else "constant")
        return d

    @model_validator(mode="after")
    def _cross_checks(self) -> "TrainConfig":
        if self.milestones and self.schedule != "step":
            raise _bad(list(self.milestones), f"none with schedule {self.schedule} (milestones belong to "
                       f"schedule: step)", "milestones")
        # checked against the profile's own arch whether or not manifold_mixup is among the methods: the
        # value belongs to this profile, and a wrong one should not wait until someone adds the method
        n_mix = NUM_MIX_LAYERS[self.arch]
        for i, m in enumerate(self.manifold_layers):
            if m >= n_mix:
                raise _bad(m, f"an integer >= 0 and <= {n_mix - 1}", "manifold_layers", i)
        return self


# AutoAttack's versions in torchattacks (standard: APGD-CE, APGD-T, FAB-T, Square; rand: APGD-CE and APGD-DLR
# with EOT, for randomised defences) and apgd: standard's two white-box gradient attacks alone, APGD-CE then
# APGD-T (varmix.perturbation.autoattack_robust), without FAB-T and Square, which cost ~99% of its CPU time
AUTOATTACK_VERSIONS = ("standard", "rand", "apgd")
_EPS = _items(_num(0, 255, lo_open=True))  # in units of 1/255


@dataclass(frozen=True)
class EvalConfig(_Section):
    """Evaluation of the paper's three claims: corruptions, calibration, local linearity."""

    corruptions: _items(_choice(CORRUPTIONS)) = BENCHMARK_CORRUPTIONS
    severities: _items(_int(1, 5)) = (1, 2, 3, 4, 5)
    test_subset: Optional[_int(1, MAX_SUBSET)] = None  # first N test images for the corruption suite
    batch_size: _int(1, MAX_BATCH_SIZE) = 500
    ece_bins: _int(2, MAX_STEPS) = 15
    linearity_eps: _EPS = (1, 2, 4, 8, 16)
    linearity_steps: _int(1, MAX_STEPS) = 10  # projected gradient ascent steps (Qin et al.'s reference: 10)
    # the inner maximisation of γ (varmix.landscape.local_linearity; measured in docs/DEPARTURES.md):
    linearity_step_factor: _num(0, 100, lo_open=True) = 2.5  # step size = factor·ε/steps (Madry et al.'s PGD)
    linearity_restarts: _int(1, MAX_STEPS) = 1  # random starts drawn from the generator; γ is the max over them
    linearity_clip: _BOOL = True        # search the ε-ball ∩ [0, 1] (true) or the plain ε-ball (false)
    linearity_images: _int(1, MAX_SUBSET) = 256  # fixed set: the first N test images
    surface_points: _int(3, MAX_SURFACE_POINTS) = 21  # grid points per axis of loss surfaces
    surface_images: _int(1, MAX_SUBSET) = 64
    # robustness to adversarial perturbations (varmix.perturbation; 06_perturbations): PGD-l-inf with CE at
    # each eps (units of 1/255), perturbation_steps steps of step_factor*eps/steps, worst case over
    # perturbation_restarts random starts, on the first perturbation_images test images; then torchattacks'
    # AutoAttack (autoattack_version) at autoattack_eps on the first autoattack_images of them, seed 0's runs
    perturbation_eps: _EPS = (1, 2, 4, 8)
    perturbation_steps: _int(1, MAX_STEPS) = 20
    perturbation_restarts: _int(1, MAX_STEPS) = 2
    perturbation_step_factor: _num(0, 100, lo_open=True) = 2.5
    perturbation_images: _int(1, MAX_SUBSET) = 500
    autoattack_eps: _num(0, 255, lo_open=True) = 8.0
    autoattack_images: _int(0, MAX_SUBSET) = 100
    autoattack_version: _choice(AUTOATTACK_VERSIONS) = "standard"


@dataclass(frozen=True)
class Profile(_Section):
    vae: VAEConfig
    train: TrainConfig
    eval: EvalConfig
    # CPU runs only. "portable": the same bits on every x86-64 CPU with AVX2 (at the same thread count),
    # because oneDNN is off (its convolutions block by the CPU's cache sizes, so the summation order
    # follows the machine); ~1.4x slower. "fast": oneDNN on, the same bits on the same machine.
    cpu_kernels: _choice(CPU_KERNELS) = "fast"
    # CPU runs only: torch's intra-op threads (null: torch's default, one per core). A reduction split over
    # another number of threads sums in another order, so bit-for-bit results need the same count on every
    # machine; pipeline.start sets it (a machine with fewer cores still gets the same bits, only slower).
    cpu_threads: Optional[_int(1, MAX_THREADS)] = None
    # adv-VarMixup's VAE (the vae_adversarial stage): the profile's vae trained with this PGD
    # (AdversarialVAEConfig; None: the profile has no adversarial VAE, and no arm may ask for one)
    vae_adversarial: Optional[AdversarialVAEConfig] = None

    @model_validator(mode="after")
    def _one_place_per_vae(self) -> "Profile":
        # one place per VAE: the vae stage trains the plain one, vae_adversarial the adversarial one
        if self.vae.adversarial is not None:
            raise _bad(to_dict(self.vae.adversarial), "null here: the adversarial VAE's PGD goes in "
                       "{key}.vae_adversarial (its own stage)", "vae", "adversarial")
        return self


# which VAE an arm of a VAE method uses: the vae stage's, or the vae_adversarial stage's (adv-VarMixup)
VAE_KINDS = ("plain", "adversarial")


def check_vae_kind(kind: Any) -> str:
    """``kind`` if it is one of VAE_KINDS, else a ValueError naming them."""
    if kind not in VAE_KINDS:
        raise ValueError(f"vae kind = {kind!r}: expected one of {', '.join(VAE_KINDS)}")
    return kind


@dataclass(frozen=True)
class Arm(_Section):
    """One arm of the study: a method with its settings (params.yaml's ``arm_settings``). Settings left out
    come from the profile's ``train`` section (``alpha``/``epochs``/``mix_prob`` per method); ``mix_prob``
    is the share of batches that are mixed (the rest are clean ERM batches)."""

    _internal = ("name",)  # its key in arm_settings

    name: _ARM_NAME
    method: _choice(METHODS)
    mix_prob: Optional[_num(0, 1, lo_open=True)] = None  # None: the profile's train.mix_prob[method] (1 unless set)
    alpha: Optional[_num(0, lo_open=True)] = None   # None: the profile's train.alpha[method]
    epochs: Optional[_int(1, MAX_EPOCHS)] = None    # None: the profile's train.epochs[method]
    vae: _choice(VAE_KINDS) = "plain"  # VAE methods only: plain (the vae stage's) | adversarial (adv-VarMixup's)

    @model_validator(mode="after")
    def _vae_of_a_vae_method(self) -> "Arm":
        if self.vae != "plain" and self.method not in VAE_METHODS:
            raise _bad(self.vae, f"plain for method {self.method} (only {', '.join(VAE_METHODS)} use a VAE)", "vae")
        return self

    @classmethod
    def from_dict(cls, name: Any, d: Any, key: str) -> "Arm":
        return _validate(_ARMS, {name: d}, key)[name]

    def train_config(self, train: "TrainConfig") -> "TrainConfig":
        """The profile's ``train`` with this arm's settings for its method: what the trainer gets."""
        m = self.method
        return dataclasses.replace(
            train,
            mix_prob={**train.mix_prob, m: train.mix_prob[m] if self.mix_prob is None else self.mix_prob},
            alpha={**train.alpha, m: train.alpha[m] if self.alpha is None else self.alpha},
            epochs={**train.epochs, m: train.epochs[m] if self.epochs is None else self.epochs})


def _named(settings: Any) -> Any:
    """arm_settings with each arm's key as its name (a ``name`` key of its own is unknown)."""
    for name, d in settings.items():
        if isinstance(d, Mapping) and "name" in d:
            raise _said(f"unknown key {{key}}.{name}.name; allowed keys in {{key}}.{name}: alpha, epochs, method, "
                        f"mix_prob, vae")
    return {name: {**d, "name": name} if isinstance(d, Mapping) else d for name, d in settings.items()}


_ARMS = Annotated[dict[_ARM_NAME, Arm], BeforeValidator(_named),
                  _mapping("a mapping of arm name -> {method, mix_prob, alpha, epochs}")]


_SEEDS = _items(_int(0, MAX_SEED), each="seed")


@dataclass(frozen=True)
class Params(_Section):
    """The validated params.yaml, with the selected profile resolved."""

    profile: _choice(PROFILES)  # one of the profiles given (checked below)
    dataset: _choice(DATASETS)
    data_dir: Annotated[str, Strict(), Field(min_length=1), _explained("a folder path")]
    raw_dir: Annotated[Optional[str], Strict(), _explained("a folder path or null")]
    # every arm dvc repro trains, in the tables' order: params.yaml's arms (dvc.yaml's train matrix, x seeds),
    # then its rival_arms (the train_rivals matrix, x rival_seeds); seeds_of(arm) gives an arm's seeds
    arms: _items(_ARM_NAME, each="arm")
    seeds: _SEEDS
    profiles: Annotated[dict[_choice(PROFILES), Profile], _mapping("a mapping of profile name -> settings", False)]
    arm_settings: _ARMS = field(default_factory=dict)  # every declared arm, by name
    # the report's family of comparisons, fixed before looking: arm -> its rivals
    comparisons: Annotated[dict[_ARM_NAME, _items(_ARM_NAME, each="rival")],
                           _mapping("a mapping of arm -> list of rival arms")] = field(default_factory=dict)
    rival_arms: _items(_ARM_NAME, each="arm", empty_ok=True) = ()  # the arms of ``arms`` trained with rival_seeds only
    rival_seeds: _SEEDS = ()     # a subset of seeds holding seeds[0]

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
    def vae_dataset(self) -> str:
        """The dataset the VAE trains on: the selected profile's ``vae.dataset``, by default ``dataset``."""
        return self.vae.dataset or self.dataset

    @property
    def datasets(self) -> tuple[str, ...]:
        """Every dataset the stages read: ``dataset``, then ``vae_dataset`` when it is another."""
        return tuple(dict.fromkeys((self.dataset, self.vae_dataset)))

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
        return _validate(cls, d, "")

    @model_validator(mode="before")
    @classmethod
    def _check_keys(cls, d: Any) -> Any:  # instead of _Section's: the top level words its errors its own way
        top = ("profile", "dataset", "data_dir", "raw_dir", "arms", "arm_settings", "comparisons", "seeds",
               "rival_arms", "rival_seeds", "profiles")
        if not isinstance(d, Mapping):
            raise _said(f"expected a mapping at the top level, got {type(d).__name__}")
        if "methods" in d:
            raise _said("the top-level key methods is now arms (named arms declared in arm_settings; an arm "
                        "named after a method needs no declaration)")
        unknown = sorted(set(d) - set(top))
        if unknown:
            raise _said(f"unknown key {unknown[0]}; allowed top-level keys: {', '.join(top)}")
        optional = {"data_dir": "data", "raw_dir": None, "arm_settings": {}, "comparisons": {}, "rival_arms": [],
                    "rival_seeds": d.get("seeds")}  # null: these defaults
        return {**d, **{k: v for k, v in optional.items() if d.get(k) is None and (k != "data_dir" or k not in d)}}

    @model_validator(mode="after")
    def _cross_checks(self) -> "Params":
        settings = dict(self.arm_settings)
        for m in METHODS:  # an arm named after a method, not declared: that method as the profile sets it
            settings.setdefault(m, Arm(name=m, method=m))
        declared = ", ".join(sorted(settings))
        for key, arms in (("arms", self.arms), ("rival_arms", self.rival_arms)):
            for i, a in enumerate(arms):
                if a not in settings:
                    raise _bad(a, f"an arm declared in arm_settings or named after a method ({declared})", key, i)
        both = [a for a in self.rival_arms if a in self.arms]
        if both:
            raise _bad(list(self.rival_arms), f"arms not in arms (given in both: {', '.join(both)})", "rival_arms")
        for arm, rivals in self.comparisons.items():
            if arm not in self.arms:
                raise _bad(arm, f"one of the arms ({', '.join(sorted(self.arms))})", "comparisons")
            others = [a for a in self.arms if a != arm]
            for i, r in enumerate(rivals):
                if r not in others:
                    raise _bad(r, f"one of the other arms ({', '.join(sorted(others))})", "comparisons", arm, i)
        # the chapters draw their one-seed figures (reliability diagrams, loss surfaces, AutoAttack) from
        # seeds[0], for every arm
        if not set(self.rival_seeds) <= set(self.seeds) or self.seeds[0] not in self.rival_seeds:
            raise _bad(list(self.rival_seeds), f"seeds among seeds {list(self.seeds)}, holding its first, "
                       f"{self.seeds[0]}", "rival_seeds")
        present = tuple(p for p in PROFILES if p in self.profiles)
        if self.profile not in present:
            raise _bad(self.profile, "one of " + ", ".join(present), "profile")
        arms = self.arms + self.rival_arms
        needs_adv = [a for a in arms if settings[a].vae == "adversarial"]
        if needs_adv and self.profiles[self.profile].vae_adversarial is None:
            raise _said(f"profiles.{self.profile}.vae_adversarial is not set, but the arms {', '.join(needs_adv)} "
                        f"use the adversarial VAE (arm_settings' vae: adversarial): give it the VAE's PGD settings "
                        f"(eps, step, steps, random_start)")
        return dataclasses.replace(self, arms=arms, arm_settings=settings)


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
