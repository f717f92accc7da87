"""The browser's static style sheet and the index page's script.

The script builds every table cell with `textContent`, never `innerHTML`, so corpus text in the
index data is shown, not parsed. It reads its state from the URL hash
(`index.html#q=paris&by=act&sort=density&page=2`), so a search is a link.
"""

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:18px;color:#222}
a{color:#06a;text-decoration:none}a:hover{text-decoration:underline}
nav.top{margin-bottom:10px}nav.top a{margin-right:14px}nav.top b{margin-right:18px}
form.search{display:flex;flex-wrap:wrap;gap:10px;align-items:center;margin:8px 0}
form.search input[type=text]{width:220px;padding:3px 6px}
form.search input[type=number]{width:70px}
table.features{border-collapse:collapse;min-width:760px}
table.features td,table.features th{padding:2px 10px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
table.features td.tok{font-family:ui-monospace,monospace;white-space:pre-wrap}
#pager button{margin-right:8px}.muted{color:#777}
svg.map circle{stroke:none}svg.map a:hover circle{stroke:#000;stroke-width:1.5}
"""

APP = r"""
(function () {
  "use strict";
  var rows = window.FEATURES || [];
  var PER_PAGE = 50;
  var el = function (id) { return document.getElementById(id); };
  function params() {
    var h = location.hash.length > 1 ? location.hash.slice(1) : location.search.slice(1);
    return new URLSearchParams(h);
  }
  function state() {
    var p = params();
    return {q: p.get("q") || "", by: p.get("by") || "any", sort: p.get("sort") || "id",
            dmin: p.get("dmin") || "", dmax: p.get("dmax") || "", page: parseInt(p.get("page") || "0", 10) || 0};
  }
  function writeState(s) {
    var p = new URLSearchParams();
    Object.keys(s).forEach(function (k) { if (s[k] !== "" && s[k] !== 0) p.set(k, s[k]); });
    history.replaceState(null, "", "#" + p.toString());
  }
  function matches(r, s) {
    var q = s.q.trim().toLowerCase();
    if (q) {
      if (/^#?\d+$/.test(q)) { if (String(r[0]) !== q.replace("#", "")) return false; }
      else {
        var pool = s.by === "act" ? r[3] : s.by === "logit" ? r[4] : r[3].concat(r[4]);
        var hit = pool.some(function (t) { return t.trim().toLowerCase().indexOf(q) >= 0; });
        if (!hit) return false;
      }
    }
    var ld = r[1] > 0 ? Math.log10(r[1]) : -99;
    if (s.dmin !== "" && ld < parseFloat(s.dmin)) return false;
    if (s.dmax !== "" && ld > parseFloat(s.dmax)) return false;
    return true;
  }
  function render() {
    var s = state();
    el("q").value = s.q; el("by").value = s.by; el("sort").value = s.sort;
    el("dmin").value = s.dmin; el("dmax").value = s.dmax;
    var found = rows.filter(function (r) { return matches(r, s); });
    if (s.sort === "density") found.sort(function (a, b) { return b[1] - a[1]; });
    if (s.sort === "rare") found.sort(function (a, b) { return a[1] - b[1]; });
    if (s.sort === "max") found.sort(function (a, b) { return b[2] - a[2]; });
    var pages = Math.max(1, Math.ceil(found.length / PER_PAGE));
    var page = Math.min(Math.max(s.page, 0), pages - 1);
    var body = el("rows");
    while (body.firstChild) body.removeChild(body.firstChild);
    found.slice(page * PER_PAGE, (page + 1) * PER_PAGE).forEach(function (r) {
      var tr = document.createElement("tr");
      tr.className = "feature-row";
      var a = document.createElement("a");
      a.href = "features/" + String(r[0]).padStart(5, "0") + ".html";
      a.textContent = "#" + r[0];
      var td = document.createElement("td"); td.appendChild(a); tr.appendChild(td);
      [r[1].toExponential(2), r[2].toPrecision(3), r[3].join(" \u00b7 "), r[4].join(" \u00b7 ")].forEach(function (text, i) {
        var c = document.createElement("td");
        if (i >= 2) c.className = "tok";
        c.textContent = text;
        tr.appendChild(c);
      });
      body.appendChild(tr);
    });
    el("count").textContent = found.length + " of " + rows.length + " features" + (pages > 1 ? " \u2014 page " + (page + 1) + " of " + pages : "");
    el("prev").disabled = page <= 0; el("next").disabled = page >= pages - 1;
    document.body.setAttribute("data-ready", "1");
  }
  function fromForm(page) {
    writeState({q: el("q").value, by: el("by").value, sort: el("sort").value, dmin: el("dmin").value,
                dmax: el("dmax").value, page: page});
    render();
  }
  document.addEventListener("DOMContentLoaded", function () {
    ["q", "dmin", "dmax"].forEach(function (id) { el(id).addEventListener("input", function () { fromForm(0); }); });
    ["by", "sort"].forEach(function (id) { el(id).addEventListener("change", function () { fromForm(0); }); });
    el("search").addEventListener("submit", function (e) { e.preventDefault(); fromForm(0); });
    el("prev").addEventListener("click", function () { fromForm(state().page - 1); });
    el("next").addEventListener("click", function () { fromForm(state().page + 1); });
    window.addEventListener("hashchange", render);
    render();
  });
})();
"""
