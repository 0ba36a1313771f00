"""MEMIT hyper-parameter sweep on one batch: the value vectors z do not depend on λ
(mom2_update_weight) and MEMIT caches them per request (`editeval.methods.kit.mass_values.ValueStore`), so a
sweep costs one MEMIT run plus one evaluation per value. Prints reliability / generalization / locality / portability per λ.

    python benchmarks/memit_sweep.py --limit 100 --weights 150 300 600 1200
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from editeval.run.config import EditConfig
from editeval.run.editing import run_edits
from editeval.runtime.models import load
from editeval.runtime.settings import Runtime

METRICS = [
    "reliability.teacher_forced",
    "generalization.teacher_forced",
    "locality.teacher_forced",
    "portability.teacher_forced",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--benchmark", default="zsre")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--weights", type=float, nargs="+", default=[150, 300, 600, 1200])
    ap.add_argument("--layers", type=int, nargs="*", help="override the preset's layers")
    ap.add_argument("--out-dir", default="results/memit-sweep")
    args = ap.parse_args()

    preset = Path(__file__).resolve().parents[1] / "editeval" / "hparams" / "memit" / f"{args.model}.yaml"
    base = yaml.safe_load(preset.read_text())
    if args.layers:
        base["layers"] = args.layers
    loaded = load(args.model)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print("lambda  " + "  ".join(m.split(".")[0][:12] for m in METRICS))
    for weight in args.weights:
        hp = dict(base, mom2_update_weight=weight)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
            yaml.safe_dump(hp, fh)
        layers = "-".join(map(str, hp["layers"]))
        opts = EditConfig(
            method="memit",
            model=args.model,
            benchmark=args.benchmark,
            limit=args.limit,
            mode="batch",
            hparams_path=fh.name,
            out=str(out_dir / f"memit-{args.benchmark}-{args.limit}-L{layers}-w{weight:g}.json"),
        )
        summary = run_edits(opts, Runtime(progress=False), loaded=loaded)
        metrics = summary.record.metrics
        means = [
            metrics[m].mean if m in metrics else None for m in METRICS
        ]  # None: not measured (CounterFact portability)
        print(f"{weight:6g}  " + "  ".join(("-" if v is None else f"{v:.3f}").rjust(12) for v in means), flush=True)


if __name__ == "__main__":
    main()
