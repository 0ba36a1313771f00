"""What differs between the three edit modes: which requests are applied together, which of them
this process evaluates, and what happens to the model after each group.

- ``single``: each edit alone on the untouched model; evaluated, then undone (`restore`).
- ``batch``: ``edit_batch_size`` edits at once (default: all); evaluated, then undone (or kept
  applied for ``--save-checkpoint``). Under several processes every process applies each batch and
  evaluates its block of it.
- ``sequential``: edits accumulate on one model; the changed weights are saved after each step
  (`Partial.save_state`) and every edit is evaluated once all were applied (by the pipeline).

`EditLoop` walks the groups of a `plan`, appending each finished edit to the run's progress file.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from editeval.errors import EditevalError
from editeval.methods.base import Method, restore
from editeval.methods.kit import artifacts
from editeval.run.partial import Partial, clean_row

log = logging.getLogger(__name__)

MODES = ("single", "batch", "sequential")
SAVE_BATCH_AFTER_S = 60.0  # a batch whose edit took longer is saved applied (redoing it costs more)
EVAL_CHUNK = 100  # batch mode: edits evaluated (and their rows saved) at a time


def check_mode(
    method: Method, mode: str, edit_batch_size: int | None, save_checkpoint: str | None, n_requests: int | None = None
) -> None:
    """Refuse, with one clear line, what this method or mode cannot do."""
    if mode not in MODES:
        raise EditevalError(f"--mode {mode}: choose from {', '.join(MODES)}")
    if edit_batch_size is not None and edit_batch_size < 1:
        raise EditevalError(f"--batch-size {edit_batch_size}: must be at least 1")
    if mode == "single" and edit_batch_size not in (None, 1):
        raise EditevalError("--batch-size applies to --mode batch or sequential, not single")
    if mode == "sequential" and not method.sequential:
        raise EditevalError(f"method '{method.name}' does not support sequential editing (edits cannot accumulate)")
    if (
        mode in ("batch", "sequential")
        and not method.batch
        and ((edit_batch_size or (0 if mode == "sequential" else 2)) > 1)
    ):
        raise EditevalError(
            f"method '{method.name}' edits one request at a time: use --mode single, or "
            f"--mode sequential without --batch-size (it does not support batch editing)"
        )
    if save_checkpoint:
        if mode == "single":
            raise EditevalError(
                "--save-checkpoint needs one edited model: use --mode sequential, "
                "or --mode batch with one batch (every edit is undone in single mode)"
            )
        if mode == "batch" and edit_batch_size is not None and n_requests is not None and edit_batch_size < n_requests:
            raise EditevalError(
                "--save-checkpoint in batch mode needs one batch holding every edit "
                "(leave out --batch-size), or use --mode sequential"
            )


def group_size(mode: str, edit_batch_size: int | None, n_valid: int) -> int:
    """How many edits are applied together: one batch of all by default in batch mode, else one."""
    return edit_batch_size or (n_valid if mode == "batch" else 1)


def plan(mode: str, valid: list[int], k: int, dist, finished: set[int]) -> list[tuple[list[int], list[int]]]:
    """The groups of requests applied together, each with the part of it this process evaluates.
    One process evaluates every group whole (finished edits are skipped later, group by group)."""
    groups = [valid[s : s + k] for s in range(0, len(valid), k)]
    if dist is None:
        return [(group, group) for group in groups]
    if mode == "single":  # each process edits and evaluates its block of the edits still to do
        return [([i], [i]) for i in dist.shard([i for i in valid if i not in finished])]
    # batch: every process applies each batch, and evaluates its block of the batch
    return [(todo, dist.shard(todo)) for todo in ([i for i in g if i not in finished] for g in groups) if todo]


def _nanmean(values: list) -> float | None:
    """The mean of the numbers that are there (None when none is: a metric that does not apply)."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return math.fsum(kept) / len(kept) if kept else None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (every device's) random generators."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def find_bad(apply, model, indices: list[int], requests: dict) -> dict[int, str]:
    """The requests of a failed batch that fail alone (each tried with `apply` and undone), with the reason."""
    bad = {}
    for i in indices:
        try:
            restore(model, apply([requests[i]]))
        except EditevalError as err:
            bad[i] = str(err)
    return bad


@dataclass
class EditLoop:
    """Applies the groups of a plan to `loaded`'s model and records each finished edit in `partial`
    (`done` maps every finished index to its progress entry). `evaluator` is over this process's
    requests, `ev_index` maps a request index to its position there."""

    mode: str
    method: Method
    loaded: Any  # editeval.runtime.models.LoadedModel
    hparams: Any
    requests: list[dict]
    edit_requests: dict[int, dict]  # as the method sees them (`method_request`)
    evaluator: Any
    ev_index: dict[int, int]
    partial: Partial
    done: dict[int, dict]
    bar: Any
    dist: Any = None
    seed: int = 0
    eval_every_edit: bool = False
    curve_every: int = 0  # sequential: a curve point after every N edits (`_curve_point`)
    curve_sample: int = 0
    keep_batch: bool = False  # batch mode + checkpoint: the one batch stays applied for saving
    saved_batch: tuple[list[int], float] | None = None  # batch mode: saved applied by an interrupted run
    changed: set[str] = field(default_factory=set)  # sequential mode: the weights changed so far
    datasets_dir: Any = None  # the run's built datasets, for methods that read a train split
    kept_batch: bool = False

    def run(self, groups: list[tuple[list[int], list[int]]]) -> None:
        for group, part in groups:
            self._edit_group(group, part)

    def apply(self, reqs: list[dict]):
        from editeval.runtime import distributed

        # in batch mode every process applies each batch alike: the method's gathers over the
        # batch may be shared out (`distributed.split_map`; MEMIT's keys)
        with distributed.collective(self.dist if self.mode == "batch" else None):
            return self.method.edit(
                self.loaded.model, self.loaded.tokenizer, reqs, self.hparams, datasets_dir=self.datasets_dir
            )

    def _edit_group(self, group: list[int], part: list[int]) -> None:
        todo = [i for i in group if i not in self.done]  # applied together
        if not todo:
            return
        if self.mode == "batch":  # a batch is applied whole, also when some of its edits were evaluated before
            todo = [i for i in group if not self.done.get(i, {}).get("skipped")]
        applied = set(todo)
        ours = [i for i in part if i in applied and i not in self.done]  # evaluated by this process
        from_saved = self.saved_batch is not None and self.saved_batch[0] == todo  # applied by an interrupted run
        shared = self.dist is not None and self.mode == "batch"
        if shared and self.method.prepare is not None and not from_saved:
            # the costly per-request part of the batch (MEMIT's values), shared out over the processes
            self.method.prepare(
                self.loaded.model,
                self.loaded.tokenizer,
                [self.edit_requests[i] for i in todo],
                self.hparams,
                self.dist.share,
            )
            self.dist.barrier()
        if not ours and not shared:  # nothing of this group here
            return
        # the edits' randomness depends on them alone, not on what ran before: a resumed sequential
        # run (or another process) draws what an uninterrupted run draws
        seed_everything(self.seed + todo[0])
        if from_saved:
            log.info(
                "batch of %d edits: weights saved by an interrupted run loaded from %s",
                len(todo),
                self.partial.state_path,
            )
            backup, seconds = self.partial.load_batch(self.loaded.model), self.saved_batch[1]
        else:
            applied_group = self._apply_timed(todo, ours)
            if applied_group is None:
                return
            todo, ours, backup, seconds = applied_group
        per_edit = seconds / len(todo)
        if self.mode == "sequential":  # one process: ours is todo
            self._keep_step(todo, backup, per_edit)
            return
        self._evaluate(ours, per_edit)
        if self.keep_batch:
            self.kept_batch = True
        else:
            restore(self.loaded.model, backup)

    def _apply_timed(self, todo: list[int], ours: list[int]):
        """Apply the group; a request that fails is reported and skipped, the rest applied.
        Returns ``(todo, ours, backup, seconds)`` left after that, or None when nothing is."""
        from editeval.runtime import distributed

        model = self.loaded.model
        t0 = time.perf_counter()
        try:
            backup = self.apply([self.edit_requests[i] for i in todo])
        except EditevalError as err:
            # find the bad request(s) of the group alone, report and skip them, edit the rest
            bad = {todo[0]: str(err)} if len(todo) == 1 else find_bad(self.apply, model, todo, self.edit_requests)
            if not bad:
                raise EditevalError(f"edit of requests {todo[0]}..{todo[-1]} failed: {err}") from None
            self._skip(bad, ours)
            todo = [i for i in todo if i not in bad]
            ours = [i for i in ours if i not in bad]
            if not todo:
                return None
            reqs = [self.edit_requests[i] for i in todo]
            t0 = time.perf_counter()
            backup = self.apply(reqs)
        if self.loaded.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        if (
            self.mode == "batch"
            and seconds >= SAVE_BATCH_AFTER_S
            and distributed.is_main_process()
            and not artifacts.additions(model)
        ):
            self.partial.save_batch(model, set(backup), todo, seconds)
        return todo, ours, backup, seconds

    def _skip(self, bad: dict[int, str], ours: list[int]) -> None:
        for i, reason in bad.items():
            if i not in ours:  # another process reports it
                continue
            log.warning("skipping request %d (case_id %s): %s", i, self.requests[i].get("case_id"), reason)
            self._record(i, skipped=True, reason=reason)
            self.bar.update(1)

    def _keep_step(self, todo: list[int], backup, per_edit: float) -> None:
        """Sequential mode: the edits stay applied; the changed weights are saved for a resume."""
        self.changed |= set(backup)
        row_now = None
        if self.eval_every_edit:
            row_now = self.evaluator.evaluate(self.loaded.model, [self.ev_index[i] for i in todo])
        point = self._curve_point(todo)
        for n, i in enumerate(todo):
            extra = {"curve": point} if point and i == todo[-1] else {}
            self._record(i, edit_seconds=per_edit, row_after_each=clean_row(row_now[n]) if row_now else None, **extra)
        self.partial.save_state(self.loaded.model, self.changed)
        self.bar.update(len(todo))

    def _curve_point(self, step: list[int]) -> dict | None:
        """Sequential ``--curve-every N``: when this `step`'s edits reach a multiple of N, the mean of
        every metric over the edits made so far (at most `curve_sample` of them, evenly spaced)."""
        before = sorted(i for i, e in self.done.items() if not e.get("skipped"))
        made = before + step
        if not self.curve_every or len(made) // self.curve_every == len(before) // self.curve_every:
            return None
        total = len(made)
        if self.curve_sample and len(made) > self.curve_sample:
            last = len(made) - 1
            made = [made[round(j * last / max(self.curve_sample - 1, 1))] for j in range(self.curve_sample)]
        rows = self.evaluator.evaluate(self.loaded.model, [self.ev_index[i] for i in made])
        columns = [c for c in rows[0] if c != "case_id"]
        means = {c: _nanmean([r.get(c) for r in rows]) for c in columns}
        return {"edits": total, "evaluated": len(made), "metrics": means}

    def _evaluate(self, ours: list[int], per_edit: float) -> None:
        for start in range(0, len(ours), EVAL_CHUNK):  # rows saved as they come: a long evaluation resumes
            chunk = ours[start : start + EVAL_CHUNK]
            t0 = time.perf_counter()
            rows = self.evaluator.evaluate(self.loaded.model, [self.ev_index[i] for i in chunk])
            per_row = (time.perf_counter() - t0) / len(chunk)  # each edit's share of the pass
            for i, row in zip(chunk, rows):
                self._record(i, edit_seconds=per_edit, eval_seconds=per_row, row=clean_row(row))
            self.bar.update(len(chunk))

    def _record(self, i: int, **fields) -> None:
        self.partial.append({"index": i, "case_id": self.requests[i].get("case_id"), **fields})
        self.done[i] = self.partial.entries[-1]
