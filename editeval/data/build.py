"""Build `datasets/<name>/` (card + Parquet) for registered benchmarks: checked, deterministic, atomic.

Each benchmark is built in a temporary folder beside its target and renamed into place only when
every split has been written, so a failure never leaves a half-written dataset folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from editeval.data.card import data_file, render
from editeval.data.common import Benchmark, BuildContext
from editeval.data.sources import FileSpec, RawData
from editeval.errors import EditevalError
from editeval.runtime.paths import datasets_dir, raw_data_dir

# Fixed Parquet writer settings (same bytes for the same rows and library versions).
PARQUET_OPTIONS = dict(
    row_group_size=1000,
    compression="zstd",
    compression_level=3,
    use_dictionary=True,
    write_statistics=True,
    version="2.6",
    data_page_size=1 << 20,
    store_schema=True,
)


@dataclass
class BuildReport:
    name: str
    path: Path
    seconds: float
    bytes: int  # total size of the folder (card + Parquet)
    rows: dict[tuple[str, str], int]  # (config, split) -> rows


def build_benchmarks(
    names: Iterable[str] | None = None,
    raw_dir=None,
    out_dir=None,
    sources: Mapping[str, FileSpec] | None = None,
    progress: bool = True,
) -> list[BuildReport]:
    """Build the named benchmarks (all when none are named) into `out_dir` (default ./datasets)."""
    from editeval.data import registry

    benches = [registry.get(n) for n in (names or registry.BENCHMARKS)]  # unknown names fail before any work
    raw = RawData(raw_data_dir(raw_dir), sources)
    benches = [bench.with_full_sets(raw) for bench in benches]  # full sets a user put in the raw folder
    out = datasets_dir(out_dir)
    check_seconds = {}
    for bench in benches:  # every raw file present and intact before anything is written
        start = time.perf_counter()
        for relpath in bench.raw_files:
            raw.check(relpath)
        check_seconds[bench.name] = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    for bench in benches:
        report = build_one(bench, raw, out, progress)
        report.seconds += check_seconds[bench.name]  # sha256 checks count as build time
        reports.append(report)
    return reports


def build_one(bench: Benchmark, raw: RawData, out: Path, progress: bool = True) -> BuildReport:
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = time.perf_counter()
    ctx = BuildContext(raw, progress)
    built = bench.build(ctx)
    _check_shape(bench, built)

    tmp = Path(tempfile.mkdtemp(prefix=f".{bench.name}.building-", dir=out))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        split_bytes, rows = {}, {}
        for config in bench.configs:
            for split in config.splits:
                records = built[config.name][split.name]
                try:
                    table = pa.Table.from_pylist(records, schema=config.features.arrow_schema)
                except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as err:
                    raise EditevalError(
                        f"{bench.name}/{config.name}/{split.name}: rows do not fit the features: "
                        f"{str(err).splitlines()[0]}"
                    ) from None
                path = tmp / data_file(config.name, split.name)
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(table, path, **PARQUET_OPTIONS)
                split_bytes[(config.name, split.name)] = table.nbytes
                rows[(config.name, split.name)] = table.num_rows
        (tmp / "README.md").write_text(render(bench, split_bytes, ctx.notes), encoding="utf-8")
        target = _swap_into_place(tmp, out / bench.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    return BuildReport(bench.name, target, time.perf_counter() - start, size, rows)


def _check_shape(bench: Benchmark, built: dict) -> None:
    for config in bench.configs:
        splits = built.get(config.name, {})
        for split in config.splits:
            if split.name not in splits:
                raise EditevalError(f"{bench.name}: builder produced no split {config.name}/{split.name}")
            n = len(splits[split.name])
            if n != split.count:
                raise EditevalError(f"{bench.name}/{config.name}/{split.name}: {n} rows, expected {split.count}")


def _swap_into_place(tmp: Path, target: Path) -> Path:
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def built_files(folder: Path) -> list[Path]:
    """The files that make a built dataset folder (what `publish` uploads): README.md and data/**."""
    files = [folder / "README.md"] if (folder / "README.md").is_file() else []
    files += sorted(p for p in (folder / "data").rglob("*") if p.is_file()) if (folder / "data").is_dir() else []
    return files
