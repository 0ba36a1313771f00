"""The leaderboard site builder: tables from fixture records, invalid entries, escaping, serving."""

from __future__ import annotations

import re
import threading
import urllib.request

import pytest
from _leaderboard_fixtures import ENTRIES, XSS_TITLE, make_submissions

from editeval.errors import EditevalError
from editeval.leaderboard import build_site, make_server


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("lb")
    report = build_site(make_submissions(root / "submissions"), root / "site")
    return report, root / "site"


def test_tables_entries_and_pages(built):
    report, site = built
    assert len(report.entries) == len(ENTRIES)
    groups = {(t.benchmark, t.split, t.mode): [e.slug for e in t.entries] for t in report.tables}
    assert set(groups) == {("zsre", "edit", "single"), ("zsre", "edit", "batch"), ("counterfact", "edit", "single")}
    assert groups[("zsre", "edit", "single")][0] == "rome-zsre"  # ranked by the average
    index = (site / "index.html").read_text()
    for slug in ENTRIES:
        assert f'href="entries/{slug}.html"' in index
        assert (site / "entries" / f"{slug}.html").is_file()
    assert "Average = the arithmetic mean of Reliability, Generalization, Locality and Portability" in index
    for label in ("Reliability", "Generalization", "Locality", "Portability", "Port. one hop",
                  "Port. subject replace", "Fluency", "s / edit", "Memory (MiB)", "CF score"):
        assert f">{label}</th>" in index, label
    assert "smollm2-135m <span class=\"muted\">(135M)</span>" in index
    assert index.count('class="dot"') == len(ENTRIES)  # one scatter point per entry
    assert (site / "static" / "leaderboard.js").is_file() and (site / "static" / "leaderboard.css").is_file()
    # offline: nothing is loaded from another host
    assert not re.search(r'(src|href)="(https?:)?//', index.replace('href="https://example.org/', ""))
    page = (site / "entries" / "rome-zsre.html").read_text()
    assert "Per-kind breakdown" in page and "portability.one_hop.teacher_forced" in page
    assert "hash <code>abc123</code>" in page and "dataset_fingerprint" in page


def test_invalid_entries_listed(built):
    report, site = built
    reasons = {i.slug: i.reason for i in report.invalid}
    assert set(reasons) == {"bad-yaml", "old-schema", "pending"}
    assert reasons["bad-yaml"].startswith("not valid YAML")
    assert "results schema version '0'" in reasons["old-schema"]
    assert reasons["pending"].startswith("not scored yet")
    index = (site / "index.html").read_text()
    assert 'id="invalid"' in index and "<code>old-schema</code>" in index


def test_submitted_strings_are_escaped(built):
    _, site = built
    for page in (site / "index.html", site / "entries" / "xss-zsre.html"):
        html = page.read_text()
        assert "<script>window" not in html and "<img src=x" not in html
        assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
        assert html.count("<script") == 1  # only the site's own script tag
    assert "&lt;b&gt;not bold&lt;/b&gt;" in (site / "entries" / "rome-zsre.html").read_text()
    assert XSS_TITLE  # the fixture title really holds markup


def test_empty_and_missing_submissions(tmp_path):
    (tmp_path / "subs").mkdir()
    report = build_site(tmp_path / "subs", tmp_path / "site")
    assert report.entries == [] and "No scored entries yet" in (tmp_path / "site" / "index.html").read_text()
    with pytest.raises(EditevalError, match="submissions folder not found"):
        build_site(tmp_path / "nope", tmp_path / "site")


def test_rebuild_replaces_only_a_site(tmp_path):
    (tmp_path / "subs").mkdir()
    build_site(tmp_path / "subs", tmp_path / "site")
    build_site(tmp_path / "subs", tmp_path / "site")  # a previous site is replaced
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(EditevalError, match="is not a leaderboard site built by editeval"):
        build_site(tmp_path / "subs", precious)
    assert (precious / "thesis.tex").read_text() == "do not delete"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_serve_localhost(built, tmp_path):
    _, site = built
    server = make_server(site, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10).read().decode()
        assert "editeval leaderboard" in body
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(EditevalError, match="no site in"):
        make_server(tmp_path, port=0)


def test_leaderboard_cli(tmp_path):
    from typer.testing import CliRunner

    from editeval.cli import app

    make_submissions(tmp_path / "subs")
    result = CliRunner().invoke(app, ["leaderboard", "build", "--submissions", str(tmp_path / "subs"),
                                      "--out", str(tmp_path / "site")])
    assert result.exit_code == 0, result.output
    assert f"{len(ENTRIES)} entries in 3 tables, 3 invalid" in result.output


def test_markdown_tables_match_the_site(built, tmp_path):
    """`editeval leaderboard table`: the site's tables, rows and order as Markdown; a submitted
    title stays one inert cell."""
    from typer.testing import CliRunner

    from editeval.cli import app

    report, _ = built
    subs = make_submissions(tmp_path / "subs")
    result = CliRunner().invoke(app, ["leaderboard", "table", "--submissions", str(subs)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.count("### ") == len(report.tables)
    section = text.split("### zsre / edit / single\n")[1].split("###")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    single = next(t for t in report.tables if (t.benchmark, t.split, t.mode) == ("zsre", "edit", "single"))
    assert [r.split(" | ")[2] for r in rows] == [e.method for e in single.entries]
    assert rows[0].startswith("| 1 | ROME (reference) | rome | ")
    rel = single.entries[0].record.value("reliability.teacher_forced")
    assert f" | {100 * rel:.1f} | " in rows[0] and rows[0].endswith(" | 1.90 |")  # 1.9 s per edit
    xss = next(r for r in rows if " | kn | " in r)
    assert "<script>" not in xss and "&lt;script&gt;" in xss and xss.count(" | ") == rows[0].count(" | ")
    assert "Average = the arithmetic mean" in text and "Invalid entries: " in text
