"""Scoring throughput on SmolLM2-135M: `editeval score` of the base against itself on the full
zsre/edit split (1,037 edits) and the first 1,000 counterfact/edit cases, each in a fresh
process with an empty pre-edit cache (so the base-model pass is included), compared with the
floor: a plain `model(x)` loop (and a body-only loop, no LM head) over exactly the same tokens
in the same batches.

    python benchmarks/score_bench.py                       # both benchmarks, defaults
    python benchmarks/score_bench.py --only zsre --threads 1 --batch-size 32 --piqa 100

Prints one block per benchmark: sequences/s, tokens/s, wall time (total, pre-edit pass,
scoring pass), peak RSS, the floor loops' times, and the machine load while it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHES = {"zsre": ("zsre", "edit", None, 1037), "counterfact": ("counterfact", "edit", None, 1000)}


def one(name: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from editeval.data import load_requests
    from editeval.evaluation.evaluator import Evaluator
    from editeval.evaluation.runner import _body_and_head  # noqa: PLC2701 (timing its parts)
    from editeval.evaluation.specs import MetricName
    from editeval.run.scoring import load_piqa, score_checkpoint
    from editeval.runtime.models import load
    from editeval.runtime.settings import Runtime

    benchmark, split, config, limit = BENCHES[name]
    limit = args.limit or limit
    load1 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        start = time.perf_counter()
        record, rows, _ = score_checkpoint(
            "smollm2-135m",
            base="smollm2-135m",
            benchmark=benchmark,
            split=split,
            config=config,
            limit=limit,
            batch_size=args.batch_size,
            runtime=Runtime(device="cpu", progress=False),
            piqa_items=args.piqa,
            out=out,
        )
        wall = time.perf_counter() - start
    meta = record.meta
    result = {
        "benchmark": f"{benchmark}/{split}",
        "edits": meta.n_edits,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "piqa_items": meta.piqa_items,
        "wall_s": round(wall, 1),
        "preedit_s": meta.preedit_s,
        "evaluate_s": meta.evaluate_s,
        "sequences": meta.n_sequences,
        "tokens": meta.n_tokens,
        "peak_rss_mb": meta.peak_rss_mb,
        "seq_per_s": round(meta.n_sequences / meta.evaluate_s, 1),
        "tok_per_s": round(meta.n_tokens / meta.evaluate_s),
        "headline": {
            k: round(v.mean * 100, 2)
            for k, v in record.metrics.items()
            if v.mean is not None and MetricName.parse(k).kind is None
        },
    }
    # the floor: the same sequences, the same batches, a plain forward each
    lm = load("smollm2-135m", device="cpu")
    ev = Evaluator(
        lm,
        load_requests(benchmark, split, config, limit),
        batch_size=args.batch_size,
        piqa=load_piqa(args.piqa),
        progress=False,
        counterfact=True if benchmark == "counterfact" else None,
    )
    seq_ids = list(range(ev.n_sequences))
    batches = ev.runner.batches(ev._seqs, seq_ids)
    body, _ = _body_and_head(lm.model)
    for label, fn in (("plain_model_loop_s", lm.model), ("body_only_loop_s", body)):
        t0 = time.perf_counter()
        with torch.no_grad():
            for batch in batches:
                fn(input_ids=torch.tensor([ev._seqs[s].ids for s in batch]), use_cache=False)
        result[label] = round(time.perf_counter() - t0, 1)
    result["floor_tokens"] = sum(len(ev._seqs[s].ids) for s in seq_ids)
    result["loadavg_start_end"] = [round(load1, 2), round(os.getloadavg()[0], 2)]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(BENCHES), action="append")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--piqa", type=int, default=100)
    parser.add_argument("--limit", type=int, help="fewer edits (a quick check)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(one(args.child, args)), flush=True)
        return
    for name in args.only or list(BENCHES):
        with tempfile.TemporaryDirectory() as cache:
            # a fresh editeval cache (no pre-edit predictions) that shares the converted model
            real = Path(os.environ.get("EDITEVAL_CACHE") or _default_cache())
            (Path(cache) / "models").symlink_to(real / "models")
            env = dict(os.environ, EDITEVAL_CACHE=cache, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
            cmd = [
                sys.executable,
                __file__,
                "--child",
                name,
                "--threads",
                str(args.threads),
                "--batch-size",
                str(args.batch_size),
                "--piqa",
                str(args.piqa),
            ]
            cmd += ["--limit", str(args.limit)] if args.limit else []
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"{name}: benchmark failed")
        r = json.loads(lines[-1][len("RESULT ") :])
        print(
            f"== {r['benchmark']}: {r['edits']} edits, {r['threads']} threads, batch {r['batch_size']}, "
            f"PIQA {r['piqa_items']}, load avg {r['loadavg_start_end']}"
        )
        print(
            f"   total wall {r['wall_s']} s (model loads + pre-edit pass {r['preedit_s']} s + scoring "
            f"{r['evaluate_s']} s), peak RSS {r['peak_rss_mb']} MB"
        )
        print(
            f"   scoring pass: {r['sequences']} sequences, {r['tokens']} tokens -> {r['seq_per_s']} seq/s, "
            f"{r['tok_per_s']} tok/s"
        )
        print(
            f"   floor over the same {r['floor_tokens']} tokens/batches: plain model(x) {r['plain_model_loop_s']} s, "
            f"body only (no LM head) {r['body_only_loop_s']} s"
        )
        print(f"   {json.dumps(r['headline'])}")


def _default_cache() -> str:
    from editeval.runtime.paths import cache_dir

    return str(cache_dir())


if __name__ == "__main__":
    main()
