"""dvc.yaml's code dependencies, from the import closure, and dvc.lock without dead entries
(``python -m varmix deps``).

A stage must re-run when, and only when, code it runs changes. What a stage runs is its command's path
through ``python -m varmix`` (varmix/__main__.py, the command line, the branch of that command) plus, for a
notebook stage, every varmix module its notebook imports, and everything those import in turn, module-level
and lazy (function-level) imports alike, with the packages' ``__init__.py`` files Python executes on the way.
Kept by hand, these lists drifted (stages missed modules they ran, and listed modules they did not), so they
are computed here from the code itself, written into dvc.yaml, and a test fails when the two differ.

Static imports are the rule: the library never imports by computed name, so the closure is complete.

Each stage depends on one file, ``code-records/<stage>.md5``, that lists those modules with their md5 in md5sum's
format (``md5sum -c code-records/train.md5`` checks it), instead of on the ~30 modules themselves. DVC's part of a
stage's wall grows with dvc.lock, which it parses several times and rewrites whole for every stage
(benchmarks/stage_overhead.py): one entry per stage instead of ~30 took ~1,600 of dvc.lock's entries
(~6,000 of its ~11,000 lines) away. The record changes exactly when a module the stage runs changes, so a
stage still re-runs when, and only when, its own code changes. The records are written by
``python -m varmix deps`` and refreshed by the check stage, which every ``dvc repro`` runs first: an edit is
seen by ``dvc repro``; ``dvc status`` and ``dvc repro -s STAGE`` see it once either has run
(tests/test_deps.py fails while a committed record is out of date).
"""

from __future__ import annotations

import ast
import functools
import json
import re
from pathlib import Path

from varmix.core import io

# The command line's lazy imports, per command (varmix/pipeline/cli.py's ``_run``): a stage runs only its
# command's branch, so the command line's function-level imports are not followed wholesale.
COMMAND_MODULES = {
    "notebook": ("varmix.pipeline.runner", "varmix.pipeline.preflight"),
    "site": ("varmix.pipeline.session", "varmix.study.site", "varmix.pipeline.preflight"),
    "verify-data": ("varmix.pipeline.deps", "varmix.pipeline.verify"),
}
ENTRY = ("varmix", "varmix.__main__")  # what `python -m varmix` executes before the command line
CLI = "varmix.pipeline.cli"
_CMD = re.compile(r"python -m varmix (?P<command>[\w-]+)(?: (?P<notebook>\d\d_\w+))?")


def module_file(root: Path, name: str) -> Path | None:
    """The file of module ``name`` (``varmix.learn.train`` -> varmix/learn/train.py), or None."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(tree: ast.AST, module_level_only: bool = False) -> list[str]:
    """The varmix modules an AST imports: ``from varmix.a import b`` gives varmix.a and, when b is a
    module, varmix.a.b (the caller drops names that are not modules)."""
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "varmix":
            found.append(node.module)
            found.extend(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.extend(a.name for a in node.names if a.name.split(".")[0] == "varmix")
    return found


def _with_packages(name: str) -> list[str]:
    """``name`` and every package above it (Python runs their __init__.py first)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(root: Path, modules: list[str] | tuple[str, ...]) -> set[Path]:
    """Every varmix source file that importing ``modules`` can execute, relative to ``root``; of the
    command line, only its module-level imports (``command_files`` adds the command's branch)."""
    seen: set[str] = set()
    todo = [p for m in modules for p in _with_packages(m)]
    while todo:
        name = todo.pop()
        if name in seen or module_file(root, name) is None:
            continue
        seen.add(name)
        found = _source_imports(module_file(root, name).read_text(), name, module_level_only=name == CLI)
        todo.extend(p for m in found for p in _with_packages(m))
    return {module_file(root, m).relative_to(root) for m in seen}


@functools.lru_cache(maxsize=512)
def _source_imports(source: str, name: str, module_level_only: bool) -> tuple[str, ...]:
    """``_imports`` of a module's source, parsed once per text: the check stage of every `dvc repro` follows
    the closure of each stage's command, and the stages share most modules (561 parses of ~50 modules)."""
    return tuple(_imports(ast.parse(source, filename=name), module_level_only))


def notebook_imports(path: Path) -> list[str]:
    """The varmix modules a notebook's code cells import (IPython's magics and shell lines skipped)."""
    cells = json.loads(path.read_text())["cells"]
    found = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = "\n".join(line for line in "".join(cell["source"]).splitlines()
                           if not line.lstrip().startswith(("%", "!")))
        found.extend(_imports(ast.parse(source, filename=str(path))))
    return found


def command_files(root: Path, cmd: str) -> list[str]:
    """The varmix files a stage's command runs, sorted (dvc.yaml's order)."""
    m = _CMD.search(" ".join(cmd.split()))
    if not m or m["command"] not in COMMAND_MODULES:
        raise ValueError(f"stage command {cmd!r}: expected python -m varmix with one of "
                         f"{', '.join(COMMAND_MODULES)}")
    files = closure(root, [*ENTRY, CLI, *COMMAND_MODULES[m["command"]]])
    if m["notebook"]:
        files |= closure(root, notebook_imports(root / "notebooks" / f"{m['notebook']}.ipynb"))
    return sorted(str(p) for p in files)


# ---- dvc.yaml: each stage's code dep is its record, code-records/<stage>.md5; the rest kept as written
CODE_DIR = "code-records"
_STAGE = re.compile(r"^  (?P<name>[\w-]+):\n(?P<body>(?:(?:    .*|\s*)\n)*)", re.M)
_CODE_DEP = re.compile(rf"^      - (?:varmix/\S+\.py|{CODE_DIR}/\S+\.md5)\n", re.M)


def stage_code_deps(root: Path, text: str) -> dict[str, list[str]]:
    """{stage: the varmix files its command runs} for every stage of dvc.yaml's ``text`` that has a deps list."""
    out = {}
    for m in _STAGE.finditer(text):
        body = m["body"]
        cmd = re.search(r"^    cmd: (?:>-\n)?((?:.*\n)+?)    \w", body, re.M)
        if "\n    deps:\n" in f"\n{body}" and cmd:
            out[m["name"]] = command_files(root, cmd[1])
    return out


def record_path(stage: str) -> str:
    """The file that records the code ``stage`` runs (a matrix stage's runs share their base name's)."""
    return f"{CODE_DIR}/{stage}.md5"


def code_record(root: Path, files: list[str]) -> str:
    """``files`` (paths under ``root``) with their md5, one ``<md5>  <path>`` line each: md5sum's format."""
    return "".join(f"{io.file_md5(root / f)}  {f}\n" for f in sorted(files))


def recorded_files(root: Path, stage: str) -> list[str]:
    """The modules ``code-records/<stage>.md5`` lists ([] when it does not exist)."""
    path = root / record_path(stage)
    return [line.split("  ", 1)[1] for line in path.read_text().splitlines()] if path.is_file() else []


def records(root: Path, text: str) -> dict[str, str]:
    """{stage: what its ``code-records/<stage>.md5`` should hold now}, for every stage of dvc.yaml's ``text``."""
    return {stage: code_record(root, files) for stage, files in stage_code_deps(root, text).items()}


def stale_records(root: Path, text: str) -> dict[str, str]:
    """{stage: its up-to-date record} for the stages of dvc.yaml's ``text`` whose ``code-records/<stage>.md5`` is
    missing or differs from what the stage runs now."""
    def held(stage: str) -> str | None:
        path = root / record_path(stage)
        return path.read_text() if path.is_file() else None
    return {stage: record for stage, record in records(root, text).items() if held(stage) != record}


def write_records(root: Path, text: str) -> list[str]:
    """Write ``code-records/<stage>.md5`` for every stage of dvc.yaml's ``text`` whose record is out of date
    (atomically; a record that is right keeps its bytes and its mtime, which DVC's hash cache reads);
    returns those stages."""
    stale = stale_records(root, text)
    for stage, record in stale.items():
        path = root / record_path(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        with io.atomic_path(path) as tmp:
            tmp.write_text(record)
    return sorted(stale)


def render(root: Path, text: str) -> str:
    """dvc.yaml's ``text`` with each stage's code dep (varmix modules, or a record) replaced by its record,
    ``code-records/<stage>.md5``, last in its deps list."""
    deps = stage_code_deps(root, text)

    def stage(m: re.Match) -> str:
        if m["name"] not in deps:
            return m.group(0)
        body = _CODE_DEP.sub("", m["body"])
        listed = re.search(r"^    deps:\n((?:      - .*\n)*)", body, re.M)
        line = f"      - {record_path(m['name'])}\n"
        return f"  {m['name']}:\n" + body[:listed.end()] + line + body[listed.end():]
    return _STAGE.sub(stage, text)


def listed_code_deps(text: str) -> dict[str, list[str]]:
    """{stage: the code deps dvc.yaml's ``text`` lists}, in the listed order."""
    return {m["name"]: [d.strip()[2:] for d in _CODE_DEP.findall(m["body"])]
            for m in _STAGE.finditer(text)}


# ---- dvc.lock: entries of stages dvc.yaml no longer has
# DVC keeps a stage's dvc.lock entry after the stage is renamed or dropped (the rivals moved from `train` to
# `train_rivals` and left 20 entries) and offers no command to drop it. Every DVC command parses and every
# stage's run rewrites the whole file, so dead entries cost each stage time; nothing reads them.
_LOCK_STAGE = re.compile(r"^  (?P<name>\S+):\n(?P<body>(?:    .*\n|[ \t]*\n)*)", re.M)


def stale_lock_stages(root: Path) -> list[str]:
    """dvc.lock's stages that dvc.yaml does not have under params.yaml's current values (its matrices
    expanded as DVC expands them)."""
    from varmix.pipeline import preflight

    if not (root / "dvc.lock").is_file() or not (root / "params.yaml").is_file():
        return []
    current = preflight.pipeline_stages(root)
    return [name for name in preflight.read_lock(root) if name not in current]


def prune_lock(text: str, stale: list[str]) -> str:
    """dvc.lock's ``text`` without the entries of ``stale``, every other byte as it was."""
    gone = set(stale)
    return _LOCK_STAGE.sub(lambda m: "" if m["name"] in gone else m.group(0), text)
