"""Verifying a submission: score it again, in a temporary copy, with this editeval, and compare the
per-edit rows with the ones it carries (`editeval leaderboard verify`).

A submission's `results.json` and rows are what its submitter's editeval wrote; `editeval
leaderboard build` already refuses a record whose figures are not its rows', but rows forged
together with their figures pass that. Verification re-scores the submission as it declares
itself (same data, base model, method and hyper-parameters or checkpoint, same PIQA items and
fluency setting) and compares: the metric version, the data, base and edited-model fingerprints,
then every per-edit value (case ids in the same order, the same columns; values within
`TOLERANCE`, NaN where the other has NaN; the per-edit seconds are not compared). The verdict is written beside the record as
`verification.json`, a stamp naming the editeval and torch versions, the device, the date, the
result and the sha256 of the `results.json` it verified; the site shows an entry as "verified"
only while that stamp says so for the record it shows, and "self-reported" otherwise. A stamp
that says the record was not reproduced makes the site list the entry as invalid.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from editeval.errors import EditevalError
from editeval.evaluation.results import is_timing
from editeval.leaderboard.manifest import RESULTS, STAGING, atomic_write_text
from editeval.runtime.settings import Runtime

STAMP = "verification.json"
# per-edit values may differ by this much (absolute) and still count as reproduced: the same
# machine gives identical rows; another device or BLAS changes float sums in their last bits
TOLERANCE = 1e-6
VERIFIED, NOT_REPRODUCED = "verified", "not reproduced"
COMPARED_META = ("metric_version", "dataset_fingerprint", "base_fingerprint", "edited_fingerprint", "n_edits")


@dataclass
class Verdict:
    slug: str
    result: str  # VERIFIED or NOT_REPRODUCED
    reason: str  # why not reproduced ("" when verified)
    stamp: dict

    @property
    def verified(self) -> bool:
        return self.result == VERIFIED


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify_submission(
    folder: str | Path,
    *,
    runtime: Runtime = Runtime(),
    tolerance: float = TOLERANCE,
    requests: list[dict] | None = None,
) -> Verdict:
    """Re-score `folder` in a temporary copy, compare, write the stamp and return the verdict.
    `requests` replaces the benchmark split (tests). A submission that cannot be scored at all
    raises its one-line `EditevalError`."""
    from editeval.evaluation.evaluator import FLUENCY
    from editeval.evaluation.results import read_record, read_rows
    from editeval.evaluation.specs import WILD, MetricName
    from editeval.leaderboard import records
    from editeval.leaderboard.submissions import score_submission

    folder = Path(folder)
    results = folder / RESULTS
    if not results.is_file():
        raise EditevalError(f"{folder.name}: not scored yet (no {RESULTS}): nothing to verify")
    reason = ""
    try:
        records.read(results)  # its figures are its rows' (the build's check)
    except EditevalError as err:
        reason = f"{RESULTS}: {err}"
    if not reason:
        claimed = read_record(results)
        with tempfile.TemporaryDirectory(prefix="editeval-verify-") as tmp:
            copy = Path(tmp) / folder.name
            shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(RESULTS, "*.rows.parquet", STAMP, STAGING))
            again = score_submission(
                copy,
                runtime=runtime,
                piqa_items=claimed.meta.piqa_items,
                fluency=FLUENCY in claimed.metrics,
                wild=str(MetricName("reliability", WILD)) in claimed.metrics,
                requests=requests,
            )
            reason = _difference(claimed, read_rows(results), again, read_rows(copy / RESULTS), tolerance)
    stamp = _stamp(results, VERIFIED if not reason else NOT_REPRODUCED, reason, tolerance, runtime)
    atomic_write_text(folder / STAMP, json.dumps(stamp, indent=2) + "\n")
    return Verdict(folder.name, stamp["result"], reason, stamp)


def _difference(claimed, claimed_rows, again, again_rows, tolerance: float) -> str:
    """The first way the re-scored record differs from the claimed one, or ""."""
    for key in COMPARED_META:
        mine, theirs = getattr(again.meta, key), getattr(claimed.meta, key)
        if mine != theirs:
            stale = " (scored with another metric version: rescore it)" if key == "metric_version" else ""
            return f"{key}: the record says {theirs!r}, scoring it again gives {mine!r}{stale}"
    # each run measures its own seconds (`results.is_timing`): only the metrics must agree
    claimed_rows = claimed_rows[[c for c in claimed_rows.columns if not is_timing(c)]]
    again_rows = again_rows[[c for c in again_rows.columns if not is_timing(c)]]
    if list(claimed_rows.columns) != list(again_rows.columns):
        return f"per-edit columns differ: the record has {list(claimed_rows.columns)}, scoring again gives {list(again_rows.columns)}"
    if list(claimed_rows["case_id"]) != list(again_rows["case_id"]):
        return "per-edit rows are not the same edits in the same order (case_id)"
    for column in claimed_rows.columns:
        if column == "case_id":
            continue
        for case, a, b in zip(again_rows["case_id"], claimed_rows[column], again_rows[column]):
            if math.isnan(a) != math.isnan(b) or (not math.isnan(a) and abs(a - b) > tolerance):
                return f"{column} of case {case}: the record says {a!r}, scoring it again gives {b!r}"
    return ""


def _stamp(results: Path, result: str, reason: str, tolerance: float, runtime: Runtime) -> dict:
    import platform

    import torch

    import editeval
    from editeval.evaluation.results import METRIC_VERSION

    return {
        "result": result,
        "reason": reason,
        "results_sha256": sha256_of(results),
        "tolerance": tolerance,
        "editeval_version": editeval.__version__,
        "metric_version": METRIC_VERSION,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": runtime.device,
        "dtype": runtime.dtype,
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def read_stamp(folder: Path) -> dict | None:
    """The folder's verification stamp when it is about the record now there, else None."""
    path = folder / STAMP
    results = folder / RESULTS
    if not path.is_file() or not results.is_file() or path.stat().st_size > 64 * 1024:
        return None
    try:
        stamp = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(stamp, dict) or stamp.get("results_sha256") != sha256_of(results):
        return None
    return stamp
