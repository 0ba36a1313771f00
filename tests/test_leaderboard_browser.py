"""The built site in a real browser: Debian's headless Chromium driven by Playwright, from file://.

Install what it needs with scripts/install_browser.sh. Screenshots go to the test's tmp_path.
The escaping checks run with the pages' Content-Security-Policy bypassed: the CSP alone would stop
an injected inline script, so only escaping keeps `window.__pwned` undefined there."""

from __future__ import annotations

import shutil

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

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian chromium is not installed (run scripts/install_browser.sh)"
)

ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from editeval.leaderboard import build_site

    root = tmp_path_factory.mktemp("browser")
    build_site(make_submissions(root / "submissions"), root / "site")
    return root / "site"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (scripts/install_browser.sh)"
    )
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def _watched(page):
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.editeval_errors = errors
    return page


@pytest.fixture(scope="module")
def page(browser):
    return _watched(browser.new_page(viewport={"width": 1500, "height": 1000}))


@pytest.fixture(scope="module")
def page_without_csp(browser):
    context = browser.new_context(bypass_csp=True, viewport={"width": 1500, "height": 1000})
    yield _watched(context.new_page())
    context.close()


def column(page, table_id: str, header: str) -> list[str]:
    """The text of one column, in row order, of the visible rows (of the Entry column: the title's
    link, without the verified / self-reported tag beside it)."""
    return page.eval_on_selector(
        f"#{table_id}",
        """(table, header) => {
            const idx = [...table.tHead.rows[0].cells].findIndex(c => c.textContent.trim() === header);
            const text = c => (header === "Entry" ? c.querySelector("a") : c).textContent.trim();
            return [...table.tBodies[0].rows].filter(r => !r.hidden).map(r => text(r.cells[idx]));
        }""",
        header,
    )


def numbers(values: list[str]) -> list[float]:
    return [float(v) for v in values if v not in ("", "—")]


def test_table_sort_filter_and_entry_page(site, page, tmp_path):
    page.goto((site / "index.html").as_uri())
    table = "t-zsre-edit-single-table"
    zsre_single = [slug for slug, e in ENTRIES.items() if e[2] == "zsre" and e[3] == "single"]
    assert page.locator(f"#{table} tbody tr").count() == len(zsre_single)
    titles = column(page, table, "Entry")
    assert "ROME (reference)" in titles and "SmolLM2-135M, unedited" in titles
    assert XSS_TITLE in titles  # the <script> title is shown as text ...
    assert page.evaluate("window.__pwned") is None  # ... and never ran
    averages = numbers(column(page, table, "Average"))
    assert averages == sorted(averages, reverse=True)  # ranked by the average
    page.screenshot(path=str(tmp_path / "leaderboard-index.png"), full_page=True)
    assert (tmp_path / "leaderboard-index.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # clicking a header re-orders the rows: high-first, then low-first
    header = page.locator(f"#{table} thead th", has_text="Locality")
    header.click()
    loc = numbers(column(page, table, "Locality"))
    assert loc == sorted(loc, reverse=True) and len(loc) == len(zsre_single)
    assert column(page, table, "Entry")[0] == "SmolLM2-135M, unedited"  # locality 100 on top
    header.click()
    assert numbers(column(page, table, "Locality")) == sorted(loc)
    assert header.get_attribute("aria-sort") == "ascending"
    page.locator(f"#{table} thead th", has_text="Method").click()
    methods = column(page, table, "Method")
    assert methods == sorted(methods)

    # the filter box hides rows that do not match
    page.fill(f"input[data-table='{table}']", "memit")
    assert column(page, table, "Entry") == ["MEMIT (reference)"]
    page.fill(f"input[data-table='{table}']", "")
    assert len(column(page, table, "Entry")) == len(zsre_single)

    # invalid entries are listed, the scatter has one point per entry
    assert page.locator("#invalid tbody tr").count() == 3
    assert page.locator("#t-zsre-edit-single svg circle.dot").count() == len(zsre_single)

    # an entry page opens from its row
    page.click(f"#{table} a:text('ROME (reference)')")
    page.wait_for_load_state()
    assert page.url.endswith("entries/rome-zsre.html")
    assert page.locator("h1").inner_text() == "ROME (reference)"
    assert page.locator("text=Per-kind breakdown").count() == 1
    assert page.locator("text=portability.one_hop.teacher_forced").count() == 1
    page.screenshot(path=str(tmp_path / "leaderboard-entry.png"), full_page=True)

    # the XSS entry's own page shows its title as text too
    page.goto((site / "entries" / "xss-zsre.html").as_uri())
    assert page.locator("h1").inner_text() == XSS_TITLE
    assert page.evaluate("window.__pwned") is None
    assert not page.editeval_errors, page.editeval_errors


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory):
    from editeval.leaderboard import build_site

    root = tmp_path_factory.mktemp("hostile-browser")
    build_site(make_hostile_submissions(root / "submissions"), root / "site")
    return root / "site"


def test_markup_in_every_submitted_string_never_runs(hostile_site, page_without_csp, tmp_path):
    page = page_without_csp
    # the control: with the CSP bypassed, markup that reaches a page does run
    page.set_content("""<p>x</p><img src=x onerror="self['__pwned']=2">""")
    page.wait_for_function("self.__pwned === 2")
    page.evaluate("delete self.__pwned")

    h = {field: hostile(tag, short=field == "manifest_method") for field, tag in HOSTILE_TAGS.items()}
    page.goto((hostile_site / "index.html").as_uri())
    page.wait_for_load_state("load")
    assert page.evaluate("self.__pwned") is None
    assert page.locator("img").count() == 0 and page.locator("script").count() == 1
    table = page.locator("table.sortable")
    assert table.locator("td.method").inner_text() == h["meta_method"]  # shown as text, whole
    assert table.locator("td.title a").inner_text() == h["title"]
    assert page.locator("section.board h2").inner_text().startswith(f"{h['meta_benchmark']}/{h['meta_config']}")
    metrics = page.eval_on_selector_all("th[data-metric]", "ths => ths.map(th => th.getAttribute('data-metric'))")
    assert f"portability.{h['portability_kind']}.teacher_forced" in metrics  # the attribute holds it whole
    folders = page.locator("#invalid tbody td:first-child").all_inner_texts()
    assert hostile(HOSTILE_TAGS["invalid_folder"], slash=False) in folders
    assert page.evaluate("""() => document.getElementById(document.querySelector('input.filter').dataset.table)
                                 === document.querySelector('table.sortable')""")  # the hostile id found back
    page.locator("input.filter").fill(HOSTILE_TAGS["meta_method"])
    assert table.locator("tbody tr:not([hidden])").count() == 1
    page.locator("input.filter").fill("no such entry")
    assert table.locator("tbody tr:not([hidden])").count() == 0
    page.screenshot(path=str(tmp_path / "hostile-index.png"), full_page=True)

    page.goto((hostile_site / "entries" / f"{HOSTILE_SLUG}.html").as_uri())
    page.wait_for_load_state("load")
    assert page.evaluate("self.__pwned") is None
    assert page.locator("img").count() == 0 and page.locator("script").count() == 1
    assert page.locator("h1").inner_text() == h["title"] and page.title() == f"{h['title']} · editeval leaderboard"
    body = page.locator("body").inner_text()
    for field in (
        "description",
        "contact",
        "author0",
        "author1",
        "manifest_method",
        "base_model_name",
        "score_hparams",
        "meta_edited_model",
        "meta_extra_value",
        "hparams_hash",
    ):
        assert h[field] in body, field
    assert not page.editeval_errors, page.editeval_errors


def test_the_rank_by_switch_reorders_by_either_average(tmp_path, page):
    """A table with WILD figures opens ranked by the WILD average; the switch re-ranks it by the
    teacher-forced one (ROME: first teacher-forced, last under WILD here) and back."""
    from _leaderboard_fixtures import make_submissions

    from editeval.leaderboard import build_site

    zsre_single = {"base-zsre", "rome-zsre", "memit-zsre", "ft-l-zsre", "xss-zsre"}
    build_site(make_submissions(tmp_path / "submissions", wild=zsre_single), tmp_path / "site")
    page.goto((tmp_path / "site" / "index.html").as_uri())
    table = "t-zsre-edit-single-table"
    wild = numbers(column(page, table, "Average (WILD)"))
    assert wild == sorted(wild, reverse=True) and column(page, table, "Entry")[0] != "ROME (reference)"
    page.select_option(f"label.rank-by select[data-table='{table}']", "teacher_forced")
    averages = numbers(column(page, table, "Average"))
    assert averages == sorted(averages, reverse=True) and column(page, table, "Entry")[0] == "ROME (reference)"
    page.select_option(f"label.rank-by select[data-table='{table}']", "wild")
    assert numbers(column(page, table, "Average (WILD)")) == wild
    assert page.locator("figure.gap circle.gap-wild").count() == len(zsre_single)
    assert not page.editeval_errors


def test_lifelong_curves_render_from_file(tmp_path, page):
    """The curve plots are inline SVG: from file://, under the pages' CSP, every line is drawn (a
    real box), WILD lines dashed by the stylesheet, and nothing logs an error."""
    from _leaderboard_fixtures import add_sequential, curve_points

    from editeval.leaderboard import build_site

    every5 = {
        "reliability.teacher_forced": [0.95, 0.9, 0.85],
        "generalization.teacher_forced": [0.9, 0.85, 0.8],
        "locality.teacher_forced": [0.95, 0.9, 0.9],
    }
    collapse = {column: [v / 2 ** (k + 1) for k, v in enumerate(values)] for column, values in every5.items()}
    wild = {column.replace("teacher_forced", "wild"): [v / 2 for v in values] for column, values in every5.items()}
    subs = tmp_path / "submissions"
    alpha = curve_points(5, {**every5, **wild})
    add_sequential(subs, "alphaedit-seq", "alphaedit", "AlphaEdit", 0.9, 0.9, alpha, wild=0.5)
    add_sequential(subs, "memit-seq", "memit", "MEMIT", 0.1, 0.3, curve_points(5, collapse))
    build_site(subs, tmp_path / "site")

    page.goto((tmp_path / "site" / "index.html").as_uri())
    boxes = page.eval_on_selector_all("figure.curve polyline", "ls => ls.map(l => l.getBoundingClientRect().height)")
    assert len(boxes) == 2 and all(h > 10 for h in boxes)  # both fall: each line spans some height
    assert page.locator("figure.curve ul.legend a").all_inner_texts() == ["AlphaEdit", "MEMIT"]

    page.goto((tmp_path / "site" / "entries" / "alphaedit-seq.html").as_uri())
    dashes = page.eval_on_selector_all(
        "#lifelong-curve polyline", "ls => ls.map(l => getComputedStyle(l).strokeDasharray)"
    )
    assert [d != "none" for d in dashes] == [False, True] * 3  # teacher-forced solid, WILD dashed
    page.screenshot(path=str(tmp_path / "lifelong-entry.png"), full_page=True)
    assert not page.editeval_errors, page.editeval_errors
