"""Every benchmark, registered in one place: a built-in benchmark is a module of this package with a
`BENCHMARK` (editeval.data.common.Benchmark) and its name in `BUILTIN`; another package registers
one through the ``editeval.benchmarks`` entry-point group (``toy = "toy_editeval.bench:BENCHMARK"``)."""

from __future__ import annotations

import importlib

from editeval.data.common import Benchmark
from editeval.runtime.registry import Registry

# modules of editeval.data, in the order `editeval datasets list` and `build` take them
BUILTIN = ("zsre", "counterfact", "portability", "locality", "knowedit", "mquake", "rippleedits", "qaedit")


def _register_builtins() -> None:
    for module in BUILTIN:
        bench = importlib.import_module(f"editeval.data.{module}").BENCHMARK
        BENCHMARKS.add(bench.name, bench)


BENCHMARKS: Registry[Benchmark] = Registry(
    "benchmark", builtins=_register_builtins, group="editeval.benchmarks", ordered=True
)


def get(name: str) -> Benchmark:
    return BENCHMARKS.get(name)
