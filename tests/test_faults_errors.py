"""Fault injection (issue 15, finding 7): every error a user can cause reaches them as one or two lines
(what, which file or key, what to do), never a traceback, at the command line and through a failing
dvc stage (``python -m varmix notebook NAME``); SIGTERM/SIGINT stop the notebook's kernel too.

The notebook cases run the real notebooks with the smoke profile in a temporary copy of the project
(params.yaml, notebooks/, the prepared data linked in), as ``python -m varmix`` subprocesses.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest
import yaml
from test_data import fake_fashion

from varmix.core import errors
from varmix.learn import data
from varmix.pipeline import runner, session
from varmix.pipeline.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
PREPARED = ROOT / "data" / "fashion-mnist"


def env() -> dict[str, str]:
    """The subprocesses' environment: this checkout's varmix, outputs inside the temporary project."""
    e = {k: v for k, v in os.environ.items() if k not in (session.WORKDIR_ENV, "DVC_ROOT")}
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the project that the notebooks can run in: params.yaml, notebooks/, the prepared
    Fashion-MNIST (the .npy files linked, meta.json copied so a test can damage it)."""
    if not (PREPARED / "meta.json").is_file():
        pytest.skip("run `python -m varmix prepare-data` first")
    proj = tmp_path / "proj"
    (proj / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", proj)
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        shutil.copy(nb, proj / "notebooks")
    folder = proj / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    for f in data.FILES:
        (folder / f).symlink_to(PREPARED / f)
    shutil.copy(PREPARED / "meta.json", folder)
    return proj


def varmix(proj: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "varmix", *args], cwd=proj, env=kw.pop("env", env()),
                          capture_output=True, text=True, timeout=300, **kw)


def short_error(stderr: str, most: int = 3) -> list[str]:
    """The error as the user sees it: a few lines, no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert 1 <= len(lines) <= most, stderr
    return lines


def smoke_out(proj: Path) -> Path:
    return proj / "results" / "fashion-mnist" / "smoke"


# ---------------------------------------------------------------------------------------------------
# damaged prepared data: the message names the file and the one fix that works from a fresh clone
FIX = ("python -m varmix prepare-data",)


def test_truncated_meta_json_through_a_stage(project):
    meta = project / "data" / "fashion-mnist" / "meta.json"
    meta.write_text(meta.read_text()[:100])
    r = varmix(project, "notebook", "01_vae", "--profile", "smoke")
    assert r.returncode == 1
    first, second = short_error(r.stderr, most=2)
    assert first.startswith("error in notebook 01_vae: DataError: ") and f"{meta} is damaged (not JSON" in first
    assert all(fix in first for fix in FIX)
    failed = smoke_out(project) / "notebooks" / "01_vae.failed.ipynb"
    assert second == f"full traceback: {failed}"
    # the executed notebook keeps the traceback; nothing was written where the stage's output goes
    book = nbformat.read(failed, as_version=4)
    tracebacks = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert [o.ename for o in tracebacks] == ["DataError"] and len(tracebacks[0].traceback) > 3
    assert not (smoke_out(project) / "notebooks" / "01_vae.ipynb").exists()
    assert not (smoke_out(project) / "metrics").exists()


@pytest.mark.parametrize("damage, expected", [
    ("missing", "prepared fashion-mnist not found in {folder} (no meta.json)"),
    ("truncated", "{meta} is damaged (not JSON"),
    ("no md5", "{meta} lacks the md5 of each of train_x.npy"),
    ("md5 not a dict", "{meta} lacks the md5 of each of train_x.npy"),
    ("damaged npy", "{folder}/train_y.npy is corrupt: its md5 differs from the one in {meta}"),
])
def test_damaged_prepared_data_names_file_and_fix(tmp_path, damage, expected):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    meta = folder / "meta.json"
    md5 = {f: "0" * 32 for f in data.FILES}
    for f in data.FILES:
        (folder / f).write_bytes(b"x")
    md5.update({f: data.file_md5(folder / f) for f in data.FILES if f != "train_y.npy"})
    content = {"missing": None, "truncated": '{"md5": {"train', "no md5": json.dumps({"dataset": "fashion-mnist"}),
               "md5 not a dict": json.dumps({"md5": ["a"]}), "damaged npy": json.dumps({"md5": md5})}[damage]
    if content is not None:
        meta.write_text(content)
    with pytest.raises(data.DataError) as err:
        data.load("fashion-mnist", tmp_path)
    msg = str(err.value)
    assert expected.format(folder=folder, meta=meta) in msg and all(fix in msg for fix in FIX), msg
    assert isinstance(err.value, errors.UserError)  # the CLI reports it as one line


# ---------------------------------------------------------------------------------------------------
def test_missing_vae_names_folder_and_stage(project):
    r = varmix(project, "notebook", "02_train", "--profile", "smoke", "--method", "varmixup", "--seed", "0")
    assert r.returncode == 1
    first, second = short_error(r.stderr, most=2)
    vae = project / "runs" / "fashion-mnist" / "smoke" / "vae" / "s0" / "vae.pt"  # seed 0's VAE seed: vae_seeds[0]
    assert first.startswith("error in notebook 02_train (arm varmixup, seed 0): FileNotFoundError: "
                            f"the VAE {vae} is missing (the arms of mixup_r, varmixup with vae: plain need it): train it "
                            "first with `dvc repro vae@0`"), first
    assert "--vae-seed 0`" in first
    assert second == f"full traceback: {smoke_out(project) / 'notebooks' / '02_train-varmixup-s0.failed.ipynb'}"


def test_read_only_results_is_named_before_the_kernel_starts(project):
    results = project / "results"
    results.mkdir()
    cmd = [sys.executable, "-m", "varmix", "notebook", "01_vae", "--profile", "smoke"]
    if os.geteuid() == 0:  # root writes through file modes: make the folder a read-only mount instead
        if not shutil.which("unshare"):
            pytest.skip("running as root without unshare: cannot make a read-only folder")
        cmd = ["unshare", "-m", "sh", "-c", 'mount --bind -o ro results results && exec "$0" "$@"', *cmd]
    else:
        results.chmod(0o555)
    try:
        r = subprocess.run(cmd, cwd=project, env=env(), capture_output=True, text=True, timeout=120)
    finally:
        results.chmod(0o755)
    if "mount:" in r.stderr or "unshare:" in r.stderr:
        pytest.skip(f"no read-only bind mount here: {r.stderr.strip()}")
    assert r.returncode == 2
    (line,) = short_error(r.stderr, most=1)
    assert line.startswith(f"error: cannot write to {results} (") and "VARMIX_WORKDIR" in line, line
    assert not list(results.iterdir())


# ---------------------------------------------------------------------------------------------------
# the kernel: a kernelspec without ipykernel, a kernel that dies, SIGTERM/SIGINT
def test_kernelspec_without_ipykernel_says_how_to_register_it(project, tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [str(bare / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "bare", "language": "python"}))
    e = {**env(), "JUPYTER_PATH": str(tmp_path / "jupyter")}
    e["PYTHONPATH"] = str(ROOT)  # this checkout only: the bare Python must not find ipykernel elsewhere
    t0 = time.monotonic()
    r = varmix(project, "notebook", "01_vae", "--profile", "smoke", env=e)
    assert r.returncode == 2
    (line,) = short_error(r.stderr, most=1)
    assert f"the Jupyter kernel 'python3' ({spec / 'kernel.json'}) runs {argv[0]}, which cannot import ipykernel" \
        in line, line
    assert "python -m ipykernel install --sys-prefix --name python3" in line and "make install" in line
    assert time.monotonic() - t0 < 60 and not (project / "results").exists()


NOTEBOOK_CMD = [sys.executable, "-m", "varmix", "notebook", "01_vae", "--profile", "smoke"]
# a stand-in for dvc: runs the stage's command as its child and, like dvc, does not pass SIGTERM on to it
DVC_LIKE = [sys.executable, "-c", "import subprocess, sys; subprocess.run(sys.argv[1:])", *NOTEBOOK_CMD]


@contextlib.contextmanager
def long_run(project: Path, cmd: list[str] = NOTEBOOK_CMD):
    """01_vae with a VAE training long enough to be interrupted, once the kernel trains: yields the
    started process (``cmd``), the ``python -m varmix notebook`` process, the kernel's processes and the
    VAE's folder; whatever is left of them is killed afterwards (the unfixed code leaves kernels running)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["profiles"]["smoke"]["vae"]["epochs"] = 200
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.Popen(cmd, cwd=project, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    family: list[psutil.Process] = []
    try:
        vae_dir = project / "runs" / "fashion-mnist" / "smoke" / "vae" / "s0"  # 01_vae's default: the first VAE seed
        deadline = time.monotonic() + 240
        while not (vae_dir / "history.json").exists():  # the first epoch is done: the kernel is working
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the VAE did not start training"
            time.sleep(0.2)
        family = psutil.Process(proc.pid).children(recursive=True)
        notebook = [p for p in [psutil.Process(proc.pid), *family] if p.cmdline()[1:3] == ["-m", "varmix"]]
        assert any("ipykernel" in a for p in family for a in p.cmdline()), "no kernel process found"
        yield proc, notebook[0], family, vae_dir
    finally:
        proc.kill()
        proc.wait()
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def assert_stopped_and_nothing_written(project: Path, family: list[psutil.Process], vae_dir: Path) -> None:
    time.sleep(1)
    assert not alive(family), [p.cmdline() for p in alive(family)]
    # nothing written by the stopped kernel afterwards, and no output of the stage
    before = {p: p.stat().st_mtime_ns for p in vae_dir.iterdir()}
    time.sleep(2)
    assert {p: p.stat().st_mtime_ns for p in vae_dir.iterdir()} == before
    assert not (vae_dir / "vae.pt").exists()
    assert not list(smoke_out(project).rglob("*.ipynb")) and not (smoke_out(project) / "metrics").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_kernel_and_writes_nothing(project, sig):
    with long_run(project) as (proc, _, family, vae_dir):
        t0 = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 15
        assert proc.returncode == 128 + sig
        (line,) = short_error(err, most=1)
        assert line == f"interrupted: notebook 01_vae stopped ({sig.name}), nothing written"
        assert_stopped_and_nothing_written(project, family, vae_dir)


def test_sigterm_to_the_parent_like_dvc_stops_the_kernel(project):
    """dvc does not pass SIGTERM on to its stage's command: the stage's notebook process must notice that
    its parent died."""
    with long_run(project, DVC_LIKE) as (parent, notebook, family, vae_dir):
        assert notebook.pid != parent.pid
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=10)
        _, err = parent.communicate(timeout=30)  # EOF once the orphaned notebook process has exited too
        _, running = psutil.wait_procs([notebook], timeout=10)  # it may still be closing down
        assert not alive(running)  # gone, or a zombie left to an init that does not reap
        (line,) = short_error(err, most=1)
        assert line == "interrupted: notebook 01_vae stopped (SIGTERM), nothing written"
        assert_stopped_and_nothing_written(project, family, vae_dir)


def test_dead_kernel_is_one_line_with_the_failed_notebook(project):
    with long_run(project) as (proc, _, family, _):
        for p in family:
            p.kill()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1
        lines = short_error(err, most=2)
        assert lines[0].startswith("error in notebook 01_vae: DeadKernelError: the kernel died"), lines
        failed = smoke_out(project) / "notebooks" / "01_vae.failed.ipynb"
        assert lines[1:] in ([], [f"full traceback: {failed}"])
        assert not (smoke_out(project) / "notebooks" / "01_vae.ipynb").exists()


# ---------------------------------------------------------------------------------------------------
# prepare-data: raw_dir, and folders relative to the project root
def write_params(path: Path, **top) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(top)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.mark.parametrize("make", ["empty", "absent"])
def test_raw_dir_without_the_files_is_an_error(tmp_path, capsys, make):
    raw = tmp_path / "raw"
    if make == "empty":
        raw.mkdir()
    params = write_params(tmp_path / "params.yaml", raw_dir=str(raw), data_dir=str(tmp_path / "out"))
    assert cli(["prepare-data", "--params", str(params)]) == 2
    (line,) = short_error(capsys.readouterr().err, most=1)
    holds = "which holds nothing" if make == "empty" else "which does not exist"
    assert line.startswith(f"error: fashion-mnist not found in raw_dir {raw} ({holds}): expected the idx files "
                           f"train-images-idx3-ubyte[.gz]"), line
    assert "raw_dir: null" in line
    assert not (tmp_path / "out").exists()


def test_relative_data_dir_is_the_project_roots_whatever_the_cwd(tmp_path, monkeypatch, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    fake_fashion(raw)
    proj = tmp_path / "proj"
    (proj / "notebooks").mkdir(parents=True)
    write_params(proj / "params.yaml", data_dir="prepared", raw_dir="../raw")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(proj / "notebooks")
    assert cli(["prepare-data"]) == 0
    assert capsys.readouterr().out == f"prepared fashion-mnist in {proj / 'prepared' / 'fashion-mnist'}\n"
    assert sorted(p.name for p in (proj / "prepared" / "fashion-mnist").iterdir()) == sorted([*data.FILES, "meta.json"])
    assert list((proj / "notebooks").iterdir()) == []


# ---------------------------------------------------------------------------------------------------
# the one place errors become messages
@pytest.mark.parametrize("exc, lines, code", [
    (errors.NotebookFailed("02_train (method mixup, seed 0)", "ValueError", "bad\n  value", Path("/r/x.failed.ipynb")),
     ["error in notebook 02_train (method mixup, seed 0): ValueError: bad value", "full traceback: /r/x.failed.ipynb"], 1),
    (PermissionError(13, "Permission denied", "/r/metrics/.vae.json.tmp"),
     ["error: permission denied writing /r/metrics/.vae.json.tmp: make its folder writable, or set VARMIX_WORKDIR "
      "to write runs/ and results/ elsewhere"], 2),
    (errors.Interrupted(signal.SIGTERM, "01_vae"), ["interrupted: notebook 01_vae stopped (SIGTERM), nothing written"], 143),
    (ValueError("params: lr = inf is invalid"), ["error: params: lr = inf is invalid"], 2),
    (errors.TrainingDiverged("training diverged: method mixup, epoch 1: train loss 7.7e+13; lower train.lr"),
     ["error: training diverged: method mixup, epoch 1: train loss 7.7e+13; lower train.lr"], 2),
])
def test_describe_maps_user_errors_to_lines_and_exit_codes(exc, lines, code):
    assert errors.describe(exc) == (lines, code)


def test_describe_leaves_bugs_to_their_traceback():
    assert errors.describe(KeyError("x")) is None and errors.describe(ZeroDivisionError()) is None


# ---------------------------------------------------------------------------------------------------
# system errors (issue 29): a full disk, a read-only mount, a folder not ours, too many open files. Each is
# injected where the run writes (papermill's write of the executed notebook) and must end as one line that
# names the file and what to do, with the committed output as it was (the write is atomic).
@pytest.mark.parametrize("code, said", [
    (errno.ENOSPC, "No space left on device writing {path}: free space on that disk"),
    (errno.EROFS, "Read-only file system writing {path}: the file system is read-only"),
    (errno.EACCES, "permission denied writing {path}: make its folder writable"),
    (errno.EMFILE, "Too many open files writing {path}: too many open files in this process: raise the limit"),
])
def test_a_system_error_while_writing_is_one_line_and_the_committed_output_survives(
        project, monkeypatch, capsys, code, said):
    import papermill.execute

    out = smoke_out(project) / "notebooks" / "04_calibration.ipynb"
    out.parent.mkdir(parents=True)
    out.write_text("the committed executed notebook")

    def refuse(nb, path, **kw):
        try:
            raise OSError(code, os.strerror(code))  # what the system said, deep inside the write ...
        except OSError as inner:
            raise OSError(code, os.strerror(code), str(path)) from inner  # ... chained, as papermill's was

    monkeypatch.setattr(papermill.execute, "write_ipynb", refuse)
    monkeypatch.chdir(project / "notebooks")
    monkeypatch.delenv(session.WORKDIR_ENV, raising=False)
    assert cli(["notebook", "04_calibration", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    lines = short_error(err, most=1)
    path = next(out.parent.glob(".04_calibration.*.tmp.ipynb"), None)
    assert path is None  # the temporary was removed
    assert lines[0].startswith("error: " + said.split(" writing ")[0] + " writing " + str(out.parent)), lines
    assert said.split("{path}")[1] in lines[0], lines
    assert out.read_text() == "the committed executed notebook"


def test_a_second_run_of_the_same_notebook_is_refused_while_the_first_runs(project):
    """The issue's case: `python -m varmix notebook 02_train ...` by hand while `dvc repro` runs the same
    stage. The run's lock is held here as the first run would hold it; the second run stops at once, in one
    line naming the run and the lock, and writes nothing."""
    lock = project / "runs" / "tmp" / "locks" / "fashion-mnist-smoke-02_train-erm-s0.lock"
    with runner.run_lock(lock, "the first run"):
        r = varmix(project, "notebook", "02_train", "--profile", "smoke", "--arm", "erm", "--seed", "0")
    assert r.returncode == 2
    (line,) = short_error(r.stderr, most=1)
    assert line == (f"error: notebook 02_train (arm erm, seed 0) is already running (process {os.getpid()}, "
                    f"lock {lock}): wait for it to end, or stop it, then run again")
    assert not (smoke_out(project) / "notebooks").exists()
    # the lock goes with the process that held it: the same run goes ahead now
    with runner.run_lock(lock, "again"):
        pass
