"""submission.yaml: schema errors (one line each), every safety refusal, the template, staleness."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import yaml

from editeval.errors import EditevalError
from editeval.leaderboard.checks import check_checkpoint_folder, check_submission, load_submission
from editeval.leaderboard.manifest import Limits, SubmissionError, write_template

FP = "0123456789abcdef"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Scoring writes pre-edit predictions and model copies into the cache: this test's own folder."""
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def manifest(**overrides) -> dict:
    data = {
        "schema_version": 1,
        "title": "FT-M on SmolLM2",
        "authors": ["Ada Lovelace"],
        "contact": "ada@example.org",
        "method": {"name": "ft-m", "link": "https://example.org/paper"},
        "base_model": {"name": "smollm2-135m", "fingerprint": FP},
        "benchmark": {"name": "zsre", "split": "edit"},
        "mode": "sequential",
        "num_edits": 10,
        "score": {"checkpoint": "checkpoint"},
    }
    for key, value in overrides.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def safetensors_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def make_checkpoint(folder: Path, files: dict[str, bytes | str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    files = (
        files
        if files is not None
        else {
            "config.json": json.dumps({"model_type": "llama"}),
            "model.safetensors": safetensors_bytes({"model.embed_tokens.weight": torch.zeros(4, 2)}),
            "tokenizer.json": "{}",
        }
    )
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


def make_submission(root: Path, slug: str = "my-entry", checkpoint: bool = True, **overrides) -> Path:
    folder = root / slug
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "submission.yaml").write_text(yaml.safe_dump(manifest(**overrides)))
    if checkpoint:
        make_checkpoint(folder / "checkpoint")
    return folder


def problems(folder: Path, **kwargs) -> list[str]:
    with pytest.raises(SubmissionError) as info:
        check_submission(folder, **kwargs)
    return info.value.problems


# --------------------------------------------------------------------------- schema


def test_valid_submission_passes(tmp_path):
    checked = check_submission(make_submission(tmp_path))
    assert checked.slug == "my-entry"
    assert checked.submission.score.kind == "checkpoint"
    assert checked.checkpoint_dir == tmp_path / "my-entry" / "checkpoint"


def test_missing_and_unknown_fields_one_line_each(tmp_path):
    folder = make_submission(tmp_path, title=None, contact=None, colour="blue")
    lines = problems(folder)
    assert "missing field 'title'" in lines
    assert "missing field 'contact'" in lines
    assert "unknown field 'colour'" in lines
    assert len(lines) == 3
    message = str(SubmissionError(folder / "submission.yaml", lines))
    assert all(line.startswith(str(folder / "submission.yaml") + ": ") for line in message.splitlines())


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"mode": "batch"}, "mode 'batch' needs batch_size"),
        ({"mode": "single", "batch_size": 4}, "batch_size is only for modes 'batch' and 'sequential'"),
        ({"mode": "sequential", "batch_size": 4}, "batch_size of mode 'sequential' is for method runs"),
        ({"mode": "batch", "batch_size": 50}, "batch_size 50 is larger than num_edits 10"),
        ({"mode": "single"}, "a checkpoint is one edited model holding every edit"),
        ({"score": {"unedited": True}}, "an unedited base-model entry uses mode 'single'"),
        ({"mode": "parallel"}, "mode: Input should be 'single', 'batch' or 'sequential'"),
        ({"num_edits": 0}, "num_edits: Input should be greater than or equal to 1"),
        ({"score": {}}, "give exactly one of checkpoint / hub / hparams / unedited"),
        ({"score": {"checkpoint": "c", "hparams": "h.yaml"}}, "(got checkpoint, hparams)"),
        ({"score": {"hub": "not a repo id"}}, "score.hub: must be a Hub repo id"),
        ({"method": {"name": "x", "link": "javascript:alert(1)"}}, "method.link: must be an http:// or https:// URL"),
        ({"base_model": {"name": "smollm2-135m", "fingerprint": "abc"}}, "base_model.fingerprint: String should match"),
        ({"schema_version": 2}, "schema_version: Input should be 1"),
    ],
)
def test_schema_errors(tmp_path, overrides, expected):
    lines = problems(make_submission(tmp_path, **overrides))
    assert any(expected in line for line in lines), lines


def test_a_sequential_method_run_may_apply_its_edits_in_batches(tmp_path):
    """Sequential batches (MEMIT's mass-editing protocol: batches of 100, one after another)."""

    def checked(**kw):
        return check_submission(
            make_submission(
                tmp_path,
                checkpoint=False,
                method={"name": "memit"},
                score={"hparams": "preset"},
                mode="sequential",
                **kw,
            )
        ).submission

    assert checked(batch_size=5).mode_label == "sequential, batches of 5"
    assert checked(batch_size=1).batch_size is None  # one at a time, the default
    assert checked().mode_label == "sequential"
    lines = problems(
        make_submission(
            tmp_path,
            checkpoint=False,
            method={"name": "memit"},
            score={"hparams": "preset"},
            mode="sequential",
            batch_size=50,
        )
    )
    assert any("batch_size 50 is larger than num_edits 10" in line for line in lines), lines
    lines = problems(
        make_submission(
            tmp_path,
            checkpoint=False,
            method={"name": "rome"},
            score={"hparams": "preset"},
            mode="sequential",
            batch_size=5,
        )
    )
    assert "method 'rome' edits one request at a time (no sequential batch_size)" in lines


def test_bad_yaml_and_missing_manifest(tmp_path):
    folder = tmp_path / "bad-yaml"
    folder.mkdir()
    assert "no submission.yaml" in problems(folder)[0]
    (folder / "submission.yaml").write_text("title: [unclosed\n")
    assert problems(folder)[0].startswith("not valid YAML")
    (folder / "submission.yaml").write_text("- a list\n")
    assert "expected a mapping" in problems(folder)[0]


def test_invalid_slug(tmp_path):
    assert any("not a valid slug" in p for p in problems(make_submission(tmp_path, slug="Bad Slug!")))


def test_unknown_base_model(tmp_path):
    lines = problems(make_submission(tmp_path, base_model={"name": "gpt-9", "fingerprint": FP}))
    assert any("base_model.name: 'gpt-9' is neither a registered model" in p for p in lines), lines


def test_method_run_checks_method_and_hparams(tmp_path):
    folder = make_submission(
        tmp_path, checkpoint=False, method={"name": "no-such-method"}, score={"hparams": "hparams.yaml"}
    )
    lines = problems(folder)
    assert any("unknown method 'no-such-method'" in p for p in lines), lines
    assert any("file 'hparams.yaml' does not exist" in p for p in lines), lines
    (folder / "hparams.yaml").write_text("layers: [3]\n")
    (folder / "submission.yaml").write_text(
        yaml.safe_dump(manifest(method={"name": "ft-m"}, score={"hparams": "hparams.yaml"}))
    )
    checked = check_submission(folder)
    assert checked.hparams == {"layers": [3]}
    (folder / "submission.yaml").write_text(
        yaml.safe_dump(manifest(method={"name": "ft-m"}, score={"hparams": "preset"}))
    )
    assert check_submission(folder).hparams is None


# --------------------------------------------------------------------------- safety refusals


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pkl", "model.ckpt"])
def test_refuses_pickle_weights(tmp_path, name):
    folder = make_submission(tmp_path)
    (folder / "checkpoint" / name).write_bytes(b"\x80\x04pickle")
    lines = problems(folder)
    assert any(name in p and "pickle-based weight files are refused" in p for p in lines), lines


def test_refuses_code_and_remote_code_configs(tmp_path):
    folder = make_submission(tmp_path)
    (folder / "checkpoint" / "modeling_evil.py").write_text("import os; os.system('rm -rf /')\n")
    (folder / "checkpoint" / "config.json").write_text(
        json.dumps({"model_type": "llama", "auto_map": {"AutoModel": "x.Y"}})
    )
    lines = problems(folder)
    assert any("modeling_evil.py: code files are refused" in p for p in lines), lines
    assert any("config.json: asks for custom code (auto_map)" in p for p in lines), lines


def test_refuses_checkpoint_without_safetensors_or_unknown_files(tmp_path):
    folder = make_submission(tmp_path)
    (folder / "checkpoint" / "model.safetensors").unlink()
    assert any("no .safetensors weights" in p for p in problems(folder))
    (folder / "checkpoint" / "payload.exe").write_bytes(b"MZ")
    assert any("payload.exe: file type not allowed" in p for p in problems(folder))


@pytest.mark.parametrize(
    "path, expected",
    [
        ("../elsewhere", "must not contain '..'"),
        ("checkpoint/../../x", "must not contain '..'"),
        ("/etc", "must be a relative path inside the submission folder"),
        ("~/models", "must be a relative path inside the submission folder"),
        ("C:\\models", "must be a relative path inside the submission folder"),
    ],
)
def test_refuses_paths_leaving_the_folder(tmp_path, path, expected):
    lines = problems(make_submission(tmp_path, score={"checkpoint": path}))
    assert any(expected in p for p in lines), lines


def test_refuses_symlinks_out(tmp_path):
    outside = make_checkpoint(tmp_path / "outside-ckpt")
    folder = make_submission(tmp_path / "subs", checkpoint=False, score={"checkpoint": "checkpoint"})
    os.symlink(outside, folder / "checkpoint")
    assert any("leads out of the submission folder (symlink)" in p for p in problems(folder))
    # a symlinked file inside an otherwise local checkpoint
    (folder / "checkpoint").unlink()
    make_checkpoint(folder / "checkpoint")
    os.symlink(outside / "model.safetensors", folder / "checkpoint" / "extra.safetensors")
    assert any("extra.safetensors: symlink leads out of the submission folder" in p for p in problems(folder))
    # hparams file pointing outside
    (tmp_path / "secret.yaml").write_text("a: 1\n")
    run = make_submission(tmp_path / "subs", slug="run", checkpoint=False, score={"hparams": "hparams.yaml"})
    os.symlink(tmp_path / "secret.yaml", run / "hparams.yaml")
    assert any("leads out of the submission folder" in p for p in problems(run))


def test_refuses_manifest_symlink(tmp_path):
    real = make_submission(tmp_path / "a")
    other = tmp_path / "b" / "entry"
    other.mkdir(parents=True)
    os.symlink(real / "submission.yaml", other / "submission.yaml")
    assert "must be a regular file, not a symlink" in problems(other)[0]


def test_size_caps(tmp_path):
    folder = make_submission(tmp_path)
    small = Limits(manifest=100, small_file=10, weights_file=32)
    assert "over the 100-byte limit" in problems(folder, limits=small)[0]
    with pytest.raises(SubmissionError) as info:
        check_checkpoint_folder(folder / "checkpoint", limits=Limits(small_file=10, weights_file=32))
    text = str(info.value)
    assert re.search(r"model\.safetensors: \d+ bytes, over the 32-byte limit", text)
    assert "config.json" in text and "over the 10-byte limit" in text
    with pytest.raises(SubmissionError, match="files, over the limit of 2"):
        check_checkpoint_folder(folder / "checkpoint", limits=Limits(files=2))


def test_hub_id_refused_offline(tmp_path, monkeypatch):
    from editeval.leaderboard.checks import fetch_hub_checkpoint

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checked = check_submission(make_submission(tmp_path, checkpoint=False, score={"hub": "org/edited-model@main"}))
    with pytest.raises(SubmissionError, match="'org/edited-model@main' is a Hub repo id, and HF_HUB_OFFLINE is set"):
        fetch_hub_checkpoint(checked)


def test_check_files_off_skips_missing_checkpoint(tmp_path):
    folder = make_submission(tmp_path, checkpoint=False)
    assert any("checkpoint folder 'checkpoint' does not exist" in p for p in problems(folder))
    assert check_submission(folder, check_files=False).slug == "my-entry"


# --------------------------------------------------------------------------- template and CLI


@pytest.mark.parametrize("kind", ["checkpoint", "hub", "method", "unedited"])
def test_template_is_valid(tmp_path, kind):
    path = write_template(tmp_path / "new-entry", kind=kind, method="ft-m", fingerprint=False)
    sub = load_submission(path.parent)
    assert sub.score.kind == kind
    assert sub.method.name == "ft-m"
    written = path.read_bytes()
    with pytest.raises(EditevalError) as info:
        write_template(tmp_path / "new-entry", fingerprint=False)
    assert type(info.value) is EditevalError  # not a SubmissionError, nor a TypeError or OSError by accident
    assert str(info.value) == f"{path} exists (pass --force to overwrite)"
    assert path.read_bytes() == written  # left as it was
    write_template(tmp_path / "new-entry", kind=kind, method="rome", fingerprint=False, force=True)
    assert load_submission(path.parent).method.name == "rome"


def test_submit_cli(tmp_path):
    from typer.testing import CliRunner

    from editeval.cli import app

    runner = CliRunner()
    folder = tmp_path / "cli-entry"
    result = runner.invoke(app, ["submit", "new", str(folder), "--kind", "unedited", "--no-fingerprint"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["submit", "check", str(folder)])
    assert result.exit_code == 0, result.output
    assert "ok: cli-entry" in result.output
    (folder / "submission.yaml").write_text(yaml.safe_dump(manifest(title=None, contact=None)))
    result = runner.invoke(app, ["submit", "check", str(folder)])
    assert result.exit_code == 2
    err_lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(err_lines) == 2, result.output


# --------------------------------------------------------------------------- scoring and staleness (tiny models)


def tiny_requests(n: int = 3) -> list[dict]:
    from editeval.data.schema import empty_request

    pairs = [("France", "Rome"), ("Spain", "Oslo"), ("Italy", "Paris"), ("Peru", "Lima")][:n]
    return [
        empty_request(
            case_id=i,
            subject=s,
            prompt=f"The capital of {s} is",
            target_new=t,
            ground_truth="Madrid",
            rephrase_prompts=[f"{s}'s capital city is"],
            locality=[{"kind": "nq", "prompt": "Who wrote Hamlet?", "answer": "William Shakespeare"}],
            portability=[
                {"kind": "one_hop", "prompt": f"The language spoken in {s}'s capital is", "answer": "Italian"}
            ],
        )
        for i, (s, t) in enumerate(pairs)
    ]


@pytest.fixture
def tiny_submission(tmp_path, tiny_llama_dir):
    """A checkpoint submission on a tiny LLaMA: base/ and checkpoint/ (one MLP perturbed) inside."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from editeval.runtime.models import load

    folder = tmp_path / "subs" / "tiny-ckpt"
    folder.mkdir(parents=True)
    shutil.copytree(tiny_llama_dir, folder / "base")
    shutil.copytree(tiny_llama_dir, folder / "checkpoint")
    model = AutoModelForCausalLM.from_pretrained(folder / "base")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.add_(0.05)
    model.save_pretrained(folder / "checkpoint")
    fingerprint = load(folder / "base", device="cpu").fingerprint()
    (folder / "submission.yaml").write_text(
        yaml.safe_dump(manifest(base_model={"name": "base", "fingerprint": fingerprint}, num_edits=3))
    )
    return folder


def _score(folder, requests=None):
    from editeval.leaderboard.submissions import score_submission
    from editeval.runtime.settings import Runtime

    return score_submission(
        folder, runtime=Runtime(device="cpu", progress=False), piqa_items=0, requests=requests or tiny_requests()
    )


def test_score_checkpoint_twice_same_numbers_then_up_to_date(tiny_submission):
    from editeval.evaluation.results import read_rows
    from editeval.leaderboard.submissions import Current, staleness

    first = json.loads(json.dumps(_score(tiny_submission).model_dump(mode="json")["metrics"]))
    results = tiny_submission / "results.json"
    assert results.is_file() and (tiny_submission / "results.rows.parquet").is_file()
    assert not (tiny_submission / ".scoring").exists()
    again = _score(tiny_submission).model_dump(mode="json")
    assert again["metrics"] == first
    meta = again["meta"]
    assert (meta["submission"], meta["mode"], meta["limit"], meta["base_model"]) == (
        "tiny-ckpt",
        "sequential",
        3,
        "base",
    )
    assert meta["base_num_parameters"] > 0
    assert len(read_rows(results)) == 3
    checked = check_submission(tiny_submission)
    assert staleness(checked, Current(requests=tiny_requests())) is None


def test_stale_reasons(tiny_submission, monkeypatch):
    import editeval.evaluation.metrics
    from editeval.leaderboard.submissions import Current, stale_submissions, staleness

    checked = check_submission(tiny_submission)
    assert staleness(checked, Current(requests=tiny_requests())) == "no results.json"
    _score(tiny_submission)
    # the dataset changed (other records under the same benchmark/split)
    changed = tiny_requests()
    changed[0]["target_new"] = "Berlin"
    assert staleness(checked, Current(requests=changed)).startswith("dataset changed")
    # the editeval metric version changed
    monkeypatch.setattr(editeval.evaluation.metrics, "METRIC_VERSION", "999")
    assert staleness(checked, Current(requests=tiny_requests())) == "metric version 1 (now 999)"
    monkeypatch.undo()
    # the submission changed (fewer edits)
    (tiny_submission / "submission.yaml").write_text(
        (tiny_submission / "submission.yaml").read_text().replace("num_edits: 3", "num_edits: 2")
    )
    assert staleness(check_submission(tiny_submission), Current(requests=tiny_requests())).startswith(
        "submission changed"
    )
    (tiny_submission / "submission.yaml").write_text(
        (tiny_submission / "submission.yaml").read_text().replace("num_edits: 2", "num_edits: 3")
    )
    # the base model's weights changed
    import torch
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_submission / "base")
    with torch.no_grad():
        base.model.embed_tokens.weight[0, 0] += 1
    base.save_pretrained(tiny_submission / "base")
    assert staleness(checked, Current(requests=tiny_requests())).startswith("base model changed")
    # an old results schema
    data = json.loads((tiny_submission / "results.json").read_text())
    data["schema_version"] = "0"
    (tiny_submission / "results.json").write_text(json.dumps(data))
    assert staleness(checked, Current(requests=tiny_requests())) == "results schema version '0' (now '1')"
    # stale_submissions lists it, and an invalid folder beside it
    (tiny_submission.parent / "broken").mkdir()
    stale = {p.name: r for p, r in stale_submissions(tiny_submission.parent, current=Current(requests=tiny_requests()))}
    assert stale["tiny-ckpt"].startswith("results schema version")
    assert stale["broken"].startswith("invalid: ") and "no submission.yaml" in stale["broken"]


def test_checkpoint_must_match_declared_base(tiny_submission, tiny_gpt2_dir):
    import shutil

    text = (tiny_submission / "submission.yaml").read_text()
    sub = yaml.safe_load(text)
    good = sub["base_model"]["fingerprint"]
    sub["base_model"]["fingerprint"] = "f" * 16
    (tiny_submission / "submission.yaml").write_text(yaml.safe_dump(sub))
    with pytest.raises(
        SubmissionError, match=f"does not match base model 'base' \\(its weights have fingerprint {good}\\)"
    ):
        _score(tiny_submission)
    (tiny_submission / "submission.yaml").write_text(text)
    shutil.rmtree(tiny_submission / "checkpoint")
    shutil.copytree(tiny_gpt2_dir, tiny_submission / "checkpoint")
    # refused from the headers, before anything is loaded
    with pytest.raises(SubmissionError, match="score.checkpoint: does not fit the base model: tensor 'transformer"):
        _score(tiny_submission)
    assert not (tiny_submission / "results.json").exists()


def test_score_unedited_and_method_run(tmp_path, tiny_llama_dir):
    import shutil

    from editeval.runtime.models import load

    fingerprint = load(tiny_llama_dir, device="cpu").fingerprint()
    unedited = tmp_path / "subs" / "base-entry"
    shutil.copytree(tiny_llama_dir, unedited / "base")
    (unedited / "submission.yaml").write_text(
        yaml.safe_dump(
            manifest(
                mode="single",
                num_edits=3,
                score={"unedited": True},
                base_model={"name": "base", "fingerprint": fingerprint},
            )
        )
    )
    record = _score(unedited)
    assert record.metrics["locality.teacher_forced"].mean == 1.0
    assert record.meta.mode == "single"

    run = tmp_path / "subs" / "ftm-run"
    shutil.copytree(tiny_llama_dir, run / "base")
    (run / "hparams.yaml").write_text("layers: [1]\nnum_steps: 2\nlr: 0.01\n")
    (run / "submission.yaml").write_text(
        yaml.safe_dump(
            manifest(
                mode="single",
                num_edits=2,
                method={"name": "ft-m"},
                score={"hparams": "hparams.yaml"},
                base_model={"name": "base", "fingerprint": fingerprint},
            )
        )
    )
    record = _score(run, tiny_requests(2))
    meta = record.meta
    assert (meta.method, meta.mode, meta.n_edits, meta.submission) == ("ft-m", "single", 2, "ftm-run")
    assert meta.hparams["layers"] == [1] and meta.hparams_hash
    from editeval.leaderboard.submissions import Current, staleness

    assert staleness(check_submission(run), Current(requests=tiny_requests(2))) is None
    (run / "hparams.yaml").write_text("layers: [1]\nnum_steps: 3\nlr: 0.01\n")
    assert staleness(check_submission(run), Current(requests=tiny_requests(2))).startswith("hyper-parameters changed")

    # sequential batches: recorded and checked as declared
    def sequential(batch_size):
        (run / "submission.yaml").write_text(
            yaml.safe_dump(
                manifest(
                    mode="sequential",
                    batch_size=batch_size,
                    num_edits=2,
                    method={"name": "ft-m"},
                    score={"hparams": "hparams.yaml"},
                    base_model={"name": "base", "fingerprint": fingerprint},
                )
            )
        )

    sequential(2)
    assert _score(run, tiny_requests(2)).meta.edit_batch_size == 2
    assert staleness(check_submission(run), Current(requests=tiny_requests(2))) is None
    sequential(None)
    assert staleness(check_submission(run), Current(requests=tiny_requests(2))).startswith("submission changed")


def test_score_all_scores_only_what_is_stale(tiny_submission):
    import shutil

    from editeval.leaderboard.submissions import Current, score_all
    from editeval.runtime.settings import Runtime

    root = tiny_submission.parent
    shutil.copytree(tiny_submission, root / "tiny-two")
    (root / "broken").mkdir()
    (root / "broken" / "submission.yaml").write_text("title: x\n")
    current = Current(requests=tiny_requests())
    lines: list[str] = []
    report = score_all(
        root, runtime=Runtime(device="cpu", progress=False), piqa_items=0, echo=lines.append, current=current
    )
    assert sorted(p.name for p in report.scored) == ["tiny-ckpt", "tiny-two"]
    assert [p.name for p, _ in report.failed] == ["broken"]
    assert any(line.startswith("tiny-two: scoring (no results.json)") for line in lines)
    report = score_all(
        root, runtime=Runtime(device="cpu", progress=False), piqa_items=0, echo=lines.append, current=current
    )
    assert report.scored == [] and sorted(p.name for p in report.up_to_date) == ["tiny-ckpt", "tiny-two"]
