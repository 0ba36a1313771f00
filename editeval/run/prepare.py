"""Preparing an edit run (`editeval.run.editing`): what is refused before loading anything, the
requests, the model and its hyper-parameters, and the screening of bad requests."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from editeval.errors import EditevalError
from editeval.methods.base import Method
from editeval.run.checks import check_device_map_alone, check_hparams_layers, request_problem
from editeval.run.config import EditConfig
from editeval.run.modes import check_mode
from editeval.runtime.settings import Runtime

log = logging.getLogger("editeval.run.editing")  # the skipped-request warnings, as before the move


def load_requests(opts: EditConfig, runtime: Runtime, limit: int | None) -> tuple[list[dict], str]:
    """The first `limit` requests of the benchmark split and their fingerprint (as `editeval score`)."""
    from editeval.data import load_requests as load_split
    from editeval.run.scoring import dataset_fingerprint

    records = load_split(opts.benchmark, opts.split, opts.config, limit, runtime.datasets_dir)
    return records, dataset_fingerprint(records)


def refuse_early(opts: EditConfig, runtime: Runtime, method: Method):
    """What can be refused before loading anything; joins the data-parallel group, if launched in one."""
    from editeval.runtime import distributed

    check_mode(method, opts.mode, opts.edit_batch_size, opts.save_checkpoint)
    n_procs = distributed.launched_processes()
    if n_procs > 1 and opts.mode == "sequential":
        raise EditevalError(
            f"--mode sequential edits one model step after step, which is not data-parallel: run it "
            f"in one process (this run has {n_procs}), or use --mode single or batch"
        )
    dist = distributed.setup(runtime.device)
    check_device_map_alone(dist, runtime.device_map)
    if opts.hparams_path is not None and not Path(opts.hparams_path).exists():
        raise EditevalError(f"hyper-parameter file not found: {opts.hparams_path}")
    return dist


def resolve_requests(opts: EditConfig, runtime: Runtime, requests: list[dict] | None, dataset_fingerprint: str):
    """``(requests, dataset_fingerprint, run_fingerprint, handed)``: the requests (given, or read
    from the benchmark split), the fingerprint the record names and the one the progress file is
    tied to, and whether they were given."""
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
    return requests, dataset_fingerprint, run_fingerprint, handed


def load_model(opts: EditConfig, runtime: Runtime, method: Method, loaded, dist):
    """``(loaded, hparams)``: the model (unless given) and the method's hyper-parameters for it."""
    from editeval.runtime import distributed
    from editeval.runtime.models import load

    with distributed.main_first(dist):  # conversions and trained editors are cached by the main process
        if loaded is None:
            loaded = load(
                opts.model,
                device=distributed.process_device(dist, runtime.device),
                dtype=runtime.dtype,
                device_map=runtime.device_map,
            )
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
