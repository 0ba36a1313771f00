"""`editeval leaderboard build` renders the static site; `editeval leaderboard serve` serves it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from editeval.commands import options as opt
from editeval.leaderboard.verify import TOLERANCE
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


@app.command("verify")
def verify(
    slugs: Annotated[list[str] | None, typer.Argument(help="submission folder names to verify")] = None,
    all_submissions: Annotated[bool, typer.Option("--all", help="every scored submission")] = False,
    changed: Annotated[
        str | None, typer.Option("--changed", help="the submissions whose files changed since this git ref")
    ] = None,
    submissions: Annotated[Path, typer.Option(help="folder of submission folders")] = DEFAULT_SUBMISSIONS,
    tolerance: Annotated[float, typer.Option(min=0.0, help="largest difference of a per-edit value")] = TOLERANCE,
    device: opt.Device = "auto",
    dtype: opt.Dtype = "float32",
    datasets_dir: opt.DatasetsDir = None,
    threads: opt.Threads = None,
    progress: opt.Progress = True,
) -> None:
    """Re-score submissions in a temporary copy with this editeval and compare their per-edit rows;
    write each one's verification.json. Exit 2 when any is not reproduced."""
    from editeval.errors import EditevalError
    from editeval.leaderboard.verify import verify_submission

    runtime = opt.resolve_runtime(
        device=device, dtype=dtype, threads=threads, progress=progress, datasets_dir=datasets_dir
    )
    names = _chosen(slugs or [], all_submissions, changed, submissions)
    failed = []
    for slug in names:
        verdict = verify_submission(submissions / slug, runtime=runtime, tolerance=tolerance)
        typer.echo(f"{slug}: {verdict.result}" + (f": {verdict.reason}" if verdict.reason else ""))
        if not verdict.verified:
            failed.append(slug)
    typer.echo(f"{len(names) - len(failed)} verified, {len(failed)} not reproduced")
    if failed:
        raise EditevalError(f"not reproduced: {', '.join(failed)} (reasons above and in their verification.json)")


def _chosen(slugs: list[str], all_submissions: bool, changed: str | None, submissions: Path) -> list[str]:
    """The submissions to verify: named, all scored ones, or those a git diff touches."""
    import subprocess

    from editeval.errors import EditevalError
    from editeval.leaderboard.manifest import RESULTS

    if sum(bool(x) for x in (slugs, all_submissions, changed)) != 1:
        raise EditevalError("give submission names, or --all, or --changed GIT_REF (one of them)")
    if not submissions.is_dir():
        raise EditevalError(f"submissions folder not found: {submissions}")
    if all_submissions:
        return sorted(p.name for p in submissions.iterdir() if (p / RESULTS).is_file())
    if changed:
        done = subprocess.run(
            ["git", "diff", "--name-only", changed, "--", "."], cwd=submissions, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise EditevalError(
                f"--changed {changed}: git diff failed: {(done.stderr.strip().splitlines() or [''])[0]}"
            )
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=submissions, capture_output=True, text=True)
        root = Path(top.stdout.strip())
        touched = {(root / line).resolve() for line in done.stdout.splitlines() if line.strip()}
        slugs = sorted(
            {p.relative_to(submissions.resolve()).parts[0] for p in touched if p.is_relative_to(submissions.resolve())}
        )
        return [s for s in slugs if (submissions / s / RESULTS).is_file()]
    missing = [s for s in slugs if not (submissions / s).is_dir()]
    if missing:
        raise EditevalError(f"no submission folder {missing[0]} in {submissions}")
    return slugs


@app.command("serve")
def serve(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1 (0: any free port)")] = 8000,
    site: Annotated[Path, typer.Option("--dir", help="the built site")] = DEFAULT_SITE,
) -> None:
    """Serve the built site on localhost (Ctrl-C stops)."""
    from editeval.leaderboard import serve as serve_site

    serve_site(site, port)
