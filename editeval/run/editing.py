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

Other-Task (PIQA) locality (``piqa_items``, ``--piqa N``) and fluency (``--fluency``) are off by
default here (PIQA would score N items on every edited model: once per edit in single mode); with
them on, the rows have the columns a scored checkpoint has.

Resuming (`editeval.run.partial`): every finished edit is appended to ``<out>.partial.jsonl``; a
rerun skips what is done, continues a sequential run on its saved weights, and a batch run on its
saved applied batch (rows saved every `modes.EVAL_CHUNK` edits); ``--limit 200`` after ``--limit
100`` of a finished single-mode record edits 100-199. Records, checkpoints and partial state are
written to a temporary name and renamed into place.

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

Case benchmarks (MQuAKE, RippleEdits: several edits per evaluation unit, scored by the authors'
protocol) go through `editeval.run.cases` instead, in single mode.

Saving (``--save-checkpoint``): a model whose edit changed weights only is written as a normal
Hugging Face checkpoint; a model carrying additions of a wrapper method (IKE's prompt, GRACE's
codebook, T-Patcher's / CaliNET's neurons; `editeval.methods.kit.artifacts`) is written as a method artifact
folder that `editeval score --model DIR --base MODEL` installs on the base model (docs/artifacts.md).

In parts: this module is the edit side of the one pipeline (`editeval.run.session` has the steps
it shares with checkpoint scoring: process group, requests, evaluator, record writer); `modes` holds
what differs between the modes (`check_mode`, `plan`, `EditLoop`), `partial` the progress file and
resume (`Partial`), `prepare` the steps before editing.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from editeval.errors import EditevalError
from editeval.methods.base import get_method
from editeval.methods.kit import artifacts, key_stats_files
from editeval.run.config import EditConfig
from editeval.run.modes import EditLoop, check_mode, group_size, plan
from editeval.run.partial import Partial, carry_over_record, restore_nan
from editeval.run.prepare import load_model, read_requests, refuse_early, screen_requests
from editeval.run.session import Session, load_piqa
from editeval.runtime.paths import atomic_dir
from editeval.runtime.settings import Runtime

log = logging.getLogger(__name__)


@dataclass
class EditSummary:
    """What `run_edits` did; `record` (the written record) on the main process only."""

    out: Path
    n_requests: int
    n_edited: int
    skipped: list[dict] = field(default_factory=list)
    seconds_per_edit: float | None = None
    checkpoint: Path | None = None
    after_each: Path | None = None
    record: Any = None


def method_request(request: dict, tokenizer, chat_template: bool) -> dict:
    """The request as the method sees it: with --chat-template its prompt is wrapped exactly as
    the evaluation wraps it (the subject stays inside the prompt)."""
    if not chat_template:
        return request
    from editeval.runtime.tokens import chat_prompt

    return {**request, "prompt": chat_prompt(tokenizer, request["prompt"])}


def save_checkpoint(model: torch.nn.Module, tokenizer, directory: str | os.PathLike) -> Path:
    """Write the model + tokenizer as a normal Hugging Face safetensors folder (temp, then rename)."""
    target = Path(directory)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


# --------------------------------------------------------------------------- the pipeline


def run_edits(
    opts: EditConfig,
    runtime: Runtime = Runtime(),
    *,
    loaded=None,
    requests: list[dict] | None = None,
    dataset_fingerprint: str = "",
) -> EditSummary:
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
    return _run_edits(opts, runtime, loaded, requests, dataset_fingerprint)


def _run_edits(
    opts: EditConfig, runtime: Runtime, loaded, given: list[dict] | None, dataset_fingerprint: str
) -> EditSummary:
    from tqdm.auto import tqdm

    from editeval.evaluation.cases import is_case_benchmark
    from editeval.evaluation.results import hparams_hash
    from editeval.runtime import distributed

    if is_case_benchmark(opts.benchmark):  # several edits per case, scored by the benchmark's own protocol
        from editeval.run.cases import run_case_edits

        return run_case_edits(opts, runtime, loaded, given)
    method = get_method(opts.method)
    session = refuse_early(opts, method, runtime)
    run_fingerprint = read_requests(session, opts, given, dataset_fingerprint)
    requests = session.requests
    check_mode(method, opts.mode, opts.edit_batch_size, opts.save_checkpoint, len(requests))
    loaded, hparams = load_model(opts, session, method, loaded)
    dist = session.dist
    model, tok = loaded.model, loaded.tokenizer
    skipped, valid = screen_requests(requests, method, tok)

    out = session.out
    mode = opts.mode
    k = group_size(mode, opts.edit_batch_size, len(valid))
    base_fp = loaded.fingerprint()
    # a sequential run resuming on saved edited weights uses the base model's key statistics, as an
    # uninterrupted run does
    key_stats_files.pin_fingerprint(model, base_fp)
    hp_dict = hparams.to_dict()
    header = {
        "method": method.name,
        "hparams_hash": hparams_hash(hp_dict),
        "model": str(opts.model),
        "base_fingerprint": base_fp,
        "benchmark": opts.benchmark,
        "config": opts.config,
        "split": opts.split,
        "dataset_fingerprint": run_fingerprint,
        "n_requests": len(requests),
        "mode": mode,
        "edit_batch_size": k,
        "chat_template": opts.chat_template,
        "eval_every_edit": opts.eval_every_edit,
        "curve_every": opts.curve_every,
        "curve_sample": opts.curve_sample,
        "fluency": opts.fluency,
        "piqa_items": opts.piqa_items,
        "wild": opts.wild,
        "judge": opts.judge,
    }
    partial = _open_progress(out, header, requests, opts.generation, dist)
    saved_batch = partial.saved_batch() if mode == "batch" else None  # read before any process writes

    finished: set[int] = set()  # under several processes: finished edits are not shared out again
    if dist is not None:
        dist.barrier()  # every process has read the progress files before any process adds to them
        finished = {e["index"] for e in partial.all_entries()}
    groups = plan(mode, valid, k, dist, finished)
    mine = [i for _, part in groups for i in part]  # the requests this process evaluates
    piqa = load_piqa(opts.piqa_items, runtime.datasets_dir)
    # decided on every valid request, so that each process's rows have the same columns
    counterfact = session.counterfact(opts.benchmark, opts.config, opts.split, [requests[i] for i in valid])
    evaluator = session.evaluator(
        loaded,
        [requests[i] for i in mine],
        opts,
        counterfact=counterfact,
        piqa=piqa,
        label=f"evaluate {opts.benchmark}/{opts.split}",
    )

    changed: set[str] = set()
    if mode == "sequential":
        changed = partial.load_state(model)
        if changed:
            log.info("resuming sequential run from %s", partial.state_path)
    done = {e["index"]: e for e in partial.all_entries()}
    desc = f"{method.name} {mode}" + (f" (process 0 of {dist.world})" if dist is not None else "")
    bar = tqdm(
        total=len(mine),
        initial=sum(1 for i in mine if i in done),
        unit="edit",
        desc=desc,
        disable=not (runtime.progress and distributed.is_main_process()),
        dynamic_ncols=True,
    )
    loop = EditLoop(
        mode=mode,
        method=method,
        loaded=loaded,
        hparams=hparams,
        requests=requests,
        edit_requests={i: method_request(requests[i], tok, opts.chat_template) for i in valid},
        evaluator=evaluator,
        ev_index={i: j for j, i in enumerate(mine)},
        partial=partial,
        done=done,
        bar=bar,
        dist=dist,
        seed=opts.seed,
        eval_every_edit=opts.eval_every_edit,
        curve_every=opts.curve_every,
        curve_sample=opts.curve_sample,
        keep_batch=bool(opts.save_checkpoint) and mode == "batch",
        saved_batch=saved_batch,
        changed=changed,
        datasets_dir=runtime.datasets_dir,
    )
    try:
        loop.run(groups)
    finally:
        bar.close()

    entries = _all_entries(partial, dist)
    skipped += [
        {"index": e["index"], "case_id": e.get("case_id"), "reason": e.get("reason", "")}
        for _, e in sorted(entries.items())
        if e.get("skipped")
    ]
    edited = [i for i in valid if i in entries and not entries[i].get("skipped")]
    if not distributed.is_main_process():  # the main process writes the record
        return EditSummary(out=out, n_requests=len(requests), n_edited=len(edited), skipped=skipped)
    if not edited:
        raise EditevalError(f"no request could be edited by '{method.name}' (first problem: {skipped[0]['reason']})")
    return _write_results(session, opts, loop, header, hp_dict, entries, valid, edited, skipped, counterfact, piqa)


def _with_timings(rows: list[dict], edit: list, evaluate: list) -> list[dict]:
    """The rows with each edit's seconds (`results.EDIT_SECONDS`, `results.EVALUATE_SECONDS`; NaN
    where not measured, e.g. rows carried over from a record written before timings were kept)."""
    from editeval.evaluation.results import EDIT_SECONDS, EVALUATE_SECONDS

    def num(v):
        return math.nan if v is None else float(v)

    return [{**row, EDIT_SECONDS: num(e), EVALUATE_SECONDS: num(v)} for row, e, v in zip(rows, edit, evaluate)]


def _open_progress(out: Path, header: dict, requests: list[dict], generation: bool, dist) -> Partial:
    """This process's progress file, after a finished single-mode record was carried over into it."""
    from editeval.runtime import distributed

    if header["mode"] == "single" and distributed.is_main_process():
        carry_over_record(out, header, requests, generation)
    if dist is not None:
        dist.barrier()  # the carried-over progress is written before any process reads it
    return Partial(out, header, rank=None if dist is None else dist.rank)


def _all_entries(partial: Partial, dist) -> dict[int, dict]:
    """Every finished edit's progress entry, by index: every process's under several."""
    entries = {e["index"]: e for e in partial.all_entries()}
    if dist is not None:  # every process's entries (each has the ones read at the start)
        for part in dist.gather(partial.entries):
            entries.update({e["index"]: e for e in part})
    return entries


def _write_results(
    session: Session,
    opts: EditConfig,
    loop: EditLoop,
    header: dict,
    hp_dict: dict,
    entries: dict[int, dict],
    valid: list[int],
    edited: list[int],
    skipped: list[dict],
    counterfact: bool,
    piqa: list[dict],
) -> EditSummary:
    """The main process: the rows, the checkpoint (if asked), the record(s); the progress files go."""
    mode, method, loaded, requests, out = opts.mode, loop.method, loop.loaded, loop.requests, session.out
    model, base_fp, evaluator = loaded.model, header["base_fingerprint"], loop.evaluator
    checkpoint = None
    after_each_path = None
    item_values = None
    if mode == "sequential":
        t0 = time.perf_counter()
        rows = evaluator.evaluate(model, [loop.ev_index[i] for i in edited])
        per_row = (time.perf_counter() - t0) / len(edited)  # every edit scored in one pass over the final model
        eval_seconds = dict.fromkeys(edited, per_row)
        item_values = evaluator.last_piqa  # one edited model: PIQA summarised over its items, as scored
        edited_fp = loaded.fingerprint()
    else:
        # in the columns of one evaluator over every valid request (rows may come from evaluators
        # over parts of them: other processes, or an earlier run with another --limit)
        columns = session.columns([requests[i] for i in valid], opts, counterfact=counterfact, piqa=bool(piqa))
        rows = [{c: row.get(c, math.nan) for c in columns} for row in (restore_nan(entries[i]["row"]) for i in edited)]
        eval_seconds = {i: entries[i].get("eval_seconds") for i in edited}
        edited_fp = ""
    rows = _with_timings(rows, [entries[i]["edit_seconds"] for i in edited], [eval_seconds[i] for i in edited])
    if opts.save_checkpoint:
        if mode == "batch" and not loop.kept_batch:
            # the batch was evaluated in an earlier (interrupted) run: apply it again for the checkpoint
            reqs = [loop.edit_requests[i] for i in edited]  # by the main process alone (not collective)
            method.edit(model, loaded.tokenizer, reqs, loop.hparams, datasets_dir=loop.datasets_dir)
        if mode == "batch":
            edited_fp = loaded.fingerprint()
        if artifacts.additions(model):  # a wrapper method: its additions, loaded with the base model
            checkpoint = artifacts.save_artifact(
                model,
                opts.save_checkpoint,
                method=method.name,
                hparams=hp_dict,
                base_model=str(opts.model),
                base_fingerprint=base_fp,
                extra={"n_edits": len(edited), "mode": mode},
            )
        else:
            checkpoint = save_checkpoint(model, loaded.tokenizer, opts.save_checkpoint)

    edit_seconds = sum(entries[i]["edit_seconds"] for i in edited)
    fields = {
        # the timing fields stay empty: rows come from many evaluations, in several processes or runs
        "piqa_items": len(piqa),
        "base_piqa_accuracy": evaluator.base_piqa_accuracy if piqa else None,
        "method": method.name,
        "hparams": hp_dict,
        "hparams_hash": header["hparams_hash"],
        "mode": mode,
        "edit_batch_size": header["edit_batch_size"],
        "seconds_per_edit": edit_seconds / len(edited),
        "edit_seconds_total": round(edit_seconds, 3),
        "n_requests": len(requests),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "evaluated": "after all edits"
        if mode == "sequential"
        else f"after each {'edit' if mode == 'single' else 'batch'}, then undone",
        "curve": [entries[i]["curve"] for i in edited if "curve" in entries[i]] or None,
    }
    write = dict(
        loaded=loaded,
        data=opts.model_dump(include={"benchmark", "config", "split", "limit"}),
        ev=opts,
        models={
            "base_model": str(opts.model),
            "base_fingerprint": base_fp,
            "edited_model": str(checkpoint) if checkpoint else f"{opts.model} + {method.name} ({mode})",
            "edited_fingerprint": edited_fp,
        },
    )
    record = session.write(rows, fields=fields, item_values=item_values, **write)
    if mode == "sequential" and opts.eval_every_edit:
        each_rows = [restore_nan(entries[i]["row_after_each"]) for i in edited]
        each_rows = _with_timings(each_rows, [entries[i]["edit_seconds"] for i in edited], [None] * len(edited))
        after_each_path = out.with_name(out.name[: -len(".json")] + ".after-each.json")
        each_fields = {**fields, "evaluated": "each edit right after it was applied"}
        session.write(each_rows, fields=each_fields, out=after_each_path, **write)
    loop.partial.remove()
    if skipped:
        log.warning("%d of %d requests skipped (see meta.skipped in %s)", len(skipped), len(requests), out)
    return EditSummary(
        out=out,
        n_requests=len(requests),
        n_edited=len(edited),
        skipped=skipped,
        seconds_per_edit=edit_seconds / len(edited),
        checkpoint=checkpoint,
        after_each=after_each_path,
        record=record,
    )
