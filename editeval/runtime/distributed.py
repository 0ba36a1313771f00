"""Data-parallel runs on Hugging Face `accelerate` (torch.distributed underneath).

`editeval score --model ...` and `editeval edit --mode single` shard their edit requests across
the processes of a launcher; each process holds its own model replica on its own device
(`accelerate.PartialState().device`: ``cuda:<local rank>`` on GPUs, the CPU otherwise), the
per-edit rows are gathered (`accelerate.utils.gather_object`) in the original order, and only
the main process writes the results record, which is the one a single process writes (same rows,
same means and intervals; the metadata records ``n_processes``)::

    accelerate launch --multi_gpu --num_processes 4 -m editeval score --model M --base B ...
    torchrun --nproc_per_node 4 -m editeval edit --method rome --mode single ...

(``accelerate launch --cpu`` starts several processes only through MPI, ``--mpirun_hostfile``;
on a CPU-only machine ``--multi_gpu`` or ``torchrun`` start N CPU processes, joined over gloo.)

In one process nothing here is used: `setup` returns None without importing accelerate.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

# ranks may finish their shards far apart (and the main process then writes the record)
TIMEOUT = timedelta(hours=6)
_WORLD_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_ENV = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_sharded = False  # this process works on its own block (its errors are its own)


def _env_int(names, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value:
            try:
                return int(value)
            except ValueError:
                continue
    return default


def launched_processes() -> int:
    """How many processes the launcher started (1 when run directly)."""
    return max(1, _env_int(_WORLD_ENV, 1))


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 when run directly)."""
    return _env_int(_RANK_ENV, 0) if launched_processes() > 1 else 0


def reports_errors() -> bool:
    """Whether this process prints its error: the main process always; another one only once it
    works on its own block (before that every process meets the errors the main process meets,
    and one line is enough)."""
    return launched_rank() == 0 or _sharded


class Group:
    """The processes of one data-parallel run (a thin view of accelerate's `PartialState`)."""

    def __init__(self, state):
        self.state = state
        self.rank = state.process_index
        self.world = state.num_processes
        self.is_main = state.is_main_process
        self.device = state.device

    def shard(self, items: Sequence) -> list:
        """This process's contiguous block of `items` (the first blocks one longer when uneven),
        so the blocks in rank order are `items` in order."""
        global _sharded
        _sharded = True
        n, w = len(items), self.world
        size, extra = divmod(n, w)
        start = self.rank * size + min(self.rank, extra)
        return list(items[start : start + size + (1 if self.rank < extra else 0)])

    def share(self, items: Sequence) -> list:
        """`shard` for work the processes list from a shared cache: they all wait until every one has
        made its list, so that no process's results change another's list."""
        self.barrier()
        return self.shard(items)

    def gather(self, obj: Any) -> list:
        """`obj` of every process, in rank order, on every process."""
        from accelerate.utils import gather_object

        return gather_object([obj])

    def barrier(self) -> None:
        self.state.wait_for_everyone()

    @contextmanager
    def main_first(self):
        """The main process runs the block first (e.g. filling a cache), the others after it."""
        with self.state.main_process_first():
            yield


_group: Group | None = None
_collective: Group | None = None  # set inside a `collective` block


def setup(device: str = "auto") -> Group | None:
    """The process group of a launched multi-process run (created once), or None in one process.
    `device` "cpu" (or a machine without CUDA, or ``accelerate launch --cpu``) joins over gloo."""
    global _group
    if _group is not None:
        return _group
    if launched_processes() <= 1:
        if (
            os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
            and os.environ.get("MASTER_ADDR")
            and not os.environ.get("LOCAL_RANK")
        ):  # `accelerate launch --cpu --num_processes N`, N > 1
            logging.getLogger(__name__).warning(
                "`accelerate launch --cpu` started one process (it starts several CPU processes only through MPI, "
                "--mpirun_hostfile): this run is not split; for N CPU processes use `accelerate launch --multi_gpu "
                "--num_processes N` (on a machine without GPUs) or `torchrun --nproc_per_node N`"
            )
        return None
    import torch
    from accelerate import PartialState

    cpu = (
        str(device) == "cpu"
        or not torch.cuda.is_available()
        or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    )
    state = PartialState(cpu=cpu, timeout=TIMEOUT)
    if state.num_processes <= 1:
        return None
    _group = Group(state)
    if not _group.is_main:  # the main process reports; the others' warnings and bars would repeat it
        logging.getLogger("editeval").setLevel(logging.ERROR)
        try:
            import transformers

            import datasets

            transformers.utils.logging.disable_progress_bar()
            datasets.disable_progress_bars()
        except (ImportError, AttributeError):
            pass
    return _group


def _close() -> None:
    """Take the process group down before the interpreter does: gloo's threads torn down at exit
    can abort the process ("terminate called without an active exception") after its work is done.
    Only after a success: on a group whose peer is gone it aborts the same way."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def finish() -> None:
    """The end of a command that succeeded: in a data-parallel run every process waits until all are
    done (the main one writes last), then the process group is taken down before the interpreter's
    own teardown."""
    if _group is not None:
        _group.barrier()
        _close()


def process_device(group: Group | None, device: str) -> str:
    """The device this process uses: with several processes, "auto" and "cuda" mean this
    process's own device (``cuda:<local rank>`` or the CPU); an explicit device is kept."""
    if group is None or device not in ("auto", "cuda"):
        return device
    if device == "cuda" and group.device.type != "cuda":
        return device  # no GPU here: loading says so
    return str(group.device)


def num_processes() -> int:
    return 1 if _group is None else _group.world


def is_main_process() -> bool:
    return _group is None or _group.is_main


@contextmanager
def collective(group: Group | None):
    """Marks work every process of `group` runs alike, on the same inputs (a batch each process
    applies to its own replica): `split_map` inside it shares its items out. None: one process."""
    global _collective
    outer, _collective = _collective, group
    try:
        yield
    finally:
        _collective = outer


def split_map(fn, items: Sequence) -> list:
    """``[fn(item) for item in items]``. Inside a `collective` block of several processes each
    process computes every world-th item and the results are gathered, in order, on every process
    (tensors come back on the CPU); each item is computed alone, so the results are the ones one
    process computes. Outside such a block, a plain loop."""
    group = _collective
    if group is None:
        return [fn(item) for item in items]
    from accelerate.utils import send_to_device

    mine = {i: send_to_device(fn(items[i]), "cpu") for i in range(group.rank, len(items), group.world)}
    merged: dict[int, Any] = {}
    for part in group.gather(mine):
        merged.update(part)
    return [merged[i] for i in range(len(items))]


@contextmanager
def main_first(group: Group | None):
    if group is None:
        yield
    else:
        with group.main_first():
            yield
