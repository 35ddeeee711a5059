"""The names the whole library shares: datasets, methods, architectures, corruptions, profiles, and how a
run and a VAE are named in folders and tables (``<arm>-s<seed>``). Plain data, no imports: every layer
may use it."""

from __future__ import annotations

import re
from typing import Any

# Names shared by the whole library (the modules that implement them check they agree).
DATASETS = ("fashion-mnist", "cifar10", "cifar100", "tiny-imagenet")
# The vicinal methods (varmix.learn.mixing's mixers) and the paper's adversarial baselines (varmix.learn.attacks; the
# trainer runs them: at = Madry et al.'s PGD training, trades = Zhang et al., iat = Lamb et al.'s
# interpolated adversarial training, whose mixing is mixup's).
VICINAL_METHODS = ("erm", "mixup", "mixup_r", "manifold_mixup", "cutmix", "varmixup")
ADVERSARIAL_METHODS = ("at", "trades", "iat")
METHODS = VICINAL_METHODS + ADVERSARIAL_METHODS
VAE_METHODS = ("mixup_r", "varmixup")
# how figures and tables name the vicinal methods (others by their own name)
METHOD_LABELS = {"erm": "ERM", "mixup": "Mixup", "mixup_r": "Mixup-R", "manifold_mixup": "Manifold Mixup",
                 "cutmix": "CutMix", "varmixup": "VarMixup"}
# One display name per arm of params.yaml's arm_settings, the one every figure uses (varmix.study.figures): the
# method's name, with "(half)" / "(full)" where the same method runs at both shares of mixed batches (mixup and
# mixup_r_full mix every batch, mixup_r and varmixup half of them: params.yaml), and the rivals as the paper names
# them. An arm not listed here is shown by its own name (arm_label).
ARM_LABELS = {**METHOD_LABELS, "mixup_half": "Mixup (half)", "mixup_r": "Mixup-R (half)",
              "mixup_r_full": "Mixup-R (full)", "varmixup": "VarMixup (half)", "varmixup_full": "VarMixup (full)",
              "at": "AT", "trades": "TRADES", "iat": "IAT", "adv_varmixup": "adv-VarMixup"}


def arm_label(arm: str) -> str:
    """An arm's display name (ARM_LABELS), or the arm's own name for an arm that has none."""
    if not isinstance(arm, str):
        raise ValueError(f"arm = {arm!r}: expected an arm's name (a string)")
    return ARM_LABELS.get(arm, arm)
ARCHS = ("small_cnn", "preact_resnet18", "resnet34")
# Mixable layers per architecture for manifold mixup: the input + one per stage (varmix.learn.models builds them).
NUM_MIX_LAYERS = {"small_cnn": 4, "preact_resnet18": 5, "resnet34": 5}
assert set(NUM_MIX_LAYERS) == set(ARCHS)
PROFILES = ("smoke", "default", "paper")
SCHEDULES = ("constant", "step", "cosine")  # see TrainConfig.schedule (varmix.learn.train.make_optimizer)
# An arm's name: lower-case letters, digits and underscores, starting with a letter (it names folders and
# metrics keys "<arm>-s<seed>").
ARM_NAME = r"[a-z][a-z0-9_]*"
CPU_KERNELS = ("portable", "fast")  # see Profile.cpu_kernels
MANIFOLD_LOSSES = ("soft_ce", "bce_softmax")  # see TrainConfig.manifold_loss (varmix.learn.mixing.mixed_loss)
FID_FEATURES = ("classifier", "inception")  # see VAEConfig.fid_features (varmix.evaluate.sample_distance)
# The 15 benchmark corruptions of CIFAR-10-C (Hendrycks & Dietterich), then the 4 extras.
BENCHMARK_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "saturate", "spatter")
CORRUPTIONS = BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS

# AutoAttack's versions in torchattacks (standard: APGD-CE, APGD-T, FAB-T, Square; rand: APGD-CE and APGD-DLR
# with EOT, for randomised defences) and apgd: standard's two white-box gradient attacks alone, APGD-CE then
# APGD-T (varmix.evaluate.perturbation.autoattack_robust), without FAB-T and Square, which cost ~99% of its CPU time
AUTOATTACK_VERSIONS = ("standard", "rand", "apgd")

# the verdicts a comparison can get (varmix.study.stats.verdict)
VERDICTS = ("holds", "contradicted", "equivalent", "inconclusive", "not tested")

# which VAE an arm of a VAE method uses: the vae stage's, or the vae_adversarial stage's (adv-VarMixup)
VAE_KINDS = ("plain", "adversarial")


def check_vae_kind(kind: Any) -> str:
    """``kind`` if it is one of VAE_KINDS, else a ValueError naming them."""
    if kind not in VAE_KINDS:
        raise ValueError(f"vae kind = {kind!r}: expected one of {', '.join(VAE_KINDS)}")
    return kind


def vae_name(kind: str = "plain", seed: int | None = None) -> str:
    """The name of a VAE's metrics, plot data and timings: ``vae/s<seed>`` (the plain VAE of VAE seed
    ``seed``, one per params.yaml ``vae_seeds``: files in a folder ``vae/`` that the report depends on as a
    whole, since dvc.yaml cannot list one file per VAE seed) or ``vae_adversarial`` (one, no seed)."""
    if check_vae_kind(kind) != "plain":
        if seed is not None:
            raise ValueError(f"vae seed = {seed!r} for the {kind} VAE: it has one model, trained with seed 0; "
                             f"expected None")
        return f"vae_{kind}"
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"vae seed = {seed!r} is invalid: expected an integer >= 0 (one of params.yaml's vae_seeds)")
    return f"vae/s{seed}"


def vae_seed_of(seed: int, vae_seeds: tuple[int, ...] | list[int]) -> int:
    """The VAE seed whose VAE classifier seed ``seed`` mixes with: ``vae_seeds[seed % len(vae_seeds)]``.

    Every arm of seed ``seed`` uses the same VAE, so the arms of a pair stay paired (their difference
    does not carry the VAE's variance twice), and the seeds spread over the VAE seeds, so that the
    seeds' spread carries the VAE's variance and the report can split it off
    (varmix.study.crossed.vae_components). A function of the seed's value, not of its place in ``seeds``:
    a run's VAE does not change when other seeds are added or left out (``dvc exp run -S seeds=[3]``)."""
    if not vae_seeds:
        raise ValueError("vae_seeds is empty: expected at least one VAE seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed = {seed!r} is invalid: expected an integer >= 0")
    return int(vae_seeds[seed % len(vae_seeds)])


def run_name(arm: str, seed: int) -> str:
    """The name of one trained model: ``<arm>-s<seed>`` (model folder, metrics, plot data)."""
    return f"{arm}-s{seed}"


# the regime chapter's runs (08_regime: the primary pair's arms trained longer) are named after their arm with
# this prefix, so their notebooks, metrics and plot data sit beside the study's runs without meeting them
REGIME_PREFIX = "regime_"


def regime_run_name(arm: str, seed: int) -> str:
    """The name of one run of the regime chapter: ``regime_<arm>-s<seed>`` (metrics, plot data, notebook)."""
    return run_name(f"{REGIME_PREFIX}{arm}", seed)


RUN_NAME = re.compile(r"^(?P<arm>[a-z][a-z0-9_]*)-s(?P<seed>\d+)$")


def run_key(name: str) -> tuple[str, int]:
    """``"<arm>-s<seed>"`` -> (arm, seed)."""
    m = RUN_NAME.match(name)
    if not m:
        raise ValueError(f"run name {name!r}: expected '<arm>-s<seed>'")
    return m["arm"], int(m["seed"])
