"""Collect the scored submissions, group them into tables, render the static site."""

from __future__ import annotations

import functools
import http.server
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import yaml

from editeval.errors import EditevalError
from editeval.evaluation.specs import COUNTERFACT_AGGREGATE, TEACHER_FORCED, MetricName
from editeval.leaderboard import curves, protocols, records
from editeval.leaderboard.checks import load_submission
from editeval.leaderboard.manifest import MANIFEST, RESULTS, SLUG_RE, Submission, SubmissionError
from editeval.leaderboard.verify import VERIFIED, read_stamp

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SITE_MARKER = ".editeval-site"  # only folders holding this marker (or empty ones) are replaced

# headline columns: (key, label, metric name); portability kinds are added per table
HEADLINE = [
    ("reliability", "Reliability", str(MetricName("reliability", TEACHER_FORCED))),
    ("generalization", "Generalization", str(MetricName("generalization", TEACHER_FORCED))),
    ("locality", "Locality", str(MetricName("locality", TEACHER_FORCED))),
    ("portability", "Portability", str(MetricName("portability", TEACHER_FORCED))),
]
# shown when a table's entries have them (not part of the average)
EXTRA = [("cf_score", "CF score", str(COUNTERFACT_AGGREGATE))]
AVERAGE_OF = ("reliability", "generalization", "locality", "portability")
AVERAGE_DEFINITION = (
    "Average = the arithmetic mean of Reliability, Generalization, Locality and Portability "
    "(teacher-forced token accuracy, ×100), over those of the four that the table's benchmark "
    "measures; an entry missing one of them gets no average. Tables are ranked by it."
)
FLUENCY = str(MetricName("fluency", "ngram_entropy"))
RELIABILITY, LOCALITY = HEADLINE[0][2], HEADLINE[2][2]
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]


@dataclass
class Entry:
    slug: str
    submission: Submission
    manifest_text: str
    record: records.RecordView
    average: float | None = None
    average_wild: float | None = None  # the same mean over the WILD figures (`protocols`)
    verification: dict | None = None  # the stamp of `editeval leaderboard verify` for this record, if any
    curve_plot: dict | None = None  # its lifelong curve (`curves.entry_plot`), when the record has one

    @property
    def verified(self) -> bool:
        return bool(self.verification) and self.verification.get("result") == VERIFIED

    @property
    def mode(self) -> str:
        return self.record.meta.get("mode") or self.submission.mode

    @property
    def group(self) -> tuple[str, str, str]:
        return self.record.benchmark_label, self.record.split, self.mode

    @property
    def method(self) -> str:
        return self.record.method or self.submission.method.name


@dataclass
class Invalid:
    slug: str
    reason: str


@dataclass
class Table:
    benchmark: str
    split: str
    mode: str
    entries: list[Entry]
    columns: list[dict]  # {key, label, metric}
    scatter: dict | None = None
    wild: bool = False  # its entries carry WILD figures: the WILD columns, average and gap plot are shown
    ranked_by: str = "teacher_forced"  # or "wild": every entry has a WILD average
    gap: dict | None = None  # teacher-forced vs WILD reliability per entry (`protocols.gap_plot`)
    curves: dict | None = None  # sequential: the entries' reliability by edits made (`curves.table_plot`)
    score_label: str = "Average"  # the ranking column (a case benchmark's: its headline metric)
    score_definition: str = AVERAGE_DEFINITION
    unit: str = "Edits"  # what the entries count (a case benchmark's: cases)

    @property
    def anchor(self) -> str:
        return "t-" + "-".join(part.replace("/", "-") for part in (self.benchmark, self.split, self.mode))


@dataclass
class SiteReport:
    out_dir: Path
    entries: list[Entry] = field(default_factory=list)
    invalid: list[Invalid] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


# ----------------------------------------------------------------------------- collecting


def collect(submissions_dir: Path) -> tuple[list[Entry], list[Invalid]]:
    """Every submission folder: a valid scored entry, or an invalid one with its reason."""
    entries: list[Entry] = []
    invalid: list[Invalid] = []
    if not submissions_dir.is_dir():
        raise EditevalError(f"submissions folder not found: {submissions_dir}")
    for folder in sorted(p for p in submissions_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        slug = folder.name
        if not SLUG_RE.match(slug):
            invalid.append(Invalid(slug, "folder name is not a valid slug"))
            continue
        try:
            submission = load_submission(folder)
        except SubmissionError as err:
            invalid.append(Invalid(slug, "; ".join(err.problems)))
            continue
        results = folder / RESULTS
        if not results.is_file():
            invalid.append(Invalid(slug, f"not scored yet (no {RESULTS}; run: editeval score submissions/{slug})"))
            continue
        try:
            view = records.read(results)
        except EditevalError as err:
            invalid.append(Invalid(slug, f"{RESULTS}: {err}"))
            continue
        stamp = read_stamp(folder)
        if stamp is not None and stamp.get("result") != VERIFIED:
            invalid.append(Invalid(slug, f"not reproduced by `editeval leaderboard verify`: {stamp.get('reason')}"))
            continue
        entries.append(
            Entry(slug, submission, (folder / MANIFEST).read_text(encoding="utf-8"), view, verification=stamp)
        )
    return entries, invalid


def _scatter(entries: list[Entry]) -> dict | None:
    """Reliability (y) vs locality (x), both 0-100, one coloured point per entry, colour per method."""
    points = [e for e in entries if e.record.value(LOCALITY) is not None and e.record.value(RELIABILITY) is not None]
    if not points:
        return None
    width, height, pad = 420, 320, 44
    plot_w, plot_h = width - pad - 16, height - pad - 16
    methods = sorted({e.method for e in points})
    colour = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}

    def x(v: float) -> float:
        return round(pad + v * plot_w, 1)

    def y(v: float) -> float:
        return round(16 + (1 - v) * plot_h, 1)

    ticks = [{"v": t, "label": f"{round(t * 100)}", "x": x(t), "y": y(t)} for t in (0, 0.25, 0.5, 0.75, 1)]
    dots = [
        {
            "x": x(e.record.value(LOCALITY)),
            "y": y(e.record.value(RELIABILITY)),
            "colour": colour[e.method],
            "slug": e.slug,
            "method": e.method,
            "title": e.submission.title,
            "rel": 100 * e.record.value(RELIABILITY),
            "loc": 100 * e.record.value(LOCALITY),
        }
        for e in points
    ]
    return {
        "width": width,
        "height": height,
        "pad": pad,
        "left": x(0),
        "right": x(1),
        "top": y(1),
        "bottom": y(0),
        "ticks": ticks,
        "dots": dots,
        "legend": [{"method": m, "colour": colour[m]} for m in methods],
    }


def make_tables(entries: list[Entry]) -> list[Table]:
    groups: dict[tuple[str, str, str], list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.group, []).append(entry)
    tables = []
    for (benchmark, split, mode), members in sorted(groups.items()):
        case_table = protocols.CASE_TABLES.get(members[0].record.benchmark)
        if case_table is not None:
            tables.append(_case_table(benchmark, split, mode, members, case_table))
            continue
        measured = [key for key, _, metric in HEADLINE if any(e.record.value(metric) is not None for e in members)]
        columns = [{"key": key, "label": label, "metric": metric} for key, label, metric in HEADLINE if key in measured]
        kinds = sorted({k for e in members for k in e.record.kinds("portability")})
        insert_at = next((i + 1 for i, c in enumerate(columns) if c["key"] == "portability"), len(columns))
        columns[insert_at:insert_at] = [
            {
                "key": f"portability.{k}",
                "label": f"Port. {k.replace('_', ' ')}",
                "metric": str(MetricName("portability", TEACHER_FORCED, k)),
            }
            for k in kinds
        ]
        columns += [
            {"key": key, "label": label, "metric": metric}
            for key, label, metric in EXTRA
            if any(e.record.value(metric) is not None for e in members)
        ]
        columns = protocols.interleave(columns, members)
        averaged = [key for key, _, _ in HEADLINE if key in measured and key in AVERAGE_OF]
        for e in members:
            e.average, e.average_wild = protocols.averages(e, averaged)
        wild = any(e.average_wild is not None for e in members)
        ranked_by = "wild" if wild and all(e.average_wild is not None for e in members) else "teacher_forced"
        score = (lambda e: e.average_wild) if ranked_by == "wild" else (lambda e: e.average)
        members.sort(key=lambda e: (score(e) is None, -(score(e) or 0.0), e.slug))
        gap = protocols.gap_plot(members) if wild else None
        for e in members:
            e.curve_plot = curves.entry_plot(e.record)
        lifelong = curves.table_plot(members, PALETTE) if mode == "sequential" else None
        tables.append(
            Table(benchmark, split, mode, members, columns, _scatter(members), wild, ranked_by, gap, lifelong)
        )
    return tables


def _case_table(benchmark: str, split: str, mode: str, members: list[Entry], spec: protocols.CaseTable) -> Table:
    """A case benchmark's table: its authors' metrics, ranked by their headline metric."""
    columns = [
        {"key": metric, "label": label, "metric": metric}
        for metric, label in spec.columns
        if any(e.record.value(metric) is not None for e in members)
    ]
    for e in members:
        e.average, e.average_wild = e.record.value(spec.score), None
    members.sort(key=lambda e: (e.average is None, -(e.average or 0.0), e.slug))
    return Table(
        benchmark,
        split,
        mode,
        members,
        columns,
        score_label=spec.score_label,
        score_definition=spec.definition,
        unit=spec.unit,
    )


# ----------------------------------------------------------------------------- rendering


def _md_cell(text) -> str:
    """A submitted string as one Markdown table cell: on one line, pipes and markup escaped."""
    import html

    return html.escape(" ".join(str(text).split())).replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def markdown_tables(submissions_dir: str | os.PathLike) -> str:
    """The leaderboard's tables as Markdown (the same rows, order and average as the site), for
    papers and docs: `editeval leaderboard table`."""
    entries, invalid = collect(Path(submissions_dir))
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    out = []
    tables = make_tables(entries)
    for table in tables:
        out.append(f"### {_md_cell(table.benchmark)} / {_md_cell(table.split)} / {_md_cell(table.mode)}\n")
        wild = ["Average (WILD)"] if table.wild else []
        head = ["#", "entry", "method", table.unit.lower(), *[_md_cell(c["label"]) for c in table.columns]]
        head += [table.score_label, *wild]
        head.append("s/edit")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---:", "---", "---", "---:"] + ["---:"] * (len(head) - 4)) + "|")
        for rank, e in enumerate(table.entries, 1):
            spe = e.record.seconds_per_edit
            cells = [
                str(rank),
                _md_cell(e.submission.title),
                _md_cell(e.method),
                str(e.record.num_edits or "–"),
                *[pct(e.record.value(c["metric"])) for c in table.columns],
                pct(e.average),
                *([pct(e.average_wild)] if table.wild else []),
                "–" if spe is None else f"{spe:.2f}",
            ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out.append(AVERAGE_DEFINITION)
    if any(t.wild for t in tables):
        out.append("\n" + protocols.WILD_AVERAGE_DEFINITION)
    for definition in dict.fromkeys(t.score_definition for t in tables if t.score_definition != AVERAGE_DEFINITION):
        out.append("\n" + definition)
    if invalid:
        out.append("\nInvalid entries: " + "; ".join(f"{_md_cell(b.slug)} ({_md_cell(b.reason)})" for b in invalid))
    return "\n".join(out) + "\n"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name: submitted strings are untrusted
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"
    env.filters["num"] = _num
    env.filters["sortval"] = lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"
    env.filters["yaml"] = lambda v: yaml.safe_dump(v, sort_keys=False, allow_unicode=True).rstrip()
    return env


def _num(v, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:,.{digits}f}" if isinstance(v, float) else str(v)


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / SITE_MARKER).exists()):
            shutil.rmtree(tmp, ignore_errors=True)
            raise EditevalError(
                f"--out {out}: exists and is not a leaderboard site built by editeval; not replacing it"
            )
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def build_site(submissions_dir: str | os.PathLike, out_dir: str | os.PathLike) -> SiteReport:
    """Render the leaderboard from `submissions_dir/*/results.json` into `out_dir` (replaced whole)."""
    submissions_dir, out_dir = Path(submissions_dir), Path(out_dir)
    entries, invalid = collect(submissions_dir)
    tables = make_tables(entries)
    env = _environment()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a site is public
    try:
        (tmp / "entries").mkdir()
        shutil.copytree(HERE / "static", tmp / "static")
        common = {
            "average_definition": AVERAGE_DEFINITION,
            "wild_definition": protocols.WILD_AVERAGE_DEFINITION,
            "fluency_metric": FLUENCY,
        }
        (tmp / "index.html").write_text(
            env.get_template("index.html").render(
                tables=tables, invalid=invalid, n_entries=len(entries), root="", **common
            ),
            encoding="utf-8",
        )
        for table in tables:
            for rank, entry in enumerate(table.entries, 1):
                html = env.get_template("entry.html").render(entry=entry, table=table, rank=rank, root="../", **common)
                (tmp / "entries" / f"{entry.slug}.html").write_text(html, encoding="utf-8")
        (tmp / SITE_MARKER).write_text("built by editeval leaderboard build\n")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SiteReport(out_dir, entries, invalid, tables)


def make_server(
    site_dir: str | os.PathLike, port: int = 8000, host: str = "127.0.0.1"
) -> http.server.ThreadingHTTPServer:
    """An HTTP server for a built site (localhost only by default); `serve` runs it."""
    site_dir = Path(site_dir)
    if not (site_dir / "index.html").is_file():
        raise EditevalError(f"no site in {site_dir} (run: editeval leaderboard build --out {site_dir})")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site_dir))
    try:
        return http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as err:
        raise EditevalError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def serve(site_dir: str | os.PathLike, port: int = 8000, host: str = "127.0.0.1") -> None:
    """Serve a built site on localhost until interrupted."""
    server = make_server(site_dir, port, host)
    print(f"serving {site_dir} at http://{host}:{server.server_address[1]}/ (Ctrl-C to stop)", flush=True)
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
