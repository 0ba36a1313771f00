"""IKE, LoRA, GRACE, T-Patcher, CaliNET: edits take effect on tiny models, restore is exact,
method artifacts save and reload through `editeval score`, bad input fails with one clear line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from editeval import artifacts
from editeval.errors import EditevalError
from editeval.evaluate import Evaluator
from editeval.methods.base import get_method, restore
from editeval.models import load, weights_fingerprint
from editeval.schema import empty_request

REQ = empty_request(case_id=0, prompt="The capital of France is", target_new="Rome", subject="France",
                    rephrase_prompts=["France's capital city is"],
                    locality=[{"kind": "nq", "prompt": "nq question: who wrote hamlet", "answer": "Shakespeare"}])
REQ2 = empty_request(case_id=1, prompt="Water boils at a temperature of", target_new="fifty degrees",
                     subject="Water", rephrase_prompts=["The boiling point of water is"])


def _reliability(loaded, requests, model=None):
    ev = Evaluator(loaded, requests, generation=False, use_cache=False, progress=False)
    return [row["reliability.teacher_forced"] for row in ev.evaluate(model or loaded.model)]


def _hp(name, **values):
    return get_method(name).hparams(**values)


TINY = {
    "grace": {"layer": 2, "eps": 1.0, "num_steps": 40, "lr": 1.0, "early_stop_loss": 0.0},
    "lora": {"layers": [2, 3], "target_modules": None, "rank": 4, "lora_alpha": 8, "lora_dropout": 0.0,
             "num_steps": 60, "lr": 2e-2, "early_stop_loss": 0.0},
    "t-patcher": {"num_steps": 80, "lr": 0.5, "memory_size": 8},
    "calinet": {"num_slots": 16, "num_steps": 40, "lr": 5e-2, "init_std": 0.1},
}
MODULES = {"tiny_llama": ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"],
           "tiny_gpt2": ["attn.c_attn", "mlp.c_proj"]}


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_edit_takes_effect_and_restores_exactly(request, name, arch):
    loaded = request.getfixturevalue(arch)
    model, tok = loaded.model, loaded.tokenizer
    fp = weights_fingerprint(model)
    before = _reliability(loaded, [REQ, REQ2])
    assert before[0] < 1.0
    values = dict(TINY[name])
    if "target_modules" in values:
        values["target_modules"] = MODULES[arch]
    # T-Patcher: one edit (on a tiny random model the flat logits let a second patch disturb the first)
    reqs = [REQ] if name == "t-patcher" else [REQ, REQ2]
    backup = get_method(name).apply(model, tok, reqs, _hp(name, **values))
    after = _reliability(loaded, [REQ, REQ2])
    # the one-token target is memorised; the two-token one at least partly (GRACE acts through one
    # position's value)
    assert after[0] == 1.0, (before, after)
    if len(reqs) == 2:
        assert after[1] > before[1], (before, after)
    restore(model, backup)
    assert weights_fingerprint(model) == fp
    assert artifacts.additions(model) == []
    assert _reliability(loaded, [REQ, REQ2]) == before
    assert all(p.grad is None for p in model.parameters())


def test_sequential_edits_grow_one_codebook_and_undo_in_order(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    hp = _hp("grace", **TINY["grace"])
    first = get_method("grace").apply(model, tok, [REQ], hp)
    book = artifacts.find_addition(model, "grace_codebook")
    assert len(book.keys) == 1 and book.labels == ["Rome"]
    second = get_method("grace").apply(model, tok, [REQ2], hp)
    assert artifacts.additions(model) == [book] and len(book.keys) == 2
    restore(model, second)
    assert len(book.keys) == 1 and book.labels == ["Rome"]
    restore(model, first)
    assert artifacts.additions(model) == []


def test_lora_merges_into_the_weights_and_adalora_option(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    values = dict(TINY["lora"], target_modules=["mlp.down_proj"], lora_type="adalora", rank=2, init_r=4)
    backup = get_method("lora").apply(model, tok, [REQ], _hp("lora", **values))
    after = model.state_dict()
    assert list(after) == list(before)  # no adapter left behind: an ordinary model
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["model.layers.2.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight"]
    assert type(model.model.layers[2].mlp.down_proj) is torch.nn.Linear
    restore(model, backup)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _ike_hp(**values):
    return _hp("ike", **{"k": 2, "train_limit": 20, **values})


def test_ike_conditions_every_evaluated_prompt(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    ev = Evaluator(tiny_llama, [REQ], generation=True, use_cache=False, progress=False)
    plain = ev.evaluate(model)
    backup = get_method("ike").apply(model, tok, [REQ], _ike_hp())
    transform = artifacts.prompt_transform(model)
    prefix = transform("anything")
    assert prefix.endswith("New Fact: The capital of France is Rome\nPrompt: ")
    assert prefix.count("New Fact:") == 2 + 1 + 1  # k demonstrations, the copy demonstration, the fact
    seqs = ev._conditioned(transform, range(len(ev._seqs)))
    for q, c in zip(ev._seqs, seqs):  # every sequence carries the prefix; spans keep their tokens
        assert len(c.ids) > len(q.ids) and c.ids[c.start:] == q.ids[q.start:]
        assert prefix + q.text[0] in tok.decode(c.ids)
    ev.evaluate(model)
    restore(model, backup)
    assert artifacts.prompt_transform(model) is None
    assert _same_rows(ev.evaluate(model), plain)


def _same_rows(a, b):
    def norm(v):
        return "nan" if isinstance(v, float) and math.isnan(v) else v
    return [{k: norm(v) for k, v in r.items()} for r in a] == [{k: norm(v) for k, v in r.items()} for r in b]


def test_ike_batch_uses_the_nearest_fact(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    backup = get_method("ike").apply(model, tok, [REQ, REQ2], _ike_hp())
    try:
        transform = artifacts.prompt_transform(model)
        assert "France is Rome\nPrompt: " in transform("What is the capital city of France?")[-60:]
        assert "fifty degrees\nPrompt: " in transform("At what temperature does water boil?")[-60:]
    finally:
        restore(model, backup)


@pytest.mark.parametrize("name", ["grace", "ike", "t-patcher", "calinet"])
def test_artifact_saved_by_the_driver_is_scored_with_the_base_model(tmp_path, tiny_llama_dir, name):
    from editeval.editing import EditOptions, run_edits
    from editeval.scoring import score_checkpoint

    hparams = tmp_path / "hp.yaml"
    values = {"grace": TINY["grace"], "ike": {"k": 2, "train_limit": 20},
              "t-patcher": TINY["t-patcher"], "calinet": TINY["calinet"]}[name]
    hparams.write_text(json.dumps(values))
    out = tmp_path / "run.json"
    ckpt = tmp_path / "artifact"
    summary = run_edits(EditOptions(method=name, model=str(tiny_llama_dir), mode="sequential", hparams_path=str(hparams),
                                    save_checkpoint=str(ckpt), out=str(out), progress=False, generation=False),
                        requests=[REQ, REQ2])
    assert artifacts.is_artifact(ckpt) and not (ckpt / "config.json").exists()
    meta = json.loads((ckpt / artifacts.ARTIFACT_FILE).read_text())
    assert meta["method"] == name and meta["additions"]
    record, rows, _ = score_checkpoint(ckpt, base=str(tiny_llama_dir), requests=[REQ, REQ2], generation=False,
                                       piqa_items=0, out=tmp_path / "score.json", progress=False)
    edited = [r["reliability.teacher_forced"] for r in summary.record.rows] if hasattr(summary.record, "rows") else None
    driver = json.loads(out.read_text())
    score = json.loads((tmp_path / "score.json").read_text())
    assert _metric(score, "reliability.teacher_forced") == pytest.approx(_metric(driver, "reliability.teacher_forced"))
    assert _metric(score, "locality.teacher_forced") == pytest.approx(_metric(driver, "locality.teacher_forced"))
    assert score["meta"]["edited_fingerprint"].startswith("artifact:")
    assert artifacts.additions(load(tiny_llama_dir, device="cpu").model) == []
    del edited, rows, record


def _metric(record: dict, name: str) -> float:
    value = record["metrics"][name]
    return value["mean"] if isinstance(value, dict) else value


def test_lora_checkpoint_is_a_normal_model_folder(tmp_path, tiny_llama_dir):
    from editeval.editing import EditOptions, run_edits

    hparams = tmp_path / "hp.yaml"
    hparams.write_text(json.dumps(dict(TINY["lora"], target_modules=["mlp.down_proj"])))
    ckpt = tmp_path / "ckpt"
    run_edits(EditOptions(method="lora", model=str(tiny_llama_dir), mode="batch", hparams_path=str(hparams),
                          save_checkpoint=str(ckpt), out=str(tmp_path / "run.json"), progress=False, generation=False),
              requests=[REQ, REQ2])
    assert (ckpt / "config.json").exists() and not artifacts.is_artifact(ckpt)
    edited = load(ckpt, device="cpu")
    assert _reliability(edited, [REQ])[0] == 1.0


def test_bad_artifacts_and_hparams_fail_with_one_line(tmp_path, tiny_llama, tiny_gpt2):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    with pytest.raises(EditevalError, match="lora_type"):
        get_method("lora").apply(model, tok, [REQ], _hp("lora", lora_type="dora"))
    with pytest.raises(EditevalError, match="does not exist in layer"):
        get_method("lora").apply(model, tok, [REQ], _hp("lora", target_modules=["mlp.nope"]))
    with pytest.raises(EditevalError, match="val_init"):
        get_method("grace").apply(model, tok, [REQ], _hp("grace", val_init="tepid"))
    with pytest.raises(EditevalError, match="unknown hyper-parameter"):
        get_method("ike").hparams.from_dict({"kk": 3})
    with pytest.raises(EditevalError, match="not a method artifact|no editeval_artifact"):
        artifacts.read_artifact(tmp_path)
    (tmp_path / artifacts.ARTIFACT_FILE).write_text("{not json")
    with pytest.raises(EditevalError, match="not valid JSON"):
        artifacts.read_artifact(tmp_path)
    # an artifact made on one base refuses another
    backup = get_method("grace").apply(model, tok, [REQ], _hp("grace", **TINY["grace"]))
    try:
        folder = artifacts.save_artifact(model, tmp_path / "a", method="grace", hparams={}, base_model="tiny",
                                         base_fingerprint=weights_fingerprint(model))
    finally:
        restore(model, backup)
    with pytest.raises(EditevalError, match="another architecture"):
        artifacts.load_artifact(tiny_gpt2.model, folder)
    meta = json.loads((folder / artifacts.ARTIFACT_FILE).read_text())
    meta["base_fingerprint"] = "0" * 16
    (folder / artifacts.ARTIFACT_FILE).write_text(json.dumps(meta))
    with pytest.raises(EditevalError, match="base weights"):
        artifacts.load_artifact(model, folder)
    assert artifacts.additions(model) == []


@pytest.mark.real_model
def test_ike_edits_smollm2_in_context(smollm2):
    # zsre/edit record 0 (SmolLM2 keeps "Paris" for the Eiffel Tower whatever the context says)
    req = empty_request(case_id=0, prompt="When was the inception of IAAF Combined Events Challenge?", target_new="2006",
                        rephrase_prompts=["When was the IAAF Combined Events Challenge launched?"])
    ev = Evaluator(smollm2, [req], generation=True, use_cache=False, progress=False)
    before = ev.evaluate(smollm2.model)[0]
    backup = get_method("ike").apply(smollm2.model, smollm2.tokenizer, [req], _ike_hp(k=4, train_limit=200))
    try:
        after = ev.evaluate(smollm2.model)[0]
    finally:
        restore(smollm2.model, backup)
    assert before["reliability.teacher_forced"] < 0.5 and before["reliability.generation"] == 0.0
    assert after["reliability.teacher_forced"] == 1.0 and after["reliability.generation"] == 1.0
    assert after["generalization.teacher_forced"] == 1.0
