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


def test_every_stage_depends_on_its_code_record_and_the_records_are_the_import_closure():
    text = (ROOT / "dvc.yaml").read_text()
    assert deps.render(ROOT, text) == text, "run python -m varmix deps"
    assert deps.stale_records(ROOT, text) == {}, "run python -m varmix deps"
    listed = deps.listed_code_deps(text)
    assert listed["train"] == ["code-records/train.md5"]
    assert all(v == [deps.record_path(s)] for s, v in listed.items() if v)
    files = deps.recorded_files(ROOT, "train")
    assert "varmix/learn/train.py" in files and all((ROOT / f).is_file() for f in files)


def _project_copy(tmp_path: Path, monkeypatch) -> Path:
    for folder in ("varmix", "notebooks", "code-records"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    monkeypatch.setattr(cli, "project_root", lambda: tmp_path)
    return tmp_path


def test_a_record_missing_a_module_listing_an_extra_one_or_an_old_md5_is_found_and_rewritten(monkeypatch, tmp_path):
    root = _project_copy(tmp_path, monkeypatch)
    good = (root / "code-records/corruptions.md5").read_text()
    lines = good.splitlines(keepends=True)
    missing = "".join(line for line in lines if not line.endswith("  varmix/evaluate/corruptions.py\n"))
    extra = good + f"{'0' * 32}  varmix/pipeline/verify.py\n"
    old_md5 = good.replace(good[:32], "f" * 32, 1)
    for bad in (missing, extra, old_md5):
        assert bad != good
        (root / "code-records/corruptions.md5").write_text(bad)
        with pytest.raises(errors.UserError, match=r"code-records/corruptions.md5: not the md5s of the modules the "
                                                   r"stage runs now; run python -m varmix deps"):
            cli._deps(deps, check=True)
        assert (root / "code-records/corruptions.md5").read_text() == bad  # --check writes nothing
        assert cli._deps(deps, check=False) == 0 and (root / "code-records/corruptions.md5").read_text() == good


def test_dvc_yaml_listing_modules_instead_of_the_record_is_found_and_rewritten(monkeypatch, tmp_path):
    root = _project_copy(tmp_path, monkeypatch)
    text = (root / "dvc.yaml").read_text()
    modules = "".join(f"      - {f}\n" for f in deps.recorded_files(root, "report"))
    old = re.sub(r"(  report:\n(?:.*\n)*?)      - code-records/report.md5\n", lambda m: m[1] + modules, text, count=1)
    assert old != text and deps.render(root, old) == text
    (root / "dvc.yaml").write_text(old)
    with pytest.raises(errors.UserError, match=r"dvc.yaml: the code deps of report are not their record "):
        cli._deps(deps, check=True)
    assert cli._deps(deps, check=False) == 0 and (root / "dvc.yaml").read_text() == text


def test_an_edit_to_a_module_rewrites_exactly_the_records_of_the_stages_that_run_it(monkeypatch, tmp_path):
    root = _project_copy(tmp_path, monkeypatch)
    text = (root / "dvc.yaml").read_text()
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (root / "code-records").iterdir()}
    with open(root / "varmix/evaluate/corruptions.py", "a") as fh:
        fh.write("\n# an edit\n")
    written = deps.write_records(root, text)
    assert written == ["calibration", "corruptions", "landscape", "perturbations", "regime", "report", "site"]
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (root / "code-records").iterdir()}
    assert sorted(n[:-4] for n in after if after[n] != before[n]) == written  # the others keep bytes and mtime
    assert deps.write_records(root, text) == []


def test_an_edit_to_an_evaluation_module_reruns_no_training():
    runs = sorted(s for s in deps.stage_code_deps(ROOT, (ROOT / "dvc.yaml").read_text())
                  if "varmix/evaluate/corruptions.py" in deps.recorded_files(ROOT, s))
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
