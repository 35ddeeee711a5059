"""Fault injection, issue 15 findings 1, 2 and 6: the pinned data is never re-pinned by a README command,
and a bad setting or damaged data stops the pipeline before DVC has deleted any stage's outputs.

The DVC-level tests share one temporary git copy of the project (the working tree as it is), switched to
the smoke profile with two arms, where `dvc repro corruptions` has run once and been committed
(check, vae, two classifiers, the corruption chapter: about a minute on a 2-core CPU). Each test injects
one fault, runs the real `dvc`/`make` command, asserts the message, and compares the bytes of every file
under runs/ and results/ and of data.dvc/dvc.lock before and after; then it undoes its fault.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import smoke_clone
import yaml

from varmix.pipeline import runner, session, verify
from varmix.pipeline.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
DATASET = "fashion-mnist"
PINNED = ("data.dvc", "dvc.lock")


# ----------------------------------------------------------------------------------------------
# the directory hash and the checks, on small folders
def _prepared(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """A project folder with data/<DATASET>/ holding ``files`` plus their meta.json, pinned by data.dvc."""
    folder = tmp_path / "data" / DATASET
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    (folder / "meta.json").write_text(json.dumps({"md5": {n: hashlib.md5(c).hexdigest() for n, c in files.items()}}))
    md5 = verify.dir_md5(verify.dir_entries(tmp_path / "data"))
    (tmp_path / "data.dvc").write_text(f"outs:\n- md5: {md5}\n  size: 1\n  nfiles: {len(files) + 1}\n"
                                       f"  hash: md5\n  path: data\n")
    return tmp_path


FILES = {"train_y.npy": b"labels" * 100, "train_x.npy": b"images" * 300}


def test_dir_hash_is_dvcs():
    """The project's prepared data hashes to exactly the md5 the committed data.dvc pins, as DVC computes it."""
    if not (ROOT / "data" / DATASET / "meta.json").is_file():
        pytest.skip("data/ not prepared (python -m varmix prepare-data)")
    pin = verify.read_pin(ROOT / "data.dvc")
    assert verify.dir_md5(verify.dir_entries(ROOT / "data", ROOT)) == pin.md5 == "dcdf081330e3fc4292f2d2079251193d.dir"
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    tree = Tree()  # DVC's own serialisation of the same entries
    for rel, md5 in verify.dir_entries(ROOT / "data").items():
        tree.add(tuple(rel.split("/")), Meta(), HashInfo("md5", md5))
    assert hashlib.md5(tree.as_bytes()).hexdigest() + ".dir" == pin.md5


def test_verify_accepts_the_pinned_folder_and_reads_only(tmp_path):
    root = _prepared(tmp_path, FILES)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert verify.verify_data(root, "data", DATASET) == verify.read_pin(root / "data.dvc").md5
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("fault,message", [
    (lambda f: f.joinpath("train_y.npy").write_bytes(b"labels" * 50),
     "data/fashion-mnist/train_y.npy is damaged (md5 "),
    (lambda f: f.joinpath("train_x.npy").unlink(), "data/fashion-mnist/train_x.npy is missing"),
    (lambda f: f.joinpath("meta.json").unlink(), "prepared fashion-mnist not found: data/fashion-mnist/meta.json"),
    (lambda f: f.joinpath("meta.json").write_text('{"md5": {"train_x.np'), "data/fashion-mnist/meta.json is damaged"),
    (lambda f: f.joinpath("meta.json").write_text('{"shapes": {}}'), "data/fashion-mnist/meta.json is damaged"),
    # foreign data: consistent with its own meta.json, but not the bytes data.dvc pins
    (lambda f: (f.joinpath("train_y.npy").write_bytes(b"other"), f.joinpath("meta.json").write_text(json.dumps(
        {"md5": {"train_y.npy": hashlib.md5(b"other").hexdigest(),
                 "train_x.npy": hashlib.md5(FILES["train_x.npy"]).hexdigest()}}))),
     "data/ (3 files, data.dvc pins 3) is not the data data.dvc pins"),
    (lambda f: f.joinpath("extra.npy").write_bytes(b"x"), "is not the data data.dvc pins"),
])
def test_verify_names_the_file_and_the_fix(tmp_path, fault, message):
    root = _prepared(tmp_path, FILES)
    fault(root / "data" / DATASET)
    with pytest.raises(verify.PinError) as err:
        verify.verify_data(root, "data", DATASET)
    assert message in str(err.value)
    assert "`python -m varmix prepare-data`" in str(err.value) and "dvc checkout" not in str(err.value)


def test_verify_names_the_changed_file_from_the_cached_manifest(tmp_path):
    root = _prepared(tmp_path, FILES)
    pin = verify.read_pin(root / "data.dvc")
    manifest = root / ".dvc" / "cache" / "files" / "md5" / pin.md5[:2] / pin.md5[2:]
    manifest.parent.mkdir(parents=True)
    entries = verify.dir_entries(root / "data")
    manifest.write_text(json.dumps([{"md5": m, "relpath": r} for r, m in sorted(entries.items())]))
    (root / "data" / DATASET / "extra.npy").write_bytes(b"x")
    with pytest.raises(verify.PinError, match=r"^data/fashion-mnist/extra.npy \(an extra file\) is not the data"):
        verify.verify_data(root, "data", DATASET)


def test_dvcignored_files_are_left_out_as_dvc_leaves_them_out(tmp_path):
    root = _prepared(tmp_path, FILES)
    (root / ".dvcignore").write_text("*.tmp\n")
    (root / "data" / DATASET / ".train_x.npy.abc.tmp").write_bytes(b"half a write")
    assert verify.verify_data(root, "data", DATASET) == verify.read_pin(root / "data.dvc").md5


def test_cli_verify_data_writes_only_the_stamp(tmp_path, capsys):
    root = _prepared(tmp_path, FILES)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    stamp = tmp_path / "out" / "checked.json"
    assert cli(["verify-data", "--params", str(root / "params.yaml"), "--profile", "smoke",
                "--stamp", str(stamp)]) == 0
    assert "data OK" in capsys.readouterr().out
    first = stamp.read_bytes()
    assert json.loads(first) == {"data": verify.read_pin(root / "data.dvc").md5, "dataset": DATASET}
    # the stamp's bytes do not follow the params: every stage depends on it
    raw["profiles"]["smoke"]["train"]["alpha"]["mixup"] = 0.5
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    assert cli(["verify-data", "--params", str(root / "params.yaml"), "--profile", "smoke",
                "--stamp", str(stamp)]) == 0
    assert stamp.read_bytes() == first
    raw["profiles"]["smoke"]["train"]["alpha"]["mixup"] = float("inf")
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    stamp.unlink()
    assert cli(["verify-data", "--params", str(root / "params.yaml"), "--stamp", str(stamp)]) == 2
    assert "profiles.smoke.train.alpha.mixup = inf is invalid" in capsys.readouterr().err
    assert not stamp.exists()


def test_cli_verify_data_checks_the_vaes_dataset_too(tmp_path, capsys):
    """vae.dataset names the data the VAE trains on: the check stage verifies it beside the classifier's."""
    root = _prepared(tmp_path, FILES)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profiles"]["smoke"]["vae"]["dataset"] = "cifar10"
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    stamp = tmp_path / "out" / "checked.json"
    argv = ["verify-data", "--params", str(root / "params.yaml"), "--profile", "smoke", "--stamp", str(stamp)]
    assert cli(argv) == 2
    assert "prepared cifar10 not found: data/cifar10/meta.json is missing" in capsys.readouterr().err
    assert not stamp.exists()
    # prepared and pinned: both are checked, and the stamp is the classifier data's, as without vae.dataset
    other = root / "data" / "cifar10"
    other.mkdir()
    (other / "test_y.npy").write_bytes(b"cifar")
    (other / "meta.json").write_text(json.dumps({"md5": {"test_y.npy": hashlib.md5(b"cifar").hexdigest()}}))
    md5 = verify.dir_md5(verify.dir_entries(root / "data"))
    (root / "data.dvc").write_text(f"outs:\n- md5: {md5}\n  size: 1\n  nfiles: 5\n  hash: md5\n  path: data\n")
    assert cli(argv) == 0
    assert f"({DATASET}, cifar10 checked)" in capsys.readouterr().out
    assert json.loads(stamp.read_bytes()) == {"data": md5, "dataset": DATASET}
    (other / "test_y.npy").write_bytes(b"damaged")
    assert cli(argv) == 2
    assert "data/cifar10/test_y.npy is damaged" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# the real pipeline in a temporary clone
_run, _dvc = smoke_clone.run, smoke_clone.dvc


def _snapshot(clone: Path) -> dict[str, str]:
    """md5 of every file under runs/ and results/ (runs/tmp/, the run locks, aside), and of the pins."""
    files = [p for d in ("runs", "results") for p in (clone / d).rglob("*")
             if p.is_file() and not p.relative_to(clone).as_posix().startswith("runs/tmp/")]
    files += [clone / f for f in PINNED]
    return {p.relative_to(clone).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def _git_clean(clone: Path) -> str:
    return _run(clone, "git", "status", "--porcelain", "--untracked-files=all", check=True).stdout


@pytest.fixture(scope="session")
def clone(tmp_path_factory):
    """The project's working tree in a temporary git repository, smoke profile, arms erm and mixup, seed 0,
    data prepared and pinned, `dvc repro corruptions` run and committed."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and the project as a git checkout")
    pytest.importorskip("dvc")
    dst = smoke_clone.make(tmp_path_factory.mktemp("varmix-clone"), ["erm", "mixup"], [0])
    _dvc(dst, "repro", "corruptions", check=True)
    _run(dst, "git", "add", "-A", check=True)
    _run(dst, "git", "commit", "-qm", "smoke results", check=True)
    assert (dst / "results/fashion-mnist/smoke/metrics/corruptions.json").is_file()
    assert (dst / "runs/fashion-mnist/smoke/models/erm-s0/model.pt").is_file()
    return dst


@pytest.fixture
def unchanged(clone):
    """Asserts after the test that no committed file, model, pin or lock changed (params.yaml, which the
    tests edit, aside), then restores the clone for the next test whatever happened."""
    before = _snapshot(clone)
    assert _git_clean(clone) == ""
    yield clone
    after = _snapshot(clone)
    _run(clone, "git", "checkout", "--", "params.yaml", check=True)
    status = _git_clean(clone)
    _run(clone, "git", "reset", "-q", "--hard", "HEAD", check=True)  # DVC's autostage puts what it writes in the index
    _dvc(clone, "checkout", "--force", "dvc.yaml")  # models and the VAE, from the cache the first repro filled
    assert {k: v for k, v in before.items() if after.get(k) != v} == {}, "files were deleted or changed"
    assert status == ""


def test_damaged_data_stops_dvc_repro_before_anything_is_deleted_or_re_pinned(unchanged):
    clone = unchanged
    labels = clone / "data" / DATASET / "train_y.npy"
    good = labels.read_bytes()
    pin = (clone / "data.dvc").read_bytes()
    labels.write_bytes(good[: len(good) // 2])  # the case: cut in half
    try:
        out = _dvc(clone, "repro")
    finally:
        labels.write_bytes(good)
    assert out.returncode != 0
    assert "data/fashion-mnist/train_y.npy is damaged" in out.stderr + out.stdout
    assert "Verifying data sources" not in out.stderr + out.stdout
    assert (clone / "data.dvc").read_bytes() == pin


def test_the_fix_the_data_message_names_works_from_a_fresh_clones_state(unchanged):
    """The message's fix, followed literally in the state a fresh clone is in after `prepare-data` + `dvc repro`
    (DVC's cache holds no data: only `make data` puts it there), restores exactly the bytes data.dvc pins.
    The old advice, `dvc checkout data.dvc`, refused there, and its --force deleted data/."""
    clone = unchanged
    labels = clone / "data" / DATASET / "train_y.npy"
    good = labels.read_bytes()
    labels.write_bytes(good[: len(good) // 2])
    out = _dvc(clone, "repro")
    assert out.returncode != 0
    said = out.stderr + out.stdout
    fixes = re.findall(r"`([^`]+)`", said[said.index("train_y.npy is damaged"):])
    assert fixes and all("checkout" not in f for f in fixes), said
    for fix in fixes[:1]:  # the fix; what follows it in backticks would be a second, alternative one
        _run(clone, *shlex.split(fix.replace("python ", f"{sys.executable} ", 1)), check=True)
    assert labels.read_bytes() == good
    _run(clone, sys.executable, "-m", "varmix", "verify-data", check=True)
    again = _dvc(clone, "repro", "corruptions")  # the clone's pipeline (its report has no comparisons to run)
    assert again.returncode == 0, again.stderr
    assert "Running stage 'check'" in again.stdout and "Running stage 'train" not in again.stdout


def test_an_inherited_varmix_workdir_is_ignored_by_a_stage_under_dvc(clone, tmp_path):
    """The issue's case: `VARMIX_WORKDIR=... dvc repro -f -s train@erm-0` (a terminal opened in `make lab`
    inherits it) deleted the run's model and three committed results and wrote the new ones elsewhere. Under
    DVC the variable is ignored: the stage writes its declared outputs (bit-identical on the smoke profile),
    says so in one line, and the folder it named stays empty."""
    def outputs():  # the wall times the re-run records aside
        return {k: v for k, v in _snapshot(clone).items() if "/timings/" not in k}

    before = outputs()
    assert _git_clean(clone) == ""
    elsewhere = tmp_path / "scratch"
    try:
        out = smoke_clone.run(clone, sys.executable, "-m", "dvc", "repro", "-f", "-s", "train@erm-0",
                              env={session.WORKDIR_ENV: str(elsewhere)})
        after = outputs()
    finally:
        _run(clone, "git", "reset", "-q", "--hard", "HEAD", check=True)
        _dvc(clone, "checkout", "--force", "dvc.yaml")
    assert out.returncode == 0, out.stderr
    assert f"note: VARMIX_WORKDIR={elsewhere} is ignored under DVC (stage train@erm-0)" in out.stderr
    assert {k: v for k, v in before.items() if after.get(k) != v} == {}, "outputs were deleted or changed"
    assert not elsewhere.exists() or not any(elsewhere.rglob("*"))


def test_foreign_data_stops_dvc_repro_and_names_the_file(unchanged):
    clone = unchanged
    extra = clone / "data" / DATASET / "notes.txt"
    extra.write_text("foreign")
    try:
        out = _dvc(clone, "repro")
    finally:
        extra.unlink()
    assert out.returncode != 0
    assert "is not the data data.dvc pins" in out.stderr + out.stdout


def test_bad_param_through_exp_run_deletes_nothing(unchanged):
    """The issue's case: this deleted ERM's model and three committed results (ERM does not use it)."""
    out = _dvc(unchanged, "exp", "run", "-S", "profiles.smoke.train.alpha.mixup=0")
    assert out.returncode != 0
    assert "profiles.smoke.train.alpha.mixup = 0.0 is invalid: expected a number > 0" in out.stderr + out.stdout


@pytest.mark.parametrize("edit,message", [
    (lambda raw: raw["profiles"]["smoke"].pop("eval"), "missing key profiles.smoke.eval"),
    (lambda raw: raw["profiles"]["smoke"]["train"].update(lr=float("inf")),
     "profiles.smoke.train.lr = inf is invalid: expected a finite number > 0"),
    (lambda raw: raw["profiles"]["smoke"]["train"].update(manifold_layers=[0, 7]),
     "profiles.smoke.train.manifold_layers[1] = 7 is invalid: expected an integer >= 0 and <= 3"),
])
def test_bad_params_yaml_through_dvc_repro_deletes_nothing(unchanged, edit, message):
    raw = yaml.safe_load((unchanged / "params.yaml").read_text())
    edit(raw)
    (unchanged / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    out = _dvc(unchanged, "repro")
    assert out.returncode != 0
    assert message in out.stderr + out.stdout


def _foreign_raw(folder: Path) -> Path:
    """A tiny Fashion-MNIST-shaped raw set (idx files) that is not the real one."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for stem, shape in (("train-images-idx3-ubyte", (64, 28, 28)), ("train-labels-idx1-ubyte", (64,)),
                        ("t10k-images-idx3-ubyte", (16, 28, 28)), ("t10k-labels-idx1-ubyte", (16,))):
        arr = rng.integers(0, 10 if len(shape) == 1 else 256, shape, dtype=np.uint8)
        head = bytes([0, 0, 8, len(shape)]) + b"".join(int(d).to_bytes(4, "big") for d in shape)
        (folder / stem).write_bytes(head + arr.tobytes())
    return folder


def test_make_data_refuses_foreign_data_without_re_pinning(unchanged, tmp_path):
    """`make data` once re-pinned data.dvc (dvc commit -f) before it compared."""
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    clone = unchanged
    backup = tmp_path / "data"
    shutil.copytree(clone / "data", backup)
    raw = _foreign_raw(tmp_path / "raw")
    pin = (clone / "data.dvc").read_bytes()
    text = (clone / "params.yaml").read_text()
    (clone / "params.yaml").write_text(text.replace("raw_dir: null", f"raw_dir: {raw}", 1))
    try:
        out = _run(clone, "make", "-o", "install", "data", f"PYTHON={sys.executable}")
    finally:
        shutil.rmtree(clone / "data")
        shutil.copytree(backup, clone / "data")
    assert out.returncode != 0
    assert "is not the data data.dvc pins" in out.stderr
    assert (clone / "data.dvc").read_bytes() == pin


def test_make_data_accepts_the_pinned_data_and_caches_it(unchanged):
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    clone = unchanged
    pin = (clone / "data.dvc").read_bytes()
    out = _run(clone, "make", "-o", "install", "data", f"PYTHON={sys.executable}")
    assert out.returncode == 0, out.stderr
    assert (clone / "data.dvc").read_bytes() == pin
    md5 = verify.read_pin(clone / "data.dvc").md5
    assert (clone / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).is_file()  # `dvc checkout` can restore


def test_a_second_repro_runs_only_the_check(unchanged):
    out = _dvc(unchanged, "repro", "corruptions", check=True)
    ran = [line for line in out.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'check':"], out.stdout


def test_an_edit_to_the_code_a_stage_runs_re_runs_that_stage_and_no_other(clone):
    """Each stage depends on its code record, code-records/<stage>.md5 (varmix.pipeline.deps), not on the
    modules: the check stage, first in every `dvc repro`, rewrites the records an edit made stale, so the
    edit re-runs the stage that runs the module and leaves training and the VAE alone."""
    try:
        with open(clone / "varmix/evaluate/corruptions.py", "a") as fh:
            fh.write("\n# an edit\n")
        out = _dvc(clone, "repro", "corruptions", check=True)
        ran = [line for line in out.stdout.splitlines() if line.startswith("Running stage")]
        assert ran == ["Running stage 'check':", "Running stage 'corruptions':"], out.stdout
        changed = sorted(line[3:] for line in _git_clean(clone).splitlines() if "code-records/" in line)
        assert changed == [f"code-records/{s}.md5" for s in ("calibration", "corruptions", "landscape",
                                                             "perturbations", "regime", "report", "site")]
    finally:
        _run(clone, "git", "reset", "-q", "--hard", "HEAD", check=True)
        _run(clone, "git", "clean", "-qfd", "--", "results", check=True)
        _dvc(clone, "checkout", "--force", "dvc.yaml")


def test_every_stage_waits_for_the_check_and_none_lists_the_data():
    from test_pipeline import _dvc_stages

    stages = _dvc_stages()
    check = stages.pop("check")
    assert check["always_changed"] is True and "params" not in check and "deps" not in check
    (stamp, opts), = check["outs"][0].items()
    assert opts == {"persist": True}  # else DVC deletes the stamp before the check runs, even when it fails
    assert check["cmd"].startswith("python -m varmix verify-data ") and f"--stamp {stamp}" in check["cmd"]
    for name, st in stages.items():
        assert stamp in st["deps"], f"stage {name} does not wait for the check"
        # a dependency on data/ makes data.dvc a stage that `dvc repro` re-pins when data/ changed
        assert not [d for d in st["deps"] if d == "data" or d.startswith("data/")], name


def test_every_chapter_re_run_in_a_new_process_writes_the_same_bytes(clone):
    """Issue 29: a forced re-run of 03_corruptions changed its executed notebook (the kernel's temporary folder,
    which holds its pid, inside a warning), so the site went stale after every re-run. Each chapter the clone
    can run (the report needs comparisons the clone's two arms lack) is run once more, forced, each in its own
    `dvc repro` process with its own kernel: every file under results/ and runs/ is byte for byte as before,
    wall times aside."""
    def outputs():
        return {k: v for k, v in _snapshot(clone).items() if "/timings/" not in k}

    chapters = ("vae", "train@erm-0", "corruptions", "calibration", "landscape", "perturbations")
    try:
        _dvc(clone, "repro", "perturbations", "landscape", "calibration", check=True)  # beyond the fixture's
        first = outputs()
        for stage in chapters:
            _dvc(clone, "repro", "-f", "-s", stage, check=True)
        again = outputs()
    finally:
        _run(clone, "git", "reset", "-q", "--hard", "HEAD", check=True)
        _run(clone, "git", "clean", "-qfd", "--", "results", check=True)
        _dvc(clone, "checkout", "--force", "dvc.yaml")
    assert {k: (v, again.get(k)) for k, v in first.items() if again.get(k) != v} == {}
    assert set(again) == set(first)
    # the case the issue found is among them: a warning a cell raised, its kernel folder cleaned
    assert runner.KERNEL_CELL_DIR in (clone / "results/fashion-mnist/smoke/notebooks/03_corruptions.ipynb").read_text()


# ----------------------------------------------------------------------------------------------
# issue 29, item 3: `dvc repro -s STAGE` skips the check stage, and DVC removes the stage's outputs before
# its command runs. The command's own checks (varmix.pipeline.preflight) fail in two lines and put back what
# DVC removed: every committed file and cached model ends as it was (the `unchanged` fixture's assertion).
def _two_lines(out) -> list[str]:
    lines = [ln for ln in (out.stderr + out.stdout).splitlines() if ln.startswith(("error:", "the stage's"))]
    assert len(lines) == 2 and lines[1].startswith("the stage's "), out.stderr
    assert "Traceback" not in out.stderr
    return lines


def test_a_truncated_upstream_model_is_named_before_the_stage_loses_its_outputs(unchanged):
    """The issue's case: a truncated model.pt under `dvc repro -s corruptions` deleted the chapter's committed
    outputs before the notebook failed to load the model. Now the model file and the stage that makes it
    are named, and the chapter's outputs are put back."""
    clone = unchanged
    model = clone / "runs/fashion-mnist/smoke/models/erm-s0/model.pt"
    good = model.read_bytes()
    model.write_bytes(good[: len(good) // 2])
    try:
        out = _dvc(clone, "repro", "-s", "corruptions")
    finally:
        model.write_bytes(good)
    assert out.returncode != 0, out.stderr  # DVC exits 255 when a command fails
    error, put_back = _two_lines(out)
    assert error.startswith("error: runs/fashion-mnist/smoke/models/erm-s0 is not what dvc.lock records for "
                            "stage train@erm-0 (runs/fashion-mnist/smoke/models/erm-s0/model.pt changed; "), error
    assert "`dvc repro train@erm-0`" in error
    assert "put back from its cache" in put_back


def test_missing_data_under_dvc_repro_s_is_caught_before_the_run_loses_its_model(unchanged):
    """Issue 29's case 6: with data/ gone, `dvc repro -f -s train@erm-0` deleted the run's model and its three
    committed results, then failed with 'prepared fashion-mnist not found'."""
    clone = unchanged
    data, away = clone / "data", clone / "data-away"
    data.rename(away)
    try:
        out = _dvc(clone, "repro", "-f", "-s", "train@erm-0")
    finally:
        away.rename(data)
    assert out.returncode != 0, out.stderr  # DVC exits 255 when a command fails
    error, put_back = _two_lines(out)
    assert error.startswith("error: prepared fashion-mnist not found") and "prepare-data" in error, error
    assert re.search(r"DVC had removed [1-9]\d*, put back from its cache \([1-9]\d*\) and git \([1-9]\d*\)",
                     put_back), put_back


def test_a_bad_param_under_dvc_repro_s_deletes_nothing(unchanged):
    """Seen in the last round: `dvc repro -f -s report` with an unknown params key deleted the report's outputs
    before the stage failed."""
    clone = unchanged
    raw = yaml.safe_load((clone / "params.yaml").read_text())
    raw["profiles"]["smoke"]["eval"]["no_such_key"] = 1
    (clone / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    out = _dvc(clone, "repro", "-f", "-s", "corruptions")
    assert out.returncode != 0, out.stderr  # DVC exits 255 when a command fails
    error, _ = _two_lines(out)
    assert "no_such_key" in error, error
