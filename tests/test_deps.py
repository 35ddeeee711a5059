"""dvc.yaml's code dependencies are each stage's import closure (varmix.pipeline.deps): a stage that misses a
module its command runs, or lists one it does not, fails here."""
from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pytest

from varmix.core import errors
from varmix.pipeline import cli, deps

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_yaml_code_deps_are_the_import_closure():
    text = (ROOT / "dvc.yaml").read_text()
    assert deps.render(ROOT, text) == text, "run python -m varmix deps"
    listed = deps.listed_code_deps(text)
    assert listed["train"] and all((ROOT / f).is_file() for s in listed.values() for f in s)


def test_a_stage_missing_a_module_it_runs_or_listing_one_it_does_not_is_found(monkeypatch, tmp_path):
    text = (ROOT / "dvc.yaml").read_text()
    missing = text.replace("      - varmix/evaluate/corruptions.py\n", "", 1)  # the first stage that runs it
    extra = re.sub(r"(  train:\n(?:.*\n)*?    deps:\n)", r"\1      - varmix/pipeline/verify.py\n", text, count=1)
    shutil.copytree(ROOT / "varmix", tmp_path / "varmix")
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    monkeypatch.setattr(cli, "project_root", lambda: tmp_path)
    for bad in (missing, extra):
        assert bad != text and deps.render(ROOT, bad) == text
        (tmp_path / "dvc.yaml").write_text(bad)
        with pytest.raises(errors.UserError, match=r"the code deps of \w+.* differ from their import closure; run "
                                                   r"python -m varmix deps"):
            cli._deps(deps, check=True)
        assert cli._deps(deps, check=False) == 0 and (tmp_path / "dvc.yaml").read_text() == text


def test_an_edit_to_an_evaluation_module_reruns_no_training():
    listed = deps.listed_code_deps((ROOT / "dvc.yaml").read_text())
    runs = sorted(s for s, files in listed.items() if "varmix/evaluate/corruptions.py" in files)
    assert runs == ["calibration", "corruptions", "landscape", "perturbations", "regime", "report", "site"]


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_closure_follows_lazy_imports_and_packages_but_only_the_command_lines_module_level(tmp_path):
    root = _package(tmp_path, {
        "varmix/__init__.py": "",
        "varmix/__main__.py": "from varmix.pipeline.cli import main\n",
        "varmix/core/__init__.py": "",
        "varmix/core/a.py": "def f():\n    from varmix.core import b\n",
        "varmix/core/b.py": "import varmix.core.c\n",
        "varmix/core/c.py": "",
        "varmix/core/unused.py": "",
        "varmix/pipeline/__init__.py": "",
        "varmix/pipeline/cli.py": "from varmix.core import a\n\ndef main():\n    from varmix.core import unused\n",
        "varmix/pipeline/runner.py": "",
        "notebooks/01_x.ipynb": json.dumps({"cells": [
            {"cell_type": "code", "source": ["%matplotlib inline\n", "from varmix.core.c import thing\n"]},
            {"cell_type": "markdown", "source": ["from varmix.core import unused"]}]}),
    })
    assert deps.notebook_imports(root / "notebooks/01_x.ipynb") == ["varmix.core.c", "varmix.core.c.thing"]
    files = deps.command_files(root, "python -m varmix notebook 01_x --profile p")
    assert files == ["varmix/__init__.py", "varmix/__main__.py", "varmix/core/__init__.py", "varmix/core/a.py",
                     "varmix/core/b.py", "varmix/core/c.py", "varmix/pipeline/__init__.py",
                     "varmix/pipeline/cli.py", "varmix/pipeline/runner.py"]
    with pytest.raises(ValueError, match="stage command 'dvc push': expected python -m varmix"):
        deps.command_files(root, "dvc push")


def test_each_command_s_modules_are_what_the_command_line_imports_for_it():
    """COMMAND_MODULES copies cli._run's lazy imports per command: the two must agree."""
    tree = ast.parse((ROOT / "varmix/pipeline/cli.py").read_text())
    run = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_run")
    branches = {}
    for node in run.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            values = [c.value for c in ast.walk(node.test) if isinstance(c, ast.Constant)]
            mods = sorted({f"{n.module}.{a.name}" for n in ast.walk(node) if isinstance(n, ast.ImportFrom)
                           for a in n.names})
            for v in values:
                branches[v] = mods
    for command, modules in deps.COMMAND_MODULES.items():
        assert sorted(modules) == branches[command], command


def test_dvc_lock_holds_only_the_stages_dvc_yaml_has():
    """DVC keeps the entries of renamed stages forever, and every stage's run parses and rewrites the whole
    file (benchmarks/stage_overhead.py): `python -m varmix deps` drops them."""
    assert deps.stale_lock_stages(ROOT) == [], "run python -m varmix deps"


def test_stale_lock_entries_are_found_and_pruned_byte_for_byte(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("arms: [erm]\nseeds: [0]\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  train:\n    matrix:\n      arm: ${arms}\n      seed: ${seeds}\n"
                                       "    cmd: x\n  report:\n    cmd: y\n")
    first = "  train@erm-0:\n    cmd: x\n    outs:\n    - path: runs/erm-s0\n      md5: a\n"
    last = "  report:\n    cmd: y\n"
    kept = first + last
    gone = "  train@at-0:\n    cmd: x\n    outs:\n    - path: runs/at-s0\n      md5: b\n"
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n" + first + gone + last)
    assert deps.stale_lock_stages(tmp_path) == ["train@at-0"]
    assert deps.prune_lock((tmp_path / "dvc.lock").read_text(), ["train@at-0"]) == "schema: '2.0'\nstages:\n" + kept
    # the command line: --check names them and writes nothing; without it, dvc.lock loses exactly them
    monkeypatch.setattr(deps, "render", lambda root, text: text)
    monkeypatch.setattr(deps, "stage_code_deps", lambda root, text: {})
    monkeypatch.setattr(cli, "project_root", lambda: tmp_path)
    before = (tmp_path / "dvc.lock").read_text()
    with pytest.raises(errors.UserError, match=r"dvc.lock holds 1 stages dvc.yaml does not have \(train@at-0\)"):
        cli._deps(deps, check=True)
    assert (tmp_path / "dvc.lock").read_text() == before
    assert cli._deps(deps, check=False) == 0
    assert (tmp_path / "dvc.lock").read_text() == "schema: '2.0'\nstages:\n" + kept
    assert deps.stale_lock_stages(tmp_path) == []
