"""Scaling figures: 1 vs N processes (accelerate) and MEMIT batch size.

    python benchmarks/scaling_bench.py                                  # everything, small sizes
    python benchmarks/scaling_bench.py --parts score rome --score-edits 64 --rome-edits 8
    python benchmarks/scaling_bench.py --parts memit --memit-sizes 100 1000 10000

Each run is a real `editeval` command in its own process(es), every process with one torch thread
(`OMP_NUM_THREADS=1`), on the CPU; N processes are started with `accelerate launch --multi_gpu
--num_processes N` (on a machine without GPUs it starts N CPU processes joined over gloo; on N
GPUs the same command runs one process per GPU). Parts:

- score: `editeval score` on the first `--score-edits` zsre/edit requests (pre-edit pass included:
  each run gets a fresh pre-edit cache), edits/s for 1 and N processes and the ratio;
- rome: `editeval edit --method rome --mode single` on `--rome-edits` requests, the same;
- stats: `editeval stats build --layers 7 --tokens --force`, seconds for 1 and N processes;
- memit-batch: `editeval edit --method memit --mode batch` on `--memit-batch-edits` counterfact
  requests, 1 vs N processes, each run with no cached value vectors (the N processes share the
  values out, then each applies the batch and evaluates its block of it);
- memit: `editeval edit --method memit --mode batch` on the first K counterfact/edit requests for
  each K in `--memit-sizes`: wall seconds, seconds per edit (the edit alone) and peak RSS, read
  from the results record. The value vectors z are cached per request (`editeval.methods.kit.mass_values.ValueStore`), so a
  stopped 10,000-edit run resumes (and a rerun's seconds then exclude the values already found).

Every run gets a scratch cache that links the converted model and (but for the statistics part) the
key statistics of the normal cache; MEMIT also links the cached value vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from editeval.runtime.paths import cache_dir

LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]


def scratch_cache(root: Path, shared: tuple[str, ...]) -> Path:
    """A fresh cache that shares some folders (the converted models, key statistics) of the real one."""
    cache = Path(tempfile.mkdtemp(dir=root, prefix="cache-"))
    for name in shared:
        src = cache_dir() / name
        src.mkdir(parents=True, exist_ok=True)
        (cache / name).symlink_to(src, target_is_directory=True)
    return cache


def run(args: list[str], processes: int, root: Path, shared=("models", "stats"), port: int = 29517) -> float:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        EDITEVAL_CACHE=str(scratch_cache(root, shared)),
        CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    )
    cmd = (
        [sys.executable, "-m", "editeval", *args]
        if processes == 1
        else [*LAUNCH, "--num_processes", str(processes), "--main_process_port", str(port), "-m", "editeval", *args]
    )
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds


def compare(name: str, args_for, count: int, unit: str, processes: int, root: Path, shared=("models", "stats")) -> None:
    one = run(args_for(root / f"{name}-1.json"), 1, root, shared)
    many = run(args_for(root / f"{name}-{processes}.json"), processes, root, shared)
    print(
        f"{name:6s} {count:6d} {unit:8s} 1 process {one:8.1f} s ({count / one:6.2f} {unit}/s)   "
        f"{processes} processes {many:8.1f} s ({count / many:6.2f} {unit}/s)   speed-up {one / many:4.2f}x",
        flush=True,
    )


def memit_sizes(sizes: list[int], root: Path) -> None:
    print(f"{'edits':>6s} {'wall s':>9s} {'s/edit':>8s} {'peak RSS MB':>12s}  reliability  locality")
    for n in sizes:
        out = root / f"memit-{n}.json"
        wall = run(
            [
                "edit",
                "--method",
                "memit",
                "--benchmark",
                "counterfact",
                "--mode",
                "batch",
                "--limit",
                str(n),
                "--threads",
                "1",
                "--no-progress",
                "--out",
                str(out),
            ],
            1,
            root,
            shared=("models", "stats", "memit-values"),
        )
        meta = json.loads(out.read_text())
        m, metrics = meta["meta"], meta["metrics"]
        print(
            f"{n:6d} {wall:9.1f} {m['seconds_per_edit']:8.2f} {m['peak_rss_mb']:12.0f}  "
            f"{metrics['reliability.teacher_forced']['mean']:11.3f}  {metrics['locality.teacher_forced']['mean']:8.3f}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--parts",
        nargs="+",
        default=["score", "rome", "stats", "memit-batch", "memit"],
        choices=["score", "rome", "stats", "memit-batch", "memit"],
    )
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--score-edits", type=int, default=64)
    ap.add_argument("--rome-edits", type=int, default=6)
    ap.add_argument("--stats-tokens", type=int, default=20_000)
    ap.add_argument("--memit-batch-edits", type=int, default=16)
    ap.add_argument("--memit-sizes", type=int, nargs="+", default=[100])
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="editeval-scaling-"))
    n = args.processes
    try:
        if "score" in args.parts:
            compare(
                "score",
                lambda out: [
                    "score",
                    "--model",
                    "smollm2-135m",
                    "--base",
                    "smollm2-135m",
                    "--limit",
                    str(args.score_edits),
                    "--piqa",
                    "0",
                    "--out",
                    str(out),
                ],
                args.score_edits,
                "edits",
                n,
                root,
            )
        if "rome" in args.parts:
            compare(
                "rome",
                lambda out: [
                    "edit",
                    "--method",
                    "rome",
                    "--limit",
                    str(args.rome_edits),
                    "--no-progress",
                    "--out",
                    str(out),
                ],
                args.rome_edits,
                "edits",
                n,
                root,
            )
        if "stats" in args.parts:
            compare(
                "stats",
                lambda out: [
                    "stats",
                    "build",
                    "--model",
                    "smollm2-135m",
                    "--layers",
                    "7",
                    "--tokens",
                    str(args.stats_tokens),
                    "--force",
                    "--no-progress",
                    "--device",
                    "cpu",
                ],
                args.stats_tokens,
                "tokens",
                n,
                root,
                shared=("models",),
            )
        if "memit-batch" in args.parts:
            compare(
                "memit",
                lambda out: [
                    "edit",
                    "--method",
                    "memit",
                    "--benchmark",
                    "counterfact",
                    "--mode",
                    "batch",
                    "--limit",
                    str(args.memit_batch_edits),
                    "--no-progress",
                    "--out",
                    str(out),
                ],
                args.memit_batch_edits,
                "edits",
                n,
                root,
            )
        if "memit" in args.parts:
            memit_sizes(args.memit_sizes, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
