"""The edit driver: modes, skipped requests, resume, refusals, checkpoints (tiny random models)."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch
import yaml

from editeval import cli
from editeval.data.schema import empty_request
from editeval.errors import EditevalError
from editeval.evaluation.results import EDIT_SECONDS, EVALUATE_SECONDS, read_record, read_rows
from editeval.methods import base as methods_base
from editeval.methods.base import (
    HParams,
    available_methods,
    backup_parameters,
    get_method,
    register_method,
)
from editeval.methods.kit.key_stats_files import model_fingerprint
from editeval.run.config import EditConfig
from editeval.run.editing import run_edits
from editeval.runtime.models import load
from editeval.runtime.settings import Runtime


class NudgeHParams(HParams):
    amount: float = 0.01


CALLS: list[int] = []


def _nudge(model, tokenizer, requests, hparams):
    """A stand-in method: adds `amount` per request to one weight (records its calls)."""
    if any(r["target_new"] == "bad" for r in requests):
        raise EditevalError("refused: bad")
    CALLS.append(len(requests))
    name = "model.layers.0.mlp.down_proj.weight"
    backup = backup_parameters(model, [name])
    with torch.no_grad():
        model.get_parameter(name).add_(hparams.amount * len(requests))
    return backup


@pytest.fixture(autouse=True, scope="module")
def _nudge_method():
    """`test-nudge` exists only while this module's tests run (not from collection on), so the method
    list other modules see (submission template, unknown-method message) never names it."""
    assert "test-nudge" not in available_methods()
    register_method("test-nudge", hparams=NudgeHParams, batch=True, sequential=True, needs_subject=True)(_nudge)
    yield
    del methods_base.METHODS["test-nudge"]


def _req(i, **kw):
    fields = dict(
        case_id=i,
        subject=f"Thing{i}",
        prompt=f"The colour of Thing{i} is",
        target_new="green",
        ground_truth="red",
        rephrase_prompts=[f"Thing{i} has the colour"],
        locality=[{"kind": "nq", "prompt": "The sky is", "answer": "blue"}],
    )
    fields.update(kw)
    return empty_request(**fields)


@pytest.fixture()
def tiny(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path / "cache"))
    lm = load(tiny_llama_dir, device="cpu")
    lm.name = str(tiny_llama_dir)
    return lm


@pytest.fixture()
def ft_yaml(tmp_path):
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump({"layers": [1], "num_steps": 3, "lr": 1e-2, "norm_constraint": None}))
    return str(path)


def _opts(tmp_path, **kw):
    base = dict(
        method="ft-m", model="tiny", generation=False, eval_batch_size=8, out=str(tmp_path / "out" / "run.json")
    )
    base.update(kw)
    if base["method"] == "test-nudge" and "hparams_path" not in kw:
        path = tmp_path / "nudge.yaml"
        path.write_text("amount: 0.01\n")
        base["hparams_path"] = str(path)
    return EditConfig(**base)


QUIET = Runtime(progress=False)


def test_single_mode_evaluates_each_edit_skips_bad_requests_and_restores(tiny, tmp_path, ft_yaml):
    fp = tiny.fingerprint()
    reqs = [_req(0), _req(1, target_new=""), _req(2), _req(3, target_new="   ")]
    summary = run_edits(_opts(tmp_path, hparams_path=ft_yaml), QUIET, loaded=tiny, requests=reqs)
    assert tiny.fingerprint() == fp  # every edit undone
    assert summary.n_edited == 2 and len(summary.skipped) == 2
    record = read_record(summary.out)
    meta = record.meta
    assert (meta.method, meta.mode, meta.n_edits, meta.n_skipped) == ("ft-m", "single", 2, 2)
    assert meta.hparams["layers"] == [1] and len(meta.hparams_hash) == 16
    assert meta.seconds_per_edit > 0 and meta.peak_rss_mb > 0
    assert list(read_rows(summary.out)["case_id"]) == [0, 2]
    assert not list((tmp_path / "out").glob("*.partial*"))


def test_rows_keep_each_edits_seconds_and_the_record_summarises_them(tiny, tmp_path, ft_yaml):
    reqs = [_req(i) for i in range(3)]
    summary = run_edits(_opts(tmp_path, hparams_path=ft_yaml), QUIET, loaded=tiny, requests=reqs)
    rows, meta = read_rows(summary.out), read_record(summary.out).meta
    edit, evaluate = list(rows[EDIT_SECONDS]), list(rows[EVALUATE_SECONDS])
    assert all(s > 0 for s in edit + evaluate)
    assert meta.timings == {
        "edit": {"mean": pytest.approx(sum(edit) / 3), "median": sorted(edit)[1], "first": edit[0]},
        "evaluate": {"mean": pytest.approx(sum(evaluate) / 3), "median": sorted(evaluate)[1], "first": evaluate[0]},
    }
    assert meta.seconds_per_edit == pytest.approx(meta.timings["edit"]["mean"])
    assert not any(name.startswith("seconds.") for name in read_record(summary.out).metrics)  # not metrics


def test_batch_mode_skips_a_request_whose_subject_is_not_in_its_prompt(tiny, tmp_path):
    fp = tiny.fingerprint()
    reqs = [_req(0), _req(1, subject="Nowhere"), _req(2), _req(3)]
    CALLS.clear()
    summary = run_edits(
        _opts(tmp_path, method="test-nudge", mode="batch", edit_batch_size=2),
        QUIET,
        loaded=tiny,
        requests=reqs,
        dataset_fingerprint="x",
    )
    assert CALLS == [2, 1]  # requests 0, 2 then 3
    assert [s["index"] for s in summary.skipped] == [1] and "does not occur" in summary.skipped[0]["reason"]
    assert read_record(summary.out).meta.edit_batch_size == 2
    assert tiny.fingerprint() == fp


def test_sequential_mode_accumulates_and_saves_a_loadable_checkpoint(tiny, tmp_path, tiny_llama_dir):
    """...and scoring that checkpoint (the pipeline's other mode) with the same evaluation settings
    gives the same rows, columns and meta keys as the edit run took on its final model."""
    from editeval.run.scoring import score_checkpoint

    reqs = [_req(i, generation_prompts=[f"Thing{i} looks"]) for i in range(3)]
    ckpt = tmp_path / "edited"
    opts = _opts(
        tmp_path,
        method="test-nudge",
        mode="sequential",
        eval_every_edit=True,
        save_checkpoint=str(ckpt),
        generation=True,
        fluency=True,
        wild=True,
    )
    summary = run_edits(
        opts,
        QUIET,
        loaded=tiny,
        requests=reqs,
    )
    w = tiny.model.get_parameter("model.layers.0.mlp.down_proj.weight")
    original = load(tiny_llama_dir, device="cpu").model.get_parameter("model.layers.0.mlp.down_proj.weight")
    assert torch.allclose(w, original + 0.03)  # three edits accumulated
    record = read_record(summary.out)
    assert record.meta.mode == "sequential" and record.meta.edited_model == str(ckpt)
    assert summary.after_each is not None and read_record(summary.after_each).meta.n_edits == 3
    reloaded = load(ckpt, device="cpu")
    assert reloaded.fingerprint() == record.meta.edited_fingerprint == tiny.fingerprint()
    scored, rows, _ = score_checkpoint(
        str(ckpt),
        base=str(tiny_llama_dir),
        requests=reqs,
        generation=True,
        fluency=True,
        wild=True,
        batch_size=opts.eval_batch_size,
        piqa_items=0,
        runtime=QUIET,
        out=tmp_path / "score.json",
    )
    assert len(rows) == 3 and scored.meta.edited_fingerprint == record.meta.edited_fingerprint
    assert {"fluency.ngram_entropy", "reliability.generation", "locality.wild"} <= set(rows[0])
    edited_rows = read_rows(summary.out)
    assert (edited_rows[EDIT_SECONDS] > 0).all() and (edited_rows[EVALUATE_SECONDS] > 0).all()
    # the evaluation pass over the final model is shared: each edit gets the same share of it
    assert edited_rows[EVALUATE_SECONDS].nunique() == 1
    metrics_only = edited_rows.drop(columns=[EDIT_SECONDS, EVALUATE_SECONDS])
    pd.testing.assert_frame_equal(metrics_only, pd.DataFrame(rows), check_exact=True)
    # both writers record the same metadata keys, and the dtype in one form (of the evaluated weights)
    edit_meta = json.loads(summary.out.read_text())["meta"]
    score_meta = json.loads((tmp_path / "score.json").read_text())["meta"]
    assert list(edit_meta) == list(score_meta) and edit_meta["dtype"] == score_meta["dtype"] == "float32"


def test_sequential_curve_points_are_the_metrics_of_the_edits_so_far(tiny, tmp_path, tiny_llama_dir):
    """--curve-every 2 over 5 edits (2 at a time): points after 2 and 4 edits, each over an evenly
    spaced sample of the edits made so far (edits 0 and 3 of 4); the point after 2 edits is what a
    run of those 2 edits alone records on its final model."""
    reqs = [_req(i, locality=[{"kind": "nq", "prompt": f"Thing{i} is near", "answer": "blue"}]) for i in range(5)]
    strong = tmp_path / "strong.yaml"
    strong.write_text("amount: 0.03\n")  # nudges that move the model's answers
    seq = dict(method="test-nudge", mode="sequential", edit_batch_size=2, hparams_path=str(strong))
    opts = _opts(tmp_path, curve_every=2, curve_sample=2, **seq)
    record = read_record(run_edits(opts, QUIET, loaded=tiny, requests=reqs).out)
    curve = record.meta.curve
    assert [(p["edits"], p["evaluated"]) for p in curve] == [(2, 2), (4, 2)]
    assert set(curve[0]["metrics"]) == set(record.metrics)
    fresh = load(tiny_llama_dir, device="cpu")
    fresh.name = tiny.name
    two = run_edits(_opts(tmp_path, out=str(tmp_path / "two.json"), **seq), QUIET, loaded=fresh, requests=reqs[:2])
    first_two = read_record(two.out)
    for column, summary in first_two.metrics.items():
        assert curve[0]["metrics"][column] == pytest.approx(summary.mean, abs=1e-12), column


def test_curve_is_refused_outside_sequential_mode(tiny, tmp_path):
    with pytest.raises(EditevalError, match="--curve-every applies to --mode sequential"):
        run_edits(_opts(tmp_path, curve_every=2), QUIET, loaded=tiny, requests=[_req(0)])
    assert not (tmp_path / "out").exists()


def test_run_metadata_refuses_unknown_keys():
    from pydantic import ValidationError

    from editeval.evaluation.results import RunMetadata

    RunMetadata(editeval_version="0", submission="an-entry", submission_kind="method", n_skipped=0)
    with pytest.raises(ValidationError, match="dtpye"):
        RunMetadata(editeval_version="0", dtpye="float32")


def test_batch_mode_skips_a_request_the_method_rejects(tiny, tmp_path):
    reqs = [_req(0), _req(1, target_new="bad"), _req(2)]
    CALLS.clear()
    summary = run_edits(_opts(tmp_path, method="test-nudge", mode="batch"), QUIET, loaded=tiny, requests=reqs)
    assert [s["reason"] for s in summary.skipped] == ["refused: bad"]
    assert summary.n_edited == 2 and CALLS[-1] == 2


def test_batch_mode_checkpoint_holds_the_one_batch(tiny, tmp_path, tiny_llama_dir):
    reqs = [_req(i) for i in range(3)]
    CALLS.clear()
    summary = run_edits(
        _opts(tmp_path, method="test-nudge", mode="batch", save_checkpoint=str(tmp_path / "ck")),
        QUIET,
        loaded=tiny,
        requests=reqs,
    )
    assert CALLS == [3]  # applied once, kept for the checkpoint
    original = load(tiny_llama_dir, device="cpu").model.get_parameter("model.layers.0.mlp.down_proj.weight")
    saved = load(tmp_path / "ck", device="cpu")
    assert torch.allclose(saved.model.get_parameter("model.layers.0.mlp.down_proj.weight"), original + 0.03)
    assert read_record(summary.out).meta.edited_fingerprint == saved.fingerprint()
    with pytest.raises(EditevalError, match="one batch holding every edit"):
        run_edits(
            _opts(
                tmp_path, method="test-nudge", mode="batch", edit_batch_size=2, save_checkpoint=str(tmp_path / "ck2")
            ),
            QUIET,
            loaded=tiny,
            requests=reqs,
        )


# GRACE memorising a one-token target on the tiny LLaMA; its prompts' keys lie 0.14-0.25 apart there, so a
# radius of 0.05 keeps each key to its own prompt
GRACE_TINY = {"layer": 2, "eps": 0.05, "num_steps": 40, "lr": 1.0, "early_stop_loss": 0.0}
FACTS = [
    ("France", "The capital of France is", "Rome"),
    ("Water", "Water boils at a temperature of", "fifty"),
    ("Hamlet", "The play Hamlet was written by", "Dickens"),
    ("Bananas", "Bananas are usually coloured", "blue"),
]


def _driver_requests():
    """Request i carries, besides an unrelated locality prompt, its own edit prompt as a locality prompt
    ("self": the edited model's answer there is the target, so agreement with the *base* model is the
    base's reliability, while agreement with the edited model itself would be 1.0) and edit i-1's prompt
    and target as a portability question ("prev": 1.0 only if edit i-1 is applied while row i is taken)."""
    reqs = []
    for i, (subject, prompt, target) in enumerate(FACTS):
        _, prev_prompt, prev_target = FACTS[i - 1]
        reqs.append(
            empty_request(
                case_id=10 + i,
                subject=subject,
                prompt=prompt,
                target_new=target,
                ground_truth="x",
                rephrase_prompts=[prompt.replace("The ", "the ", 1) + ","],
                locality=[
                    {"kind": "nq", "prompt": "Grass is usually", "answer": "green"},
                    {"kind": "self", "prompt": prompt, "answer": target},
                ],
                portability=[{"kind": "prev", "prompt": prev_prompt, "answer": prev_target}],
            )
        )
    return reqs


@pytest.mark.parametrize("mode, k", [("single", None), ("batch", 2)])
def test_driver_rows_are_taken_on_the_model_carrying_their_own_edit(tiny, tmp_path, mode, k):
    """Each row is measured with its edit applied (reliability 1.0 where the base model has < 1.0),
    locality against the untouched base, and without the edits of other rows (single) or of
    other batches (batch: the batch's other edit shows, the previous batch's does not)."""
    from editeval.evaluation.evaluator import Evaluator
    from editeval.methods.kit import artifacts

    reqs = _driver_requests()
    fp = tiny.fingerprint()
    base = Evaluator(tiny, reqs, generation=False, progress=False, use_cache=False).evaluate(tiny.model)
    hp = tmp_path / "grace.yaml"
    hp.write_text(yaml.safe_dump(GRACE_TINY))
    summary = run_edits(
        _opts(tmp_path, method="grace", mode=mode, edit_batch_size=k, hparams_path=str(hp)),
        QUIET,
        loaded=tiny,
        requests=reqs,
    )
    rows = read_rows(summary.out).to_dict("records")
    assert [r["case_id"] for r in rows] == [10, 11, 12, 13]
    for i, (row, before) in enumerate(zip(rows, base)):
        assert before["reliability.teacher_forced"] < 1.0 and row["reliability.teacher_forced"] == 1.0, (i, row)
        # against the base: where the edit changed the answer, agreement is the base's own accuracy
        assert row["locality.self.teacher_forced"] == before["reliability.teacher_forced"] < 1.0
        assert row["locality.nq.teacher_forced"] == 1.0
        assert before["portability.prev.teacher_forced"] < 1.0
        same_batch = mode == "batch" and i % k == 1  # edit i-1 is applied together with edit i
        expected = 1.0 if same_batch else before["portability.prev.teacher_forced"]
        assert row["portability.prev.teacher_forced"] == expected, (i, row)
    assert tiny.fingerprint() == fp and artifacts.additions(tiny.model) == []  # every edit undone


def _interrupting(monkeypatch, name, after):
    method = get_method(name)
    calls = {"n": 0}

    def apply(model, tok, requests, hparams):
        calls["n"] += 1
        if calls["n"] > after:
            raise KeyboardInterrupt
        return method.apply(model, tok, requests, hparams)

    monkeypatch.setitem(methods_base.METHODS, name, dataclasses.replace(method, apply=apply))
    return calls


def test_single_mode_resumes_where_it_stopped(tiny, tmp_path, monkeypatch):
    reqs = [_req(i) for i in range(4)]
    opts = _opts(tmp_path, method="test-nudge")
    _interrupting(monkeypatch, "test-nudge", after=2)
    with pytest.raises(KeyboardInterrupt):
        run_edits(opts, QUIET, loaded=tiny, requests=reqs)
    partial = tmp_path / "out" / "run.json.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 3  # header + 2 edits
    monkeypatch.undo()
    CALLS.clear()
    summary = run_edits(opts, QUIET, loaded=tiny, requests=reqs)
    assert CALLS == [1, 1]  # only the two edits not done
    assert list(read_rows(summary.out)["case_id"]) == [0, 1, 2, 3]
    assert not partial.exists()


def test_single_mode_progress_carries_over_to_another_limit(tiny, tmp_path, monkeypatch):
    """Single-mode edits are independent, so a run with a larger --limit reuses a smaller one's rows."""
    reqs = [_req(i) for i in range(4)]
    opts = _opts(tmp_path, method="test-nudge")
    _interrupting(monkeypatch, "test-nudge", after=2)
    with pytest.raises(KeyboardInterrupt):
        run_edits(opts, QUIET, loaded=tiny, requests=reqs[:3])
    monkeypatch.undo()
    CALLS.clear()
    summary = run_edits(opts, QUIET, loaded=tiny, requests=reqs)
    assert CALLS == [1, 1]
    assert list(read_rows(summary.out)["case_id"]) == [0, 1, 2, 3]


def test_a_finished_single_record_is_extended_by_a_larger_limit(tiny, tmp_path, tiny_llama_dir):
    """`--limit 4` after a finished `--limit 3` run edits only the fourth request; the first three
    rows are the finished record's. Another hyper-parameter file starts afresh."""
    reqs = [_req(i) for i in range(3)] + [_req(3, target_new="bad")] + [_req(4)]
    opts = _opts(tmp_path, method="test-nudge")
    first = read_rows(run_edits(opts, QUIET, loaded=tiny, requests=reqs[:3]).out)
    CALLS.clear()
    summary = run_edits(opts, QUIET, loaded=tiny, requests=reqs)
    assert CALLS == [1]  # request 3 is refused by the method, 4 is edited; 0-2 carried over
    rows = read_rows(summary.out)
    assert list(rows["case_id"]) == [0, 1, 2, 4]
    assert rows.iloc[:3].equals(first)
    assert [s["index"] for s in read_record(summary.out).meta.skipped] == [3]
    assert read_record(summary.out).meta.base_num_parameters == sum(p.numel() for p in tiny.model.parameters())
    assert not list(summary.out.parent.glob("*.partial*"))
    CALLS.clear()
    again = run_edits(opts, QUIET, loaded=tiny, requests=reqs)  # the same command again: nothing to edit
    assert CALLS == [] and read_rows(again.out).equals(rows)
    hp = tmp_path / "nudge.yaml"
    hp.write_text("amount: 0.02\n")
    run_edits(opts.model_copy(update={"hparams_path": str(hp)}), QUIET, loaded=tiny, requests=reqs + [_req(5)])
    assert CALLS == [1, 1, 1, 1, 1]  # the record's hyper-parameters differ: every edit is done


def test_sequential_resume_gives_the_same_model(tiny, tmp_path, monkeypatch, tiny_llama_dir, ft_yaml):
    reqs = [_req(i) for i in range(3)]
    straight = load(tiny_llama_dir, device="cpu")
    base_fp = straight.fingerprint()
    run_edits(
        _opts(tmp_path, mode="sequential", hparams_path=ft_yaml, out=str(tmp_path / "a.json")),
        QUIET,
        loaded=straight,
        requests=reqs,
    )
    opts = _opts(tmp_path, mode="sequential", hparams_path=ft_yaml, out=str(tmp_path / "b.json"))
    _interrupting(monkeypatch, "ft-m", after=2)
    with pytest.raises(KeyboardInterrupt):
        run_edits(opts, QUIET, loaded=tiny, requests=reqs)
    monkeypatch.undo()
    fresh = load(tiny_llama_dir, device="cpu")  # a new process: base weights + saved state
    summary = run_edits(opts, QUIET, loaded=fresh, requests=reqs)
    assert fresh.fingerprint() == straight.fingerprint()
    assert read_record(summary.out).meta.edited_fingerprint == straight.fingerprint()
    assert model_fingerprint(fresh.model) == base_fp  # key statistics: the base model's, not the saved state's


@pytest.mark.parametrize("long_edit", [True, False])
def test_an_interrupted_batch_evaluation_resumes(tiny, tmp_path, monkeypatch, tiny_llama_dir, long_edit):
    """A batch's rows are saved as they are evaluated, and a batch whose edit took long is saved
    applied: a rerun loads the saved weights (no second edit), evaluates only the rest, and writes
    the record an uninterrupted run writes, with the edit's seconds of the first run. A quick
    batch is edited again, whole (its remaining rows are taken on the model the whole batch edits)."""
    from safetensors import safe_open

    from editeval.evaluation.evaluator import Evaluator
    from editeval.run import modes

    reqs = [_req(i) for i in range(5)]
    straight = run_edits(
        _opts(tmp_path, method="test-nudge", mode="batch", out=str(tmp_path / "a.json")),
        QUIET,
        loaded=tiny,
        requests=reqs,
    )
    base_fp = tiny.fingerprint()
    monkeypatch.setattr(modes, "SAVE_BATCH_AFTER_S", 0.0 if long_edit else 1e9)
    monkeypatch.setattr(modes, "EVAL_CHUNK", 2)
    evaluate = Evaluator.evaluate
    calls = {"n": 0}

    def interrupted(self, model, indices=None):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return evaluate(self, model, indices)

    monkeypatch.setattr(Evaluator, "evaluate", interrupted)
    opts = _opts(tmp_path, method="test-nudge", mode="batch", out=str(tmp_path / "b.json"))
    CALLS.clear()
    with pytest.raises(KeyboardInterrupt):
        run_edits(opts, QUIET, loaded=tiny, requests=reqs)
    assert CALLS == [5]
    assert len((tmp_path / "b.json.partial.jsonl").read_text().splitlines()) == 1 + 2  # header + first chunk
    state = tmp_path / "b.json.partial.safetensors"
    assert state.exists() == long_edit
    if long_edit:
        with safe_open(str(state), framework="pt") as fh:
            saved = fh.metadata()
        assert json.loads(saved["batch"]) == [0, 1, 2, 3, 4]
    monkeypatch.setattr(Evaluator, "evaluate", evaluate)
    fresh = load(tiny_llama_dir, device="cpu")  # a new process
    CALLS.clear()
    summary = run_edits(opts, QUIET, loaded=fresh, requests=reqs)
    assert CALLS == ([] if long_edit else [5])  # from the saved state, or the whole batch again
    assert read_rows(summary.out, timings=False).equals(read_rows(straight.out, timings=False))
    if long_edit:
        assert read_record(summary.out).meta.edit_seconds_total == round(float(saved["seconds"]), 3)
    assert fresh.fingerprint() == base_fp  # undone after the evaluation, as usual
    assert not list(tmp_path.glob("b.json.partial*"))


def test_a_partial_file_of_another_run_is_refused(tiny, tmp_path):
    out = tmp_path / "out" / "run.json"
    out.parent.mkdir()
    out.with_name("run.json.partial.jsonl").write_text(json.dumps({"header": {"method": "rome"}}) + "\n")
    with pytest.raises(EditevalError, match="different run"):
        run_edits(_opts(tmp_path, method="test-nudge"), QUIET, loaded=tiny, requests=[_req(0)])


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(method="kn", mode="batch"), "one request at a time"),
        (dict(method="kn", mode="sequential", edit_batch_size=2), "one request at a time"),
        (dict(method="ft-m", save_checkpoint="x"), "--save-checkpoint needs one edited model"),
        (dict(method="ft-m", mode="nonsense"), "--mode nonsense"),
        (dict(method="no-such-method"), "unknown method 'no-such-method'"),
    ],
)
def test_refusals(tmp_path, kw, message):
    with pytest.raises(EditevalError, match=message):
        run_edits(_opts(tmp_path, **kw), QUIET, requests=[_req(0)])  # refused before any model is loaded


def test_a_preset_layer_the_model_lacks_is_refused_before_editing(tiny, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("layers: [40]\n")
    with pytest.raises(EditevalError, match="layer 40 does not exist"):
        run_edits(_opts(tmp_path, hparams_path=str(path)), QUIET, loaded=tiny, requests=[_req(0)])
    assert not (tmp_path / "out").exists()


def test_cli_refusal_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["edit", "--method", "kn", "--mode", "batch", "--limit", "2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: method 'kn' edits one request at a time")


def write_benchmark(root, name: str, requests: list[dict], split: str = "edit"):
    """A built benchmark folder `root/name` (dataset card + Parquet) as `editeval datasets build` writes one."""
    import datasets
    from editeval.data.schema import EDIT_REQUEST_FEATURES

    (root / name / "data").mkdir(parents=True)
    datasets.Dataset.from_list(requests, features=EDIT_REQUEST_FEATURES).to_parquet(
        root / name / "data" / f"{split}.parquet"
    )
    (root / name / "README.md").write_text(
        f"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: {split}\n"
        f"    path: data/{split}.parquet\n---\n# {name}\n"
    )


def test_cli_edit_runs_end_to_end(tiny_llama_dir, tmp_path, monkeypatch, ft_yaml, capsys):
    """`editeval edit` with its defaults reads `zsre` (here a three-record stand-in, no raw data needed)."""
    import datasets

    write_benchmark(tmp_path / "datasets", "zsre", [_req(i) for i in range(3)])
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EDITEVAL_DATASETS", str(tmp_path / "datasets"))
    # an own datasets cache: it keys a local folder by its name and card, not by its data
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as exc:
        cli.main(
            [
                "edit",
                "--method",
                "ft-m",
                "--model",
                str(tiny_llama_dir),
                "--limit",
                "2",
                "--hparams",
                ft_yaml,
                "--no-generation",
                "--no-progress",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
    assert exc.value.code == 0
    assert "2 edits (0 skipped)" in capsys.readouterr().out
    record = read_record(out)
    assert (record.meta.benchmark, record.meta.split, record.meta.n_edits) == ("zsre", "edit", 2)
    assert list(read_rows(out)["case_id"]) == [0, 1]
