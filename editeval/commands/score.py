"""`editeval score`: score an edited checkpoint against its base model and write a results record."""

from __future__ import annotations

from pathlib import Path

import typer

from editeval.commands import options as opt
from editeval.runtime.settings import Runtime


def score(
    submission: Path = typer.Argument(None, help="a submission folder (submissions/<slug>): score it as it declares"),
    all_submissions: bool = typer.Option(
        False, "--all", help="score every submission whose results are missing or stale"
    ),
    force: bool = typer.Option(False, "--force", help="with --all: rescore every submission"),
    submissions_dir: Path = typer.Option(
        Path("submissions"), "--submissions", help="with --all: the submissions folder"
    ),
    model: str = typer.Option(None, "--model", help="edited checkpoint: a registered name or a local HF model folder"),
    base: str = typer.Option("smollm2-135m", "--base", help="the unedited base model (name or folder)"),
    benchmark: opt.Benchmark = "zsre",
    config: opt.BenchmarkConfig = None,
    split: opt.Split = "edit",
    limit: opt.Limit = None,
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="sequences per forward pass"),
    device: opt.Device = "auto",
    dtype: opt.Dtype = "float32",
    device_map: opt.DeviceMap = None,
    chat_template: opt.ChatTemplate = False,
    generation: opt.Generation = True,
    fluency: opt.Fluency = False,
    wild: opt.Wild = False,
    judge: opt.Judge = None,
    piqa: opt.Piqa = 100,
    out: Path = typer.Option(
        None, "--out", help="results JSON path (default results/<benchmark>-<split>-<model>.json)"
    ),
    datasets_dir: opt.DatasetsDir = None,
    threads: opt.Threads = None,
    progress: opt.Progress = True,
) -> None:
    """Score an edited checkpoint on every edit of a benchmark split (locality vs. the base model),
    or a submission folder (`editeval score submissions/<slug>`), or all stale ones (`--all`)."""
    from editeval.errors import EditevalError
    from editeval.run.scoring import headline, score_checkpoint

    runtime = opt.resolve_runtime(
        device=device, dtype=dtype, device_map=device_map, threads=threads, progress=progress, datasets_dir=datasets_dir
    )
    if sum(x is not None and x is not False for x in (submission, model, all_submissions or None)) != 1:
        raise EditevalError("give exactly one of: a submission folder, --model PATH_OR_NAME, or --all")
    if submission is not None or all_submissions:
        from editeval.runtime.distributed import launched_processes

        if launched_processes() > 1:
            raise EditevalError(
                "scoring submission folders runs in one process: launch `editeval score "
                "--model ...` to score in several processes"
            )
        _score_submissions(submission, all_submissions, force, submissions_dir, runtime, fluency, piqa, wild)
        return
    record, _rows, path = score_checkpoint(
        model,
        base=base,
        benchmark=benchmark,
        split=split,
        config=config,
        limit=limit,
        batch_size=batch_size,
        runtime=runtime,
        chat_template=chat_template,
        generation=generation,
        fluency=fluency,
        wild=wild,
        judge=str(judge) if judge else None,
        piqa_items=piqa,
        out=out,
    )
    if record is None:  # another process of a data-parallel run: the main process reports
        return
    from editeval.evaluation.cases import is_case_benchmark

    meta = record.meta
    unit = "cases" if is_case_benchmark(meta.benchmark) else "edits"
    typer.echo(
        f"{meta.benchmark}/{meta.split}: {meta.n_edits} {unit}, {meta.edited_model} vs base {meta.base_model}"
        f" on {meta.device}, {meta.wall_time_s:.1f} s, peak RSS {meta.peak_rss_mb:.0f} MB"
    )
    for line in headline(record):
        typer.echo(line)
    if benchmark == "qaedit" and not wild:
        from editeval.evaluation.qaedit import WITHOUT_WILD

        typer.echo(WITHOUT_WILD)
    procs = f" ({meta.n_processes} processes)" if meta.n_processes > 1 else ""
    typer.echo(f"wrote {path} (+ {record.rows_file}){procs}")


def _score_submissions(submission, all_submissions, force, submissions_dir, runtime: Runtime, fluency, piqa, wild):
    from editeval.errors import EditevalError
    from editeval.leaderboard import submissions
    from editeval.run.scoring import headline

    if submission is not None:
        record = submissions.score_submission(submission, runtime=runtime, fluency=fluency, piqa_items=piqa, wild=wild)
        for line in headline(record):
            typer.echo(line)
        typer.echo(f"wrote {Path(submission) / 'results.json'}")
        return
    report = submissions.score_all(
        submissions_dir, force=force, runtime=runtime, fluency=fluency, piqa_items=piqa, wild=wild, echo=typer.echo
    )
    typer.echo(f"{len(report.scored)} scored, {len(report.up_to_date)} up to date, {len(report.failed)} failed")
    if report.failed:
        raise EditevalError(
            f"{len(report.failed)} submission(s) failed: " + "; ".join(f"{p.name}: {why}" for p, why in report.failed)
        )
