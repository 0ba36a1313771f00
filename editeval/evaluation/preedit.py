"""The pre-edit cache: the *unedited* base model's argmax over each locality answer span (and its
PIQA choices), computed once and kept on disk under ``cache_dir()/preedit/``, keyed by the base
weights' fingerprint, the metric version and a hash of the exact token ids scored. `Evaluator`
(`editeval.evaluation.evaluator`) compares edited models against these, never against an
already-edited model."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from editeval.evaluation import metrics as M
from editeval.evaluation.requests import LOC, EvalSequence
from editeval.evaluation.rows import piqa_choices
from editeval.evaluation.runner import LMRunner
from editeval.runtime.paths import atomic_file, cache_dir

log = logging.getLogger(__name__)


@dataclass
class PreEdit:
    """The base model's predictions: per locality sequence its span argmax, per PIQA item its
    choice, and its PIQA accuracy (NaN without PIQA)."""

    loc: dict[int, list[int]]
    piqa: list[int]
    piqa_accuracy: float


def piqa_correct(choices: Sequence[int], piqa: Sequence[Mapping]) -> list[float]:
    """Per PIQA item, whether the choice is the right solution (1.0 / 0.0)."""
    return [float(c == int(p["label"])) for c, p in zip(choices, piqa)]


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def base_predictions(
    runner: LMRunner,
    model,
    seqs: Sequence[EvalSequence],
    piqa_seqs: list[int],
    piqa: Sequence[Mapping],
    *,
    base_fingerprint: str,
    dataset_fingerprint: str,
    padding_side: str,
    use_cache: bool,
) -> PreEdit:
    """The base `model`'s predictions on the locality sequences of ``seqs`` and its PIQA sequences
    ``piqa_seqs``: read from the cache, else scored (and written, with ``use_cache``); none
    (empty, NaN accuracy) when there are neither."""
    loc = [s for s, q in enumerate(seqs) if q.role == LOC]
    if not loc and not piqa_seqs:
        return PreEdit({}, [], float("nan"))
    key = _sha(
        {
            "model": base_fingerprint,
            "metric": M.METRIC_VERSION,
            "pad": padding_side,
            "loc": [(seqs[s].ids, seqs[s].start) for s in loc],
            "piqa": [(seqs[s].ids, seqs[s].start) for s in piqa_seqs],
        }
    )
    path = cache_dir() / "preedit" / f"{key}.json"
    data = _read_preedit(path) if use_cache else None
    if data is not None:
        accuracy = data["piqa_accuracy"] if data["piqa_accuracy"] is not None else float("nan")
        return PreEdit(dict(zip(loc, data["loc"])), data["piqa"], accuracy)
    outs = runner.score(model, seqs, loc + piqa_seqs, generate=False, desc="pre-edit (base)")
    pre = PreEdit({s: outs[s].pred for s in loc}, piqa_choices(seqs, piqa_seqs, outs), float("nan"))
    if piqa:
        pre.piqa_accuracy = M.mean(piqa_correct(pre.piqa, piqa))
    if use_cache:
        _write_preedit(
            path,
            {
                "loc": [pre.loc[s] for s in loc],
                "piqa": pre.piqa,
                "piqa_accuracy": None if math.isnan(pre.piqa_accuracy) else pre.piqa_accuracy,
                "base_fingerprint": base_fingerprint,
                "dataset_fingerprint": dataset_fingerprint,
                "metric_version": M.METRIC_VERSION,
            },
        )
    return pre


def _read_preedit(path) -> dict | None:
    """The cached base predictions at ``path``, or None when absent or unreadable."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        data = None
    if not isinstance(data, dict) or {"loc", "piqa", "piqa_accuracy"} - set(data):
        log.warning("ignoring unreadable pre-edit cache %s", path)
        return None
    log.info("pre-edit predictions from cache %s", path)
    return data


def _write_preedit(path, payload: dict) -> None:
    """Write atomically (a temp file renamed), so that a concurrent reader never sees half a file."""
    atomic_file(path, lambda tmp: Path(tmp).write_text(json.dumps(payload)))
