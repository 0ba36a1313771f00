"""Resuming an edit run: its progress file (`Partial`) and the finished record carried over.

Every finished edit is appended as one JSON line to ``<out>.partial.jsonl`` (first line: a header
naming the run; a rerun with other settings is refused). A rerun skips what is done. In sequential
mode the current values of every changed weight (and what the method carries from edit to edit,
`editeval.methods.kit.edit_state`) are also saved after each step to
``<out>.partial.safetensors`` (and a wrapper method's additions to ``<out>.partial.artifact``), so
a rerun continues from the same edited model. In batch mode a batch whose edit took long is saved
applied to the same file (when its edit took over `modes.SAVE_BATCH_AFTER_S`), so an interrupted
evaluation of a mass edit (MEMIT's 10,000 edits) resumes without editing again; a partly evaluated
batch is applied whole again otherwise. The partial files are removed when the record is written.
A finished single-mode record at ``--out`` of the same run over fewer requests is continued the
same way (`carry_over_record`): ``--limit 200`` after ``--limit 100`` edits 100-199.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import shutil
from pathlib import Path

import torch

from editeval.errors import EditevalError
from editeval.methods.base import Backup, backup_parameters
from editeval.methods.kit import artifacts, edit_state
from editeval.runtime.paths import atomic_file

log = logging.getLogger(__name__)


def _same_run(saved: dict | None, header: dict) -> bool:
    """Whether saved progress belongs to this run. In single mode every edit is applied to the
    untouched model, so its rows do not depend on how many requests the run has (--limit)."""
    if not saved:
        return False
    if header["mode"] == "single":
        return {**saved, "n_requests": 0} == {**header, "n_requests": 0}
    return saved == header


def _read_progress(path: Path, header: dict) -> list[dict]:
    """The entries of one progress file of the run `header` names; refused if of another run."""
    lines = path.read_text().splitlines()
    try:
        first = json.loads(lines[0]) if lines else {}
    except ValueError:
        first = {}
    if not _same_run(first.get("header"), header):
        raise EditevalError(
            f"{path} holds progress of a different run (other method, hparams, model, data or "
            f"mode): delete it to start afresh"
        )
    entries = []
    for line in lines[1:]:
        try:
            entries.append(json.loads(line))
        except ValueError:
            break  # a line cut short by an interruption: everything after it is redone
    # a single-mode run may be continued with a longer or shorter --limit: edits are independent
    return [e for e in entries if e["index"] < header["n_requests"]]


def _copy_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Put saved weights (by parameter name) into `model`."""
    with torch.no_grad():
        for name, value in tensors.items():
            model.get_parameter(name).copy_(value)


class Partial:
    """The append-only progress file of one run (+ the sequential weights file).

    A data-parallel run (`editeval.runtime.distributed`; single or batch mode) gives each process its own
    file, ``<out>.partial.rank<R>.jsonl`` (`rank`); every process also reads the other progress
    files of the same run (`foreign`), so a rerun with another number of processes resumes too.
    `remove` then removes them all."""

    def __init__(self, out: Path, header: dict, rank: int | None = None):
        suffix = ".partial.jsonl" if rank is None else f".partial.rank{rank}.jsonl"
        self.path = out.with_name(out.name + suffix)
        self.state_path = out.with_name(out.name + ".partial.safetensors")
        # what wrapper methods added (GRACE's codebook, T-Patcher's neurons...): an artifact folder
        self.artifact_path = out.with_name(out.name + ".partial.artifact")
        self.out = out
        self.header = header
        self.entries: list[dict] = []
        self.foreign: list[dict] = []  # single mode: entries of the run's other progress files
        if self.path.exists():
            self.entries = _read_progress(self.path, header)
            # rewrite without a cut-short tail so later appends stay parseable
            self._rewrite()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite()
        if header["mode"] != "sequential":
            for path in self._siblings():
                if path != self.path:
                    self.foreign += _read_progress(path, header)

    def _siblings(self) -> list[Path]:
        """Every progress file of this output path (one process's or one per process)."""
        return sorted(self.path.parent.glob(glob.escape(self.out.name) + ".partial*.jsonl"))

    def all_entries(self) -> list[dict]:
        """The other progress files' entries, then this one's."""
        return self.foreign + self.entries

    def _rewrite(self) -> None:
        lines = [{"header": self.header}, *self.entries]
        atomic_file(self.path, lambda tmp: Path(tmp).write_text("".join(json.dumps(line) + "\n" for line in lines)))

    def append(self, entry: dict) -> None:
        self.entries.append(entry)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(entry, default=json_default) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def save_state(self, model: torch.nn.Module, names: set[str]) -> None:
        """Sequential mode: the current values of the changed weights, tagged with the indices
        applied so far (the state file, not the progress lines, says which edits the weights hold)."""
        applied = sorted(e["index"] for e in self.entries if not e.get("skipped"))
        if artifacts.additions(model):  # written first: the weights file below says what is applied
            artifacts.save_artifact(
                model,
                self.artifact_path,
                method=self.header["method"],
                hparams={},
                base_model=self.header["model"],
                base_fingerprint="",
                extra={"applied": applied},
            )
        # + what the method carries from edit to edit (AlphaEdit's earlier keys...)
        self._write_state(model, names, {"applied": json.dumps(applied)}, edit_state.tensors(model))

    def _write_state(
        self, model: torch.nn.Module, names: set[str], metadata: dict[str, str], extra: dict | None = None
    ) -> None:
        from safetensors.torch import save_file

        tensors = {n: model.get_parameter(n).detach().to("cpu").contiguous() for n in sorted(names)}
        tensors.update(extra or {})
        atomic_file(self.state_path, lambda tmp: save_file(tensors, tmp, metadata=metadata))

    # batch mode: a batch whose edit took long is saved applied (its changed weights, the indices
    # it holds, the seconds it took), so that an interrupted evaluation resumes without editing again
    def save_batch(self, model: torch.nn.Module, names: set[str], indices: list[int], seconds: float) -> None:
        self._write_state(model, names, {"batch": json.dumps(indices), "seconds": str(seconds)})

    def saved_batch(self) -> tuple[list[int], float] | None:
        """(indices, edit seconds) of the batch saved by an interrupted run, if any."""
        from safetensors import safe_open

        if not self.state_path.exists():
            return None
        with safe_open(str(self.state_path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return (json.loads(meta["batch"]), float(meta["seconds"])) if "batch" in meta else None

    def load_batch(self, model: torch.nn.Module) -> Backup:
        """Put the saved batch's weights into `model`; returns the weights they replaced."""
        from safetensors.torch import load_file

        tensors = load_file(self.state_path)
        backup = backup_parameters(model, sorted(tensors))
        _copy_weights(model, tensors)
        return backup

    def load_state(self, model: torch.nn.Module) -> set[str]:
        """Load the saved weights into `model`; progress lines of edits they do not hold are
        dropped (they are redone)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        applied: set[int] = set()
        if self.state_path.exists():
            with safe_open(str(self.state_path), framework="pt") as fh:
                applied = set(json.loads((fh.metadata() or {}).get("applied", "[]")))
        kept = [e for e in self.entries if e.get("skipped") or e["index"] in applied]
        if len(kept) != len(self.entries):
            self.entries = kept
            self._rewrite()
        if not self.state_path.exists():
            return set()
        if artifacts.is_artifact(self.artifact_path):
            if artifacts.read_artifact(self.artifact_path).get("applied") != sorted(applied):
                raise EditevalError(
                    f"{self.artifact_path} does not match {self.state_path} (interrupted while "
                    f"saving): delete both and {self.path} to start afresh"
                )
            artifacts.load_artifact(model, self.artifact_path, check_base=False)
        tensors = load_file(self.state_path)
        edit_state.load(model, tensors)
        weights = {name: value for name, value in tensors.items() if not name.startswith(edit_state.PREFIX)}
        _copy_weights(model, weights)
        return set(weights)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        if self.header["mode"] != "sequential":
            for path in self._siblings():
                path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)
        shutil.rmtree(self.artifact_path, ignore_errors=True)


def carry_over_record(out: Path, header: dict, requests: list[dict], generation: bool) -> int:
    """Single mode: a finished record at `out` of the same run over as many or fewer requests (the
    same command again, or an earlier, smaller --limit) becomes the progress of this one, so
    ``--limit 200`` after ``--limit 100`` edits only requests 100-199, and the same command run
    twice edits nothing the second time (delete the record to compute it again). Edits are
    independent of each other in single mode, so the old rows are exactly what this run would
    compute. Returns how many requests were carried over."""
    from editeval.evaluation import results as R
    from editeval.evaluation.evaluator import FLUENCY
    from editeval.evaluation.specs import WILD, WILD_JUDGE, MetricName

    WILD_RELIABILITY = str(MetricName("reliability", WILD))  # noqa: N806
    JUDGE_RELIABILITY = str(MetricName("reliability", WILD_JUDGE))  # noqa: N806
    from editeval.run.session import dataset_fingerprint

    if not out.exists() or any(out.parent.glob(glob.escape(out.name) + ".partial*.jsonl")):
        return 0
    try:
        record = R.read_record(out)
        rows = R.read_rows(out).to_dict("records")
    except Exception:  # not a readable record: this run overwrites it, as before
        return 0
    meta = record.meta
    n_old = meta.n_requests
    same = (
        meta.metric_version == R.METRIC_VERSION
        and meta.mode == "single"
        and meta.method == header["method"]
        and meta.hparams_hash == header["hparams_hash"]
        and meta.base_model == header["model"]
        and meta.base_fingerprint == header["base_fingerprint"]
        and (meta.benchmark, meta.config, meta.split) == (header["benchmark"], header["config"], header["split"])
        and meta.chat_template == header["chat_template"]
        and meta.generation == generation
        and meta.piqa_items == header["piqa_items"]
        and (FLUENCY in record.metrics) == header["fluency"]
        and (WILD_RELIABILITY in record.metrics) == header["wild"]
        and (JUDGE_RELIABILITY in record.metrics) == bool(header["judge"])
        and isinstance(n_old, int)
        and n_old <= len(requests)
        and meta.dataset_fingerprint == dataset_fingerprint(requests[:n_old])
    )
    if not same:
        return 0
    skipped = {s["index"]: s for s in meta.skipped or []}
    edited = [i for i in range(n_old) if i not in skipped]
    if len(edited) != len(rows) or any(
        str(requests[i].get("case_id")) != str(row.get("case_id")) for i, row in zip(edited, rows) if "case_id" in row
    ):
        return 0
    entries = [
        {"index": i, "case_id": requests[i].get("case_id"), "skipped": True, "reason": s.get("reason", "")}
        for i, s in skipped.items()
    ]
    entries += [_carried(i, requests[i].get("case_id"), row, meta.seconds_per_edit) for i, row in zip(edited, rows)]
    lines = [{"header": {**header, "n_requests": n_old}}] + entries
    path = out.with_name(out.name + ".partial.jsonl")
    atomic_file(
        path, lambda tmp: Path(tmp).write_text("".join(json.dumps(line, default=json_default) + "\n" for line in lines))
    )
    log.info("continuing the %d finished edits of %s", n_old, out)
    return n_old


def _carried(index: int, case_id, row: dict, seconds_per_edit) -> dict:
    """The progress entry of a finished record's row: its metrics, and its timings where it has them
    (an older record only has the mean seconds per edit)."""
    from editeval.evaluation.results import EDIT_SECONDS, EVALUATE_SECONDS, is_timing

    def measured(column):
        value = row.get(column)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

    edit = measured(EDIT_SECONDS)
    return {
        "index": index,
        "case_id": case_id,
        "edit_seconds": seconds_per_edit if edit is None else edit,
        "eval_seconds": measured(EVALUATE_SECONDS),
        "row": clean_row({k: v for k, v in row.items() if not is_timing(k)}),
    }


def json_default(value):
    """NaN as null, tensors and NumPy scalars as their Python value."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def clean_row(row: dict) -> dict:
    """A row as the progress file holds it: NaN as null."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def restore_nan(row: dict) -> dict:
    """A row read back from the progress file: null as NaN again (`case_id` may be null)."""
    return {k: (float("nan") if v is None and k != "case_id" else v) for k, v in row.items()}
