"""The README and docs/: the generated results block matches the committed study, the README stays short
and opens with its two commands, every relative link resolves, and no hand-typed difference-with-interval
lives outside the generated block (varmix.study.readme, `python -m varmix readme`)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from varmix.core.io import read_json
from varmix.study import readme

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REPORT = ROOT / "results" / "fashion-mnist" / "default" / "metrics" / "report.json"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
# a signed decimal followed by an interval, e.g. "-2.93 pt [" or "+0.0942 [": a difference with its CI
TYPED_DIFFERENCE = re.compile(r"[+-]\d+\.\d+( pt| points)? \[")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _report() -> dict:
    return read_json(REPORT)


def test_readme_block_is_generated_from_committed_report():
    """Fails when report.json or the README's block changes without the other: run `python -m varmix readme`."""
    assert readme.block_of(README.read_text(encoding="utf-8")) == readme.results_block(_report()), (
        "README.md's results block differs from report.json's: run `python -m varmix readme`")


def test_block_states_each_verdict_of_the_report():
    report = _report()
    block = readme.results_block(report)
    for row in report["comparisons"]:
        k = 100 if "accuracy" in row["metric"] else 1
        cell = f"{row['diff'] * k:+.3g}"
        assert cell in block and f"**{row['verdict']}**" in block
    counts = {v: sum(r["verdict"] == v for r in report["comparisons"]) for v in readme.VERDICTS}
    for verdict, n in counts.items():
        if n:
            assert f"**{verdict.capitalize()}** (" in block and f"; {n} of {len(report['comparisons'])})" in block


def test_block_says_how_many_inconclusive_intervals_exclude_zero():
    """The table prints each comparison's own t interval beside the family's Holm verdict: the block says so
    and counts the inconclusive rows whose interval excludes 0 (the ones a reader would misread)."""
    base = dict(_report()["comparisons"][0], verdict="inconclusive")
    rows = [dict(base, rival="a", t_lo=0.01, t_hi=0.02), dict(base, rival="b", t_lo=-0.03, t_hi=-0.01),
            dict(base, rival="c", t_lo=-0.01, t_hi=0.02), dict(base, rival="d", t_lo=0.01, t_hi=0.02, verdict="holds")]
    block = readme.results_block({"comparisons": rows})
    assert "not adjusted for the family" in block and "(2 of the 4 tested here)" in block
    block = readme.results_block({"comparisons": rows[2:]})
    assert "(0 of the 2 tested here)" in block


def test_scale_matches_the_report_claims():
    """The block's rule (accuracies in points) is the report's own scale for every claim it decides."""
    from varmix.study import report as study_report

    for claim in [*study_report.study_claims(), *study_report.secondary_claims()]:
        assert readme._scale(claim.metric)[0] == claim.scale, claim.metric


def test_results_block_errors_name_what_is_missing():
    with pytest.raises(ValueError, match="comparisons"):
        readme.results_block({"claims": {}})
    with pytest.raises(ValueError, match=r"lacks the fields \['t_lo'"):
        row = dict(_report()["comparisons"][0])
        del row["t_lo"]
        readme.results_block({"comparisons": [row]})
    with pytest.raises(ValueError, match="'maybe'"):
        readme.results_block({"comparisons": [dict(_report()["comparisons"][0], verdict="maybe")]})


def test_not_tested_pair_is_shown_with_its_reason():
    row = dict(_report()["comparisons"][0], verdict="not tested", reason="1 seed", diff=None, t_lo=None, t_hi=None)
    block = readme.results_block({"comparisons": [row]})
    assert "not tested (1 seed)" in block and "**Not tested**" in block


def test_replace_block_round_trips_and_keeps_the_rest():
    text = f"intro\n{readme.BEGIN}\nold\n{readme.END}\noutro\n"
    new = readme.replace_block(text, "new line\n")
    assert new == f"intro\n{readme.BEGIN}\nnew line\n{readme.END}\noutro\n"
    assert readme.block_of(new) == "new line\n"
    assert readme.replace_block(new, "new line\n") == new
    assert readme.replace_block(readme.replace_block(text, "a\n"), "old\n") == text


@pytest.mark.parametrize("text, what", [
    ("no markers at all\n", "found it 0 times"),
    (f"{readme.BEGIN}\nx\n", "found it 0 times"),
    (f"x\n{readme.END}\n", "found it 0 times"),
    (f"{readme.BEGIN}\n{readme.END}\n{readme.BEGIN}\n{readme.END}\n", "found it 2 times"),
    (f"{readme.END}\nx\n{readme.BEGIN}\n", "comes before"),
])
def test_replace_block_refuses_bad_markers(text, what):
    with pytest.raises(ValueError, match=what):
        readme.replace_block(text, "block\n")


def test_rewrite_is_atomic_and_idempotent(tmp_path):
    page = tmp_path / "README.md"
    page.write_text(f"# t\n{readme.BEGIN}\n{readme.END}\n", encoding="utf-8")
    assert readme.rewrite(page, REPORT) is True
    assert readme.block_of(page.read_text(encoding="utf-8")) == readme.results_block(_report())
    assert readme.rewrite(page, REPORT) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # no temporary left behind
    with pytest.raises(FileNotFoundError, match="dvc repro report"):
        readme.rewrite(page, tmp_path / "missing.json")
    page.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"README\.md: expected the marker"):
        readme.rewrite(page, REPORT)
    assert page.read_text(encoding="utf-8") == "no markers\n"


def test_cli_leaves_committed_readme_unchanged_and_imports_no_torch(tmp_path):
    """`python -m varmix readme` on (a copy of) the committed study finds nothing to change, without torch
    or pandas."""
    for rel in ("README.md", "params.yaml", REPORT.relative_to(ROOT)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, tmp_path / rel)
    code = ("import sys; from varmix.pipeline import cli; rc = cli.main(['readme']); "
            "bad = [m for m in ('torch', 'pandas') if m in sys.modules]; "
            "print('imported', bad); sys.exit(rc or bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "unchanged" in out.stdout and "imported []" in out.stdout
    assert (tmp_path / "README.md").read_bytes() == README.read_bytes()


def test_readme_is_short_and_opens_with_its_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines; the manual belongs in docs/"
    head = "\n".join(lines[:15])
    assert "make repro" in head and "make test" in head


def _links(page: Path) -> list[str]:
    text = _CODE.sub("", _FENCE.sub("", page.read_text(encoding="utf-8")))
    return [t for t in _LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # relative only


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve_to_files(page):
    bad = []
    for target in _links(page):
        if "#" in target:
            bad.append(f"{target} (an anchor: sections move, link the file)")
        elif not (page.parent / target).exists():
            bad.append(f"{target} (no such file)")
    assert not bad, f"{page.relative_to(ROOT)}: {bad}"


def test_every_docs_page_is_linked_from_readme_or_docs():
    linked = {(p.parent / t).resolve() for p in PAGES for t in _links(p) if "#" not in t}
    orphans = [d.name for d in DOCS if d.resolve() not in linked]
    assert not orphans, f"docs pages no README or docs page links to: {orphans}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_typed_difference_with_interval_outside_the_block(page):
    text = page.read_text(encoding="utf-8")
    if readme.BEGIN in text:
        text = readme.replace_block(text, "")
    bad = [line for line in text.splitlines() if TYPED_DIFFERENCE.search(line)]
    assert not bad, f"{page.relative_to(ROOT)} types result differences by hand: {bad[:3]}"


def test_no_project_history_in_readme_or_new_docs():
    pages = [README] + [ROOT / "docs" / n for n in ("pipeline.md", "results.md", "reproducibility.md",
                                                  "benchmarks.md", "gpu-and-scale-out.md",
                                                  "notebooks-and-site.md")]
    for page in pages:
        hits = re.findall(r"\b[Ii]ssue \d+", page.read_text(encoding="utf-8"))
        assert not hits, f"{page.relative_to(ROOT)} records project history: {hits}"


def _profile_table(link: str) -> str:
    return (ROOT / "docs" / link if link.startswith("..") else ROOT / link).read_text(encoding="utf-8")


def _study_seconds(table: str) -> float:
    m = re.search(r"\*\*the study\*\* \(dvc repro\) \| ([\d,.]+) \|", table)
    assert m, "a study profile table without its 'the study (dvc repro)' row"
    return float(m.group(1).replace(",", ""))


def test_the_readme_states_the_study_time_before_with_its_profile_table():
    """The README gives the study's time before and after the last overhead cuts, each from a full `dvc repro`
    whose committed profile table holds it: the time before is the linked table's study row, not typed."""
    before = re.findall(r"([\d.]+) min \(([\d,]+) s; \[[^\]]+\]\((benchmarks/results/study-profile-[^)]+\.md)\)\)",
                        README.read_text(encoding="utf-8"))
    assert before, "README.md states no earlier study time as 'M min (S s; [..](benchmarks/results/study-profile-*.md))'"
    for minutes, secs, link in before:
        seconds = _study_seconds(_profile_table(link))
        assert (minutes, int(secs.replace(",", ""))) == (f"{seconds / 60:.1f}", round(seconds)), (
            f"README.md states {minutes} min ({secs} s) for {link}, whose study row says {seconds:g} s")


def test_stated_regime_share_is_the_profiled_one():
    """The regime chapter's share of the study that the README and docs/pipeline.md state is the committed
    profile table's ("08 regime training" over the study's wall), rounded to a whole percent."""
    pipeline_md = (ROOT / "docs" / "pipeline.md").read_text(encoding="utf-8")
    link = re.findall(r"\((\.\./benchmarks/results/study-profile-[^)\s]+\.md)\)", pipeline_md)[0]
    table = _profile_table(link)
    m = re.search(r"\*\*08 regime training\*\* \| ([\d,.]+) \|", table)
    assert m, f"{link} has no '08 regime training' row"
    share = 100 * float(m.group(1).replace(",", "")) / _study_seconds(table)  # the walls, not the rounded share
    for page in (README, ROOT / "docs" / "pipeline.md"):
        stated = re.findall(r"(\d+)% of it", page.read_text(encoding="utf-8"))
        assert stated, f"{page.name} states no share of the study as 'N% of it'"
        assert set(stated) == {f"{share:.0f}"}, f"{page.name} states {stated}% of the study; the table gives {share:.2f}%"


def test_stated_study_time_is_the_profiled_one():
    """The study's `dvc repro` time the README and docs/pipeline.md state is the one the committed profile
    table (benchmarks/study_profile.py --study-seconds, linked from docs/pipeline.md) was made with."""
    pipeline_md = (ROOT / "docs" / "pipeline.md").read_text(encoding="utf-8")
    linked = re.findall(r"\((\.\./benchmarks/results/study-profile-[^)\s]+\.md)\)", pipeline_md)
    assert linked, "docs/pipeline.md links no study profile table (benchmarks/results/study-profile-*.md)"
    seconds = _study_seconds(_profile_table(linked[0]))
    for page in (README, ROOT / "docs" / "pipeline.md"):
        stated = re.findall(r"\*\*([\d.]+) min\*\* \(([\d,]+) s\)", page.read_text(encoding="utf-8"))
        assert stated, f"{page.name} states no study time as '**M min** (S s)'"
        for minutes, secs in stated:
            assert (minutes, int(secs.replace(",", ""))) == (f"{seconds / 60:.1f}", round(seconds)), (
                f"{page.name} states {minutes} min ({secs} s); the profile table says {seconds:g} s")
