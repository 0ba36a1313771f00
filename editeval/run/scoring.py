"""Checkpoint scoring, the second way through the one pipeline (`editeval.run.session`):
`run_checkpoint` (`editeval score`, the submission system). The mode here is "install the edited
model": a checkpoint folder is loaded beside its base, a method artifact installed on the base for
the evaluation and taken away after; every request of the split is evaluated on that one edited
model (the batch/sequential sense), and locality is measured against the *base* model's
predictions (cached on disk once per base and data). A case benchmark (MQuAKE, RippleEdits) is
scored by its authors' protocol instead (`editeval.run.cases.score_cases`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from editeval.errors import EditevalError
from editeval.run.config import DEFAULT_PIQA_ITEMS, ScoreConfig
from editeval.run.session import Session, dataset_fingerprint, load_piqa
from editeval.runtime.settings import Runtime

__all__ = ["DEFAULT_PIQA_ITEMS", "dataset_fingerprint", "headline", "load_piqa", "run_checkpoint", "score_checkpoint"]


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
    wild: bool = False,
    judge: str | None = None,
    out: str | os.PathLike | None = None,
    requests: Sequence[Mapping] | None = None,
    extra_meta: Mapping | None = None,
):
    """`run_checkpoint` with the `ScoreConfig` given as keywords (``batch_size``: sequences per
    forward pass). Returns ``(record, rows, json_path)``."""
    score = ScoreConfig(
        model=str(model),
        base=str(base),
        benchmark=benchmark,
        split=split,
        config=config,
        limit=limit,
        eval_batch_size=batch_size,
        chat_template=chat_template,
        generation=generation,
        fluency=fluency,
        piqa_items=piqa_items,
        wild=wild,
        judge=judge,
        out=str(out) if out else None,
    )
    return run_checkpoint(score, runtime, requests=requests, extra_meta=extra_meta)


def run_checkpoint(
    score: ScoreConfig,
    runtime: Runtime = Runtime(),
    *,
    requests: Sequence[Mapping] | None = None,
    extra_meta: Mapping | None = None,
):
    """Score checkpoint ``score.model`` against ``score.base`` and write the record, on `runtime`'s
    device, dtype and device map.

    `requests` replaces the benchmark split (the benchmark/split names are then only recorded; the
    first ``limit`` are scored); otherwise it is read from `runtime.datasets_dir`, as PIQA is.
    `extra_meta` adds/overrides metadata (the submission system's fields).
    Returns ``(record, rows, json_path)``. Raises `EditevalError` on bad input, with one line.

    Launched in several processes (`editeval.runtime.distributed`), each process scores its block of the
    requests (and of the PIQA items) on its own replica; the rows are gathered in order and the
    main process writes the record a single process writes; the others return ``record`` None.
    """
    import torch

    from editeval.evaluation.cases import is_case_benchmark

    if is_case_benchmark(score.benchmark):  # MQuAKE, RippleEdits: every case by the authors' protocol
        from editeval.run.cases import score_cases

        return score_cases(score, runtime, requests=requests, extra_meta=extra_meta)
    session = Session.open(runtime, score.out_path())
    if session.device.startswith("cuda") or session.device == "auto":
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    base_lm, edited_lm, artifact = _load_models(score, session)
    if requests is not None:
        requests = [dict(r) for r in requests][: score.limit or None]
    requests = session.read_requests(score.benchmark, score.split, score.config, score.limit, given=requests)
    piqa = load_piqa(score.piqa_items, runtime.datasets_dir)
    counterfact = session.counterfact(score.benchmark, score.config, score.split, requests)
    group = session.dist
    mine, my_piqa = (requests, piqa) if group is None else (group.shard(requests), group.shard(piqa))
    evaluator = session.evaluator(
        base_lm,
        mine,
        score,
        counterfact=counterfact,
        piqa=my_piqa,
        progress=runtime.progress and session.is_main,
        label=f"score {score.benchmark}/{score.split}",
    )
    rows = _evaluate_edited(evaluator, score.model, base_lm, edited_lm, artifact)
    item_values = evaluator.last_piqa
    base_piqa_accuracy = evaluator.base_piqa_accuracy if piqa else None
    timings = dict(evaluator.timings)
    if group is not None:
        columns = session.columns(requests, score, counterfact=counterfact, piqa=bool(piqa))
        rows, item_values, base_piqa_accuracy, timings = _gather_scores(group, evaluator, rows, columns, bool(piqa))
    if group is not None and not group.is_main:
        return None, rows, session.out
    base_fp = evaluator.base_fingerprint
    record = session.write(
        rows,
        loaded=base_lm,
        data=score.model_dump(include={"benchmark", "config", "split", "limit"}),
        ev=score,
        models={
            "base_model": score.base,
            "base_fingerprint": base_fp,
            "edited_model": score.model,
            "edited_fingerprint": _edited_fingerprint(score.model, base_lm, edited_lm, artifact, base_fp),
        },
        fields={**_timing_meta(len(piqa), base_piqa_accuracy, timings), **(extra_meta or {})},
        item_values=item_values,
    )
    return record, rows, session.out


def _load_models(score: ScoreConfig, session: Session):
    """``(base_lm, edited_lm, artifact)``: the base model, the edited one (the base itself when the
    edited model is a wrapper method's artifact, installed on it later, or the same folder)."""
    from editeval.methods.kit import artifacts
    from editeval.runtime import distributed, models

    model, base, runtime = score.model, score.base, session.runtime
    dtype, device_map = runtime.dtype, runtime.device_map
    with distributed.main_first(session.dist):  # a registered model is converted once, by the main process
        base_lm = models.load(base, device=session.device, dtype=dtype, device_map=device_map)
        artifact = artifacts.is_artifact(model)  # a wrapper method's additions, installed on the base below
        if artifact:
            artifacts.read_artifact(model)
            edited_lm = base_lm
        elif models.same_folder(model, base):
            edited_lm = base_lm
        else:
            try:
                edited_lm = models.load(model, device=str(base_lm.device), dtype=dtype, device_map=device_map)
            except EditevalError:
                raise
            except Exception as err:  # a checkpoint's files are input: whatever fails, one line
                why = (str(err).strip().splitlines() or [""])[-1].strip()
                raise EditevalError(f"cannot load the edited model {model}: {type(err).__name__}: {why}") from None
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


def _timing_meta(piqa_items: int, base_piqa_accuracy, timings: Mapping) -> dict:
    """A scored checkpoint's PIQA and timing fields (`timings`: its evaluator's, or gathered)."""
    return dict(
        piqa_items=piqa_items,
        base_piqa_accuracy=base_piqa_accuracy,
        preedit_s=round(timings.get("preedit_s", 0.0), 2),
        evaluate_s=round(timings.get("evaluate_s", 0.0), 2),
        n_sequences=timings.get("sequences", 0),
        n_tokens=timings.get("tokens", 0),
    )


def _gather_scores(group, evaluator, rows, columns: list[str], piqa: bool):
    """Every process's rows (in `columns`) and PIQA items, in order, as one process over all of
    them has them: ``(rows, item_values, base_piqa_accuracy, timings)``."""
    from editeval.evaluation import metrics as M

    parts = group.gather(
        {
            "rows": rows,
            "piqa": evaluator.last_piqa if piqa else {},
            "base_piqa": evaluator.base_piqa_correct,
            "timings": dict(evaluator.timings),
        }
    )
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
