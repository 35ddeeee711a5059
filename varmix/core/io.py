"""Atomic writes: every output is written to a temporary file in the same folder and renamed into
place, so a killed run never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


# Every temporary file is named ``.<target name>.<random>.tmp<suffix>``: hidden, beside its target, and
# matched by TEMP_PATTERNS (also listed in .dvcignore and .gitignore, so DVC never hashes or caches one and
# git never shows one). A kill between creating and renaming leaves one behind; remove_stale_temps and the
# next write of the same target remove it.
TEMP_MARK = ".tmp"
TEMP_PATTERNS = (f".*{TEMP_MARK}", f".*{TEMP_MARK}.*")


def is_temp(name: str, target: str | None = None) -> bool:
    """Whether ``name`` is an atomic_path temporary (of ``target`` only, when given)."""
    head = f".{target}." if target is not None else "."
    return name.startswith(head) and (name.endswith(TEMP_MARK) or f"{TEMP_MARK}." in name[len(head):])


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that killed writes left directly in ``folder`` (not in subfolders); return
    them. Call it where a run starts writing into a folder that only it writes (a model folder, the VAE's)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(p for p in folder.iterdir() if is_temp(p.name) and p.is_file())
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path ``.<name>.<random>.tmp<suffix>`` next to ``path`` (``suffix`` for writers
    that want an extension, e.g. ".ipynb"); rename it onto ``path`` only if the block succeeds. Stale
    temporaries of the same target, left by killed writes, are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if is_temp(old.name, path.name) and old.is_file():
            old.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_MARK + suffix, dir=path.parent)
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


# ----------------------------------------------------------------------------------------------
# timings: wall-clock seconds differ on every run, so they never go into a folder that a pipeline stage
# depends on (a model or VAE folder); the trainers write them to a separate JSON list, one row per epoch
def timings_path(timings: str | os.PathLike | None, out_dir: str | os.PathLike) -> Path | None:
    """``timings`` as a Path (None stays None), refused when it lies inside ``out_dir``."""
    if timings is None:
        return None
    path = Path(timings)
    if Path(out_dir).resolve() in path.resolve().parents:
        raise ValueError(f"timings = {str(path)!r} lies inside out_dir {str(out_dir)!r}, whose files must "
                         f"depend only on the weights and settings: write timings elsewhere")
    return path


def read_epoch_timings(path: Path | None, upto: int) -> list[dict]:
    """The rows of a timings list for epochs 1..``upto`` (a resumed run keeps them); [] when there is no
    file or it is unreadable (timings are informative and never stop a run)."""
    if path is None or not path.is_file():
        return []
    try:
        rows = read_json(path)
        return [r for r in rows if isinstance(r.get("epoch"), int) and r["epoch"] <= upto]
    except (ValueError, TypeError, AttributeError, OSError):
        return []


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)


class _PlainPickle:
    """A pickle module for torch.save whose Pickler keeps no memo (pickle's ``fast`` mode): every object is
    written out in full wherever it occurs. Fine for the acyclic dicts, lists and tensors saved here
    (tensor storages are shared through torch's own persistent ids, not the memo)."""

    class Pickler(pickle.Pickler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.fast = True

    Unpickler = pickle.Unpickler
    load = staticmethod(pickle.load)
    dump = staticmethod(pickle.dump)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` with torch.save, atomically; byte-identical for equal objects."""
    import torch

    # torch.save names the archive's records after the file it writes to (here a random temp name), so
    # serialise into memory first: the archive is then named "archive". pickle's memo writes an object met
    # twice as a back-reference, so equal objects pickle differently when different parts of them are the
    # same Python object (a resumed run's history holds unpickled strings, a fresh run's interned ones);
    # _PlainPickle switches the memo off. Tensors, dicts in insertion order, generator states and torch's
    # serialization_id are deterministic, so equal objects give equal bytes.
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_module=_PlainPickle)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getbuffer())


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


def probe_write(folder: str | os.PathLike) -> Path:
    """Create and remove a file in ``folder``, or in the nearest existing folder above it, and return that
    folder; raises the OSError a write there meets (a read-only mount, a root-owned folder: file modes
    alone miss both)."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    with tempfile.TemporaryFile(dir=existing):
        pass
    return existing


def file_md5(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The project root: the first folder upwards from ``start`` (default: the cwd) that holds params.yaml.
    dvc runs a stage in the folder of its dvc.yaml, the notebooks run in notebooks/ (papermill's cwd and
    nbval's). ``$DVC_ROOT`` is not used: in a queued or --temp experiment dvc sets it to the main
    workspace, not to the temporary copy under .dvc/tmp/exps that the stage runs in."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    raise FileNotFoundError(f"no params.yaml found in {here} or any folder above it")


# ----------------------------------------------------------------------------------------------
# numpy archives with stable bytes. np.savez_compressed (numpy 2.4.6 on Python 3.11) happens to give equal
# bytes for equal arrays too: it opens each member by name, so zipfile's default date 1980-01-01 is used;
# but that is an implementation detail numpy does not document, and it cannot write atomically. write_npz
# builds the same .npz layout (one ``<key>.npy`` member per array, readable by np.load) with zipfile and
# sets every header field that could vary itself (date, creating system, permissions, compression level)
_NPZ_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip header can hold
_NPZ_LEVEL = 9


def _check_npz_key(key: Any) -> str:
    if not isinstance(key, str) or not key or key.startswith("/") or key.endswith("/") or "//" in key \
            or any(part in (".", "..") for part in key.split("/")) or "\\" in key or "\x00" in key:
        raise ValueError(f"array key {key!r} is invalid: expected a non-empty string of '/'-separated names "
                         f"(e.g. 'erm-s0/corruptions'), without '.', '..', backslashes or empty parts")
    return key


def write_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
    """Write ``arrays`` (key -> array) as one deflate-compressed .npz, atomically, that ``np.load`` and
    :func:`read_npz` read back. Keys may contain '/' (e.g. ``"erm-s0/corruptions"``). Members are
    written in the mapping's order with a fixed date (1980-01-01), permissions and compression level,
    so equal arrays under equal keys in the same order give byte-identical files (with the same zlib).
    Object arrays are refused (they would need pickle)."""
    if not isinstance(arrays, Mapping) or not arrays:
        raise ValueError(f"arrays must be a non-empty mapping key -> numpy array, got "
                         f"{type(arrays).__name__ if not isinstance(arrays, Mapping) else 'an empty mapping'}")
    members = []
    for key, value in arrays.items():
        key = _check_npz_key(key)
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise ValueError(f"arrays[{key!r}] has dtype {arr.dtype}: expected numbers, booleans or strings "
                             f"(object arrays need pickle, which .npz files here never hold)")
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.ascontiguousarray(arr), version=(1, 0), allow_pickle=False)
        members.append((key, buf.getvalue()))
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=_NPZ_LEVEL) as zf:
            for key, data in members:
                info = zipfile.ZipInfo(f"{key}.npy", date_time=_NPZ_DATE)
                info.create_system = 3              # unix, whatever the writing platform
                info.external_attr = 0o644 << 16    # -rw-r--r--
                zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=_NPZ_LEVEL)


def read_npz(path: str | os.PathLike, what: str = "archive") -> dict[str, np.ndarray]:
    """All arrays of an .npz (as written by :func:`write_npz` or np.savez), in the file's order, loaded
    into memory; a missing file or a corrupt one gives a clear error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError, zlib.error: all mean "corrupt"
        raise ValueError(f"{what} {path} is corrupt or truncated ({type(exc).__name__}: {exc}); "
                         f"delete it and re-run the step that writes it") from exc


# ----------------------------------------------------------------------------------------------
# clean test logits of every run in one committed file. Stored as float16: a study's 45 runs x 10,000
# images x 10 classes fit in 10 MB that way (measured in docs/EVALUATION_DATA.md). Every number computed
# from these logits must be computed from the float16-rounded values read_logits returns, so that
# recomputing from the committed file gives the committed numbers exactly.
_F16_MAX = float(np.finfo(np.float16).max)


def _check_run_key(key: Any) -> str:
    if not isinstance(key, str) or not key or "/" in key:
        raise ValueError(f"run key {key!r} is invalid: expected a non-empty string without '/' (e.g. 'erm-s0')")
    return _check_npz_key(key)


def write_logits(path: str | os.PathLike, runs: Mapping[str, tuple[Any, Any]]) -> None:
    """Write ``{run_key: (logits [N, K], labels [N])}`` to one compressed .npz (:func:`write_npz`): the
    logits as float16 under ``<run>/logits``, the labels as int64 once under ``labels`` when every run
    has the same ones, else per run under ``<run>/labels``. Logits must be finite and within float16's
    range (|x| <= 65504); labels integers in 0..K-1. Equal inputs give byte-identical files."""
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("runs must be a non-empty mapping run key -> (logits, labels)")
    checked = {}
    for key, pair in runs.items():
        key = _check_run_key(key)
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"runs[{key!r}] is a {type(pair).__name__}: expected a (logits, labels) pair")
        logits, labels = (np.asarray(v.detach().cpu() if hasattr(v, "detach") else v) for v in pair)
        if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2 \
                or not np.issubdtype(logits.dtype, np.floating):
            raise ValueError(f"runs[{key!r}] logits are {logits.dtype} of shape {logits.shape}: expected "
                             f"float logits [N, K] with N >= 1 and K >= 2")
        if not np.isfinite(logits).all() or np.abs(logits).max() > _F16_MAX:
            raise ValueError(f"runs[{key!r}] logits hold values outside float16's finite range "
                             f"(max |x| = {np.abs(logits).max()}); expected finite |x| <= {_F16_MAX:g}")
        if labels.shape != (logits.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"runs[{key!r}] labels are {labels.dtype} of shape {labels.shape}: expected "
                             f"{logits.shape[0]} integer labels (one per logits row)")
        if labels.min() < 0 or labels.max() >= logits.shape[1]:
            raise ValueError(f"runs[{key!r}] labels range {labels.min()}..{labels.max()}: expected "
                             f"0..{logits.shape[1] - 1} (the number of classes)")
        checked[key] = (logits.astype(np.float16), labels.astype(np.int64))
    first = next(iter(checked.values()))[1]
    shared = all(np.array_equal(lab, first) for _, lab in checked.values())
    arrays: dict[str, np.ndarray] = {"labels": first} if shared else {}
    for key, (logits, labels) in checked.items():
        arrays[f"{key}/logits"] = logits
        if not shared:
            arrays[f"{key}/labels"] = labels
    write_npz(path, arrays)


def read_logits(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{run_key: (logits float32 [N, K], labels int64 [N])}`` from a :func:`write_logits` file, in the
    order written; the float32 logits are exactly the stored float16 values."""
    arrays = read_npz(path, "logits file")
    out = {}
    for name, arr in arrays.items():
        if not name.endswith("/logits"):
            continue
        key = name[:-len("/logits")]
        labels = arrays.get(f"{key}/labels", arrays.get("labels"))
        if labels is None or arr.dtype != np.float16:
            raise ValueError(f"{path} is not a logits file written by varmix.core.io.write_logits "
                             f"(run {key!r}: logits {arr.dtype}, labels {'missing' if labels is None else 'present'})")
        out[key] = (arr.astype(np.float32), labels.astype(np.int64))
    if not out:
        raise ValueError(f"{path} holds no '<run>/logits' arrays: expected a file written by write_logits")
    return out
