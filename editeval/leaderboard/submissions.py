"""Leaderboard submissions: what a submission is, and scoring it (the manifest is in `manifest.py`,
its safety checks in `checks.py`).

A submission is a folder `submissions/<slug>/` holding `submission.yaml` and, once scored,
`results.json` (the results record, `editeval.evaluation.results`) with its per-edit Parquet side file.
What is scored is one of:

- `score.checkpoint`: an edited model folder *inside* the submission folder (safetensors only);
- `score.hub`: a Hugging Face Hub repo id (`org/name` or `org/name@revision`), downloaded with
  safetensors/json/txt files only (never with `HF_HUB_OFFLINE=1`);
- `score.hparams`: a method run: editeval applies `method.name` with this hyper-parameter file
  (inside the folder) or `preset` (editeval's preset for the base model);
- `score.unedited: true`: the base model itself (the reference row every edit is compared with).

Submissions come from strangers, so nothing in them is ever executed: weights load from
safetensors only (pickle files are refused), `trust_remote_code` is never set and a checkpoint that
ships code or asks for it (`auto_map`) is refused, every path must stay inside the submission
folder (no `..`, no absolute paths, no symlinks leading out), and file sizes are capped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import (
    ValidationError,
)

from editeval.errors import EditevalError
from editeval.leaderboard.checks import (
    CheckedSubmission,
    base_is_registered,
    check_fits_base,
    check_submission,
    fetch_hub_checkpoint,
)
from editeval.leaderboard.manifest import (
    DEFAULT_LIMITS,
    MANIFEST,
    RESULTS,
    STAGING,
    SUBMISSIONS_DIR,
    Limits,
    Submission,
    SubmissionError,
    atomic_write_text,
)
from editeval.runtime.settings import Runtime

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- scoring


def base_model_dir(checked: CheckedSubmission) -> Path:
    from editeval.runtime.models import model_dir

    name = checked.submission.base_model.name
    return model_dir(name) if base_is_registered(name) else checked.dir / name


def count_parameters(model_dir: Path) -> int | None:
    """Parameter count from the safetensors headers (no weights are read)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open is not iterable
                n = 1
                for d in fh.get_slice(name).get_shape():
                    n *= d
                total += n
    return total or None


class Current:
    """What a submission would be scored against now: base fingerprints (loading each base once),
    dataset fingerprints (of the first N requests), hyper-parameters. One instance per call."""

    def __init__(
        self, device: str = "cpu", requests: list[dict] | None = None, datasets_dir: str | os.PathLike | None = None
    ):
        self.device = device
        self.requests = requests  # tests: scored instead of the benchmark split
        self.datasets_dir = datasets_dir  # None: `paths.datasets_dir()`
        self._base: dict[str, str] = {}
        self._data: dict[tuple, str] = {}

    def base_fingerprint(self, base_dir: Path) -> str:
        key = str(base_dir.resolve())
        if key not in self._base:
            from editeval.runtime.models import load

            self._base[key] = load(base_dir, device=self.device).fingerprint()
        return self._base[key]

    def load_requests(self, sub: Submission) -> list[dict]:
        """The first `num_edits` records the submission is scored on: edit requests, or the cases
        of a case benchmark (MQuAKE, RippleEdits: there `num_edits` counts cases)."""
        from editeval.data import load_benchmark, load_requests
        from editeval.evaluation.cases import is_case_benchmark

        if self.requests is not None:
            return [dict(r) for r in self.requests][: sub.num_edits]
        bench = sub.benchmark
        if is_case_benchmark(bench.name):
            cases = load_benchmark(bench.name, bench.split, bench.config, self.datasets_dir)
            return cases.select(range(min(sub.num_edits, len(cases)))).to_list()
        return load_requests(bench.name, bench.split, bench.config, sub.num_edits, self.datasets_dir)

    def dataset_fingerprint(self, sub: Submission) -> str:
        from editeval.run.session import dataset_fingerprint

        key = (sub.benchmark.name, sub.benchmark.config, sub.benchmark.split, sub.num_edits)
        if key not in self._data:
            self._data[key] = dataset_fingerprint(self.load_requests(sub))
        return self._data[key]

    def hparams(self, checked: CheckedSubmission) -> dict:
        """The hyper-parameters a method run would use (its file, or editeval's preset)."""
        from types import SimpleNamespace

        from transformers import AutoConfig

        from editeval.methods import get_method

        method = get_method(checked.submission.method.name)
        base_dir = base_model_dir(checked)
        stand_in = SimpleNamespace(config=AutoConfig.from_pretrained(base_dir, trust_remote_code=False))
        hparams = method.load_hparams(stand_in, checked.submission.base_model.name, checked.hparams_path)
        return hparams.to_dict()


def staleness(checked: CheckedSubmission, current: Current) -> str | None:
    """Why `results.json` must be (re)computed, or None when it is up to date: missing or unreadable,
    another results schema or metric version, the submission changed (benchmark, split, edits,
    mode, hyper-parameters), the base model's weights or the dataset changed."""
    from editeval.evaluation.metrics import METRIC_VERSION
    from editeval.evaluation.results import SCHEMA_VERSION, grouped_batch_size, hparams_hash

    path = checked.results_path
    if not path.is_file():
        return f"no {RESULTS}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data.get("schema_version") if isinstance(data, dict) else None
        if str(version) != SCHEMA_VERSION:
            return f"results schema version {version!r} (now {SCHEMA_VERSION!r})"
        from editeval.evaluation.results import ResultsRecord

        meta = ResultsRecord.model_validate(data).meta
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as err:
        return f"{RESULTS} unreadable ({str(err).splitlines()[0]})"
    sub = checked.submission
    if meta.metric_version != METRIC_VERSION:
        return f"metric version {meta.metric_version} (now {METRIC_VERSION})"
    declared = (sub.benchmark.name, sub.benchmark.config, sub.benchmark.split, sub.num_edits, sub.mode, sub.batch_size)
    recorded = (
        meta.benchmark,
        meta.config,
        meta.split,
        meta.limit,
        meta.mode,
        grouped_batch_size(meta.mode, meta.edit_batch_size),
    )
    if declared != recorded:
        return f"submission changed: benchmark/config/split/num_edits/mode/batch_size {recorded} -> {declared}"
    if sub.score.kind == "method" and meta.hparams_hash != hparams_hash(current.hparams(checked)):
        return f"hyper-parameters changed (hash {meta.hparams_hash} -> {hparams_hash(current.hparams(checked))})"
    base_fp = current.base_fingerprint(base_model_dir(checked))
    if meta.base_fingerprint != base_fp:
        return f"base model changed (fingerprint {meta.base_fingerprint} -> {base_fp})"
    data_fp = current.dataset_fingerprint(sub)
    if meta.dataset_fingerprint != data_fp:
        return f"dataset changed (fingerprint {meta.dataset_fingerprint} -> {data_fp})"
    return None


def score_submission(
    directory: str | os.PathLike,
    *,
    runtime: Runtime = Runtime(),
    fluency: bool = False,
    piqa_items: int | None = None,
    wild: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    requests: list[dict] | None = None,
    current: Current | None = None,
):
    """Score one submission folder under `runtime` (device, dtype, progress, datasets folder) and
    write `results.json` + its per-edit Parquet beside `submission.yaml` (both renamed into place
    only when scoring succeeded).

    A checkpoint (local or Hub) is scored with `editeval.run.scoring.score_checkpoint` against the
    declared base model (its fingerprint must match); a method run goes through the edit driver
    (`editeval.run.editing.run_edits`) in the declared mode; `unedited` scores the base model itself.
    Seeds are fixed, so scoring twice gives the same numbers. `requests` replaces the benchmark
    split (tests). Returns the `ResultsRecord`."""
    import torch

    from editeval.evaluation.results import read_record, rows_path

    checked = check_submission(directory, limits=limits)
    sub = checked.submission
    current = current or Current(device="cpu", requests=requests, datasets_dir=runtime.datasets_dir)
    base_dir = base_model_dir(checked)
    base_fp = current.base_fingerprint(base_dir)
    if base_fp != sub.base_model.fingerprint:
        message = (
            f"base_model.fingerprint {sub.base_model.fingerprint} does not match base model "
            f"'{sub.base_model.name}' (its weights have fingerprint {base_fp})"
        )
        if sub.score.kind in ("checkpoint", "hub"):
            raise SubmissionError(checked.dir / MANIFEST, [message + ": the checkpoint was edited from another base"])
        log.warning("%s: %s; scoring the method on the current base", checked.slug, message)
    if sub.score.kind == "hub":
        checked.checkpoint_dir = fetch_hub_checkpoint(checked, limits)
    if sub.score.kind in ("checkpoint", "hub"):  # from the headers, before any tensor is loaded
        check_fits_base(checked, checked.checkpoint_dir, base_dir)

    reqs = current.load_requests(sub)
    from editeval.run.config import DEFAULT_PIQA_ITEMS
    from editeval.run.session import dataset_fingerprint

    data_fp = dataset_fingerprint(reqs)
    staging = checked.dir / STAGING  # made by the first write into it: a run refused before leaves no folder
    out = staging / RESULTS
    extra = {
        "submission": checked.slug,
        "submission_kind": sub.score.kind,
        "limit": sub.num_edits,
        "base_num_parameters": count_parameters(base_dir),
    }
    torch.manual_seed(0)
    if sub.score.kind == "method":
        from editeval.run.config import EditConfig
        from editeval.run.editing import run_edits
        from editeval.runtime.models import load

        config = EditConfig(
            method=sub.method.name,
            model=sub.base_model.name,
            benchmark=sub.benchmark.name,
            config=sub.benchmark.config,
            split=sub.benchmark.split,
            limit=sub.num_edits,
            mode=sub.mode,
            edit_batch_size=sub.batch_size,
            hparams_path=str(checked.hparams_path) if checked.hparams_path else None,
            out=str(out),
            seed=0,
            wild=wild,
        )
        loaded = load(base_dir, device=runtime.device, dtype=runtime.dtype, device_map=runtime.device_map)
        loaded.name = sub.base_model.name
        run_edits(config, runtime, loaded=loaded, requests=reqs, dataset_fingerprint=data_fp)
        record = read_record(out)
        record.meta = record.meta.model_copy(update=extra)
        atomic_write_text(out, record.model_dump_json(indent=2) + "\n")
    else:
        from editeval.run.scoring import score_checkpoint

        model = base_dir if sub.score.kind == "unedited" else checked.checkpoint_dir
        extra.update(
            mode=sub.mode,
            edit_batch_size=sub.batch_size,
            base_model=sub.base_model.name,
            edited_model=sub.score.hub or sub.score.checkpoint or sub.base_model.name,
        )
        score_checkpoint(
            model,
            base=base_dir,
            benchmark=sub.benchmark.name,
            split=sub.benchmark.split,
            config=sub.benchmark.config,
            limit=sub.num_edits,
            runtime=runtime,
            fluency=fluency,
            wild=wild,
            piqa_items=DEFAULT_PIQA_ITEMS if piqa_items is None else piqa_items,
            out=out,
            requests=reqs,
            extra_meta=extra,
        )
    # both files into place: the rows first, so a results.json never points at missing rows
    os.replace(rows_path(out), rows_path(checked.results_path))
    os.replace(out, checked.results_path)
    shutil.rmtree(staging, ignore_errors=True)
    return read_record(checked.results_path)


def list_submissions(submissions_dir: str | os.PathLike = SUBMISSIONS_DIR) -> list[Path]:
    root = Path(submissions_dir)
    if not root.is_dir():
        raise EditevalError(f"submissions folder not found: {root}")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def stale_submissions(
    submissions_dir: str | os.PathLike = SUBMISSIONS_DIR,
    *,
    current: Current | None = None,
) -> list[tuple[Path, str]]:
    """(folder, reason) for every submission whose results are missing or stale. Folders whose
    submission.yaml is invalid are reported with their problems (they cannot be scored)."""
    current = current or Current()
    out = []
    for folder in list_submissions(submissions_dir):
        try:
            reason = staleness(check_submission(folder, check_files=False), current)
        except EditevalError as err:
            reason = f"invalid: {str(err).splitlines()[0]}"
        if reason:
            out.append((folder, reason))
    return out


@dataclass
class ScoreAllReport:
    scored: list[Path] = field(default_factory=list)
    up_to_date: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def score_all(
    submissions_dir: str | os.PathLike = SUBMISSIONS_DIR,
    *,
    force: bool = False,
    runtime: Runtime = Runtime(),
    fluency: bool = False,
    wild: bool = False,
    piqa_items: int | None = None,
    echo=print,
    current: Current | None = None,
) -> ScoreAllReport:
    """Score every submission whose results are missing or stale (all of them with `force`), under
    `runtime`. A submission that fails is reported and the others still run."""
    current = current or Current(datasets_dir=runtime.datasets_dir)
    stale = {p: r for p, r in stale_submissions(submissions_dir, current=current)}
    report = ScoreAllReport()
    for folder in list_submissions(submissions_dir):
        reason = stale.get(folder, "forced" if force else None)
        if reason is None:
            report.up_to_date.append(folder)
            continue
        if reason.startswith("invalid: "):
            report.failed.append((folder, reason))
            echo(f"{folder.name}: {reason}")
            continue
        echo(f"{folder.name}: scoring ({reason})")
        try:
            score_submission(
                folder, runtime=runtime, fluency=fluency, piqa_items=piqa_items, wild=wild, current=current
            )
            report.scored.append(folder)
        except EditevalError as err:
            report.failed.append((folder, str(err).splitlines()[0]))
            echo(f"{folder.name}: failed: {str(err).splitlines()[0]}")
    return report
