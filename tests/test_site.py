"""The results site (varmix/study/site.py, dvc.yaml's site stage) without a browser: built from a part of the
committed study, it is byte-reproducible, self-contained (no script, nothing from the network), shows
report.json's verdicts, and bad input stops it before anything is written. tests/test_site_browser.py
opens the whole site in chromium."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from varmix.core import config, io
from varmix.pipeline import session
from varmix.study import site
from varmix.pipeline.cli import main

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


def test_pages_load_nothing_from_the_network_and_run_no_script(small):
    _, built = small
    for page in sorted(built.glob("*.html")):
        parsed = parse(page)
        assert [a for t, a in parsed.tags if t == "script"] == [], page.name
        for tag, attrs in parsed.tags:
            for key in ("src", "href"):
                value = attrs.get(key) or ""
                assert not re.match(r"(https?:)?//", value), f"{page.name}: <{tag} {key}={value}> is not local"
        assert ("link", {"rel": "stylesheet", "href": site.STYLESHEET}) in parsed.tags, page.name


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
    shutil.copy(bad / "notebooks" / "01_vae.ipynb", bad / "notebooks" / "09_stale_report.ipynb")
    shutil.copy(bad / "notebooks" / "01_vae.ipynb", bad / "notebooks" / "09_other.ipynb")
    with pytest.raises(ValueError, match=r"holds two chapters numbered 09 \(09_other, 09_stale_report\): one is "
                                         r"left over from an older layout"):
        site.build_site(bad, out)
    for p in bad.glob("notebooks/09_*.ipynb"):
        p.unlink()
    (bad / "notebooks" / "Notes.ipynb").write_text("{}")
    with pytest.raises(ValueError, match=r"Notes.ipynb is not named like an executed notebook"):
        site.build_site(bad, out)
    (bad / "notebooks" / "Notes.ipynb").unlink()
    good = (bad / "notebooks" / "01_vae.ipynb").read_bytes()
    (bad / "notebooks" / "01_vae.ipynb").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"01_vae.ipynb is not a readable notebook \(.*\): run its stage again"):
        site.build_site(bad, out)
    (bad / "notebooks" / "01_vae.ipynb").write_bytes(good)
    (bad / "notebooks" / ".01_vae.ipynb.x1.tmp.ipynb").write_text("{}")  # a killed write's temporary: ignored
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
    assert main(["site", "--profile", "huge"]) == 2
    assert "profile" in capsys.readouterr().err


def test_the_site_stage_renders_the_report_stage_results():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    st = stages["site"]
    assert st["cmd"] == "python -m varmix site --profile ${profile} --dataset ${dataset}"
    results = "results/${dataset}/${profile}"
    assert f"{results}/notebooks" in st["deps"] and f"{results}/metrics" in st["deps"]  # report.json, train-*.json
    assert "varmix/study/site.py" in st["deps"] and "varmix/study/site_templates" in st["deps"]
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
    assert _files(site.build_site(RESULTS, tmp_path / "site")) == _files(committed)
