"""Where the pipeline's files live, and the common start of every notebook.

Every notebook begins with ``s = session.start(profile, dataset)``: params.yaml is validated (with the
notebook's parameters) before any work, the device is chosen, and ``s.layout`` names every file. The same
layout is spelled out in dvc.yaml (``runs/${dataset}/${profile}/...`` and ``results/${dataset}/${profile}/
...``); ``tests/test_pipeline.py`` checks that the two agree.

``VARMIX_WORKDIR`` moves ``runs/`` and ``results/`` elsewhere (nbval uses a temporary folder so that
testing never touches the committed results); the data is always read from the project's ``data_dir``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from varmix.core import config, io, names
from varmix.core.io import project_root
from varmix.core.names import run_name, vae_name

# torch, pandas and varmix.learn.data are imported where they are used: `python -m varmix notebook` (one per
# dvc stage) only validates params.yaml and starts papermill, and should not pay ~3 s of imports for it.

WORKDIR_ENV = "VARMIX_WORKDIR"
DVC_STAGE_ENV = "DVC_STAGE"  # set by DVC for each stage's command (dvc/stage/run.py)

# Bit-for-bit CPU runs across x86-64 machines. torch picks its CPU kernels by the instruction set it
# finds (ATen's vectorised ops, MKL), and AVX-512 kernels round differently from AVX2 ones; so CPU runs
# use the AVX2 paths (every x86-64 CPU since ~2015 has them; MKL's "conditional numerical
# reproducibility" mode AVX2), unless the user set these variables. torch reads them at its first CPU op,
# hence in `start`. oneDNN's convolutions also block by the CPU's cache sizes, which no variable pins:
# the profile's cpu_kernels = portable turns oneDNN off (config.Profile.cpu_kernels).
CPU_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}


@dataclass(frozen=True)
class Layout:
    root: Path          # where runs/ and results/ live
    dataset: str
    profile: str

    @property
    def runs(self) -> Path:  # checkpoints and trained models (DVC-cached)
        return self.root / "runs" / self.dataset / self.profile

    @property
    def results(self) -> Path:  # executed notebooks, metrics, plot data (committed)
        return self.root / "results" / self.dataset / self.profile

    @property
    def vaes(self) -> Path:
        """The plain VAEs, one folder per VAE seed (``vae_folder``): what the stages that read any of them
        depend on."""
        return self.runs / "vae"

    def vae_folder(self, kind: str = "plain", seed: int | None = None) -> Path:
        """The trained VAE of ``kind`` (names.VAE_KINDS): the vae stage's of VAE seed ``seed`` (plain:
        ``runs/.../vae/s<seed>``, the ``vae@<seed>`` stage), or the vae_adversarial stage's (adversarial,
        adv-VarMixup's: one, no seed)."""
        names.vae_name(kind, seed)  # checks kind, and that a plain VAE has a seed and the adversarial one none
        return self.vaes / f"s{seed}" if kind == "plain" else self.runs / f"vae_{kind}"

    def model_dir(self, arm: str, seed: int) -> Path:
        return self.runs / "models" / run_name(arm, seed)

    def regime_model_dir(self, arm: str, seed: int) -> Path:
        """A run of the regime chapter (08_regime): apart from ``models/``, which the study's chapters depend
        on as a whole, so the longer runs never re-run them."""
        return self.runs / "regime" / run_name(arm, seed)

    def notebook(self, name: str) -> Path:
        return self.results / "notebooks" / f"{name}.ipynb"

    def metrics(self, name: str) -> Path:
        return self.results / "metrics" / f"{name}.json"

    def plot_data(self, name: str) -> Path:
        return self.results / "plots" / f"{name}.csv"

    def per_image(self, name: str) -> Path:
        """Per-image arrays of every run (compressed .npz, committed): the clean test logits
        (``logits``; the regime chapter's runs: ``regime_logits``), corruption correctness (``corruptions``);
        what the report's bootstrap resamples."""
        return self.results / "per_image" / f"{name}.npz"

    def timings(self, name: str) -> Path:
        """Wall-clock seconds (different on every run): kept apart from the metrics, and no stage
        depends on them, so a re-run with the same results changes nothing downstream."""
        return self.results / "timings" / f"{name}.json"


@dataclass
class Session:
    """What a notebook needs: validated params, the layout, the device, and writers for its outputs."""

    params: config.Params
    layout: Layout
    device: torch.device
    started: float = field(default_factory=time.perf_counter)

    # ---- inputs
    def load_data(self) -> data.ImageData:
        from varmix.learn import data

        return data.load(self.params.dataset, project_root() / self.params.data_dir)

    @property
    def vae_dataset(self) -> str:
        """The dataset the VAE trains on: params.yaml's ``vae.dataset``, by default the classifier's."""
        return self.params.vae_dataset

    def check_vae_dataset(self) -> None:
        """A VAE from another dataset (``vae.dataset``) must encode the classifier's images: their channels
        must match (a ``ValueError`` naming both datasets and shapes otherwise). The image size may differ,
        as in the paper's Tiny-ImageNet (64x64) VAE for CIFAR (32x32): VarMixup and Mixup-R then resize
        the classifier's images to the VAE's size and the decodes back (varmix.learn.mixing.resize_images).
        Reads the datasets' specs only, no files."""
        from varmix.learn import data

        ours, theirs = self.params.dataset, self.vae_dataset
        a, b = data.image_shape(ours), data.image_shape(theirs)
        if a[0] != b[0]:
            raise ValueError(
                f"profiles.{self.params.profile}.vae.dataset = {theirs!r} has images of shape {b}, the "
                f"classifier's dataset {ours!r} {a}: the VAE must encode the classifier's images, so its "
                f"dataset needs the same number of channels (C; H x W may differ and are resized); pick one "
                f"with {a[0]} channel(s) or null (the classifier's dataset)")

    def load_vae_data(self, classifier_data: data.ImageData | None = None) -> data.ImageData:
        """The images the VAE trains on (``vae_dataset``), after ``check_vae_dataset``: the shapes are
        compared before anything is read or trained. ``classifier_data`` (``load_data``'s result) is
        returned as it is when the VAE trains on the classifier's dataset."""
        from varmix.learn import data

        self.check_vae_dataset()
        if classifier_data is not None and classifier_data.name == self.vae_dataset:
            return classifier_data
        return data.load(self.vae_dataset, project_root() / self.params.data_dir)

    def vae_config(self, kind: str = "plain"):
        """The VAE settings of ``kind``: the profile's ``vae``; for ``adversarial`` with its
        ``vae_adversarial`` block as the VAE's adversarial training (adv-VarMixup's recipe)."""
        return self.params.vae_of(kind)

    def vae_seed(self, vae_seed: int | None = None) -> int:
        """``vae_seed`` checked against params.yaml's ``vae_seeds`` (None: their first)."""
        seeds = self.params.vae_seeds
        if vae_seed is None:
            return seeds[0]
        if vae_seed not in seeds:
            raise ValueError(f"vae_seed = {vae_seed!r} is not among params.yaml's vae_seeds {list(seeds)}")
        return vae_seed

    def load_vae(self, kind: str = "plain", vae_seed: int | None = None) -> torch.nn.Module:
        """The VAE the ``vae@<vae_seed>`` stage (01_vae) trained (None: the first of ``vae_seeds``), or for
        ``kind = "adversarial"`` the ``vae_adversarial`` stage's, frozen, on the device (its channels checked
        against the classifier's dataset; its image size may differ, see ``check_vae_dataset``). A run of
        classifier seed s uses VAE seed ``params.vae_seed_of(s)`` (:meth:`vae_for`)."""
        from varmix.learn import data
        from varmix.learn.vae import load_vae

        seed = self.vae_seed(vae_seed) if kind == "plain" else None
        path = self.layout.vae_folder(kind, seed) / "vae.pt"
        stage = "vae@" + str(seed) if kind == "plain" else vae_name(kind)
        if not path.is_file():
            flag = f" --vae-seed {seed}" if kind == "plain" else f" --vae {kind}"
            raise FileNotFoundError(
                f"the VAE {path} is missing (the arms of {', '.join(names.VAE_METHODS)} with vae: {kind} need "
                f"it): train it first with `dvc repro {stage}` (or `python -m varmix notebook 01_vae --profile "
                f"{self.params.profile} --dataset {self.params.dataset}{flag}`)")
        vae = load_vae(path, self.device)
        if vae.in_channels != data.image_shape(self.params.dataset)[0]:  # H x W may differ: resized
            raise ValueError(f"the VAE {path} is for images of shape {vae.image_shape}, the dataset "
                             f"{self.params.dataset!r} has {data.image_shape(self.params.dataset)}: retrain it "
                             f"(`dvc repro {stage}`); the channels must match")
        return vae

    def vae_for(self, arm: str, seed: int) -> tuple[str, int | None] | None:
        """Which VAE run (``arm``, ``seed``) mixes with, as (kind, VAE seed) for ``load_vae``: the arm's
        kind (arm_settings' vae), the plain one of VAE seed ``params.vae_seed_of(seed)``; None for an arm
        whose method uses no VAE."""
        a = self.params.arm(arm)
        if a.method not in names.VAE_METHODS:
            return None
        return (a.vae, self.params.vae_seed_of(seed) if a.vae == "plain" else None)

    def runs(self, arm: str = "all", seed: int | str = "all") -> list[tuple[str, int]]:
        """The (arm, seed) pairs a notebook works on: ``"all"`` expands to params.yaml's arms and rival_arms,
        each with its seeds (``Params.seeds_of``: seeds, or rival_seeds for a rival arm); a named arm or seed
        must be one of them."""
        arms = self.params.arms if arm == "all" else (arm,)
        seeds = {a: self.params.seeds_of(a) for a in arms}  # refuses an arm that is not in params.yaml
        for a in arms:
            if seed != "all" and seed not in seeds[a]:
                raise ValueError(f"seed = {seed!r} is not among params.yaml's seeds for arm {a!r} {list(seeds[a])}")
        return [(a, sd) for a in arms for sd in (seeds[a] if seed == "all" else (seed,))]

    def regime_runs(self, arm: str = "all", seed: int | str = "all") -> list[tuple[str, int]]:
        """The (arm, seed) pairs of the regime chapter a notebook works on: ``"all"`` expands to params.yaml's
        regime_arms and regime_seeds; a named arm or seed must be one of them."""
        p = self.params
        if arm != "all" and arm not in p.regime_arms:
            raise ValueError(f"arm = {arm!r} is not in params.yaml's regime_arms ({', '.join(p.regime_arms)})")
        if seed != "all" and seed not in p.regime_seeds:
            raise ValueError(f"seed = {seed!r} is not among params.yaml's regime_seeds {list(p.regime_seeds)}")
        return [(a, sd) for a, sd in p.regime_runs if arm in ("all", a) and seed in ("all", sd)]

    def load_models(self, seed: int) -> dict[str, torch.nn.Module]:
        """The trained classifier for ``seed`` of every arm trained with it, in params.yaml's order, on the
        device, as ``varmix.learn.inference.inference_copy`` makes them (eval mode, the same bits, faster with
        the portable kernels); with the profile's ``eval.fold_batch_norm`` on, batch norm folded into the
        convolutions (other last digits): for inference and input gradients, not for training."""
        from varmix.learn.inference import inference_copy
        from varmix.learn.train import load_classifier

        fold = self.params.eval.fold_batch_norm
        return {a: inference_copy(load_classifier(self.layout.model_dir(a, seed), self.device), fold)
                for a in self.params.arms if seed in self.params.seeds_of(a)}

    def eval_set(self, d: data.ImageData) -> tuple[torch.Tensor, torch.Tensor]:
        """The test images (uint8) and labels the evaluation chapters use: the first ``eval.test_subset``."""
        n = self.params.eval.test_subset
        return d.test_x[:n], d.test_y[:n]

    def load_metrics(self, name: str) -> dict:
        path = self.layout.metrics(name)
        if not path.is_file():
            raise FileNotFoundError(f"metrics {path} not found: run the stage that writes it first "
                                    f"(dvc repro, or the notebook that saves {name!r})")
        return io.read_json(path)

    def load_plot_data(self, name: str) -> pd.DataFrame:
        import pandas as pd

        path = self.layout.plot_data(name)
        if not path.is_file():
            raise FileNotFoundError(f"plot data {path} not found: run the stage that writes it first")
        return pd.read_csv(path)

    def analysis_plan(self):
        """The committed analysis plan (analysis_plan.yaml at the project root), its family checked against
        params.yaml's comparisons."""
        from varmix.core import plan

        p = plan.load_plan(project_root())
        plan.check_family(p, self.params.comparisons)
        return p

    def plan_provenance(self, per_image: tuple[str, ...] = ("corruptions", "logits", "perturbations")) -> dict:
        """Whether the plan was committed before the per-image results the report decides
        (:func:`varmix.core.plan.provenance`)."""
        from varmix.core import plan

        return plan.provenance(project_root(), [self.layout.per_image(n) for n in per_image])

    # ---- outputs (atomic)
    def save_metrics(self, name: str, metrics: dict[str, Any], timings: dict[str, Any] | None = None) -> Path:
        """Write ``metrics`` (JSON-able; the same results give the same bytes) and, to ``layout.timings(name)``,
        the notebook's wall time so far as ``wall_seconds`` with ``timings`` (other seconds) beside it."""
        path = self.layout.metrics(name)
        io.write_json(path, json_ready(metrics))
        io.write_json(self.layout.timings(name), {**json_ready(timings or {}),
                                                  "wall_seconds": round(time.perf_counter() - self.started, 1)})
        return path

    def wall_times(self, names: list[str]) -> dict[str, float | None]:
        """The ``wall_seconds`` that ``save_metrics`` recorded for each name (None where there is no
        timings file, e.g. results made before timings were kept apart)."""
        out = {}
        for name in names:
            path = self.layout.timings(name)
            out[name] = io.read_json(path).get("wall_seconds") if path.is_file() else None
        return out

    def save_plot_data(self, name: str, frame: pd.DataFrame) -> Path:
        path = self.layout.plot_data(name)
        with io.atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6g")
        return path


def json_ready(obj: Any) -> Any:
    """numpy/pandas scalars and containers -> JSON types (NaN becomes null)."""
    import pandas as pd

    return json.loads(pd.Series([obj]).to_json(orient="values", double_precision=10))[0]


def resolve(profile: str | None, dataset: str | None) -> tuple[config.Params, Layout]:
    """params.yaml validated with these overrides, and where its outputs go."""
    root = project_root()
    params = config.load_params(root / "params.yaml", overrides={"profile": profile, "dataset": dataset})
    return params, Layout(output_root(root), params.dataset, params.profile)


def output_root(root: Path) -> Path:
    """Where runs/ and results/ go: ``$VARMIX_WORKDIR`` when it is set (interactive runs under `make lab`,
    nbval), else the project ``root``. Under DVC it is ignored: DVC sets ``DVC_STAGE`` for every stage command
    (`dvc repro`, `dvc repro -s`, `dvc exp run`, the queue), and a stage must write the outputs dvc.yaml
    declares, where DVC has just removed the committed ones and looks for the new; a VARMIX_WORKDIR inherited
    from a terminal would send them elsewhere and leave the stage's outputs deleted."""
    if os.environ.get(WORKDIR_ENV) and not workdir_ignored():
        return Path(os.environ[WORKDIR_ENV]).resolve()
    return root


def workdir_ignored() -> bool:
    """VARMIX_WORKDIR is set, and this process runs a DVC stage (see ``output_root``)."""
    return bool(os.environ.get(WORKDIR_ENV) and os.environ.get(DVC_STAGE_ENV))


def start(profile: str | None = None, dataset: str | None = None, device: str | None = None) -> Session:
    """Validate params.yaml (with the notebook's ``profile``/``dataset`` parameters) before any work,
    pick the device (CUDA when available), make CPU runs deterministic and set the tables' display."""
    params, layout = resolve(profile, dataset)
    for key, value in CPU_KERNELS.items():
        os.environ.setdefault(key, value)
    import pandas as pd
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cpu":
        _check_cpu_kernels(torch.backends.cpu.get_cpu_capability())
        torch.backends.mkldnn.enabled = params.selected.cpu_kernels != "portable"
        if params.selected.cpu_threads is not None:
            torch.set_num_threads(params.selected.cpu_threads)
    # torch.use_deterministic_algorithms(mode, warn_only=True) without its first line, which imports
    # torch._inductor (dynamo, sympy: 1.3-1.8 s of every stage's start) to set the determinism of
    # torch.compile's generated kernels; varmix never compiles. The flag itself is the same call.
    torch._C._set_deterministic_algorithms(dev.type == "cpu", warn_only=True)
    os.environ.setdefault("TQDM_DISABLE", "1")
    pd.set_option("display.precision", 4)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.width", 140)
    return Session(params, layout, dev)


def _check_cpu_kernels(capability: str) -> None:
    """Warn when torch runs AVX-512 kernels although CPU_KERNELS asks for AVX2: it chose them at an
    earlier CPU op in this process, and the run's numbers will differ in the last digits."""
    import warnings

    wanted = os.environ.get("ATEN_CPU_CAPABILITY", "").upper()
    if capability == "AVX512" and wanted != "AVX512":
        warnings.warn(f"torch uses AVX512 CPU kernels, not {wanted or 'AVX2'}: this run's numbers will "
                      f"differ in the last digits from runs on other machines (call session.start in a "
                      f"fresh process before any tensor work)", RuntimeWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------
# running the notebooks (dvc.yaml's stages and the nbval reference outputs)
def environment() -> dict[str, str]:
    """The machine a result came from, for the report."""
    import torch

    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name(0)
    else:
        dev = _cpu_name() or platform.machine()
    return {"torch": torch.__version__, "python": platform.python_version(), "device": dev,
            "threads": str(torch.get_num_threads())}


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
