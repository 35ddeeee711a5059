"""Running a chapter: ``python -m varmix notebook NAME`` executes notebooks/NAME.ipynb with papermill into
results/ (a dvc stage), with the kernel stopped on SIGINT/SIGTERM, a lock per run, and the executed notebook
cleaned of process-specific text so that equal runs give equal bytes."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from varmix.core import errors, io, names
from varmix.core.io import project_root
from varmix.core.names import run_name
from varmix.pipeline.session import DVC_STAGE_ENV, WORKDIR_ENV, Session, resolve, workdir_ignored

NOTEBOOKS = ("01_vae", "02_train", "03_corruptions", "04_calibration", "05_landscape", "06_perturbations",
             "07_report", "08_regime")
KERNEL = "python3"  # registered by `make install` (ipykernel install --sys-prefix --name python3)
# ipykernel logs a warning about its localhost TCP transport on every start; the kernel's own errors still show.
# No input history: IPython would open (and at exit write) ~/.ipython/profile_default/history.sqlite in every
# stage, a file outside the project that no stage records (~0.05 s of each kernel's start)
_KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR", "--HistoryManager.enabled=False"]
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
            # shutdown_kernel="immediate": once the last cell has replied the kernel has nothing left to do, and
            # nbclient's graceful shutdown (a shutdown request, then a wait for the process) took 4 s in 1 run of 6
            # (benchmarks/stage_overhead.py); the kernel is killed instead, as jupyter_client does after that wait.
            pm.execute_notebook(str(src), str(tmp), parameters=parameters or None, kernel_name=KERNEL,
                                cwd=str(src.parent), progress_bar=False, language="python",
                                kernel_manager_class=_kernel_manager_class(), extra_arguments=_KERNEL_ARGS,
                                shutdown_kernel="immediate")
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
    here = Path(__file__).resolve().parents[2]  # varmix/pipeline/runner.py -> the checkout
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


@dataclass(frozen=True)
class NotebookRun:
    """One checked notebook run: what ``prepare`` resolved and ``execute`` carries out."""

    name: str
    out: Path                    # the executed notebook's path under results/
    parameters: dict[str, Any]   # papermill's parameters
    label: str                   # how messages name the run
    lock: Path                   # the run's lock file (``run_lock``)
    params: Any                  # the resolved ``config.Params``


def run_notebook(name: str, profile: str | None = None, dataset: str | None = None,
                 arm: str | None = None, seed: int | None = None, vae: str | None = None,
                 vae_seed: int | None = None, regime: bool = False) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with papermill (a dvc.yaml stage) and write it, cleaned, to
    ``results/<dataset>/<profile>/notebooks/<name>[-<arm>-s<seed>].ipynb`` (01_vae with ``vae`` =
    adversarial: ``01_vae-adversarial.ipynb``, the vae_adversarial stage; with ``vae_seed`` = k:
    ``01_vae-s<k>.ipynb``, the vae@k stage; 02_train with ``regime``: ``02_train-regime_<arm>-s<seed>.ipynb``, the
    train_regime stage). Parameters are checked
    before the kernel starts (``prepare``); a cell that raises fails the run, writes nothing to the output and
    leaves the executed notebook at ``failed_path(out)`` (see ``_execute``)."""
    return execute(prepare(name, profile, dataset, arm, seed, vae, vae_seed, regime))


def prepare(name: str, profile: str | None = None, dataset: str | None = None,
            arm: str | None = None, seed: int | None = None, vae: str | None = None,
            vae_seed: int | None = None, regime: bool = False) -> NotebookRun:
    """Every check ``run_notebook`` makes before the kernel starts (the notebook, its arguments, params.yaml,
    writable output folders), writing nothing; the command line runs it inside ``preflight.guard``."""
    if name not in NOTEBOOKS:
        raise ValueError(f"notebook {name!r} is unknown: expected one of {', '.join(NOTEBOOKS)}")
    if (arm is None) != (seed is None) or (arm is not None and name != "02_train"):
        raise ValueError(f"arm and seed go together and only with 02_train (got arm={arm!r}, "
                         f"seed={seed!r} for {name})")
    if vae is not None and (name != "01_vae" or vae not in names.VAE_KINDS):
        raise ValueError(f"vae = {vae!r} goes only with 01_vae and is one of {', '.join(names.VAE_KINDS)} (got "
                         f"it for {name})")
    if vae_seed is not None and (name != "01_vae" or vae not in (None, "plain")):
        raise ValueError(f"vae_seed = {vae_seed!r} goes only with 01_vae's plain VAE (got it for {name}"
                         f"{'' if vae in (None, 'plain') else ' with vae ' + vae})")
    if regime and arm is None:
        raise ValueError(f"regime goes with 02_train and an arm and seed (got it for {name} without them)")
    params, layout = resolve(profile, dataset)  # validates params.yaml with these overrides
    if arm is not None:  # names must be among params.yaml's lists
        (Session(params, layout, None).regime_runs if regime else Session(params, layout, None).runs)(arm, seed)
    if vae_seed is not None:
        Session(params, layout, None).vae_seed(vae_seed)  # one of params.yaml's vae_seeds
    parameters: dict[str, Any] = {"profile": params.profile, "dataset": params.dataset}
    out_name = name
    if arm is not None:
        parameters.update(arm=arm, seed=seed, **({"regime": True} if regime else {}))
        out_name = f"{name}-{(names.regime_run_name if regime else run_name)(arm, seed)}"
    if vae not in (None, "plain"):
        parameters["vae_kind"] = vae
        out_name = f"{name}-{vae}"
    if vae_seed is not None:
        parameters["vae_seed"] = vae_seed
        out_name = f"{name}-s{vae_seed}"
    for folder in (layout.results, layout.runs):
        _check_writable(folder)
    label = name if arm is None else f"{name} (arm {arm}, seed {seed}{', regime' if regime else ''})"
    label += "" if vae in (None, "plain") else f" (vae {vae})"
    label += "" if vae_seed is None else f" (vae seed {vae_seed})"
    lock = layout.root / "runs" / "tmp" / "locks" / f"{params.dataset}-{params.profile}-{out_name}.lock"
    return NotebookRun(name, layout.notebook(out_name), parameters, label, lock, params)


def execute(run: NotebookRun) -> Path:
    """Run a prepared notebook under its run lock; returns the executed notebook's path."""
    if workdir_ignored():
        print(f"note: {WORKDIR_ENV}={os.environ[WORKDIR_ENV]} is ignored under DVC (stage "
              f"{os.environ[DVC_STAGE_ENV]}): its outputs go where dvc.yaml declares them", file=sys.stderr)
    with run_lock(run.lock, f"notebook {run.label}"):
        _execute(project_root() / "notebooks" / f"{run.name}.ipynb", run.out, run.parameters, run.label)
    return run.out


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
    written (``io.probe_write``)."""
    try:
        io.probe_write(folder)
    except OSError as exc:
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        raise errors.UserError(f"cannot write to {existing} ({exc.strerror}): make it writable, or set "
                               f"{WORKDIR_ENV} to write runs/ and results/ elsewhere") from None


def train_vaes_for_nbval() -> list[Path]:
    """The smoke profile's VAEs that 02_train needs beyond the one 01_vae's defaults train (the first of
    vae_seeds): the plain VAE of every other VAE seed (the vae@<k> stages) and the adversarial VAE (the
    vae_adversarial stage, adv_varmixup's), written where the notebooks' runs go (VARMIX_WORKDIR). nbval
    runs each notebook once with its defaults, so they are trained here, after 01_vae (notebooks/conftest.py
    for nbval), as dvc.yaml orders the stages."""
    params, _ = resolve("smoke", None)
    return [*(run_notebook("01_vae", "smoke", vae_seed=k) for k in params.vae_seeds[1:]),
            run_notebook("01_vae", "smoke", vae="adversarial")]


def train_regime_for_nbval() -> Path:
    """The smoke profile's regime runs (02_train with ``regime``, every regime arm and seed in one notebook),
    which 08_regime needs and no notebook's defaults produce: trained before 08_regime (notebooks/conftest.py
    for nbval, ``refresh_notebooks``), as dvc.yaml's train_regime stages precede the regime stage. Its executed
    notebook goes where the notebooks' runs go (VARMIX_WORKDIR), as ``02_train-regime.ipynb``."""
    params, layout = resolve("smoke", None)
    out = layout.notebook("02_train-regime")
    _execute(project_root() / "notebooks" / "02_train.ipynb", out,
             {"profile": "smoke", "dataset": params.dataset, "regime": True}, "02_train (regime)")
    return out


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
                    train_vaes_for_nbval()
                if name == "02_train":
                    train_regime_for_nbval()
        finally:
            if old is None:
                os.environ.pop(WORKDIR_ENV, None)
            else:
                os.environ[WORKDIR_ENV] = old


