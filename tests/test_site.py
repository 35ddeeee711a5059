"""The results site (varmix/study/site.py, dvc.yaml's site stage) without a browser: built from a part of the
committed study, it is byte-reproducible, self-contained (no script, nothing from the network), shows
report.json's verdicts, and bad input stops it before anything is written. tests/test_site_browser.py
opens the whole site in chromium."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from varmix.core import config, io
from varmix.pipeline import deps, session
from varmix.pipeline.cli import main
from varmix.study import site
from varmix.study import site_search as search

ROOT = Path(__file__).resolve().parents[1]
PARAMS = config.load_params(ROOT / "params.yaml")
RESULTS = session.Layout(ROOT, PARAMS.dataset, PARAMS.profile).results


def small_results(dst: Path, runs_per_chapter: int = 2) -> Path:
    """A copy of the committed study's results/<dataset>/<profile>/ with every chapter's own notebook, the
    first ``runs_per_chapter`` runs of a chapter made of runs, and the metrics: a site in seconds."""
    src = RESULTS
    if not (src / "metrics" / "report.json").is_file():
        pytest.fail(f"{src} holds no committed study (metrics/report.json): run `dvc repro` and commit results/")
    out = dst / "results" / PARAMS.dataset / PARAMS.profile
    (out / "notebooks").mkdir(parents=True)
    taken: dict[str, int] = {}
    for page in site.notebook_pages(src / "notebooks"):
        if page.variant is None or taken.get(page.chapter, 0) < runs_per_chapter:
            taken[page.chapter] = taken.get(page.chapter, 0) + (page.variant is not None)
            shutil.copy2(page.path, out / "notebooks" / page.path.name)
    shutil.copytree(src / "metrics", out / "metrics")
    return out


class _Collect(HTMLParser):
    """Tags with their attributes, and the text of each [data-verdict-key] cell."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.verdicts: dict[str, str] = {}
        self._key = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if "data-verdict-key" in attrs:
            assert attrs["data-verdict-key"] not in self.verdicts, f"verdict {attrs['data-verdict-key']} shown twice"
            self._key = attrs["data-verdict-key"]
            self.verdicts[self._key] = ""

    def handle_endtag(self, tag):
        if tag == "td":
            self._key = None

    def handle_data(self, data):
        if self._key:
            self.verdicts[self._key] += data


def parse(path: Path) -> _Collect:
    p = _Collect()
    p.feed(path.read_text(encoding="utf-8"))
    return p


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    results = small_results(tmp_path_factory.mktemp("site"))
    return results, site.build_site(results)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_site_is_byte_reproducible_and_replaced_whole(small, tmp_path):
    results, built = small
    first = _files(built)
    assert built == results / "site"
    assert {"index.html", site.STYLESHEET, site.FIGURE} <= set(first)
    pages = site.notebook_pages(results / "notebooks")
    assert {f"{p.name}.html" for p in pages} <= set(first)
    again = site.build_site(results, tmp_path / "again")
    assert _files(again) == first  # byte for byte: no timestamp, no random id
    site.build_site(results)  # rebuilt in place: the same files, no temporary left beside
    assert _files(built) == first
    assert [p.name for p in built.parent.iterdir() if p.name.startswith(".")] == []


def test_a_failed_build_leaves_the_previous_site(small, monkeypatch):
    results, built = small
    before = _files(built)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(site, "_stylesheet", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        site.build_site(results)
    assert _files(built) == before
    assert [p.name for p in built.parent.iterdir() if p.name.startswith(".")] == []


def test_pages_load_nothing_from_the_network_and_run_only_the_local_search(small):
    """No page loads anything from the network; the only scripts are the site's own search index and script,
    local files (adapted: the site ran no script at all before the search)."""
    _, built = small
    for page in sorted(built.glob("*.html")):
        parsed = parse(page)
        assert [a.get("src") for t, a in parsed.tags if t == "script"] == [search.INDEX, search.SCRIPT], page.name
        for tag, attrs in parsed.tags:
            for key in ("src", "href"):
                value = attrs.get(key) or ""
                assert not re.match(r"(https?:)?//", value), f"{page.name}: <{tag} {key}={value}> is not local"
        assert ("link", {"rel": "stylesheet", "href": site.STYLESHEET}) in parsed.tags, page.name
    assert (built / search.SCRIPT).is_file() and (built / search.INDEX).read_text().startswith("window.VARMIX_SEARCH=")
    assert "fetch(" not in (built / search.SCRIPT).read_text()  # fetch() of a file fails from file://


def test_the_landing_page_shows_report_json_verdicts_figure_chapters_and_the_paper(small):
    results, built = small
    landing = parse(built / "index.html")
    verdicts = io.read_json(results / "metrics" / "report.json")["claims"]
    assert landing.verdicts == verdicts
    assert [a["src"] for t, a in landing.tags if t == "img"] == [site.FIGURE]
    assert (built / site.FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hrefs = {a.get("href") for t, a in landing.tags if t == "a"}
    chapters = {p.chapter for p in site.notebook_pages(results / "notebooks")}
    for chapter in chapters:
        assert f"{chapter}.html" in hrefs, chapter  # the chapter's page, or the index of its runs
    text = (built / "index.html").read_text(encoding="utf-8")
    assert "The paper&#39;s numbers beside ours" in text or "The paper's numbers beside ours" in text
    # the paper's CIFAR-10 corruption accuracy for varmixup (varmix/study/paper.py) beside ours
    assert "<td>82.57</td>" in text


def test_a_chapter_of_runs_gets_an_arm_by_seed_index(small):
    results, built = small
    runs = [p for p in site.notebook_pages(results / "notebooks") if p.chapter.startswith("02_train")]
    assert runs and all(p.variant for p in runs)
    index = (built / "02_train.html").read_text(encoding="utf-8")
    for p in runs:
        acc = io.read_json(results / "metrics" / f"train-{p.variant}.json")["test_acc"]
        assert f'<a href="{p.name}.html">{100 * acc:.1f}%</a>' in index


def test_bad_input_stops_before_anything_is_written(small, tmp_path):
    results, _ = small
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=r"nowhere/notebooks does not exist: run the pipeline first"):
        site.build_site(tmp_path / "nowhere", out)
    bad = tmp_path / "bad" / "fashion-mnist" / "default"
    shutil.copytree(results, bad)
    shutil.copy(bad / "notebooks" / "01_vae-s0.ipynb", bad / "notebooks" / "09_stale_report.ipynb")
    shutil.copy(bad / "notebooks" / "01_vae-s0.ipynb", bad / "notebooks" / "09_other.ipynb")
    with pytest.raises(ValueError, match=r"holds two chapters numbered 09 \(09_other, 09_stale_report\): one is "
                                         r"left over from an older layout"):
        site.build_site(bad, out)
    for p in bad.glob("notebooks/09_*.ipynb"):
        p.unlink()
    (bad / "notebooks" / "Notes.ipynb").write_text("{}")
    with pytest.raises(ValueError, match=r"Notes.ipynb is not named like an executed notebook"):
        site.build_site(bad, out)
    (bad / "notebooks" / "Notes.ipynb").unlink()
    good = (bad / "notebooks" / "01_vae-s0.ipynb").read_bytes()
    (bad / "notebooks" / "01_vae-s0.ipynb").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"01_vae-s0.ipynb is not a readable notebook \(.*\): run its stage again"):
        site.build_site(bad, out)
    (bad / "notebooks" / "01_vae-s0.ipynb").write_bytes(good)
    (bad / "notebooks" / ".01_vae-s0.ipynb.x1.tmp.ipynb").write_text("{}")  # a killed write's temporary: ignored
    (bad / "notebooks" / "03_x.failed.ipynb").write_text("{}")  # a failed run's traceback: ignored
    io.write_json(bad / "metrics" / "report.json", {"claims": {"1. corruptions": "holds"}})
    with pytest.raises(ValueError, match=r"claims \['1. corruptions'\] are not '<claim> \| <arm> vs <rival>'"):
        site.build_site(bad, out)
    (bad / "metrics" / "report.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"report.json does not exist: run the report stage first"):
        site.build_site(bad, out)
    assert not out.exists()


def test_the_command_line_builds_the_site_of_the_selected_study(small, tmp_path, monkeypatch, capsys):
    results, built = small
    monkeypatch.setenv(session.WORKDIR_ENV, str(results.parents[2]))
    assert main(["site", "--profile", PARAMS.profile, "--dataset", PARAMS.dataset, "--out", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 's'}/index.html\n"
    assert _files(tmp_path / "s") == _files(built)
    timing = results / "timings" / "site.json"
    assert not timing.exists()  # a site built elsewhere (--out) is not the stage: no wall recorded
    before = _files(built)
    assert main(["site", "--profile", PARAMS.profile, "--dataset", PARAMS.dataset]) == 0  # the stage's own site
    assert built == results / "site" and _files(built) == before
    # its build's wall, where the study profile reads a stage's own wall (the imports and checks are overhead)
    assert json.loads(timing.read_text())["wall_seconds"] >= 0 and not (results / "site" / "site.json").exists()
    assert main(["site", "--profile", "huge"]) == 2
    assert "profile" in capsys.readouterr().err


def test_the_site_stage_renders_the_report_stage_results():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    st = stages["site"]
    assert st["cmd"] == "python -m varmix site --profile ${profile} --dataset ${dataset}"
    results = "results/${dataset}/${profile}"
    assert f"{results}/notebooks" in st["deps"] and f"{results}/metrics" in st["deps"]  # report.json, train-*.json
    assert "varmix/study/site_templates" in st["deps"] and "code-records/site.md5" in st["deps"]
    assert "varmix/study/site.py" in deps.recorded_files(ROOT, "site")  # its code, through its code record
    assert st["outs"] == [{f"{results}/site": {"cache": False}}]
    assert list(stages)[-1] == "site"


def test_the_committed_site_is_what_the_committed_results_give(tmp_path):
    """Once `dvc repro site` has run (dvc.lock records the stage), the committed site must be exactly what
    the committed results build: a stale site (results regenerated, site not) fails here."""
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text(encoding="utf-8")).get("stages", {})
    if "site" not in lock:
        pytest.skip("dvc.lock records no site stage yet: `dvc repro site` builds the site, then commit it")
    committed = site.site_dir(RESULTS)
    assert committed.is_dir(), f"{committed} is not committed: run `dvc repro site` and commit it"
    built, kept = _files(site.build_site(RESULTS, tmp_path / "site")), _files(committed)
    stale = sorted(n for n in set(built) | set(kept) if built.get(n) != kept.get(n))
    assert not stale, (f"{len(stale)} file(s) of the committed site differ from what the committed results give, "
                       f"e.g. {stale[:5]}: run `dvc repro site` (or python -m varmix site) and commit it")


# ----------------------------------------------------------------------------------------------
# the pure parts: summaries, numbers, anchors, the search index, dvc.lock
def test_a_summary_ends_where_its_sentence_does():
    head = "# 4. Calibration\n\n"
    whole = "The claim: models are better calibrated (lower ECE). Every number comes from one file."
    assert site.summary_markdown(head + whole + "\n\nMore.") == whole
    # leads into a list: cut at the last full sentence, not at the colon
    assert site.summary_markdown(head + "The claim holds. Every number is recomputed from the logits (read back "
                                        "without training):\n\n- ECE\n- NLL") == "The claim holds."
    # no full sentence before the list: the paragraph and its list, not the paragraph after
    assert site.summary_markdown(head + "The report gives:\n\n- a difference;\n- a verdict.\n\nAfter.") == \
        "The report gives:\n\n- a difference;\n- a verdict."
    # an abbreviation is not a sentence's end; a closing bracket or emphasis after the stop is kept
    assert site.summary_markdown("Models differ, e.g. Mixup (the paper's control.) It leads into:") == \
        "Models differ, e.g. Mixup (the paper's control.)"
    assert site.summary_markdown("# only a heading") == ""


def test_numbers_keep_three_significant_figures_where_two_decimals_lose_them():
    # an ECE difference: not "+0.01 [+0.00, +0.01]"
    assert site.fmt_interval(0.0057912, 0.00193, 0.00966) == ("+0.00579", "+0.00193", "+0.00966")
    # points: two decimals already keep three figures
    assert site.fmt_interval(-0.0293467, -0.0408968, -0.0177965, 100) == ("-2.93", "-4.09", "-1.78")
    assert site.fmt_interval(-0.1082, -0.1372, -0.0791, 100) == ("-10.82", "-13.72", "-7.91")
    # a difference of ~0 beside a wide interval: one decimal beyond the interval's three figures
    assert site.fmt_interval(0.00001, -0.05, 0.05) == ("+0.00001", "-0.05000", "+0.05000")
    assert site.fmt_interval(None, float("nan")) == ("–", "–", "–")
    assert site.fmt_interval(0.0123, sign=False)[0] == "0.0123"
    assert site.fmt_p(0.0404585967) == "0.0405" and site.fmt_p(None) == "–"


def test_comparison_rows_carry_the_hover_text_and_the_row_anchor():
    meta = {"2. calibration": {"label": "clean ECE", "unit": "", "scale": 1.0}}
    c = {"claim": "2. calibration", "arm": "varmixup", "rival": "mixup_half", "n_seeds": 5, "diff": 0.0057912,
         "t_lo": 0.00193, "t_hi": 0.00966, "t_p_holm": 0.169, "boot_lo": 0.0004, "boot_hi": 0.0114,
         "boot_p_holm": 0.324, "verdict": "inconclusive", "reason": ""}
    (row,) = site.comparison_rows([c], meta, "cmp")
    assert row["id"] == "cmp-2-calibration-varmixup-vs-mixup-half"
    assert row["key"] == "2. calibration | varmixup vs mixup_half"
    assert row["difference"] == "+0.00579" and row["t_ci"] == "[+0.00193, +0.00966]"
    assert row["boot_ci"] == "[+0.00040, +0.01140]" and row["mde"] == ""
    assert "difference +0.00579" in row["title"] and "t 95% CI [+0.00193, +0.00966]" in row["title"]
    assert row["title"].endswith(": inconclusive")
    (with_mde,) = site.comparison_rows([{**c, "mde": 0.004}], meta, "cmp")  # report.json may gain an MDE
    assert with_mde["mde"] == "0.00400" and "MDE 0.00400" in with_mde["title"]
    (untested,) = site.comparison_rows([{**c, "verdict": "not tested", "reason": "one seed"}], meta, "cmp")
    assert untested["difference"] == "–" and untested["verdict"] == "not tested (one seed)"


def test_the_search_index_holds_each_section_once():
    page = ('<html><body><main><h1 id="top">Title<a class="anchor-link" href="#top">¶</a></h1><p>Intro &amp; '
            'more</p><h2 id="Attacks">Attacks</h2><p>AutoAttack at 8/255</p><script>x()</script></main></body></html>')
    entries = search.build_index([{"href": "a.html", "title": "A", "html": page},
                                  {"href": "b.html", "title": "A", "html": page}])  # the same text twice: once
    assert entries == [{"u": "a.html#top", "t": "A › Title", "x": "Intro & more"},
                       {"u": "a.html#Attacks", "t": "A › Attacks", "x": "AutoAttack at 8/255"}]
    assert search.search(entries, "autoattack") == [entries[1]] and search.search(entries, "  ") == []
    script = search.index_script([{"u": "a.html", "t": "</script>", "x": "γ"}])
    assert script == 'window.VARMIX_SEARCH=[{"t":"<\\/script>","u":"a.html","x":"γ"}];\n'
    assert [h["text"] for h in search.headings(page)] == ["Title", "Attacks"]


def test_the_stages_come_from_dvc_lock(tmp_path):
    results = tmp_path / "results" / "ds" / "prof"
    (results / "metrics").mkdir(parents=True)
    (results / "metrics" / "r.json").write_text("{}")
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"report": {"outs": [
        {"path": "results/ds/prof/metrics/r.json", "md5": "x"},
        {"path": "results/ds/prof/notebooks/07_report.ipynb", "md5": "y"},
        {"path": "runs/ds/prof/model", "md5": "z"}]}}}))
    stages = site.read_stages(tmp_path / "dvc.lock", results)
    assert set(stages) == {"metrics/r.json", "notebooks/07_report.ipynb"}
    assert stages["notebooks/07_report.ipynb"]["stage"] == "report"
    assert site._data_files(results, stages["metrics/r.json"]["outs"]) == ["metrics/r.json"]
    assert site.read_stages(tmp_path / "none.lock", results) == {}


def test_verdicts_link_to_their_rows_and_pages_carry_a_sidebar_code_toggle_and_provenance(small):
    results, built = small
    report_json = io.read_json(results / "metrics" / "report.json")
    landing = (built / "index.html").read_text(encoding="utf-8")
    report_page = next(p for p in site.notebook_pages(results / "notebooks") if p.chapter.endswith("_report"))
    text = (built / report_page.href).read_text(encoding="utf-8")
    for c in report_json["comparisons"]:
        anchor = site.anchor_id("cmp", c["claim"], c["arm"], c["rival"])
        assert f'<a href="{report_page.href}#{anchor}">{c["verdict"]}</a>' in landing
        assert f'<tr id="{anchor}">' in text and f'<a href="#{anchor}">{c["verdict"]}</a>' in text
    # one verdict table: the same markup (classes, column order) on the index and in the report
    grid = re.search(r'<table class="verdicts">.*?</table>', landing, re.S)[0]
    assert grid.replace(f'href="{report_page.href}#', 'href="#') in text
    assert 'class="site-layout has-toc"' in landing and 'class="site-layout has-toc"' in text
    assert re.search(r'<input [^>]*id="site-show-code"', text)  # nbconvert orders the attributes itself
    assert "site-show-code" not in landing
    # the footer names the notebook and its md5 (and, where the project's dvc.lock records it, the stage and
    # `dvc repro <stage>`: tests/test_site_browser.py checks that on the committed study)
    md5 = hashlib.md5((results / "notebooks" / f"{report_page.name}.ipynb").read_bytes()).hexdigest()
    assert re.search(rf"<footer.*md5 <code>{md5}</code>", text, re.S)
    assert '<a href="data/metrics/report.json" download>metrics/report.json</a>' in landing
    assert (built / "data" / "metrics" / "report.json").read_bytes() == (results / "metrics" / "report.json").read_bytes()
    assert "break-all" not in (built / site.STYLESHEET).read_text().split("/* navigation, landing page")[-1]
