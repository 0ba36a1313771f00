"""`editeval submit new [DIR]` writes a filled-in submission.yaml; `editeval submit check DIR` validates one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Leaderboard submissions: write a template, validate a submission folder.", no_args_is_help=True)


@app.command("new")
def new(
    directory: Annotated[Path, typer.Argument(help="submission folder to create")] = Path("submissions/my-entry"),
    base: str = typer.Option("smollm2-135m", help="base model (a registered name)"),
    benchmark: str = typer.Option("zsre", help="benchmark name"),
    split: str = typer.Option("edit", help="split"),
    method: str = typer.Option("rome", help="method name"),
    kind: str = typer.Option("checkpoint", help="what is scored: checkpoint | hub | method | unedited"),
    fingerprint: bool = typer.Option(True, help="load the base model to fill in its fingerprint"),
    force: bool = typer.Option(False, help="overwrite an existing submission.yaml"),
) -> None:
    """Write DIR/submission.yaml, filled in with the given choices and commented."""
    from editeval.leaderboard.manifest import write_template

    path = write_template(
        directory,
        base=base,
        benchmark=benchmark,
        split=split,
        method=method,
        kind=kind,
        fingerprint=fingerprint,
        force=force,
    )
    typer.echo(f"wrote {path}: edit it, then run: editeval submit check {directory}")


@app.command("check")
def check(
    directory: Annotated[Path, typer.Argument(help="submission folder holding submission.yaml")],
    files: bool = typer.Option(True, help="also check the checkpoint / hparams files it names"),
) -> None:
    """Validate a submission folder: schema, paths, file types and sizes. Exit 2 on problems."""
    from editeval.leaderboard.checks import check_submission
    from editeval.leaderboard.manifest import SubmissionError

    try:
        checked = check_submission(directory, check_files=files)
    except SubmissionError as err:
        for line in str(err).splitlines():
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None
    sub = checked.submission
    typer.echo(
        f"ok: {checked.slug}: {sub.title!r} ({sub.method.name} on {sub.base_model.name}, "
        f"{sub.benchmark.name}/{sub.benchmark.split}, {sub.mode_label}, {sub.num_edits} edits, "
        f"scores {sub.score.kind})"
    )
    if sub.score.kind == "checkpoint" and files and not checked.fits_base_checked:
        typer.echo(
            f"note: base model '{sub.base_model.name}' is not on this machine yet: the checkpoint's tensor names, "
            "shapes and dtypes are checked against it when it is scored"
        )
