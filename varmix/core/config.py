"""params.yaml: loaded and validated in one place.

``load_params()`` reads params.yaml, picks the profile named by its ``profile`` key and returns one frozen
``Params`` object. Every problem (unknown key, unknown dataset or method, value out of range) raises
``ConfigError`` naming the key path, the bad value and what is allowed, before any work starts. pydantic
validates (a ``TypeAdapter`` over the frozen stdlib dataclasses below, whose annotated field types are the
checks); a config built in code (``TrainConfig(...)``, ``dataclasses.replace``) is not checked here.
"""

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Self, Union

import yaml
from pydantic import BeforeValidator, ConfigDict, Field, Strict, model_validator

from varmix.core.checks import (
    ARM,
    BOOL,
    bad_value,
    explained,
    int_in,
    list_of,
    mapping_of,
    number_in,
    one_of,
    per_method,
    validate_as,
    worded,
)
from varmix.core.errors import ConfigError
from varmix.core.names import (
    ADVERSARIAL_METHODS,
    ARCHS,
    AUTOATTACK_VERSIONS,
    BENCHMARK_CORRUPTIONS,
    CORRUPTIONS,
    CPU_KERNELS,
    DATASETS,
    FID_FEATURES,
    MANIFOLD_LOSSES,
    METHODS,
    NUM_MIX_LAYERS,
    PROFILES,
    SCHEDULES,
    VAE_KINDS,
    VAE_METHODS,
    check_vae_kind,
    vae_seed_of,
)

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
MAX_PROCESSES = 1024        # training processes per node (varmix.learn.distributed)


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
            raise bad_value(d, "a mapping with keys " + ", ".join(keys))
        unknown = sorted(set(d) - set(keys) - set(cls._internal))
        if unknown:
            raise worded(f"unknown key {{key}}.{unknown[0]}; allowed keys in {{key}}: {', '.join(sorted(keys))}")
        missing = [k for k in cls._required if k not in d]
        if missing:
            raise worded(f"missing key {{key}}.{missing[0]}")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], key: str) -> Self:
        return validate_as(cls, d, key)


# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PGDConfig(_Section):
    """The settings of a PGD attack in the l-inf ball of radius ``eps`` intersected with [0, 1]: ``steps``
    sign-gradient steps of ``step``; ``eps`` and ``step`` in units of 1/255 (as eval.linearity_eps);
    ``random_start``: start at a random point of the ball, else at x. Shared by the classifiers' attack
    (``AdversarialConfig``) and the adversarially trained VAE's (``AdversarialVAEConfig``), which inherit
    these four keys and their checks."""

    eps: number_in(0, 255) = 8.0
    step: number_in(0, 255, lo_open=True) = 2.0
    steps: int_in(1, MAX_STEPS) = 7
    random_start: BOOL = True

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
    """The inner maximisation of the adversarial methods (names.ADVERSARIAL_METHODS; varmix.learn.attacks): PGD
    in the l-inf ball of radius ``eps`` intersected with [0, 1], ``steps`` sign-gradient steps of ``step``.
    ``eps`` and ``step`` are in units of 1/255 (as eval.linearity_eps); the paper: eps 8, step 2 (Madry et
    al.'s CIFAR-10 setting), steps not given. ``random_start``: AT and IAT start uniformly in the ball
    (Madry et al.), TRADES at x + 0.001 N(0, 1) (its reference); false starts at x. ``beta``: TRADES's
    weight of the KL term (Zhang et al.'s CIFAR-10 setting: 6). docs/ADVERSARIAL.md."""

    beta: number_in(0, MAX_BETA) = 6.0


@dataclass(frozen=True)
class AdversarialVAEConfig(PGDConfig):
    """adv-VarMixup's VAE (params.yaml ``vae.adversarial``; varmix.learn.vae.train_vae, docs/ADVERSARIAL.md): every
    training batch is attacked by PGD (these settings, in units of 1/255, as ``train.adversarial``) ascending
    the VAE's loss of reconstructing the clean batch from the attacked one, and the VAE is trained on that
    loss. The paper gives no recipe; this one is ours."""


@dataclass(frozen=True)
class VAEConfig(_Section):
    """The MMD-VAE (InfoVAE). The paper leaves architecture, latent size and gamma open.

    The gate (varmix.learn.gate.check_gate; None switches a check off): ``min_psnr`` (dB, test set, as
    varmix.learn.vae.reconstruction_metrics) and ``min_recon_accuracy`` (clean test accuracy of the probe: a
    classifier trained only on the VAE's reconstructions of the first ``probe_subset`` training images
    for ``probe_epochs`` epochs, varmix.learn.gate.recon_probe).

    ``dataset``: the dataset the VAE trains on (None: the classifier's, params.yaml's ``dataset``); its
    images must have the classifier data's channels (varmix.pipeline.session.Session.load_vae_data checks
    it); their size may differ, the mixers then resize (varmix.learn.mixing.resize_images).
    ``fid_features``/``fid_samples``: how far the mixers' images are from the data
    (varmix.evaluate.sample_distance): FID/KID over ``fid_samples`` training images and as many mixed ones, in
    the features of ``classifier`` (an ERM small CNN trained with the probe's settings on real images)
    or ``inception`` (torchmetrics' Inception-v3; needs torch-fidelity and its weights).
    ``adversarial``: None (absent or null in params.yaml) trains the plain VAE; an ``AdversarialVAEConfig``
    trains adv-VarMixup's VAE on PGD-attacked batches (varmix.learn.vae.train_vae)."""

    latent_dim: int_in(1, MAX_LATENT_DIM) = 16
    objective: one_of(("mmd", "kl")) = "mmd"  # mmd (the paper's InfoVAE) | kl (beta-VAE ablation)
    gamma: number_in(0) = 100.0            # weight of MMD(q(z) || N(0, I))
    beta: number_in(0) = 1.0               # weight of KL for the kl ablation
    likelihood: one_of(("bce", "mse")) = "bce"  # reconstruction term
    width: int_in(1, MAX_WIDTH) = 32    # base number of conv channels
    epochs: int_in(1, MAX_EPOCHS) = 10
    batch_size: int_in(2, MAX_BATCH_SIZE) = 128
    lr: number_in(0, lo_open=True) = 1e-3
    lr_schedule: one_of(("constant", "cosine")) = "constant"  # cosine: per step, from lr to 0 over all epochs
    train_subset: Optional[int_in(1, MAX_SUBSET)] = None  # first N training images (None: all)
    # dB; None: no PSNR gate. reconstruction_metrics floors the per-image mse at 1e-10: PSNR never exceeds 100 dB
    min_psnr: Optional[number_in(0, 100)] = None
    min_recon_accuracy: Optional[number_in(0, 1)] = None  # None: no probe gate
    probe_epochs: int_in(1, MAX_EPOCHS) = 3
    probe_subset: int_in(2, MAX_SUBSET) = 10_000
    dataset: Optional[one_of(DATASETS)] = None  # None: the classifier's dataset
    fid_features: one_of(FID_FEATURES) = "classifier"
    # KID needs at least 2 images per subset (its unbiased MMD divides by m(m - 1))
    fid_samples: int_in(2, MAX_SUBSET) = 1000
    # adv-VarMixup's adversarially trained VAE (AdversarialVAEConfig); None: the plain VAE
    adversarial: Optional[AdversarialVAEConfig] = None


_PROCESSES = Annotated[Union[Annotated[int, Strict(), Field(ge=1, le=MAX_PROCESSES)], Literal["auto"]],
                       explained(f"an integer from 1 to {MAX_PROCESSES}, or auto (every visible GPU; 1 on a CPU)")]


@dataclass(frozen=True)
class TrainConfig(_Section):
    """The classifier. Paper: ResNet-34, Adam lr 1e-3, ERM 100 epochs, mixers 150."""

    _required = ("epochs", "alpha")

    arch: one_of(ARCHS) = "small_cnn"
    optimizer: one_of(("adam", "sgd")) = "adam"  # adam (the paper) | sgd (the mixup literature's schedule)
    lr: number_in(0, lo_open=True) = 1e-3
    momentum: number_in(0, 1, hi_open=True) = 0.9  # sgd only
    weight_decay: number_in(0) = 0.0
    # lr schedule: constant; step (x lr_gamma at each of milestones, in epochs); cosine (per step, from lr to
    # 0 over the run's epochs: torch's CosineAnnealingLR with T_max = all steps, Loshchilov & Hutter without
    # restarts). The paper gives no schedule for its Adam runs; ours is our choice (params.yaml says so).
    # Left out: step if milestones are given, else constant.
    schedule: one_of(SCHEDULES) = "constant"
    # epochs at which lr is multiplied by lr_gamma (schedule: step)
    milestones: list_of(int_in(1, MAX_STEPS), empty_ok=True) = ()
    lr_gamma: number_in(0, 1, lo_open=True) = 0.1
    batch_size: int_in(2, MAX_BATCH_SIZE) = 128
    epochs: per_method(int_in(1, MAX_EPOCHS)) = field(default_factory=lambda: {m: 1 for m in METHODS})
    alpha: per_method(number_in(0, lo_open=True)) = field(default_factory=lambda: {m: 1.0 for m in METHODS})
    # probability that a batch is mixed (else it is used clean, an ERM step); 1 = always, as the mixup
    # references. CutMix's reference has cutmix_prob; for VarMixup the paper leaves open whether clean
    # images are also seen (varmix.learn.mixing.sometimes).
    mix_prob: per_method(number_in(0, 1, lo_open=True)) = field(default_factory=lambda: {m: 1.0 for m in METHODS})
    # at most NUM_MIX_LAYERS[arch] - 1 (checked below)
    manifold_layers: list_of(int_in(0), each="layer") = (0, 1, 2)
    # Manifold Mixup's training loss: soft_ce (the soft-target cross-entropy every arm here uses) or
    # bce_softmax (vikasverma1077/manifold_mixup's BCELoss(softmax(logits), target)); docs/DEPARTURES.md
    manifold_loss: one_of(MANIFOLD_LOSSES) = "soft_ce"
    augment: BOOL = True             # random crop (pad 4 / 2 for 28 px) + horizontal flip
    channels_last: BOOL = True
    amp: BOOL = True                 # bf16 autocast on CUDA (ignored on CPU)
    train_subset: Optional[int_in(1, MAX_SUBSET)] = None
    test_subset: Optional[int_in(1, MAX_SUBSET)] = None
    # the adversarial methods' attack and TRADES's beta (AdversarialConfig); the other methods ignore it
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    # training processes per node (varmix.learn.distributed, docs/DISTRIBUTED.md): 1 trains in the stage's own
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
            raise bad_value(list(self.milestones), f"none with schedule {self.schedule} (milestones belong to "
                       f"schedule: step)", "milestones")
        # checked against the profile's own arch whether or not manifold_mixup is among the methods: the
        # value belongs to this profile, and a wrong one should not wait until someone adds the method
        n_mix = NUM_MIX_LAYERS[self.arch]
        for i, m in enumerate(self.manifold_layers):
            if m >= n_mix:
                raise bad_value(m, f"an integer >= 0 and <= {n_mix - 1}", "manifold_layers", i)
        return self


_EPS = list_of(number_in(0, 255, lo_open=True))  # in units of 1/255


@dataclass(frozen=True)
class EvalConfig(_Section):
    """Evaluation settings of the chapters: corruptions, calibration, local linearity, perturbations."""

    corruptions: list_of(one_of(CORRUPTIONS)) = BENCHMARK_CORRUPTIONS
    severities: list_of(int_in(1, 5)) = (1, 2, 3, 4, 5)
    test_subset: Optional[int_in(1, MAX_SUBSET)] = None  # first N test images for the corruption suite
    batch_size: int_in(1, MAX_BATCH_SIZE) = 500
    ece_bins: int_in(2, MAX_STEPS) = 15
    linearity_eps: _EPS = (1, 2, 4, 8, 16)
    linearity_steps: int_in(1, MAX_STEPS) = 10  # projected gradient ascent steps (Qin et al.'s reference: 10)
    # the inner maximisation of γ (varmix.evaluate.landscape.local_linearity; measured in docs/DEPARTURES.md):
    linearity_step_factor: number_in(0, 100, lo_open=True) = 2.5  # step size = factor·ε/steps (Madry et al.'s PGD)
    linearity_restarts: int_in(1, MAX_STEPS) = 1  # random starts drawn from the generator; γ is the max over them
    linearity_clip: BOOL = True        # search the ε-ball ∩ [0, 1] (true) or the plain ε-ball (false)
    linearity_images: int_in(1, MAX_SUBSET) = 256  # fixed set: the first N test images
    surface_points: int_in(3, MAX_SURFACE_POINTS) = 21  # grid points per axis of loss surfaces
    surface_images: int_in(1, MAX_SUBSET) = 64
    # robustness to adversarial perturbations (varmix.evaluate.perturbation; 06_perturbations): PGD-l-inf with CE at
    # each eps (units of 1/255), perturbation_steps steps of step_factor*eps/steps, worst case over
    # perturbation_restarts random starts, on the first perturbation_images test images; then torchattacks'
    # AutoAttack (autoattack_version) at autoattack_eps on the first autoattack_images of them, seed 0's runs
    perturbation_eps: _EPS = (1, 2, 4, 8)
    perturbation_steps: int_in(1, MAX_STEPS) = 20
    perturbation_restarts: int_in(1, MAX_STEPS) = 2
    perturbation_step_factor: number_in(0, 100, lo_open=True) = 2.5
    perturbation_images: int_in(1, MAX_SUBSET) = 500
    autoattack_eps: number_in(0, 255, lo_open=True) = 8.0
    autoattack_images: int_in(0, MAX_SUBSET) = 100
    autoattack_version: one_of(AUTOATTACK_VERSIONS) = "standard"
    # the evaluation chapters' classifiers with eval-mode batch norm folded into the convolution before it
    # (varmix.learn.inference; pipeline.Session.load_models): the same function, faster with the portable kernels
    # (docs/benchmarks.md), but not the same bits as the unfolded model, so off until the study is regenerated
    fold_batch_norm: BOOL = False


@dataclass(frozen=True)
class RegimeConfig(_Section):
    """The regime chapter's longer training (08_regime; params.yaml's ``regime_arms`` x ``regime_seeds``): the
    profile's ``train`` section with ``train_subset`` images (null: all) and ``epochs`` for every arm, so the
    chapter asks whether the study's differences move with training (descriptive, outside the report's
    family)."""

    _required = ("train_subset", "epochs")

    train_subset: Optional[int_in(1, MAX_SUBSET)] = None
    epochs: int_in(1, MAX_EPOCHS) = 1


@dataclass(frozen=True)
class Profile(_Section):
    vae: VAEConfig
    train: TrainConfig
    eval: EvalConfig
    # CPU runs only. "portable": the same bits on every x86-64 CPU with AVX2 (at the same thread count),
    # because oneDNN is off (its convolutions block by the CPU's cache sizes, so the summation order
    # follows the machine); ~1.4x slower. "fast": oneDNN on, the same bits on the same machine.
    cpu_kernels: one_of(CPU_KERNELS) = "fast"
    # CPU runs only: torch's intra-op threads (null: torch's default, one per core). A reduction split over
    # another number of threads sums in another order, so bit-for-bit results need the same count on every
    # machine; session.start sets it (a machine with fewer cores still gets the same bits, only slower).
    cpu_threads: Optional[int_in(1, MAX_THREADS)] = None
    # adv-VarMixup's VAE (the vae_adversarial stage): the profile's vae trained with this PGD
    # (AdversarialVAEConfig; None: the profile has no adversarial VAE, and no arm may ask for one)
    vae_adversarial: Optional[AdversarialVAEConfig] = None
    # the regime chapter's budget (RegimeConfig; None: the profile has none, and regime_arms must be empty)
    regime: Optional[RegimeConfig] = None

    @model_validator(mode="after")
    def _one_place_per_vae(self) -> "Profile":
        # one place per VAE: the vae stage trains the plain one, vae_adversarial the adversarial one
        if self.vae.adversarial is not None:
            raise bad_value(to_dict(self.vae.adversarial), "null here: the adversarial VAE's PGD goes in "
                       "{key}.vae_adversarial (its own stage)", "vae", "adversarial")
        return self


@dataclass(frozen=True)
class Arm(_Section):
    """One arm of the study: a method with its settings (params.yaml's ``arm_settings``). Settings left out
    come from the profile's ``train`` section (``alpha``/``epochs``/``mix_prob`` per method); ``mix_prob``
    is the share of batches that are mixed (the rest are clean ERM batches)."""

    _internal = ("name",)  # its key in arm_settings

    name: ARM
    method: one_of(METHODS)
    mix_prob: Optional[number_in(0, 1, lo_open=True)] = None  # None: the profile's train.mix_prob[method] (1 unless set)
    alpha: Optional[number_in(0, lo_open=True)] = None   # None: the profile's train.alpha[method]
    epochs: Optional[int_in(1, MAX_EPOCHS)] = None    # None: the profile's train.epochs[method]
    vae: one_of(VAE_KINDS) = "plain"  # VAE methods only: plain (the vae stage's) | adversarial (adv-VarMixup's)

    @model_validator(mode="after")
    def _vae_of_a_vae_method(self) -> "Arm":
        if self.vae != "plain" and self.method not in VAE_METHODS:
            raise bad_value(self.vae, f"plain for method {self.method} (only {', '.join(VAE_METHODS)} use a VAE)", "vae")
        return self

    @classmethod
    def from_dict(cls, name: Any, d: Any, key: str) -> "Arm":
        return validate_as(_ARMS, {name: d}, key)[name]



@dataclass(frozen=True)
class RunSettings:
    """One run's settings, resolved once and passed down unchanged: the arm, its method, the method's own
    ``epochs``, ``alpha`` and ``mix_prob`` (an arm's, or the profile's ``train`` for that method), and the
    training section for everything else (arch, optimiser, schedule, the adversarial attack, ...).
    ``Params.run_settings(arm)`` builds it from params.yaml; :meth:`of` from a method and a TrainConfig
    built in code (checked by params.yaml's own annotations)."""

    arm: str
    method: str
    epochs: int
    alpha: float
    mix_prob: float
    train: "TrainConfig"

    @classmethod
    def of(cls, method: str, train: "TrainConfig", arm: str | None = None) -> "RunSettings":
        """``method``'s run under ``train`` (its per-method epochs, alpha and mix_prob), named ``arm``
        (default: the method). A bad method or setting is a ValueError naming it, before any work."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}: expected one of {', '.join(METHODS)}")
        if not isinstance(train, TrainConfig):
            raise ValueError(f"cfg is a {type(train).__name__}: expected a varmix.core.config.TrainConfig")
        checked(train, "cfg")
        return cls(arm or method, method, int(train.epochs[method]), float(train.alpha[method]),
                   float(train.mix_prob[method]), train)

    def record(self) -> dict:
        """The run's settings as its params.json and checkpoint record them: the training section's fields
        with ``epochs``, ``alpha`` and ``mix_prob`` as this run's own values (not the per-method dicts) and
        the ``adversarial`` block only for an adversarial method, so that declaring another method or arm,
        or changing the adversarial arms' attack, leaves the other runs' records and bytes as they are."""
        own = to_dict(self.train)
        own.update(epochs=self.epochs, alpha=self.alpha, mix_prob=self.mix_prob)
        if self.method not in ADVERSARIAL_METHODS:
            del own["adversarial"]
        # how many processes train it is not a setting of the run (docs/DISTRIBUTED.md): a checkpoint resumes
        # with another count, and a 1-process run's records are what they were before processes existed
        del own["processes"]
        return own


def _named(settings: Any) -> Any:
    """arm_settings with each arm's key as its name (a ``name`` key of its own is unknown)."""
    for name, d in settings.items():
        if isinstance(d, Mapping) and "name" in d:
            raise worded(f"unknown key {{key}}.{name}.name; allowed keys in {{key}}.{name}: alpha, epochs, method, "
                        f"mix_prob, vae")
    return {name: {**d, "name": name} if isinstance(d, Mapping) else d for name, d in settings.items()}


_ARMS = Annotated[dict[ARM, Arm], BeforeValidator(_named),
                  mapping_of("a mapping of arm name -> {method, mix_prob, alpha, epochs}")]


_SEEDS = list_of(int_in(0, MAX_SEED), each="seed")


@dataclass(frozen=True)
class ReportConfig(_Section):
    """The report's resampling (07_report; varmix.study.stats.compare): settings that change its numbers."""

    n_boot: int_in(100, 1_000_000) = 2000  # bootstrap resamples per comparison
    boot_seed: int_in(0, MAX_SEED) = 0     # the bootstrap's generator seed


@dataclass(frozen=True)
class Params(_Section):
    """The validated params.yaml, with the selected profile resolved."""

    profile: one_of(PROFILES)  # one of the profiles given (checked below)
    dataset: one_of(DATASETS)
    data_dir: Annotated[str, Strict(), Field(min_length=1), explained("a folder path")]
    raw_dir: Annotated[Optional[str], Strict(), explained("a folder path or null")]
    # every arm dvc repro trains, in the tables' order: params.yaml's arms (dvc.yaml's train matrix, x seeds),
    # then its rival_arms (the train_rivals matrix, x rival_seeds); seeds_of(arm) gives an arm's seeds
    arms: list_of(ARM, each="arm")
    seeds: _SEEDS
    # the regime chapter (08_regime; dvc.yaml's train_regime matrix): these declared arms, these seeds (at
    # least 2: its intervals are paired over seeds), trained with the selected profile's ``regime`` budget
    regime_arms: list_of(ARM, each="arm")
    regime_seeds: _SEEDS
    profiles: Annotated[dict[one_of(PROFILES), Profile], mapping_of("a mapping of profile name -> settings", False)]
    arm_settings: _ARMS = field(default_factory=dict)  # every declared arm, by name
    # the report's family of comparisons, fixed before looking: arm -> its rivals
    comparisons: Annotated[dict[ARM, list_of(ARM, each="rival")],
                           mapping_of("a mapping of arm -> list of rival arms")] = field(default_factory=dict)
    rival_arms: list_of(ARM, each="arm", empty_ok=True) = ()  # the arms of ``arms`` trained with rival_seeds only
    rival_seeds: _SEEDS = ()     # a subset of seeds holding seeds[0]
    # the plain VAE's seeds (dvc.yaml's vae matrix: one VAE per seed); classifier seed s mixes with the VAE
    # of vae_seed_of(s) = vae_seeds[s % len(vae_seeds)], so the intervals carry the VAE's variance
    vae_seeds: list_of(int_in(0, MAX_SEED), each="VAE seed") = (0,)
    report: ReportConfig = field(default_factory=ReportConfig)

    def seeds_of(self, arm: str) -> tuple[int, ...]:
        """The seeds ``arm`` is trained with: ``rival_seeds`` for a rival arm, else ``seeds``."""
        if arm not in self.arms:
            raise ValueError(f"arm = {arm!r} is not in params.yaml's arms or rival_arms ({', '.join(self.arms)})")
        return self.rival_seeds if arm in self.rival_arms else self.seeds

    def vae_seed_of(self, seed: int) -> int:
        """The VAE seed classifier seed ``seed`` mixes with (:func:`varmix.core.names.vae_seed_of` over
        ``vae_seeds``): every arm of one seed shares one VAE, the seeds spread over the VAE seeds."""
        return vae_seed_of(seed, self.vae_seeds)

    @property
    def regime(self) -> "RegimeConfig":
        """The selected profile's regime budget (a ConfigError when it has none)."""
        if self.selected.regime is None:
            raise ConfigError(f"params: profiles.{self.profile}.regime is not set: the regime chapter (regime_arms "
                              f"{list(self.regime_arms)}) needs its train_subset and epochs there")
        return self.selected.regime

    @property
    def regime_runs(self) -> tuple[tuple[str, int], ...]:
        """Every (arm, seed) of the regime chapter, arm by arm in ``regime_arms``' order."""
        return tuple((a, sd) for a in self.regime_arms for sd in self.regime_seeds)

    @property
    def regime_pairs(self) -> tuple[tuple[str, str], ...]:
        """The report's comparisons whose two arms the regime chapter trains, in the family's order."""
        return tuple((a, r) for a, rivals in self.comparisons.items() if a in self.regime_arms
                     for r in rivals if r in self.regime_arms)

    def regime_run_settings(self, name: str) -> RunSettings:
        """Arm ``name``'s run settings (:meth:`run_settings`) with the profile's regime budget: its
        ``train_subset`` images and ``epochs`` for every arm (the recipe otherwise the study's)."""
        if name not in self.regime_arms:
            raise ValueError(f"arm = {name!r} is not in params.yaml's regime_arms ({', '.join(self.regime_arms)})")
        r, budget = self.run_settings(name), self.regime
        return dataclasses.replace(r, epochs=budget.epochs,
                                   train=dataclasses.replace(r.train, train_subset=budget.train_subset))

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

    def run_settings(self, name: str) -> RunSettings:
        """The settings of a run of arm ``name`` under the selected profile: its method, the arm's
        epochs/alpha/mix_prob (else the profile's for that method) and the profile's train section."""
        a, train = self.arm(name), self.train
        m = a.method
        return RunSettings(name, m, int(train.epochs[m] if a.epochs is None else a.epochs),
                           float(train.alpha[m] if a.alpha is None else a.alpha),
                           float(train.mix_prob[m] if a.mix_prob is None else a.mix_prob), train)

    def methods_of(self, arms: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """The methods the given arms (default: ``arms``) use, each once, in order."""
        return tuple(dict.fromkeys(self.arm(a).method for a in (self.arms if arms is None else arms)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Params":
        return validate_as(cls, d, "")

    @model_validator(mode="before")
    @classmethod
    def _check_keys(cls, d: Any) -> Any:  # instead of _Section's: the top level words its errors its own way
        top = ("profile", "dataset", "data_dir", "raw_dir", "arms", "arm_settings", "comparisons", "seeds",
               "rival_arms", "rival_seeds", "vae_seeds", "regime_arms", "regime_seeds", "report", "profiles")
        if not isinstance(d, Mapping):
            raise worded(f"expected a mapping at the top level, got {type(d).__name__}")
        if "methods" in d:
            raise worded("the top-level key methods is now arms (named arms declared in arm_settings; an arm "
                        "named after a method needs no declaration)")
        unknown = sorted(set(d) - set(top))
        if unknown:
            raise worded(f"unknown key {unknown[0]}; allowed top-level keys: {', '.join(top)}")
        optional = {"data_dir": "data", "raw_dir": None, "arm_settings": {}, "comparisons": {}, "rival_arms": [],
                    "rival_seeds": d.get("seeds"), "vae_seeds": [0], "report": {}}  # null: these defaults
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
                    raise bad_value(a, f"an arm declared in arm_settings or named after a method ({declared})", key, i)
        both = [a for a in self.rival_arms if a in self.arms]
        if both:
            raise bad_value(list(self.rival_arms), f"arms not in arms (given in both: {', '.join(both)})", "rival_arms")
        for arm, rivals in self.comparisons.items():
            if arm not in self.arms:
                raise bad_value(arm, f"one of the arms ({', '.join(sorted(self.arms))})", "comparisons")
            others = [a for a in self.arms if a != arm]
            for i, r in enumerate(rivals):
                if r not in others:
                    raise bad_value(r, f"one of the other arms ({', '.join(sorted(others))})", "comparisons", arm, i)
        # the chapters draw their one-seed figures (reliability diagrams, loss surfaces, AutoAttack) from
        # seeds[0], for every arm
        if not set(self.rival_seeds) <= set(self.seeds) or self.seeds[0] not in self.rival_seeds:
            raise bad_value(list(self.rival_seeds), f"seeds among seeds {list(self.seeds)}, holding its first, "
                       f"{self.seeds[0]}", "rival_seeds")
        for i, a in enumerate(self.regime_arms):
            if a not in settings:
                raise bad_value(a, f"an arm declared in arm_settings or named after a method ({declared})",
                                "regime_arms", i)
        if len(self.regime_seeds) < 2:
            raise bad_value(list(self.regime_seeds), "at least 2 seeds (the chapter's intervals are paired over "
                            "seeds; the issue asks for 3)", "regime_seeds")
        present = tuple(p for p in PROFILES if p in self.profiles)
        if self.profile not in present:
            raise bad_value(self.profile, "one of " + ", ".join(present), "profile")
        if self.profiles[self.profile].regime is None:
            raise worded(f"profiles.{self.profile}.regime is not set, but regime_arms lists "
                         f"{', '.join(self.regime_arms)}: give it the regime's train_subset and epochs")
        arms = self.arms + self.rival_arms
        needs_adv = [a for a in arms if settings[a].vae == "adversarial"]
        if needs_adv and self.profiles[self.profile].vae_adversarial is None:
            raise worded(f"profiles.{self.profile}.vae_adversarial is not set, but the arms {', '.join(needs_adv)} "
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
        from varmix.core.io import project_root

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


def checked(section: Any, key: str = "cfg") -> Any:
    """``section`` (a config built in code: ``TrainConfig(...)``, ``dataclasses.replace``) checked by the
    same annotations params.yaml's values are, so that the rules live once; a ConfigError names ``key``'s
    path, the value and what is allowed. Returns ``section`` itself, unchanged (its values as given)."""
    if not dataclasses.is_dataclass(section) or not isinstance(section, _Section):
        raise ValueError(f"{key} is a {type(section).__name__}: expected a varmix.core.config section, e.g. TrainConfig")
    try:
        validate_as(type(section), to_dict(section), key)
    except ConfigError as exc:
        raise ConfigError(str(exc).removeprefix("params: ")) from None
    return section
