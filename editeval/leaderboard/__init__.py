"""The leaderboard: a static site rendered from every `submissions/*/results.json`.

`build_site(submissions_dir, out_dir)` writes `index.html` (one sortable, filterable table per
benchmark / split / mode, a reliability-vs-locality scatter per table, the entries' reliability by
edits made where a sequential table has two lifelong curves or more, the invalid entries), one page
per entry under `entries/` (with its lifelong curve, `curves`), and the small CSS/JS under
`static/`. No CDN, no fetch: the site works from `file://` and offline. Every submitted string
goes through jinja2 autoescaping.
"""

from editeval.leaderboard.site import SiteReport, build_site, make_server, markdown_tables, serve

__all__ = ["SiteReport", "build_site", "make_server", "markdown_tables", "serve"]
