"""The results site and JupyterLab in a real browser: Playwright drives Debian's chromium (`make browser`
installs it with apt; Playwright's own browser download is never used). Skipped, with the reason, only when
chromium is not installed.

- The site, built from the committed study (varmix/study/site.py), opened from disk (file://): every page loads
  without a console or page error and with the site's stylesheet, every image decodes to a non-zero size,
  every internal link reaches an existing page and anchor, and the landing page shows report.json's verdicts,
  one per claim and pair. ``test_the_checks_catch_a_broken_page`` shows the checks fail on a broken page.
- JupyterLab, started on a free port on a temporary copy of one smoke notebook (02_train for the ERM run of
  seed 0, the quickest: a second of training on the smoke profile), runs it through the UI's Run menu and
  sees its last output, the learning curves, and the run's numbers, which must equal nbval's reference.
  The notebook's kernel session is started through the server's REST API before the page opens the
  notebook by its URL, so the page attaches to that kernel instead of starting its own (left to itself,
  JupyterLab 4.6.6 sometimes started two and ran the cells on the one it shut down), and Run All is clicked
  only once the page's notebook is attached to it, connected and idle (clicked earlier, JupyterLab asked to
  select a kernel and ran nothing); the test checks that this kernel is the only one the server ran. It passed
  5 runs in 5 in a row in 50-71 s each (pytest's time; 65-94 s for the whole command) on the shared, busy
  2-core AMD EPYC (load average ~6); without the REST session it passed 1 in 3, and with it but waiting on
  the toolbar's idle indicator instead, 0 in 2 (the select-kernel dialog).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest
from markupsafe import escape

from varmix.core import config, io
from varmix.pipeline import runner, session
from varmix.study import site

ROOT = Path(__file__).resolve().parents[1]
PARAMS = config.load_params(ROOT / "params.yaml")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (`make browser`, i.e. apt-get install chromium): the browser "
                "tests of the results site and of JupyterLab cannot run", allow_module_level=True)

from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402  (after the skip: only with a browser to drive)
from playwright.sync_api import sync_playwright


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


# ----------------------------------------------------------------------------------------------
# the results site
def check_site(browser, folder: Path) -> tuple[list[str], dict[str, list]]:
    """Open every page of the site in ``folder`` from disk; return the problems found (console and page
    errors, failed requests, images that did not decode, a stylesheet that did not apply, links to a missing
    file or anchor) and, per page, its [data-verdict-key] cells as (key, text, visible)."""
    problems: list[str] = []
    verdicts: dict[str, list] = {}
    anchors: dict[str, set[str]] = {}
    links: list[tuple[str, str]] = []
    page = browser.new_page()
    current = {"name": ""}
    page.on("console", lambda m: m.type == "error" and problems.append(f"{current['name']}: console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"{current['name']}: page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"{current['name']}: request failed: {r.url[:100]}"))
    for path in sorted(folder.glob("*.html")):
        current["name"] = path.name
        page.goto(path.as_uri(), wait_until="load")
        images = page.evaluate("""() => Array.from(document.images).map(i =>
            [i.getAttribute('src').slice(0, 40), i.complete, i.naturalWidth, i.naturalHeight])""")
        for src, complete, w, h in images:
            if not (complete and w > 0 and h > 0):
                problems.append(f"{path.name}: image {src}... did not decode ({w}x{h})")
        styled = page.evaluate("() => getComputedStyle(document.body).getPropertyValue('--jp-ui-font-family')")
        if not styled.strip():
            problems.append(f"{path.name}: the stylesheet {site.STYLESHEET} did not apply")
        anchors[path.name] = set(page.evaluate("() => Array.from(document.querySelectorAll('[id]')).map(e => e.id)"))
        links += [(path.name, h) for h in page.evaluate(
            "() => Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))")]
        verdicts[path.name] = page.evaluate("""() => Array.from(document.querySelectorAll('[data-verdict-key]'))
            .map(e => [e.dataset.verdictKey, e.innerText.trim(), e.offsetWidth > 0 && e.offsetHeight > 0])""")
    page.close()
    for name, href in links:
        parts = urlsplit(href)
        if parts.scheme or parts.netloc:
            continue  # not internal
        target = unquote(parts.path) or name
        if not (folder / target).is_file():
            problems.append(f"{name}: link {href} reaches no file")
        elif parts.fragment and not {parts.fragment, unquote(parts.fragment)} & anchors.get(target, set()):
            # as a browser looks the fragment up: as written, then percent-decoded (nbconvert writes a heading
            # γ(ε) as id="%CE%B3(%CE%B5)")
            problems.append(f"{name}: link {href} reaches no anchor")
    return problems, verdicts


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The whole site of the committed study, built into a temporary folder."""
    results = session.Layout(ROOT, PARAMS.dataset, PARAMS.profile).results
    if not (results / "metrics" / "report.json").is_file():
        pytest.fail(f"{results} holds no committed study (metrics/report.json): run `dvc repro` and commit results/")
    return results, site.build_site(results, tmp_path_factory.mktemp("site") / "site")


def test_every_page_of_the_site_loads_cleanly_from_disk(browser, built):
    results, folder = built
    problems, verdicts = check_site(browser, folder)
    assert problems == []
    pages = site.notebook_pages(results / "notebooks")
    assert {f"{p.name}.html" for p in pages} <= set(verdicts)
    # the landing page: one verdict per claim and pair, each shown, equal to report.json's
    shown = verdicts["index.html"]
    claims = io.read_json(results / "metrics" / "report.json")["claims"]
    assert len(shown) == len({k for k, _, _ in shown}) == len(claims)
    assert {k: v for k, v, _ in shown} == claims
    assert all(visible for _, _, visible in shown)
    # the report page shows the same verdict table (the site's rendering of report.json, as on the index)
    assert {k: v for k, v, _ in verdicts[_report_href(results)]} == claims


def test_the_checks_catch_a_broken_page(browser, built, tmp_path):
    """The checks above fail when the property breaks: a broken image, a link to a missing page and to a
    missing anchor, a script error, a missing stylesheet and a wrong verdict are each reported (the landing
    page's links to the chapters, left out here, are reported too)."""
    _, folder = built
    broken = tmp_path / "site"  # the landing page with its stylesheet and figure, and a page made broken
    shutil.copytree(folder / "static", broken / "static")
    for name in ("index.html", site.FIGURE):
        shutil.copy2(folder / name, broken / name)
    landing = (broken / "index.html").read_text(encoding="utf-8")
    key = next(iter(io.read_json(built[0] / "metrics" / "report.json")["claims"]))
    # the cell as jinja2 escapes its key, then its title and its link to the comparison's row (adapted: the
    # verdict was the cell's only content before the link)
    cell = re.compile(f'data-verdict-key="{re.escape(str(escape(key)))}"[^>]*>(<a [^>]*>)?')
    assert cell.search(landing)
    (broken / "index.html").write_text(cell.sub(lambda m: m[0] + "holds or not ", landing, count=1),
                                       encoding="utf-8")
    (broken / "bad.html").write_text(
        '<!DOCTYPE html><html><head><title>bad</title></head><body>'
        '<img src="data:image/png;base64,iVBORw0KGgo="><a href="nowhere.html">x</a><a href="index.html#nothing">y</a>'
        '<script>undefined_function()</script></body></html>\n')
    problems, verdicts = check_site(browser, broken)
    found = "\n".join(problems)
    for needle in ("bad.html: image data:image/png;base64,iVBORw0KGgo=... did not decode",
                   "bad.html: link nowhere.html reaches no file", "bad.html: link index.html#nothing reaches no anchor",
                   "bad.html: page error: undefined_function is not defined",
                   f"bad.html: the stylesheet {site.STYLESHEET} did not apply"):
        assert needle in found
    assert {k: v for k, v, _ in verdicts["index.html"]}[key].startswith("holds or not ")


# what a reader does: follow a verdict, read the contents, show the code, search, read on a phone
# Elements wider than the viewport that are not inside a box that scrolls sideways (overflow-x auto/scroll).
TOO_WIDE = """() => { const vw = document.documentElement.clientWidth, out = [];
    for (const e of document.querySelectorAll('body *')) {
        const r = e.getBoundingClientRect();
        if (r.width === 0 || r.right <= vw + 1) continue;
        let p = e.parentElement, boxed = false;
        for (; p && p !== document.body; p = p.parentElement) {
            if (['auto', 'scroll'].includes(getComputedStyle(p).overflowX)) { boxed = true; break; }
        }
        if (!boxed) out.push(e.tagName + '.' + e.className + ' ' + Math.round(r.right));
    }
    return [document.documentElement.scrollWidth, out.slice(0, 5)]; }"""


def _report_href(results: Path) -> str:
    return next(p for p in site.notebook_pages(results / "notebooks") if p.chapter.endswith("_report")).href


def test_a_verdict_links_to_its_comparison_row_and_explains_itself_on_hover(browser, built):
    results, folder = built
    report = _report_href(results)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto((folder / "index.html").as_uri())
    cell = page.locator("table.verdicts td[data-verdict-key]").first
    key = cell.get_attribute("data-verdict-key")
    claim, pair = key.split(" | ")
    row = next(c for c in io.read_json(results / "metrics" / "report.json")["comparisons"]
               if c["claim"] == claim and f"{c['arm']} vs {c['rival']}" == pair)
    title = cell.get_attribute("title")
    assert pair in title and "difference" in title and "95% CI" in title and title.endswith(row["verdict"])
    cell.locator("a").click()
    page.wait_for_load_state("load")
    anchor = site.anchor_id("cmp", claim, row["arm"], row["rival"])
    assert page.url.endswith(f"{report}#{anchor}")
    landed = page.evaluate("""(id) => { const r = document.getElementById(id).getBoundingClientRect();
        return [r.top >= -1 && r.bottom <= window.innerHeight + 1, document.querySelector(':target').id]; }""", anchor)
    assert landed == [True, anchor]  # within a pixel: the browser scrolls a row to sub-pixel positions
    assert page.locator(f"#{anchor} td.verdict").inner_text() == row["verdict"]
    # the report's verdict table is the index's: same cells, colours and column order, linking to the rows
    on_report = [[c.get_attribute("data-verdict-key"), c.get_attribute("class")]
                 for c in page.locator("table.verdicts td[data-verdict-key]").all()]
    page.goto((folder / "index.html").as_uri())
    on_index = [[c.get_attribute("data-verdict-key"), c.get_attribute("class")]
                for c in page.locator("table.verdicts td[data-verdict-key]").all()]
    assert on_index == on_report and len(on_index) == len(io.read_json(results / "metrics" / "report.json")["claims"])
    page.close()


def test_the_report_has_a_contents_sidebar_sticky_when_wide_collapsed_above_when_narrow(browser, built):
    results, folder = built
    report = _report_href(results)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto((folder / report).as_uri())
    toc = page.locator("nav.site-toc")
    assert toc.is_visible() and toc.locator("li").count() >= 5
    headings = page.evaluate("() => Array.from(document.querySelectorAll('main h2[id]')).map(h => '#' + h.id)")
    links = [a.get_attribute("href") for a in toc.locator("a").all()]
    assert headings and set(headings) <= set(links)
    page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
    box = toc.bounding_box()
    assert box["y"] >= -1 and box["y"] < 800 and box["x"] < 300  # sticky: still beside the content at the end
    page.close()
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto((folder / report).as_uri())
    toc_box, main_box = page.locator("nav.site-toc").bounding_box(), page.locator("main").bounding_box()
    assert toc_box["y"] + toc_box["height"] <= main_box["y"] + 1  # above the content
    assert not page.locator("nav.site-toc ol").is_visible()  # collapsed
    page.locator("nav.site-toc label").click()
    assert page.locator("nav.site-toc ol").is_visible()
    page.close()


def test_code_is_hidden_until_shown_and_outputs_always_show(browser, built):
    _, folder = built
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto((folder / "04_calibration.html").as_uri())
    inputs = page.locator(".jp-CodeCell .jp-Cell-inputWrapper")
    outputs = page.locator(".jp-OutputArea-output")
    assert inputs.count() > 0 and outputs.count() > 0
    assert not any(i.is_visible() for i in inputs.all())
    assert all(o.is_visible() for o in outputs.all())
    assert page.locator(".jp-MarkdownCell").first.is_visible()
    page.locator("label.site-code-label").click()
    assert page.locator(".jp-CodeCell:not(.jp-mod-noOutputs) .jp-Cell-inputWrapper").first.is_visible()
    assert all(o.is_visible() for o in outputs.all())
    page.locator("label.site-code-label").click()
    assert not any(i.is_visible() for i in inputs.all())
    page.close()


def test_search_finds_autoattack_offline(browser, built):
    _, folder = built
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto((folder / "index.html").as_uri())
    box = page.locator("form.site-search input[type=search]")
    assert box.is_visible()
    box.fill("AutoAttack")
    hits = page.locator(".site-search-results li a")
    hits.first.wait_for(timeout=5000)
    assert any(h.get_attribute("href").startswith("06_perturbations.html") for h in hits.all())
    hits.first.click()
    page.wait_for_load_state("load")
    assert "AutoAttack" in page.locator("main").inner_text()
    assert all(u.startswith(("file://", "data:")) for u in requests), [u for u in requests if "file" not in u]
    page.close()


def test_pages_read_on_a_390_px_screen_and_without_javascript(browser, built):
    """At 390 px no element is wider than the screen except inside a box that scrolls sideways (the site's own
    pages, every chapter's page and one run's); without JavaScript the verdicts, the sidebar and the code toggle
    still work and the search box, which needs it, is not shown."""
    results, folder = built
    pages = site.notebook_pages(results / "notebooks")
    names = ["index.html", "02_train.html"] + [p.href for p in pages if p.variant is None] + \
        [next(p.href for p in pages if p.variant and p.chapter.startswith("02_"))]
    page = browser.new_page(viewport={"width": 390, "height": 844})
    too_wide = {}
    for name in names:
        page.goto((folder / name).as_uri())
        width, wide = page.evaluate(TOO_WIDE)
        if wide or width > 390:
            too_wide[name] = (width, wide)
    page.close()
    assert too_wide == {}
    context = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto((folder / "index.html").as_uri())
    assert not page.locator("form.site-search").is_visible()
    assert page.locator("table.verdicts td[data-verdict-key] a").first.is_visible()
    page.goto((folder / _report_href(results)).as_uri())
    assert page.locator("nav.site-toc ol").is_visible()
    assert not page.locator(".jp-CodeCell .jp-Cell-inputWrapper").first.is_visible()
    page.locator("label.site-code-label").click()
    assert page.locator(".jp-CodeCell:not(.jp-mod-noOutputs) .jp-Cell-inputWrapper").first.is_visible()
    footer = page.locator("footer.site-footer").inner_text()
    assert "md5" in footer and ("dvc repro" in footer or "records no stage" in footer)
    context.close()


# ----------------------------------------------------------------------------------------------
# JupyterLab
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference_row(book, arm: str, seed: int) -> dict[str, str]:
    """The (arm, seed) row of the stored results table of notebooks/02_train.ipynb (nbval's reference)."""
    cell = next(c for c in book.cells if c.cell_type == "code" and c.source.startswith("results, histories"))
    lines = cell.outputs[0]["data"]["text/plain"].splitlines()
    header = lines[0].split()
    for line in lines[1:]:
        values = line.split()[1:]  # the index first
        row = dict(zip(header, values))
        if row.get("arm") == arm and row.get("seed") == str(seed):
            return row
    raise AssertionError(f"no row {arm}, seed {seed} in the reference table")


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on a free port with a token, serving a temporary project: params.yaml, the prepared data
    (a link), and notebooks/02_train.ipynb without outputs and with the parameters of one run (ERM, seed 0),
    as papermill would inject them; its runs go to a scratch folder (VARMIX_WORKDIR). Nothing committed is
    touched."""
    data = ROOT / PARAMS.data_dir / PARAMS.dataset / "meta.json"
    if not data.is_file():
        pytest.fail(f"{data.parent} is not prepared: run `python -m varmix prepare-data`")
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    shutil.copy2(ROOT / "params.yaml", project / "params.yaml")
    (project / PARAMS.data_dir).symlink_to(ROOT / PARAMS.data_dir, target_is_directory=True)
    book = nbformat.read(ROOT / "notebooks" / "02_train.ipynb", as_version=4)
    params = next(c for c in book.cells if "parameters" in c.metadata.get("tags", []))
    assert 'arm = "all"' in params.source and 'seed = "all"' in params.source
    params.source = params.source.replace('arm = "all"', 'arm = "erm"').replace('seed = "all"', "seed = 0")
    for c in book.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nbformat.write(book, project / "notebooks" / "02_train.ipynb")
    with _jupyterlab(project, tmp_path) as (base, token):
        yield base, token, tmp_path / "scratch"


@contextlib.contextmanager
def _jupyterlab(project: Path, tmp_path: Path, autosave_s: int | None = None):
    """JupyterLab serving ``project`` on a free port with a token, with its config, runtime, workspace and
    settings folders under ``tmp_path`` (nothing of the user's is read or written) and its runs writing into
    ``tmp_path/scratch`` (VARMIX_WORKDIR, as `make lab` sets it). ``autosave_s`` shortens the autosave
    interval (JupyterLab's default is 120 s), so a test sees within seconds what autosave would write."""
    port, token = _free_port(), "varmix-browser-test"
    env = {**os.environ, session.WORKDIR_ENV: str(tmp_path / "scratch"), "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "TQDM_DISABLE": "1", "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join(
               filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if autosave_s is not None:
        plugin = tmp_path / "settings" / "@jupyterlab" / "docmanager-extension" / "plugin.jupyterlab-settings"
        plugin.parent.mkdir(parents=True)
        plugin.write_text(json.dumps({"autosave": True, "autosaveInterval": autosave_s}))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={project}", "--ServerApp.port_retries=0",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.expose_app_in_browser=True"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(cmd, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"JupyterLab did not start: {(tmp_path / 'lab.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _api(base: str, token: str, method: str, path: str, body: dict | None = None):
    """One call of the Jupyter server's REST API, authenticated by the token; its JSON answer."""
    request = urllib.request.Request(f"{base}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)


# The page is ready to run the notebook: JupyterLab's app (exposed by --LabApp.expose_app_in_browser, as
# JupyterLab's own Playwright tests, galata, do) shows the notebook's panel attached to the given kernel, which
# is connected and idle, the kernel specs are loaded, and no dialog is open. Clicked before that, Run All
# found no kernel yet, asked to select one and ran nothing (seen on the busy 2-core machine).
READY = """([path, kernel]) => {
    const app = window.jupyterapp;
    if (!app || document.querySelector('.jp-Dialog')) return false;
    const panel = Array.from(app.shell.widgets('main')).find(w => w.context && w.context.path === path);
    const ctx = panel && panel.sessionContext, k = ctx && ctx.session && ctx.session.kernel;
    return !!(k && ctx.isReady && k.id === kernel && k.connectionStatus === 'connected' && k.status === 'idle'
              && ctx.specsManager.specs);
}"""


def test_jupyterlab_runs_a_smoke_notebook_through_its_ui(browser, lab):
    base, token, scratch = lab
    notebook = "notebooks/02_train.ipynb"
    # the kernel session first, through the REST API: the page attaches to it instead of starting its own
    kernel = _api(base, token, "POST", "/api/sessions", {"path": notebook, "type": "notebook", "name": "",
                                                          "kernel": {"name": "python3"}})["kernel"]["id"]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{base}/lab/tree/{notebook}?token={token}")
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
        page.wait_for_function(READY, arg=[notebook, kernel], timeout=120_000)
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        # the last cell's output: the learning curves, an image that decoded
        last = page.locator(".jp-NotebookPanel .jp-CodeCell").last
        image = last.locator(".jp-OutputArea-output img")
        image.wait_for(timeout=240_000)
    except PlaywrightTimeout:
        page.screenshot(path=scratch.parent / "jupyterlab.png")  # beside lab.log, for whoever reads the failure
        raise
    assert page.evaluate("(img) => img.complete && img.naturalWidth > 0 && img.naturalHeight > 0",
                         image.element_handle())
    assert not page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']", has_text="Error").count()
    # the run's numbers as the UI shows them (the results table) equal nbval's reference for erm, seed 0
    table = page.locator(".jp-NotebookPanel .jp-CodeCell", has_text="results, histories").locator(
        ".jp-OutputArea-output table")
    header = [t.strip() for t in table.locator("thead th").all_inner_texts()][1:]  # the index column first
    first = table.locator("tbody tr").first
    shown = dict(zip(header, [t.strip() for t in first.locator("td").all_inner_texts()]))
    reference = _reference_row(nbformat.read(ROOT / "notebooks" / "02_train.ipynb", as_version=4), "erm", 0)
    for key in ("arm", "seed", "train_loss", "test_loss", "test_acc"):
        assert shown[key] == reference[key], (key, shown, reference)
    # and it wrote where VARMIX_WORKDIR points, not into the project
    written = io.read_json(scratch / "results" / PARAMS.dataset / "smoke" / "metrics" / "train-erm-s0.json")
    assert f"{written['test_acc']:.4f}" == reference["test_acc"]
    page.close()
    # one kernel ran it all: the session's, which the page attached to (no second kernel was started)
    kernels = _api(base, token, "GET", "/api/kernels")
    assert [k["id"] for k in kernels] == [kernel], kernels
    sessions = _api(base, token, "GET", "/api/sessions")
    assert [(x["path"], x["kernel"]["id"]) for x in sessions] == [(notebook, kernel)], sessions


# ----------------------------------------------------------------------------------------------
# JupyterLab leaves the pipeline alone: opening a notebook changes nothing on disk
# Every panel open, each attached to a kernel that is connected and idle, and whether its model is dirty
# (JupyterLab marks a notebook modified when the kernel's name or display name, or its language_info,
# differs from the notebook's metadata; autosave then writes it).
PANELS = """(paths) => {
    const app = window.jupyterapp;
    if (!app) return null;
    const out = {};
    for (const w of app.shell.widgets('main')) {
        const ctx = w.context, sc = w.sessionContext;
        if (!ctx || !paths.includes(ctx.path)) continue;
        const k = sc && sc.session && sc.session.kernel;
        out[ctx.path] = {ready: !!(k && sc.isReady && k.connectionStatus === 'connected' && k.status === 'idle'),
                         dirty: ctx.model.dirty};
    }
    return out;
}"""


def test_opening_notebooks_in_jupyterlab_changes_no_file(browser, tmp_path):
    """The pipeline's notebooks (DVC dependencies and nbval's references) and a committed executed one, opened
    in JupyterLab with the project's kernel and left open past autosave, are byte for byte as they were, and
    what JupyterLab writes beside them (checkpoints) is ignored by git and DVC: looking at the study cannot
    make `git status` or `dvc status` call anything changed."""
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    shutil.copy2(ROOT / "params.yaml", project / "params.yaml")
    paths = [f"notebooks/{name}.ipynb" for name in runner.NOTEBOOKS]
    for path in paths:
        shutil.copy2(ROOT / path, project / path)
    executed = Path("results") / PARAMS.dataset / PARAMS.profile / "notebooks" / "07_report.ipynb"
    (project / executed.parent).mkdir(parents=True)
    shutil.copy2(ROOT / executed, project / executed)
    paths.append(executed.as_posix())
    before = {p: (project / p).read_bytes() for p in paths}
    autosave_s = 2
    with _jupyterlab(project, tmp_path, autosave_s=autosave_s) as (base, token):
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/lab?token={token}")
        page.wait_for_function("() => !!window.jupyterapp", timeout=120_000)
        page.evaluate("async () => { await window.jupyterapp.restored; }")
        for path in paths:
            page.evaluate("(path) => window.jupyterapp.commands.execute('docmanager:open', {path})", path)
        try:
            page.wait_for_function(f"(paths) => {{ const s = ({PANELS})(paths); return s && paths.every("
                                   "p => s[p] && s[p].ready); }", arg=paths, timeout=180_000)
        except PlaywrightTimeout:
            page.screenshot(path=tmp_path / "jupyterlab.png")
            raise
        time.sleep(3 * autosave_s + 2)  # past several autosaves, each of which writes a dirty notebook
        state = page.evaluate(PANELS, paths)
        page.close()
    assert {p: s["dirty"] for p, s in state.items()} == {p: False for p in paths}
    changed = [p for p in paths if (project / p).read_bytes() != before[p]]
    assert not changed, f"opening them in JupyterLab rewrote {changed}"
    # what JupyterLab did write (its checkpoints, .ipynb_checkpoints/ beside each notebook) is ignored by git
    # and by DVC in the real project, so it changes neither `git status` nor the hash of a stage's folder
    made = sorted(p.relative_to(project).as_posix() for p in project.rglob("*")
                  if p.is_file() and p.relative_to(project).as_posix() not in before and p.name != "params.yaml")
    for tool in (["git", "check-ignore", "--no-index"], [str(Path(sys.executable).parent / "dvc"), "check-ignore"]):
        seen = subprocess.run(tool + made, cwd=ROOT, capture_output=True, text=True) if made else None
        assert seen is None or sorted(seen.stdout.split()) == made, (tool[0], made, seen.stdout, seen.stderr)


def test_the_registered_kernel_is_the_one_every_notebook_names():
    """`make install` registers the kernel under the name and display name the notebooks store; another
    display name is a metadata change JupyterLab makes (and autosaves) the moment a notebook opens."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(runner.KERNEL)
    books = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted(
        (ROOT / "results").glob("*/*/notebooks/*.ipynb"))
    assert books
    for book in books:
        meta = json.loads(book.read_text())["metadata"]["kernelspec"]
        assert (meta["name"], meta["display_name"]) == (runner.KERNEL, spec.display_name), book
