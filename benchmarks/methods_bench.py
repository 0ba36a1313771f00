"""Seconds per edit of every editing method on SmolLM2-135M (CPU), evaluation excluded.

    python benchmarks/methods_bench.py                     # ft-l ft-m kn rome memit, 5 edits each
    python benchmarks/methods_bench.py --methods ft-m --edits 20 --threads 1

Each method runs in its own process (so its peak RSS is its own). For each: the first N requests of
zsre/edit are applied one at a time (MEMIT also as one batch of N) and undone; the printed figure is
the mean wall time of `apply` per edit. Key statistics (ROME/MEMIT) are built or read from the
cache *before* the timed edits and reported separately. For the floor, the script also times one
plain forward pass (no grad) over an edit prompt + target in the same process, and prints the cost
of an edit in such forward passes ("edit/fwd"): a figure that survives a busy machine, where
absolute seconds do not (FT-M's 25 steps over the upper third of the layers cost about 21).

CPU seconds per edit (process time, one thread) are printed next to wall seconds: on a shared
machine they are the steadier figure. `--stats-build` also times a fresh build of the key
statistics of ROME's/MEMIT's layers (the cache is neither read nor written), the figure a new
user pays once per model and layer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

DEFAULT_METHODS = ["ft-l", "ft-m", "kn", "rome", "memit"]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(method_name: str, edits: int, model_name: str, threads: int, stats_build: bool = False) -> dict:
    import torch

    torch.set_num_threads(threads)
    from editeval.data import load_requests
    from editeval.methods.base import get_method, restore
    from editeval.run.checks import request_problem
    from editeval.runtime.models import load

    method = get_method(method_name)
    lm = load(model_name, device="cpu")
    model, tok = lm.model, lm.tokenizer
    hp = method.load_hparams(model, model_name)
    requests = load_requests("zsre", "edit", None, edits)
    requests = [r for r in requests if request_problem(r, method, tok) is None]
    out = {"method": method_name, "edits": len(requests), "threads": threads}

    # key statistics: built (or read from the cache) before timing, reported apart
    layers = getattr(hp, "layers", None) if method_name == "memit" else [getattr(hp, "layer", None)]
    if method_name in ("rome", "memit") and getattr(hp, "mom2_adjustment", True):
        from editeval.methods.kit.key_stats import second_moments
        from editeval.runtime.architectures import num_layers

        n = num_layers(model)
        t0 = time.perf_counter()
        second_moments(
            model,
            tok,
            [hp.scale_layer(x, n) for x in layers],
            tokens=hp.mom2_tokens,
            max_len=hp.mom2_max_len,
            progress=False,
        )
        out["stats_seconds"] = round(time.perf_counter() - t0, 2)
        if stats_build:  # a fresh build, cache neither read nor written
            t0, c0 = time.perf_counter(), time.process_time()
            second_moments(
                model,
                tok,
                [hp.scale_layer(x, n) for x in layers],
                tokens=hp.mom2_tokens,
                max_len=hp.mom2_max_len,
                progress=False,
                use_cache=False,
            )
            out["stats_build_seconds"] = round(time.perf_counter() - t0, 2)
            out["stats_build_cpu_seconds"] = round(time.process_time() - c0, 2)

    times, cpu = [], []
    for r in requests:
        t0, c0 = time.perf_counter(), time.process_time()
        backup = method.apply(model, tok, [r], hp)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        restore(model, backup)
    out["seconds_per_edit"] = round(statistics.mean(times), 3)
    out["cpu_seconds_per_edit"] = round(statistics.mean(cpu), 3)
    out["median_seconds"] = round(statistics.median(times), 3)
    if method.batch and len(requests) > 1:
        t0 = time.perf_counter()
        backup = method.apply(model, tok, requests, hp)
        out["batch_seconds_per_edit"] = round((time.perf_counter() - t0) / len(requests), 3)
        restore(model, backup)

    # the floor: one forward (no grad) and one forward+backward over a typical edit sequence
    ids = tok(requests[0]["prompt"] + " " + requests[0]["target_new"], return_tensors="pt").input_ids
    with torch.no_grad():
        model(ids)
        t0 = time.perf_counter()
        for _ in range(5):
            model(ids)
    out["forward_ms"] = round((time.perf_counter() - t0) / 5 * 1000, 1)
    out["tokens_per_sequence"] = ids.shape[1]
    out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--stats-build",
        action="store_true",
        help="ROME/MEMIT: also time a fresh build of the key statistics (not cached)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        print(json.dumps(run_one(args.child, args.edits, args.model, args.threads, args.stats_build)))
        return
    print(
        f"{'method':8} {'edits':>5} {'s/edit':>8} {'cpu s':>7} {'median':>8} {'batch s/edit':>12} {'stats s':>8} "
        f"{'build s':>8} {'fwd ms':>7} {'edit/fwd':>8} {'peak RSS MB':>11}"
    )
    for name in args.methods:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                name,
                "--edits",
                str(args.edits),
                "--model",
                args.model,
                "--threads",
                str(args.threads),
            ]
            + (["--stats-build"] if args.stats_build else []),
            capture_output=True,
            text=True,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{name:8} failed: {tail}")
            continue
        r = json.loads(lines[-1])
        print(
            f"{name:8} {r['edits']:>5} {r['seconds_per_edit']:>8.2f} {r['cpu_seconds_per_edit']:>7.2f} "
            f"{r['median_seconds']:>8.2f} "
            f"{r.get('batch_seconds_per_edit', float('nan')):>12.2f} {r.get('stats_seconds', float('nan')):>8.2f} "
            f"{r.get('stats_build_seconds', float('nan')):>8.2f} "
            f"{r['forward_ms']:>7.1f} {r['seconds_per_edit'] * 1000 / r['forward_ms']:>8.1f} {r['peak_rss_mb']:>11.0f}"
        )


if __name__ == "__main__":
    main()
