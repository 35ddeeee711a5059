"""Dataset loading through the real parsers: Debian's Fashion-MNIST files, and CIFAR-10/100 and
Tiny-ImageNet fixtures written here in their exact on-disk formats."""

import gzip
import hashlib
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from varmix.learn import data
from varmix.pipeline.cli import main as cli


def test_fashion_mnist_from_debian_files():
    assert data.DEBIAN_FASHION_MNIST.is_dir(), "install Debian's dataset-fashion-mnist (see README)"
    d = data.load_raw("fashion-mnist")
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    # canonical Fashion-MNIST facts: first labels, balanced classes, pixel mean
    assert d.train_y[:5].tolist() == [9, 0, 0, 3, 0]
    assert d.test_y[:5].tolist() == [9, 2, 1, 1, 6]
    assert torch.bincount(d.train_y).tolist() == [6000] * 10
    assert abs(d.train_x.float().mean().item() / 255 - 0.2860) < 1e-3


def write_idx(path: Path, array: np.ndarray, compress: bool = True):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def fake_fashion(tmp_path: Path, n_train=12, n_test=6, compress=True):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for stem, a in arrays.items():
        write_idx(tmp_path / (stem + (".gz" if compress else "")), a, compress)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_idx_parser_on_written_files(tmp_path, compress):
    arrays = fake_fashion(tmp_path, compress=compress)
    d = data.load_raw("fashion-mnist", tmp_path)
    assert np.array_equal(d.train_x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(d.test_y.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    fake_fashion(tmp_path, compress=False)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte is truncated or corrupt: 9324 bytes, expected 9424"):
        data.load_raw("fashion-mnist", tmp_path)


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    fake_fashion(tmp_path)
    f = tmp_path / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:30])
    with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte.gz is corrupt or truncated"):
        data.load_raw("fashion-mnist", tmp_path)


def test_missing_fashion_mnist_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(data.DataError) as err:
        data.load_raw("fashion-mnist", tmp_path / "raw")
    msg = str(err.value)
    assert "fashion-mnist not found" in msg and str(tmp_path / "raw") in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def write_cifar(root: Path, name: str, n_per_file: int = 4):
    rng = np.random.default_rng(1)
    if name == "cifar10":
        folder, files, key, k = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels", 10
    else:
        folder, files, key, k = root / "cifar-100-python", ["train", "test"], b"fine_labels", 100
    folder.mkdir(parents=True)
    written = {}
    for f in files:
        x = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
        y = rng.integers(0, k, n_per_file).tolist()
        batch = {b"data": x, key: y, b"batch_label": f.encode()}
        if name == "cifar100":
            batch[b"coarse_labels"] = [v // 5 for v in y]
        with open(folder / f, "wb") as fh:
            pickle.dump(batch, fh)
        written[f] = (x, y)
    return folder, written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickled_batches(tmp_path, name):
    folder, written = write_cifar(tmp_path, name)
    d = data.load_raw(name, tmp_path, verify_md5=False)
    train_files = [f for f in written if f not in ("test_batch", "test")]
    assert d.train_x.shape == (4 * len(train_files), 3, 32, 32) and d.test_x.shape == (4, 3, 32, 32)
    first_x, first_y = written[train_files[0]]
    # CIFAR rows are channel-major: 1024 red, 1024 green, 1024 blue
    assert np.array_equal(d.train_x[0, 1].numpy().ravel(), first_x[0, 1024:2048])
    assert d.train_y[:4].tolist() == first_y
    assert d.num_classes == (10 if name == "cifar10" else 100)


def test_cifar_md5_check_rejects_files_that_are_not_the_release(tmp_path):
    write_cifar(tmp_path, "cifar10")
    with pytest.raises(data.DataError, match=r"data_batch_1 is corrupt: md5 [0-9a-f]{32} != expected c99cafc152244af753f735de768cd75f"):
        data.load_raw("cifar10", tmp_path)


def test_cifar_truncated_pickle_and_bad_shape(tmp_path):
    folder, _ = write_cifar(tmp_path, "cifar10")
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:500])
    with pytest.raises(data.DataError, match="data_batch_3 is corrupt or truncated"):
        data.load_raw("cifar10", tmp_path, verify_md5=False)
    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(data.DataError, match=r"data shape \(2, 100\) with 2 labels, expected \[N, 3072\]"):
        data.load_raw("cifar10", tmp_path, verify_md5=False)


def test_missing_cifar_names_folder_and_command(tmp_path):
    with pytest.raises(data.DataError, match=r"cifar100 not found: expected torchvision's folder .*cifar-100-python.*--download"):
        data.load_raw("cifar100", tmp_path)


def write_tiny_imagenet(root: Path, wnids=("n01443537", "n01629819", "n01641577"), per_class=2):
    base = root / "tiny-imagenet-200"
    rng = np.random.default_rng(2)
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        (base / "train" / w / "images").mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(img).save(base / "train" / w / "images" / f"{w}_{i}.JPEG", format="JPEG")
    lines = []
    for i, w in enumerate(reversed(wnids)):
        mode = "L" if i == 0 else "RGB"  # the real set holds a few grayscale JPEGs
        img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).convert(mode)
        img.save(base / "val" / "images" / f"val_{i}.JPEG", format="JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base


def test_tiny_imagenet_folder_layout(tmp_path):
    base = write_tiny_imagenet(tmp_path)
    d = data.load_raw("tiny-imagenet", tmp_path)
    assert d.train_x.shape == (6, 3, 64, 64) and d.test_x.shape == (3, 3, 64, 64)
    assert d.train_y.tolist() == [0, 0, 1, 1, 2, 2] and d.test_y.tolist() == [2, 1, 0]
    decoded = np.asarray(Image.open(base / "train" / "n01629819" / "images" / "n01629819_1.JPEG").convert("RGB"))
    assert np.array_equal(d.train_x[3].numpy().transpose(1, 2, 0), decoded)
    # the grayscale validation image is expanded to three equal channels
    assert torch.equal(d.test_x[0, 0], d.test_x[0, 1])


def test_tiny_imagenet_errors(tmp_path):
    with pytest.raises(data.DataError, match=r"tiny-imagenet not found: expected .*wnids.txt"):
        data.load_raw("tiny-imagenet", tmp_path)
    base = write_tiny_imagenet(tmp_path)
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(data.DataError, match=r"val_annotations.txt:1: expected .* wnid from wnids.txt"):
        data.load_raw("tiny-imagenet", tmp_path)
    (base / "train" / "n01443537" / "images" / "n01443537_0.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(data.DataError, match=r"n01443537_0.JPEG is not a readable image"):
        data.load_raw("tiny-imagenet", tmp_path)


def tree_digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_prepare_twice_gives_identical_bytes_and_loads_back(tmp_path):
    a = data.prepare("fashion-mnist", tmp_path / "a")
    b = data.prepare("fashion-mnist", tmp_path / "b")
    assert tree_digest(a) == tree_digest(b)
    assert sorted(p.name for p in a.iterdir()) == sorted(data.FILES + ("meta.json",))
    d = data.load("fashion-mnist", tmp_path / "a")
    raw = data.load_raw("fashion-mnist")
    assert torch.equal(d.train_x, raw.train_x) and torch.equal(d.test_y, raw.test_y)


def test_prepared_data_errors(tmp_path):
    with pytest.raises(data.DataError, match=r"prepared cifar10 not found in .*prepare-data --dataset cifar10"):
        data.load("cifar10", tmp_path)
    write_cifar(tmp_path / "raw", "cifar10")
    folder = data.prepare("cifar10", tmp_path / "prep", tmp_path / "raw", verify_md5=False)
    arr = np.load(folder / "test_x.npy")
    arr[0, 0, 0, 0] ^= 1
    np.save(folder / "test_x.npy", arr)
    with pytest.raises(data.DataError, match=r"test_x.npy is corrupt: its md5 differs from .*meta.json"):
        data.load("cifar10", tmp_path / "prep")
    (folder / "train_y.npy").unlink()
    with pytest.raises(data.DataError, match=r"missing file .*train_y.npy"):
        data.load("cifar10", tmp_path / "prep")
    with pytest.raises(data.DataError, match=r"unknown dataset 'svhn': expected one of fashion-mnist"):
        data.load("svhn", tmp_path)


def test_cli_prepare_data_reports_missing_dataset(tmp_path, capsys):
    code = cli(["prepare-data", "--dataset", "tiny-imagenet", "--raw-dir", str(tmp_path), "--data-dir", str(tmp_path / "out")])
    assert code == 2
    assert "tiny-imagenet not found" in capsys.readouterr().err


def test_prepared_data_has_the_hash_pinned_by_data_dvc(tmp_path):
    """Preparing Fashion-MNIST from Debian's files gives exactly the folder data.dvc pins."""
    root = Path(__file__).resolve().parents[1]
    pinned = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]
    assert pinned["path"] == "data"
    data.prepare("fashion-mnist", tmp_path / "data")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (["dvc", "init", "--no-scm", "-q"], ["dvc", "add", "-q", "data"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env=env)
    fresh = yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]
    assert (fresh["md5"], fresh["size"], fresh["nfiles"]) == (pinned["md5"], pinned["size"], pinned["nfiles"])
