"""What every run of the one pipeline shares, whatever it evaluates: the `Session`.

    resolved config (`run.config`)
      -> Session.open: the process group, the device-map refusal, the record path
      -> Session.read_requests: the requests and their fingerprint
      -> a mode: edits (`run.modes`: which edits go together, and their undo) or a checkpoint
         (`run.scoring`: install it, and take it away)
      -> Session.evaluator: the one `Evaluator` over this process's requests
      -> Session.write: the one record writer (`run_meta` + the run's own fields)

`editeval edit` (`run.editing.run_edits`) and `editeval score` (`run.scoring.run_checkpoint`) are
the two ways through it; both records have the same meta keys (`RunMetadata` forbids others) and
their rows the columns `evaluation_columns` gives for the same evaluation settings (`EvalConfig`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editeval.errors import EditevalError
from editeval.run.checks import check_device_map_alone, check_record_path
from editeval.run.config import EvalConfig
from editeval.run.meta import run_meta
from editeval.runtime import distributed
from editeval.runtime.settings import Runtime

log = logging.getLogger(__name__)


def dataset_fingerprint(records: Sequence[Mapping]) -> str:
    """sha256 (16 hex) of the canonical JSON of the scored records, in order."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(json.dumps(dict(r), sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def load_piqa(items: int, datasets_dir=None) -> list[dict]:
    """The first `items` PIQA validation items (Other-Task locality), or [] when not built."""
    if items <= 0:
        return []
    from editeval.data import load_benchmark

    try:
        ds = load_benchmark("locality", "piqa", "other_task", datasets_dir)
    except EditevalError as err:
        log.warning("Other-Task locality skipped: %s", err)
        return []
    return ds.select(range(min(items, len(ds)))).to_list()


@dataclass
class Session:
    """One run in progress: where it runs (`runtime`, the process group `dist`, None in one
    process), where its record goes (`out`), what it evaluates (`requests`, read or handed by
    the caller) and when it started."""

    runtime: Runtime
    dist: Any  # editeval.runtime.distributed.Group | None
    out: Path
    started: float
    requests: list[dict] | None = None
    dataset_fingerprint: str = ""
    handed: bool = False  # the requests were given, not read from a benchmark split that declares its protocols
    judge: Any = None  # the loaded judge (`evaluation.judge.Judge`), once

    @classmethod
    def open(cls, runtime: Runtime, out: str | Path) -> Session:
        """Join the data-parallel group (if launched in one) and refuse, before loading anything,
        what the run cannot do: a device map under several processes, a record that is not .json."""
        started = time.perf_counter()
        out = Path(out)
        check_record_path(out)
        dist = distributed.setup(runtime.device)
        check_device_map_alone(dist, runtime.device_map)
        return cls(runtime=runtime, dist=dist, out=out, started=started)

    @property
    def device(self) -> str:
        """The device this process loads its model on."""
        return distributed.process_device(self.dist, self.runtime.device)

    @property
    def is_main(self) -> bool:
        return distributed.is_main_process()

    def read_requests(
        self,
        benchmark: str,
        split: str,
        config: str | None,
        limit: int | None,
        given: Sequence[Mapping] | None = None,
        fingerprint: str = "",
    ) -> list[dict]:
        """The requests: `given` as they are (their fingerprint computed unless given), or the first
        `limit` of the benchmark split in the runtime's datasets folder. Refused when there are none."""
        from editeval.data import load_requests

        self.handed = given is not None
        if given is None:
            requests = load_requests(benchmark, split, config, limit, self.runtime.datasets_dir)
        else:
            requests = [dict(r) for r in given]
        if not requests:
            raise EditevalError(f"benchmark '{benchmark}' split '{split}' has no records")
        self.requests = requests
        self.dataset_fingerprint = fingerprint or dataset_fingerprint(requests)
        return requests

    def counterfact(self, benchmark: str, config: str | None, split: str, over: Sequence[Mapping]) -> bool:
        """Whether the run scores the CounterFact protocol, decided on `over` (every request the
        run evaluates, in any process) so that every process's rows have the same columns."""
        from editeval.evaluation.evaluator import run_counterfact

        return run_counterfact(benchmark, config, split, over, loaded=not self.handed)

    def evaluator(
        self,
        loaded,
        requests: Sequence[Mapping],
        ev: EvalConfig,
        *,
        counterfact: bool,
        piqa: Sequence[Mapping] = (),
        progress: bool = False,
        label: str = "evaluate the requests",
    ):
        """The one `Evaluator` of the run, over `requests` (this process's), on the base model;
        bad records are refused with one line, ``cannot <label>: <why>``."""
        from editeval.evaluation.evaluator import Evaluator

        if ev.judge and not ev.wild:
            raise EditevalError("--judge grades WILD answers: add --wild")
        if ev.judge and self.judge is None:
            from editeval.evaluation.judge import Judge

            self.judge = Judge.load(ev.judge, device=self.device)
        try:
            return Evaluator(
                loaded,
                requests,
                batch_size=ev.eval_batch_size,
                chat_template=ev.chat_template,
                generation=ev.generation,
                fluency=ev.fluency,
                piqa=list(piqa),
                dataset_fingerprint=self.dataset_fingerprint,
                progress=progress,
                counterfact=counterfact,
                wild=ev.wild,
                judge=self.judge,
            )
        except ValueError as err:  # bad records, a tokenizer without a chat template
            raise EditevalError(f"cannot {label}: {err}") from None

    def columns(self, over: Sequence[Mapping], ev: EvalConfig, *, counterfact: bool, piqa: bool) -> list[str]:
        """The row columns of one evaluator over `over` (rows from several evaluators are put in them)."""
        from editeval.evaluation.evaluator import evaluation_columns

        return evaluation_columns(
            over,
            generation=ev.generation,
            counterfact=counterfact,
            fluency=ev.fluency,
            piqa=piqa,
            wild=ev.wild,
            judge=bool(ev.judge),
        )

    def write(
        self,
        rows: list[dict],
        *,
        loaded,
        data: Mapping[str, Any],
        ev: EvalConfig,
        models: Mapping[str, str],
        fields: Mapping[str, Any],
        item_values: Mapping[str, Sequence[float]] | None = None,
        out: Path | None = None,
    ):
        """Write the record of `rows` (main process): the meta every record carries (`run_meta`:
        the data `benchmark/config/split/limit`, the `models` base/edited names and fingerprints,
        the evaluation settings), then this run's own `fields`. Returns the record."""
        from editeval.evaluation.results import build_record, write_record

        meta = run_meta(
            benchmark=data["benchmark"],
            config=data["config"],
            split=data["split"],
            limit=data["limit"],
            dataset_fingerprint=self.dataset_fingerprint,
            n_edits=len(rows),
            base_model=models["base_model"],
            base_fingerprint=models["base_fingerprint"],
            edited_model=models["edited_model"],
            edited_fingerprint=models["edited_fingerprint"],
            loaded=loaded,
            batch_size=ev.eval_batch_size,
            chat_template=ev.chat_template,
            generation=ev.generation,
            started=self.started,
        )
        meta.update(fields)
        record = build_record(rows, meta, item_values=item_values)
        write_record(record, rows, out or self.out)
        return record
