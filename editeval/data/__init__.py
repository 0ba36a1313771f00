"""Benchmark builders (one module per benchmark, registered in `registry.py`) and readers."""

from __future__ import annotations

import os

from editeval.errors import EditevalError
from editeval.runtime.paths import datasets_dir


def load_benchmark(name: str, split: str, config: str | None = None, root: str | os.PathLike | None = None):
    """The built `datasets/<name>` folder's split as a `datasets.Dataset` (offline, typed features)."""
    import datasets

    folder = datasets_dir(root) / name
    if not (folder / "README.md").exists():
        raise EditevalError(f"benchmark '{name}' is not built in {folder}: run `editeval datasets build {name}`")
    try:
        return datasets.load_dataset(str(folder), config, split=split)
    except (ValueError, FileNotFoundError) as err:
        raise EditevalError(
            f"benchmark '{name}' config {config!r} split '{split}': {str(err).splitlines()[0]}"
        ) from None


def load_requests(
    benchmark: str,
    split: str,
    config: str | None = None,
    limit: int | None = None,
    root: str | os.PathLike | None = None,
) -> list[dict]:
    """The edit requests of a built benchmark split (first `limit` of them), from the datasets
    folder `root` (default: `paths.datasets_dir()`)."""
    from editeval.data.schema import empty_request

    ds = load_benchmark(benchmark, split, config, root)
    missing = [f for f in ("prompt", "target_new", "case_id") if f not in ds.column_names]
    if missing:
        raise EditevalError(
            f"benchmark '{benchmark}' config {config!r} split '{split}' is not an edit-request split "
            f"(missing {', '.join(missing)}; expected the fields of editeval.data.schema)"
        )
    if limit is not None:
        if limit < 1:
            raise EditevalError(f"--limit {limit}: must be at least 1")
        ds = ds.select(range(min(limit, len(ds))))
    records = ds.to_list()
    defaults = empty_request()
    for r in records:  # tolerate configs without some optional fields
        for name, value in defaults.items():
            r.setdefault(name, type(value)() if isinstance(value, list) else value)
    return records
