"""A read-only view of one results record (`editeval.evaluation.results`), shaped for the site.

The record is validated with the results schema; a record of another schema version is refused
with one line (the site lists the entry as invalid). Metrics are flattened to
`{name: Stat}` with the protocol names of `editeval.evaluation.metrics` (`reliability.teacher_forced`,
`portability.one_hop.teacher_forced`, ...).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from editeval.errors import EditevalError
from editeval.evaluation.specs import TEACHER_FORCED, MetricName, per_kind_families

MAX_RECORD_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Stat:
    name: str
    mean: float | None
    lo: float | None = None
    hi: float | None = None
    count: int | None = None

    @property
    def percent(self) -> bool:
        """Shown x100 (a fraction of 0..1), as its metric spec says; unknown names as they are."""
        metric = MetricName.try_parse(self.name)
        return metric is not None and metric.percent

    def _fmt(self, v: float | None) -> str:
        if v is None or math.isnan(v):
            return "—"
        return f"{100 * v:.1f}" if self.percent else f"{v:.3f}"

    @property
    def display(self) -> str:
        return self._fmt(self.mean)

    @property
    def ci_display(self) -> str:
        return "—" if self.lo is None or self.hi is None else f"{self._fmt(self.lo)} – {self._fmt(self.hi)}"


def _num(v) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


@dataclass
class RecordView:
    raw: dict
    stats: dict[str, Stat]
    meta: dict

    # -- metrics
    def stat(self, name: str) -> Stat | None:
        s = self.stats.get(name)
        return s if s is not None and s.mean is not None else None

    def value(self, name: str) -> float | None:
        s = self.stat(name)
        return s.mean if s else None

    def _per_kind(self, family: str) -> list[tuple[MetricName, str, Stat]]:
        """The stats of one kind of `family`'s data, by name."""
        out = []
        for n, s in sorted(self.stats.items()):
            metric = MetricName.try_parse(n)
            if metric is not None and metric.family == family and metric.kind is not None:
                out.append((metric, n, s))
        return out

    def kinds(self, family: str) -> list[str]:
        return sorted({metric.kind for metric, _, _ in self._per_kind(family)})

    def headline_stats(self) -> list[tuple[str, Stat]]:
        per_kind = {n for family in per_kind_families() for _, n, _ in self._per_kind(family)}
        return [(n, s) for n, s in sorted(self.stats.items(), key=lambda kv: _order(kv[0])) if n not in per_kind]

    def breakdown(self) -> list[tuple[str, list[tuple[str, str, Stat]]]]:
        out = []
        for family in per_kind_families():
            rows = [(metric.kind, n, s) for metric, n, s in self._per_kind(family)]
            if rows:
                out.append((family, rows))
        return out

    # -- metadata
    def _get(self, *keys, default=None):
        for key in keys:
            if self.meta.get(key) not in (None, ""):
                return self.meta[key]
        return default

    @property
    def benchmark(self) -> str:
        return str(self._get("benchmark", default="?"))

    @property
    def config(self) -> str | None:
        return self._get("config")

    @property
    def split(self) -> str:
        return str(self._get("split", default="?"))

    @property
    def benchmark_label(self) -> str:
        return (
            f"{self.benchmark}/{self.config}"
            if self.config and self.config not in ("default", self.benchmark)
            else self.benchmark
        )

    @property
    def batch_size(self) -> int | None:
        from editeval.evaluation.results import grouped_batch_size

        return grouped_batch_size(self._get("mode"), self._get("edit_batch_size"))

    @property
    def num_edits(self) -> int | None:
        return self._get("n_edits")

    @property
    def method(self) -> str | None:
        return self._get("method")

    @property
    def hparams(self) -> dict | None:
        return self._get("hparams")

    @property
    def hparams_hash(self) -> str | None:
        return self._get("hparams_hash")

    @property
    def base_model(self) -> str:
        return str(self._get("base_model", default="?"))

    @property
    def base_fingerprint(self) -> str | None:
        return self._get("base_fingerprint")

    @property
    def dataset_fingerprint(self) -> str | None:
        return self._get("dataset_fingerprint")

    @property
    def metric_version(self) -> str | None:
        v = self._get("metric_version")
        return None if v is None else str(v)

    @property
    def base_size(self) -> str | None:
        n = self._get("base_num_parameters")
        if not n:
            return None
        n = float(n)
        return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"

    @property
    def seconds_per_edit(self) -> float | None:
        return _num(self._get("seconds_per_edit"))

    @property
    def peak_memory_mib(self) -> float | None:
        """Peak GPU memory on CUDA runs, else the process's peak resident memory (MiB)."""
        return _num(self._get("peak_cuda_mb", "peak_rss_mb"))

    def meta_items(self) -> list[tuple[str, str]]:
        items = []
        for key, value in sorted(self.meta.items()):
            if key == "hparams" or value in (None, "", {}, []):
                continue
            items.append((key, value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)))
        return items


def _order(name: str) -> tuple:
    """Headline order: these families first, teacher-forced before other protocols, then by name."""
    families = ["reliability", "generalization", "locality", "portability", "fluency"]
    metric = MetricName.try_parse(name)
    rank = families.index(metric.family) if metric is not None and metric.family in families else len(families)
    return (rank, metric is None or metric.protocol != TEACHER_FORCED, name)


def from_record(data: dict) -> RecordView:
    """Validate a results record (as parsed JSON) with `editeval.evaluation.results` and flatten it."""
    from pydantic import ValidationError

    from editeval.evaluation.results import SCHEMA_VERSION, ResultsRecord

    version = data.get("schema_version")
    if str(version) != SCHEMA_VERSION:
        raise EditevalError(
            f"results schema version {version!r}, this editeval reads version {SCHEMA_VERSION!r} (score it again)"
        )
    try:
        record = ResultsRecord.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise EditevalError(
            f"not a valid results record ({err.error_count()} problem(s); first: {loc}: {first['msg']})"
        ) from None
    stats = {
        name: Stat(name, _num(m.mean), _num(m.ci_low), _num(m.ci_high), m.count) for name, m in record.metrics.items()
    }
    for name, value in record.aggregates.items():
        stats.setdefault(name, Stat(name, _num(value)))
    return RecordView(raw=data, stats=stats, meta=record.meta.model_dump())


def read(path: str | Path, verify: bool = True) -> RecordView:
    """Read and validate `results.json` and (`verify`) check its figures against its per-edit rows
    (`check_rows`); one-line `EditevalError` when it cannot be used."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_RECORD_BYTES:
        raise EditevalError(f"{size:,} bytes, over the {MAX_RECORD_BYTES:,}-byte limit")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EditevalError(f"not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise EditevalError("not a results record (expected a JSON object)")
    view = from_record(data)
    if verify:
        check_rows(path, data)
    return view


def check_rows(path: Path, data: dict) -> None:
    """The figures a record shows must be its rows' figures: the rows file (beside the record, named
    by it) has the sha256 the record gives, and every mean, count, breakdown and aggregate of the
    record is what its rows give (`results.disagreements`). One-line `EditevalError` otherwise."""
    import hashlib

    import pandas as pd

    from editeval.evaluation.results import ResultsRecord, disagreements

    record = ResultsRecord.model_validate(data)
    name = record.rows_file
    if not name or Path(name).name != name or name in (".", ".."):
        raise EditevalError(f"rows_file {name!r}: must name the rows file beside the record")
    rows_path = path.parent / name
    if not rows_path.is_file() or rows_path.is_symlink():
        raise EditevalError(f"its per-edit rows {name} are missing")
    if rows_path.stat().st_size > MAX_RECORD_BYTES:
        raise EditevalError(f"{name}: over the {MAX_RECORD_BYTES:,}-byte limit")
    blob = rows_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != record.rows_sha256:
        raise EditevalError(f"{name}: its sha256 is not the rows_sha256 the record gives (rows changed after scoring)")
    try:
        rows = pd.read_parquet(rows_path).to_dict("records")
    except Exception as err:  # any unreadable file: one line
        raise EditevalError(f"{name}: not a readable Parquet file ({type(err).__name__})") from None
    problems = disagreements(record, rows)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise EditevalError(f"its figures are not those of its per-edit rows: {problems[0]}{more}")
