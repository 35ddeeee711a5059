"""varmix.learn.distributed through varmix.learn.train.train_classifier: a 2-process CPU run (torchrun, gloo) against
the 1-process run of the same global batch, rank-0-only writes, a killed run resumed with 2 and with 1
process, and the process counts that are refused. docs/DISTRIBUTED.md.

The runs are tests/ddp_run.py's (small_cnn on 101 Fashion-MNIST images, 2 epochs of batches of 32 and a
last batch of 5, which 2 processes split 3 + 2), each in a fresh process with one thread per process;
tests/ddp_hooks/sitecustomize.py records which process writes what, and kills a run between epochs.

The tolerance: a 2-process step equals the 1-process step up to float rounding (the batch norm's statistics
and the gradients are sums in another order), measured 1e-7 on one step's gradients. Training amplifies
such differences (a ReLU or a max-pool that flips on a near-tie; the attack's sign of the gradient): after
the run's 8 SGD steps the weights differ by at most 1.5e-3 for mixup, 2e-7 for manifold_mixup and cutmix,
7.6e-3 for trades and 1.3e-2 for iat (measured on a shared, busy 2-core AMD EPYC, AVX2). So the final
weights must agree within ``WEIGHT_TOL`` = 1e-2 (``ADV_WEIGHT_TOL`` = 3e-2 for the adversarial methods) and
the first epoch's mean training loss within ``LOSS_TOL`` = 1e-4 relative (measured at most 1.8e-5).
Breaking it: without the synchronised batch norm the mixup weights differ by 6e-2 and the first epoch's
loss by 2e-3; without the loss weights of an uneven last batch (3 + 2 images) the weights differ by 2.4e-2.
The matching runs use SGD: Adam's per-coordinate normalisation turns float noise in a near-zero gradient
into a step of the full learning rate (the mixup runs with Adam differ by 6e-3)."""

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from varmix.core import config, errors, names
from varmix.learn import distributed, train

sys.path.insert(0, str(Path(__file__).parent))
import ddp_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOOKS = Path(__file__).parent / "ddp_hooks"
WEIGHT_TOL = 1e-2
ADV_WEIGHT_TOL = 3e-2
LOSS_TOL = 1e-4
FILES = ("checkpoint.pt", "history.json", "model.pt", "params.json", "test_logits.npy")

# md5 of the 1-process run's files (tests/ddp_run.py, Adam), computed with varmix before varmix.learn.distributed
# existed (commit d199ee9): the 1-process path is the same code as then, bit for bit
BEFORE = {
    "mixup": {"checkpoint.pt": "ad3ee3dc567053306cc7d507db5ec01c", "history.json": "7cbbcc5049044d9325e9a88cde7f90b9",
              "model.pt": "af0745332577b5f5a25f2bf5a29e0c6e", "params.json": "70cf5110f35b7e6700c567ec3dda3389",
              "test_logits.npy": "af3594269c59969de45f06197652c98f"},
    "manifold_mixup": {"checkpoint.pt": "5ed1699722efc9f4036f6728683af91f",
                       "history.json": "f5eef26a8acd120aa038b373ee308c63",
                       "model.pt": "7818df7f43cef791ce9a8fc0e5dc4569", "params.json": "a5c1bb2c6296c6dc6f2401dbcc80c2b2",
                       "test_logits.npy": "7954cf6ca2a5132bf916855a3a23d482"},
    "trades": {"checkpoint.pt": "ff1d9ad87ca0ea280839a51575a19005", "history.json": "e02e81ba495385c5532856cd46004b01",
               "model.pt": "cc5aa4877ad54064374d216768567f0a", "params.json": "d6fac246c24dfe44305415bc177cac29",
               "test_logits.npy": "82b24f2b5cfa677b543699dce6232695"},
    "iat": {"checkpoint.pt": "3b2db769978e0c86445b876af633a4d9", "history.json": "09ea361459459fca0bade05a4a25d9e8",
            "model.pt": "5bad7ddaa99944c5091cf981fb49f0c7", "params.json": "35c47c4df274567e8d1602834c99c63f",
            "test_logits.npy": "52ac420685a0612968b76039465f499f"},
    "cutmix": {"checkpoint.pt": "6b8ecf6ead26207c700de9b6f5d7add2", "history.json": "a8621a81d5d337ec4e2d43a51052b091",
               "model.pt": "6ad9f39967445f91071e919de0a1b543", "params.json": "dea7db74fb8a21fd29f3252d895c78d3",
               "test_logits.npy": "ab6f426b1b6296ba129fb9718c521b7e"},
}
x86 = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                         reason="the pinned bytes are those of the AVX2 kernels of an x86-64 CPU")


def _run(out: Path, methods: str = "mixup", processes: int = 1, optimizer: str = "sgd",
         kill_after: int | None = None) -> subprocess.CompletedProcess:
    """tests/ddp_run.py in a new session (a kill takes its process group, not pytest), its writes logged."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HOOKS), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "VARMIX_TEST_WATCH": str(out),
           "VARMIX_TEST_LOG": str(out.parent / f"{out.name}.writes"), "VARMIX_TEST_KILL_AFTER": str(kill_after or "")}
    env.pop("VARMIX_TORCHRUN_ARGS", None)
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_run.py"), str(out), "--methods", methods,
                           "--processes", str(processes), "--optimizer", optimizer],
                          env=env, capture_output=True, text=True, start_new_session=True, timeout=900)
    if kill_after is None:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _writers(out: Path) -> dict[str, set[str]]:
    """rank -> the names of the files it wrote under out (renamed into place or opened for writing)."""
    who: dict[str, set[str]] = {}
    for line in (out.parent / f"{out.name}.writes").read_text().splitlines():
        rank, event, path = line.split(" ", 2)
        who.setdefault(rank, set()).add(Path(path).name)
    return who


def _weights(folder: Path) -> dict:
    return torch.load(folder / "model.pt", weights_only=False)["state_dict"]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def _history(folder: Path) -> list[dict]:
    return json.loads((folder / "history.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The SGD mixup run with 1 process and with 2 (its writes logged)."""
    root = tmp_path_factory.mktemp("ddp")
    _run(root / "one", processes=1)
    _run(root / "two", processes=2)
    return root


# ----------------------------------------------------------------------------------------------
@x86
def test_one_process_run_is_bit_identical_to_before(tmp_path):
    out = tmp_path / "one"
    _run(out, methods=",".join(BEFORE), processes=1, optimizer="adam")
    got = {m: {f: hashlib.md5((out / m / f).read_bytes()).hexdigest() for f in FILES} for m in BEFORE}
    assert got == BEFORE


def test_two_processes_match_one_process_of_the_same_global_batch(runs):
    one, two = runs / "one" / "mixup", runs / "two" / "mixup"
    diff = _max_diff(_weights(two), _weights(one))
    assert 0 < diff <= WEIGHT_TOL  # not the same code path, the same training
    h1, h2 = _history(one), _history(two)
    assert [h["epoch"] for h in h2] == [1, 2] and [h["lr"] for h in h2] == [h["lr"] for h in h1]
    assert h2[0]["train_loss"] == pytest.approx(h1[0]["train_loss"], rel=LOSS_TOL, abs=0)
    assert h2[1]["train_loss"] < h2[0]["train_loss"]
    # the run's record is the same: the process count is not a setting of the run
    assert (two / "params.json").read_bytes() == (one / "params.json").read_bytes()


def test_only_rank_0_writes(runs):
    who = _writers(runs / "two")
    assert set(who) == {"0"}, who  # neither rank 1 nor the launcher writes under the output folder
    assert {"checkpoint.pt", "history.json", "model.pt", "params.json", "test_logits.npy",
            "test_labels.npy"} <= who["0"]


def test_killed_two_process_run_resumes_with_two_or_one_process(runs, tmp_path):
    killed = tmp_path / "killed"
    proc = _run(killed, processes=2, kill_after=1)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    folder = killed / "mixup"
    assert torch.load(folder / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert not (folder / "model.pt").exists()
    copy = tmp_path / "copy"
    shutil.copytree(killed, copy)

    resumed = json.loads(_run(killed, processes=2).stdout)[0]
    assert resumed["resumed_from_epoch"] == 1 and resumed["epochs"] == 2
    # the same processes, the same sums: the resumed run ends where the uninterrupted one did, bit for bit
    uninterrupted = runs / "two" / "mixup"
    ref, got = _weights(uninterrupted), _weights(folder)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert _history(folder) == _history(uninterrupted)

    # with one process: the checkpoint does not depend on the process count
    resumed1 = json.loads(_run(copy, processes=1).stdout)[0]
    assert resumed1["resumed_from_epoch"] == 1
    assert _max_diff(_weights(copy / "mixup"), _weights(runs / "one" / "mixup")) <= WEIGHT_TOL
    assert _history(copy / "mixup")[0] == _history(uninterrupted)[0]  # epoch 1 is the 2-process run's


def test_manifold_mixup_and_trades_match_with_two_processes(tmp_path):
    """Manifold Mixup at a hidden layer (partners gathered from every process) and TRADES (the attack on the
    global batch, two passes through the classifier in one DDP forward)."""
    methods = "manifold_mixup,trades"
    _run(tmp_path / "one", methods, processes=1)
    _run(tmp_path / "two", methods, processes=2)
    for m in methods.split(","):
        one, two = tmp_path / "one" / m, tmp_path / "two" / m
        tol = ADV_WEIGHT_TOL if m in names.ADVERSARIAL_METHODS else WEIGHT_TOL
        assert _max_diff(_weights(two), _weights(one)) <= tol, m
        assert _history(two)[0]["train_loss"] == pytest.approx(_history(one)[0]["train_loss"], rel=LOSS_TOL, abs=0), m


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -1, "many", 1.5, True, None, 1025])
def test_bad_process_count_in_params_is_refused(value):
    raw = {"epochs": 1, "alpha": 1.0, "processes": value}
    with pytest.raises(errors.ConfigError) as e:
        config.TrainConfig.from_dict(raw, "profiles.default.train")
    assert str(e.value) == (f"params: profiles.default.train.processes = {value!r} is invalid: expected an integer "
                            f"from 1 to 1024, or auto (every visible GPU; 1 on a CPU)")
    assert config.TrainConfig.from_dict({**raw, "processes": "auto"}, "k").processes == "auto"
    assert config.TrainConfig.from_dict({**raw, "processes": 4}, "k").processes == 4
    assert config.TrainConfig.from_dict({"epochs": 1, "alpha": 1.0}, "k").processes == 1


@pytest.mark.parametrize("value", [0, -1, "many", 2.0, False])
def test_bad_process_count_stops_training_before_any_work(value, tmp_path):
    cfg = dataclasses.replace(ddp_run.tiny_cfg(), processes=value)
    with pytest.raises(ValueError, match=rf"^cfg\.processes = {value!r} is invalid: expected an integer from 1 to "
                                         rf"1024, or auto"):
        train.train_classifier("mixup", cfg, ddp_run.tiny_data(), tmp_path / "out", seed=0, device="cpu")
    assert not (tmp_path / "out").exists()


def test_more_processes_than_a_batch_has_images_is_refused(tmp_path):
    cfg = dataclasses.replace(ddp_run.tiny_cfg(), processes=3, train_subset=66)  # batches 32, 32, 2
    with pytest.raises(ValueError, match=r"processes = 3 is too many for batches of 2 image\(s\).*66 training "
                                         r"images in batches of 32\); use at most 2 processes"):
        train.train_classifier("mixup", cfg, ddp_run.tiny_data(), tmp_path / "out", seed=0, device="cpu")
    assert not (tmp_path / "out").exists()


def test_process_count_on_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert distributed.resolve_processes("auto", cuda) == 2
    assert distributed.resolve_processes("auto", cpu) == 1
    assert distributed.resolve_processes(2, cuda) == 2
    assert distributed.resolve_processes(3, cpu) == 3  # gloo processes on a CPU
    with pytest.raises(ValueError, match=r"^cfg\.processes = 3 is invalid on this machine: 2 GPU\(s\) are visible "
                                         r"\(CUDA_VISIBLE_DEVICES=0,1\); expected at most 2 \(one process per GPU\)"):
        distributed.resolve_processes(3, cuda)


def test_rendezvous_flags_come_from_the_environment(monkeypatch, tmp_path):
    spec = tmp_path / "spec.pt"
    monkeypatch.delenv(distributed.TORCHRUN_ARGS_ENV, raising=False)
    assert distributed.torchrun_command(2, spec)[2:] == ["torch.distributed.run", "--nproc-per-node=2", "--standalone",
                                                         "-m", "varmix", "train-worker", str(spec)]
    monkeypatch.setenv(distributed.TORCHRUN_ARGS_ENV, "--nnodes 2 --node-rank 1 --rdzv-endpoint h:29500")
    assert distributed.torchrun_command(4, spec)[3:9] == ["--nproc-per-node=4", "--nnodes", "2", "--node-rank", "1",
                                                          "--rdzv-endpoint"]
    monkeypatch.setenv(distributed.TORCHRUN_ARGS_ENV, "--nnodes 2 --nproc-per-node=8")
    with pytest.raises(ValueError, match=r"sets --nproc-per-node: expected only rendezvous flags.*train\.processes"):
        distributed.torchrun_command(4, spec)


def test_shard_slices_cover_the_global_batch_and_weights_average_to_its_mean():
    for n, world in ((5, 2), (32, 2), (7, 3), (4, 4)):
        shards = [distributed.Shard(r, world) for r in range(world)]
        rows = torch.arange(n)
        assert torch.equal(torch.cat([s.take(rows) for s in shards]), rows)
        assert [len(s.take(rows)) for s in shards] == [len(p) for p in torch.tensor_split(rows, world)]
        # DDP averages over processes: sum_r weight_r * mean_r / world == the global mean
        values = torch.rand(n, dtype=torch.float64)
        avg = sum(s.weight(n) * values[slice(*s.bounds(n))].mean() for s in shards) / world
        assert float(avg) == pytest.approx(float(values.mean()), rel=1e-12)
