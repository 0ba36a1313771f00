"""Score an edited checkpoint against its base model on a benchmark split: `score_checkpoint`.

This is what `editeval score` and the submission system call. A checkpoint is scored in the
batch/sequential sense: one edited model, every edit of the split evaluated on it; locality is
measured against the *base* model's predictions (cached on disk once per base and data).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from editeval.errors import EditevalError
from editeval.runtime.settings import Runtime

log = logging.getLogger(__name__)

DEFAULT_PIQA_ITEMS = 100  # Other-Task locality: the first 100 PIQA validation items, in file order


def dataset_fingerprint(records: Sequence[Mapping]) -> str:
    """sha256 (16 hex) of the canonical JSON of the scored records, in order."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(json.dumps(dict(r), sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def load_piqa(items: int, datasets_dir: str | os.PathLike | None = None) -> list[dict]:
    """The first `items` PIQA validation items (Other-Task locality), or [] when not built."""
    if items <= 0:
        return []
    from editeval.data import load_benchmark

    try:
        ds = load_benchmark("locality", "piqa", "other_task", datasets_dir)
    except EditevalError as err:
        log.warning("Other-Task locality skipped: %s", err)
        return []
    return ds.select(range(min(items, len(ds)))).to_list()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "model"


def default_out_path(model: str, benchmark: str, split: str, config: str | None) -> Path:
    name = Path(str(model)).name if os.sep in str(model) else str(model)
    parts = [benchmark] + ([config] if config else []) + [split, _slug(name)]
    return Path("results") / ("-".join(parts) + ".json")


def score_checkpoint(
    model: str | os.PathLike,
    *,
    base: str | os.PathLike = "smollm2-135m",
    benchmark: str = "zsre",
    split: str = "edit",
    config: str | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    runtime: Runtime = Runtime(),
    chat_template: bool = False,
    generation: bool = True,
    fluency: bool = False,
    piqa_items: int = DEFAULT_PIQA_ITEMS,
    out: str | os.PathLike | None = None,
    requests: Sequence[Mapping] | None = None,
    extra_meta: Mapping | None = None,
):
    """Score checkpoint `model` (registered name or HF folder) against `base` and write the record,
    on `runtime`'s device, dtype and device map.

    `requests` replaces the benchmark split (the benchmark/split names are then only recorded);
    otherwise it is read from `runtime.datasets_dir`, as PIQA is.
    `extra_meta` adds/overrides metadata (e.g. method, hparams, mode for the edit driver).
    Returns ``(record, rows, json_path)``. Raises `EditevalError` on bad input, with one line.

    Launched in several processes (`editeval.runtime.distributed`), each process scores its block of the
    requests (and of the PIQA items) on its own replica; the rows are gathered in order and the
    main process writes the record a single process writes; the others return ``record`` None.
    """
    import torch

    from editeval.evaluation.evaluator import Evaluator, run_counterfact
    from editeval.evaluation.results import build_record, write_record
    from editeval.run.checks import check_device_map_alone, check_record_path
    from editeval.run.meta import run_meta
    from editeval.runtime import distributed

    start = time.perf_counter()
    device, dtype, device_map = runtime.device, runtime.dtype, runtime.device_map
    group = distributed.setup(device)
    check_device_map_alone(group, device_map)
    device = distributed.process_device(group, device)
    out_path = Path(out) if out else default_out_path(str(model), benchmark, split, config)
    check_record_path(out_path)
    if device.startswith("cuda") or device == "auto":
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    base_lm, edited_lm, artifact = _load_models(model, base, group, device, dtype, device_map)
    handed = requests is not None
    requests = _score_requests(requests, benchmark, split, config, limit, runtime)
    fingerprint = dataset_fingerprint(requests)
    piqa = load_piqa(piqa_items, runtime.datasets_dir)
    # decided on all requests, so that every process's rows have the same columns
    counterfact = run_counterfact(benchmark, config, split, requests, loaded=not handed)
    mine, my_piqa = requests, piqa
    if group is not None:  # this process's blocks
        mine, my_piqa = group.shard(requests), group.shard(piqa)
    try:
        evaluator = Evaluator(
            base_lm,
            mine,
            batch_size=batch_size,
            chat_template=chat_template,
            generation=generation,
            fluency=fluency,
            piqa=my_piqa,
            dataset_fingerprint=fingerprint,
            progress=runtime.progress and distributed.is_main_process(),
            counterfact=counterfact,
        )
    except ValueError as err:  # bad records, missing chat template
        raise EditevalError(f"cannot score {benchmark}/{split}: {err}") from None
    rows = _evaluate_edited(evaluator, model, base_lm, edited_lm, artifact)
    item_values = evaluator.last_piqa
    base_piqa_accuracy = evaluator.base_piqa_accuracy if piqa else None
    timings = dict(evaluator.timings)
    if group is not None:
        rows, item_values, base_piqa_accuracy, timings = _gather_scores(
            group,
            evaluator,
            rows,
            requests,
            generation=generation,
            counterfact=counterfact,
            fluency=fluency,
            piqa=bool(piqa),
        )
    base_fp = evaluator.base_fingerprint
    edited_fp = _edited_fingerprint(model, base_lm, edited_lm, artifact, base_fp)
    meta = run_meta(
        benchmark=benchmark,
        config=config,
        split=split,
        dataset_fingerprint=fingerprint,
        n_edits=len(requests),
        limit=limit,
        base_model=str(base),
        base_fingerprint=base_fp,
        loaded=base_lm,
        edited_model=str(model),
        edited_fingerprint=edited_fp,
        batch_size=batch_size,
        chat_template=chat_template,
        generation=generation,
        started=start,
    )
    meta.update(_timing_meta(len(piqa), base_piqa_accuracy, timings))
    meta.update(extra_meta or {})
    if group is not None and not group.is_main:
        return None, rows, out_path
    record = build_record(rows, meta, item_values=item_values)
    path = write_record(record, rows, out_path)
    return record, rows, path


def _load_models(model, base, group, device: str, dtype, device_map):
    """``(base_lm, edited_lm, artifact)``: the base model, the edited one (the base itself when the
    edited model is a wrapper method's artifact, installed on it later, or the same folder)."""
    from editeval.methods.kit import artifacts
    from editeval.runtime import distributed, models

    with distributed.main_first(group):  # a registered model is converted once, by the main process
        base_lm = models.load(base, device=device, dtype=dtype, device_map=device_map)
        artifact = artifacts.is_artifact(model)  # a wrapper method's additions, installed on the base below
        if artifact:
            artifacts.read_artifact(model)
            edited_lm = base_lm
        elif models.same_folder(model, base):
            edited_lm = base_lm
        else:
            edited_lm = models.load(model, device=str(base_lm.device), dtype=dtype, device_map=device_map)
            models.check_compatible(base_lm, edited_lm)
    return base_lm, edited_lm, artifact


def _evaluate_edited(evaluator, model, base_lm, edited_lm, artifact: bool) -> list[dict]:
    """The rows on the edited model (an artifact installed on the base model for the evaluation)."""
    from editeval.methods.kit import artifacts

    if artifact:  # after the Evaluator took the base model's pre-edit predictions
        undo = artifacts.load_artifact(base_lm.model, model)
        try:
            return evaluator.evaluate(base_lm.model)
        finally:
            undo()
    return evaluator.evaluate(edited_lm.model)


def _edited_fingerprint(model, base_lm, edited_lm, artifact: bool, base_fp: str) -> str:
    """The fingerprint the record gives the edited model."""
    from editeval.methods.kit import artifacts

    if artifact:
        return "artifact:" + artifacts.artifact_fingerprint(model)
    return base_fp if edited_lm is base_lm else edited_lm.fingerprint()


def _score_requests(requests, benchmark: str, split: str, config, limit, runtime: Runtime) -> list[dict]:
    """The requests to score: given (copied, the first `limit`), or read from the benchmark split."""
    from editeval.data import load_requests

    if requests is None:
        requests = load_requests(benchmark, split, config, limit, runtime.datasets_dir)
    else:
        requests = [dict(r) for r in requests][: limit or None]
    if not requests:
        raise EditevalError(f"benchmark '{benchmark}' split '{split}' has no records")
    return requests


def _timing_meta(piqa_items: int, base_piqa_accuracy, timings: dict) -> dict:
    """The record's PIQA and timing fields."""
    return dict(
        piqa_items=piqa_items,
        base_piqa_accuracy=base_piqa_accuracy,
        preedit_s=round(timings["preedit_s"], 2),
        evaluate_s=round(timings["evaluate_s"], 2),
        n_sequences=timings["sequences"],
        n_tokens=timings["tokens"],
    )


def _gather_scores(group, evaluator, rows, requests, *, generation, counterfact, fluency, piqa):
    """Every process's rows and PIQA items, in order, as one process over all of them has them:
    ``(rows, item_values, base_piqa_accuracy, timings)``."""
    from editeval.evaluation import metrics as M
    from editeval.evaluation.evaluator import evaluation_columns

    parts = group.gather(
        {
            "rows": rows,
            "piqa": evaluator.last_piqa if piqa else {},
            "base_piqa": evaluator.base_piqa_correct,
            "timings": dict(evaluator.timings),
        }
    )
    columns = evaluation_columns(requests, generation=generation, counterfact=counterfact, fluency=fluency, piqa=piqa)
    nan = float("nan")
    rows = [{c: row.get(c, nan) for c in columns} for part in parts for row in part["rows"]]
    item_values: dict[str, list[float]] = {}
    base_piqa_accuracy = None
    if piqa:
        for part in parts:
            for name, values in part["piqa"].items():
                item_values.setdefault(name, []).extend(values)
        for row in rows:  # every row carries the means over all items (as in one process)
            for name, values in item_values.items():
                row[name] = M.mean(values)
        base_piqa_accuracy = M.mean([v for part in parts for v in part["base_piqa"]])
    timings = {
        "preedit_s": max(p["timings"].get("preedit_s", 0.0) for p in parts),
        "evaluate_s": max(p["timings"].get("evaluate_s", 0.0) for p in parts),
        "sequences": sum(p["timings"].get("sequences", 0) for p in parts),
        "tokens": sum(p["timings"].get("tokens", 0) for p in parts),
    }
    return rows, item_values, base_piqa_accuracy, timings


def headline(record) -> list[str]:
    """Short human-readable lines: the main metric means (in %) with their 95% intervals."""
    from editeval.evaluation.specs import MetricName

    lines = []
    for name, s in record.metrics.items():
        metric = MetricName.try_parse(name)
        if s.mean is None or (metric is not None and metric.kind is not None):  # kinds: listed below
            continue
        scale = 1 if metric is not None and metric.family == "fluency" else 100
        ci = f"  [{s.ci_low * scale:.1f}, {s.ci_high * scale:.1f}]" if s.ci_low is not None else ""
        lines.append(f"{name:34s} {s.mean * scale:7.2f}{ci}  (n={s.count})")
    for fam, kinds in record.breakdowns.items():
        for kind, s in kinds.items():
            if s.mean is not None:
                lines.append(f"  {fam} [{kind}]".ljust(35) + f"{s.mean * 100:7.2f}  (n={s.count})")
    for name, v in record.aggregates.items():
        if v is not None:
            lines.append(f"{name:34s} {v * 100:7.2f}")
    return lines
