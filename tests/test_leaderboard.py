"""The leaderboard site builder: tables from fixture records, invalid entries, escaping, serving."""

from __future__ import annotations

import re
import threading
import urllib.request

import pytest
from _leaderboard_fixtures import (
    ENTRIES,
    HOSTILE_SLUG,
    HOSTILE_TAGS,
    XSS_TITLE,
    hostile,
    make_hostile_submissions,
    make_submissions,
)

from editeval.errors import EditevalError
from editeval.leaderboard import build_site, make_server, markdown_tables


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
    for label in (
        "Reliability",
        "Generalization",
        "Locality",
        "Portability",
        "Port. one hop",
        "Port. subject replace",
        "Fluency",
        "s / edit",
        "Memory (MiB)",
        "CF score",
    ):
        assert f">{label}</th>" in index, label
    assert 'smollm2-135m <span class="muted">(135M)</span>' in index
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
    result = CliRunner().invoke(
        app, ["leaderboard", "build", "--submissions", str(tmp_path / "subs"), "--out", str(tmp_path / "site")]
    )
    assert result.exit_code == 0, result.output
    assert f"{len(ENTRIES)} entries in 3 tables, 3 invalid" in result.output


def test_a_case_benchmark_has_a_table_of_its_own(tmp_path):
    """MQuAKE entries: one table beside the request benchmarks', with the authors' columns (no
    reliability/locality), ranked by multi-hop accuracy, which the site shows as its score column
    with its definition; the unit is cases."""
    from _leaderboard_fixtures import add_mquake

    from editeval.leaderboard.site import build_site

    subs = make_submissions(tmp_path / "subs")
    add_mquake(subs, "mq-base", "unedited", 0.0, 0.1)
    add_mquake(subs, "mq-rome", "rome", 0.3, 0.2)
    add_mquake(subs, "mq-ftm", "ft-m", 0.5, 0.0)
    report = build_site(subs, tmp_path / "site")
    table = next(t for t in report.tables if t.benchmark == "mquake")
    assert [e.slug for e in table.entries] == ["mq-ftm", "mq-rome", "mq-base"]  # multi-hop 0.5, 0.3, 0.0
    assert [c["label"] for c in table.columns] == ["Multi-hop (CoT)", "Hop-wise", "Old answer"]
    assert table.scatter is None and not table.wild
    page = (tmp_path / "site" / "index.html").read_text()
    section = page.split('id="t-mquake-edit-single"')[1].split("</section>")[0]
    assert ">Cases</th>" in section and ">Multi-hop</th>" in section and "MQuAKE multi-hop accuracy" in section
    assert '<td class="avg" data-v="0.5">50.0</td>' in section
    entry = (tmp_path / "site" / "entries" / "mq-rome.html").read_text()
    assert "Rank 2 of 3 · Multi-hop 30.0" in entry
    zsre = page.split('id="t-zsre-edit-single"')[1].split("</section>")[0]
    assert ">Average</th>" in zsre and ">Edits</th>" in zsre  # the request tables as before


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


# ---------------------------------------------------------------------------- markup in every submitted string

# where each hostile field must be shown (escaped): the index, the entry's own page
HOSTILE_PAGES = {
    "title": {"index", "entry"},
    "description": {"entry"},
    "author0": {"entry"},
    "author1": {"entry"},
    "contact": {"entry"},
    "manifest_method": {"entry"},
    "base_model_name": {"entry"},
    "score_hparams": {"entry"},
    "meta_method": {"index", "entry"},
    "meta_benchmark": {"index", "entry"},
    "meta_config": {"index", "entry"},
    "meta_split": {"index", "entry"},
    "meta_base_model": {"index", "entry"},
    "meta_edited_model": {"entry"},
    "meta_extra_key": {"index"},
    "meta_extra_value": {"entry"},
    "hparams_key": {"entry"},
    "hparams_value": {"entry"},
    "hparams_hash": {"entry"},
    "portability_kind": {"index", "entry"},
    "locality_kind": {"entry"},
    "invalid_key": {"index"},
    "invalid_folder": {"index"},
    "invalid_schema": {"index"},
}
# shown by `editeval leaderboard table`
HOSTILE_MARKDOWN = {
    "title",
    "meta_method",
    "meta_benchmark",
    "meta_config",
    "meta_split",
    "portability_kind",
    "invalid_key",
    "invalid_folder",
    "invalid_schema",
    "meta_extra_key",
}


def assert_inert(text: str, tags) -> None:
    """No '<', '"' or "'" that came from a hostile string reaches `text` raw (each is right after its tag)."""
    for tag in tags:
        for char in "<\"'":
            assert tag + char not in text, f"raw {char!r} of {tag} in the output"


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    report = build_site(make_hostile_submissions(root / "submissions"), root / "site")
    return report, root / "site", root / "submissions"


def test_every_submitted_string_is_escaped_on_the_site(hostile_site):
    from markupsafe import escape

    report, site, _ = hostile_site
    assert [e.slug for e in report.entries] == [HOSTILE_SLUG] and len(report.invalid) == 4
    assert set(HOSTILE_PAGES) == set(HOSTILE_TAGS)
    pages = {
        "index": (site / "index.html").read_text(),
        "entry": (site / "entries" / f"{HOSTILE_SLUG}.html").read_text(),
    }
    for name, html in pages.items():
        assert_inert(html, HOSTILE_TAGS.values())
        assert html.count("<script") == 1, name  # only the site's own script tag
        assert "<img" not in html and 'onerror="self' not in html, name
    for field, where in HOSTILE_PAGES.items():
        tag = HOSTILE_TAGS[field]
        shown = {name for name, html in pages.items() if f"{tag}&lt;b&gt;{tag}" in html}  # (quotes: YAML, repr)
        assert where <= shown, (field, shown)

    # the places where a quote would end an attribute: the table's id and the links to it, the
    # filter box's data-table, the metric column's data-metric; and the scatter point's <title>
    index = pages["index"]
    h = {field: hostile(tag, short=field == "manifest_method") for field, tag in HOSTILE_TAGS.items()}
    anchor = "t-" + "-".join(
        str(escape(part.replace("/", "-")))
        for part in (f"{h['meta_benchmark']}/{h['meta_config']}", h["meta_split"], "single")
    )
    assert f'id="{anchor}"' in index and f'href="#{anchor}"' in index and f'data-table="{anchor}-table"' in index
    assert f'href="../index.html#{anchor}"' in pages["entry"]
    assert f'data-metric="portability.{escape(h["portability_kind"])}.teacher_forced"' in index
    assert f"<title>{escape(h['meta_method'])}: {escape(h['title'])} (reliability" in index
    assert f"<title>{escape(h['title'])} · editeval leaderboard</title>" in pages["entry"]


def test_markdown_table_escapes_every_submitted_string(hostile_site):
    """`editeval leaderboard table`: markup from a submission stays inert in every cell, heading and
    column label, and in the invalid-entries line."""
    from typer.testing import CliRunner

    from editeval.cli import app

    _, _, subs = hostile_site
    result = CliRunner().invoke(app, ["leaderboard", "table", "--submissions", str(subs)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert_inert(text, HOSTILE_TAGS.values())
    assert "<script" not in text and "<img" not in text
    for field in HOSTILE_MARKDOWN:
        assert HOSTILE_TAGS[field] in text, field
    heading = next(line for line in text.splitlines() if line.startswith("### "))
    assert HOSTILE_TAGS["meta_benchmark"] in heading and HOSTILE_TAGS["meta_split"] in heading
    row = next(line for line in text.splitlines() if line.startswith("| 1 | "))
    header = next(line for line in text.splitlines() if line.startswith("| # | "))
    assert row.count(" | ") == header.count(" | ")  # no cell split by a submitted '|'
    invalid = next(line for line in text.splitlines() if line.startswith("Invalid entries: "))
    assert all(
        HOSTILE_TAGS[f] in invalid for f in ("invalid_key", "invalid_folder", "invalid_schema", "meta_extra_key")
    )


def _forge(folder, change) -> None:
    import json

    path = folder / "results.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def _set(path: str, value):
    def change(record):
        *keys, last = path.split("/")
        target = record
        for key in keys:
            target = target[key]
        target[last] = value

    return change


FORGERIES = {
    # what a submitter may change by hand -> the start of the reason the site gives
    "mean": (
        _set("metrics/reliability.teacher_forced/mean", 1.0),
        "reliability.teacher_forced: the record says mean 1.0",
    ),
    "count": (_set("metrics/locality.teacher_forced/count", 2000), "locality.teacher_forced: the record says mean"),
    "breakdown": (
        _set("breakdowns/locality.teacher_forced/nq/mean", 1.0),
        "breakdown locality.teacher_forced [nq]: not the mean of its rows",
    ),
    "aggregate": (_set("aggregates/counterfact.score", 0.99), "counterfact.score: the record says 0.99"),
    "invented metric": (
        _set("metrics/portability.generation", {"mean": 1.0, "count": 20}),
        "portability.generation: no per-edit column in the rows",
    ),
    "rows file elsewhere": (_set("rows_file", "../rome-zsre/results.rows.parquet"), "rows_file '../rome-zsre"),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_record_whose_figures_are_not_its_rows_is_listed_invalid(tmp_path, forgery):
    """A hand-edited results.json (the per-edit rows untouched) is not shown: the site lists it as
    invalid with the reason, and every honest entry is still shown."""
    change, reason = FORGERIES[forgery]
    submissions = make_submissions(tmp_path / "submissions")
    slug = "rome-cf" if forgery == "aggregate" else "rome-zsre"
    _forge(submissions / slug, change)
    report = build_site(submissions, tmp_path / "site")
    reasons = {i.slug: i.reason for i in report.invalid}
    assert slug not in {e.slug for e in report.entries} and len(report.entries) == len(ENTRIES) - 1
    assert reasons[slug].startswith("results.json: ") and reason in reasons[slug], reasons[slug]


def test_rows_changed_or_missing_after_scoring_are_listed_invalid(tmp_path):
    import pandas as pd

    submissions = make_submissions(tmp_path / "submissions")
    rows = submissions / "rome-zsre" / "results.rows.parquet"
    frame = pd.read_parquet(rows)
    frame.loc[0, "reliability.teacher_forced"] = 1.0
    frame.to_parquet(rows, index=False)  # rows forged to agree with nothing: the sha256 catches it
    (submissions / "memit-zsre" / "results.rows.parquet").unlink()
    report = build_site(submissions, tmp_path / "site")
    reasons = {i.slug: i.reason for i in report.invalid}
    assert "its sha256 is not the rows_sha256 the record gives" in reasons["rome-zsre"]
    assert reasons["memit-zsre"] == "results.json: its per-edit rows results.rows.parquet are missing"


ZSRE_SINGLE = {"base-zsre", "rome-zsre", "memit-zsre", "ft-l-zsre", "xss-zsre"}


def test_a_table_whose_entries_have_wild_figures_shows_both_and_ranks_by_wild(tmp_path):
    from _leaderboard_fixtures import WILD_FACTOR

    report = build_site(make_submissions(tmp_path / "submissions", wild=ZSRE_SINGLE), tmp_path / "site")
    table = next(t for t in report.tables if (t.benchmark, t.mode) == ("zsre", "single"))
    assert table.wild and table.ranked_by == "wild"
    by_wild = sorted(table.entries, key=lambda e: -e.average_wild)
    assert [e.slug for e in table.entries] == [e.slug for e in by_wild]
    rome = next(e for e in table.entries if e.slug == "rome-zsre")
    assert rome.average_wild == pytest.approx(rome.average * WILD_FACTOR["rome-zsre"])
    assert table.entries[0].slug != "rome-zsre"  # first by teacher-forced average, not by WILD
    labels = [c["label"] for c in table.columns]
    assert labels[:4] == ["Reliability", "Reliability (WILD)", "Generalization", "Generalization (WILD)"]
    assert table.gap is not None and len(table.gap["bars"]) == len(ZSRE_SINGLE)
    index = (tmp_path / "site" / "index.html").read_text()
    assert 'data-rank="wild"' in index and ">Average (WILD)</th>" in index and 'id="wild-definition"' in index
    assert 'class="gap-line"' in index and '<option value="wild" selected>' in index
    other = next(t for t in report.tables if t.benchmark == "counterfact")
    assert not other.wild and other.gap is None  # no entry there has WILD figures: as before
    markdown = markdown_tables(tmp_path / "submissions")
    assert "| Average | Average (WILD) |" in markdown and "Average (WILD) = the same mean" in markdown


def test_a_table_where_only_some_entries_have_wild_figures_ranks_teacher_forced(tmp_path):
    report = build_site(make_submissions(tmp_path / "submissions", wild={"rome-zsre"}), tmp_path / "site")
    table = next(t for t in report.tables if (t.benchmark, t.mode) == ("zsre", "single"))
    assert table.wild and table.ranked_by == "teacher_forced" and table.entries[0].slug == "rome-zsre"
    assert [e.average_wild is None for e in table.entries].count(False) == 1


# ---------------------------------------------------------------------------- lifelong curves (meta.curve)

REL, GEN, LOC = "reliability.teacher_forced", "generalization.teacher_forced", "locality.teacher_forced"
POLYLINE = re.compile(r'<polyline class="curve-line( dashed)?" points="([^"]*)" stroke="([^"]*)"/>')


def _unmap(plot: dict, points: str) -> list[tuple[float, float]]:
    """A polyline's `points` back to (edits made, mean 0..1) through the plot's frame."""
    out = []
    for pair in points.split():
        x, y = map(float, pair.split(","))
        edits = (x - plot["left"]) / (plot["right"] - plot["left"]) * plot["max_edits"]
        out.append((edits, (plot["bottom"] - y) / (plot["bottom"] - plot["top"])))
    return out


def _close(got, want) -> bool:
    return len(got) == len(want) and all(
        e == pytest.approx(we, abs=0.01) and v == pytest.approx(wv, abs=0.001) for (e, v), (we, wv) in zip(got, want)
    )


def _sequential_site(root, curved: set[str]):
    """AlphaEdit (WILD too), MEMIT and ROME run 20 edits in a row; those in `curved` carry a curve
    taken every 5 edits (AlphaEdit's point after 20 edits says 0.5: the final record replaces it)."""
    from _leaderboard_fixtures import add_sequential, curve_points

    alpha = curve_points(
        5,
        {
            REL: [0.98, 0.96, 0.95, 0.5],
            GEN: [None, 0.9, 0.88, 0.5],  # no value after 5 edits: no point there
            LOC: [0.99, 0.97, 0.95, 0.5],
            "reliability.wild": [0.6, 0.5, 0.45, 0.5],
            "generalization.wild": [0.5, 0.4, 0.4, 0.5],
            "locality.wild": [0.9, None, None, None],
            "portability.teacher_forced": [0.3, 0.3, 0.3, 0.3],  # not drawn
        },
        evaluated=10,
    )
    memit = curve_points(5, {REL: [0.9, 0.6, 0.3], GEN: [0.8, 0.5, 0.2], LOC: [0.95, 0.7, 0.5]})
    subs = root / "submissions"
    title = "{}, 20 in a row".format
    alpha = alpha if "alphaedit-seq" in curved else None
    add_sequential(subs, "alphaedit-seq", "alphaedit", title("AlphaEdit"), 0.93, 0.9, alpha, wild=0.5)
    add_sequential(subs, "memit-seq", "memit", title("MEMIT"), 0.15, 0.4, memit if "memit-seq" in curved else None)
    add_sequential(subs, "rome-seq", "rome", title("ROME"), 0.1, 0.3, None)
    return build_site(subs, root / "site"), root / "site"


@pytest.fixture(scope="module")
def curved_site(tmp_path_factory):
    return _sequential_site(tmp_path_factory.mktemp("curves"), {"alphaedit-seq", "memit-seq"})


def test_an_entry_with_a_curve_draws_its_metrics_by_edits_made(curved_site):
    report, site = curved_site
    [table] = report.tables
    alpha = next(e for e in table.entries if e.slug == "alphaedit-seq")
    plot, record = alpha.curve_plot, alpha.record
    labels = [line["label"] for line in plot["lines"]]
    assert labels == ["Reliability", "Reliability (WILD)", "Generalization", "Generalization (WILD)"] + [
        "Locality",
        "Locality (WILD)",
    ]
    page = (site / "entries" / "alphaedit-seq.html").read_text()
    lines = POLYLINE.findall(page)
    assert [bool(dashed) for dashed, _, _ in lines] == [False, True] * 3  # WILD dashed, in its family's colour
    assert [colour for _, _, colour in lines[::2]] == [colour for _, _, colour in lines[1::2]]
    assert len({colour for _, _, colour in lines}) == 3
    drawn = {label: _unmap(plot, points) for label, (_, points, _) in zip(labels, lines)}
    # the curve's points after 5, 10 and 15 edits, then the final record (not the curve's 0.5 after 20)
    final = record.value(REL)
    assert final != pytest.approx(0.5, abs=0.01)
    assert _close(drawn["Reliability"], [(5, 0.98), (10, 0.96), (15, 0.95), (20, final)])
    assert _close(drawn["Generalization"], [(10, 0.9), (15, 0.88), (20, record.value(GEN))])  # None: no point
    assert _close(
        drawn["Reliability (WILD)"], [(5, 0.6), (10, 0.5), (15, 0.45), (20, record.value("reliability.wild"))]
    )
    assert _close(drawn["Locality (WILD)"], [(5, 0.9), (20, record.value("locality.wild"))])
    assert (
        page.count('class="curve-dot"') == sum(len(points.split()) for _, points, _ in lines) == 4 + 4 + 3 + 4 + 4 + 2
    )
    assert "<title>Reliability after 10 edits: 96.0 (10 evaluated)</title>" in page
    caption = re.search(r'<span class="cap">(Lifelong curve[^<]*)</span>', page).group(1)
    assert "the mean over the edits made so far (up to 10 evaluated), after every 5 edits" in caption
    assert "the last point is the final record (all 20 edits)" in caption
    assert [t["label"] for t in plot["xticks"]] == ["0", "5", "10", "15", "20"]


def test_an_entry_without_a_curve_draws_none(curved_site, built):
    report, site = curved_site
    rome = next(e for e in report.tables[0].entries if e.slug == "rome-seq")
    assert rome.curve_plot is None
    page = (site / "entries" / "rome-seq.html").read_text()
    assert "<polyline" not in page and "Lifelong curve" not in page
    # the single and batch tables of the other fixtures: no curve anywhere
    report, site = built
    assert all(t.curves is None and all(e.curve_plot is None for e in t.entries) for t in report.tables)
    assert "<polyline" not in (site / "index.html").read_text()
    assert "<polyline" not in (site / "entries" / "rome-zsre.html").read_text()


def test_a_sequential_table_with_two_curves_draws_their_reliability_together(curved_site):
    report, site = curved_site
    [table] = report.tables
    plot = table.curves
    by_slug = {e.slug: e for e in table.entries}
    curved = [e for e in table.entries if e.slug != "rome-seq"]  # in table order
    assert [line["label"] for line in plot["lines"]] == [e.submission.title for e in curved]
    assert [line["href"] for line in plot["lines"]] == [f"entries/{e.slug}.html" for e in curved]
    index = (site / "index.html").read_text()
    lines = POLYLINE.findall(index)
    assert len(lines) == 2 and not any(dashed for dashed, _, _ in lines)
    drawn = {line["label"]: _unmap(plot, points) for line, (_, points, _) in zip(plot["lines"], lines)}
    memit, alpha = by_slug["memit-seq"], by_slug["alphaedit-seq"]
    assert _close(drawn[memit.submission.title], [(5, 0.9), (10, 0.6), (15, 0.3), (20, memit.record.value(REL))])
    assert _close(drawn[alpha.submission.title], [(5, 0.98), (10, 0.96), (15, 0.95), (20, alpha.record.value(REL))])
    assert f'<a href="entries/memit-seq.html">{memit.submission.title}</a></li>' in index  # the legend


def test_a_sequential_table_with_one_curve_draws_no_combined_plot(tmp_path):
    report, site = _sequential_site(tmp_path, {"alphaedit-seq"})
    [table] = report.tables
    assert table.curves is None
    assert "<polyline" not in (site / "index.html").read_text()
    assert len(POLYLINE.findall((site / "entries" / "alphaedit-seq.html").read_text())) == 6  # its own plot stays


def test_curve_points_are_read_defensively():
    """`meta.curve` is not checked against the rows: points outside 1..n_edits and values that are
    not fractions are left out; points are drawn by edits made; an uneven cadence is spelled out."""
    from editeval.leaderboard import curves
    from editeval.leaderboard.records import RecordView, Stat

    curve = [
        {"edits": 12, "evaluated": 12, "metrics": {REL: 0.5}},
        {"edits": 4, "evaluated": 4, "metrics": {REL: 0.8, LOC: "0.9"}},
        {"edits": 30, "evaluated": 30, "metrics": {REL: 0.1}},  # more edits than the run made
        {"edits": 10, "evaluated": 10, "metrics": {REL: 5.0, LOC: 0.7}},  # 500%: left out
    ]
    record = RecordView(raw={}, stats={REL: Stat(REL, 0.25), LOC: Stat(LOC, 0.6)}, meta={"n_edits": 20, "curve": curve})
    assert [(p.edits, p.values.get(REL)) for p in curves.series(record)] == [
        (4, 0.8),
        (10, None),
        (12, 0.5),
        (20, 0.25),
    ]
    plot = curves.entry_plot(record)
    rel, loc = plot["lines"]
    assert _close(_unmap(plot, rel["points"]), [(4, 0.8), (12, 0.5), (20, 0.25)])
    assert _close(_unmap(plot, loc["points"]), [(10, 0.7), (20, 0.6)])
    assert "after 4, 10, 12 edits" in plot["caption"] and "(all evaluated)" in plot["caption"]
    assert curves.entry_plot(RecordView(raw={}, stats={}, meta={"n_edits": 20, "curve": None})) is None
