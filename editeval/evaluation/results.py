"""The results record: one versioned JSON file per scored run, plus a Parquet side file of rows.

Layout of ``<name>.json`` (schema version ``SCHEMA_VERSION``; fields below are all present)::

    schema_version   "1"
    meta             RunMetadata: who/what/how - editeval + metric versions, benchmark, config,
                     split, dataset fingerprint, base and edited model + weight fingerprints,
                     device, dtype, batch size, chat_template, wall time, peak memory (of the
                     main process), n_processes (data-parallel processes, 1 unless launched); and for
                     runs of an editing method: method, hparams, hparams_hash, mode, edit batch
                     size, seconds per edit, requests and skipped ones (None for a submitted
                     checkpoint); for a leaderboard entry, the submission's slug and kind.
                     Unknown keys are refused: every record carries the same keys
    metrics          {metric name: MetricSummary} for every per-edit column (protocol names,
                     see editeval.evaluation.metrics), e.g. "reliability.teacher_forced"; the other_task.*
                     figures are summarised over PIQA items (count = items), not over edits
    breakdowns       {"locality.teacher_forced": {"nq": MetricSummary, ...},
                      "portability.teacher_forced": {"one_hop": ...}, ...}: one entry per kind
    aggregates       derived figures: "counterfact.score" (harmonic mean of the efficacy,
                     paraphrase and neighbourhood score means), "rippleedits.overall" (mean of the
                     RippleEdits criteria's means, those with cases); None when not computable
    rows_file        the Parquet side file's name (same folder), one row per edit: case_id + the
                     metric columns (NaN where a metric does not apply to that edit); a run of an
                     editing method adds its timings, ``seconds.edit`` (the edit's share of the
                     `apply` that made it) and ``seconds.evaluate`` (its share of the evaluation
                     pass that scored it): not metrics, summarised in ``meta.timings`` (mean,
                     median, first edit) and never compared by `editeval leaderboard verify`
    rows_sha256      its sha256

A MetricSummary is ``{mean, count, ci_low, ci_high}``: the mean over edits where the metric
applies (``count`` of them; NaN rows excluded) and a 95% percentile bootstrap interval over edits
(``BOOTSTRAP_SAMPLES`` resamples, seed ``BOOTSTRAP_SEED``). Values are fractions (0..1), not %.
Bump ``SCHEMA_VERSION`` when a field changes meaning or disappears; adding fields is compatible.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import resource
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from editeval.evaluation.metrics import METRIC_VERSION, harmonic_mean
from editeval.evaluation.specs import (
    COUNTERFACT_AGGREGATE,
    COUNTERFACT_SCORES,
    RIPPLE_AGGREGATE,
    RIPPLE_CRITERION_NAMES,
    MetricName,
)
from editeval.runtime.paths import atomic_file

SCHEMA_VERSION = "1"
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0
ROWS_SUFFIX = ".rows.parquet"


class MetricSummary(BaseModel):
    mean: float | None = Field(description="mean over edits where the metric applies")
    count: int = Field(description="number of edits where the metric applies")
    ci_low: float | None = Field(None, description="95% bootstrap interval, lower end")
    ci_high: float | None = Field(None, description="95% bootstrap interval, upper end")


class RunMetadata(BaseModel):
    model_config = ConfigDict(protected_namespaces=(), extra="forbid")

    editeval_version: str
    metric_version: str = METRIC_VERSION
    benchmark: str = ""
    config: str | None = None
    split: str = ""
    dataset_fingerprint: str = ""
    n_edits: int = 0
    limit: int | None = None
    base_model: str = ""
    base_fingerprint: str = ""
    base_num_parameters: int | None = None  # the base model's size (tied parameters once)
    edited_model: str = ""
    edited_fingerprint: str = ""
    device: str = "cpu"
    dtype: str = "float32"  # of the evaluated weights: "float32", "bfloat16" or "float16"
    batch_size: int = 32
    chat_template: bool = False
    generation: bool = True
    piqa_items: int = 0
    base_piqa_accuracy: float | None = None
    wall_time_s: float | None = None
    preedit_s: float | None = None  # base-model pass for locality/PIQA (0 when read from the cache)
    evaluate_s: float | None = None  # the evaluated model's pass
    n_sequences: int | None = None  # sequences scored on the evaluated model
    n_tokens: int | None = None  # their tokens
    peak_rss_mb: float | None = None
    peak_cuda_mb: float | None = None
    created_utc: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    python_version: str = Field(default_factory=lambda: platform.python_version())
    torch_version: str = ""
    transformers_version: str = ""
    torch_threads: int | None = None
    n_processes: int = 1  # data-parallel processes that shared the edits (editeval.runtime.distributed)
    # filled by the edit driver (None for a submitted checkpoint)
    method: str | None = None
    hparams: dict[str, Any] | None = None
    hparams_hash: str | None = None
    mode: Literal["single", "batch", "sequential"] | None = None
    edit_batch_size: int | None = None
    seconds_per_edit: float | None = None
    edit_seconds_total: float | None = None
    n_requests: int | None = None  # requests of the split (or --limit), skipped ones included
    n_skipped: int | None = None
    skipped: list[dict[str, Any]] | None = None  # {index, case_id, reason} of each skipped request
    evaluated: str | None = None  # when the rows were taken, e.g. "after each edit, then undone"
    # the rows' seconds.* columns summarised: {"edit": {"mean", "median", "first"}, "evaluate": {...}}
    timings: dict[str, dict[str, float | None]] | None = None
    # sequential --curve-every: after every N edits, the mean of each metric over the edits so far
    # ({"edits": N, "evaluated": how many of them, "metrics": {column: mean}})
    curve: list[dict[str, Any]] | None = None
    # filled by the submission system (editeval.leaderboard.submissions)
    submission: str | None = None  # the submission folder's name
    submission_kind: Literal["method", "checkpoint", "hub", "unedited"] | None = None


class ResultsRecord(BaseModel):
    schema_version: str = SCHEMA_VERSION
    meta: RunMetadata
    metrics: dict[str, MetricSummary]
    breakdowns: dict[str, dict[str, MetricSummary]] = {}
    aggregates: dict[str, float | None] = {}
    rows_file: str = ""
    rows_sha256: str = ""


def grouped_batch_size(mode: str | None, edit_batch_size: int | None) -> int | None:
    """The edits a run applied at once, when its mode groups them: a batch, or the steps of a
    sequential run with batches of more than one edit (None otherwise)."""
    if mode == "batch" or (mode == "sequential" and (edit_batch_size or 1) > 1):
        return edit_batch_size
    return None


def hparams_hash(hparams: Mapping[str, Any]) -> str:
    """sha256 (16 hex) of the canonical JSON of a hyper-parameter dict."""
    return hashlib.sha256(json.dumps(hparams, sort_keys=True, default=str).encode()).hexdigest()[:16]


def peak_memory(device: str | None = None) -> dict[str, float | None]:
    """Peak resident memory of this process (MB) and, on CUDA, peak allocated GPU memory (MB)."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss_kb / 1024 if sys.platform != "darwin" else rss_kb / 2**20
    cuda_mb = None
    if device and str(device).startswith("cuda"):
        import torch

        cuda_mb = torch.cuda.max_memory_allocated() / 2**20
    return {"peak_rss_mb": round(rss_mb, 1), "peak_cuda_mb": None if cuda_mb is None else round(cuda_mb, 1)}


def environment_versions() -> dict[str, Any]:
    import torch
    import transformers

    import editeval

    return {
        "editeval_version": editeval.__version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }


# Per-edit timings in the rows of an edit run: not metrics (each run measures its own), so never
# summarised as one, never checked against the record by `disagreements`, never compared by verify.
EDIT_SECONDS, EVALUATE_SECONDS = "seconds.edit", "seconds.evaluate"


def is_timing(column: str) -> bool:
    return column.startswith("seconds.")


def timing_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | None]] | None:
    """Mean, median and first edit (row order) of each ``seconds.*`` column with values, or None."""
    out = {}
    for column in (EDIT_SECONDS, EVALUATE_SECONDS):
        values = [_num(r.get(column)) for r in rows]
        kept = [v for v in values if not math.isnan(v)]
        if not kept:
            continue
        out[column.split(".", 1)[1]] = {
            "mean": float(np.mean(kept)),
            "median": float(np.median(kept)),
            "first": None if math.isnan(values[0]) else values[0],
        }
    return out or None


def summarize(
    values: Sequence[float], *, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
) -> MetricSummary:
    """Mean, count and 95% percentile-bootstrap interval of the non-NaN values."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return MetricSummary(mean=None, count=0)
    mean = float(arr.mean())
    rng = np.random.default_rng(seed)
    boots = np.empty(samples)
    chunk = max(1, 2_000_000 // arr.size)
    for k in range(0, samples, chunk):
        m = min(chunk, samples - k)
        boots[k : k + m] = arr[rng.integers(0, arr.size, size=(m, arr.size))].mean(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return MetricSummary(mean=mean, count=int(arr.size), ci_low=float(lo), ci_high=float(hi))


def _breakdown_key(column: str) -> tuple[str, str] | None:
    """``locality.nq.teacher_forced`` -> (``locality.teacher_forced``, ``nq``); None for a
    column measured over all kinds."""
    name = MetricName.try_parse(column)
    if name is None or name.kind is None:
        return None
    return str(name.family_level()), name.kind


def build_record(
    rows: Sequence[Mapping[str, Any]],
    meta: RunMetadata | Mapping[str, Any],
    item_values: Mapping[str, Sequence[float]] | None = None,
) -> ResultsRecord:
    """Summarise per-edit rows (from `Evaluator.evaluate`) into a results record.

    `item_values` gives metrics measured per item rather than per edit (``other_task.*``: one
    value per evaluated model, from `Evaluator.last_piqa`); their summary (count, interval) is
    taken over those items instead of over the edits."""
    if not isinstance(meta, RunMetadata):
        base = environment_versions()
        base.update(meta)
        meta = RunMetadata(**base)
    if not meta.n_edits:
        meta.n_edits = len(rows)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c != "case_id" and not is_timing(c) and c not in columns]
    if meta.timings is None:
        meta.timings = timing_summary(rows)
    metrics: dict[str, MetricSummary] = {}
    breakdowns: dict[str, dict[str, MetricSummary]] = {}
    for col in columns:
        summary = summarize([_num(r.get(col)) for r in rows])
        key = _breakdown_key(col)
        if key:
            breakdowns.setdefault(key[0], {})[key[1]] = summary
        metrics[col] = summary
    for col, values in (item_values or {}).items():
        metrics[col] = summarize(values)
    aggregates: dict[str, float | None] = {}
    parts = [metrics.get(str(name)) for name in COUNTERFACT_SCORES]
    if all(p is not None for p in parts):
        means = [p.mean for p in parts]
        aggregates[str(COUNTERFACT_AGGREGATE)] = None if any(m is None for m in means) else harmonic_mean(means)
    ripple = {str(name): metrics[str(name)].mean for name in RIPPLE_CRITERION_NAMES if str(name) in metrics}
    if ripple:
        aggregates[str(RIPPLE_AGGREGATE)] = ripple_overall(ripple.values())
    return ResultsRecord(meta=meta, metrics=metrics, breakdowns=breakdowns, aggregates=aggregates)


def ripple_overall(criterion_means) -> float | None:
    """RippleEdits' overall figure (the paper's "Avg."): the mean of the criteria's accuracies,
    over the criteria that have cases (POPULAR for GPT-J has no Forgetfulness test); None when none has."""
    kept = [m for m in criterion_means if m is not None]
    return math.fsum(kept) / len(kept) if kept else None


AGREE_TOLERANCE = 1e-9  # a recomputed mean may differ from the recorded one in its last bits only


def disagreements(record: ResultsRecord, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Where `record`'s figures are not those of its per-edit `rows`: every metric's mean and count,
    every per-kind breakdown and the aggregates (CounterFact, RippleEdits), recomputed from the rows as
    `build_record` computes them (item-level metrics, ``other_task.*``: the mean, which every row
    carries). Empty when they all agree (within `AGREE_TOLERANCE`)."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c != "case_id" and not is_timing(c) and c not in columns]
    problems = []

    def differ(a: float | None, b: float | None) -> bool:
        if a is None or b is None:
            return (a is None) != (b is None)
        return not math.isclose(a, b, rel_tol=0, abs_tol=AGREE_TOLERANCE)

    recomputed: dict[str, float | None] = {}
    for col in columns:
        values = [v for v in (_num(r.get(col)) for r in rows) if not math.isnan(v)]
        mean = math.fsum(values) / len(values) if values else None
        recomputed[col] = mean
        shown = record.metrics.get(col)
        if shown is None:
            problems.append(f"{col}: in the rows but not in the record")
            continue
        name = MetricName.try_parse(col)
        per_item = name is not None and name.family == "other_task"
        if differ(shown.mean, mean) or (not per_item and shown.count != len(values)):
            problems.append(
                f"{col}: the record says mean {shown.mean} (n={shown.count}), its rows give {mean} (n={len(values)})"
            )
        key = _breakdown_key(col)
        if key is not None:
            part = record.breakdowns.get(key[0], {}).get(key[1])
            if part is None or differ(part.mean, mean):
                problems.append(f"breakdown {key[0]} [{key[1]}]: not the mean of its rows")
    problems += [f"{name}: no per-edit column in the rows" for name in record.metrics if name not in recomputed]
    for family, kinds in record.breakdowns.items():
        level = MetricName.try_parse(family)
        for kind in kinds:
            if level is None or str(MetricName(level.family, level.protocol, kind)) not in recomputed:
                problems.append(f"breakdown {family} [{kind}]: no per-edit column in the rows")
    for name, shown in record.aggregates.items():
        if name == str(COUNTERFACT_AGGREGATE):
            means = [recomputed.get(str(part)) for part in COUNTERFACT_SCORES]
            value = None if any(m is None for m in means) else harmonic_mean(means)
        elif name == str(RIPPLE_AGGREGATE):
            value = ripple_overall(recomputed.get(str(part)) for part in RIPPLE_CRITERION_NAMES)
        else:
            problems.append(f"{name}: an aggregate editeval does not compute")
            continue
        if differ(shown, value):
            problems.append(f"{name}: the record says {shown}, its rows give {value}")
    return problems


def _num(value) -> float:
    if value is None:
        return math.nan
    return float(value)


def rows_path(out_path: str | os.PathLike) -> Path:
    out = Path(out_path)
    return out.with_name(
        out.name[: -len(".json")] + ROWS_SUFFIX if out.name.endswith(".json") else out.name + ROWS_SUFFIX
    )


def write_record(record: ResultsRecord, rows: Sequence[Mapping[str, Any]], out_path: str | os.PathLike) -> Path:
    """Write the Parquet rows then the JSON record, each to a temp file renamed into place.
    Returns the JSON path. ``record.rows_file`` / ``rows_sha256`` are filled in."""
    import pandas as pd

    out = Path(out_path)
    side = rows_path(out)
    frame = pd.DataFrame(list(rows))
    atomic_file(side, lambda tmp: frame.to_parquet(tmp, index=False))
    record.rows_file = side.name
    record.rows_sha256 = hashlib.sha256(side.read_bytes()).hexdigest()

    def dump(tmp):
        Path(tmp).write_text(record.model_dump_json(indent=2) + "\n")

    atomic_file(out, dump)
    return out


def read_record(path: str | os.PathLike) -> ResultsRecord:
    """Load and validate a results record JSON."""
    return ResultsRecord.model_validate_json(Path(path).read_text())


def read_rows(path: str | os.PathLike, *, timings: bool = True):
    """The per-edit rows (pandas DataFrame) of the record at ``path``; ``timings=False`` leaves out
    the ``seconds.*`` columns (what two runs of the same edits have in common)."""
    import pandas as pd

    record = read_record(path)
    rows = pd.read_parquet(Path(path).parent / record.rows_file)
    return rows if timings else rows[[c for c in rows.columns if not is_timing(c)]]
