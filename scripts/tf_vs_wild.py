#!/usr/bin/env python
"""The teacher-forced vs WILD table of docs/results.md, from the committed reference entries:

    python scripts/tf_vs_wild.py                  # zsre and counterfact, every single-mode entry
    python scripts/tf_vs_wild.py --benchmarks zsre

One row per reference entry on the first 200 edits (single mode, and MEMIT's batch of 200), ×100:
reliability, generalization, locality and portability teacher-forced (TF) beside WILD's exact match
(and, for reliability, `wild_contains`: the new answer said somewhere in the free answer); "gap" is
TF − WILD reliability. "–": the entry has no such figure (no WILD figures before METRIC_VERSION 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PREFIX = "reference-smollm2-135m-"
COLUMNS = (
    ("rel. TF", "reliability.teacher_forced"),
    ("rel. WILD", "reliability.wild"),
    ("rel. contains", "reliability.wild_contains"),
    ("gen. TF", "generalization.teacher_forced"),
    ("gen. WILD", "generalization.wild"),
    ("loc. TF", "locality.teacher_forced"),
    ("loc. WILD", "locality.wild"),
    ("port. TF", "portability.teacher_forced"),
    ("port. WILD", "portability.wild"),
)


def rows(submissions: Path, bench: str) -> list[tuple[str, dict]]:
    """(label, metric means) of the single-mode entries (and MEMIT's batch) on `bench`, by slug."""
    out = []
    for path in sorted(submissions.glob(f"{PREFIX}*-{bench}/results.json")):
        label = path.parent.name[len(PREFIX) : -len(bench) - 1]
        if any(part in label for part in ("sequential", "batch1000", "batch10000")):
            continue  # mass and lifelong entries: other tables
        record = json.loads(path.read_text())
        means = {name: m.get("mean") for name, m in record["metrics"].items()}
        out.append((label, means))
    return out


def table(bench: str, entries: list[tuple[str, dict]]) -> str:
    head = ["method", *(name for name, _ in COLUMNS), "gap"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]

    def pct(value):
        return "–" if value is None else f"{100 * value:.1f}"

    for label, means in entries:
        tf, wild = means.get("reliability.teacher_forced"), means.get("reliability.wild")
        gap = None if tf is None or wild is None else tf - wild
        lines.append("| " + " | ".join([label, *(pct(means.get(key)) for _, key in COLUMNS), pct(gap)]) + " |")
    return f"**{bench}**\n\n" + "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks", nargs="*", default=["zsre", "counterfact"])
    parser.add_argument("--submissions", type=Path, default=REPO / "submissions")
    args = parser.parse_args()
    for bench in args.benchmarks:
        entries = rows(args.submissions, bench)
        if not entries:
            print(f"error: no reference entries on {bench} under {args.submissions}", file=sys.stderr)
            return 1
        print(table(bench, entries) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
