"""The edit driver behind `editeval edit`: apply a method's edits in one of three modes, evaluate
them with the evaluation core, and write a results record.

Modes (what "edited model" each metric is taken on):

- ``single``: each edit is applied to the untouched model, its row is evaluated, then the edit is
  undone exactly (`restore`). The usual "single edit" numbers of the field.
- ``batch``: ``edit_batch_size`` edits at once; the batch is evaluated on that model, then undone.
  With one batch holding every edit this is MEMIT's "many edits at once".
- ``sequential``: edits accumulate on one model (``edit_batch_size`` at a time, default 1); every
  edit is evaluated after the last one was applied. With ``eval_every_edit`` each edit is also
  evaluated right after it was applied, written as a second record ``<out>.after-each.json``.

Locality always compares against the untouched base model (its predictions are computed once by
the `Evaluator` before any edit). Bad requests (empty prompt or target, a target that tokenises to
nothing, a subject missing from its prompt for methods that need it) are reported and skipped
with a count, never fatal to the rest.

Other-Task (PIQA) locality is not computed per edit here (hundreds of sequences per edit); score
a saved checkpoint with `editeval score` for it.

Resuming: every finished edit is appended as one JSON line to ``<out>.partial.jsonl`` (first line:
a header naming the run; a rerun with other settings is refused). A rerun skips what is done. In
sequential mode the current values of every changed weight are also saved after each step to
``<out>.partial.safetensors``, so a rerun continues from the same edited model. In batch mode rows
are saved every `EVAL_CHUNK` edits, and a batch whose edit took more than `SAVE_BATCH_AFTER_S` is
saved applied to the same file, so an interrupted evaluation of a mass edit (MEMIT's 10,000 edits)
resumes without editing again; a partly evaluated batch is applied whole again otherwise. The
partial files are removed when the record is written. A finished single-mode record at ``--out``
of the same run over fewer requests is continued the same way: ``--limit 200`` after ``--limit
100`` edits 100-199.
Records, checkpoints and partial state are written to a temporary name and renamed into place.

Data-parallel: launched in several processes (`editeval.runtime.distributed`, e.g.
``accelerate launch --multi_gpu --num_processes N -m editeval edit --mode single ...``) each
process holds its own model replica and appends to its own ``<out>.partial.rank<R>.jsonl``. In
single mode each process edits and evaluates its block of the edits still to do. In batch mode
every process applies each batch and evaluates its block of the batch's edits; a method's costly
per-request preparation (MEMIT's value vectors, `Method.prepare`) is shared out the same way
first, through the method's cache (one machine, or a shared cache folder), and the forward passes
inside the method's apply over the whole batch (MEMIT's keys) are split between the processes
(`distributed.split_map`), which apply the batch in step. Every process reads all progress files
of the run at the start, so a rerun resumes whatever the number of processes. The
main process gathers the rows and writes the same record as one process. Sequential mode is
refused under several processes.

Saving (``--save-checkpoint``): a model whose edit changed weights only is written as a normal
Hugging Face checkpoint; a model carrying additions of a wrapper method (IKE's prompt, GRACE's
codebook, T-Patcher's / CaliNET's neurons; `editeval.methods.kit.artifacts`) is written as a method artifact
folder that `editeval score --model DIR --base MODEL` installs on the base model (docs/artifacts.md).
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from editeval.methods.kit import artifacts
from editeval.methods.kit import key_stats_files
from editeval.errors import EditevalError
from editeval.runtime.paths import atomic_dir, datasets_dir_of_run
from editeval.runtime.settings import Runtime
from editeval.run.config import EditConfig
from editeval.run.meta import run_meta
from editeval.methods.base import Backup, Method, backup_parameters, get_method, restore

log = logging.getLogger(__name__)

MODES = ("single", "batch", "sequential")
SAVE_BATCH_AFTER_S = 60.0  # a batch whose edit took longer is saved applied (redoing it costs more)
EVAL_CHUNK = 100  # batch mode: edits evaluated (and their rows saved) at a time


@dataclass
class EditSummary:
    out: Path
    n_requests: int
    n_edited: int
    skipped: list[dict] = field(default_factory=list)
    seconds_per_edit: float | None = None
    checkpoint: Path | None = None
    after_each: Path | None = None
    record: Any = None


# --------------------------------------------------------------------------- validation


def check_mode(method: Method, mode: str, edit_batch_size: int | None, save_checkpoint: str | None,
               n_requests: int | None = None) -> None:
    """Refuse, with one clear line, what this method or mode cannot do."""
    if mode not in MODES:
        raise EditevalError(f"--mode {mode}: choose from {', '.join(MODES)}")
    if edit_batch_size is not None and edit_batch_size < 1:
        raise EditevalError(f"--batch-size {edit_batch_size}: must be at least 1")
    if mode == "single" and edit_batch_size not in (None, 1):
        raise EditevalError("--batch-size applies to --mode batch or sequential, not single")
    if mode == "sequential" and not method.sequential:
        raise EditevalError(f"method '{method.name}' does not support sequential editing (edits cannot accumulate)")
    if mode in ("batch", "sequential") and not method.batch and (
            (edit_batch_size or (0 if mode == "sequential" else 2)) > 1):
        raise EditevalError(
            f"method '{method.name}' edits one request at a time: use --mode single, or "
            f"--mode sequential without --batch-size (it does not support batch editing)")
    if save_checkpoint:
        if mode == "single":
            raise EditevalError("--save-checkpoint needs one edited model: use --mode sequential, "
                                "or --mode batch with one batch (every edit is undone in single mode)")
        if mode == "batch" and edit_batch_size is not None and n_requests is not None and edit_batch_size < n_requests:
            raise EditevalError("--save-checkpoint in batch mode needs one batch holding every edit "
                                "(leave out --batch-size), or use --mode sequential")


def check_hparams_layers(model: torch.nn.Module, hparams) -> None:
    """A preset naming a layer the model does not have fails before any edit is tried."""
    from editeval.runtime.architectures import check_layer, num_layers

    n = num_layers(model)
    for name in ("layer", "layers"):
        value = getattr(hparams, name, None)
        if value is None:
            continue
        for layer in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(layer, int):
                check_layer(model, hparams.scale_layer(layer, n))


def request_problem(request: dict, method: Method, tokenizer) -> str | None:
    """Why this request cannot be edited by `method`, or None when it can."""
    prompt, target = request.get("prompt") or "", request.get("target_new") or ""
    if not prompt.strip():
        return "empty prompt"
    if not target.strip():
        return "empty target_new"
    if not tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"]:
        return f"target_new {target!r} tokenises to nothing"
    if method.needs_subject:
        subject = request.get("subject") or ""
        if not subject.strip():
            return f"method '{method.name}' needs a subject and the request has none"
        if subject not in prompt:
            return f"subject {subject!r} does not occur in the prompt {prompt!r}"
    return None


def method_request(request: dict, tokenizer, chat_template: bool) -> dict:
    """The request as the method sees it: with --chat-template its prompt is wrapped exactly as
    the evaluation wraps it (the subject stays inside the prompt)."""
    if not chat_template:
        return request
    from editeval.runtime.tokens import chat_prompt

    return {**request, "prompt": chat_prompt(tokenizer, request["prompt"])}


# --------------------------------------------------------------------------- partial state


def _same_run(saved: dict | None, header: dict) -> bool:
    """Whether saved progress belongs to this run. In single mode every edit is applied to the
    untouched model, so its rows do not depend on how many requests the run has (--limit)."""
    if not saved:
        return False
    if header["mode"] == "single":
        return {**saved, "n_requests": 0} == {**header, "n_requests": 0}
    return saved == header


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
            self.entries = self._read(self.path)
            # rewrite without a cut-short tail so later appends stay parseable
            self._rewrite()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite()
        if header["mode"] != "sequential":
            for path in self._siblings():
                if path != self.path:
                    self.foreign += self._read(path)

    def _siblings(self) -> list[Path]:
        """Every progress file of this output path (one process's or one per process)."""
        return sorted(self.path.parent.glob(glob.escape(self.out.name) + ".partial*.jsonl"))

    def _read(self, path: Path) -> list[dict]:
        lines = path.read_text().splitlines()
        try:
            first = json.loads(lines[0]) if lines else {}
        except ValueError:
            first = {}
        if not _same_run(first.get("header"), self.header):
            raise EditevalError(
                f"{path} holds progress of a different run (other method, hparams, model, data or "
                f"mode): delete it to start afresh")
        entries = []
        for line in lines[1:]:
            try:
                entries.append(json.loads(line))
            except ValueError:
                break  # a line cut short by an interruption: everything after it is redone
        # a single-mode run may be continued with a longer or shorter --limit: edits are independent
        return [e for e in entries if e["index"] < self.header["n_requests"]]

    def all_entries(self) -> list[dict]:
        """The other progress files' entries, then this one's."""
        return self.foreign + self.entries

    def _rewrite(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps({"header": self.header}) + "\n")
            for entry in self.entries:
                fh.write(json.dumps(entry) + "\n")
        os.replace(tmp, self.path)

    def append(self, entry: dict) -> None:
        self.entries.append(entry)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(entry, default=_json_default) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def save_state(self, model: torch.nn.Module, names: set[str]) -> None:
        """Sequential mode: the current values of the changed weights, tagged with the indices
        applied so far (the state file, not the progress lines, says which edits the weights hold)."""
        applied = sorted(e["index"] for e in self.entries if not e.get("skipped"))
        if artifacts.additions(model):  # written first: the weights file below says what is applied
            artifacts.save_artifact(model, self.artifact_path, method=self.header["method"], hparams={},
                                    base_model=self.header["model"], base_fingerprint="", extra={"applied": applied})
        self._write_state(model, names, {"applied": json.dumps(applied)})

    def _write_state(self, model: torch.nn.Module, names: set[str], metadata: dict[str, str]) -> None:
        from safetensors.torch import save_file

        tensors = {n: model.get_parameter(n).detach().to("cpu").contiguous() for n in sorted(names)}
        fd, tmp = tempfile.mkstemp(dir=self.state_path.parent, prefix=f".{self.state_path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, self.state_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

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
        with torch.no_grad():
            for name, value in tensors.items():
                model.get_parameter(name).copy_(value)
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
                raise EditevalError(f"{self.artifact_path} does not match {self.state_path} (interrupted while "
                                    f"saving): delete both and {self.path} to start afresh")
            artifacts.load_artifact(model, self.artifact_path, check_base=False)
        tensors = load_file(self.state_path)
        with torch.no_grad():
            for name, value in tensors.items():
                model.get_parameter(name).copy_(value)
        return set(tensors)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        if self.header["mode"] != "sequential":
            for path in self._siblings():
                path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)
        shutil.rmtree(self.artifact_path, ignore_errors=True)


def _carry_over_record(out: Path, header: dict, requests: list[dict], generation: bool) -> int:
    """Single mode: a finished record at `out` of the same run over fewer requests (an earlier,
    smaller --limit) becomes the progress of this one, so ``--limit 200`` after ``--limit 100``
    edits only requests 100-199. Edits are independent of each other in single mode, so the old
    rows are exactly what this run would compute. Returns how many requests were carried over."""
    from editeval.evaluation import results as R
    from editeval.run.scoring import dataset_fingerprint

    if not out.exists() or any(out.parent.glob(glob.escape(out.name) + ".partial*.jsonl")):
        return 0
    try:
        record = R.read_record(out)
        rows = R.read_rows(out).to_dict("records")
    except Exception:  # not a readable record: this run overwrites it, as before
        return 0
    meta = record.meta
    n_old = meta.n_requests
    same = (meta.metric_version == R.METRIC_VERSION and meta.mode == "single"
            and meta.method == header["method"] and meta.hparams_hash == header["hparams_hash"]
            and meta.base_model == header["model"] and meta.base_fingerprint == header["base_fingerprint"]
            and (meta.benchmark, meta.config, meta.split) == (header["benchmark"], header["config"], header["split"])
            and meta.chat_template == header["chat_template"] and meta.generation == generation
            and isinstance(n_old, int) and n_old < len(requests)
            and meta.dataset_fingerprint == dataset_fingerprint(requests[:n_old]))
    if not same:
        return 0
    skipped = {s["index"]: s for s in meta.skipped or []}
    edited = [i for i in range(n_old) if i not in skipped]
    if len(edited) != len(rows) or any(str(requests[i].get("case_id")) != str(row.get("case_id"))
                                       for i, row in zip(edited, rows) if "case_id" in row):
        return 0
    entries = [{"index": i, "case_id": requests[i].get("case_id"), "skipped": True, "reason": s.get("reason", "")}
               for i, s in skipped.items()]
    entries += [{"index": i, "case_id": requests[i].get("case_id"), "edit_seconds": meta.seconds_per_edit,
                 "row": _clean_row(row)} for i, row in zip(edited, rows)]
    lines = [{"header": {**header, "n_requests": n_old}}] + entries
    path = out.with_name(out.name + ".partial.jsonl")
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.writelines(json.dumps(line, default=_json_default) + "\n" for line in lines)
    os.replace(tmp, path)
    log.info("continuing the %d finished edits of %s", n_old, out)
    return n_old


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (every device's) random generators."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _json_default(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _clean_row(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def _restore_nan(row: dict) -> dict:
    return {k: (float("nan") if v is None and k != "case_id" else v) for k, v in row.items()}


# --------------------------------------------------------------------------- checkpoint


def save_checkpoint(model: torch.nn.Module, tokenizer, directory: str | os.PathLike) -> Path:
    """Write the model + tokenizer as a normal Hugging Face safetensors folder (temp, then rename)."""
    target = Path(directory)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


# --------------------------------------------------------------------------- the driver


def _find_bad(apply, model, indices: list[int], requests: dict) -> dict[int, str]:
    """The requests of a failed batch that fail alone (each tried with `apply` and undone), with the reason."""
    bad = {}
    for i in indices:
        try:
            restore(model, apply([requests[i]]))
        except EditevalError as err:
            bad[i] = str(err)
    return bad


def load_requests(opts: EditConfig, runtime: Runtime, limit: int | None) -> tuple[list[dict], str]:
    """The first `limit` requests of the benchmark split and their fingerprint (as `editeval score`)."""
    from editeval.run.scoring import dataset_fingerprint
    from editeval.data import load_requests as load_split

    records = load_split(opts.benchmark, opts.split, opts.config, limit, runtime.datasets_dir)
    return records, dataset_fingerprint(records)


def run_edits(opts: EditConfig, runtime: Runtime = Runtime(), *, loaded=None, requests: list[dict] | None = None,
              dataset_fingerprint: str = "") -> EditSummary:
    """Apply and evaluate the edits described by `opts` under `runtime` (device, dtype, placement,
    progress, datasets folder); write the record. `loaded` (a `LoadedModel`) and `requests` may be
    given directly instead of being loaded by name.

    Launched in several processes (`editeval.runtime.distributed`; single and batch mode), each process
    edits (single) or evaluates (batch) its block of the edits still to do on its own replica,
    appending to its own progress file; the main process gathers the rows and writes the record
    one process writes (the others return a summary without ``record``). The seeds are reset before
    each edit, or group of edits applied together (``seed + index`` of its first), so an edit's row
    does not depend on which process did it, or when, and a resumed run continues as an
    uninterrupted one would."""
    with datasets_dir_of_run(runtime.datasets_dir):
        return _run_edits(opts, runtime, loaded, requests, dataset_fingerprint)


def _run_edits(opts: EditConfig, runtime: Runtime, loaded, requests: list[dict] | None,
               dataset_fingerprint: str) -> EditSummary:
    from tqdm.auto import tqdm

    from editeval.runtime import distributed
    from editeval.evaluation import results as R
    from editeval.evaluation.evaluator import Evaluator, evaluation_columns, run_counterfact
    from editeval.runtime.models import load

    wall0 = time.perf_counter()
    method = get_method(opts.method)
    check_mode(method, opts.mode, opts.edit_batch_size, opts.save_checkpoint)
    n_procs = distributed.launched_processes()
    if n_procs > 1 and opts.mode == "sequential":
        raise EditevalError(f"--mode sequential edits one model step after step, which is not data-parallel: run it "
                            f"in one process (this run has {n_procs}), or use --mode single or batch")
    dist = distributed.setup(runtime.device)
    if dist is not None and runtime.device_map not in (None, "none"):
        raise EditevalError("--device-map spreads one model over the devices; it does not combine with several processes "
                            "(each process holds its own replica): launch one process, or leave out --device-map")
    if opts.hparams_path is not None and not Path(opts.hparams_path).exists():
        raise EditevalError(f"hyper-parameter file not found: {opts.hparams_path}")
    run_fingerprint = dataset_fingerprint  # what the progress file is tied to
    if requests is not None and not dataset_fingerprint:  # the record names its data all the same
        from editeval.run.scoring import dataset_fingerprint as fingerprint_of

        dataset_fingerprint = fingerprint_of(requests)
    handed = requests is not None  # else loaded from the benchmark split, which declares its protocols
    if requests is None:
        requests, dataset_fingerprint = load_requests(opts, runtime, opts.limit)
        run_fingerprint = dataset_fingerprint
        if opts.mode == "single":  # progress rows stay valid for another --limit of the same split
            run_fingerprint = load_requests(opts, runtime, None)[1]
    if not requests:
        raise EditevalError(f"no edit requests in {opts.benchmark}/{opts.split}")
    check_mode(method, opts.mode, opts.edit_batch_size, opts.save_checkpoint, len(requests))
    with distributed.main_first(dist):  # conversions and trained editors are cached by the main process
        if loaded is None:
            loaded = load(opts.model, device=distributed.process_device(dist, runtime.device), dtype=runtime.dtype,
                          device_map=runtime.device_map)
        if loaded.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        model, tok = loaded.model, loaded.tokenizer
        hparams = method.load_hparams(model, opts.model if opts.hparams_path is None else None, opts.hparams_path)
    check_hparams_layers(model, hparams)
    torch.manual_seed(opts.seed)

    # bad requests: reported and skipped
    skipped: list[dict] = []
    valid: list[int] = []
    for i, r in enumerate(requests):
        problem = request_problem(r, method, tok)
        if problem:
            skipped.append({"index": i, "case_id": r.get("case_id"), "reason": problem})
            log.warning("skipping request %d (case_id %s): %s", i, r.get("case_id"), problem)
        else:
            valid.append(i)
    if not valid:
        raise EditevalError(f"none of the {len(requests)} requests can be edited by '{method.name}' "
                            f"(first problem: {skipped[0]['reason']})")

    out = opts.out_path()
    if out.suffix != ".json":
        raise EditevalError(f"--out {out}: the results record must be a .json path")
    mode = opts.mode
    k = opts.edit_batch_size or (len(valid) if mode == "batch" else 1)
    base_fp = loaded.fingerprint()
    # a sequential run resuming on saved edited weights uses the base model's key statistics, as an
    # uninterrupted run does
    key_stats_files.pin_fingerprint(model, base_fp)
    hp_dict = hparams.to_dict()
    hp_hash = R.hparams_hash(hp_dict)
    header = {"method": method.name, "hparams_hash": hp_hash, "model": str(opts.model), "base_fingerprint": base_fp,
              "benchmark": opts.benchmark, "config": opts.config, "split": opts.split,
              "dataset_fingerprint": run_fingerprint, "n_requests": len(requests), "mode": mode,
              "edit_batch_size": k, "chat_template": opts.chat_template, "eval_every_edit": opts.eval_every_edit}
    if mode == "single" and distributed.is_main_process():
        _carry_over_record(out, header, requests, opts.generation)
    if dist is not None:
        dist.barrier()  # the carried-over progress is written before any process reads it
    partial = Partial(out, header, rank=None if dist is None else dist.rank)
    saved_batch = partial.saved_batch() if mode == "batch" else None  # read before any process writes

    # the plan: groups of requests applied together, and which of each group this process evaluates
    groups = [valid[s: s + k] for s in range(0, len(valid), k)]
    if dist is None:
        plan = [(group, group) for group in groups]
    else:
        dist.barrier()  # every process has read the progress files before any process adds to them
        finished = {e["index"] for e in partial.all_entries()}
        if mode == "single":  # each process edits and evaluates its block of the edits still to do
            plan = [([i], [i]) for i in dist.shard([i for i in valid if i not in finished])]
        else:  # batch: every process applies each batch, and evaluates its block of the batch
            plan = [(todo, dist.shard(todo)) for todo in ([i for i in g if i not in finished] for g in groups) if todo]
    mine = [i for _, part in plan for i in part]  # the requests this process evaluates
    ev_requests = [requests[i] for i in mine]
    ev_index = {i: j for j, i in enumerate(mine)}
    # decided on every valid request, so that each process's rows have the same columns
    counterfact = run_counterfact(opts.benchmark, opts.config, opts.split, [requests[i] for i in valid],
                                  loaded=not handed)
    try:
        evaluator = Evaluator(loaded, ev_requests, batch_size=opts.eval_batch_size, chat_template=opts.chat_template,
                              generation=opts.generation, dataset_fingerprint=dataset_fingerprint, progress=False,
                              counterfact=counterfact)
    except ValueError as err:  # bad records, a tokenizer without a chat template
        raise EditevalError(f"cannot evaluate {opts.benchmark}/{opts.split}: {err}") from None
    edit_requests = {i: method_request(requests[i], tok, opts.chat_template) for i in valid}

    changed: set[str] = set()
    kept_batch = False  # batch mode + checkpoint: the one batch stays applied for saving
    if mode == "sequential":
        changed = partial.load_state(model)
        if changed:
            log.info("resuming sequential run from %s", partial.state_path)
    done = {e["index"]: e for e in partial.all_entries()}

    def apply(reqs: list[dict]):
        # in batch mode every process applies each batch alike: the method's gathers over the
        # batch may be shared out (`distributed.split_map`; MEMIT's keys)
        with distributed.collective(dist if mode == "batch" else None):
            return method.apply(model, tok, reqs, hparams)

    desc = f"{method.name} {mode}" + (f" (process 0 of {dist.world})" if dist is not None else "")
    bar = tqdm(total=len(mine), initial=sum(1 for i in mine if i in done), unit="edit", desc=desc,
               disable=not (runtime.progress and distributed.is_main_process()), dynamic_ncols=True)
    try:
        for group, part in plan:
            todo = [i for i in group if i not in done]  # applied together
            if not todo:
                continue
            if mode == "batch":  # a batch is applied whole, also when some of its edits were evaluated before
                todo = [i for i in group if not done.get(i, {}).get("skipped")]
            applied = set(todo)
            ours = [i for i in part if i in applied and i not in done]  # evaluated by this process
            from_saved = saved_batch is not None and saved_batch[0] == todo  # applied by an interrupted run
            if dist is not None and mode == "batch" and method.prepare is not None and not from_saved:
                # the costly per-request part of the batch (MEMIT's values), shared out over the processes
                method.prepare(model, tok, [edit_requests[i] for i in todo], hparams, dist.share)
                dist.barrier()
            if not ours and not (dist is not None and mode == "batch"):  # nothing of this group here
                continue
            reqs = [edit_requests[i] for i in todo]
            # the edits' randomness depends on them alone, not on what ran before: a resumed sequential
            # run (or another process) draws what an uninterrupted run draws
            seed_everything(opts.seed + todo[0])
            t0 = time.perf_counter()
            if from_saved:
                log.info("batch of %d edits: weights saved by an interrupted run loaded from %s", len(todo),
                         partial.state_path)
                backup, seconds = partial.load_batch(model), saved_batch[1]
            else:
                try:
                    backup = apply(reqs)
                except EditevalError as err:
                    # find the bad request(s) of the group alone, report and skip them, edit the rest
                    bad = {todo[0]: str(err)} if len(todo) == 1 else _find_bad(apply, model, todo, edit_requests)
                    if not bad:
                        raise EditevalError(f"edit of requests {todo[0]}..{todo[-1]} failed: {err}") from None
                    for i, reason in bad.items():
                        if i not in ours:  # another process reports it
                            continue
                        log.warning("skipping request %d (case_id %s): %s", i, requests[i].get("case_id"), reason)
                        partial.append({"index": i, "case_id": requests[i].get("case_id"), "skipped": True,
                                        "reason": reason})
                        done[i] = partial.entries[-1]
                        bar.update(1)
                    todo = [i for i in todo if i not in bad]
                    ours = [i for i in ours if i not in bad]
                    if not todo:
                        continue
                    reqs = [edit_requests[i] for i in todo]
                    t0 = time.perf_counter()
                    backup = apply(reqs)
                if loaded.device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t0
                if (mode == "batch" and seconds >= SAVE_BATCH_AFTER_S and distributed.is_main_process()
                        and not artifacts.additions(model)):
                    partial.save_batch(model, set(backup), todo, seconds)
            per_edit = seconds / len(todo)
            if mode == "sequential":  # one process: ours is todo
                changed |= set(backup)
                row_now = None
                if opts.eval_every_edit:
                    row_now = evaluator.evaluate(model, [ev_index[i] for i in todo])
                for n, i in enumerate(todo):
                    partial.append({"index": i, "case_id": requests[i].get("case_id"), "edit_seconds": per_edit,
                                    "row_after_each": _clean_row(row_now[n]) if row_now else None})
                    done[i] = partial.entries[-1]
                partial.save_state(model, changed)
                bar.update(len(todo))
                continue
            for start in range(0, len(ours), EVAL_CHUNK):  # rows saved as they come: a long evaluation resumes
                chunk = ours[start:start + EVAL_CHUNK]
                rows = evaluator.evaluate(model, [ev_index[i] for i in chunk])
                for i, row in zip(chunk, rows):
                    partial.append({"index": i, "case_id": requests[i].get("case_id"), "edit_seconds": per_edit,
                                    "row": _clean_row(row)})
                    done[i] = partial.entries[-1]
                bar.update(len(chunk))
            if opts.save_checkpoint and mode == "batch":
                kept_batch = True
            else:
                restore(model, backup)
    finally:
        bar.close()

    entries = {e["index"]: e for e in partial.all_entries()}
    if dist is not None:  # every process's entries (each has the ones read at the start)
        for part in dist.gather(partial.entries):
            entries.update({e["index"]: e for e in part})
    failed = [{"index": e["index"], "case_id": e.get("case_id"), "reason": e.get("reason", "")}
              for _, e in sorted(entries.items()) if e.get("skipped")]
    skipped += failed
    edited = [i for i in valid if i in entries and not entries[i].get("skipped")]
    if not distributed.is_main_process():  # the main process writes the record
        return EditSummary(out=out, n_requests=len(requests), n_edited=len(edited), skipped=skipped)
    if not edited:
        raise EditevalError(f"no request could be edited by '{method.name}' (first problem: {skipped[0]['reason']})")

    checkpoint = None
    after_each_path = None
    if mode == "sequential":
        rows = evaluator.evaluate(model, [ev_index[i] for i in edited])
        edited_fp = loaded.fingerprint()
    else:
        # in the columns of one evaluator over every valid request (rows may come from evaluators
        # over parts of them: other processes, or an earlier run with another --limit)
        columns = evaluation_columns([requests[i] for i in valid], generation=opts.generation,
                                     counterfact=counterfact)
        rows = [{c: row.get(c, math.nan) for c in columns} for row in (_restore_nan(entries[i]["row"]) for i in edited)]
        edited_fp = ""
    if opts.save_checkpoint:
        if mode == "batch" and not kept_batch:
            # the batch was evaluated in an earlier (interrupted) run: apply it again for the checkpoint
            method.apply(model, tok, [edit_requests[i] for i in edited], hparams)
        if mode == "batch":
            edited_fp = loaded.fingerprint()
        if artifacts.additions(model):  # a wrapper method: its additions, loaded with the base model
            checkpoint = artifacts.save_artifact(model, opts.save_checkpoint, method=method.name, hparams=hp_dict,
                                                 base_model=str(opts.model), base_fingerprint=base_fp,
                                                 extra={"n_edits": len(edited), "mode": mode})
        else:
            checkpoint = save_checkpoint(model, tok, opts.save_checkpoint)

    edit_seconds = sum(entries[i]["edit_seconds"] for i in edited)
    meta = run_meta(
        benchmark=opts.benchmark, config=opts.config, split=opts.split, dataset_fingerprint=dataset_fingerprint,
        n_edits=len(rows), limit=opts.limit, base_model=str(opts.model), base_fingerprint=base_fp, loaded=loaded,
        edited_model=str(checkpoint) if checkpoint else f"{opts.model} + {method.name} ({mode})",
        edited_fingerprint=edited_fp, batch_size=opts.eval_batch_size, chat_template=opts.chat_template,
        generation=opts.generation, started=wall0,
    )
    meta |= {
        "method": method.name, "hparams": hp_dict, "hparams_hash": hp_hash, "mode": mode,
        "edit_batch_size": k, "seconds_per_edit": edit_seconds / len(edited),
        "edit_seconds_total": round(edit_seconds, 3), "n_requests": len(requests),
        "n_skipped": len(skipped), "skipped": skipped,
        "evaluated": "after all edits" if mode == "sequential" else f"after each {'edit' if mode == 'single' else 'batch'}, then undone",
    }
    record = R.build_record(rows, meta)
    R.write_record(record, rows, out)
    if mode == "sequential" and opts.eval_every_edit:
        each_rows = [_restore_nan(entries[i]["row_after_each"]) for i in edited]
        each_meta = {**meta, "evaluated": "each edit right after it was applied"}
        after_each_path = out.with_name(out.name[: -len(".json")] + ".after-each.json")
        R.write_record(R.build_record(each_rows, each_meta), each_rows, after_each_path)
    partial.remove()
    if skipped:
        log.warning("%d of %d requests skipped (see meta.skipped in %s)", len(skipped), len(requests), out)
    return EditSummary(out=out, n_requests=len(requests), n_edited=len(edited), skipped=skipped,
                       seconds_per_edit=edit_seconds / len(edited), checkpoint=checkpoint,
                       after_each=after_each_path, record=record)

