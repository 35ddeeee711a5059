"""The prepared data against its pin, checked without writing anything.

``data.dvc`` pins the prepared folder ``data/`` by DVC's directory hash; each dataset's ``meta.json``
holds the md5 of each of its files. ``verify_data`` recomputes both and raises ``PinError`` naming the
first file that differs and the command that restores it. ``python -m varmix verify-data`` runs it
(``make data``, and dvc.yaml's first stage ``check``, which every other stage depends on, so damaged or
foreign data stops ``dvc repro`` before any stage has deleted its outputs).

Why not ``dvc status``/``dvc commit``: DVC re-records a data source whose bytes changed
(``dvc repro`` prints "Verifying data sources in stage: 'data.dvc'" and rewrites data.dvc's md5), and
``dvc commit`` writes before anyone compares. So the directory hash is computed here the way DVC 3
computes it (``dvc_data.hashfile.tree.Tree.as_bytes``: the md5 of the JSON list of
``{"md5", "relpath"}`` entries sorted by relpath, ``json.dumps(..., sort_keys=True)``, with ``.dir``
appended); ``tests/test_faults_pin.py`` checks it reproduces the committed data.dvc.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from varmix.core.errors import UserError
from varmix.core.io import file_md5, write_json

# The one fix every data message names: it works from the state a fresh clone is in (the raw dataset
# installed, DVC's cache empty) and deletes nothing. prepare-data writes the same bytes from the raw dataset
# every time (data.dvc's hash); `dvc checkout data.dvc` is not offered: it needs the data in DVC's cache, which
# only `make data` fills, and its --force deletes data/ before it finds the cache empty.
RESTORE = "re-create the pinned bytes from the raw dataset with `python -m varmix prepare-data`, then run again"


class PinError(UserError, RuntimeError):
    """The prepared data is missing, damaged or not the data data.dvc pins."""


@dataclass(frozen=True)
class Pin:
    """What a .dvc file records for one folder output."""

    path: Path     # the pinned folder
    md5: str       # DVC's directory hash, "<md5>.dir"
    nfiles: int | None


def read_pin(dvc_file: str | os.PathLike) -> Pin:
    """The folder output a .dvc file pins (data.dvc: ``outs: [{md5: ....dir, path: data, ...}]``)."""
    dvc_file = Path(dvc_file)
    try:
        outs = yaml.safe_load(dvc_file.read_text())["outs"]
        out = outs[0]
        md5, path = out["md5"], out["path"]
    except FileNotFoundError:
        raise PinError(f"{dvc_file} not found: it pins the prepared data (git checkout {dvc_file.name})") from None
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        raise PinError(f"{dvc_file} is damaged ({type(exc).__name__}: {exc}): restore it with "
                       f"`git checkout {dvc_file.name}`") from None
    if len(outs) != 1 or not str(md5).endswith(".dir"):
        raise PinError(f"{dvc_file}: expected one folder output (md5 ending in .dir), got {outs!r}")
    return Pin(dvc_file.parent / path, str(md5), out.get("nfiles"))


def _ignored(root: Path):
    """The project's .dvcignore as a matcher of folder-relative paths (DVC leaves these files out of a
    folder's hash). Only the root .dvcignore is read; the project has no other."""
    import pathspec

    ignore = root / ".dvcignore"
    lines = ignore.read_text().splitlines() if ignore.is_file() else []
    spec = pathspec.GitIgnoreSpec.from_lines(lines)  # pathspec: DVC's own dependency and matcher
    return lambda rel: spec.match_file(rel)


def dir_entries(folder: str | os.PathLike, root: str | os.PathLike | None = None) -> dict[str, str]:
    """relpath (posix, relative to ``folder``) -> md5 of every file under ``folder``, as DVC hashes a
    folder output; files that ``root``'s .dvcignore matches are left out, as DVC leaves them out."""
    folder = Path(folder)
    skip = _ignored(Path(root)) if root is not None else (lambda rel: False)
    prefix = Path(os.path.relpath(folder, root)).as_posix() if root is not None else ""
    entries = {}
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            if prefix and not prefix.startswith("..") and skip(f"{prefix}/{rel}"):
                continue
            entries[rel] = file_md5(path)
    return entries


def dir_md5(entries: dict[str, str]) -> str:
    """DVC 3's hash of a folder from its entries (``Tree.as_bytes`` without meta; see the module doc)."""
    listing = [{"md5": md5, "relpath": rel} for rel, md5 in sorted(entries.items())]
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def cache_dir(root: Path) -> Path:
    """DVC's local cache: ``[cache] dir`` of .dvc/config.local (set in dvc exp's temporary workspaces) or
    .dvc/config, relative to .dvc/, else .dvc/cache."""
    for name in ("config.local", "config"):
        config = root / ".dvc" / name
        if config.is_file():
            match = re.search(r"^\s*\[cache\]\s*$(.*?)(?=^\s*\[|\Z)", config.read_text(), re.M | re.S)
            line = re.search(r"^\s*dir\s*=\s*(.+?)\s*$", match.group(1), re.M) if match else None
            if line:
                path = Path(line.group(1))
                return path if path.is_absolute() else (root / ".dvc" / path).resolve()
    return root / ".dvc" / "cache"


def cache_file(root: Path, md5: str) -> Path:
    """Where DVC 3 keeps the bytes of ``md5`` (a file's, or a folder's file list for ``<md5>.dir``)."""
    return cache_dir(root) / "files" / "md5" / md5[:2] / md5[2:]


def cached_manifest(root: Path, md5: str) -> dict[str, str] | None:
    """A folder's {relpath: md5} from DVC's cache (its ``<md5>.dir`` file list), when it is there."""
    try:
        return {e["relpath"]: e["md5"] for e in json.loads(cache_file(root, md5).read_text())}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _shown(path: Path, root: Path) -> str:
    """``path`` relative to the project root when it lies inside it (as the user would type it)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _meta_md5(folder: Path, dataset: str, root: Path) -> dict[str, str]:
    """The {file: md5} that ``folder/dataset/meta.json`` lists (a PinError naming it when missing or damaged)."""
    meta_path = folder / dataset / "meta.json"
    if not meta_path.is_file():
        raise PinError(f"prepared {dataset} not found: {_shown(meta_path, root)} is missing; {RESTORE}")
    try:
        listed = json.loads(meta_path.read_text())["md5"]
        if not isinstance(listed, dict) or not listed:
            raise TypeError("md5 is not a mapping of file -> md5")
    except (ValueError, KeyError, TypeError) as exc:
        raise PinError(f"{_shown(meta_path, root)} is damaged ({type(exc).__name__}: {exc}); {RESTORE}") from None
    return listed


def verify_data(root: str | os.PathLike, data_dir: str, dataset: str | Sequence[str]) -> str:
    """Check ``root/data_dir/<dataset>`` (or each of several datasets, in order) against its meta.json and,
    when data.dvc pins ``data_dir``, the whole folder against data.dvc's hash. Reads only. Returns the
    verified hash (or, for a folder that data.dvc does not pin, the folder's own hash); raises ``PinError``
    naming the file and the fix. The meta.json checks come first: they name the damaged file."""
    root = Path(root)
    folder = root / data_dir
    names = [dataset] if isinstance(dataset, str) else list(dataset)
    if not names:
        raise ValueError("verify_data needs at least one dataset")
    listed = {name: _meta_md5(folder, name, root) for name in names}
    entries = dir_entries(folder, root)
    for name, files in listed.items():
        for fname, md5 in sorted(files.items()):
            rel = f"{name}/{fname}"
            if rel not in entries:
                raise PinError(f"{_shown(folder / rel, root)} is missing; {RESTORE}")
            if entries[rel] != md5:
                raise PinError(f"{_shown(folder / rel, root)} is damaged (md5 {entries[rel]}, its meta.json "
                               f"says {md5}); {RESTORE}")
    got = dir_md5(entries)
    dvc_file = root / "data.dvc"
    if not dvc_file.is_file():
        raise PinError(f"{_shown(dvc_file, root)} not found: it pins the prepared data "
                       f"(git checkout data.dvc)")
    pin = read_pin(dvc_file)
    if pin.path.resolve() != folder.resolve():
        return got  # data_dir is not the folder data.dvc pins: meta.json is the only record
    if got != pin.md5:
        raise PinError(f"{_first_difference(root, folder, entries, pin)} is not the data data.dvc pins "
                       f"({_shown(folder, root)} hashes to {got}, data.dvc pins {pin.md5}); {RESTORE}. "
                       f"Nothing was re-pinned (to pin new data on purpose: `dvc commit data.dvc`, then "
                       f"commit data.dvc)")
    return got


def first_difference(entries: dict[str, str], reference: dict[str, str]) -> tuple[str, str] | None:
    """The first relpath (sorted) whose md5 differs between a folder's ``entries`` and its ``reference`` file
    list, with how: "extra", "missing" or "changed"; None when they agree."""
    for rel in sorted(set(entries) | set(reference)):
        if entries.get(rel) != reference.get(rel):
            return rel, "extra" if rel not in reference else ("missing" if rel not in entries else "changed")
    return None


def _first_difference(root: Path, folder: Path, entries: dict[str, str], pin: Pin) -> str:
    """The first file that differs from the pin, when the DVC cache holds the pinned file list."""
    pinned = cached_manifest(root, pin.md5)
    found = first_difference(entries, pinned) if pinned is not None else None
    if found is not None:
        rel, what = found
        return f"{_shown(folder / rel, root)} ({'an extra file' if what == 'extra' else what})"
    return f"{_shown(folder, root)}/ ({len(entries)} files, data.dvc pins {pin.nfiles})"


def write_stamp(path: str | os.PathLike, dataset: str, data_md5: str) -> None:
    """The check stage's output: the verified data hash only, so its bytes change when the pinned data
    does and never when params do (every stage depends on it; a param edit must not re-run them all)."""
    write_json(path, {"data": data_md5, "dataset": dataset})
