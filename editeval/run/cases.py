"""Case mode: how a case benchmark (`editeval.evaluation.cases`: MQuAKE, RippleEdits) goes through
the one pipeline, beside the request modes of `editeval.run.modes`.

- ``editeval edit --benchmark mquake|rippleedits`` (`run_case_edits`, single mode): each case's
  edits are applied together to the untouched model — one call where the method edits in batches,
  else one edit after the other — the case is scored by its benchmark's protocol, and every edit
  is undone (`restore`, last first). One row per case: ``case_id`` and the protocol's columns, with
  ``seconds.edit`` (applying the case's edits) and ``seconds.evaluate``.
- ``editeval score --benchmark mquake|rippleedits`` (`score_cases`): every case scored on the one
  checkpoint (the unedited model itself gives the "no edit" row); what the protocol takes from the
  unedited model (RippleEdits' conditions) comes from ``--base``.

Resuming works as in single mode (`editeval.run.partial`): each finished case is appended to
``<out>.partial.jsonl``, a rerun skips it, and a finished record of fewer cases is continued
(``--limit 200`` after ``--limit 100``). A case whose edit the method cannot make (a subject not in
its prompt, an edit that fails) is skipped with its reason in ``meta.skipped``; a run with no case
left is refused with one line. So is what does not apply to cases: another mode, several
processes, and the options of the request protocols (``--wild``, ``--judge``, ``--fluency``,
``--piqa``, ``--chat-template``); ``editeval score`` leaves out PIQA (its default) for cases.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from editeval.errors import EditevalError
from editeval.evaluation.cases import CaseProtocol, case_protocol
from editeval.methods.base import get_method, restore
from editeval.run.config import EditConfig, EvalConfig, ScoreConfig
from editeval.run.partial import Partial, carry_over_record, clean_row, restore_nan
from editeval.run.session import Session, dataset_fingerprint
from editeval.runtime.settings import Runtime

log = logging.getLogger(__name__)

# the fields a case of each benchmark must have (a split of another shape is refused, not half-scored)
CASE_FIELDS = {
    "mquake": ("case_id", "edits", "questions", "answer", "new_answer", "single_hops", "new_single_hops", "orig"),
    "rippleedits": ("case_id", "prompt", "subject", "target_new", "target_new_aliases", "logical_generalization"),
}
EVALUATED = "after each case's edits (applied together), then undone"


def check_case_options(benchmark: str, ev: EvalConfig, *, piqa: bool) -> None:
    """Refuse, with one line, the options of the request protocols: cases have their authors' own."""
    given = [
        ("--wild", ev.wild),
        ("--judge", bool(ev.judge)),
        ("--fluency", ev.fluency),
        ("--chat-template", ev.chat_template),
        ("--piqa", piqa and ev.piqa_items > 0),
    ]
    for flag, on in given:
        if on:
            raise EditevalError(
                f"{flag} does not apply to {benchmark}: its cases are scored by the authors' protocol "
                f"({benchmark}.* metrics), not by the per-request protocols"
            )


def read_cases(session: Session, benchmark: str, split: str, config: str | None, limit: int | None, given=None):
    """``(cases, split_fingerprint)``: the first `limit` cases of the split (or `given`), checked for
    the fields of a case, and the fingerprint of the whole split (progress rows stay valid for
    another --limit of it, as in single mode)."""
    from editeval.data import load_benchmark

    if limit is not None and limit < 1:
        raise EditevalError(f"--limit {limit}: must be at least 1")
    if given is not None:
        every = [dict(c) for c in given]
    else:
        every = load_benchmark(benchmark, split, config, session.runtime.datasets_dir).to_list()
    cases = every[:limit] if limit is not None else every
    if not cases:
        raise EditevalError(f"benchmark '{benchmark}' split '{split}' has no records")
    missing = [f for f in CASE_FIELDS[benchmark] if f not in cases[0]]
    if missing:
        raise EditevalError(
            f"benchmark '{benchmark}' config {config!r} split '{split}' is not a split of {benchmark} cases "
            f"(missing {', '.join(missing)})"
        )
    session.requests, session.handed = cases, given is not None
    session.dataset_fingerprint = dataset_fingerprint(cases)
    return cases, dataset_fingerprint(every)


def _protocol(benchmark: str, loaded, base_fingerprint: str, ev: EvalConfig, runtime: Runtime) -> CaseProtocol:
    try:
        return case_protocol(
            benchmark,
            loaded.tokenizer,
            base_fingerprint=base_fingerprint,
            batch_size=ev.eval_batch_size,
            datasets_dir=runtime.datasets_dir,
        )
    except ValueError as err:
        raise EditevalError(f"cannot score {benchmark}: {err}") from None


def _scored(benchmark: str, fn, *args):
    """`fn(*args)`, a protocol's call: a bad record (its ValueError) as one line."""
    try:
        return fn(*args)
    except ValueError as err:
        raise EditevalError(f"cannot score {benchmark}: {err}") from None


def case_problem(requests: list[dict], method, tokenizer) -> str | None:
    """Why `method` cannot make a case's edits, or None when it can."""
    from editeval.run.checks import request_problem

    if len(requests) > 1 and not (method.batch or method.sequential):
        return f"method '{method.name}' edits one request at a time and its edits cannot accumulate"
    for k, r in enumerate(requests):
        problem = request_problem(r, method, tokenizer)
        if problem:
            return f"edit {k + 1} of {len(requests)}: {problem}"
    return None


def apply_case(method, loaded, hparams, requests: list[dict], datasets_dir=None) -> list:
    """Apply a case's edits together: one call where the method edits in batches, else one after the
    other (each on the model the previous ones changed). Returns the backups, to be restored last
    first; an edit that fails undoes what was applied before it and is raised."""
    model, tok = loaded.model, loaded.tokenizer
    if method.batch:
        return [method.edit(model, tok, requests, hparams, datasets_dir=datasets_dir)]
    backups = []
    try:
        for r in requests:
            backups.append(method.edit(model, tok, [r], hparams, datasets_dir=datasets_dir))
    except BaseException:
        undo_case(model, backups)
        raise
    return backups


def undo_case(model, backups: list) -> None:
    for backup in reversed(backups):
        restore(model, backup)


# --------------------------------------------------------------------------- editeval edit


def run_case_edits(opts: EditConfig, runtime: Runtime, loaded=None, given=None):
    """`editeval edit` on a case benchmark (`run.editing.run_edits` hands it over): returns the
    `EditSummary` of the written record."""
    from tqdm.auto import tqdm

    from editeval.evaluation.results import hparams_hash
    from editeval.methods.kit import key_stats_files
    from editeval.run.editing import EditSummary
    from editeval.run.prepare import load_model, refuse_early
    from editeval.runtime import distributed

    bench = opts.benchmark
    if opts.mode != "single":
        raise EditevalError(
            f"--mode {opts.mode}: {bench} cases are edited one case at a time (--mode single: each case's "
            f"edits applied together, scored, then undone)"
        )
    check_case_options(bench, opts, piqa=True)
    method = get_method(opts.method)
    if distributed.launched_processes() > 1:
        raise EditevalError(f"{bench} cases are edited in one process: launch one")
    session = refuse_early(opts, method, runtime)
    cases, split_fingerprint = read_cases(session, bench, opts.split, opts.config, opts.limit, given)
    loaded, hparams = load_model(opts, session, method, loaded)
    model, tok = loaded.model, loaded.tokenizer
    base_fp = loaded.fingerprint()
    key_stats_files.pin_fingerprint(model, base_fp)
    protocol = _protocol(bench, loaded, base_fp, opts, runtime)

    skipped: list[dict] = []
    valid: list[int] = []
    case_requests = {}
    for i, case in enumerate(cases):
        case_requests[i] = _scored(bench, protocol.requests, case)
        problem = case_problem(case_requests[i], method, tok)
        if problem:
            skipped.append({"index": i, "case_id": case["case_id"], "reason": problem})
            log.warning("skipping case %d (case_id %s): %s", i, case["case_id"], problem)
        else:
            valid.append(i)
    if not valid:
        raise EditevalError(
            f"none of the {len(cases)} {bench} cases can be edited by '{method.name}' "
            f"(first problem: case {skipped[0]['case_id']}: {skipped[0]['reason']})"
        )

    hp_dict = hparams.to_dict()
    header = {  # the keys of an edit run's progress header (`carry_over_record` reads them) + the protocol
        "method": method.name,
        "hparams_hash": hparams_hash(hp_dict),
        "model": str(opts.model),
        "base_fingerprint": base_fp,
        "benchmark": bench,
        "config": opts.config,
        "split": opts.split,
        "dataset_fingerprint": split_fingerprint,
        "n_requests": len(cases),
        "mode": "single",
        "edit_batch_size": 1,
        "chat_template": False,
        "eval_every_edit": False,
        "curve_every": 0,
        "curve_sample": 0,
        "fluency": False,
        "piqa_items": 0,
        "wild": False,
        "judge": None,
        "cases": protocol.name,
    }
    carry_over_record(session.out, header, cases, False)
    partial = Partial(session.out, header)
    done = {e["index"]: e for e in partial.all_entries()}
    todo = [i for i in valid if i not in done]
    _scored(bench, protocol.prepare, model, [cases[i] for i in todo])  # on the unedited model

    bar = tqdm(
        total=len(valid),
        initial=len(valid) - len(todo),
        unit="case",
        desc=f"{method.name} {bench}",
        disable=not runtime.progress,
        dynamic_ncols=True,
    )
    try:
        for i in todo:
            _edit_case(i, cases[i], case_requests[i], method, loaded, hparams, protocol, partial, opts.seed, runtime)
            done[i] = partial.entries[-1]
            bar.update(1)
    finally:
        bar.close()

    skipped += [
        {"index": i, "case_id": e.get("case_id"), "reason": e.get("reason", "")}
        for i, e in sorted(done.items())
        if e.get("skipped")
    ]
    edited = [i for i in valid if i in done and not done[i].get("skipped")]
    if not edited:
        raise EditevalError(
            f"no {bench} case could be edited by '{method.name}' (first problem: {skipped[0]['reason']})"
        )
    record = _write_edit_record(
        session, opts, loaded, protocol, method, hp_dict, header, cases, case_requests, done, edited, skipped
    )
    partial.remove()
    n_edits = sum(len(case_requests[i]) for i in edited)
    edit_seconds = sum(done[i]["edit_seconds"] for i in edited)
    return EditSummary(
        out=session.out,
        n_requests=len(cases),
        n_edited=len(edited),
        skipped=skipped,
        seconds_per_edit=edit_seconds / n_edits,
        record=record,
    )


def _edit_case(i, case, requests, method, loaded, hparams, protocol, partial: Partial, seed: int, runtime) -> None:
    """Apply one case's edits, score the case, undo them; append its progress entry."""
    from editeval.run.modes import seed_everything

    seed_everything(seed + i)  # a case's randomness depends on it alone (a resumed run draws the same)
    t0 = time.perf_counter()
    try:
        backups = apply_case(method, loaded, hparams, requests, runtime.datasets_dir)
    except EditevalError as err:
        log.warning("skipping case %d (case_id %s): %s", i, case["case_id"], err)
        partial.append({"index": i, "case_id": case["case_id"], "skipped": True, "reason": str(err)})
        return
    if loaded.device.type == "cuda":
        torch.cuda.synchronize()
    edit_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    try:
        row = _scored(protocol.name, protocol.rows, loaded.model, [case])[0]
    finally:
        undo_case(loaded.model, backups)
    entry = {"index": i, "case_id": case["case_id"], "edit_seconds": edit_seconds}
    partial.append({**entry, "eval_seconds": time.perf_counter() - t1, "row": clean_row(row)})


def _write_edit_record(
    session, opts, loaded, protocol, method, hp_dict, header, cases, case_requests, done, edited, skipped
):
    from editeval.run.editing import _with_timings

    columns = ["case_id", *protocol.columns]
    rows = [{c: row.get(c, math.nan) for c in columns} for row in (restore_nan(done[i]["row"]) for i in edited)]
    rows = _with_timings(rows, [done[i]["edit_seconds"] for i in edited], [done[i].get("eval_seconds") for i in edited])
    n_edits = sum(len(case_requests[i]) for i in edited)
    edit_seconds = sum(done[i]["edit_seconds"] for i in edited)
    fields = {
        "piqa_items": 0,
        "method": method.name,
        "hparams": hp_dict,
        "hparams_hash": header["hparams_hash"],
        "mode": "single",
        "edit_batch_size": None,
        "seconds_per_edit": edit_seconds / n_edits,  # per edit made (a MQuAKE case makes 4)
        "edit_seconds_total": round(edit_seconds, 3),
        "n_requests": len(cases),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "evaluated": EVALUATED,
    }
    return session.write(
        rows,
        loaded=loaded,
        data=opts.model_dump(include={"benchmark", "config", "split", "limit"}),
        ev=opts.model_copy(update={"generation": False}),
        models={
            "base_model": str(opts.model),
            "base_fingerprint": header["base_fingerprint"],
            "edited_model": f"{opts.model} + {method.name} (single, per case)",
            "edited_fingerprint": "",
        },
        fields=fields,
    )


# --------------------------------------------------------------------------- editeval score


def score_cases(score: ScoreConfig, runtime: Runtime, *, requests=None, extra_meta=None):
    """`editeval score` on a case benchmark (`run.scoring.run_checkpoint` hands it over): every case
    scored on the checkpoint; returns ``(record, rows, json_path)``."""
    from editeval.run.scoring import _edited_fingerprint, _load_models, _timing_meta
    from editeval.runtime import distributed

    bench = score.benchmark
    check_case_options(bench, score, piqa=False)
    if distributed.launched_processes() > 1:
        raise EditevalError(f"{bench} cases are scored in one process: launch one")
    session = Session.open(runtime, score.out_path())
    if session.device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    base_lm, edited_lm, artifact = _load_models(score, session)
    cases, _ = read_cases(session, bench, score.split, score.config, score.limit, requests)
    base_fp = base_lm.fingerprint()
    protocol = _protocol(bench, base_lm, base_fp, score, runtime)
    t0 = time.perf_counter()
    _scored(bench, protocol.prepare, base_lm.model, cases)
    t1 = time.perf_counter()
    rows = _scored(bench, _rows_on_edited, protocol, cases, score.model, base_lm, edited_lm, artifact)
    timings = {"preedit_s": t1 - t0, "evaluate_s": time.perf_counter() - t1}
    record = session.write(
        rows,
        loaded=base_lm,
        data=score.model_dump(include={"benchmark", "config", "split", "limit"}),
        ev=score.model_copy(update={"generation": False}),
        models={
            "base_model": score.base,
            "base_fingerprint": base_fp,
            "edited_model": score.model,
            "edited_fingerprint": _edited_fingerprint(score.model, base_lm, edited_lm, artifact, base_fp),
        },
        fields={**_timing_meta(0, None, timings), **(extra_meta or {})},
    )
    return record, rows, session.out


def _rows_on_edited(protocol: CaseProtocol, cases, model_name, base_lm, edited_lm, artifact: bool) -> list[dict]:
    """The rows on the edited model (a method artifact installed on the base model meanwhile)."""
    from editeval.methods.kit import artifacts

    if not artifact:
        return protocol.rows(edited_lm.model, cases)
    undo = artifacts.load_artifact(base_lm.model, model_name)
    try:
        return protocol.rows(base_lm.model, cases)
    finally:
        undo()
