/* The results site's offline search (varmix/study/site_search.py builds search-index.js, which assigns
   window.VARMIX_SEARCH). Only enhances: without JavaScript the form stays hidden and every page still works. */
(function () {
  "use strict";
  var form = document.querySelector("form.site-search");
  var entries = window.VARMIX_SEARCH;
  if (!form || !entries) return;
  var input = form.querySelector("input[type=search]");
  var list = form.querySelector(".site-search-results");
  form.hidden = false;

  function snippet(text, word) {
    var at = text.toLowerCase().indexOf(word);
    var start = Math.max(0, at - 60);
    return (start > 0 ? "…" : "") + text.slice(start, start + 180) + (start + 180 < text.length ? "…" : "");
  }

  function run() {
    var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    list.textContent = "";
    if (!words.length) { list.hidden = true; return; }
    var hits = entries.filter(function (e) {
      var hay = (e.t + " " + e.x).toLowerCase();
      return words.every(function (w) { return hay.indexOf(w) >= 0; });
    });
    hits.sort(function (a, b) {
      var ta = words.every(function (w) { return a.t.toLowerCase().indexOf(w) >= 0; });
      var tb = words.every(function (w) { return b.t.toLowerCase().indexOf(w) >= 0; });
      return (tb ? 1 : 0) - (ta ? 1 : 0);
    });
    hits.slice(0, 20).forEach(function (e) {
      var li = document.createElement("li"), a = document.createElement("a"), p = document.createElement("span");
      a.href = e.u; a.textContent = e.t;
      p.className = "site-search-snippet"; p.textContent = snippet(e.x, words[0]);
      li.appendChild(a); li.appendChild(p); list.appendChild(li);
    });
    if (!hits.length) {
      var none = document.createElement("li"); none.textContent = "nothing found"; list.appendChild(none);
    }
    list.hidden = false;
  }

  input.addEventListener("input", run);
  form.addEventListener("submit", function (ev) { ev.preventDefault(); run(); });
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "Escape") { list.hidden = true; }
  });
})();
