"""`score_checkpoint` / `editeval score`: records, locality 1.0 on the base itself, refusals."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from editeval.cli import main
from editeval.data.schema import EDIT_REQUEST_FEATURES, empty_request
from editeval.evaluation.results import read_record, read_rows
from editeval.run.scoring import score_checkpoint
from editeval.runtime.settings import Runtime

REQS = [
    empty_request(
        case_id=i,
        subject="Paris",
        prompt=f"Question {i}: the capital of France is",
        target_new=["Lyon", "Rome city", "Berlin"][i % 3],
        ground_truth="Paris",
        rephrase_prompts=[f"France's capital ({i}) is"],
        locality=[{"kind": "nq", "prompt": f"who wrote hamlet {i}?", "answer": "Shakespeare"}],
        portability=[
            {"kind": "one_hop", "prompt": "The Louvre is in", "answer": "Lyon"},
            {"kind": "subject_replace", "prompt": "The capital of the French Republic is", "answer": "Lyon"},
        ],
    )
    for i in range(5)
]


@pytest.fixture()
def built_benchmark(tmp_path, monkeypatch):
    """A tiny built benchmark folder `toy` (README + parquet), as `editeval datasets build` makes."""
    import datasets

    folder = tmp_path / "datasets" / "toy"
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_list(REQS, features=EDIT_REQUEST_FEATURES).to_parquet(folder / "data" / "edit.parquet")
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: edit\n    path: data/edit.parquet\n---\n# toy\n"
    )
    monkeypatch.setenv("EDITEVAL_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path / "cache"))
    return folder


def test_score_base_against_itself(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "res" / "r.json"
    record, rows, path = score_checkpoint(
        tiny_llama_dir,
        base=tiny_llama_dir,
        requests=REQS,
        out=out,
        runtime=Runtime(device="cpu", progress=False),
        piqa_items=0,
        benchmark="toy",
    )
    assert path == out and out.exists()
    assert record.metrics["locality.teacher_forced"].mean == 1.0
    assert record.metrics["locality.teacher_forced"].count == 5
    assert set(record.breakdowns["portability.teacher_forced"]) == {"one_hop", "subject_replace"}
    assert record.meta.base_fingerprint == record.meta.edited_fingerprint
    back = read_record(out)
    assert back == record
    frame = read_rows(out)
    assert len(frame) == 5 and list(frame["case_id"]) == [0, 1, 2, 3, 4]
    s = record.metrics["reliability.teacher_forced"]
    assert s.mean == pytest.approx(frame["reliability.teacher_forced"].mean())
    assert s.ci_low <= s.mean <= s.ci_high
    # portability family = mean of its kinds per edit
    f = frame.iloc[0]
    assert f["portability.teacher_forced"] == pytest.approx(
        (f["portability.one_hop.teacher_forced"] + f["portability.subject_replace.teacher_forced"]) / 2
    )
    assert not list(out.parent.glob("*.tmp"))


def test_cli_score_writes_the_record(built_benchmark, tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "out.json"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "score",
                "--model",
                str(tiny_llama_dir),
                "--base",
                str(tiny_llama_dir),
                "--benchmark",
                "toy",
                "--split",
                "edit",
                "--limit",
                "3",
                "--batch-size",
                "2",
                "--device",
                "cpu",
                "--out",
                str(out),
                "--no-progress",
                "--piqa",
                "0",
            ]
        )
    assert exc.value.code == 0
    data = json.loads(out.read_text())
    assert data["schema_version"] == "1" and data["meta"]["n_edits"] == 3 and data["meta"]["limit"] == 3
    assert data["meta"]["batch_size"] == 2 and data["metrics"]["locality.teacher_forced"]["mean"] == 1.0
    assert (tmp_path / "out.rows.parquet").exists()
    assert "locality.teacher_forced" in capsys.readouterr().out


def _the_error_line(err: str) -> str:
    """stderr of a refused command: no traceback, exactly one `error:` line, and it is the last line
    (model loading may draw a progress bar before it)."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]


@pytest.mark.parametrize("other", ["tiny_gpt2_dir"])
def test_other_architecture_is_refused_in_one_line(built_benchmark, tiny_llama_dir, other, request, tmp_path, capsys):
    out = tmp_path / "x.json"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "score",
                "--model",
                str(request.getfixturevalue(other)),
                "--base",
                str(tiny_llama_dir),
                "--benchmark",
                "toy",
                "--device",
                "cpu",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
    assert exc.value.code == 2
    line = _the_error_line(capsys.readouterr().err)
    assert line.startswith(
        f"error: model {request.getfixturevalue(other)} does not have the architecture of base {tiny_llama_dir}"
    )
    assert "model_type" in line and "'gpt2'" in line and "'llama'" in line
    assert not out.exists() and not list(tmp_path.glob("x.*"))  # no record, no rows, no temp file


def test_other_tokenizer_is_refused(tiny_llama_dir, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    from editeval.errors import EditevalError

    other = tmp_path / "other-tok"
    shutil.copytree(tiny_llama_dir, other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<new_token>"])
    tok.save_pretrained(other)
    with pytest.raises(EditevalError, match="tokenizer"):
        score_checkpoint(
            other,
            base=tiny_llama_dir,
            requests=REQS,
            out=tmp_path / "y.json",
            runtime=Runtime(device="cpu", progress=False),
            piqa_items=0,
        )
    assert not (tmp_path / "y.json").exists()


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*"))


def test_unknown_benchmark_is_refused_in_one_line(built_benchmark, tiny_llama_dir, tmp_path, capsys):
    before = _files(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "score",
                "--model",
                str(tiny_llama_dir),
                "--base",
                str(tiny_llama_dir),
                "--benchmark",
                "nope",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "z.json"),
                "--no-progress",
                "--piqa",
                "0",
            ]
        )
    assert exc.value.code == 2
    line = _the_error_line(capsys.readouterr().err)
    assert line.startswith("error: ") and "'nope'" in line and "editeval datasets build nope" in line
    assert _files(tmp_path) == before  # no record, no rows, no cache entry


@pytest.mark.parametrize("name", ["x.txt", "x", "x.json.tmp"])
def test_bad_out_is_refused_in_one_line_and_nothing_written(built_benchmark, tiny_llama_dir, tmp_path, capsys, name):
    out = tmp_path / "res" / name
    before = _files(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "score",
                "--model",
                str(tiny_llama_dir),
                "--base",
                str(tiny_llama_dir),
                "--benchmark",
                "toy",
                "--device",
                "cpu",
                "--out",
                str(out),
                "--no-progress",
                "--piqa",
                "0",
            ]
        )
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"error: --out {out}: the results record must be a .json path"]
    assert captured.out == ""
    assert _files(tmp_path) == before  # no record, no rows, no folder, no cache entry


@pytest.mark.real_model
def test_real_model_knows_paris_and_locality_is_one(smollm2_dir, tmp_path):
    """SmolLM2 against itself on facts it knows: reliability 1 where the target is its answer.
    (Uses the shared editeval cache, where the converted model lives.)"""
    reqs = [
        empty_request(
            case_id=0,
            prompt="The Eiffel Tower is located in the city of",
            target_new="Paris",
            locality=[{"kind": "nq", "prompt": "The capital of Germany is", "answer": "Berlin"}],
        ),
        empty_request(
            case_id=1,
            prompt="Danielle Darrieux's mother tongue is",
            target_new="French",
            locality=[{"kind": "nq", "prompt": "who wrote hamlet?", "answer": "Shakespeare"}],
        ),
        empty_request(case_id=2, prompt="The Eiffel Tower is located in the city of", target_new="Rome"),
    ]
    record, rows, _ = score_checkpoint(
        "smollm2-135m",
        base="smollm2-135m",
        requests=reqs,
        out=tmp_path / "r.json",
        runtime=Runtime(device="cpu", progress=False),
        piqa_items=0,
    )
    assert [r["reliability.teacher_forced"] for r in rows] == [1.0, 1.0, 0.0]
    assert [r["reliability.generation"] for r in rows] == [1.0, 1.0, 0.0]
    assert record.metrics["locality.teacher_forced"].mean == 1.0
    assert math.isnan(rows[2]["locality.teacher_forced"])


def test_build_record_summaries_and_metadata(tmp_path):
    from editeval.evaluation.results import build_record, hparams_hash, read_record, rows_path, summarize, write_record

    rows = [
        {
            "case_id": i,
            "reliability.teacher_forced": float(i % 2),
            "locality.nq.teacher_forced": 1.0,
            "locality.teacher_forced": 1.0,
            "efficacy_score": 1.0,
            "paraphrase_score": 0.5,
            "neighborhood_score": float("nan") if i == 0 else 1.0,
        }
        for i in range(10)
    ]
    meta = {
        "benchmark": "toy",
        "split": "edit",
        "method": "ROME",
        "hparams": {"layer": 5},
        "hparams_hash": hparams_hash({"layer": 5}),
        "mode": "single",
        "seconds_per_edit": 1.5,
    }
    rec = build_record(rows, meta, item_values={"other_task.piqa_accuracy": [1.0, 0.0, 1.0, 1.0]})
    assert (
        rec.metrics["reliability.teacher_forced"].mean == 0.5 and rec.metrics["reliability.teacher_forced"].count == 10
    )
    assert rec.metrics["neighborhood_score"].count == 9  # NaN = not applicable
    assert rec.metrics["other_task.piqa_accuracy"].count == 4 and rec.metrics["other_task.piqa_accuracy"].mean == 0.75
    assert rec.breakdowns == {"locality.teacher_forced": {"nq": rec.metrics["locality.nq.teacher_forced"]}}
    assert rec.aggregates["counterfact.score"] == pytest.approx(3 / (1 + 2 + 1))
    assert rec.meta.n_edits == 10 and rec.meta.editeval_version and rec.meta.mode == "single"
    assert hparams_hash({"a": 1, "b": 2}) == hparams_hash({"b": 2, "a": 1})
    a, b = summarize([0.0, 1.0] * 50), summarize([0.0, 1.0] * 50)
    assert a == b  # fixed seed: reproducible intervals
    path = write_record(rec, rows, tmp_path / "x.json")
    assert rows_path(path).name == "x.rows.parquet" and read_record(path).rows_sha256 == rec.rows_sha256
    with pytest.raises(ValidationError, match=r"mode\n  Input should be 'single', 'batch' or 'sequential'"):
        build_record(rows, {"mode": "nonsense"})
    assert not list(tmp_path.glob("*.tmp"))


def test_bootstrap_interval_values():
    """The 95 % percentile-bootstrap interval of a mean, against the normal approximation
    mean ± 1.96·sqrt(p(1-p)/n) (bootstrap percentiles move in steps of 1/n)."""
    from editeval.evaluation.results import summarize

    half = summarize([0.0, 1.0] * 50)  # p = 0.5, n = 100: 0.5 ± 0.098
    assert (half.mean, half.count) == (0.5, 100)
    assert half.ci_low == pytest.approx(0.5 - 0.098, abs=0.02) and half.ci_high == pytest.approx(0.5 + 0.098, abs=0.02)
    big = summarize([0.0, 1.0] * 500)  # n = 1000: 0.5 ± 0.031, tight enough to tell 95 % from 90 % (± 0.026)
    assert big.ci_low == pytest.approx(0.469, abs=0.004) and big.ci_high == pytest.approx(0.531, abs=0.004)
    tenth = summarize([1.0] * 10 + [0.0] * 90)  # p = 0.1, n = 100: 0.1 ± 0.059, not symmetric around 0.5
    assert tenth.mean == pytest.approx(0.1)
    assert tenth.ci_low == pytest.approx(0.1 - 0.059, abs=0.02) and tenth.ci_high == pytest.approx(
        0.1 + 0.059, abs=0.02
    )
    wide = summarize([0.0, 1.0] * 5)  # n = 10: 0.5 ± 0.31
    assert wide.ci_low == pytest.approx(0.19, abs=0.07) and wide.ci_high == pytest.approx(0.81, abs=0.07)
    for v in (0.0, 1.0, 0.7, 1 / 3):  # constant values: the interval is the value itself
        c = summarize([v] * 7)
        assert c.count == 7 and c.ci_low == c.mean == c.ci_high == pytest.approx(v, abs=1e-12)
    one = summarize([0.25])
    assert (one.mean, one.count, one.ci_low, one.ci_high) == (0.25, 1, 0.25, 0.25)
    assert summarize([float("nan"), 0.25, None]) == one  # NaN / None: not applicable, not counted
    empty = summarize([float("nan")])
    assert (empty.mean, empty.count, empty.ci_low, empty.ci_high) == (None, 0, None, None)


def test_a_checkpoint_transformers_cannot_load_is_one_error_line(tmp_path, tiny_llama_dir, capsys, monkeypatch):
    """`editeval score --model DIR`, no submission checks in front: a truncated weights file (the
    safetensors library's own error) is still one line, not a traceback."""
    import shutil

    from editeval.cli import main

    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path / "cache"))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, broken)
    blob = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    argv = ["score", "--model", broken, "--base", tiny_llama_dir, "--device", "cpu", "--piqa", "0"]
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv + ["--out", tmp_path / "r.json"]])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert exc.value.code == 2 and "Traceback" not in err and len(errors) == 1, err
    assert (
        errors[0].startswith(f"error: cannot load the edited model {broken}: ") and not (tmp_path / "r.json").exists()
    )
