"""The results site: a static HTML site of one study, built from what the pipeline committed under
``results/<dataset>/<profile>/`` (dvc.yaml's ``site`` stage, ``python -m varmix site``).

Pages (all in one folder, ``results/<dataset>/<profile>/site/``):

- ``index.html``: the claims' verdicts (``metrics/report.json``'s ``claims``, one cell per claim and pair),
  the report notebook's first figure (``report-figure.png``), one short paragraph per chapter (the first
  paragraph of the chapter notebook's opening markdown cell) linking to it, and the paper's numbers
  (varmix.study.report.paper_table) beside ours (``metrics/summary/<arm>.json``, the headline means);
- ``<notebook>.html``: every executed notebook of ``notebooks/``, rendered by nbconvert's HTMLExporter
  (JupyterLab's template, images embedded as data URIs);
- ``<chapter>.html`` for a chapter that only exists as several runs (``02_train-<arm>-s<seed>``): a table
  of arm × seed linking to each run's page, with its final test accuracy;
- ``static/site.css``: JupyterLab's stylesheet as nbconvert ships it, the code highlighting's and the
  site's own rules, once for all pages.

The chapters are read from the notebooks' names (``NN_name`` or ``NN_name-variant``), so the site follows
whatever layout the results have. No page loads a script or anything from the network (nbconvert's
require.js, MathJax and mermaid loaders are left out: the notebooks' markdown uses Unicode, not LaTeX), so
the site works offline, opened from disk. No page holds a timestamp: the same results and the same
nbconvert, Pygments and JupyterLab-Pygments versions give the same bytes (the versions are named in each
page's ``generator`` meta tag). The folder is replaced as a whole (built in a hidden temporary sibling, then
renamed), so a killed build leaves the previous site in place.
"""

from __future__ import annotations

import base64
import glob
import logging
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
    (:func:`read_verdicts`) and a report notebook (``NN_report``) with a PNG figure."""
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
    dataset, profile = results.parent.name, results.name
    _replace_dir(out, lambda tmp: _write_site(tmp, results, pages, books, report, figure, verdicts, summary,
                                             dataset, profile))
    return out


# ----------------------------------------------------------------------------------------------
# the pages
def _write_site(tmp: Path, results: Path, pages: list[Page], books: Mapping[str, Any], report: Page,
                figure: bytes, verdicts: Mapping[str, str], summary: Mapping[str, Mapping[str, Any]],
                dataset: str, profile: str) -> None:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    page_template = env.get_template("page.html.j2")
    exporter = _exporter()
    generator = _generator()
    chapters = _chapters(pages)
    titles = {name: _title(books[group[0].name], name) for name, group in chapters.items()}
    nav = [{"href": _chapter_href(name, group), "label": name} for name, group in chapters.items()]
    home = f"varmix results: {dataset}, {profile}"
    common = {"generator": generator, "stylesheet": STYLESHEET, "home": home,
              "footer": f"Built by python -m varmix site from results/{dataset}/{profile}/ ({generator})."}

    (tmp / "static").mkdir()
    (tmp / STYLESHEET).write_text(_stylesheet(exporter), encoding="utf-8")
    (tmp / FIGURE).write_bytes(figure)

    for name, group in chapters.items():
        links = [dict(link, current=link["label"] == name) for link in nav]
        parent = {"href": _chapter_href(name, group), "label": titles[name]}  # what a variant's page links back to
        if not _has_own_page(name, group):
            (tmp / f"{name}.html").write_text(page_template.render(
                **common, landing=False, title=titles[name], chapters=links,
                paragraph=_paragraph_html(books[group[0].name]),
                intro=f"{len(group)} executed notebooks of this chapter, one page each.",
                grid=_run_grid(group, results / "metrics"), pages=[{"href": p.href, "label": p.name} for p in group]),
                encoding="utf-8")
        for p in group:
            label = p.name if p.variant is None else p.variant
            site = {**common, "title": titles[name] if p.variant is None else f"{titles[name]} ({p.variant})",
                    "chapters": links, "parent": parent if p.variant is not None else None, "page_label": label}
            body, _ = exporter.from_notebook_node(books[p.name], resources={"site": site,
                                                                            "metadata": {"name": p.name}})
            (tmp / p.href).write_text(body if body.endswith("\n") else body + "\n", encoding="utf-8")

    entries = []
    for name, group in chapters.items():
        extra = [{"href": p.href, "label": p.name} for p in group if p.variant is not None]
        entries.append({"href": _chapter_href(name, group), "title": titles[name],
                        "paragraph": _paragraph_html(books[group[0].name]),
                        "extra": extra if _has_own_page(name, group) else [],
                        "extra_label": "also"})
    pairs, rows = _verdict_table(verdicts)
    ours_columns, paper_columns, paper_rows, paper_dataset = _paper_beside_ours(summary, dataset)
    (tmp / "index.html").write_text(page_template.render(
        **common, landing=True, title=home, chapters=[dict(link, current=False) for link in nav],
        study=f"The study of the {profile!r} profile on {dataset}: what dvc repro committed in "
              f"results/{dataset}/{profile}/, one page per executed notebook.",
        report_json=f"results/{dataset}/{profile}/metrics/report.json", pairs=pairs, verdict_rows=rows,
        report={"href": report.href, "label": titles[report.chapter]}, figure=FIGURE, chapter_entries=entries,
        dataset=dataset, paper_dataset=paper_dataset, ours_columns=ours_columns, paper_columns=paper_columns,
        paper_rows=paper_rows,
        paper_caption=f"The paper's numbers (Mangla et al.; varmix/study/paper.py) are for {paper_dataset}, ours for "
                      f"{dataset} with this profile's model and budget: different data and training, so compare "
                      f"the order of the methods, not the values. '–': not measured or not reported."),
        encoding="utf-8")


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


def _paragraph_html(book) -> str:
    """The first paragraph after the heading of the opening markdown cell, as HTML (nbconvert's markdown)."""
    from nbconvert.filters import markdown2html

    from markupsafe import Markup

    blocks = [b.strip() for b in re.split(r"\n\s*\n", _opening(book)) if b.strip()]
    text = next((b for b in blocks if not b.startswith("#")), "")
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


def _verdict_table(verdicts: Mapping[str, str]) -> tuple[list[str], list[dict]]:
    """report.json's claims as rows (claims, in their order) × columns (pairs, in their order)."""
    split = [(key, *key.split(_VERDICT_KEY, 1)) for key in verdicts]
    claims = sorted(dict.fromkeys(c for _, c, _ in split))
    pairs = list(dict.fromkeys(p for _, _, p in split))
    at = {(c, p): key for key, c, p in split}
    rows = []
    for c in claims:
        cells = []
        for p in pairs:
            key = at.get((c, p))
            cells.append({"key": key, "verdict": verdicts[key], "css": re.sub(r"\W+", "-", verdicts[key])}
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
        if io._is_temp(old.name, out.name) and old.is_dir():
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
