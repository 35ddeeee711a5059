"""The results site: a static HTML site of one study, built from what the pipeline committed under
``results/<dataset>/<profile>/`` (dvc.yaml's ``site`` stage, ``python -m varmix site``).

Pages (all in one folder, ``results/<dataset>/<profile>/site/``):

- ``index.html``: the claims' verdicts (``metrics/report.json``'s ``claims``, one cell per claim and pair),
  the report notebook's first figure (``report-figure.png``), one short paragraph per chapter (the first
  paragraph of the chapter notebook's opening markdown cell) linking to it, and the paper's numbers
  (varmix.study.report.paper_table) beside ours (``metrics/summary/<arm>.json``, the headline means);
  a chapter's paragraph ends where its sentence does (:func:`summary_markdown`);
- ``<notebook>.html``: every executed notebook of ``notebooks/``, rendered by nbconvert's HTMLExporter
  (JupyterLab's template, images embedded as data URIs);
- ``<chapter>.html`` for a chapter that only exists as several runs (``02_train-<arm>-s<seed>``): a table
  of arm × seed linking to each run's page, with its final test accuracy;
- ``static/site.css``: JupyterLab's stylesheet as nbconvert ships it, the code highlighting's and the
  site's own rules, once for all pages;
- ``data/metrics/*.json``, ``data/plots/*.csv``: copies of the files the pages' tables and figures come from,
  linked beside them (the files each notebook's DVC stage wrote, as ``dvc.lock`` lists its outputs; report.json
  and the headline summaries for the index), so that the links resolve from disk wherever the site is copied;
- ``search-index.js`` (a script assigning ``window.VARMIX_SEARCH``: a page opened from file:// cannot fetch()
  JSON) and ``static/search.js``: the offline search of varmix/study/site_search.py.

Every page answers first and explains on demand: the verdict table (the same on the index and in the report,
where it replaces the notebook's pandas rendering) shows each comparison's difference, intervals and p-values
on hover and links to its row in the report's comparisons table, which the site renders from report.json
(:func:`comparison_rows`: three significant figures where two decimals would lose the value); a long page has
a contents sidebar made at build time from its headings; a chapter's code is hidden behind a toggle (a CSS-only
checkbox) while its outputs show; wide tables scroll in their own box; each page's footer names the notebook,
its md5, the DVC stage that made it and ``dvc repro <stage>``.

The chapters are read from the notebooks' names (``NN_name`` or ``NN_name-variant``), so the site follows
whatever layout the results have. No page loads anything from the network (nbconvert's require.js, MathJax and
mermaid loaders are left out: the notebooks' markdown uses Unicode, not LaTeX); the only scripts are the two
local search files, and every page works with JavaScript off (the search box then stays hidden), so the site
works offline, opened from disk. No page holds a timestamp: the same results (and the same stage names and
outputs in dvc.lock) and the same nbconvert, Pygments and JupyterLab-Pygments versions give the same bytes (the
versions are named in each page's ``generator`` meta tag). The folder is replaced as a whole (built in a hidden
temporary sibling, then renamed), so a killed build leaves the previous site in place.
"""

from __future__ import annotations

import base64
import copy
import glob
import hashlib
import html
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from varmix.core import io

SITE = "site"
STYLESHEET = "static/site.css"
FIGURE = "report-figure.png"
DATA = "data"  # copies of the JSON/CSV files the pages show, under their path in results/<dataset>/<profile>/
LOCK = "dvc.lock"
TEMPLATES = Path(__file__).with_name("site_templates")

# NN_name or NN_name-variant: the executed notebooks' names (session.Layout.notebook)
_NOTEBOOK = re.compile(r"^(?P<chapter>(?P<number>\d\d)_[a-z0-9_]+)(?:-(?P<variant>[a-z0-9_.-]+))?$")
_RUN = re.compile(r"^(?P<arm>[a-z][a-z0-9_]*)-s(?P<seed>\d+)$")
_VERDICT_KEY = " | "  # report.json's claims: "<claim> | <arm> vs <rival>"

# the headline columns (varmix.study.headline.COLUMNS, rounded to 4 digits) as the landing page shows them:
# label, scale, digits
_OURS = {"acc": ("clean accuracy (%)", 100, 2), "corr_acc": ("corruption accuracy (%)", 100, 2),
         "ece": ("ECE", 1, 4), "gamma_8": ("γ at 8/255", 1, 4), "pgd_acc": ("PGD accuracy (%)", 100, 2)}
# the paper's (varmix.study.report.paper_table's columns)
_PAPER = {"clean_accuracy": ("clean accuracy (%)", 1, 2), "corruption_accuracy": ("corruption accuracy (%)", 1, 2),
          "ece": ("ECE", 1, 3), "gamma_8": ("γ at 8/255", 1, 2)}


@dataclass(frozen=True)
class Page:
    """One executed notebook: its name (file stem), chapter (``NN_name``), variant (None for the chapter's
    own notebook) and the path it is read from."""

    name: str
    chapter: str
    variant: str | None
    path: Path

    @property
    def href(self) -> str:
        return f"{self.name}.html"


def site_dir(results: str | os.PathLike) -> Path:
    """Where the site of the study whose results lie in ``results`` goes (dvc.yaml's ``site`` output)."""
    return Path(results) / SITE


def notebook_pages(folder: str | os.PathLike) -> list[Page]:
    """The executed notebooks in ``folder``, by name; hidden files (temporaries of atomic writes) and
    ``*.failed.ipynb`` (a failed run's traceback) are left out. Raises when the folder holds none, when a
    name is not ``NN_name[-variant]``, or when two chapters share a number (one is left over from an older
    layout of the pipeline)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: run the pipeline first (`dvc repro`), then build "
                                f"the site")
    pages = []
    for path in sorted(folder.glob("*.ipynb")):
        if path.name.startswith(".") or path.name.endswith(".failed.ipynb"):
            continue
        m = _NOTEBOOK.match(path.stem)
        if not m:
            raise ValueError(f"{path} is not named like an executed notebook of the pipeline "
                             f"(NN_name or NN_name-variant, e.g. 02_train-erm-s0)")
        pages.append(Page(path.stem, m["chapter"], m["variant"], path))
    if not pages:
        raise FileNotFoundError(f"{folder} holds no executed notebook: run the pipeline first (`dvc repro`)")
    numbers: dict[str, set[str]] = {}
    for p in pages:
        numbers.setdefault(p.chapter[:2], set()).add(p.chapter)
    clash = {n: sorted(c) for n, c in numbers.items() if len(c) > 1}
    if clash:
        n, names = next(iter(sorted(clash.items())))
        raise ValueError(f"{folder} holds two chapters numbered {n} ({', '.join(names)}): one is left over "
                         f"from an older layout of the pipeline; remove it (`git rm`) and build again")
    return pages


def read_verdicts(report_json: str | os.PathLike) -> dict[str, str]:
    """``{"<claim> | <arm> vs <rival>": verdict}`` from the report stage's ``report.json``, checked."""
    path = Path(report_json)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the report stage first (`dvc repro report`)")
    claims = io.read_json(path).get("claims")
    if not isinstance(claims, dict) or not claims:
        raise ValueError(f"{path} has no 'claims' (a dict of claim | pair -> verdict): expected the report "
                         f"stage's report.json")
    bad = [k for k, v in claims.items() if _VERDICT_KEY not in k or " vs " not in k or not isinstance(v, str)]
    if bad:
        raise ValueError(f"{path}: claims {bad} are not '<claim> | <arm> vs <rival>': <verdict>")
    return claims


def build_site(results: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Build the site of the study in ``results`` (``results/<dataset>/<profile>``) into ``out`` (default
    ``results/site``), replacing it whole; return ``out``. The inputs are checked before anything is
    written: the executed notebooks (:func:`notebook_pages`), ``metrics/report.json``'s verdicts
    (:func:`read_verdicts`) and a report notebook (``NN_report``) with a PNG figure. The stage that made
    each page (its name, the notebook's md5 and the data files it wrote) is read from the project's
    ``dvc.lock`` (three folders above ``results``) when it records one."""
    results = Path(results)
    out = Path(out) if out is not None else site_dir(results)
    pages = notebook_pages(results / "notebooks")
    verdicts = read_verdicts(results / "metrics" / "report.json")
    reports = [p for p in pages if p.chapter.endswith("_report") and p.variant is None]
    if not reports:
        raise FileNotFoundError(f"{results / 'notebooks'} holds no report notebook (NN_report.ipynb): run the "
                                f"report stage first (`dvc repro report`)")
    books = {p.name: _read_notebook(p.path) for p in pages}
    report = reports[-1]
    figure = _first_png(books[report.name])
    if figure is None:
        raise ValueError(f"{report.path} has no PNG output: expected the report's forest plot")
    summary = _read_summary(results / "metrics" / "summary")
    report_json = io.read_json(results / "metrics" / "report.json")
    stages = read_stages(results.parents[2] / LOCK if len(results.parents) > 2 else results / LOCK, results)
    dataset, profile = results.parent.name, results.name
    _replace_dir(out, lambda tmp: _write_site(tmp, results, pages, books, report, figure, verdicts, summary,
                                             report_json, stages, dataset, profile))
    return out


# ----------------------------------------------------------------------------------------------
# provenance: the DVC stage that made each file (dvc.lock)
def read_stages(lock: Path, results: Path) -> dict[str, dict]:
    """``{path in results: {"stage", "md5", "outs"}}`` from ``dvc.lock``: for each file a stage wrote under
    ``results`` (its path relative to ``results``), the stage's name, the md5 dvc.lock records for the file
    and the stage's other outputs under ``results`` (relative paths; a folder as itself). {} when there is no
    dvc.lock or it records no stage of these results."""
    import yaml

    if not lock.is_file():
        return {}
    try:
        prefix = results.resolve().relative_to(lock.parent.resolve()).as_posix() + "/"
    except ValueError:
        return {}
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages") or {}
    out: dict[str, dict] = {}
    for name, stage in stages.items():
        outs = [o for o in stage.get("outs") or [] if str(o.get("path", "")).startswith(prefix)]
        rel = [o["path"][len(prefix):] for o in outs]
        for o, r in zip(outs, rel):
            out[r] = {"stage": name, "md5": o.get("md5"), "outs": rel}
    return out


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _data_files(results: Path, rels: Sequence[str]) -> list[str]:
    """The JSON and CSV files among ``rels`` (paths in ``results``; a folder gives its files), that exist, under
    metrics/ or plots/: what a page's readers can download."""
    found = []
    for rel in rels:
        path = results / rel
        if path.is_dir():
            found += [p.relative_to(results).as_posix() for p in sorted(path.rglob("*"))
                      if p.is_file() and not p.name.startswith(".")]
        elif path.is_file():
            found.append(rel)
    return [r for r in dict.fromkeys(found) if r.split("/", 1)[0] in ("metrics", "plots")
            and r.endswith((".json", ".csv"))]


def _provenance(results: Path, page: Page, stages: Mapping[str, dict], dataset: str, profile: str) -> dict:
    """What a notebook page's footer says: the notebook, its md5 (computed from the file: what dvc.lock records
    for it once the stage has run; dvc.lock's own md5 is not copied, so that the page depends on dvc.lock only
    through the stage's name and outputs, which change with dvc.yaml, not with every `dvc repro`), the stage
    that made it and the command that makes it again, and the data files that stage wrote."""
    rel = f"notebooks/{page.path.name}"
    md5 = _md5(page.path)
    stage = stages.get(rel)
    return {"notebook": f"results/{dataset}/{profile}/{rel}", "md5": md5,
            "stage": stage["stage"] if stage else None,
            "data": _data_files(results, stage["outs"]) if stage else []}


# ----------------------------------------------------------------------------------------------
# the pages
def _write_site(tmp: Path, results: Path, pages: list[Page], books: Mapping[str, Any], report: Page,
                figure: bytes, verdicts: Mapping[str, str], summary: Mapping[str, Mapping[str, Any]],
                report_json: Mapping[str, Any], stages: Mapping[str, dict], dataset: str, profile: str) -> None:
    import jinja2
    from markupsafe import Markup

    from varmix.study import site_search

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    page_template = env.get_template("page.html.j2")
    chrome = env.get_template("chrome.html.j2").module
    exporter = _exporter()
    generator = _generator()
    chapters = _chapters(pages)
    titles = {name: _title(books[group[0].name], name) for name, group in chapters.items()}
    nav = [{"href": _chapter_href(name, group), "label": name} for name, group in chapters.items()]
    home = f"varmix results: {dataset}, {profile}"
    built_by = f"Built by python -m varmix site from results/{dataset}/{profile}/ ({generator})."
    copied: set[str] = set()

    def data_links(rels: Sequence[str]) -> list[dict]:
        copied.update(rels)
        return [{"href": f"{DATA}/{r}", "label": r} for r in rels]

    def header(current: str | None, code_toggle: bool) -> Markup:
        links = [dict(link, current=link["label"] == current) for link in nav]
        return Markup(chrome.header(home=home, chapters=links, code_toggle=code_toggle))

    def footer(made: dict | None, data: list[dict]) -> Markup:
        return Markup(chrome.footer(made=made, data=data, built_by=built_by, index=site_search.INDEX,
                                    script=site_search.SCRIPT))

    (tmp / "static").mkdir()
    (tmp / STYLESHEET).write_text(_stylesheet(exporter), encoding="utf-8")
    (tmp / site_search.SCRIPT).write_text((TEMPLATES / "search.js").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp / FIGURE).write_bytes(figure)

    claims_meta = _claims_meta()
    comparisons = comparison_rows(report_json.get("comparisons") or [], claims_meta, "cmp")
    secondary = comparison_rows(report_json.get("secondary") or [], claims_meta, "sec")
    report_book, injected = _with_site_tables(books[report.name], chrome, verdicts, comparisons, secondary,
                                              data_links(["metrics/report.json"]))
    books = {**books, report.name: report_book}
    rows_at = report.href if injected else "index.html"  # where the verdicts link to: the comparison's row
    written: list[dict] = []  # every page, for the search index

    for name, group in chapters.items():
        parent = {"href": _chapter_href(name, group), "label": titles[name]}  # what a variant's page links back to
        if not _has_own_page(name, group):
            runs_data = data_links(_data_files(results, [f"metrics/train-{p.variant}.json" for p in group]))
            body = page_template.render(
                header=header(name, False), footer=footer(None, runs_data), generator=generator,
                stylesheet=STYLESHEET, landing=False, title=titles[name],
                paragraph=_paragraph_html(books[group[0].name]),
                intro=f"{len(group)} executed notebooks of this chapter, one page each.",
                grid=_run_grid(group, results / "metrics"), pages=[{"href": p.href, "label": p.name} for p in group],
                data=runs_data)
            written.append({"href": f"{name}.html", "title": titles[name], "html": _with_toc(body)})
        for p in group:
            label = p.name if p.variant is None else p.variant
            made = _provenance(results, p, stages, dataset, profile)
            data = data_links(made["data"])
            site = {"generator": generator, "stylesheet": STYLESHEET,
                    "title": titles[name] if p.variant is None else f"{titles[name]} ({p.variant})",
                    "parent": parent if p.variant is not None else None, "page_label": label,
                    "header": header(name, True), "footer": footer(made, data),
                    "data": Markup(chrome.data_line(data=data)) if data else ""}
            body, _ = exporter.from_notebook_node(books[p.name], resources={"site": site,
                                                                            "metadata": {"name": p.name}})
            body = body if body.endswith("\n") else body + "\n"
            # one entry per chapter in the search, not one per run of it (the same text 50 times)
            written.append({"href": p.href, "title": site["title"], "html": _with_toc(body),
                            "search": p.variant is None or _has_own_page(name, group)})

    entries = []
    for name, group in chapters.items():
        extra = [{"href": p.href, "label": p.name} for p in group if p.variant is not None]
        entries.append({"href": _chapter_href(name, group), "title": titles[name],
                        "paragraph": _paragraph_html(books[group[0].name]),
                        "extra": extra if _has_own_page(name, group) else [],
                        "extra_label": "also"})
    pairs, rows = _verdict_table(verdicts, comparisons)
    ours_columns, paper_columns, paper_rows, paper_dataset = _paper_beside_ours(summary, dataset)
    report_made = _provenance(results, report, stages, dataset, profile)
    summary_data = data_links(_data_files(results, [f"metrics/summary/{arm}.json" for arm in summary]))
    report_data = data_links(["metrics/report.json"])
    landing = page_template.render(
        header=header(None, False), footer=footer(report_made, report_data + summary_data), generator=generator,
        stylesheet=STYLESHEET, landing=True, title=home,
        study=f"The study of the {profile!r} profile on {dataset}: what dvc repro committed in "
              f"results/{dataset}/{profile}/, one page per executed notebook.",
        report_json=f"results/{dataset}/{profile}/metrics/report.json",
        verdict_grid=Markup(chrome.verdict_grid(pairs=pairs, rows=rows, page=rows_at)),
        comparisons_table=Markup(chrome.comparisons(rows=comparisons, caption="", data=report_data))
        if not injected else "",
        report={"href": report.href, "label": titles[report.chapter]}, figure=FIGURE, chapter_entries=entries,
        dataset=dataset, paper_dataset=paper_dataset, ours_columns=ours_columns, paper_columns=paper_columns,
        paper_rows=paper_rows, report_data=report_data, summary_data=summary_data,
        paper_caption=f"The paper's numbers (Mangla et al.; varmix/study/paper.py) are for {paper_dataset}, ours for "
                      f"{dataset} with this profile's model and budget: different data and training, so compare "
                      f"the order of the methods, not the values. '–': not measured or not reported.")
    written.insert(0, {"href": "index.html", "title": home, "html": _with_toc(landing)})

    for page in written:
        (tmp / page["href"]).write_text(page["html"], encoding="utf-8")
    for rel in sorted(copied):
        (tmp / DATA / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(results / rel, tmp / DATA / rel)
    index = site_search.build_index([p for p in written if p.get("search", True)])
    (tmp / site_search.INDEX).write_text(site_search.index_script(index), encoding="utf-8")


TOC_MARK = '<div class="site-layout"><!--site-toc-->'


def _with_toc(page_html: str, least: int = 4) -> str:
    """The page with its contents sidebar (its h1-h3 headings, linked), made at build time, in place of
    :data:`TOC_MARK`; a page with fewer than ``least`` headings gets none."""
    from varmix.study import site_search

    if TOC_MARK not in page_html:
        return page_html
    main = page_html.split(TOC_MARK, 1)[1]
    heads = site_search.headings(main)
    if len(heads) < least:
        return page_html.replace(TOC_MARK, '<div class="site-layout">', 1)
    items = "\n".join(f'<li class="toc-{h["level"]}"><a href="#{html.escape(h["id"])}">{html.escape(h["text"])}</a></li>'
                      for h in heads)
    toc = ('<div class="site-layout has-toc">\n<nav class="site-toc" aria-label="contents">\n'
           '<input type="checkbox" id="site-toc-open" class="site-toc-open">'
           '<label for="site-toc-open" class="site-toc-label">Contents</label>\n'
           f'<ol>\n{items}\n</ol>\n</nav>')
    return page_html.replace(TOC_MARK, toc, 1)


# ----------------------------------------------------------------------------------------------
# report.json's numbers as the site shows them
def fmt_interval(value: float | None, lo: float | None = None, hi: float | None = None, scale: float = 1.0,
                 digits: int = 2, sig: int = 3, sign: bool = True, *more: float | None) -> tuple[str, ...]:
    """``value``, ``lo``, ``hi`` (and ``more``, e.g. a second interval), times ``scale``, with one number of
    decimals: ``digits``, or more when ``value`` would keep fewer than ``sig`` significant figures (ECE and γ
    differences of ~0.01: "+0.00579 [+0.00193, +0.00966]", not "+0.01 [+0.00, +0.01]"), never more than one
    beyond what gives the largest of them ``sig`` figures (a difference of ~0 beside a wide interval). "–" for a
    missing value."""
    nums = [None if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or v != v
            else float(v) * scale for v in (value, lo, hi, *more)]

    def needed(x: float | None) -> int:
        if x is None or x == 0 or math.isinf(x):
            return digits
        return max(digits, sig - 1 - math.floor(math.log10(abs(x))))

    big = max((abs(v) for v in nums if v is not None and not math.isinf(v)), default=0.0)
    decimals = min(needed(nums[0]), needed(big) + 1, 8)
    spec = f"{'+' if sign else ''}.{decimals}f"
    return tuple("–" if v is None else format(v, spec) for v in nums)


def fmt_p(p: float | None) -> str:
    return "–" if p is None or not isinstance(p, (int, float)) or p != p else f"{p:.3g}"


def _claims_meta() -> dict[str, dict]:
    """Per claim of the report (varmix.study.report's study and secondary claims): label, unit and scale."""
    from varmix.study import report

    return {c.name: {"label": c.label or c.name, "unit": c.unit, "scale": c.scale}
            for c in [*report.study_claims(), *report.secondary_claims()]}


def anchor_id(prefix: str, claim: str, arm: str, rival: str) -> str:
    """The id of a comparison's row: ``cmp-1-corruptions-varmixup-vs-erm``."""
    return "-".join([prefix, re.sub(r"[^a-z0-9]+", "-", f"{claim} {arm} vs {rival}".lower()).strip("-")])


def comparison_rows(comparisons: Sequence[Mapping[str, Any]], meta: Mapping[str, dict], prefix: str) -> list[dict]:
    """report.json's comparisons as the site's rows: the difference and both intervals in the claim's unit
    (:func:`fmt_interval`), Holm p-values, the minimal detectable effect when report.json has one (``mde``),
    the verdict, the row's id and a one-line ``title`` (what a verdict cell shows on hover)."""
    rows = []
    for c in comparisons:
        m = meta.get(c.get("claim"), {"label": c.get("claim"), "unit": "", "scale": 1.0})
        scale, unit = float(m["scale"]), m["unit"] or ""
        verdict = str(c.get("verdict", ""))
        tested = verdict != "not tested"
        diff, t_lo, t_hi, b_lo, b_hi = fmt_interval(c.get("diff"), c.get("t_lo"), c.get("t_hi"), scale, 2, 3, True,
                                                    c.get("boot_lo"), c.get("boot_hi"))
        mde = c.get("mde")
        mde_text = fmt_interval(mde, scale=scale, sign=False)[0] + unit if isinstance(mde, (int, float)) else ""
        pair = f"{c.get('arm')} vs {c.get('rival')}"
        row = {"id": anchor_id(prefix, str(c.get("claim")), str(c.get("arm")), str(c.get("rival"))),
               "key": f"{c.get('claim')}{_VERDICT_KEY}{pair}", "claim": c.get("claim"), "label": m["label"],
               "pair": pair, "seeds": c.get("n_seeds", "–"),
               "difference": diff + unit if tested else "–",
               "t_ci": f"[{t_lo}, {t_hi}]" if tested else "–", "t_p": fmt_p(c.get("t_p_holm")) if tested else "–",
               "boot_ci": f"[{b_lo}, {b_hi}]" if tested else "–",
               "boot_p": fmt_p(c.get("boot_p_holm")) if tested else "–", "mde": mde_text,
               "verdict": verdict if tested else f"not tested ({c.get('reason', '')})",
               "css": re.sub(r"\W+", "-", verdict)}
        row["title"] = (f"{pair}, {m['label']}: difference {row['difference']}, t 95% CI {row['t_ci']}, "
                        f"bootstrap 95% CI {row['boot_ci']}, Holm p {row['t_p']} / {row['boot_p']}"
                        + (f", MDE {mde_text}" if mde_text else "") + f": {row['verdict']}") if tested else \
            f"{pair}: {row['verdict']}"
        rows.append(row)
    return rows


def _with_site_tables(book, chrome, verdicts, comparisons, secondary, data) -> tuple[Any, bool]:
    """A copy of the report notebook whose verdict table (the output of ``report.verdict_summary``) and
    comparison tables (``report.formatted_comparisons``) are the site's rendering of report.json (the same
    numbers: the notebook wrote report.json from those tables), so that the verdicts look as on the index and
    link to their comparison's row; and whether the comparisons table was found (else the index shows it)."""
    from markupsafe import Markup

    book = copy.deepcopy(book)
    found = False
    pairs, rows = _verdict_table(verdicts, comparisons)
    for cell in book.cells:
        if cell.cell_type != "code":
            continue
        src = cell.source
        if "verdict_summary(" in src:
            html_out = chrome.verdict_grid(pairs=pairs, rows=rows, page="")
        elif "formatted_comparisons(table)" in src and comparisons:
            html_out, found = chrome.comparisons(rows=comparisons, caption="", data=data), True
        elif "formatted_comparisons(secondary)" in src and secondary:
            html_out = chrome.comparisons(rows=secondary, caption="", data=data)
        else:
            continue
        for out in cell.get("outputs", []):
            if "text/html" in out.get("data", {}):
                out["data"]["text/html"] = str(Markup(html_out))
    return book, found


def _chapters(pages: Sequence[Page]) -> dict[str, list[Page]]:
    """Pages grouped by chapter, chapters in name order, the chapter's own notebook first."""
    out: dict[str, list[Page]] = {}
    for p in sorted(pages, key=lambda p: (p.chapter, p.variant is not None, p.name)):
        out.setdefault(p.chapter, []).append(p)
    return out


def _has_own_page(chapter: str, group: Sequence[Page]) -> bool:
    """Whether the chapter has a notebook of its own (``01_vae``), or only runs (``02_train-<run>``)."""
    return group[0].variant is None


def _chapter_href(chapter: str, group: Sequence[Page]) -> str:
    """The chapter's own notebook page, or the index page of its runs."""
    return group[0].href if _has_own_page(chapter, group) else f"{chapter}.html"


def _opening(book) -> str:
    first = book.cells[0] if book.cells else None
    return first.source if first is not None and first.cell_type == "markdown" else ""


def _title(book, fallback: str) -> str:
    """The notebook's ``# heading`` (its first line), else its name."""
    m = re.match(r"#\s+(.+)", _opening(book))
    return m[1].strip() if m else fallback


# a sentence ends at . ! or ? (maybe closed by a quote, bracket or emphasis) before a space or the end
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]*_`]*(?=\s|$)")


def summary_markdown(markdown: str) -> str:
    """The summary of a chapter, from its opening markdown cell: the first paragraph after the heading, ending
    where a sentence ends. A paragraph that leads into a list or stops mid-sentence ("... without training):")
    is cut at its last full sentence; one with no full sentence keeps the blocks that follow it (the list it
    introduces) up to the next paragraph."""
    blocks = [b.strip() for b in re.split(r"\n\s*\n", markdown) if b.strip()]
    body = [b for b in blocks if not b.startswith("#")]
    if not body:
        return ""
    text = body[0].rstrip()
    ends = [m for m in _SENTENCE_END.finditer(text) if not _abbreviation(text, m.start())]
    if ends:  # whole when it ends a sentence, else up to its last full sentence
        return text[: ends[-1].end()].rstrip()
    more = [text]
    for b in body[1:]:
        if not re.match(r"([-*+]|\d+[.)])\s", b):  # the paragraph after the list
            break
        more.append(b)
    return "\n\n".join(more)


def _abbreviation(text: str, at: int) -> bool:
    """Whether the full stop at ``at`` ends an abbreviation (e.g., i.e., et al., cf., vs.) rather than a sentence."""
    return bool(re.search(r"(\be\.g|\bi\.e|\bet al|\bcf|\bvs|\bEq|\bFig|\bSec)$", text[:at]))


def _paragraph_html(book) -> str:
    """The chapter's summary (:func:`summary_markdown` of the opening markdown cell), as HTML (nbconvert's
    markdown)."""
    from markupsafe import Markup
    from nbconvert.filters import markdown2html

    text = summary_markdown(_opening(book))
    return Markup(markdown2html(text)) if text else ""  # nbconvert's markdown: the notebook's own text


def _run_grid(group: Sequence[Page], metrics: Path) -> dict | None:
    """Arm × seed table of a chapter made of ``<arm>-s<seed>`` runs, each cell a link labelled with the
    run's final test accuracy (``metrics/train-<run>.json``) when that file has one; None when a variant
    is not a run."""
    runs = [(_RUN.match(p.variant or ""), p) for p in group]
    if not all(m for m, _ in runs):
        return None
    arms = list(dict.fromkeys(m["arm"] for m, _ in runs))
    seeds = sorted({int(m["seed"]) for m, _ in runs})
    cells = {}
    for m, p in runs:
        label = f"s{m['seed']}"
        path = metrics / f"train-{p.variant}.json"
        if path.is_file():
            acc = io.read_json(path).get("test_acc")
            if isinstance(acc, (int, float)):
                label = f"{100 * acc:.1f}%"
        cells[(m["arm"], int(m["seed"]))] = {"href": p.href, "label": label}
    return {"row_label": "arm \\ seed (final test accuracy)", "columns": [f"s{s}" for s in seeds],
            "rows": [{"label": a, "cells": [cells.get((a, s)) for s in seeds]} for a in arms]}


def _verdict_table(verdicts: Mapping[str, str], comparisons: Sequence[Mapping[str, Any]] = ()
                   ) -> tuple[list[str], list[dict]]:
    """report.json's claims as rows (claims, in name order) × columns (pairs, in the comparisons' order, i.e.
    params.yaml's family, as the report notebook shows them; else in the claims' order); each cell with the
    comparison's row (``id``, ``title``) when report.json's comparisons have it."""
    split = [(key, *key.split(_VERDICT_KEY, 1)) for key in verdicts]
    claims = sorted(dict.fromkeys(c for _, c, _ in split))
    pairs = list(dict.fromkeys([r["pair"] for r in comparisons if r["key"] in verdicts] + [p for _, _, p in split]))
    at = {(c, p): key for key, c, p in split}
    detail = {r["key"]: r for r in comparisons}
    rows = []
    for c in claims:
        cells = []
        for p in pairs:
            key = at.get((c, p))
            d = detail.get(key, {})
            cells.append({"key": key, "verdict": verdicts[key], "css": re.sub(r"\W+", "-", verdicts[key]),
                          "id": d.get("id"), "title": d.get("title") or f"{c}, {p}: {verdicts[key]}"}
                         if key else {"key": None})
        rows.append({"claim": c, "cells": cells})
    return pairs, rows


def _read_summary(folder: Path) -> dict[str, dict[str, Any]]:
    """The headline per arm (``metrics/summary/<arm>.json``, varmix.study.headline); {} when there is none."""
    if not folder.is_dir():
        return {}
    return {p.stem: io.read_json(p) for p in sorted(folder.glob("*.json"))
            if "-vs-" not in p.stem and not p.name.startswith(".")}


def _paper_beside_ours(summary: Mapping[str, Mapping[str, Any]], dataset: str):
    """Rows method → our headline means and the paper's numbers, for the paper's dataset closest to ours
    (ours when the paper reports it, else CIFAR-10); the paper's methods first, in its order."""
    from varmix.study import paper, report

    paper_dataset = dataset if dataset in paper.CORRUPTION_ACCURACY else "cifar10"
    theirs = report.paper_table(paper_dataset)
    ours_keys = [k for k in _OURS if any(k in v for v in summary.values())]
    methods = list(theirs.index) + sorted(set(summary) - set(theirs.index))

    def fmt(value, scale, digits):
        if value is None or not isinstance(value, (int, float)) or value != value:  # None, NaN
            return "–"
        return f"{value * scale:.{digits}f}"

    rows = []
    for m in methods:
        ours = summary.get(m, {})
        rows.append({"method": m,
                     "ours": [fmt(ours.get(k), *_OURS[k][1:]) for k in ours_keys],
                     "paper": [fmt(theirs.loc[m, k] if m in theirs.index else None, *_PAPER[k][1:]) for k in _PAPER]})
    return [_OURS[k][0] for k in ours_keys], [v[0] for v in _PAPER.values()], rows, paper_dataset


def _read_notebook(path: Path):
    import nbformat

    try:
        return nbformat.read(path, as_version=4)
    except Exception as exc:  # nbformat raises several kinds (JSON, schema, reader): one message for all
        raise ValueError(f"{path} is not a readable notebook ({type(exc).__name__}: {exc}): run its stage "
                         f"again (`dvc repro`)") from exc


def _first_png(book) -> bytes | None:
    for cell in book.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = out.get("data", {}).get("image/png")
            if data:
                return base64.b64decode(data)
    return None


# ----------------------------------------------------------------------------------------------
# nbconvert
class _QuietAltText(logging.Filter):
    """Drops nbconvert's warning that a figure has no alternative text: it warns once per notebook with a
    figure (matplotlib outputs carry none) and gives each such image a generic one itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Alternative text is missing")


def _exporter():
    from nbconvert import HTMLExporter

    # varmix/study/site_templates/notebook: JupyterLab's template with a <head> that loads no script
    exporter = HTMLExporter(extra_template_basedirs=[str(TEMPLATES)], template_name="notebook")
    if not any(isinstance(f, _QuietAltText) for f in exporter.log.filters):
        exporter.log.addFilter(_QuietAltText())
    return exporter


def _generator() -> str:
    names = ("nbconvert", "pygments", "jupyterlab_pygments")
    return "varmix site; " + ", ".join(f"{n} {metadata.version(n)}" for n in names)


def _stylesheet(exporter) -> str:
    """JupyterLab's stylesheet and light theme as nbconvert's lab template inlines them, the code
    highlighting (Pygments with JupyterLab's style, as nbconvert's CSSHTMLHeaderPreprocessor makes it but
    without a user's custom.css, which would make the bytes depend on the machine) and the site's rules."""
    from jupyterlab_pygments import JupyterStyle
    from pygments.formatters import HtmlFormatter

    lab = next((Path(p) for p in exporter.template_paths
                if Path(p).name == "lab" and (Path(p) / "static" / "index.css").is_file()), None)
    if lab is None:
        raise FileNotFoundError(f"nbconvert's lab template (static/index.css) is not among "
                                f"{exporter.template_paths}: reinstall nbconvert")
    parts = [(lab / "static" / "index.css").read_text(encoding="utf-8"),
             (lab / "static" / "theme-light.css").read_text(encoding="utf-8"),
             HtmlFormatter(style=JupyterStyle).get_style_defs(".highlight"),
             (TEMPLATES / "site.css").read_text(encoding="utf-8")]
    return "\n".join(p.rstrip("\n") for p in parts) + "\n"


# ----------------------------------------------------------------------------------------------
# replacing a folder whole. varmix.core.io.atomic_path renames a file; a folder cannot be renamed onto a
# non-empty one, so the old site is first moved aside (a hidden name that TEMP_PATTERNS match, ignored by
# git and DVC), the new one renamed into place, and the old one deleted. Between the two renames the folder
# is briefly absent; a kill there leaves the old site in the hidden folder, which the next build removes.
def _replace_dir(out: Path, fill: Callable[[Path], None]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    for old in out.parent.glob(f".{glob.escape(out.name)}.*"):
        if io.is_temp(old.name, out.name) and old.is_dir():
            shutil.rmtree(old)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=io.TEMP_MARK, dir=out.parent))
    aside = tmp.with_name(tmp.name + ".old")
    try:
        fill(tmp)
        os.chmod(tmp, 0o777 & ~io._UMASK)  # mkdtemp creates 0700; give the usual permissions
        if out.exists():
            os.replace(out, aside)
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, aside):
            if leftover.exists():
                shutil.rmtree(leftover)
