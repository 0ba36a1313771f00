"""The metadata both record writers share (`editeval edit` and checkpoint scoring): one function,
so that the two kinds of record name their data, models, device and dtype the same way."""

from __future__ import annotations

import time
from typing import Any

from editeval.evaluation.results import environment_versions, peak_memory
from editeval.runtime import distributed


def dtype_name(model) -> str:
    """The dtype the model's weights hold, as recorded: 'float32', 'bfloat16', 'float16'."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def run_meta(
    *,
    benchmark: str,
    config: str | None,
    split: str,
    dataset_fingerprint: str,
    n_edits: int,
    limit: int | None,
    base_model: str,
    base_fingerprint: str,
    loaded,
    edited_model: str,
    edited_fingerprint: str,
    batch_size: int,
    chat_template: bool,
    generation: bool,
    started: float,
) -> dict[str, Any]:
    """The fields of `RunMetadata` every record carries. `loaded` is the base `LoadedModel` the
    run evaluated on; `started` the `time.perf_counter()` at the start of the run."""
    return {
        **environment_versions(),
        "benchmark": benchmark,
        "config": config,
        "split": split,
        "dataset_fingerprint": dataset_fingerprint,
        "n_edits": n_edits,
        "limit": limit,
        "base_model": base_model,
        "base_fingerprint": base_fingerprint,
        "base_num_parameters": loaded.num_parameters(),
        "edited_model": edited_model,
        "edited_fingerprint": edited_fingerprint,
        "device": str(loaded.device),
        "dtype": dtype_name(loaded.model),
        "batch_size": batch_size,
        "chat_template": chat_template,
        "generation": generation,
        "wall_time_s": round(time.perf_counter() - started, 2),
        **peak_memory(str(loaded.device)),
        "n_processes": distributed.num_processes(),
    }
