"""Where the pipeline's files live, and the common start of every notebook.

Every notebook begins with ``s = pipeline.start(profile, dataset)``: params.yaml is validated (with the
notebook's parameters) before any work, the device is chosen, and ``s.layout`` names every file. The same
layout is spelled out in dvc.yaml (``runs/${dataset}/${profile}/...`` and ``results/${dataset}/${profile}/
...``); ``tests/test_pipeline.py`` checks that the two agree.

``VARMIX_WORKDIR`` moves ``runs/`` and ``results/`` elsewhere (nbval uses a temporary folder so that
testing never touches the committed results); the data is always read from the project's ``data_dir``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import platform
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from varmix import config, errors, io
from varmix.io import project_root

# torch, pandas and varmix.data are imported where they are used: `python -m varmix notebook` (one per
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
    def vae_dir(self) -> Path:
        return self.runs / "vae"

    def vae_folder(self, kind: str = "plain") -> Path:
        """The trained VAE of ``kind`` (config.VAE_KINDS): the vae stage's (plain) or the
        vae_adversarial stage's (adversarial, adv-VarMixup's)."""
        return self.vae_dir if kind == "plain" else self.runs / f"vae_{config.check_vae_kind(kind)}"

    def model_dir(self, arm: str, seed: int) -> Path:
        return self.runs / "models" / run_name(arm, seed)

    def notebook(self, name: str) -> Path:
        return self.results / "notebooks" / f"{name}.ipynb"

    def metrics(self, name: str) -> Path:
        return self.results / "metrics" / f"{name}.json"

    def plot_data(self, name: str) -> Path:
        return self.results / "plots" / f"{name}.csv"

    def per_image(self, name: str) -> Path:
        """Per-image arrays of every run (compressed .npz, committed): the clean test logits
        (``logits``), corruption correctness (``corruptions``); what the report's bootstrap resamples."""
        return self.results / "per_image" / f"{name}.npz"

    def timings(self, name: str) -> Path:
        """Wall-clock seconds (different on every run): kept apart from the metrics, and no stage
        depends on them, so a re-run with the same results changes nothing downstream."""
        return self.results / "timings" / f"{name}.json"


def vae_name(kind: str = "plain") -> str:
    """The name of a VAE's metrics, plot data and executed notebook suffix: ``vae`` (plain) or
    ``vae_adversarial``."""
    return "vae" if config.check_vae_kind(kind) == "plain" else f"vae_{kind}"


def run_name(arm: str, seed: int) -> str:
    """The name of one trained model: ``<arm>-s<seed>`` (model folder, metrics, plot data)."""
    return f"{arm}-s{seed}"


@dataclass
class Session:
    """What a notebook needs: validated params, the layout, the device, and writers for its outputs."""

    params: config.Params
    layout: Layout
    device: torch.device
    started: float = field(default_factory=time.perf_counter)

    # ---- inputs
    def load_data(self) -> data.ImageData:
        from varmix import data

        return data.load(self.params.dataset, project_root() / self.params.data_dir)

    @property
    def vae_dataset(self) -> str:
        """The dataset the VAE trains on: params.yaml's ``vae.dataset``, by default the classifier's."""
        return self.params.vae_dataset

    def check_vae_dataset(self) -> None:
        """A VAE from another dataset (``vae.dataset``) must take the classifier's images as they are: a
        ``ValueError`` naming both datasets and shapes when their image shapes (C, H, W) differ. Reads
        the datasets' specs only, no files."""
        from varmix import data

        ours, theirs = self.params.dataset, self.vae_dataset
        a, b = data.image_shape(ours), data.image_shape(theirs)
        if a != b:
            raise ValueError(
                f"profiles.{self.params.profile}.vae.dataset = {theirs!r} has images of shape {b}, the "
                f"classifier's dataset {ours!r} {a}: the VAE must encode the classifier's images, so its "
                f"dataset needs the same shape (C, H, W); pick one of the same shape or null (the "
                f"classifier's dataset)")

    def load_vae_data(self, classifier_data: data.ImageData | None = None) -> data.ImageData:
        """The images the VAE trains on (``vae_dataset``), after ``check_vae_dataset``: the shapes are
        compared before anything is read or trained. ``classifier_data`` (``load_data``'s result) is
        returned as it is when the VAE trains on the classifier's dataset."""
        from varmix import data

        self.check_vae_dataset()
        if classifier_data is not None and classifier_data.name == self.vae_dataset:
            return classifier_data
        return data.load(self.vae_dataset, project_root() / self.params.data_dir)

    def vae_config(self, kind: str = "plain"):
        """The VAE settings of ``kind``: the profile's ``vae``; for ``adversarial`` with its
        ``vae_adversarial`` block as the VAE's adversarial training (adv-VarMixup's recipe)."""
        return self.params.vae_of(kind)

    def load_vae(self, kind: str = "plain") -> torch.nn.Module:
        """The VAE the ``vae`` stage (01_vae) trained, or for ``kind = "adversarial"`` the
        ``vae_adversarial`` stage, frozen, on the device (its image shape checked against the classifier's
        dataset)."""
        from varmix import data
        from varmix.vae import load_vae

        path = self.layout.vae_folder(kind) / "vae.pt"
        stage = vae_name(kind)
        if not path.is_file():
            flag = "" if kind == "plain" else f" --vae {kind}"
            raise FileNotFoundError(
                f"the VAE {path} is missing (the arms of {', '.join(config.VAE_METHODS)} with vae: {kind} need "
                f"it): train it first with `dvc repro {stage}` (or `python -m varmix notebook 01_vae --profile "
                f"{self.params.profile} --dataset {self.params.dataset}{flag}`)")
        vae = load_vae(path, self.device)
        if vae.image_shape != data.image_shape(self.params.dataset):
            raise ValueError(f"the VAE {path} is for images of shape {vae.image_shape}, the dataset "
                             f"{self.params.dataset!r} has {data.image_shape(self.params.dataset)}: retrain it "
                             f"(`dvc repro {stage}`)")
        return vae

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

    def load_models(self, seed: int) -> dict[str, torch.nn.Module]:
        """The trained classifier for ``seed`` of every arm trained with it, in params.yaml's order, on the
        device."""
        from varmix.train import load_classifier

        return {a: load_classifier(self.layout.model_dir(a, seed), self.device) for a in self.params.arms
                if seed in self.params.seeds_of(a)}

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

    # ---- outputs (atomic)
    def save_metrics(self, name: str, metrics: dict[str, Any], timings: dict[str, Any] | None = None) -> Path:
        """Write ``metrics`` (JSON-able; the same results give the same bytes) and, to ``layout.timings(name)``,
        the notebook's wall time so far as ``wall_seconds`` with ``timings`` (other seconds) beside it."""
        path = self.layout.metrics(name)
        io.write_json(path, _plain(metrics))
        io.write_json(self.layout.timings(name), {**_plain(timings or {}),
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


def _plain(obj: Any) -> Any:
    """numpy/pandas scalars and containers -> JSON types (NaN becomes null)."""
    import pandas as pd

    return json.loads(pd.Series([obj]).to_json(orient="values", double_precision=10))[0]


def _resolve(profile: str | None, dataset: str | None) -> tuple[config.Params, Layout]:
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
    if os.environ.get(WORKDIR_ENV) and not _workdir_ignored():
        return Path(os.environ[WORKDIR_ENV]).resolve()
    return root


def _workdir_ignored() -> bool:
    """VARMIX_WORKDIR is set, and this process runs a DVC stage (see ``output_root``)."""
    return bool(os.environ.get(WORKDIR_ENV) and os.environ.get(DVC_STAGE_ENV))


def start(profile: str | None = None, dataset: str | None = None, device: str | None = None) -> Session:
    """Validate params.yaml (with the notebook's ``profile``/``dataset`` parameters) before any work,
    pick the device (CUDA when available), make CPU runs deterministic and set the tables' display."""
    params, layout = _resolve(profile, dataset)
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
    torch.use_deterministic_algorithms(dev.type == "cpu", warn_only=True)
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
                      f"differ in the last digits from runs on other machines (call pipeline.start in a "
                      f"fresh process before any tensor work)", RuntimeWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------
# running the notebooks (dvc.yaml's stages and the nbval reference outputs)
NOTEBOOKS = ("01_vae", "02_train", "03_corruptions", "04_calibration", "05_landscape", "06_perturbations",
             "07_report")
KERNEL = "python3"  # registered by `make install` (ipykernel install --sys-prefix --name python3)
# ipykernel logs a warning about its localhost TCP transport on every start; the kernel's own errors still show
_KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]
_VOLATILE_NB = ("start_time", "end_time", "duration", "input_path", "output_path", "exception")
_VOLATILE_CELL = ("papermill", "execution")


# The file a warning raised by a notebook cell names: the kernel's temporary folder holds the process id
# (/tmp/ipykernel_2481/3066736907.py; the file name is a hash of the cell's code, the same every run).
_KERNEL_CELL_FILE = re.compile(r"[^\s'\"]*/ipykernel_\d+/")
KERNEL_CELL_DIR = "<kernel>/"
# Wall times a chapter prints differ on every run; the numbers are kept in results/.../timings/ (which no stage
# depends on), so the executed notebook keeps the line and points there. The same lines nbval's sanitizer
# masks (notebooks/sanitize.cfg).
_WALL_TIMES = ((re.compile(r"wall time ([^:\n]+): \d+(?:\.\d+)? s"), r"wall time \1: in timings/"),
               (re.compile(r"\d+(?:\.\d+)? to \d+(?:\.\d+)? s over (\d+) runs"), r"in timings/ (\1 runs)"))


def clean_notebook(path: str | os.PathLike) -> None:
    """Drop what changes on every execution from an executed notebook (papermill's timestamps and
    paths, per-cell execution times, the random id of the cell papermill injects with the parameters, the
    kernel's temporary folder in the text of a warning a cell raised, the seconds of a printed wall time),
    keeping the outputs and the parameters, so a re-run that gives the same results gives the same file."""
    import nbformat

    path = Path(path)
    book = nbformat.read(path, as_version=4)
    meta = book.metadata.get("papermill", {})
    for key in _VOLATILE_NB:
        meta.pop(key, None)
    for cell in book.cells:
        for key in _VOLATILE_CELL:
            cell.metadata.pop(key, None)
        if "injected-parameters" in cell.metadata.get("tags", ()):
            cell["id"] = "injected-parameters"
        for out in cell.get("outputs", ()):
            if out.get("output_type") == "stream":
                out["text"] = _KERNEL_CELL_FILE.sub(KERNEL_CELL_DIR, out["text"])
                for pattern, fixed in _WALL_TIMES:
                    out["text"] = pattern.sub(fixed, out["text"])
    nbformat.write(book, path)


def failed_path(out: Path) -> Path:
    """Where a run that failed leaves its executed notebook (with the traceback): beside ``out`` as
    ``<name>.failed.ipynb``, never over ``out`` itself (.gitignore'd; no dvc.yaml stage names it as an
    output, so DVC never records it). A later successful run deletes it."""
    return out.with_name(f"{out.stem}.failed.ipynb")


def _execute(src: Path, out: Path, parameters: dict[str, Any] | None, label: str | None = None) -> None:
    """Execute ``src`` into ``out`` (atomically). A cell that raises, a kernel that dies, SIGTERM or SIGINT
    write nothing to ``out``; the first two leave the executed notebook at ``failed_path(out)`` and raise
    ``errors.NotebookFailed`` with the cell's error line, a signal stops the kernel and raises
    ``errors.Interrupted``."""
    import papermill as pm
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    label = label or src.stem
    check_kernel()
    # papermill's logger (nbclient's too) has no handler, so Python prints its records to stderr, e.g.
    # "Kernel died while waiting for execute reply." before our own one-line report; a handler keeps them
    # out of the way (a program that configures logging still gets them through propagation).
    logger = logging.getLogger("papermill")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    failed = failed_path(out)
    with io.atomic_path(out, suffix=".ipynb") as tmp, _stop_kernel_on_signals(label):
        try:
            pm.execute_notebook(str(src), str(tmp), parameters=parameters or None, kernel_name=KERNEL,
                                cwd=str(src.parent), progress_bar=False, language="python",
                                kernel_manager_class=_kernel_manager_class(), extra_arguments=_KERNEL_ARGS)
        except PapermillExecutionError as exc:  # papermill wrote the notebook, traceback included
            os.replace(tmp, failed)
            raise errors.NotebookFailed(label, exc.ename, exc.evalue, failed) from None
        except DeadKernelError:
            if tmp.is_file() and tmp.stat().st_size:
                os.replace(tmp, failed)
            raise errors.NotebookFailed(
                label, "DeadKernelError", "the kernel died (killed from outside, or by the system when memory "
                "ran out); lower the profile's batch sizes or free memory, and run it again",
                failed if failed.is_file() else None) from None
        clean_notebook(tmp)
    failed.unlink(missing_ok=True)


def check_kernel(name: str = KERNEL) -> None:
    """Fail before anything starts when the Jupyter kernel ``name`` is missing or runs a Python that cannot
    import ipykernel (papermill would report it as a long traceback from inside jupyter_client)."""
    import subprocess
    import sys

    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    fix = f"register it with `python -m ipykernel install --sys-prefix --name {name}` (or `make install`)"
    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        raise errors.UserError(f"no Jupyter kernel named {name!r}: {fix}") from None
    exe = spec.argv[0] if spec.argv else ""
    if exe in ("python", f"python{sys.version_info[0]}", "python%i.%i" % sys.version_info[:2]):
        exe = sys.executable  # what jupyter_client's KernelManager.format_kernel_cmd runs for these names
    found = shutil.which(exe) if exe else None
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('ipykernel') is None)"
    if found is None or subprocess.run([found, "-c", probe], capture_output=True).returncode != 0:
        why = "which does not exist" if found is None else "which cannot import ipykernel"
        raise errors.UserError(f"the Jupyter kernel {name!r} ({Path(spec.resource_dir) / 'kernel.json'}) runs "
                               f"{exe or '(no command)'}, {why}: {fix}")


def kernel_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the project this varmix was imported from (when it was imported
    from a project checkout, the folder holding params.yaml) first on PYTHONPATH, so the kernel runs the same
    varmix as the process that runs the notebook. The kernel starts in notebooks/, so it would otherwise
    import varmix from PYTHONPATH or the editable install: in a queued experiment that is the main
    workspace's code, not the copy under .dvc/tmp/exps that `python -m varmix` runs and DVC hashes."""
    env = dict(os.environ if env is None else env)
    here = Path(__file__).resolve().parents[1]
    if (here / "params.yaml").is_file():
        rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([str(here), *rest])
    return env


@functools.cache
def _kernel_manager_class():
    from jupyter_client.manager import AsyncKernelManager

    class TrackedKernelManager(AsyncKernelManager):
        """nbclient's kernel manager, remembering the process group of each kernel it starts
        (jupyter_client starts kernels in their own session) so a signal handler can stop it."""

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            kw["env"] = kernel_env(kw.get("env"))
            await super()._async_launch_kernel(kernel_cmd, **kw)
            _KERNEL_GROUPS.add(getattr(self.provisioner, "pgid", None) or self.provisioner.pid)

    return TrackedKernelManager


_KERNEL_GROUPS: set[int] = set()


def _kill_kernels() -> None:
    """SIGKILL the running kernels' process groups (safe while they run: a kernel is our child, so its pid,
    the group's id, cannot be reused before nbclient reaps it)."""
    while _KERNEL_GROUPS:
        group = _KERNEL_GROUPS.pop()
        try:
            os.killpg(group, signal.SIGKILL)  # the kernel and whatever it started
        except (ProcessLookupError, PermissionError):
            pass


@contextlib.contextmanager
def _stop_kernel_on_signals(label: str) -> Iterator[None]:
    """While a notebook runs, SIGTERM and SIGINT (Ctrl-C, which reaches the stage's command through the
    terminal) kill the kernel's process group and raise ``errors.Interrupted``: without this the kernel, in
    its own session, outlives us and keeps writing outputs that dvc.lock does not record. dvc itself does
    not pass SIGTERM on to its stage's command, so the death of our parent (dvc, when it runs us) counts as
    a SIGTERM too."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return
    stopping = []

    def stop(signum: int, frame: Any) -> None:
        if stopping:  # a second signal while the first one unwinds: the kernel is already gone
            return
        stopping.append(signum)
        # Interrupting the event loop leaves nbclient's cell task to fail with DeadKernelError once the kernel
        # is killed; asyncio then logs "Task exception was never retrieved" with a traceback when the task is
        # collected. The user has asked to stop and gets our one line, so that record goes nowhere.
        logging.getLogger("asyncio").addHandler(logging.NullHandler())
        _kill_kernels()
        raise errors.Interrupted(signum, label)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    done = threading.Event()
    threading.Thread(target=_on_parent_death, args=(os.getppid(), done), daemon=True).start()
    try:
        yield
    finally:
        done.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # nbclient has shut its kernel down and reaped it: its group id may be reused from now on
        _KERNEL_GROUPS.clear()


def _on_parent_death(parent: int, done: threading.Event, every: float = 0.5) -> None:
    """SIGTERM to this process once its parent has gone (we are re-parented, so ``getppid`` changes).
    Polled rather than Linux's prctl(PR_SET_PDEATHSIG) so that it works on any POSIX system."""
    while not done.wait(every):
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def run_notebook(name: str, profile: str | None = None, dataset: str | None = None,
                 arm: str | None = None, seed: int | None = None, vae: str | None = None) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with papermill (a dvc.yaml stage) and write it, cleaned, to
    ``results/<dataset>/<profile>/notebooks/<name>[-<arm>-s<seed>].ipynb`` (01_vae with ``vae`` =
    adversarial: ``01_vae-adversarial.ipynb``, the vae_adversarial stage). Parameters are checked
    before the kernel starts; a cell that raises fails the run, writes nothing to the output and leaves the
    executed notebook at ``failed_path(out)`` (see ``_execute``)."""
    if name not in NOTEBOOKS:
        raise ValueError(f"notebook {name!r} is unknown: expected one of {', '.join(NOTEBOOKS)}")
    if (arm is None) != (seed is None) or (arm is not None and name != "02_train"):
        raise ValueError(f"arm and seed go together and only with 02_train (got arm={arm!r}, "
                         f"seed={seed!r} for {name})")
    if vae is not None and (name != "01_vae" or vae not in config.VAE_KINDS):
        raise ValueError(f"vae = {vae!r} goes only with 01_vae and is one of {', '.join(config.VAE_KINDS)} (got "
                         f"it for {name})")
    params, layout = _resolve(profile, dataset)  # validates params.yaml with these overrides
    if arm is not None:
        Session(params, layout, None).runs(arm, seed)  # names must be among params.yaml's lists
    parameters: dict[str, Any] = {"profile": params.profile, "dataset": params.dataset}
    out_name = name
    if arm is not None:
        parameters.update(arm=arm, seed=seed)
        out_name = f"{name}-{run_name(arm, seed)}"
    if vae not in (None, "plain"):
        parameters["vae_kind"] = vae
        out_name = f"{name}-{vae}"
    out = layout.notebook(out_name)
    if _workdir_ignored():
        print(f"note: {WORKDIR_ENV}={os.environ[WORKDIR_ENV]} is ignored under DVC (stage "
              f"{os.environ[DVC_STAGE_ENV]}): its outputs go where dvc.yaml declares them", file=sys.stderr)
    for folder in (layout.results, layout.runs):
        _check_writable(folder)
    label = name if arm is None else f"{name} (arm {arm}, seed {seed})"
    label += "" if vae in (None, "plain") else f" (vae {vae})"
    with run_lock(layout.root / "runs" / "tmp" / "locks" / f"{params.dataset}-{params.profile}-{out_name}.lock",
                  f"notebook {label}"):
        _execute(project_root() / "notebooks" / f"{name}.ipynb", out, parameters, label)
    return out


@contextlib.contextmanager
def run_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` while one notebook run writes its outputs, so a second run of the
    same notebook with the same parameters (by hand while `dvc repro` runs its stage, say) is refused at once
    instead of writing the same files; DVC's own lock covers only two DVC commands. flock is released by the
    kernel when the process ends, however it ends, so a killed run leaves no stale lock. runs/tmp/ is
    git-ignored and outside every DVC output."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise errors.UserError(f"{what} is already running (process {holder}, lock {path}): wait for it to "
                                   "end, or stop it, then run again") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield


def _check_writable(folder: Path) -> None:
    """Fail before the kernel starts when ``folder`` (or the nearest existing folder above it) cannot be
    written: a test file is created there, which also catches read-only mounts and root-owned folders."""
    import tempfile

    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise errors.UserError(f"cannot write to {existing} ({exc.strerror}): make it writable, or set "
                               f"{WORKDIR_ENV} to write runs/ and results/ elsewhere") from None


def train_adversarial_vae_for_nbval() -> Path:
    """The smoke profile's adversarial VAE (the vae_adversarial stage: 01_vae with ``vae = adversarial``),
    which 02_train's adv_varmixup arm needs, written where the notebooks' runs go (VARMIX_WORKDIR). nbval
    and ``refresh_notebooks`` run notebooks/ with their defaults, i.e. the plain VAE only, so both call this
    after 01_vae (notebooks/conftest.py for nbval), as dvc.yaml orders the stages."""
    return run_notebook("01_vae", "smoke", vae="adversarial")


def refresh_notebooks(names: tuple[str, ...] = NOTEBOOKS) -> None:
    """Re-execute ``notebooks/*.ipynb`` in place with their own defaults (the smoke profile), writing
    runs/results into a temporary folder: the stored outputs nbval compares against."""
    import tempfile

    root = project_root()
    old = os.environ.get(WORKDIR_ENV)
    with tempfile.TemporaryDirectory(prefix="varmix-nbval-") as tmp:
        os.environ[WORKDIR_ENV] = tmp
        try:
            for name in names:
                path = root / "notebooks" / f"{name}.ipynb"
                print(f"executing {path.relative_to(root)}", flush=True)
                _execute(path, path, None)
                if name == "01_vae":
                    train_adversarial_vae_for_nbval()
        finally:
            if old is None:
                os.environ.pop(WORKDIR_ENV, None)
            else:
                os.environ[WORKDIR_ENV] = old


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
