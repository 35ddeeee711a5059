"""Atomic writes: every output is written to a temporary file in the same folder and renamed into
place, so a killed run never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path (ending in ``suffix``) next to ``path``; rename it onto ``path`` only if
    the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty, key-sorted JSON (byte-identical for equal objects)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """Load a torch file, turning a truncated or corrupt file into a clear error."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # zip/pickle errors differ by torch version; all mean "corrupt"
        raise ValueError(
            f"{what} {path} is corrupt or truncated ({type(exc).__name__}: {exc}); "
            f"delete it and re-run the step that writes it"
        ) from exc


def load_module_state(module: Any, path: str | os.PathLike, what: str, fmt: str,
                      build: Any) -> Any:
    """Read a file written as ``{"format": fmt, <build args>, "state_dict": ...}`` (trained models, the
    VAE): check its format tag, build the module with ``build(obj)`` and load the weights into it, with
    one clear error for each way the file can be wrong. ``module`` names the writer for the message."""
    obj = load_torch(path, what)
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path} is not a {what} written by {module} (format {found!r}, expected {fmt!r})")
    net = build(obj)
    try:
        net.load_state_dict(obj["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"{path}: weights do not match the {what} they describe ({exc})") from exc
    return net


def file_md5(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The project root: ``$DVC_ROOT`` when dvc runs a stage, else the first folder upwards that holds
    dvc.yaml or params.yaml (notebooks run with their own folder as cwd under nbval)."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"])
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    raise FileNotFoundError(f"no params.yaml found in {here} or any folder above it")
