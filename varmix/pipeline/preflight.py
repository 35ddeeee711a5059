"""What a stage's command checks before its work starts, and what it puts back when a check fails.

DVC removes a stage's outputs before it runs the stage's command (``Stage.run`` calls ``remove_outs``;
``persist`` would stop that but also switch off DVC's run cache) and offers no hook before the removal.
The ``check`` stage, which every stage depends on, runs first under a plain ``dvc repro``; under
``dvc repro -s STAGE`` (the README's way to re-run one stage), ``dvc exp run -s`` or a queued single
stage it does not run at all. So every stage's command starts with ``guard`` when DVC runs it (DVC sets
``DVC_STAGE``): it resolves params.yaml and the command's own arguments, checks the pinned data
(``verify.verify_data``, what ``check`` does), every upstream artifact the stage reads against the md5
dvc.lock records for the stage that makes it (a truncated model.pt is named here, with that stage), that
each output's folder is writable and that the disk holds the outputs' size as dvc.lock records it. When
any of that fails, the outputs DVC has just removed are put back before the one-line error is printed:
cached ones from DVC's cache, the git-tracked ones (``cache: false``) from git's HEAD, each only with the
bytes dvc.lock records; dvc.lock itself is untouched, so the workspace is as it was before the command.

Nothing here runs for a command started by hand (no ``DVC_STAGE``): then DVC has removed nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import yaml

from varmix.core import errors
from varmix.core.io import atomic_path, file_md5, probe_write
from varmix.pipeline import verify
from varmix.pipeline.session import DVC_STAGE_ENV

T = TypeVar("T")

# What a stage writes besides its outputs' own bytes (the executed notebook's temporary copy, the kernel's
# files, matplotlib's cache): the free-space check asks for the outputs' recorded size plus this.
MARGIN_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Out:
    """One output as dvc.lock records it."""

    stage: str
    path: str        # relative to the project root, posix
    md5: str         # "<md5>" for a file, "<md5>.dir" for a folder
    size: int | None


def read_lock(root: Path) -> dict[str, dict]:
    """dvc.lock's stages (``{}`` when there is none yet); libyaml's loader when present: the lock of the full
    study has ~14,000 lines, which the pure-Python loader needs about a second for."""
    path = root / "dvc.lock"
    if not path.is_file():
        return {}
    try:
        return dict(_load(path).get("stages") or {})
    except (yaml.YAMLError, AttributeError) as exc:
        raise errors.UserError(f"dvc.lock is damaged ({type(exc).__name__}): restore it with "
                               "`git checkout dvc.lock`") from None


def outs_of(lock: dict[str, dict], stage: str) -> list[Out]:
    return [Out(stage, o["path"], str(o.get("md5", "")), o.get("size"))
            for o in lock.get(stage, {}).get("outs", []) if "path" in o]


def _inside(a: str, b: str) -> bool:
    """Path ``a`` is ``b`` or lies under it."""
    return a == b or a.startswith(b.rstrip("/") + "/")


def _load(path: Path) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(path.read_text(), Loader=loader) or {}


def _substitute(text: str, values: dict[str, object]) -> str:
    """dvc.yaml's ``${name}`` / ``${item.key}`` references, for the plain values this project uses."""
    return re.sub(r"\$\{\s*([\w.]+)\s*\}", lambda m: str(values.get(m.group(1), m.group(0))), text)


def _matrix_names(name: str, stage: dict, params: dict) -> dict[str, dict[str, object]]:
    """A dvc.yaml stage's names as DVC expands them (``train@erm-0``: the matrix values joined by '-', in
    key order), each with its ``item.<key>`` values; a stage without a matrix is its own name."""
    import itertools

    matrix = stage.get("matrix")
    if not matrix:
        return {name: {}}
    keys, lists = list(matrix), []
    for key in keys:
        values = matrix[key]
        if isinstance(values, str):
            values = params.get(values.strip()[2:-1]) if values.strip().startswith("${") else None
        if not isinstance(values, list):
            return {}
        lists.append(values)
    return {f"{name}@{'-'.join(map(str, combo))}": {f"item.{k}": v for k, v in zip(keys, combo, strict=True)}
            for combo in itertools.product(*lists)}


def pipeline_stages(root: Path) -> dict[str, list[str]]:
    """Every stage of dvc.yaml under params.yaml's current values, by the name DVC gives it, with its
    dependency paths resolved (``${...}`` references DVC would fill and this cannot are left out). Written
    here rather than asked of DVC: loading DVC's repository costs ~2.5 s a stage, this ~0.01 s."""
    params = _load(root / "params.yaml")
    values = {k: v for k, v in params.items() if not isinstance(v, (dict, list))}
    stages = {}
    for name, stage in (_load(root / "dvc.yaml").get("stages") or {}).items():
        for full, item in _matrix_names(name, stage, params).items():
            deps = [_substitute(d if isinstance(d, str) else next(iter(d)), {**values, **item})
                    for d in stage.get("deps", [])]
            stages[full] = [d for d in deps if "${" not in d]
    return stages


def upstream(root: Path, lock: dict[str, dict], stage: str) -> dict[str, list[Out]]:
    """The outputs of the pipeline's other stages (as dvc.lock records them) that ``stage`` reads: each
    output one of its deps is, contains or lies in, by path. Only stages dvc.yaml has now count: dvc.lock
    keeps the entries of stages renamed or dropped since, and the stage's own entry records the deps of its
    last run (another profile's paths, say)."""
    stages = pipeline_stages(root)
    deps = stages.get(stage, [])
    found: dict[str, list[Out]] = {}
    for other in lock:
        if other == stage or other not in stages:
            continue
        for out in outs_of(lock, other):
            if any(_inside(out.path, dep) or _inside(dep, out.path) for dep in deps):
                found.setdefault(out.path, []).append(out)
    return found


def current_md5(root: Path, path: str) -> str | None:
    """The md5 DVC would record for ``path`` now (a folder: its directory hash), or None when it is missing."""
    full = root / path
    if full.is_dir():
        return verify.dir_md5(verify.dir_entries(full, root))
    if full.is_file():
        return file_md5(full)
    return None


def check_upstream(root: Path, lock: dict[str, dict], stage: str) -> None:
    """Each upstream artifact ``stage`` reads is present and is what dvc.lock records for the stage that made
    it; otherwise a UserError naming the file and that stage. A stage that has not run yet (no record in
    dvc.lock) is DVC's to order: it is not checked here."""
    for path, records in sorted(upstream(root, lock, stage).items()):
        got = current_md5(root, path)
        if got is not None and any(got == r.md5 for r in records):
            continue
        maker = records[-1].stage
        if got is None:
            what = "is missing"
        else:
            what = (f"is not what dvc.lock records for stage {maker} ({_first_changed(root, path, records[-1].md5)}"
                    f"md5 {got}, recorded {records[-1].md5})")
        raise errors.UserError(f"{path} {what}: stage {stage} reads it; re-create it with `dvc repro {maker}` "
                               "(DVC's cache restores it when it holds it), then run again")


def _first_changed(root: Path, path: str, md5: str) -> str:
    """'file X changed; ' for a folder whose recorded file list is in DVC's cache, else ''."""
    manifest = verify.cached_manifest(root, md5) if md5.endswith(".dir") else None
    found = verify.first_difference(verify.dir_entries(root / path, root), manifest) if manifest else None
    return f"{path}/{found[0]} {found[1]}; " if found else ""


def check_writable(root: Path, outs: list[Out]) -> None:
    """The nearest existing folder of every output can be written (``io.probe_write``)."""
    for folder in dict.fromkeys((root / out.path).parent for out in outs):
        try:
            probe_write(folder)
        except OSError as exc:
            raise errors.UserError(f"cannot write into {folder} ({exc.strerror}), where this stage writes its "
                                   "outputs: make the folder writable, then run again") from None


def check_disk(root: Path, outs: list[Out], free: Callable[[Path], int] | None = None) -> None:
    """The disk holds what the stage will write: the outputs' sizes as dvc.lock records them (a stage that
    never ran records none), plus ``MARGIN_BYTES``. ``free`` (for tests) gives a folder's free bytes."""
    free = free or (lambda p: shutil.disk_usage(p).free)
    need = sum(o.size or 0 for o in outs) + MARGIN_BYTES
    folder = next(p for p in (root / "runs", root) if p.exists())
    have = free(folder)
    if have < need:
        raise errors.UserError(f"{have / 2**20:,.0f} MiB free on the disk of {folder}; this stage writes about "
                               f"{need / 2**20:,.0f} MiB (its outputs' size in dvc.lock, plus "
                               f"{MARGIN_BYTES // 2**20} MiB): free space (df -h shows it), then run again")


def _git_bytes(root: Path, path: str) -> bytes | None:
    run = subprocess.run(["git", "cat-file", "blob", f"HEAD:{path}"], cwd=root, capture_output=True)
    return run.stdout if run.returncode == 0 else None


def _write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def restore(root: Path, out: Out) -> str | None:
    """Put ``out`` back with the bytes dvc.lock records, from DVC's cache or else git's HEAD; returns where
    they came from ("cache", "git"), or None when neither holds them. An output still present is left alone."""
    full = root / out.path
    if full.exists():
        return "present"
    if not out.md5:
        return None
    if out.md5.endswith(".dir"):
        manifest = verify.cached_manifest(root, out.md5)
        if manifest is not None and all(verify.cache_file(root, m).is_file() for m in manifest.values()):
            for rel, md5 in manifest.items():
                _write(full / rel, verify.cache_file(root, md5).read_bytes())
            return "cache"
        listed = subprocess.run(["git", "ls-tree", "-r", "-z", "--name-only", "HEAD", "--", out.path], cwd=root,
                                capture_output=True, text=True)
        files = [f for f in listed.stdout.split("\0") if f] if listed.returncode == 0 else []
        blobs = {f: _git_bytes(root, f) for f in files}
        prefix = out.path.rstrip("/") + "/"
        entries = {f[len(prefix):]: hashlib.md5(b).hexdigest() for f, b in blobs.items() if b is not None}
        if files and verify.dir_md5(entries) == out.md5:
            for f, data in blobs.items():
                _write(root / f, data)
            return "git"
        return None
    cached = verify.cache_file(root, out.md5)
    if cached.is_file():
        _write(full, cached.read_bytes())
        return "cache"
    data = _git_bytes(root, out.path)
    if data is not None and hashlib.md5(data).hexdigest() == out.md5:
        _write(full, data)
        return "git"
    return None


def guard(root: Path, check: Callable[[], T], data_of: Callable[[T], object] | None = None) -> T:
    """Run ``check`` (the command's own argument and params checks) and return what it returns; when DVC runs
    this command, also the checks of the module doc (the pinned data of the ``Params`` that
    ``data_of(result)`` gives, for a command that reads data). On a failure under DVC, the outputs DVC
    removed are put back first, and an ``errors.Refused`` says in two lines what failed and what was put
    back (an unexpected error keeps its traceback, with that line as a note)."""
    stage = os.environ.get(DVC_STAGE_ENV)
    if not stage:
        return check()
    lock: dict[str, dict] = {}
    try:
        lock = read_lock(root)
        result = check()
        if data_of is not None:
            params = data_of(result)
            verify.verify_data(root, params.data_dir, params.datasets)
        if stage in lock:
            outs = outs_of(lock, stage)
            check_writable(root, outs)
            check_disk(root, outs)
            check_upstream(root, lock, stage)
        return result
    except BaseException as exc:
        note = _put_back(root, outs_of(lock, stage))
        described = errors.describe(exc)
        if described is None:
            exc.add_note(note)
            raise
        lines, code = described
        raise errors.Refused(lines[:1] + [note], code) from None


def _put_back(root: Path, outs: list[Out]) -> str:
    """Restore the stage's outputs and say so in one line."""
    if not outs:
        return "dvc.lock records no outputs of this stage: nothing was put back"
    where: dict[str, list[str]] = {}
    for out in outs:
        try:
            source = restore(root, out)
        except OSError:
            source = None
        where.setdefault(source or "lost", []).append(out.path)
    put = len(where.get("cache", [])) + len(where.get("git", []))
    kept = len(where.get("present", []))
    line = (f"the stage's {len(outs)} outputs are as dvc.lock records them: DVC had removed {put}, put back from "
            f"its cache ({len(where.get('cache', []))}) and git ({len(where.get('git', []))})"
            + (f", {kept} untouched" if kept else ""))
    if where.get("lost"):
        line = (f"DVC removed {len(where['lost'])} of the stage's outputs that neither its cache nor git holds "
                f"({', '.join(where['lost'][:3])}{', ...' if len(where['lost']) > 3 else ''}): once the problem "
                "is fixed, the stage re-creates them")
    return line
