"""The options several commands share, defined once (typer `Annotated` types), and the one place
where they become a `Runtime`: `resolve_runtime`, called first thing by a command.

Documented environment variables are read here, through `editeval.runtime.paths`, when the
runtime is resolved: $EDITEVAL_DATASETS (a --datasets-dir flag wins over it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from editeval.runtime.settings import Runtime

Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda[:N] (under a launcher: each process's own)")]
Dtype = Annotated[str, typer.Option("--dtype", help="float32 | bfloat16 | float16 (the model's weights)")]
DeviceMap = Annotated[
    str | None,
    typer.Option(
        "--device-map",
        help="auto | balanced | sequential: spread a model too large for one device over the GPUs, "
        "CPU memory and disk (accelerate; edited layers must stay on a device)",
    ),
]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads", min=1, help="torch CPU threads (default: torch's choice; 1 is fastest on a busy machine)"
    ),
]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")]
# what a run evaluates and how: `editeval edit` and `editeval score` take the same options
Benchmark = Annotated[str, typer.Option("--benchmark", help="built benchmark name (datasets/<name>)")]
BenchmarkConfig = Annotated[
    str | None, typer.Option("--config", help="benchmark config (default: the benchmark's default)")
]
Split = Annotated[str, typer.Option("--split", help="split of edit requests")]
Limit = Annotated[int | None, typer.Option("--limit", min=1, help="only the first N requests")]
ChatTemplate = Annotated[
    bool, typer.Option("--chat-template/--no-chat-template", help="wrap edit prompts with the chat template")
]
Generation = Annotated[bool, typer.Option("--generation/--no-generation", help="also the greedy-generation protocol")]
Fluency = Annotated[bool, typer.Option("--fluency/--no-fluency", help="fluency of 100-token greedy generations (slow)")]
Piqa = Annotated[
    int,
    typer.Option(
        "--piqa", min=0, help="Other-Task locality: the first N PIQA items, on every evaluated model (0 = off)"
    ),
]
Wild = Annotated[
    bool,
    typer.Option(
        "--wild/--no-wild",
        help="also the WILD protocol: greedy answers to a natural stop (EOS, '.', newline; 50 tokens), "
        "normalised exact match (*.wild, *.wild_contains, locality.wild)",
    ),
]
Judge = Annotated[
    Path | None,
    typer.Option(
        "--judge",
        help="with --wild: a local model folder (or registered name) that grades each WILD answer with a "
        "pinned yes/no prompt (*.wild_judge; verdicts cached)",
    ),
]
DatasetsDir = Annotated[
    Path | None,
    typer.Option("--datasets-dir", help="folder of built datasets (default: $EDITEVAL_DATASETS or ./datasets)"),
]


def datasets_folder(flag: Path | None) -> Path:
    """The built-datasets folder of a command: --datasets-dir, else $EDITEVAL_DATASETS, else ./datasets."""
    from editeval.runtime.paths import datasets_dir

    return datasets_dir(flag or os.environ.get("EDITEVAL_DATASETS") or None)


def resolve_runtime(
    *,
    device: str = "auto",
    dtype: str = "float32",
    device_map: str | None = None,
    threads: int | None = None,
    progress: bool = True,
    datasets_dir: Path | None = None,
) -> Runtime:
    """The command's runtime, from its flags and the environment; sets torch's CPU threads."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    if not progress:  # the libraries' own bars too (loading weights, generating a dataset split)
        from transformers.utils import logging as hf_logging

        import datasets

        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
    return Runtime(
        device=device,
        dtype=dtype,
        device_map=device_map,
        threads=threads,
        progress=progress,
        datasets_dir=datasets_folder(datasets_dir),
    )
