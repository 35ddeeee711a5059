"""Datasets: one entry point per step.

- ``load_raw(name, raw_dir)``: read a dataset from its original on-disk format (Fashion-MNIST idx files,
  torchvision's pickled CIFAR batches, Tiny-ImageNet's folder layout).
- ``prepare(name, data_dir)``: write it as plain ``.npy`` files (uint8 images [N, C, H, W], int64 labels)
  into ``data_dir/<name>/``; byte-identical on every run, so data.dvc pins it by hash.
- ``load(name, data_dir)``: read the prepared files back as torch tensors (``ImageData``).

Every failure (missing dataset, truncated or corrupt file, wrong shapes) is a ``DataError`` that says where
it looked and what to run. The parsers are written here rather than taken from torchvision's dataset
classes because those classes md5-check the archives (Debian's Fashion-MNIST .gz files are recompressed
and fail that check although their contents are byte-identical) and report every problem as "Dataset not
found or corrupted"; torchvision is still used to download when a machine is online.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from varmix.core.errors import UserError
from varmix.core.io import file_md5, read_json, write_json, write_npy
from varmix.core.names import DATASETS


class DataError(UserError, RuntimeError):
    """A dataset is missing, truncated or malformed."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    channels: int
    size: int
    classes: int
    train_size: int
    test_size: int
    mean: tuple[float, ...]  # per-channel mean/std of the training images in [0, 1]
    std: tuple[float, ...]


SPECS = {
    "fashion-mnist": DatasetSpec("fashion-mnist", 1, 28, 10, 60000, 10000, (0.2860,), (0.3530,)),
    "cifar10": DatasetSpec("cifar10", 3, 32, 10, 50000, 10000,
                           (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetSpec("cifar100", 3, 32, 100, 50000, 10000,
                            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tiny-imagenet": DatasetSpec("tiny-imagenet", 3, 64, 200, 100000, 10000,
                                 (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
}
assert tuple(SPECS) == DATASETS

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train_x.npy", "train_y.npy", "test_x.npy", "test_y.npy")


@dataclass(frozen=True)
class ImageData:
    """A dataset in memory: uint8 images [N, C, H, W] and int64 labels [N]."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def spec(self) -> DatasetSpec:
        return SPECS[self.name]

    @property
    def num_classes(self) -> int:
        return self.spec.classes

    def subset(self, train: int | None = None, test: int | None = None) -> "ImageData":
        """The first ``train`` training and ``test`` test images (None keeps all)."""
        return ImageData(self.name, self.train_x[:train], self.train_y[:train],
                         self.test_x[:test], self.test_y[:test])


def spec(name: str) -> DatasetSpec:
    if name not in SPECS:
        raise DataError(f"unknown dataset {name!r}: expected one of {', '.join(SPECS)}")
    return SPECS[name]


def image_shape(name: str) -> tuple[int, int, int]:
    """The (C, H, W) of dataset ``name``'s images, from its spec (no files read)."""
    s = spec(name)
    return (s.channels, s.size, s.size)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return x.float().div_(255.0)


# ----------------------------------------------------------------------------------------------
# raw formats
def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (gzipped or not): magic 0x00 0x00 0x08 ndim, big-endian int32 dims, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is corrupt or truncated ({exc}); reinstall or re-download it") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not a uint8 idx file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or corrupt: {len(raw)} bytes, expected {expected} for shape {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem, folder / "FashionMNIST" / "raw" / stem):
        if candidate.is_file():
            return candidate
    return None


def _load_fashion_mnist(raw_dir: Path | None, download: bool) -> tuple[np.ndarray, ...]:
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    if raw_dir is not None and not download and not all(_find_idx(raw_dir, s) for s in stems):
        # a raw_dir that is set must hold the files: falling back to Debian's copy would hide the mistake
        found = sorted(p.name for p in raw_dir.iterdir()) if raw_dir.is_dir() else None
        holds = ("which does not exist" if found is None else
                 f"which holds {', '.join(found[:4]) or 'nothing'}{' ...' if len(found) > 4 else ''}")
        raise DataError(
            f"fashion-mnist not found in raw_dir {raw_dir} ({holds}): expected the idx files "
            f"{', '.join(s + '[.gz]' for s in stems)} there. Put them there, set raw_dir: null in params.yaml to "
            f"use Debian's copy (`sudo apt-get install dataset-fashion-mnist`), or add --download.")
    places = [p for p in (raw_dir, DEBIAN_FASHION_MNIST) if p is not None]
    for folder in places:
        paths = [_find_idx(folder, s) for s in stems]
        if all(paths):
            tx, ty, vx, vy = (_read_idx(p) for p in paths)
            return tx[:, None], ty, vx[:, None], vy
    if download:
        target = raw_dir or Path.home() / ".cache" / "varmix"
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(target), train=True, download=True)
            FashionMNIST(str(target), train=False, download=True)
        except Exception as exc:
            raise DataError(f"fashion-mnist: download into {target} failed ({exc})") from exc
        return _load_fashion_mnist(target, download=False)
    raise DataError(
        "fashion-mnist not found: looked for the idx files (train-images-idx3-ubyte[.gz] ...) in "
        + ", ".join(str(p) for p in places)
        + ". Install Debian's copy with `sudo apt-get install dataset-fashion-mnist`, put the four idx "
        "files in raw_dir, or run `python -m varmix prepare-data --download` on a machine with internet."
    )


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"missing file {path}")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as exc:  # truncated pickles raise EOFError, UnpicklingError, ValueError ...
        raise DataError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc})") from exc


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if b"data" not in batch or label_key not in batch:
        raise DataError(f"{path} is not a CIFAR batch: keys {sorted(batch)} lack b'data' or {label_key!r}")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{path}: data shape {data.shape} with {len(labels)} labels, expected [N, 3072] and N labels")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_md5s(name: str) -> dict[str, str]:
    """The archive's per-file md5s as torchvision lists them (used to verify the real files)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    return dict(cls.train_list + cls.test_list)


def _load_cifar(name: str, raw_dir: Path | None, download: bool, verify_md5: bool) -> tuple[np.ndarray, ...]:
    sub, train_files, test_files, key = (
        ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels")
        if name == "cifar10" else ("cifar-100-python", ["train"], ["test"], b"fine_labels"))
    root = raw_dir or Path.home() / ".cache" / "varmix"
    folder = root / sub
    if not folder.is_dir():
        if download:
            try:
                from torchvision.datasets import CIFAR10, CIFAR100

                (CIFAR10 if name == "cifar10" else CIFAR100)(str(root), download=True)
            except Exception as exc:
                raise DataError(f"{name}: download into {root} failed ({exc})") from exc
        else:
            raise DataError(
                f"{name} not found: expected torchvision's folder {folder}. Run "
                f"`python -m varmix prepare-data --dataset {name} --raw-dir {root} --download` on a machine "
                f"with internet, or unpack the python version of the archive there.")
    if verify_md5:
        md5s = _cifar_md5s(name)
        for fname in train_files + test_files:
            path = folder / fname
            if path.is_file() and file_md5(path) != md5s[fname]:
                raise DataError(f"{path} is corrupt: md5 {file_md5(path)} != expected {md5s[fname]}")
    parts = [_cifar_batch(folder / f, key) for f in train_files]
    tx = np.concatenate([p[0] for p in parts])
    ty = np.concatenate([p[1] for p in parts])
    vx, vy = _cifar_batch(folder / test_files[0], key)
    return tx, ty, vx, vy


def _read_rgb64(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise DataError(f"{path} is not a readable image ({exc})") from exc
    if arr.shape != (64, 64, 3):
        raise DataError(f"{path}: image shape {arr.shape}, expected (64, 64, 3)")
    return arr.transpose(2, 0, 1)


def _load_tiny_imagenet(raw_dir: Path | None) -> tuple[np.ndarray, ...]:
    root = (raw_dir or Path.home() / ".cache" / "varmix") / "tiny-imagenet-200"
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise DataError(
            f"tiny-imagenet not found: expected {wnids_file} with train/ and val/ beside it (the layout of "
            f"tiny-imagenet-200.zip). Unzip the archive into {root.parent} or set raw_dir in params.yaml.")
    wnids = wnids_file.read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    tx, ty = [], []
    for w in wnids:
        files = sorted((root / "train" / w / "images").glob("*.JPEG"))
        if not files:
            raise DataError(f"tiny-imagenet: no training images in {root / 'train' / w / 'images'}")
        tx += [_read_rgb64(f) for f in files]
        ty += [index[w]] * len(files)
    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise DataError(f"tiny-imagenet: missing {ann}")
    vx, vy = [], []
    for n, line in enumerate(ann.read_text().splitlines()):
        cols = line.split("\t")
        if len(cols) < 2 or cols[1] not in index:
            raise DataError(f"{ann}:{n + 1}: expected '<file>\\t<wnid>...' with a wnid from wnids.txt, got {line!r}")
        vx.append(_read_rgb64(root / "val" / "images" / cols[0]))
        vy.append(index[cols[1]])
    return np.stack(tx), np.asarray(ty, np.int64), np.stack(vx), np.asarray(vy, np.int64)


def load_raw(name: str, raw_dir: str | os.PathLike | None = None, download: bool = False,
             verify_md5: bool = True) -> ImageData:
    """Read dataset ``name`` from its original format. ``raw_dir`` is searched first."""
    s = spec(name)
    raw = Path(raw_dir) if raw_dir else None
    if name == "fashion-mnist":
        arrays = _load_fashion_mnist(raw, download)
    elif name in ("cifar10", "cifar100"):
        arrays = _load_cifar(name, raw, download, verify_md5)
    else:
        arrays = _load_tiny_imagenet(raw)
    tx, ty, vx, vy = (torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
    data = ImageData(name, tx, ty.long(), vx, vy.long())
    _check(data, s, "raw")
    return data


def _check(data: ImageData, s: DatasetSpec, where: str) -> None:
    for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        if x.dtype != torch.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != (s.channels, s.size, s.size):
            raise DataError(f"{s.name} ({where}) {split} images: shape {tuple(x.shape)} dtype {x.dtype}, "
                            f"expected [N, {s.channels}, {s.size}, {s.size}] uint8")
        if y.shape != (len(x),):
            raise DataError(f"{s.name} ({where}) {split} labels: shape {tuple(y.shape)}, expected ({len(x)},)")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= s.classes):
            raise DataError(f"{s.name} ({where}) {split} labels outside 0..{s.classes - 1}: "
                            f"min {int(y.min())}, max {int(y.max())}")


# ----------------------------------------------------------------------------------------------
# prepared folder
def prepare(name: str, data_dir: str | os.PathLike = "data", raw_dir: str | os.PathLike | None = None,
            download: bool = False, verify_md5: bool = True) -> Path:
    """Write ``data_dir/<name>/{train,test}_{x,y}.npy`` and ``meta.json``; returns the folder.
    The bytes depend only on the dataset's contents, so preparing twice gives the same hash."""
    data = load_raw(name, raw_dir, download=download, verify_md5=verify_md5)
    out = Path(data_dir) / name
    arrays = dict(zip(FILES, (data.train_x, data.train_y, data.test_x, data.test_y)))
    for fname, t in arrays.items():
        write_npy(out / fname, t.numpy())
    write_json(out / "meta.json", {
        "dataset": name,
        "layout": "images uint8 [N, C, H, W]; labels int64 [N]",
        "shapes": {f: list(t.shape) for f, t in arrays.items()},
        "md5": {f: file_md5(out / f) for f in FILES},
    })
    return out


def load(name: str, data_dir: str | os.PathLike = "data") -> ImageData:
    """Read a prepared dataset, checking each file against the md5 in its meta.json."""
    s = spec(name)
    folder = Path(data_dir) / name
    meta_path = folder / "meta.json"
    fix = f"re-create it from the raw dataset with `python -m varmix prepare-data --dataset {name}`"
    if not meta_path.is_file():
        raise DataError(f"prepared {name} not found in {folder} (no meta.json): {fix}")
    md5s = _read_meta_md5(meta_path, fix)
    for fname in FILES:  # every file first: a damaged one stops the run before anything is read
        path = folder / fname
        if not path.is_file():
            raise DataError(f"missing file {path}: {fix}")
        if file_md5(path) != md5s[fname]:
            raise DataError(f"{path} is corrupt: its md5 differs from the one in {meta_path}: {fix}")
    arrays = []
    for fname in FILES:
        try:
            arrays.append(torch.from_numpy(np.load(folder / fname, allow_pickle=False)))
        except (ValueError, OSError, EOFError) as exc:  # meta.json matches, but the file is no .npy array
            raise DataError(f"{folder / fname} is not a prepared array ({exc}): {fix}") from None
    data = ImageData(name, *arrays)
    _check(data, s, "prepared")
    return data


def _read_meta_md5(meta_path: Path, fix: str) -> dict[str, str]:
    """meta.json's md5 of each prepared file, with one clear error for a damaged or foreign meta.json."""
    try:
        meta = read_json(meta_path)
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise DataError(f"{meta_path} is damaged (not JSON: {exc}): {fix}") from None
    md5s = meta.get("md5") if isinstance(meta, dict) else None
    if not isinstance(md5s, dict) or not all(isinstance(md5s.get(f), str) for f in FILES):
        raise DataError(f"{meta_path} lacks the md5 of each of {', '.join(FILES)} (it was not written by "
                        f"prepare-data): {fix}")
    return md5s
