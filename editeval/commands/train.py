"""`editeval train METHOD`: train what a learned editing method needs (MEND / KE editors, the SERAC
scope classifier) on a benchmark's train split, and cache it where `editeval edit` finds it."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from editeval.commands.options import DatasetsDir, Device, Progress, Threads, resolve_runtime


def train(
    method: str = typer.Argument(..., help="mend | ke | serac"),
    model: str = typer.Option("smollm2-135m", help="registered model name or a local HF model folder"),
    benchmark: str = typer.Option("zsre", help="benchmark whose train split is used"),
    split: str = typer.Option("train", help="split to train on"),
    config: str | None = typer.Option(None, help="benchmark config (default: the benchmark's default)"),
    limit: int | None = typer.Option(None, help="only the first N training records"),
    hparams: Path | None = typer.Option(None, help="hyper-parameter YAML (default: the method's preset)"),
    steps: int | None = typer.Option(None, help="override train_steps of the preset"),
    max_minutes: float | None = typer.Option(None, help="stop (and save) after this much training time"),
    out_dir: Path | None = typer.Option(None, help="write here instead of the editeval cache"),
    fresh: bool = typer.Option(False, help="discard an existing checkpoint instead of resuming"),
    device: Device = "auto",
    threads: Threads = None,
    datasets_dir: DatasetsDir = None,
    progress: Progress = True,
) -> None:
    """Train METHOD's editor / classifier for MODEL on BENCHMARK's train split (resumable)."""

    from editeval.data import load_requests
    from editeval.errors import EditevalError
    from editeval.methods.base import get_method, trainable_methods
    from editeval.runtime.models import load

    trainable = trainable_methods()  # the methods registered with a `train`
    if method not in trainable:
        raise EditevalError(f"method '{method}' has nothing to train (trainable: {', '.join(trainable)})")
    runtime = resolve_runtime(device=device, threads=threads, progress=progress, datasets_dir=datasets_dir)
    if hparams is not None and not hparams.exists():
        raise EditevalError(f"hyper-parameter file not found: {hparams}")
    spec = get_method(method)
    records = load_requests(benchmark, split, config, limit, runtime.datasets_dir)
    loaded = load(model, device=runtime.device)
    hp = spec.load_hparams(loaded.model, model if hparams is None else None, hparams)
    changes = {}
    if steps is not None:
        changes["train_steps"] = steps
    if max_minutes is not None:
        changes["max_minutes"] = max_minutes
    if changes:
        hp = hp.replace(**changes)
    t0 = time.perf_counter()
    report = spec.train(loaded, records, hp, benchmark, out_dir=out_dir, progress=runtime.progress, fresh=fresh)
    note = "" if report.finished else " (stopped early: max_minutes)"
    resumed = f", resumed at step {report.resumed_from}" if report.resumed_from else ""
    typer.echo(
        f"trained {method} for {model} on {benchmark}/{split}: {report.steps} steps{resumed}{note}, "
        f"{report.seconds:.0f} s of training ({time.perf_counter() - t0:.0f} s this run); "
        f"last losses {', '.join(f'{k} {v:.3f}' for k, v in report.last_losses.items())}"
    )
    typer.echo(f"wrote {report.folder}")
