"""Fault cases of issue 15, findings 3-5: byte-stable outputs (equal weights give equal bytes, timings kept
apart), divergence caught with a one-line message, and no temporary file surviving a kill in a tracked
folder (removed on the next start, ignored by DVC)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from varmix.core import config, errors, io, names
from varmix.core.config import TrainConfig
from varmix.core.names import METHODS
from varmix.learn import train
from varmix.learn import vae as vae_mod
from varmix.learn.data import ImageData, load_raw
from varmix.learn.vae import ConvVAE, train_vae
from varmix.pipeline import session

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 512, 256


@pytest.fixture(scope="module")
def fmnist():
    d = load_raw("fashion-mnist")
    return ImageData(d.name, d.train_x[:N_TRAIN], d.train_y[:N_TRAIN], d.test_x[:N_TEST], d.test_y[:N_TEST])


def _cfg(epochs=2, **kw):
    base = dict(arch="small_cnn", batch_size=128, epochs={m: epochs for m in METHODS},
                alpha={m: 1.0 for m in METHODS}, train_subset=N_TRAIN, test_subset=N_TEST)
    base.update(kw)
    return TrainConfig(**base)


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_same_files(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    differ = [name for name in fa if fa[name] != fb[name]]
    assert not differ, f"files differ between two equal runs: {differ}"


@pytest.fixture(scope="module")
def reference(fmnist, tmp_path_factory):
    """An uninterrupted 2-epoch mixup run (whose model folder the others are compared with)."""
    root = tmp_path_factory.mktemp("reference")
    train.train_classifier("mixup", _cfg(), fmnist, root / "run", seed=3, device="cpu")
    return root


# ----------------------------------------------------------------------------------------------
# finding 3: byte-stable outputs
def test_save_torch_gives_the_same_bytes_for_equal_objects(tmp_path):
    obj = {"w": torch.arange(6.0).reshape(2, 3), "gen": torch.Generator().manual_seed(0).get_state(), "n": [1]}
    io.save_torch(tmp_path / "a.pt", obj)
    io.save_torch(tmp_path / "other-name.pt", obj)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "other-name.pt").read_bytes()
    assert torch.equal(io.load_torch(tmp_path / "a.pt")["w"], obj["w"])


def test_two_equal_training_runs_write_identical_model_folders(reference, fmnist, tmp_path):
    train.train_classifier("mixup", _cfg(), fmnist, tmp_path / "run", seed=3, device="cpu")
    _assert_same_files(reference / "run", tmp_path / "run")
    assert set(_files(tmp_path / "run")) == {"checkpoint.pt", "history.json", "model.pt", "params.json",
                                             "test_labels.npy", "test_logits.npy"}


def test_killed_and_resumed_run_writes_identical_files(reference, fmnist, tmp_path, kill_after_epoch):
    out = tmp_path / "run"
    kill_after_epoch(1)
    with pytest.raises(KeyboardInterrupt):
        train.train_classifier("mixup", _cfg(), fmnist, out, seed=3, device="cpu", timings=tmp_path / "t.json")
    kill_after_epoch(None)
    summary = train.train_classifier("mixup", _cfg(), fmnist, out, seed=3, device="cpu",
                                     timings=tmp_path / "t.json")
    assert summary["resumed_from_epoch"] == 1
    _assert_same_files(reference / "run", out)
    # the seconds are in the timings file, one row per epoch; the killed run's first epoch is kept
    times = json.loads((tmp_path / "t.json").read_text())
    assert [t["epoch"] for t in times] == [1, 2] and all(t["seconds"] > 0 and t["images_per_s"] > 0 for t in times)
    assert summary["seconds"] > 0


def test_vae_folder_is_byte_stable_and_timings_go_elsewhere(fmnist, tmp_path):
    cfg = config.VAEConfig(latent_dim=4, width=4, epochs=2, batch_size=128, lr=1e-3, gamma=10.0)
    for name in ("a", "b"):
        train_vae(cfg, fmnist.train_x, fmnist.test_x[:64], tmp_path / name, seed=0, device="cpu",
                  progress=False, timings=tmp_path / f"{name}-timings.json")
    _assert_same_files(tmp_path / "a", tmp_path / "b")
    assert [t["epoch"] for t in json.loads((tmp_path / "a-timings.json").read_text())] == [1, 2]
    with pytest.raises(ValueError, match="lies inside out_dir"):
        train_vae(cfg, fmnist.train_x, fmnist.test_x[:64], tmp_path / "a", seed=0, device="cpu",
                  progress=False, timings=tmp_path / "a" / "timings.json")


def test_timings_inside_the_model_folder_are_refused(fmnist, tmp_path):
    with pytest.raises(ValueError, match=r"timings = .*lies inside out_dir"):
        train.train_classifier("erm", _cfg(), fmnist, tmp_path, seed=0, device="cpu",
                               timings=tmp_path / "timings.json")
    assert not list(tmp_path.iterdir())  # refused before any work


@pytest.mark.filterwarnings("ignore:torch uses AVX512")
def test_metrics_hold_no_wall_time(tmp_path, monkeypatch):
    monkeypatch.setenv(session.WORKDIR_ENV, str(tmp_path))
    s = session.start("smoke")
    first = s.save_metrics("m", {"erm-s0": {"acc": 0.5}}).read_bytes()
    s.started -= 12.3  # the same results, later
    assert s.save_metrics("m", {"erm-s0": {"acc": 0.5}}).read_bytes() == first
    assert json.loads(first) == {"erm-s0": {"acc": 0.5}}
    assert s.wall_times(["m"])["m"] >= 12.3
    assert s.layout.timings("m") == tmp_path / "results" / "fashion-mnist" / "smoke" / "timings" / "m.json"


def test_no_stage_depends_on_timings_or_executed_notebooks():
    """Timings and executed notebooks change on every run: no dvc.yaml stage may list them (or a folder
    holding them) as a dependency, and no timings file lies in a folder a stage depends on."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    layout = session.Layout(Path("."), "${dataset}", "${profile}")
    notebooks = str(layout.notebook("x").parent)
    volatile = [str(layout.timings("x").parent), notebooks]
    # The one exemption: the site stage's job is to render the executed notebooks as HTML (varmix/study/site.py),
    # so it lists their folder, and it reruns whenever a notebook is re-executed. It still must not list the
    # timings, and no stage may depend on the site, so the exemption changes nothing upstream of it.
    renders = {"site": notebooks}
    for name, st in stages.items():
        for dep in st.get("deps", []):  # the check stage has none
            for v in volatile:
                if renders.get(name) == v == dep:
                    continue
                assert not (v == dep or v.startswith(dep.rstrip("/") + "/") or dep.startswith(v + "/")), (name, dep)
            assert not dep.startswith(str(layout.results / "site")), (name, dep)
    assert [d for d in stages["site"]["deps"] if d.startswith(str(layout.results))] == [
        notebooks, str(layout.results / "metrics")]
    # the notebooks pass timings to the trainers outside the model and VAE folders
    for nb, needle in (("01_vae", 'timings=s.layout.timings(f"{name}-epochs")'),
                       ("02_train", 'timings=s.layout.timings(f"train-{name}-epochs")')):
        assert needle in (ROOT / "notebooks" / f"{nb}.ipynb").read_text().replace('\\"', '"'), nb


# ----------------------------------------------------------------------------------------------
# finding 4: divergence
def test_check_divergence_thresholds():
    ln10 = math.log(10)
    train.check_divergence("erm", 1, 2.0, 2.3, 0.3, 10, 1e-3)            # healthy
    train.check_divergence("mixup", 5, 10 * ln10 - 0.01, 2.3, 0.5, 10, 1e-3)  # just under the limit
    train.check_divergence("erm", 1, 2.3, 2.3, 0.1, 10, 1e-3)            # epoch 1 at chance: still starting
    train.check_divergence("erm", 2, 2.0, 2.3, 0.1, 10, 1e-3)            # at chance but learning
    with pytest.raises(errors.TrainingDiverged,
                       match=r"^training diverged: method mixup, epoch 2: train loss 4\.65e\+13 \(first-step "
                             r"loss 2\.3, limit 23\) at lr 1e\+06; lower train\.lr in params\.yaml$"):
        train.check_divergence("mixup", 2, 4.65e13, 2.3, 0.5, 10, 1e6)
    with pytest.raises(errors.TrainingDiverged, match=r"epoch 3: test accuracy 0\.100 is at chance \(1/10 = "
                                                      r"0\.100\).* at lr 0\.1; lower train\.lr"):
        train.check_divergence("cutmix", 3, 2.31, 2.3, 0.1, 10, 0.1)
    assert issubclass(errors.TrainingDiverged, RuntimeError)
    with pytest.raises(errors.TrainingDiverged, match=r"^training diverged: VAE, epoch 2: train loss 1e\+04 .*"
                                                      r"at lr 1; lower vae\.lr in params\.yaml$"):
        vae_mod.check_divergence(2, 1e4, 550.0, 1.0)
    vae_mod.check_divergence(2, 5000.0, 550.0, 1.0)


def test_adam_at_lr_1e6_is_stopped_with_the_method_epoch_loss_and_lr(fmnist, tmp_path):
    cfg = _cfg(3, lr=1e6)
    with pytest.raises(errors.TrainingDiverged, match=r"training diverged: method mixup, epoch 1: train loss "
                                                      r"\S+ \(first-step loss 2\.\d+, .*at lr 1e\+06; lower "
                                                      r"train\.lr in params\.yaml"):
        train.train_classifier("mixup", cfg, fmnist, tmp_path, seed=0, device="cpu")
    assert not (tmp_path / "model.pt").exists()


_SMOKE = config.load_params(ROOT / "params.yaml", overrides={"profile": "smoke"})
# The arms that see real images: an arm that trains only on the VAE's decodes (a VAE method at mix_prob 1)
# trains here on the decodes of an untrained VAE, i.e. on noise, and is rightly at chance.
def _sees_real_images(arm: str) -> bool:
    run = _SMOKE.run_settings(arm)
    return run.method not in train.VAE_METHODS or run.mix_prob < 1


_REAL_IMAGE_ARMS = [a for a in _SMOKE.arms if _sees_real_images(a)]
# ... and the adversarial baselines' declared arms, whether or not the study lists them in arms
_REAL_IMAGE_ARMS += [a for a in _SMOKE.arm_settings
                     if a not in _SMOKE.arms and _SMOKE.arm(a).method in names.ADVERSARIAL_METHODS]


@pytest.mark.parametrize("arm", _REAL_IMAGE_ARMS)
def test_healthy_smoke_runs_of_every_arm_are_not_stopped(arm, fmnist, tmp_path):
    """The smoke profile's training settings of each arm for 2 epochs (so the accuracy check runs too)."""
    run = dataclasses.replace(_SMOKE.run_settings(arm), epochs=2)
    vae = None
    if run.method in train.VAE_METHODS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            vae = ConvVAE(1, 28, 8, 8).eval()
    summary = train.train_run(run, fmnist, tmp_path / "run", seed=0, vae=vae, device="cpu",
                              timings=tmp_path / "timings.json")
    assert summary["epochs"] == 2
    assert len(json.loads((tmp_path / "timings.json").read_text())) == 2


def test_the_healthy_arms_cover_every_method():
    assert {_SMOKE.arm(a).method for a in _REAL_IMAGE_ARMS} == set(METHODS)


# ----------------------------------------------------------------------------------------------
# finding 5: temporaries of killed writes
def _stale(folder: Path, target: str, suffix: str = "") -> Path:
    """A temporary as atomic_path names it (``.<target>.<random>.tmp<suffix>``), as a kill leaves it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{target}.k1ll3d0.tmp{suffix}"
    path.write_bytes(b"half a file")
    return path


def test_training_start_removes_stale_temporaries(reference, fmnist, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference / "run", out)
    stale = [_stale(out, "checkpoint.pt"), _stale(out, "model.pt"), _stale(out, "notes.txt", ".ipynb")]
    keep = out / ".hidden-but-mine"
    keep.write_text("x")
    train.train_classifier("mixup", _cfg(), fmnist, out, seed=3, device="cpu")  # resumes at the end: no training
    assert not any(p.exists() for p in stale) and keep.exists()
    keep.unlink()
    _assert_same_files(reference / "run", out)


def test_vae_start_removes_stale_temporaries(fmnist, tmp_path):
    stale = _stale(tmp_path, "vae.pt")
    cfg = config.VAEConfig(latent_dim=4, width=4, epochs=1, batch_size=128, lr=1e-3, gamma=10.0)
    train_vae(cfg, fmnist.train_x[:128], fmnist.test_x[:32], tmp_path, seed=0, device="cpu", progress=False)
    assert not stale.exists()


def test_a_write_removes_stale_temporaries_of_its_target_only(tmp_path):
    mine, other = _stale(tmp_path, "m.json"), _stale(tmp_path, "n.json")
    nb = _stale(tmp_path, "02_train.ipynb", ".ipynb")
    io.write_json(tmp_path / "m.json", {"a": 1})
    assert not mine.exists() and other.exists() and nb.exists()
    with io.atomic_path(tmp_path / "02_train.ipynb", suffix=".ipynb") as tmp:
        assert tmp.name.startswith(".02_train.ipynb.") and tmp.name.endswith(".tmp.ipynb")
        tmp.write_text("{}")
    assert not nb.exists()
    assert io.remove_stale_temps(tmp_path) == [other]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["02_train.ipynb", "m.json"]


def _dvc(cwd: Path, *args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr + res.stdout
    return res.stdout


def test_dvc_neither_hashes_nor_caches_temporaries(tmp_path):
    """The project's .dvcignore keeps killed writes' temporaries out of an output folder's hash and out
    of the cache (`dvc commit` of the README's manual resume flow)."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    _dvc(tmp_path, "init", "-q")
    shutil.copy(ROOT / ".dvcignore", tmp_path / ".dvcignore")
    out = tmp_path / "runs" / "model"
    out.mkdir(parents=True)
    (out / "model.pt").write_bytes(b"weights")
    _stale(out, "checkpoint.pt")
    (tmp_path / "dvc.yaml").write_text("stages:\n  train:\n    cmd: 'true'\n    outs:\n      - runs/model\n")
    _dvc(tmp_path, "commit", "-f", "-q")
    lock = (tmp_path / "dvc.lock").read_text()
    assert "nfiles: 1" in lock
    manifests = list((tmp_path / ".dvc" / "cache").rglob("*.dir"))
    assert len(manifests) == 1
    assert [e["relpath"] for e in json.loads(manifests[0].read_text())] == ["model.pt"]
    # a temporary appearing later (another kill) does not make the output look changed
    _stale(out, "model.pt", ".ipynb")
    assert "up to date" in _dvc(tmp_path, "status").lower()
