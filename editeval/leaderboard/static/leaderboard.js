// editeval leaderboard: sortable tables (click a header) and a filter box per table.
// Plain script, no modules and no fetch, so the site works from file:// and offline.
(function () {
  "use strict";

  function cellValue(row, index, type) {
    var cell = row.cells[index];
    if (!cell) return null;
    var raw = cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent.trim();
    if (type === "num") {
      if (raw === "" || raw === "\u2014") return null;
      var n = parseFloat(raw);
      return isNaN(n) ? null : n;
    }
    return raw.toLowerCase();
  }

  function sortTable(table, th) {
    var headers = Array.prototype.slice.call(th.parentNode.children);
    var index = headers.indexOf(th);
    var type = th.getAttribute("data-type") || "text";
    var current = th.getAttribute("aria-sort");
    // numbers start high-first (a better score on top), text starts A-Z
    var dir = current === "descending" ? "ascending" : current === "ascending" ? "descending"
      : (type === "num" ? "descending" : "ascending");
    headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var sign = dir === "ascending" ? 1 : -1;
    rows.sort(function (a, b) {
      var va = cellValue(a, index, type), vb = cellValue(b, index, type);
      if (va === null && vb === null) return 0;
      if (va === null) return 1;   // missing values always last
      if (vb === null) return -1;
      return va < vb ? -sign : va > vb ? sign : 0;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  function filterTable(table, query, note) {
    var words = query.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      var text = row.textContent.toLowerCase();
      var ok = words.every(function (w) { return text.indexOf(w) !== -1; });
      row.hidden = !ok;
      if (ok) shown += 1;
    });
    if (note) note.hidden = shown !== 0;
  }

  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (th) {
      th.tabIndex = 0;
      th.classList.add("sort-key");
      th.addEventListener("click", function () { sortTable(table, th); });
      th.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); sortTable(table, th); }
      });
    });
  });

  // "Rank by": sort by the chosen average (best first) and renumber nothing: # keeps the default rank
  document.querySelectorAll("label.rank-by select").forEach(function (select) {
    var table = document.getElementById(select.getAttribute("data-table"));
    if (!table) return;
    select.addEventListener("change", function () {
      var th = table.querySelector('thead th[data-rank="' + select.value + '"]');
      if (!th) return;
      th.removeAttribute("aria-sort");  // so that the sort starts best-first
      sortTable(table, th);
    });
  });

  document.querySelectorAll("input.filter").forEach(function (input) {
    var table = document.getElementById(input.getAttribute("data-table"));
    if (!table) return;
    var note = table.parentNode.querySelector(".no-match");
    input.addEventListener("input", function () { filterTable(table, input.value, note); });
  });
})();
