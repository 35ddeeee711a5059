"""benchmarks/study_profile.py: the table adds up (walls + overhead = the study, shares = 100%), counts the
stages dvc.yaml expands to, and counts the study's FLOPs as FlopCounterMode does (no peak measured: --peak)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _study_seconds(table: str) -> float:
    """A profile table's measured `dvc repro` wall (its 'the study' row)."""
    return float(re.search(r"\*\*the study\*\* \(dvc repro\) \| ([\d,.]+) \|", table).group(1).replace(",", ""))


# the study's measured `dvc repro` wall, as the committed profile table (and README, docs/pipeline.md) state it
STUDY = _study_seconds((BENCH / "results" / "study-profile-cpu-amd-epyc-avx512-2threads.md").read_text(encoding="utf-8"))


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study_profile():
    return _load("study_profile")


@pytest.fixture(scope="module")
def params():
    from varmix.core import config

    return config.load_params(ROOT / "params.yaml", {"profile": "default"})


@pytest.fixture(scope="module")
def table(study_profile, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "profile.md"
    assert study_profile.main(["--peak", "100", "--study-seconds", str(STUDY), "--out", str(out)]) == 0
    return out.read_text()


def _rows(text: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| stage")]
    return {r[0]: r for r in rows}


def _num(cell: str) -> float | None:
    return None if cell == "—" else float(cell.split()[0].rstrip("%").replace(",", ""))


def test_walls_and_overhead_add_up_to_the_study(study_profile, params, table):
    rows = _rows(table)
    stages = study_profile.locked_stages()
    walls = [_num(rows[s][1]) for s in stages]
    overhead = next(r for name, r in rows.items() if name.startswith("**overhead**"))
    assert sum(w for w in walls if w is not None) + _num(overhead[1]) == pytest.approx(STUDY, abs=0.05)
    per_stage = float(re.search(r"([\d.,]+) s per stage × (\d+) stages", overhead[0])[1])
    assert per_stage == pytest.approx(_num(overhead[1]) / len(stages), abs=0.05)
    # shares: the stages' and the overhead's make the whole study (each rounded to 0.1%)
    shares = [_num(rows[s][2]) for s in stages if _num(rows[s][2]) is not None] + [_num(overhead[2])]
    assert sum(shares) == pytest.approx(100.0, abs=0.05 * len(shares))
    train = sum(w for s, w in zip(stages, walls) if s.startswith(("train@", "train_rivals@")))
    assert rows["**02_train all**"][1] == f"{train:,.1f}"


def test_stage_count_is_dvc_yamls_expanded_matrix(study_profile, params, table):
    import yaml

    plain = [n for n, st in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items() if "matrix" not in st]
    # train: arms x seeds, train_rivals: rival_arms x rival_seeds, vae: one per VAE seed, train_regime: regime_arms x
    # regime_seeds
    expected = len(plain) + len(params.runs) + len(params.vae_seeds) + len(params.regime_runs)
    assert len(study_profile.expanded_stages()) == expected
    assert len(study_profile.locked_stages()) == expected  # dvc.lock records every one (its stale ones not counted)
    assert f"× {expected} stages" in table


def test_small_cnn_forward_flops_are_flop_counter_modes(study_profile, params):
    from varmix.learn.models import build_model

    counted = study_profile.per_image_flops(params)
    torch.manual_seed(1)
    model = build_model(params.train.arch, 1, 10, 28, [0.5], [0.25])
    x = torch.rand(4, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert counted["fwd"] == counter.get_total_flops() / 4
    assert counted["train"] > 2 * counted["fwd"] and counted["attack"] == pytest.approx(2 * counted["fwd"], rel=0.1)


def test_bad_values_are_refused_by_name(study_profile, capsys):
    with pytest.raises(SystemExit):
        study_profile.main(["--peak", "0"])
    assert "--peak 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # less than the stages' own walls
        study_profile.main(["--peak", "100", "--study-seconds", "100"])
    assert "--study-seconds 100" in capsys.readouterr().err


def test_results_file_is_named_like_the_others(study_profile):
    path = study_profile.results_path("AMD EPYC 7B13 64-Core Processor", False, 2)
    assert path.name == "study-profile-cpu-amd-epyc-7b13-avx2-2threads.md"
    assert study_profile.results_path("AMD EPYC", True, 2).name == "study-profile-cpu-amd-epyc-avx512-2threads.md"


def test_docs_before_and_after_rows_are_their_profile_tables():
    """docs/benchmarks.md's table of the two full runs (before and after the last overhead cuts) copies each
    linked profile table: the study's wall, the stages' own walls (the study less the overhead line), the
    overhead per stage, and that with the site's build (the site row's wall, untimed before) counted in it."""
    docs = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (?:before|after) \(\[profile\]\(\.\./(benchmarks/results/study-profile-[^)]+\.md)\)\) \| "
                      r"([\d,]+) s \| ([\d,]+) s \| ([\d.]+) s \| ([\d.]+) s \|$", docs, re.M)
    assert len(rows) == 2, "docs/benchmarks.md has no before/after table of the full runs"
    for link, study, own, per, with_site in rows:
        table = (ROOT / link).read_text(encoding="utf-8")
        seconds = _study_seconds(table)
        m = re.search(r"\*\*overhead\*\* \(dvc repro wall − the stages' walls; ([\d.]+) s per stage × (\d+) stages\) "
                      r"\| ([\d,.]+) \|", table)
        site = re.search(r"^\| site \| ([\d,.]+|—) \|", table, re.M).group(1)
        total, n = float(m.group(3).replace(",", "")), int(m.group(2))
        site_wall = 0.0 if site == "—" else float(site)
        assert (study, own, per, with_site) == (f"{seconds:,.0f}", f"{seconds - total:,.0f}", m.group(1),
                                                f"{(total + site_wall) / n:.1f}"), link


def test_docs_shares_of_the_peak_are_the_profile_tables():
    """The shares of the peak docs/benchmarks.md weighs against the issue's bar are the committed profile
    table's chapter rows (03 corruptions; 02_train all and 08 regime training; the two 01_vae rows)."""
    docs = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    table = (BENCH / "results" / "study-profile-cpu-amd-epyc-avx512-2threads.md").read_text(encoding="utf-8")

    def share(chapter: str) -> float:
        return float(re.search(rf"^\| \*\*{re.escape(chapter)}\*\* \|.*\| ([\d.]+)% \|$", table, re.M).group(1))

    m = re.search(r"the corruption chapter runs at ([\d.]+)% of the peak", docs)
    assert m and float(m.group(1)) == share("03 corruptions")
    m = re.search(r"the training chapters run at (\d+)-(\d+)% of the peak", docs)
    assert m and sorted(int(v) for v in m.groups()) == sorted(
        round(share(c)) for c in ("02_train all", "08 regime training"))
    m = re.search(r"the VAEs: (\d+)% \(plain\) and (\d+)% \(adversarial\) of the peak", docs)
    assert m and [int(v) for v in m.groups()] == [round(share("01_vae plain")), round(share("01_vae adversarial"))]
