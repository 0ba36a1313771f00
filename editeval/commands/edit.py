"""`editeval edit`: apply a method's edits (single / batch / sequential) and score them."""

from __future__ import annotations

from pathlib import Path

import typer

from editeval.commands import options as opt


def edit(
    method: str = typer.Option("rome", help="editing method (ft-l, ft-m, kn, rome, memit, ...)"),
    model: str = typer.Option("smollm2-135m", help="registered model name or a local HF model folder"),
    benchmark: opt.Benchmark = "zsre",
    config: opt.BenchmarkConfig = None,
    split: opt.Split = "edit",
    limit: opt.Limit = None,
    mode: str = typer.Option("single", help="single | batch | sequential"),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="edits applied at once (batch: default all in one batch; sequential: 1)"
    ),
    hparams: Path | None = typer.Option(None, help="hyper-parameter YAML (default: the method's preset)"),
    eval_every_edit: bool = typer.Option(False, help="sequential: also evaluate each edit right after it"),
    curve_every: int = typer.Option(
        0,
        min=0,
        help="sequential: after every N edits, evaluate the edits made so far (the lifelong curve, meta.curve)",
    ),
    curve_sample: int = typer.Option(
        0, min=0, help="with --curve-every: evaluate at most this many of the edits so far, evenly spaced (0: all)"
    ),
    save_checkpoint: Path | None = typer.Option(
        None,
        help="write the edited model as an HF folder here (IKE, GRACE, T-Patcher, CaliNET: a method artifact folder, docs/artifacts.md)",
    ),
    device: opt.Device = "auto",
    dtype: opt.Dtype = "float32",
    device_map: opt.DeviceMap = None,
    chat_template: opt.ChatTemplate = False,
    eval_batch_size: int = typer.Option(32, min=1, help="sequences per forward pass in evaluation"),
    generation: opt.Generation = True,
    fluency: opt.Fluency = False,
    wild: opt.Wild = False,
    judge: opt.Judge = None,
    piqa: opt.Piqa = 0,
    out: Path | None = typer.Option(
        None, help="results record (default results/<method>-<benchmark>-<split>-<mode>.json)"
    ),
    datasets_dir: opt.DatasetsDir = None,
    progress: opt.Progress = True,
    threads: opt.Threads = None,
) -> None:
    """Apply the edits of a benchmark split with METHOD and write a results record."""
    runtime = opt.resolve_runtime(
        device=device, dtype=dtype, device_map=device_map, threads=threads, progress=progress, datasets_dir=datasets_dir
    )
    from editeval.run.config import EditConfig
    from editeval.run.editing import run_edits

    run_config = EditConfig(
        method=method,
        model=model,
        benchmark=benchmark,
        config=config,
        split=split,
        limit=limit,
        mode=mode,
        edit_batch_size=batch_size,
        hparams_path=str(hparams) if hparams else None,
        eval_every_edit=eval_every_edit,
        curve_every=curve_every,
        curve_sample=curve_sample,
        save_checkpoint=str(save_checkpoint) if save_checkpoint else None,
        chat_template=chat_template,
        out=str(out) if out else None,
        eval_batch_size=eval_batch_size,
        generation=generation,
        fluency=fluency,
        piqa_items=piqa,
        wild=wild,
        judge=str(judge) if judge else None,
    )
    summary = run_edits(run_config, runtime)
    if summary.record is None:  # another process of a data-parallel run: the main process reports
        return
    from editeval.evaluation import qaedit
    from editeval.evaluation.cases import is_case_benchmark

    record = summary.record
    metrics = record.metrics
    figures = []
    if is_case_benchmark(benchmark):  # the protocol's columns and aggregates
        shown = [(name, m.mean) for name, m in metrics.items()] + list(record.aggregates.items())
        figures = [f"{name} {'—' if v is None else f'{v:.3f}'}" for name, v in shown]
    else:
        for key, label in (
            ("reliability.teacher_forced", "reliability"),
            ("generalization.teacher_forced", "generalization"),
            ("locality.teacher_forced", "locality"),
            ("portability.teacher_forced", "portability"),
            *((key, key) for key in qaedit.protocol_columns(metrics) if benchmark == "qaedit"),
        ):
            m = metrics.get(key)
            if m is not None and m.mean is not None:
                figures.append(f"{label} {m.mean:.3f}")
    unit = "cases" if is_case_benchmark(benchmark) else "edits"
    typer.echo(
        f"{summary.n_edited} {unit} ({len(summary.skipped)} skipped), "
        f"{summary.seconds_per_edit:.2f} s per edit: " + ", ".join(figures)
    )
    if benchmark == "qaedit" and not wild:
        typer.echo(qaedit.WITHOUT_WILD)
    if summary.checkpoint:
        typer.echo(f"edited model written to {summary.checkpoint}")
    if summary.after_each:
        typer.echo(f"after-each-edit record: {summary.after_each}")
    typer.echo(f"wrote {summary.out}")
