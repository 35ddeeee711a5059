"""The pipeline's wiring: dvc.yaml agrees with varmix.pipeline.session.Layout, the notebooks are thin parameterised
drivers, notebook runs check their arguments before any kernel starts, outputs are clean and atomic."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

import varmix
from varmix.core import config, errors, names
from varmix.pipeline import runner, session

ROOT = Path(__file__).resolve().parents[1]


def _dvc_stages(profile: str = "default", dataset: str = "fashion-mnist") -> dict:
    """dvc.yaml with ${...} filled in from params.yaml (and the matrix expanded) for one profile."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(profile=profile, dataset=dataset)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

    def fill(obj, item=None):
        if isinstance(obj, str):
            obj = re.sub(r"\$\{item\.(\w+)\}", lambda m: str(item[m[1]]), obj)
            obj = re.sub(r"\$\{(\w+)\[(\d+)\]\}", lambda m: str(params[m[1]][int(m[2])]), obj)
            return re.sub(r"\$\{(\w+)\}", lambda m: str(params[m[1]]), obj)
        if isinstance(obj, list):
            return [fill(v, item) for v in obj]
        if isinstance(obj, dict):
            return {fill(k, item): fill(v, item) for k, v in obj.items()}
        return obj

    out = {}
    for name, st in stages.items():
        if "matrix" in st and list(st["matrix"]) == ["vae_seed"]:  # the vae stage: one per VAE seed
            body = {k: v for k, v in st.items() if k != "matrix"}
            for vae_seed in params[st["matrix"]["vae_seed"].strip("${}")]:
                out[f"{name}@{vae_seed}"] = fill(body, {"vae_seed": vae_seed})
        elif "matrix" in st:
            body = {k: v for k, v in st.items() if k != "matrix"}
            arms_key, seeds_key = (st["matrix"][k].strip("${}") for k in ("arm", "seed"))
            for arm in params[arms_key]:
                for seed in params[seeds_key]:
                    out[f"{name}@{arm}-{seed}"] = fill(body, {"arm": arm, "seed": seed})
        else:
            out[name] = fill(st)
    return out


def _paths(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


@pytest.fixture(scope="module")
def layout():
    return session.Layout(Path("."), "fashion-mnist", "default")


def _rel(p: Path) -> str:
    return p.as_posix().removeprefix("./")


def test_dvc_outputs_are_the_layouts_paths(layout):
    stages = _dvc_stages()
    params = config.load_params(ROOT / "params.yaml")
    assert [n for n in stages if n.startswith("vae@")] == [f"vae@{k}" for k in params.vae_seeds]
    for k in params.vae_seeds:  # one VAE per VAE seed: its folder, notebook, metrics and history
        st = stages[f"vae@{k}"]
        assert _paths(st["outs"]) == [_rel(layout.vae_folder("plain", k)), _rel(layout.notebook(f"01_vae-s{k}")),
                                      _rel(layout.metrics(names.vae_name("plain", k)))]
        assert _paths(st["plots"]) == [_rel(layout.plot_data(f"{names.vae_name('plain', k)}_history"))]
        assert st["cmd"].endswith(f"--vae-seed {k}")
        assert _rel(layout.metrics(names.vae_name("plain", k)).parent) in stages["report"]["deps"]
    trained = [name.partition("@")[2] for name in stages if name.startswith(("train@", "train_rivals@"))]
    assert trained == [f"{m}-{sd}" for m, sd in params.runs]  # the two matrices train every run, once
    for m, sd in params.runs:
        st = stages[f"{'train_rivals' if m in params.rival_arms else 'train'}@{m}-{sd}"]
        name = names.run_name(m, sd)
        assert _paths(st["outs"]) == [_rel(layout.model_dir(m, sd)), _rel(layout.notebook(f"02_train-{name}")),
                                      _rel(layout.metrics(f"train-{name}"))]
        assert _paths(st["plots"]) == [_rel(layout.plot_data(f"train-{name}"))]
        assert f"--arm {m} --seed {sd}" in st["cmd"]
        assert f"arm_settings.{m}" in st["params"]  # an arm's stage depends on its own settings only
    for m, sd in params.regime_runs:  # the regime chapter's runs: apart from models/, named regime_<arm>-s<seed>
        st, name = stages[f"train_regime@{m}-{sd}"], names.regime_run_name(m, sd)
        assert _paths(st["outs"]) == [_rel(layout.regime_model_dir(m, sd)), _rel(layout.notebook(f"02_train-{name}")),
                                      _rel(layout.metrics(f"train-{name}"))]
        assert _paths(st["plots"]) == [_rel(layout.plot_data(f"train-{name}"))]
        assert st["cmd"].endswith(f"--arm {m} --seed {sd} --regime")
        assert f"profiles.default.regime" in st["params"] and layout.regime_model_dir(m, sd).parent != layout.model_dir(m, sd).parent
    assert _paths(stages["regime"]["outs"]) == [_rel(layout.notebook("08_regime")), _rel(layout.per_image("regime_logits")),
                                                _rel(layout.metrics("regime"))]
    assert {_rel(layout.runs / "regime"), _rel(layout.metrics("report")), _rel(layout.per_image("logits"))} <= set(
        stages["regime"]["deps"])
    assert _rel(layout.metrics("corruptions")) in _paths(stages["corruptions"]["outs"])
    assert _rel(layout.per_image("corruptions")) in _paths(stages["corruptions"]["outs"])
    assert _rel(layout.per_image("logits")) in _paths(stages["calibration"]["outs"])
    for name in ("corruptions", "logits"):  # the report resamples them
        assert _rel(layout.per_image(name)) in stages["report"]["deps"]
    assert _rel(layout.plot_data("corruption_grid")) in stages["calibration"]["deps"]
    assert _rel(layout.metrics("linearity")) in _paths(stages["landscape"]["outs"])
    assert _rel(layout.metrics("report")) in _paths(stages["report"]["outs"])
    # the only metrics DVC shows: the report's tally of the claims (varmix.study.headline.tally); the headline per
    # arm and per comparison (one small file each) is an output beside it
    assert [n for n, st in stages.items() if st.get("metrics")] == ["report"]
    assert _paths(stages["report"]["metrics"]) == [_rel(layout.metrics("headline"))]
    assert _rel(layout.results / "metrics" / "summary") in _paths(stages["report"]["outs"])


def test_every_stage_runs_its_notebook_and_depends_on_it():
    ran = set()
    for name, st in _dvc_stages().items():
        if name in ("check", "site"):  # params and data (tests/test_faults_pin.py); HTML (tests/test_site.py)
            continue
        m = re.match(r"python -m varmix notebook (\S+) --profile default --dataset fashion-mnist", st["cmd"])
        assert m, f"stage {name}: {st['cmd']!r} does not run a notebook through varmix"
        nb = m[1]
        assert nb in runner.NOTEBOOKS
        assert f"notebooks/{nb}.ipynb" in st["deps"], f"stage {name} does not depend on its notebook"
        for dep in st["deps"]:
            if dep.startswith("varmix/"):
                assert (ROOT / dep).is_file(), f"stage {name} depends on a missing file {dep}"
        # every executed notebook and metrics file stays out of the DVC cache (committed to git)
        for entry in (st.get("outs") or []) + (st.get("metrics") or []) + (st.get("plots") or []):
            if isinstance(entry, dict):
                assert next(iter(entry.values()))["cache"] is False
        ran.add(nb)
    assert ran == set(runner.NOTEBOOKS)


def test_dvc_lock_records_the_committed_code_every_stage_depends_on():
    """dvc.lock's md5 of each library file a stage depends on is that file's: a change to the code without
    re-running the stages it feeds (or, when it changes no output, `dvc commit`) fails here, instead of
    leaving `dvc status` to call the study stale on the next machine that has the cache."""
    import hashlib

    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    lock = {name: st for name, st in lock.items() if name in _dvc_stages()}  # not entries of removed stages
    assert len(lock) == len(_dvc_stages())
    stale = sorted({(dep["path"], name) for name, st in lock.items() for dep in st.get("deps", [])
                    if dep["path"].startswith(("varmix/", "notebooks/", "code-records/")) and (ROOT / dep["path"]).is_file()
                    and hashlib.md5((ROOT / dep["path"]).read_bytes()).hexdigest() != dep["md5"]})
    assert not stale, f"dvc.lock records another version of {stale[0][0]} (stage {stale[0][1]}), {len(stale)} in all"


def test_stage_params_name_keys_that_exist():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, st in _dvc_stages().items():
        for key in st.get("params", []):
            node = params
            for part in key.split("."):
                assert part in node, f"stage {name}: params key {key} is not in params.yaml"
                node = node[part]


@pytest.mark.parametrize("name", runner.NOTEBOOKS)
def test_notebooks_are_thin_parameterised_drivers(name):
    book = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: expected one cell tagged parameters, found {len(tagged)}"
    defaults = {}
    exec(tagged[0].source, {}, defaults)
    assert defaults["profile"] == "smoke" and defaults["dataset"] == "fashion-mnist"
    code = "\n".join(c.source for c in book.cells if c.cell_type == "code")
    assert not re.search(r"^\s*(def|class) ", code, re.M), f"{name} defines functions: they belong in varmix/"
    assert "pipeline.start(profile, dataset)" in code
    assert book.cells[0].cell_type == "markdown" and book.cells[0].source.startswith("# ")
    # the stored outputs are nbval's reference: executed, without errors
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
    assert outputs and not [o for o in outputs if o.output_type == "error"]


def test_run_notebook_checks_arguments_before_any_kernel():
    with pytest.raises(ValueError, match="notebook '07_extra' is unknown: expected one of 01_vae"):
        runner.run_notebook("07_extra", "smoke")
    with pytest.raises(ValueError, match="arm and seed go together and only with 02_train"):
        runner.run_notebook("03_corruptions", "smoke", arm="erm", seed=0)
    with pytest.raises(ValueError, match="arm = 'bogus' is not in params.yaml's arms"):
        runner.run_notebook("02_train", "smoke", arm="bogus", seed=0)
    with pytest.raises(ValueError, match=r"seed = 77 is not among params.yaml's seeds for arm 'erm' \[0, 1, 2, 3, 4, 5\]"):
        runner.run_notebook("02_train", "smoke", arm="erm", seed=77)
    with pytest.raises(errors.ConfigError, match="profile"):
        runner.run_notebook("01_vae", "huge")
    with pytest.raises(ValueError, match="vae = 'adversarial' goes only with 01_vae .* \\(got it for 02_train\\)"):
        runner.run_notebook("02_train", "smoke", arm="erm", seed=0, vae="adversarial")
    with pytest.raises(ValueError, match="vae = 'robust' goes only with 01_vae and is one of plain, adversarial"):
        runner.run_notebook("01_vae", "smoke", vae="robust")
    with pytest.raises(ValueError, match=r"vae_seed = 9 is not among params.yaml's vae_seeds \[0, 1, 2\]"):
        runner.run_notebook("01_vae", "smoke", vae_seed=9)
    with pytest.raises(ValueError, match="vae_seed = 1 goes only with 01_vae's plain VAE"):
        runner.run_notebook("01_vae", "smoke", vae="adversarial", vae_seed=1)
    run = runner.prepare("01_vae", "smoke", vae_seed=2)
    assert run.out.name == "01_vae-s2.ipynb" and run.parameters["vae_seed"] == 2
    run = runner.prepare("02_train", "smoke", arm="varmixup", seed=1, regime=True)
    assert run.out.name == "02_train-regime_varmixup-s1.ipynb" and run.parameters["regime"] is True
    with pytest.raises(ValueError, match=r"arm = 'cutmix' is not in params.yaml's regime_arms"):
        runner.prepare("02_train", "smoke", arm="cutmix", seed=0, regime=True)
    with pytest.raises(ValueError, match=r"regime goes with 02_train and an arm and seed"):
        runner.prepare("08_regime", "smoke", regime=True)


def test_each_vae_kind_has_its_folder_metrics_and_stage(layout):
    assert layout.vae_folder("plain", 2) == layout.vaes / "s2" == layout.runs / "vae" / "s2"
    assert layout.vae_folder("adversarial") == layout.runs / "vae_adversarial"
    assert names.vae_name("plain", 0) == "vae/s0" and names.vae_name("adversarial") == "vae_adversarial"
    with pytest.raises(ValueError, match="vae kind = 'robust': expected one of plain, adversarial"):
        layout.vae_folder("robust")
    with pytest.raises(ValueError, match="vae seed = None is invalid"):
        layout.vae_folder("plain")
    stages = _dvc_stages()
    params = config.load_params(ROOT / "params.yaml")
    adv = stages["vae_adversarial"]
    # its FID/KID features are the first VAE seed's: it depends on that VAE's folder, not on the others
    first = _rel(layout.vae_folder("plain", params.vae_seeds[0]))
    assert adv["cmd"].endswith("--vae adversarial") and first in adv["deps"]
    assert _rel(layout.vae_folder("adversarial")) in _paths(adv["outs"])
    for name in ("train@varmixup-0", "train_rivals@adv_varmixup-0"):
        # a matrix cannot name one VAE seed's folder per seed (dvc.yaml's comment): every VAE's folder
        assert {_rel(layout.vaes), _rel(layout.vae_folder("adversarial"))} <= set(stages[name]["deps"])
        assert "vae_seeds" in stages[name]["params"]


def test_cli_reports_bad_notebook_arguments(capsys):
    from varmix.pipeline.cli import main

    assert main(["notebook", "01_vae", "--profile", "huge"]) == 2
    assert "error: params: profile = 'huge' is invalid" in capsys.readouterr().err


def test_clean_notebook_drops_timings_and_keeps_outputs(tmp_path):
    book = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 + 1")
    cell.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    cell.metadata["papermill"] = {"duration": 0.1, "status": "completed"}
    cell.metadata["execution"] = {"iopub.status.idle": "2026-01-01T00:00:00"}
    cell.metadata["tags"] = ["x"]
    injected = nbformat.v4.new_code_cell('profile = "default"')  # papermill gives it a random id per run
    injected.metadata["tags"] = ["injected-parameters"]
    book.cells = [cell, injected]
    book.metadata["papermill"] = {"duration": 3.0, "start_time": "t0", "end_time": "t1", "input_path": "a",
                                  "output_path": "/tmp/.x.ipynb", "parameters": {"profile": "smoke"}}
    path = tmp_path / "nb.ipynb"
    nbformat.write(book, path)
    runner.clean_notebook(path)
    out = nbformat.read(path, as_version=4)
    assert out.metadata["papermill"] == {"parameters": {"profile": "smoke"}}
    assert dict(out.cells[0].metadata) == {"tags": ["x"]}
    assert out.cells[0].outputs[0]["data"]["text/plain"] == "2"
    assert out.cells[1].id == "injected-parameters" and out.cells[0].id == cell.id


def test_clean_notebook_drops_the_kernels_temporary_folder_from_warnings(tmp_path):
    """A warning raised by a cell names the kernel's temporary file, whose folder holds the kernel's pid: two
    runs of the same notebook differed there (issue 29), and in the wall times a chapter prints (kept in
    timings/). The file name, a hash of the cell, stays."""
    def run_of(pid):
        book = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell("warn()")
        cell.id = "warns"
        cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text=(
            f"/tmp/ipykernel_{pid}/3066736907.py:18: RuntimeWarning: relative mCE: undefined\n"
            f"  x = f()\n/var/tmp/x y/ipykernel_{pid}/12.py:2: UserWarning: again\n"
            f"wall time PGD: {pid / 10} s\nwall time of a training notebook: 1.{pid} to 64.5 s over 53 runs\n"))]
        book.cells = [cell]
        path = tmp_path / f"{pid}.ipynb"
        nbformat.write(book, path)
        runner.clean_notebook(path)
        return path.read_bytes()

    first = run_of(2481)
    assert first == run_of(97)
    text = nbformat.reads(first.decode(), as_version=4).cells[0].outputs[0]["text"]
    assert text == ("<kernel>/3066736907.py:18: RuntimeWarning: relative mCE: undefined\n  x = f()\n"
                    "/var/tmp/x <kernel>/12.py:2: UserWarning: again\nwall time PGD: in timings/\n"
                    "wall time of a training notebook: in timings/ (53 runs)\n")


def test_nbvals_sanitizer_writes_what_the_notebook_cleaner_writes(tmp_path):
    """The cleaner's fixed lines and notebooks/sanitize.cfg's replacements are two copies of one rule (nbval
    compares a cleaned reference with a sanitized fresh run): the same varying text gives the same line."""
    import configparser

    text = ("/tmp/ipykernel_2481/3066736907.py:18: RuntimeWarning: x\nwall time PGD: 347.7 s\n"
            "wall time of a training notebook: 16.9 to 75.3 s over 53 runs\n")
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell("f()")]
    book.cells[0].outputs = [nbformat.v4.new_output("stream", name="stderr", text=text)]
    path = tmp_path / "nb.ipynb"
    nbformat.write(book, path)
    runner.clean_notebook(path)
    cleaned = nbformat.read(path, as_version=4).cells[0].outputs[0]["text"]
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "notebooks" / "sanitize.cfg")
    sanitized = text
    for section in cfg.sections():
        sanitized = re.sub(cfg[section]["regex"], cfg[section]["replace"], sanitized)
    assert sanitized == cleaned != text


def test_the_kernel_imports_the_varmix_that_runs_the_notebook(tmp_path, monkeypatch):
    # a queued experiment runs `python -m varmix` in a copy under .dvc/tmp/exps while PYTHONPATH (or the
    # editable install) names the main workspace: the kernel must import the copy's varmix, as the runner does
    decoy = tmp_path / "decoy"
    (decoy / "varmix").mkdir(parents=True)
    (decoy / "varmix" / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(decoy))
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell("import varmix\nprint(varmix.__file__)")]
    src, out = tmp_path / "nb" / "probe.ipynb", tmp_path / "out" / "probe.ipynb"
    src.parent.mkdir()
    nbformat.write(book, src)
    runner._execute(src, out, None)
    printed = nbformat.read(out, as_version=4).cells[0].outputs[0]["text"].strip()
    assert printed == str(Path(varmix.__file__).resolve())
    assert runner.kernel_env({"PYTHONPATH": "/a"})["PYTHONPATH"] == os.pathsep.join([str(ROOT), "/a"])


def test_the_kernel_keeps_no_input_history(tmp_path, monkeypatch):
    # a stage's kernel writes nothing outside the project: IPython's history database is off
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell("x = 1"),
                  nbformat.v4.new_code_cell("print(get_ipython().history_manager.enabled)")]
    src, out = tmp_path / "nb" / "probe.ipynb", tmp_path / "out" / "probe.ipynb"
    src.parent.mkdir()
    nbformat.write(book, src)
    runner._execute(src, out, None)
    assert nbformat.read(out, as_version=4).cells[1].outputs[0]["text"].strip() == "False"
    assert not list((tmp_path / "ipython").rglob("history.sqlite"))


@pytest.mark.filterwarnings("ignore:torch uses AVX512")  # this process chose its kernels long before
def test_session_writes_to_workdir_and_lists_runs(tmp_path, monkeypatch):
    monkeypatch.setenv(session.WORKDIR_ENV, str(tmp_path))
    s = session.start("smoke")
    assert s.layout.results == tmp_path / "results" / "fashion-mnist" / "smoke"
    assert s.runs() == list(s.params.runs) == [(a, sd) for a in s.params.arms for sd in s.params.seeds_of(a)]
    assert s.runs("cutmix", 0) == [("cutmix", 0)]
    assert s.runs("at") == [("at", 0), ("at", 1)] and s.params.seeds_of("erm") == (0, 1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"seed = 3 is not among params.yaml's seeds for arm 'at' \[0, 1\]"):
        s.runs("at", 3)
    path = s.save_metrics("x", {"erm-s0": {"acc": pd.Series([0.25]).iloc[0], "n": pd.Series([3]).iloc[0]}})
    saved = json.loads(path.read_text())
    assert saved == {"erm-s0": {"acc": 0.25, "n": 3}}  # the same results give the same bytes
    assert s.wall_times(["x", "missing"])["x"] >= 0 and s.wall_times(["missing"]) == {"missing": None}
    s.save_metrics("y", {"a": 1}, timings={"seconds": 2.5})
    timing = json.loads(s.layout.timings("y").read_text())
    assert timing["seconds"] == 2.5 and timing["wall_seconds"] >= 0
    assert s.load_metrics("x")["erm-s0"]["n"] == 3
    s.save_plot_data("p", pd.DataFrame({"a": [1, 2], "b": [0.5, 1 / 3]}))
    assert s.layout.plot_data("p").read_text() == "a,b\n1,0.5\n2,0.333333\n"
    assert not list(s.layout.plot_data("p").parent.glob(".*"))  # no temporary files left behind
    with pytest.raises(FileNotFoundError, match="metrics .*missing.json not found: run the stage"):
        s.load_metrics("missing")


def test_start_pins_the_avx2_cpu_kernels_in_a_fresh_process(tmp_path):
    # AVX-512 kernels round differently from AVX2 ones: start() must choose the kernels before torch does;
    # the smoke and default profiles (cpu_kernels: portable) also turn oneDNN off, the paper one (fast) keeps it
    code = ("import os, sys, torch\nfrom varmix import pipeline\ns = pipeline.start(sys.argv[1])\n"
            "torch.ones(3).sum()\n"
            "print(torch.backends.cpu.get_cpu_capability(), os.environ['MKL_CBWR'], torch.backends.mkldnn.enabled,"
            " torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),"
            " torch.is_deterministic_algorithms_warn_only_enabled(), 'torch._inductor' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in session.CPU_KERNELS}
    env[session.WORKDIR_ENV] = str(tmp_path)

    def run(profile):
        return subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code, profile], env=env,
                              cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()

    out = run("smoke")
    # portable kernels and the profile's thread count, whatever the machine's cores (bit-for-bit studies)
    # deterministic algorithms (warn only) without torch.use_deterministic_algorithms's import of
    # torch._inductor, 1.3-1.8 s of every stage's start (varmix never compiles)
    assert out[0] != "AVX512" and out[1:] == ["AVX2", "False", "2", "True", "True", "False"]
    assert run("default")[1:] == ["AVX2", "False", "2", "True", "True", "False"]
    assert run("paper")[1:3] == ["AVX2", "True"]  # fast kernels: oneDNN stays on
    env["MKL_CBWR"] = "COMPATIBLE"  # what the user sets stays
    assert run("smoke")[1] == "COMPATIBLE"


def test_start_warns_when_torch_already_chose_avx512_kernels(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    with pytest.warns(RuntimeWarning, match="torch uses AVX512 CPU kernels, not AVX2"):
        session._check_cpu_kernels("AVX512")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session._check_cpu_kernels("AVX2")
        session._check_cpu_kernels("DEFAULT")


def test_the_command_line_keeps_jsonschema_from_building_rfc3987_syntaxs_grammar():
    """`python -m varmix` (every stage's command) imports nbformat, hence jsonschema, which imports
    rfc3987_syntax when installed: 1.4 s of lark grammar building (python -X importtime) for a string format
    no notebook schema uses. The command line keeps it out; nbformat still validates notebooks."""
    code = ("import sys\nfrom varmix.pipeline import cli\ncli.skip_slow_optional_imports()\n"
            "import nbformat\nnb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('1')])\n"
            "nbformat.validate(nb)\nbad = nbformat.v4.new_notebook()\nbad.cells = [{'cell_type': 'code'}]\n"
            "try:\n    nbformat.validate(bad)\nexcept nbformat.ValidationError:\n    print('invalid found')\n"
            "print(sys.modules.get('rfc3987_syntax', 'absent'), 'lark' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["invalid", "found", "None", "False"]
