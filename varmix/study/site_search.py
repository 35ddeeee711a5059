"""The results site's offline search (varmix/study/site.py): a prebuilt index of the pages' sections, written as
a script (``search-index.js``, assigning ``window.VARMIX_SEARCH``) because a page opened from disk (file://)
cannot fetch() a JSON file, and the small script that searches it (``static/search.js``, in
site_templates/). Pure functions: the same pages give the same bytes."""

from __future__ import annotations

import html
import json
import re
from typing import Iterable, Mapping, Sequence

INDEX = "search-index.js"
SCRIPT = "static/search.js"
GLOBAL = "VARMIX_SEARCH"

_HEADING = re.compile(r"<h([1-3])\b[^>]*\bid=\"([^\"]+)\"[^>]*>(.*?)</h\1>", re.S)
_TAG = re.compile(r"<[^>]+>")
_SKIP = re.compile(r"<(script|style)\b.*?</\1>", re.S | re.I)
_SPACE = re.compile(r"\s+")


def text_of(fragment: str) -> str:
    """The visible text of an HTML fragment, whitespace collapsed (tags dropped, entities decoded)."""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", _SKIP.sub(" ", fragment)))).strip()


def headings(page_html: str, levels: Iterable[int] = (1, 2, 3)) -> list[dict]:
    """The headings of a page (``<hN id=...>``) in order: level, id and text (nbconvert's ``¶`` link left out)."""
    levels = set(levels)
    out = []
    for m in _HEADING.finditer(page_html):
        if int(m[1]) in levels:
            text = text_of(re.sub(r"<a class=\"anchor-link\".*?</a>", "", m[3], flags=re.S))
            out.append({"level": int(m[1]), "id": m[2], "text": text})
    return out


def sections(page_html: str, limit: int = 600) -> list[dict]:
    """The page cut at its headings: per heading its id, text and the text that follows up to the next
    heading (at most ``limit`` characters); the text before the first heading has id ``""``."""
    body = page_html.split("</main>", 1)[0]
    if "<main" in body:
        body = body.split("<main", 1)[1].split(">", 1)[-1]
    marks = list(_HEADING.finditer(body))
    out = []
    starts = [(0, "", "")] + [(m.end(), m[2], text_of(re.sub(r"<a class=\"anchor-link\".*?</a>", "", m[3],
                                                                    flags=re.S))) for m in marks]
    ends = [m.start() for m in marks] + [len(body)]
    for (start, anchor, title), end in zip(starts, ends):
        text = text_of(body[start:end])
        if anchor or text:
            out.append({"id": anchor, "heading": title, "text": text[:limit]})
    return out


def build_index(pages: Sequence[Mapping[str, str]]) -> list[dict]:
    """One entry per section of each page (``pages``: dicts with ``href``, ``title`` and ``html``, the
    rendered page): ``u`` the link (page and anchor), ``t`` the page's title and the section's heading,
    ``x`` the section's text. A section whose text an earlier entry already holds (the same markdown in
    several runs of one chapter) is left out."""
    entries, seen = [], set()
    for page in pages:
        for s in sections(page["html"]):
            key = (s["heading"], s["text"])
            if key in seen or not (s["text"] or s["heading"]):
                continue
            seen.add(key)
            title = page["title"] if not s["heading"] or s["heading"] == page["title"] else \
                f"{page['title']} › {s['heading']}"
            entries.append({"u": page["href"] + (f"#{s['id']}" if s["id"] else ""), "t": title, "x": s["text"]})
    return entries


def index_script(entries: Sequence[Mapping[str, str]]) -> str:
    """The index as a script that assigns ``window.VARMIX_SEARCH`` (loadable from file://, unlike JSON)."""
    payload = json.dumps(list(entries), ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    payload = payload.replace("</", "<\\/")  # never closes a <script> element
    return f"window.{GLOBAL}={payload};\n"


def search(entries: Sequence[Mapping[str, str]], query: str, limit: int = 20) -> list[Mapping[str, str]]:
    """What static/search.js does, in Python (for the tests): the entries whose title or text holds every
    word of the query (case-insensitive), title matches first."""
    words = [w for w in query.lower().split() if w]
    if not words:
        return []
    hits = [e for e in entries if all(w in (e["t"] + " " + e["x"]).lower() for w in words)]
    hits.sort(key=lambda e: not all(w in e["t"].lower() for w in words))
    return hits[:limit]
