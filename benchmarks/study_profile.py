"""Where the committed study's time goes: one markdown table from its own timings, its counted FLOPs and the
machine's matmul peak measured in the same run.

For every stage of dvc.yaml (its matrices expanded) and every chapter (01_vae plain / adversarial, 02_train per
arm and all, 03 corruptions, 04 calibration, 05 landscape, 06 perturbations, 07 report, site) the table gives

- wall seconds: the stage's own wall time as committed in results/<dataset>/<profile>/timings/*.json
  (``wall_seconds``; the site's build is timed by its command, check records none);
- share of the study: that over the study's ``dvc repro`` wall time (``--study-seconds``, by default the
  3,704 s docs/pipeline.md records);
- GFLOP: the stage's counted work. torch.utils.flop_counter.FlopCounterMode counts, on the study's own
  models built from params.yaml's profile, the FLOPs per image of a classifier forward, a training step
  (forward + backward), an attack step (forward + backward to the input), the VAE's encode + decode, its
  training step and its PGD attack; each is multiplied by the images the stage processes, computed from
  params.yaml (``stage_work``);
- GFLOP/s and share of the peak: GFLOP over wall seconds, over a 4096^2 fp32 matmul timed in the same run
  (benchmarks/throughput.py's ``matmul_peak``; ``--peak`` gives a number instead and skips the measurement).

The overhead line is the study's wall time minus the sum of the stages' walls, divided by the number of
stages dvc.lock records for the current dvc.yaml (lock entries of stages no longer in dvc.yaml do not count).
The wall of the stage without a timings file (check: DVC's and its command's start, the data's check) is part
of that line.

    python benchmarks/study_profile.py                                   # ~30 s, most of it the peak
    python benchmarks/study_profile.py --out auto   # benchmarks/results/study-profile-cpu-<cpu>-<avx>-2threads.md
    python benchmarks/study_profile.py --peak 160 --study-seconds 3704   # no measurement
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                      # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/throughput.py

from throughput import matmul_peak  # noqa: E402

from varmix.core import config  # noqa: E402
from varmix.learn.models import build_model  # noqa: E402
from varmix.learn.vae import ConvVAE, vae_loss  # noqa: E402

STUDY_SECONDS = 3704.0   # docs/pipeline.md: the default profile's measured `dvc repro`, 2-core EPYC (AVX-512)
TIMINGS = ROOT / "results" / "fashion-mnist" / "default" / "timings"
# Fashion-MNIST as data/fashion-mnist/meta.json records it (read from there when present)
SHAPE, NUM_CLASSES, TRAIN_IMAGES, TEST_IMAGES = (1, 28, 28), 10, 60_000, 10_000
LATENT_METRICS_IMAGES = 2000  # varmix.learn.vae.latent_metrics' default n (01_vae calls it with it)
# torchattacks 3.5.1's defaults as varmix.evaluate.perturbation.autoattack_robust builds them: APGD-CE and
# APGD-T run 10 iterations, APGD-T over n_classes - 1 target classes, one restart each
AUTOATTACK_STEPS = 10
SAMPLE_METHODS = {"plain": 4, "adversarial": 2}  # sample_distance's mixers per VAE kind (01_vae's cells)
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # dvc.lock is ~13k lines: libyaml's parser if present
STAGE_FILES = {"vae_adversarial": "vae_adversarial", "corruptions": "corruptions",
               "calibration": "calibration", "landscape": "linearity", "perturbations": "perturbations",
               "report": "report", "regime": "regime", "site": "site"}


# ----------------------------------------------------------------------------------------------
# the stages: dvc.yaml expanded, dvc.lock's record of them
def expanded_stages(root: Path = ROOT) -> list[str]:
    """dvc.yaml's stage names with each ``matrix`` expanded over params.yaml's lists (``name@arm-seed``, or
    ``name@value`` for a one-key matrix such as the VAE seeds', as dvc names them), in dvc.yaml's order."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    out = []
    for name, st in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].items():
        if "matrix" not in st:
            out.append(name)
            continue
        keys = {k: v.strip("${}") for k, v in st["matrix"].items()}
        if len(keys) == 1:
            out += [f"{name}@{value}" for value in params[next(iter(keys.values()))]]
            continue
        if set(keys) != {"arm", "seed"}:
            raise ValueError(f"dvc.yaml stage {name}: matrix keys {sorted(keys)}: expected arm and seed")
        out += [f"{name}@{arm}-{seed}" for arm in params[keys["arm"]] for seed in params[keys["seed"]]]
    return out


def locked_stages(root: Path = ROOT) -> list[str]:
    """The stages of the current dvc.yaml that dvc.lock records (stale lock entries left out): the stages
    the committed study ran."""
    lock = yaml.load((root / "dvc.lock").read_text(), Loader=LOADER)["stages"]  # noqa: S506 (a SafeLoader)
    return [name for name in expanded_stages(root) if name in lock]


def data_sizes(root: Path = ROOT) -> tuple[tuple[int, int, int], int, int]:
    """(image shape, training images, test images) of Fashion-MNIST, from data/fashion-mnist/meta.json
    when it is there, else the dataset's published sizes."""
    meta = root / "data" / "fashion-mnist" / "meta.json"
    if not meta.is_file():
        return SHAPE, TRAIN_IMAGES, TEST_IMAGES
    shapes = yaml.safe_load(meta.read_text())["shapes"]
    return tuple(shapes["train_x.npy"][1:]), shapes["train_x.npy"][0], shapes["test_x.npy"][0]


# ----------------------------------------------------------------------------------------------
# FLOPs per image, counted
def counted(fn, images: int) -> float:
    """FLOPs per image of ``fn()`` for a batch of ``images``, as FlopCounterMode counts them (convolutions
    and matmuls, 2 per multiply-add; element-wise work is not counted)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / images


def study_models(params: config.Params, shape=SHAPE) -> tuple[torch.nn.Module, ConvVAE]:
    """The study's classifier (the profile's arch, fresh, seeded) and VAE (the profile's latent_dim/width)."""
    c, s, _ = shape
    torch.manual_seed(0)
    model = build_model(params.train.arch, c, NUM_CLASSES, s, [0.5] * c, [0.25] * c)
    vae = ConvVAE(c, s, latent_dim=params.vae.latent_dim, width=params.vae.width)
    return model, vae


def per_image_flops(params: config.Params, shape=SHAPE, batch: int = 8) -> dict[str, float]:
    """FLOPs per image, counted on the study's models (``study_models``):

    - fwd: a classifier forward; train: a training step's forward + backward (weight gradients);
    - attack: one PGD step's forward + backward to the input (no weight gradients);
    - vae_fwd: the VAE's encode + decode (Mixup-R's reconstruction, VarMixup's mix), vae_enc: encode alone;
    - vae_train: vae_loss forward + backward at the profile's VAE batch size (the MMD's kernel matmuls
      grow with the batch);
    - vae_attack: adv-VarMixup's VAE attack (``adversarial_batch``): the profile's PGD steps, each a
      forward + backward of vae_loss to the input."""
    model, vae = study_models(params, shape)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *shape, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
    out = {"fwd": counted(lambda: model(x), batch)}

    def train():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    out["train"] = counted(train, batch)
    with frozen(model):
        out["attack"] = counted(lambda: input_grad(lambda xa: F.cross_entropy(model(xa), y), x), batch)
    with torch.no_grad():
        out["vae_fwd"] = counted(lambda: vae.decode(vae.encode(x)[0]), batch)
        out["vae_enc"] = counted(lambda: vae.encode(x), batch)
    vb = params.vae.batch_size
    xv = torch.rand(vb, *shape, generator=gen)

    def vae_train():
        vae.zero_grad(set_to_none=True)
        vae_loss(vae, xv, params.vae, gen)[0].backward()

    out["vae_train"] = counted(vae_train, vb)
    adv = params.selected.vae_adversarial
    with frozen(vae):  # one step of adversarial_batch's ascent: vae_loss's gradient to the input
        step = counted(lambda: input_grad(lambda xa: vae_loss(vae, xa, params.vae, gen, target=xv)[0], xv), vb)
    out["vae_attack"] = 0.0 if adv is None else adv.steps * step
    return out


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """``module`` with requires_grad off on every parameter (as under an attack: no weight gradient)."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def input_grad(loss_of, x: torch.Tensor) -> torch.Tensor:
    """The gradient of ``loss_of(x')`` to the input x' = x, by ``backward`` (FlopCounterMode's module tracker
    refuses ``torch.autograd.grad`` on a leaf, which the attacks call; the same operators run)."""
    xa = x.detach().clone().requires_grad_(True)
    loss_of(xa).backward()
    return xa.grad


# ----------------------------------------------------------------------------------------------
# the work of each stage: images x FLOPs per image, from params.yaml
@dataclass(frozen=True)
class Work:
    """A stage's counted FLOPs and how exact they are (``exact`` / ``upper bound`` / ``estimate``)."""

    flops: float
    kind: str = "exact"


def train_flops(params: config.Params, arm: str, f: dict[str, float], regime: bool = False) -> float:
    """One classifier run of ``arm``: epochs x train_subset steps (an adversarial method's PGD steps added,
    a VAE mixer's encode + decode on the mixed share of batches), and the per-epoch test evaluation.
    ``regime``: the regime chapter's run (its budget's images and epochs; train_subset null = every image)."""
    run = params.regime_run_settings(arm) if regime else params.run_settings(arm)
    method, cfg = run.method, run.train
    epochs = run.epochs
    n_train = min(cfg.train_subset or TRAIN_IMAGES, TRAIN_IMAGES)
    steps = cfg.adversarial.steps
    step = {"at": steps * f["attack"] + f["train"],
            "trades": f["fwd"] + steps * f["attack"] + 2 * f["train"],   # p(x) once; clean + adversarial passes
            "iat": steps * f["attack"] + 2 * f["train"]}.get(method, f["train"])
    if method in ("mixup_r", "varmixup"):
        step += run.mix_prob * f["vae_fwd"]
    return epochs * (n_train * step + (cfg.test_subset or TEST_IMAGES) * f["fwd"])


def vae_flops(params: config.Params, kind: str, f: dict[str, float], n_test: int, sample_distance: bool = True
              ) -> float:
    """01_vae for ``kind``: VAE training (the adversarial one with its attack) and its per-epoch test
    reconstructions; the notebook's quality metrics; the gate's probe (reconstructions, then an ERM small
    CNN); with ``sample_distance`` (the adversarial VAE's and the first VAE seed's chapters) the FID feature
    classifier (trained in the plain run, reused by the adversarial one) and the mixers' FID/KID sets (each
    image's features taken as one classifier forward)."""
    v = params.vae
    n_vae = min(v.train_subset or TRAIN_IMAGES, TRAIN_IMAGES)
    step = f["vae_train"] + (f["vae_attack"] if kind == "adversarial" else 0.0)
    total = v.epochs * (n_vae * step + n_test * f["vae_fwd"])
    total += n_test * f["vae_fwd"] + min(LATENT_METRICS_IMAGES, n_test) * f["vae_enc"]
    total += v.probe_subset * f["vae_fwd"] + v.probe_epochs * (v.probe_subset * f["train"] + n_test * f["fwd"])
    if not sample_distance:
        return total
    if kind == "plain":
        total += v.probe_epochs * (v.probe_subset * f["train"] + v.fid_samples * f["fwd"])
    n, mixers = v.fid_samples, SAMPLE_METHODS[kind]
    vae_sets = 1 + 2  # the reconstructions, Mixup-R's and VarMixup's images
    total += n * vae_sets * f["vae_fwd"] + n * (3 + mixers) * f["fwd"]  # real, test, reconstructions, mixers
    return total


def stage_work(params: config.Params, f: dict[str, float], n_test: int = TEST_IMAGES) -> dict[str, Work]:
    """Counted FLOPs of every stage (named as dvc names them) from params.yaml's default profile."""
    ev, runs = params.eval, params.runs
    arms_seed0 = [a for a, sd in runs if sd == params.seeds[0]]
    work = {"check": Work(0.0), "vae_adversarial": Work(vae_flops(params, "adversarial", f, n_test), "estimate")}
    for i, vae_seed in enumerate(params.vae_seeds):  # FID/KID in the first VAE seed's chapter only
        work[f"vae@{vae_seed}"] = Work(vae_flops(params, "plain", f, n_test, sample_distance=i == 0), "estimate")
    for arm, seed in runs:
        stage = "train_rivals" if arm in params.rival_arms else "train"
        work[f"{stage}@{arm}-{seed}"] = Work(train_flops(params, arm, f))
    if params.regime_arms:
        for arm, seed in params.regime_runs:
            work[f"train_regime@{arm}-{seed}"] = Work(train_flops(params, arm, f, regime=True))
    n_corrupt = ev.test_subset or n_test
    work["corruptions"] = Work(len(runs) * n_corrupt * (1 + len(ev.corruptions) * len(ev.severities)) * f["fwd"])
    work["calibration"] = Work(0.0)  # reads the logits the training runs stored
    gamma = ev.linearity_images * len(ev.linearity_eps) * ev.linearity_restarts \
        * ((ev.linearity_steps + 1) * f["attack"] + f["fwd"])
    p2, si = ev.surface_points ** 2, ev.surface_images
    surfaces = si * (f["attack"] + p2 * f["fwd"]) + (ev.surface_points + p2) * si * f["fwd"]
    work["landscape"] = Work(len(runs) * gamma + len(arms_seed0) * surfaces)
    n_pgd = min(ev.perturbation_images, n_test)
    pgd = n_pgd * f["fwd"] + len(ev.perturbation_eps) * ev.perturbation_restarts * n_pgd \
        * (ev.perturbation_steps * f["attack"] + f["fwd"])
    work["perturbations"] = Work(len(runs) * pgd + len(arms_seed0) * autoattack_flops(params, f, n_test),
                                 "upper bound")
    work["report"] = Work(0.0)
    # 08_regime: each regime run's corruption grid, γ at 8/255 alone, and PGD as 06 attacks (study.regime)
    gamma_8 = ev.linearity_images * ev.linearity_restarts * ((ev.linearity_steps + 1) * f["attack"] + f["fwd"])
    regime_runs = len(params.regime_runs) if params.regime_arms else 0
    work["regime"] = Work(regime_runs * (n_corrupt * (1 + len(ev.corruptions) * len(ev.severities)) * f["fwd"]
                                         + gamma_8 + pgd), "upper bound")
    work["site"] = Work(0.0)
    return work


def autoattack_flops(params: config.Params, f: dict[str, float], n_test: int = TEST_IMAGES) -> float:
    """An estimate of one model's AutoAttack (``apgd``) in 06_perturbations: a clean forward, then APGD-CE
    and APGD-T over n_classes - 1 targets, ``AUTOATTACK_STEPS`` + 1 gradient steps each, on every image
    (torchattacks attacks only the clean-correct ones, and APGD-T only APGD-CE's survivors)."""
    ev = params.eval
    n = min(ev.autoattack_images, ev.perturbation_images, n_test)
    attacks = 1 + (NUM_CLASSES - 1)  # APGD-CE, then APGD-T once per target class
    return n * f["fwd"] + n * attacks * (AUTOATTACK_STEPS + 1) * f["attack"]


# ----------------------------------------------------------------------------------------------
# walls from the committed timings
def stage_walls(params: config.Params, timings: Path = TIMINGS) -> dict[str, float]:
    """Each stage's own wall seconds from ``timings`` (``wall_seconds``); stages without a file are absent."""
    files = dict(STAGE_FILES)
    for arm, seed in params.runs:
        stage = "train_rivals" if arm in params.rival_arms else "train"
        files[f"{stage}@{arm}-{seed}"] = f"train-{arm}-s{seed}"
    for vae_seed in params.vae_seeds:
        files[f"vae@{vae_seed}"] = f"vae/s{vae_seed}"
    if params.regime_arms:
        for arm, seed in params.regime_runs:
            files[f"train_regime@{arm}-{seed}"] = f"train-regime_{arm}-s{seed}"
    walls = {}
    for stage, name in files.items():
        path = timings / f"{name}.json"
        if path.is_file():
            value = yaml.safe_load(path.read_text()).get("wall_seconds")
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{path}: wall_seconds = {value!r}: expected seconds >= 0")
            walls[stage] = float(value)
    return walls


def chapter_of(stage: str) -> str:
    """The chapter a stage belongs to (02_train per arm)."""
    if stage.startswith(("train@", "train_rivals@")):
        return "02_train " + stage.partition("@")[2].rsplit("-", 1)[0]
    if stage.startswith("vae@"):
        return "01_vae plain"
    if stage.startswith("train_regime@"):
        return "08 regime training"
    chapters = {"check": "check", "vae_adversarial": "01_vae adversarial",
                "corruptions": "03 corruptions", "calibration": "04 calibration", "landscape": "05 landscape",
                "perturbations": "06 perturbations", "report": "07 report", "regime": "08 regime", "site": "site"}
    if stage not in chapters:
        raise ValueError(f"stage {stage!r} has no chapter: dvc.yaml has a stage this script does not know "
                         f"(add it to chapter_of and stage_work)")
    return chapters[stage]


# ----------------------------------------------------------------------------------------------
# the table
@dataclass(frozen=True)
class Row:
    """One line of the table: a stage or a chapter."""

    name: str
    wall: float | None     # seconds; None: not timed
    gflop: float | None    # None: not counted
    kind: str = "exact"


def overhead(study_seconds: float, walls: dict[str, float], stages: list[str]) -> tuple[float, float]:
    """(total, per stage) seconds of the study that no stage's own wall accounts for."""
    if not (isinstance(study_seconds, (int, float)) and math.isfinite(study_seconds) and study_seconds > 0):
        raise ValueError(f"--study-seconds {study_seconds!r}: expected a positive number of seconds")
    timed = sum(walls[s] for s in stages if s in walls)
    if timed > study_seconds:
        raise ValueError(f"--study-seconds {study_seconds:g} is less than the stages' own walls ({timed:.1f} s)")
    if not stages:
        raise ValueError("dvc.lock records no stage of dvc.yaml")
    total = study_seconds - timed
    return total, total / len(stages)


def table_rows(stages: list[str], walls: dict[str, float], work: dict[str, Work]) -> tuple[list[Row], list[Row]]:
    """(stage rows, chapter rows): chapters in the stages' order, 02_train's per arm, then all of it."""
    rows = [Row(s, walls.get(s), work[s].flops / 1e9 if s in work else None, work[s].kind if s in work else "")
            for s in stages]
    chapters: dict[str, list[Row]] = {}
    for r in rows:
        chapters.setdefault(chapter_of(r.name), []).append(r)
    train = [r for r in rows if chapter_of(r.name).startswith("02_train")]
    train_chapters = [c for c in chapters if c.startswith("02_train")]
    out = []
    for name, members in chapters.items():
        out.append(_total(name, members))
        if train_chapters and name == train_chapters[-1]:
            out.append(_total("02_train all", train))
    return rows, out


def _total(name: str, members: list[Row]) -> Row:
    timed = [m.wall for m in members if m.wall is not None]
    kinds = {m.kind for m in members if m.gflop}
    return Row(name, sum(timed) if timed else None, sum(m.gflop or 0.0 for m in members),
               "exact" if kinds <= {"exact"} else "/".join(sorted(kinds - {"exact"})))


def fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def row_cells(r: Row, study: float, peak: float) -> list[str]:
    rate = r.gflop / r.wall if r.wall and r.gflop else None
    return [r.name, fmt(r.wall, ",.1f"), fmt(None if r.wall is None else r.wall / study, ".1%"),
            fmt(r.gflop, ",.1f") + ("" if not r.gflop or r.kind == "exact" else f" ({r.kind})"),
            fmt(rate, ",.1f"), fmt(None if rate is None else rate / peak, ".1%")]


HEADERS = ("stage / chapter", "wall s", "of the study", "GFLOP", "GFLOP/s", "of peak")


def markdown(rows: list[Row], chapters: list[Row], over: tuple[float, float], n_stages: int, study: float,
             peak: float) -> str:
    """The table: every stage, then the chapters (bold), the overhead line and the study."""
    lines = ["| " + " | ".join(HEADERS) + " |", "| --- |" + " ---: |" * (len(HEADERS) - 1)]
    lines += ["| " + " | ".join(row_cells(r, study, peak)) + " |" for r in rows]
    for r in chapters:
        cells = row_cells(r, study, peak)
        lines.append("| " + " | ".join([f"**{cells[0]}**"] + cells[1:]) + " |")
    total, per = over
    lines.append(f"| **overhead** (dvc repro wall − the stages' walls; {per:,.1f} s per stage × {n_stages} "
                 f"stages) | {total:,.1f} | {total / study:.1%} | — | — | — |")
    gflop = sum(r.gflop or 0.0 for r in rows)
    lines.append(f"| **the study** (dvc repro) | {study:,.1f} | 100.0% | {gflop:,.1f} | {gflop / study:,.1f} | "
                 f"{gflop / study / peak:.1%} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
def cpu_name() -> tuple[str, bool]:
    """(/proc/cpuinfo's model name, whether its flags hold avx512f); the platform's name elsewhere."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), False
    name = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    return (name[1].strip() if name else platform.machine()), bool(re.search(r"\bavx512f\b", info))


def results_path(cpu: str, avx512: bool, threads: int, kind: str = "study-profile") -> Path:
    """benchmarks/results/<kind>-<machine>.md, named as the other CPU results there
    (e.g. cpu-amd-epyc-avx2-2threads.md): the CPU's name in lower case, its widest vector unit, the threads."""
    slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(r\)|\(tm\)|processor|\d+-core", "", cpu.lower())).strip("-")
    vector = "avx512" if avx512 else "avx2"
    return ROOT / "benchmarks" / "results" / f"{kind}-cpu-{slug}-{vector}-{threads}threads.md"


def add_out_option(p: argparse.ArgumentParser, kind: str) -> None:
    """``--out FILE|auto``: also write the output as markdown (auto: :func:`results_path` for ``kind``)."""
    p.add_argument("--out", type=Path, default=None,
                   help=f"also write the output as markdown to this file (auto: benchmarks/results/"
                        f"{kind}-cpu-<cpu>-<avx2|avx512>-<threads>threads.md)")


def write_out(text: str, out: Path | None, threads: int, kind: str) -> None:
    """Write ``text`` to ``out`` (``auto``: this machine's :func:`results_path` for ``kind``); None: nowhere."""
    if out is None:
        return
    if str(out) == "auto":
        out = results_path(*cpu_name(), threads, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written: {out}")


def notes(f: dict[str, float], params: config.Params, peak_line: str, study: float) -> list[str]:
    """The table's notes: the peak, where the walls come from, what each chapter's count holds."""
    ev = params.eval
    aa_gflop = len([a for a, sd in params.runs if sd == params.seeds[0]]) * autoattack_flops(params, f) / 1e9
    return [
        f"- Peak: {peak_line}. 'of peak' = GFLOP / wall s / that peak. The walls are the committed study's, "
        f"measured on this project's 2-core AMD EPYC with AVX-512 (docs/pipeline.md): on another machine the "
        f"share compares them with that machine's peak.",
        f"- Study wall: {study:,.0f} s (`--study-seconds`; docs/pipeline.md's measured `dvc repro`). Walls: each "
        f"stage's own `wall_seconds` in results/fashion-mnist/default/timings/ (the site's: its build, timed by "
        f"its command); check records none, so its time is in the overhead line.",
        "- FLOPs per image counted by torch.utils.flop_counter.FlopCounterMode (convolutions and matmuls, 2 per "
        "multiply-add; batch norm, activations, augmentation, mixing, corruptions and the optimiser are not "
        "counted) on the profile's small CNN (1×28×28, 10 classes) and ConvVAE: "
        + ", ".join(f"{k} {v / 1e6:,.2f} MFLOP" for k, v in f.items()) + ".",
        "- 02_train: epochs × train_subset steps (AT: steps attack + 1 train; TRADES: 1 forward + steps attack "
        "+ 2 train; IAT: steps attack + 2 train; Mixup-R / VarMixup: + mix_prob × the VAE's encode + decode, "
        "its expected value) + epochs × test_subset forwards.",
        "- 01_vae (estimate): VAE training (adversarial: + its PGD) and per-epoch test reconstructions, the "
        "quality metrics, the gate's probe and the FID feature classifier (plain run only) counted; the FID/KID "
        "sets' features taken as one classifier forward each, KID's and FID's own arithmetic left out.",
        f"- 03 corruptions: every model × eval.test_subset × (1 + {len(ev.corruptions)} corruptions × "
        f"{len(ev.severities)} severities) forwards; the corruptions themselves are not counted. 04 calibration, "
        "07 report, site and check run no model.",
        "- 05 landscape: γ: images × eps × restarts × ((steps + 1) attack steps + 1 forward) for every model; "
        "seed 0's models: the input surface (1 attack step + points² forwards per image) and the weight "
        "surfaces (points + points² forwards per image).",
        f"- 06 perturbations (upper bound): PGD on every image at every eps and restart, {ev.perturbation_steps} "
        f"attack steps + 1 forward each (only the clean-correct images still robust are attacked, so fewer run); "
        f"AutoAttack ({ev.autoattack_version}, seed {params.seeds[0]}'s models), an estimate of "
        f"{aa_gflop:,.1f} GFLOP of it from torchattacks' defaults: APGD-CE + APGD-T over {NUM_CLASSES - 1} "
        f"targets, {AUTOATTACK_STEPS} iterations + 1 each, on every image (it attacks only the clean-correct "
        f"ones, APGD-T only APGD-CE's survivors).",
    ]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study-seconds", type=float, default=STUDY_SECONDS,
                   help="the study's dvc repro wall seconds (default: docs/pipeline.md's %(default)g)")
    p.add_argument("--peak", type=float, default=None,
                   help="GFLOP/s to compare with, instead of measuring the matmul peak")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the peak (the study's: 2)")
    p.add_argument("--timings", type=Path, default=TIMINGS, help="the committed timings folder")
    add_out_option(p, "study-profile")
    return p


def main(argv: list[str] | None = None) -> int:
    p = get_args_parser()
    args = p.parse_args(argv)
    if args.peak is not None and not (math.isfinite(args.peak) and args.peak > 0):
        p.error(f"--peak {args.peak:g}: expected a positive GFLOP/s")
    if args.threads < 1:
        p.error(f"--threads {args.threads}: expected at least 1")
    if not args.timings.is_dir():
        p.error(f"--timings {args.timings}: no such folder")
    params = config.load_params(ROOT / "params.yaml", {"profile": "default"})
    shape, _, n_test = data_sizes()
    torch.set_num_threads(args.threads)
    stages = locked_stages()
    try:
        walls = stage_walls(params, args.timings)
        over = overhead(args.study_seconds, walls, stages)
    except ValueError as exc:
        p.error(str(exc))
    f = per_image_flops(params, shape)
    work = stage_work(params, f, n_test)
    name, avx512 = cpu_name()
    machine = f"{name} ({'with' if avx512 else 'no'} AVX-512), {args.threads} threads"
    if args.peak is None:
        peak = matmul_peak(torch.device("cpu"), torch.float32)
        peak_line = f"{peak:,.0f} GFLOP/s, a 4096² fp32 matmul (best of 10) measured in this run on {machine}"
    else:
        peak = args.peak
        peak_line = f"{peak:,.0f} GFLOP/s as given (`--peak`, not measured); this run: {machine}"
    rows, chapters = table_rows(stages, walls, work)
    command = " ".join(["python benchmarks/study_profile.py", *(sys.argv[1:] if argv is None else argv)])
    text = "\n".join(["# Where the study's time goes (results/fashion-mnist/default, profile default)", "",
                      f"`{command}`", "",
                      markdown(rows, chapters, over, len(stages), args.study_seconds, peak), "",
                      *notes(f, params, peak_line, args.study_seconds), ""])
    print(text)
    write_out(text, args.out, args.threads, "study-profile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
