"""The package draws as layers: core < learn < evaluate < study < pipeline. A module imports only from its
own layer or one below (module-level and lazy imports alike), no two modules import each other in a cycle,
and docs/ARCHITECTURE.md's layer table lists exactly the modules each layer folder holds."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "learn", "evaluate", "study", "pipeline")


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p
            for p in sorted((ROOT / "varmix").rglob("*.py")) if p.name != "__init__.py"}


def _imports(path: Path, known: set[str]) -> set[str]:
    """The varmix modules a file imports anywhere in it (``from varmix.a import b`` names varmix.a.b when
    that is a module, else varmix.a)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("varmix"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            out |= subs or {node.module}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("varmix")}
    return out & known


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else None


def test_every_module_lives_in_a_layer_folder():
    loose = [m for m in _modules() if _layer(m) is None and m not in ("varmix.__main__",)]
    assert not loose, f"modules outside the layer folders: {loose}"
    assert sorted(p.name for p in (ROOT / "varmix").iterdir() if p.is_dir() and p.name != "__pycache__") \
        == sorted(LAYERS)


def test_imports_only_point_down():
    mods = _modules()
    upward = [(m, d) for m, p in mods.items() for d in _imports(p, set(mods))
              if _layer(m) and _layer(d) and LAYERS.index(_layer(d)) > LAYERS.index(_layer(m))]
    assert not upward, f"upward imports: {upward}"


def test_no_import_cycle():
    mods = _modules()
    graph = {m: _imports(p, set(mods)) - {m} for m, p in mods.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_architecture_md_lists_each_layers_modules():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", text, re.M))
    assert list(rows) == list(LAYERS), "docs/ARCHITECTURE.md: one table row per layer, bottom first"
    for layer, cell in rows.items():
        listed = sorted(re.findall(r"`(\w+)`", cell))
        present = sorted(p.stem for p in (ROOT / "varmix" / layer).glob("*.py") if p.name != "__init__.py")
        assert listed == present, f"layer {layer}: docs list {listed}, the folder holds {present}"


def test_the_checker_finds_an_upward_import_and_a_cycle(tmp_path, monkeypatch):
    """The checks above can fail: a core module importing from study is upward, two learn modules
    importing each other are a cycle."""
    for layer in LAYERS:
        (tmp_path / "varmix" / layer).mkdir(parents=True)
    (tmp_path / "varmix" / "core" / "a.py").write_text("def f():\n    from varmix.study import b\n")
    (tmp_path / "varmix" / "study" / "b.py").write_text("")
    (tmp_path / "varmix" / "learn" / "c.py").write_text("from varmix.learn import d\n")
    (tmp_path / "varmix" / "learn" / "d.py").write_text("from varmix.learn.c import x\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    import pytest
    with pytest.raises(AssertionError, match=r"upward imports: \[\('varmix.core.a', 'varmix.study.b'\)\]"):
        test_imports_only_point_down()
    with pytest.raises(AssertionError, match="import cycle: varmix.learn.c -> varmix.learn.d -> varmix.learn.c"):
        test_no_import_cycle()
