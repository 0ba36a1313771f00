"""Crash consistency and resume edge cases (tiny random models): a run killed with SIGKILL resumes to
the record of a straight run; a progress line cut short; sequential resume of a wrapper method (its
`.partial.artifact`) and of edits applied K at a time; "nothing half-written" for results records,
`paths.atomic_dir` and key-statistics files, by fault injection."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from editeval import cli
from editeval.data.schema import EDIT_REQUEST_FEATURES, empty_request
from editeval.errors import EditevalError
from editeval.evaluation.results import read_record, read_rows
from editeval.methods import base as methods_base
from editeval.methods.base import get_method
from editeval.run.config import EditConfig
from editeval.run.editing import run_edits
from editeval.runtime.models import load
from editeval.runtime.settings import Runtime

FACTS = [
    ("France", "The capital of France is", "Rome"),
    ("Water", "Water boils at a temperature of", "fifty"),
    ("Hamlet", "The play Hamlet was written by", "Dickens"),
    ("Bananas", "Bananas are usually coloured", "blue"),
    ("Tokyo", "Tokyo is a city in", "Peru"),
    ("Mozart", "Mozart was famous for his", "cats"),
    ("Gold", "The chemical symbol of gold is", "Lima"),
    ("Oslo", "Oslo is the capital of", "Berlin"),
]


def _req(i: int) -> dict:
    # neighbourhood prompts turn on CounterFact's probability scores: every row has values of its own,
    # which move with any change of its edit
    subject, prompt, target = FACTS[i]
    return empty_request(
        case_id=i,
        subject=subject,
        prompt=prompt,
        target_new=target,
        ground_truth="Paris",
        rephrase_prompts=[f"In short, {prompt[0].lower()}{prompt[1:]}"],
        locality=[{"kind": "nq", "prompt": "Grass is usually", "answer": "green"}],
        neighborhood_prompts=[f"Someone said that {prompt[0].lower()}{prompt[1:]}"],
    )


REQS = [_req(i) for i in range(len(FACTS))]
FT = {"layers": [1], "num_steps": 4, "lr": 5e-2, "norm_constraint": None}
GRACE = {"layer": 2, "eps": 0.05, "num_steps": 20, "lr": 1.0, "early_stop_loss": 0.0}


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _yaml(path: Path, values: dict) -> str:
    path.write_text(yaml.safe_dump(values))
    return str(path)


QUIET = Runtime(progress=False)


def _opts(tmp_path, name: str, **kw) -> EditConfig:
    base = dict(method="ft-m", model="tiny", generation=False, out=str(tmp_path / f"{name}.json"))
    base.update(kw)
    return EditConfig(**base)


def _counting(monkeypatch, name: str, interrupt_after: int | None = None) -> list[int]:
    """Replace method `name` by itself counting its applies (sizes); with `interrupt_after`, the
    apply after that many raises KeyboardInterrupt (an interruption in the middle of a run)."""
    method = get_method(name)
    calls: list[int] = []

    def apply(model, tokenizer, requests, hparams):
        if interrupt_after is not None and len(calls) >= interrupt_after:
            raise KeyboardInterrupt
        calls.append(len(requests))
        return method.apply(model, tokenizer, requests, hparams)

    monkeypatch.setitem(methods_base.METHODS, name, dataclasses.replace(method, apply=apply))
    return calls


def assert_same_record(got: Path, want: Path) -> None:
    a, b = read_record(got), read_record(want)
    # the metrics of every edit, exactly (the seconds are each run's own)
    pd.testing.assert_frame_equal(read_rows(got, timings=False), read_rows(want, timings=False), check_exact=True)
    assert a.metrics == b.metrics and a.breakdowns == b.breakdowns
    for name in (
        "n_edits",
        "n_skipped",
        "dataset_fingerprint",
        "base_fingerprint",
        "edited_fingerprint",
        "hparams_hash",
    ):
        assert getattr(a.meta, name) == getattr(b.meta, name), name


def _progress_entries(path: Path) -> list[dict]:
    """The complete entries of a progress file (a last line cut short is not one)."""
    entries = []
    for line in path.read_text().splitlines()[1:]:
        try:
            entries.append(json.loads(line))
        except ValueError:
            break
    return entries


# --------------------------------------------------------------------------- a real kill


def _write_benchmark(root: Path, name: str, records: list[dict]) -> None:
    import datasets

    (root / name / "data").mkdir(parents=True)
    datasets.Dataset.from_list(records, features=EDIT_REQUEST_FEATURES).to_parquet(
        root / name / "data" / "edit.parquet"
    )
    (root / name / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: edit\n"
        f"    path: data/edit.parquet\n---\n# {name}\n"
    )


def test_a_killed_edit_run_resumes_to_the_record_of_a_straight_run(tiny_llama_dir, tmp_path, monkeypatch, cache):
    """SIGKILL an `editeval edit` process after some edits (no handler runs, a line may be cut
    short); the rerun does only the edits not saved and writes the straight run's record."""
    import datasets

    _write_benchmark(tmp_path / "datasets", "toy", REQS)
    monkeypatch.setenv("EDITEVAL_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    hp = _yaml(tmp_path / "ft.yaml", {**FT, "num_steps": 20})  # slow enough to be killed before its end

    def args(out):
        return [
            "edit",
            "--method",
            "ft-m",
            "--model",
            str(tiny_llama_dir),
            "--benchmark",
            "toy",
            "--hparams",
            hp,
            "--device",
            "cpu",
            "--no-generation",
            "--no-progress",
            "--threads",
            "1",
            "--out",
            str(out),
        ]

    with pytest.raises(SystemExit) as exc:
        cli.main(args(tmp_path / "straight.json"))
    assert exc.value.code == 0

    out = tmp_path / "run" / "killed.json"
    progress = out.with_name(out.name + ".partial.jsonl")
    child = subprocess.Popen(
        [sys.executable, "-m", "editeval", *args(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if progress.exists() and len(progress.read_text().splitlines()) >= 1 + 2:  # two edits saved
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, "the run ended before it was killed"
    saved = _progress_entries(progress)
    assert 2 <= len(saved) < len(REQS) and not out.exists()

    calls = _counting(monkeypatch, "ft-m")
    with pytest.raises(SystemExit) as exc:
        cli.main(args(out))
    assert exc.value.code == 0
    assert len(calls) == len(REQS) - len(saved)  # the saved edits are not done again
    assert_same_record(out, tmp_path / "straight.json")
    assert sorted(p.name for p in out.parent.iterdir()) == ["killed.json", "killed.rows.parquet"]


# --------------------------------------------------------------------------- progress lines


def test_a_progress_line_cut_short_is_redone_and_later_lines_stay_readable(tiny_llama, tmp_path, monkeypatch, cache):
    """An interruption in the middle of writing a line: the rerun redoes that edit, and the lines it
    appends after the cut-short one are read by the next rerun (the file is rewritten without the
    broken tail); the record is the straight run's."""
    reqs = REQS[:5]
    hp = _yaml(tmp_path / "ft.yaml", FT)
    straight = run_edits(_opts(tmp_path, "straight", hparams_path=hp), QUIET, loaded=tiny_llama, requests=reqs).out
    opts = _opts(tmp_path, "cut", hparams_path=hp)
    progress = tmp_path / "cut.json.partial.jsonl"

    with monkeypatch.context() as m:
        _counting(m, "ft-m", interrupt_after=3)
        with pytest.raises(KeyboardInterrupt):
            run_edits(opts, QUIET, loaded=tiny_llama, requests=reqs)
    text = progress.read_text()
    assert len(text.splitlines()) == 1 + 3
    progress.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])  # edit 2's line cut in half
    assert [e["index"] for e in _progress_entries(progress)] == [0, 1]

    with monkeypatch.context() as m:
        calls = _counting(m, "ft-m", interrupt_after=1)  # redoes edit 2, then is interrupted again
        with pytest.raises(KeyboardInterrupt):
            run_edits(opts, QUIET, loaded=tiny_llama, requests=reqs)
    assert calls == [1]
    assert [e["index"] for e in _progress_entries(progress)] == [0, 1, 2]

    calls = _counting(monkeypatch, "ft-m")
    summary = run_edits(opts, QUIET, loaded=tiny_llama, requests=reqs)
    assert calls == [1, 1]  # edits 3 and 4 only
    assert_same_record(summary.out, straight)
    assert not list(tmp_path.glob("cut.json.partial*"))


# --------------------------------------------------------------------------- sequential resume


def _codebook(model):
    from editeval.methods.kit import artifacts

    book = artifacts.find_addition(model, "grace_codebook")
    return book.keys, book.values, book.eps, book.labels


def test_sequential_resume_of_a_wrapper_method_equals_a_straight_run(tiny_llama_dir, tmp_path, monkeypatch, cache):
    """GRACE adds a codebook, not weights: an interrupted sequential run saves it as
    `<out>.partial.artifact` beside the weights file; a new process resumes on the base model plus
    them and ends with the straight run's codebook and record."""
    reqs = REQS[:4]
    hp = _yaml(tmp_path / "grace.yaml", GRACE)
    straight_lm = load(tiny_llama_dir, device="cpu")
    straight = run_edits(
        _opts(tmp_path, "straight", method="grace", mode="sequential", hparams_path=hp),
        QUIET,
        loaded=straight_lm,
        requests=reqs,
    ).out
    opts = _opts(tmp_path, "resumed", method="grace", mode="sequential", hparams_path=hp)
    with monkeypatch.context() as m:
        _counting(m, "grace", interrupt_after=2)
        with pytest.raises(KeyboardInterrupt):
            run_edits(opts, QUIET, loaded=load(tiny_llama_dir, device="cpu"), requests=reqs)
    assert (tmp_path / "resumed.json.partial.artifact" / "editeval_artifact.json").is_file()
    assert (tmp_path / "resumed.json.partial.safetensors").is_file()

    fresh = load(tiny_llama_dir, device="cpu")  # a new process: the base model
    calls = _counting(monkeypatch, "grace")
    summary = run_edits(opts, QUIET, loaded=fresh, requests=reqs)
    assert calls == [1, 1]
    for got, want in zip(_codebook(fresh.model), _codebook(straight_lm.model)):
        assert got == want if isinstance(want, list) else torch.equal(got, want)
    assert_same_record(summary.out, straight)
    assert not list(tmp_path.glob("resumed.json.partial*"))


def test_a_wrapper_artifact_ahead_of_the_weights_file_is_refused(tiny_llama_dir, tmp_path, monkeypatch, cache):
    """Interrupted while saving (the codebook of edits 0-1 written, the weights file still of edit 0):
    the rerun refuses with the "does not match" line instead of resuming on a state it cannot trust."""
    from editeval.run import editing

    reqs = REQS[:3]
    hp = _yaml(tmp_path / "grace.yaml", GRACE)
    opts = _opts(tmp_path, "torn", method="grace", mode="sequential", hparams_path=hp)
    write_state = editing.Partial._write_state
    writes = []

    def torn(self, model, names, metadata, extra=None):
        writes.append(metadata)
        if len(writes) == 2:  # after the second step's artifact, before its weights file
            raise KeyboardInterrupt
        return write_state(self, model, names, metadata, extra)

    with monkeypatch.context() as m:
        m.setattr(editing.Partial, "_write_state", torn)
        with pytest.raises(KeyboardInterrupt):
            run_edits(opts, QUIET, loaded=load(tiny_llama_dir, device="cpu"), requests=reqs)
    artifact = tmp_path / "torn.json.partial.artifact"
    with pytest.raises(
        EditevalError,
        match=f"{artifact} does not match .*torn.json.partial.safetensors "
        r"\(interrupted while saving\): delete both",
    ):
        run_edits(opts, QUIET, loaded=load(tiny_llama_dir, device="cpu"), requests=reqs)
    assert not (tmp_path / "torn.json").exists()


def test_sequential_k_at_a_time_resumes_to_the_straight_model(tiny_llama_dir, tmp_path, monkeypatch, cache):
    """`--mode sequential --batch-size 2`: interrupted after the first batch was saved, and again after
    the second batch's progress lines but before its weights (the weights file says what is applied:
    those lines are dropped and the batch redone); the model and record end as a straight run's."""
    from editeval.run import editing

    reqs = REQS[:5]
    hp = _yaml(tmp_path / "ft.yaml", FT)
    straight_lm = load(tiny_llama_dir, device="cpu")
    straight = run_edits(
        _opts(tmp_path, "straight", mode="sequential", edit_batch_size=2, hparams_path=hp),
        QUIET,
        loaded=straight_lm,
        requests=reqs,
    ).out
    opts = _opts(tmp_path, "k", mode="sequential", edit_batch_size=2, hparams_path=hp)

    with monkeypatch.context() as m:
        _counting(m, "ft-m", interrupt_after=1)
        with pytest.raises(KeyboardInterrupt):
            run_edits(opts, QUIET, loaded=load(tiny_llama_dir, device="cpu"), requests=reqs)
    with monkeypatch.context() as m:
        calls = _counting(m, "ft-m")
        m.setattr(editing.Partial, "save_state", lambda self, model, names: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            run_edits(opts, QUIET, loaded=load(tiny_llama_dir, device="cpu"), requests=reqs)
    assert calls == [2]  # edits 2-3 applied, their lines written, the weights not saved
    assert [e["index"] for e in _progress_entries(tmp_path / "k.json.partial.jsonl")] == [0, 1, 2, 3]

    fresh = load(tiny_llama_dir, device="cpu")
    calls = _counting(monkeypatch, "ft-m")
    summary = run_edits(opts, QUIET, loaded=fresh, requests=reqs)
    assert calls == [2, 1]  # edits 2-3 again, then 4
    assert fresh.fingerprint() == straight_lm.fingerprint() == read_record(summary.out).meta.edited_fingerprint
    assert_same_record(summary.out, straight)


def test_sequential_alphaedit_resumes_with_the_earlier_keys(tiny_llama_dir, tmp_path, monkeypatch, cache, small_raw):
    """AlphaEdit carries the keys of earlier batches from edit to edit (`kit/edit_state`): a run
    interrupted after its first batch reloads them with the weights, and ends with a straight run's
    model and record (without them the second batch would solve another system)."""
    monkeypatch.setenv("EDITEVAL_RAW_DATA", str(small_raw))
    alpha = {"layers": [1, 2], "mom2_tokens": 500, "mom2_max_len": 64, "v_num_grad_steps": 3, "l2": 1e-4}
    hp = _yaml(tmp_path / "alpha.yaml", {**alpha, "context_long": 1})
    reqs = REQS[:4]
    straight_lm = load(tiny_llama_dir, device="cpu")
    kw = dict(method="alphaedit", mode="sequential", edit_batch_size=2, hparams_path=hp)
    straight = run_edits(_opts(tmp_path, "straight", **kw), QUIET, loaded=straight_lm, requests=reqs).out
    opts = _opts(tmp_path, "k", **kw)
    with monkeypatch.context() as m:
        _counting(m, "alphaedit", interrupt_after=1)
        with pytest.raises(KeyboardInterrupt):
            run_edits(opts, QUIET, loaded=load(tiny_llama_dir, device="cpu"), requests=reqs)
    fresh = load(tiny_llama_dir, device="cpu")
    calls = _counting(monkeypatch, "alphaedit")
    summary = run_edits(opts, QUIET, loaded=fresh, requests=reqs)
    assert calls == [2]
    assert fresh.fingerprint() == straight_lm.fingerprint() == read_record(summary.out).meta.edited_fingerprint
    assert_same_record(summary.out, straight)


# --------------------------------------------------------------------------- nothing half-written


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_rescore_keeps_the_previous_results(tiny_llama_dir, tmp_path, monkeypatch, cache):
    """A submission scored once, then re-scored with the rows' or the record's write failing: its
    `results.json` and rows stay byte for byte, and nothing but the (resumable) staging folder is added."""
    import shutil

    from editeval.leaderboard.submissions import score_submission
    from editeval.runtime.models import load as load_model

    folder = tmp_path / "subs" / "base-entry"
    shutil.copytree(tiny_llama_dir, folder / "base")
    fingerprint = load_model(tiny_llama_dir, device="cpu").fingerprint()
    (folder / "submission.yaml").write_text(
        yaml.safe_dump(
            {
                "schema_version": 1,
                "title": "Unedited",
                "authors": ["Ada Lovelace"],
                "contact": "ada@example.org",
                "method": {"name": "ft-m", "link": "https://example.org"},
                "base_model": {"name": "base", "fingerprint": fingerprint},
                "benchmark": {"name": "toy", "split": "edit"},
                "mode": "single",
                "num_edits": 3,
                "score": {"unedited": True},
            }
        )
    )

    def score(requests):
        return score_submission(folder, runtime=Runtime(device="cpu", progress=False), piqa_items=0, requests=requests)

    score(REQS[:3])
    before = _files(folder)
    assert {"results.json", "results.rows.parquet"} <= set(before)

    def failing_parquet(self, path, *args, **kwargs):
        Path(path).write_bytes(b"PAR1 half")
        raise OSError(28, "No space left on device")

    def failing_json(self, *args, **kwargs):
        if self.name.startswith(".results.json."):
            Path.write_bytes(self, b'{"half": ')
            raise OSError(28, "No space left on device")
        return write_text(self, *args, **kwargs)

    write_text = Path.write_text
    for target, fault in ((pd.DataFrame, ("to_parquet", failing_parquet)), (Path, ("write_text", failing_json))):
        with monkeypatch.context() as m:
            m.setattr(target, *fault)
            with pytest.raises(OSError, match="No space left"):
                score(REQS[3:6])  # other requests: other rows, had they been written
        after = _files(folder)
        assert {k: v for k, v in after.items() if not k.startswith(".scoring/")} == before, fault[0]
        assert not any(Path(k).name.startswith(".") for k in after), sorted(after)  # no temp file anywhere
    assert score(REQS[3:6]).meta.n_edits == 3  # the staging left behind does not stand in the way


def test_atomic_dir_restores_the_previous_folder(tmp_path, monkeypatch):
    from editeval.runtime.paths import atomic_dir

    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "weights.bin").write_bytes(b"old weights")
    before = _files(tmp_path)

    with pytest.raises(RuntimeError, match="conversion failed"), atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"half")
        raise RuntimeError("conversion failed")
    assert _files(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["ckpt"]

    replace = os.replace

    def failing_swap(src, dst):  # the old folder is moved aside, then putting the new one in place fails
        if Path(src).name.startswith(".ckpt-"):
            raise OSError(16, "Device or resource busy")
        return replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", failing_swap)
        with pytest.raises(OSError, match="busy"), atomic_dir(target) as tmp:
            (tmp / "weights.bin").write_bytes(b"new weights")
    assert _files(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["ckpt"]

    with atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"new weights")
    assert _files(tmp_path) == {"ckpt/weights.bin": b"new weights"} and sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_key_statistics_files_are_replaced_whole_or_not_at_all(tiny_llama, tmp_path, monkeypatch, cache):
    """A statistics file rewritten (`refresh`) with the write failing half-way, or the rename failing:
    the previous file stays byte for byte and no temp file is left."""
    import safetensors.torch

    from editeval.methods.kit.key_stats import cache_paths, second_moments

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"text": f"Article {k}: " + "the river runs north of the old city " * 8}) + "\n"
            for k in range(8)
        )
    )
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    kw = dict(tokens=300, max_len=64, corpus=corpus, progress=False)
    first = second_moments(model, tok, [1], **kw)[1]
    path = cache_paths(model, [1], tokens=300, max_len=64, corpus=corpus)[1]
    before = path.read_bytes()
    save_file, replace = safetensors.torch.save_file, os.replace

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    def failing_rename(src, dst):
        if Path(dst) == path:
            raise OSError(5, "Input/output error")
        return replace(src, dst)

    for module, name, fault in ((safetensors.torch, "save_file", half_written), (os, "replace", failing_rename)):
        with monkeypatch.context() as m:
            m.setattr(module, name, fault)
            with pytest.raises(OSError):
                second_moments(model, tok, [1], refresh=True, **kw)
        assert path.read_bytes() == before, name
        assert sorted(p.name for p in path.parent.iterdir()) == [path.name], name
    assert torch.equal(second_moments(model, tok, [1], **kw)[1], first)  # still read back as it was
    assert save_file is safetensors.torch.save_file
