"""Every benchmark builder, registered in one place."""

from __future__ import annotations

from editeval.data import counterfact, knowedit, locality, portability, zsre
from editeval.data.common import Benchmark
from editeval.errors import EditevalError

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    zsre.BENCHMARK,
    counterfact.BENCHMARK,
    portability.BENCHMARK,
    locality.BENCHMARK,
    knowedit.BENCHMARK,
)}


def get(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise EditevalError(f"unknown benchmark '{name}': choose from {', '.join(BENCHMARKS)}") from None
