"""`editeval leaderboard build` renders the static site; `editeval leaderboard serve` serves it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from editeval.runtime.paths import REPO_ROOT

app = typer.Typer(help="The leaderboard site, rendered from submissions/*/results.json.", no_args_is_help=True)

DEFAULT_SITE = REPO_ROOT / "leaderboard" / "site"
DEFAULT_SUBMISSIONS = REPO_ROOT / "submissions"


@app.command("build")
def build(
    out: Annotated[Path, typer.Option(help="output folder (replaced whole)")] = DEFAULT_SITE,
    submissions: Annotated[Path, typer.Option(help="folder of submission folders")] = DEFAULT_SUBMISSIONS,
) -> None:
    """Render the site from every submissions/*/results.json; invalid entries are listed as such."""
    from editeval.leaderboard import build_site

    report = build_site(submissions, out)
    typer.echo(
        f"built {out / 'index.html'}: {len(report.entries)} entries in {len(report.tables)} tables, "
        f"{len(report.invalid)} invalid"
    )
    for bad in report.invalid:
        typer.echo(f"  invalid: {bad.slug}: {bad.reason}", err=True)


@app.command("table")
def table(
    submissions: Annotated[Path, typer.Option(help="folder of submission folders")] = DEFAULT_SUBMISSIONS,
) -> None:
    """Print the leaderboard's tables as Markdown (same rows, order and average as the site)."""
    from editeval.leaderboard import markdown_tables

    typer.echo(markdown_tables(submissions), nl=False)


@app.command("serve")
def serve(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1 (0: any free port)")] = 8000,
    site: Annotated[Path, typer.Option("--dir", help="the built site")] = DEFAULT_SITE,
) -> None:
    """Serve the built site on localhost (Ctrl-C stops)."""
    from editeval.leaderboard import serve as serve_site

    serve_site(site, port)
