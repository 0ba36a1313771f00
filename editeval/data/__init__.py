"""Benchmark builders (one module per benchmark, registered in `registry.py`) and readers."""

from __future__ import annotations

import os

from editeval.errors import EditevalError
from editeval.paths import datasets_dir


def load_benchmark(name: str, split: str, config: str | None = None, root: str | os.PathLike | None = None):
    """The built `datasets/<name>` folder's split as a `datasets.Dataset` (offline, typed features)."""
    import datasets

    folder = datasets_dir(root) / name
    if not (folder / "README.md").exists():
        raise EditevalError(f"benchmark '{name}' is not built in {folder}: run `editeval datasets build {name}`")
    try:
        return datasets.load_dataset(str(folder), config, split=split)
    except (ValueError, FileNotFoundError) as err:
        raise EditevalError(f"benchmark '{name}' config {config!r} split '{split}': {str(err).splitlines()[0]}") from None
