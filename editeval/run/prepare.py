"""Preparing an edit run (`editeval.run.editing`): what is refused before loading anything, the
requests, the model and its hyper-parameters, and the screening of bad requests."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from editeval.errors import EditevalError
from editeval.methods.base import Method
from editeval.run.checks import check_hparams_layers, request_problem
from editeval.run.config import EditConfig
from editeval.run.modes import check_mode
from editeval.run.session import Session, dataset_fingerprint
from editeval.runtime.settings import Runtime

log = logging.getLogger("editeval.run.editing")  # the skipped-request warnings, as before the move


def refuse_early(opts: EditConfig, method: Method, runtime: Runtime) -> Session:
    """What can be refused before loading anything; opens the run's `Session` (which joins the
    data-parallel group, if launched in one)."""
    from editeval.runtime import distributed

    check_mode(method, opts.mode, opts.edit_batch_size, opts.save_checkpoint)
    if opts.curve_every and opts.mode != "sequential":
        raise EditevalError("--curve-every applies to --mode sequential (edits that accumulate)")
    n_procs = distributed.launched_processes()
    if n_procs > 1 and opts.mode == "sequential":
        raise EditevalError(
            f"--mode sequential edits one model step after step, which is not data-parallel: run it "
            f"in one process (this run has {n_procs}), or use --mode single or batch"
        )
    session = Session.open(runtime, opts.out_path())
    if opts.hparams_path is not None and not Path(opts.hparams_path).exists():
        raise EditevalError(f"hyper-parameter file not found: {opts.hparams_path}")
    return session


def read_requests(session: Session, opts: EditConfig, given: list[dict] | None, fingerprint: str) -> str:
    """Read (or take) the run's requests into `session`; returns the fingerprint its progress file
    is tied to: in single mode the whole split's, so that progress rows stay valid for another
    --limit of the same split."""
    from editeval.data import load_requests

    session.read_requests(opts.benchmark, opts.split, opts.config, opts.limit, given=given, fingerprint=fingerprint)
    if given is not None:
        return fingerprint
    if opts.mode == "single" and opts.limit is not None:
        return dataset_fingerprint(
            load_requests(opts.benchmark, opts.split, opts.config, None, session.runtime.datasets_dir)
        )
    return session.dataset_fingerprint


def load_model(opts: EditConfig, session: Session, method: Method, loaded):
    """``(loaded, hparams)``: the model (unless given) and the method's hyper-parameters for it."""
    from editeval.runtime import distributed
    from editeval.runtime.models import load

    runtime = session.runtime
    with distributed.main_first(session.dist):  # conversions and trained editors are cached by the main process
        if loaded is None:
            loaded = load(opts.model, device=session.device, dtype=runtime.dtype, device_map=runtime.device_map)
        if loaded.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        hparams = method.load_hparams(
            loaded.model, opts.model if opts.hparams_path is None else None, opts.hparams_path
        )
    check_hparams_layers(loaded.model, hparams)
    torch.manual_seed(opts.seed)
    return loaded, hparams


def screen_requests(requests: list[dict], method: Method, tok) -> tuple[list[dict], list[int]]:
    """``(skipped, valid)``: bad requests are reported and skipped; refused when none is left."""
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
        raise EditevalError(
            f"none of the {len(requests)} requests can be edited by '{method.name}' "
            f"(first problem: {skipped[0]['reason']})"
        )
    return skipped, valid
