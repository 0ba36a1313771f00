"""`score_checkpoint` / `editeval score`: records, locality 1.0 on the base itself, refusals."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from editeval.cli import main
from editeval.results import read_record, read_rows
from editeval.schema import EDIT_REQUEST_FEATURES, empty_request
from editeval.scoring import score_checkpoint

REQS = [
    empty_request(case_id=i, subject="Paris", prompt=f"Question {i}: the capital of France is",
                  target_new=["Lyon", "Rome city", "Berlin"][i % 3], ground_truth="Paris",
                  rephrase_prompts=[f"France's capital ({i}) is"],
                  locality=[{"kind": "nq", "prompt": f"who wrote hamlet {i}?", "answer": "Shakespeare"}],
                  portability=[{"kind": "one_hop", "prompt": "The Louvre is in", "answer": "Lyon"},
                               {"kind": "subject_replace", "prompt": "The capital of the French Republic is",
                                "answer": "Lyon"}])
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
    record, rows, path = score_checkpoint(tiny_llama_dir, base=tiny_llama_dir, requests=REQS, out=out,
                                          device="cpu", progress=False, piqa_items=0, benchmark="toy")
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
        (f["portability.one_hop.teacher_forced"] + f["portability.subject_replace.teacher_forced"]) / 2)
    assert not list(out.parent.glob("*.tmp"))


def test_cli_score_writes_the_record(built_benchmark, tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "out.json"
    with pytest.raises(SystemExit) as exc:
        main(["score", "--model", str(tiny_llama_dir), "--base", str(tiny_llama_dir), "--benchmark", "toy",
              "--split", "edit", "--limit", "3", "--batch-size", "2", "--device", "cpu", "--out", str(out),
              "--no-progress", "--piqa", "0"])
    assert exc.value.code in (0, None)
    data = json.loads(out.read_text())
    assert data["schema_version"] == "1" and data["meta"]["n_edits"] == 3 and data["meta"]["limit"] == 3
    assert data["meta"]["batch_size"] == 2 and data["metrics"]["locality.teacher_forced"]["mean"] == 1.0
    assert (tmp_path / "out.rows.parquet").exists()
    assert "locality.teacher_forced" in capsys.readouterr().out


@pytest.mark.parametrize("other", ["tiny_gpt2_dir"])
def test_other_architecture_is_refused_in_one_line(built_benchmark, tiny_llama_dir, other, request, tmp_path, capsys):
    out = tmp_path / "x.json"
    with pytest.raises(SystemExit) as exc:
        main(["score", "--model", str(request.getfixturevalue(other)), "--base", str(tiny_llama_dir),
              "--benchmark", "toy", "--device", "cpu", "--out", str(out), "--no-progress"])
    assert exc.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "architecture" in errors[0] and "model_type" in errors[0]
    assert "Traceback" not in errors[0]
    assert not out.exists()


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
        score_checkpoint(other, base=tiny_llama_dir, requests=REQS, out=tmp_path / "y.json", device="cpu",
                         progress=False, piqa_items=0)
    assert not (tmp_path / "y.json").exists()


def test_unknown_benchmark_and_bad_out(built_benchmark, tiny_llama_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["score", "--model", str(tiny_llama_dir), "--base", str(tiny_llama_dir), "--benchmark", "nope",
              "--device", "cpu", "--out", str(tmp_path / "z.json")])
    assert exc.value.code == 2 and "nope" in capsys.readouterr().err


@pytest.mark.real_model
def test_real_model_knows_paris_and_locality_is_one(smollm2_dir, tmp_path):
    """SmolLM2 against itself on facts it knows: reliability 1 where the target is its answer.
    (Uses the shared editeval cache, where the converted model lives.)"""
    reqs = [
        empty_request(case_id=0, prompt="The Eiffel Tower is located in the city of", target_new="Paris",
                      locality=[{"kind": "nq", "prompt": "The capital of Germany is", "answer": "Berlin"}]),
        empty_request(case_id=1, prompt="Danielle Darrieux's mother tongue is", target_new="French",
                      locality=[{"kind": "nq", "prompt": "who wrote hamlet?", "answer": "Shakespeare"}]),
        empty_request(case_id=2, prompt="The Eiffel Tower is located in the city of", target_new="Rome"),
    ]
    record, rows, _ = score_checkpoint("smollm2-135m", base="smollm2-135m", requests=reqs, out=tmp_path / "r.json",
                                       device="cpu", progress=False, piqa_items=0)
    assert [r["reliability.teacher_forced"] for r in rows] == [1.0, 1.0, 0.0]
    assert [r["reliability.generation"] for r in rows] == [1.0, 1.0, 0.0]
    assert record.metrics["locality.teacher_forced"].mean == 1.0
    assert math.isnan(rows[2]["locality.teacher_forced"])


def test_build_record_summaries_and_metadata(tmp_path):
    from editeval.results import build_record, hparams_hash, read_record, rows_path, summarize, write_record

    rows = [{"case_id": i, "reliability.teacher_forced": float(i % 2), "locality.nq.teacher_forced": 1.0,
             "locality.teacher_forced": 1.0, "efficacy_score": 1.0, "paraphrase_score": 0.5,
             "neighborhood_score": float("nan") if i == 0 else 1.0} for i in range(10)]
    meta = {"benchmark": "toy", "split": "edit", "method": "ROME", "hparams": {"layer": 5},
            "hparams_hash": hparams_hash({"layer": 5}), "mode": "single", "seconds_per_edit": 1.5}
    rec = build_record(rows, meta, item_values={"other_task.piqa_accuracy": [1.0, 0.0, 1.0, 1.0]})
    assert rec.metrics["reliability.teacher_forced"].mean == 0.5 and rec.metrics["reliability.teacher_forced"].count == 10
    assert rec.metrics["neighborhood_score"].count == 9  # NaN = not applicable
    assert rec.metrics["other_task.piqa_accuracy"].count == 4 and rec.metrics["other_task.piqa_accuracy"].mean == 0.75
    assert rec.breakdowns == {"locality.teacher_forced": {"nq": rec.metrics["locality.nq.teacher_forced"]}}
    assert rec.aggregates["counterfact.score"] == pytest.approx(3 / (1 + 2 + 1))
    assert rec.meta.n_edits == 10 and rec.meta.editeval_version and rec.meta.mode == "single"
    assert hparams_hash({"a": 1, "b": 2}) == hparams_hash({"b": 2, "a": 1})
    a, b = summarize([0.0, 1.0] * 50), summarize([0.0, 1.0] * 50)
    assert a == b and a.ci_low < 0.5 < a.ci_high  # fixed seed: reproducible intervals
    path = write_record(rec, rows, tmp_path / "x.json")
    assert rows_path(path).name == "x.rows.parquet" and read_record(path).rows_sha256 == rec.rows_sha256
    with pytest.raises(Exception):
        build_record(rows, {"mode": "nonsense"})
