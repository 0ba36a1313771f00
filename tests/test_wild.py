"""The WILD protocol (`editeval.evaluation.wild`): answers equal Hugging Face greedy `generate` cut
at the first natural stop, the row's metrics are the hand-computed ones, locality compares with
the unedited model, and the evaluator gives the columns and values the protocol defines."""

from __future__ import annotations

import math

import pytest
from test_evaluate import _hf_greedy, _requests

from editeval.evaluation import metrics as M
from editeval.evaluation.evaluator import Evaluator, evaluation_columns
from editeval.evaluation.requests import GEN, LOC, PORT, REL
from editeval.evaluation.runner import LMRunner
from editeval.evaluation.wild import WildGenerator, WildPrompt, stop_tokens, wild_row
from editeval.runtime.models import load

QUESTIONS = [
    "The river of Paris is",
    "Who wrote the play about a prince of Denmark?",
    "A king",
    "Language models often write about the",
    "what is the capital city of the country north of Spain",
    "The colour of the sky",
]


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_answers_equal_hf_greedy_generate_cut_at_the_first_natural_stop(which, request, monkeypatch):
    """Stopping after the token that holds a period or newline gives the text that generating all 50
    tokens (HF `generate`, stopping at EOS) and cutting at the first stop gives. A random tiny_llama model
    seldom writes a period, so the letter "e" is made a stop too: stops then happen."""
    monkeypatch.setattr(M, "WILD_STOPS", (".", "\n", "e"))
    lm = request.getfixturevalue(which)
    tok = lm.tokenizer
    runner = LMRunner(pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, batch_size=4)
    generator = WildGenerator(runner, tok)
    prompts = [WildPrompt(k, REL, "", q, "x", False) for k, q in enumerate(QUESTIONS)]
    answers = generator.answers(lm.model, prompts)
    full = [_hf_greedy(lm, generator.encode(p), M.WILD_MAX_NEW_TOKENS, tok.eos_token_id) for p in prompts]
    assert answers == [M.wild_answer(tok.decode(g, skip_special_tokens=True)) for g in full]
    # the stop really ends decoding early (and a stop token is one whose text has a period or newline)
    stops = stop_tokens(tok)
    assert stops and all(any(s in tok.decode([t], skip_special_tokens=True) for s in M.WILD_STOPS) for t in stops)
    ids = [generator.encode(p) for p in prompts]
    short = runner.greedy(lm.model, ids, [M.WILD_MAX_NEW_TOKENS] * len(ids), stop_at_eos=True, stop_after=stops)
    early = [g for g, f in zip(short, full) if len(g) < len(f)]
    assert early and all(g[-1] in stops for g in early)


def test_a_request_s_wild_row_is_the_hand_computed_one():
    prompts = [
        WildPrompt(0, REL, "", "q", "Eiffel Tower", False),
        WildPrompt(0, GEN, "", "q1", "Eiffel Tower", False),
        WildPrompt(0, GEN, "", "q2", "Eiffel Tower", False),
        WildPrompt(0, PORT, "one_hop", "p", "Paris", False),
        WildPrompt(0, PORT, "alias", "p2", "Gustave Eiffel", False),
        WildPrompt(0, LOC, "nq", "l1", "", False),
        WildPrompt(0, LOC, "nq", "l2", "", False),
        WildPrompt(0, LOC, "other", "l3", "", False),
    ]
    answers = [" The Eiffel tower", " It is the Eiffel Tower", " tower", " paris", " Eiffel", " Blue", " Red", " x"]
    base = {prompts[5]: " blue!", prompts[6]: " Green", prompts[7]: " x"}
    row = wild_row(prompts, answers, base)
    assert row == {
        "reliability.wild": 1.0,
        "reliability.wild_contains": 1.0,
        "generalization.wild": 0.0,  # neither rephrase is exactly the answer
        "generalization.wild_contains": 0.5,  # the first holds it as a span
        "portability.one_hop.wild": 1.0,
        "portability.one_hop.wild_contains": 1.0,
        "portability.alias.wild": 0.0,
        "portability.alias.wild_contains": 0.0,
        "portability.wild": 0.5,
        "portability.wild_contains": 0.5,
        "locality.nq.wild": 0.5,  # "blue" = "blue", "red" != "green"
        "locality.other.wild": 1.0,
        "locality.wild": 0.75,  # the mean over kinds
    }


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_the_evaluator_s_wild_columns_on_the_unedited_model(which, request, tmp_path, monkeypatch):
    """On the unedited model locality.wild is 1 everywhere; reliability.wild is the exact match of
    HF greedy's answer to the request's prompt; the columns are the declared ones."""
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path))
    lm = request.getfixturevalue(which)
    tok = lm.tokenizer
    reqs = _requests()
    ev = Evaluator(lm, reqs, batch_size=4, progress=False, wild=True)
    rows = ev.evaluate(lm.model)
    assert list(rows[0]) == evaluation_columns(reqs, wild=True) == ev.columns
    assert {"reliability.wild", "locality.wild", "portability.one_hop.wild_contains"} <= set(ev.columns)
    for r, row in zip(reqs, rows):
        assert row["locality.wild"] == 1.0 and row["locality.nq.wild"] == 1.0
        ids = tok(r["prompt"])["input_ids"]
        answer = M.wild_answer(tok.decode(_hf_greedy(lm, ids, M.WILD_MAX_NEW_TOKENS, tok.eos_token_id)))
        assert row["reliability.wild"] == M.wild_exact_match(answer, r["target_new"])
        assert math.isnan(row["portability.wild"]) == (not r["portability"])
    # the base answers are cached on disk: a second evaluator reads them
    assert len(list((tmp_path / "preedit").glob("wild-*.json"))) == 1
    again = Evaluator(lm, reqs, batch_size=4, progress=False, wild=True).evaluate(lm.model)
    assert [r["locality.wild"] for r in again] == [1.0] * len(reqs)


def test_without_wild_nothing_changes(tiny_llama):
    reqs = _requests()
    plain = Evaluator(tiny_llama, reqs, batch_size=4, progress=False, use_cache=False)
    assert not any("wild" in c for c in plain.columns)
    with_wild = Evaluator(tiny_llama, reqs, batch_size=4, progress=False, use_cache=False, wild=True)
    a, b = plain.evaluate(tiny_llama.model), with_wild.evaluate(tiny_llama.model)
    for x, y in zip(a, b):
        for key, value in x.items():
            assert value == y[key] or (math.isnan(value) and math.isnan(y[key])), key


def test_the_evaluate_module_gives_the_pipeline_s_numbers_for_the_same_strings(tiny_llama, tmp_path, monkeypatch):
    """`evaluate.load(PATH)` (a local folder, offline) on the answers the pipeline generated gives
    the rows' means: reliability under WILD and under the target-length generation protocol."""
    import evaluate
    import torch

    from editeval.evaluation.editeval_generation import PATH
    from editeval.evaluation.requests import REL as REL_ROLE

    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path))
    edited = load(tiny_llama.path, device="cpu")  # an "edit": one MLP nudged, so answers differ from the base's
    with torch.no_grad():
        edited.model.model.layers[1].mlp.down_proj.weight.add_(0.3)
    reqs = _requests()
    asked = [WildPrompt(i, REL, "", r["prompt"], "", False) for i, r in enumerate(reqs)]
    runner = LMRunner(pad_id=tiny_llama.tokenizer.pad_token_id, eos_id=tiny_llama.tokenizer.eos_token_id, batch_size=4)
    answers = WildGenerator(runner, tiny_llama.tokenizer).answers(edited.model, asked)
    for i in range(0, len(reqs), 2):  # half the requests ask for what the edited model answers
        if M.normalize_answer(answers[i]):
            reqs[i]["target_new"] = answers[i].strip()
    ev = Evaluator(tiny_llama, reqs, batch_size=4, progress=False, wild=True)
    rows = ev.evaluate(edited.model)
    assert 0 < M.mean([row["reliability.wild"] for row in rows]) < 1
    metric = evaluate.load(PATH)
    generator = ev._wild.generator
    scores = metric.compute(predictions=answers, references=[r["target_new"] for r in reqs])
    assert scores["wild"] == M.mean([row["reliability.wild"] for row in rows])
    assert scores["wild_contains"] == M.mean([row["reliability.wild_contains"] for row in rows])
    loc = [p for ps in ev._wild.by_owner.values() for p in ps if p.role == LOC]
    base = [ev._wild.base[p] for p in loc]
    changed = metric.compute(predictions=generator.answers(edited.model, loc), references=base, protocol="locality")
    assert changed["locality_wild"] == M.mean(
        [M.wild_locality(a, b) for a, b in zip(generator.answers(edited.model, loc), base)]
    )
    # the target-length generation protocol, on the texts the runner generated
    seq_ids = [s for s, q in enumerate(ev._seqs) if q.role == REL_ROLE]
    outs = ev.runner.score(edited.model, ev._seqs, seq_ids, generate=True)
    texts = [tiny_llama.tokenizer.decode(outs[s].generated, skip_special_tokens=True) for s in seq_ids]
    generation = metric.compute(predictions=texts, references=[r["target_new"] for r in reqs], protocol="generation")
    assert generation["generation"] == M.mean([row["reliability.generation"] for row in rows])
    with pytest.raises(ValueError, match="protocol 'judge'"):
        metric.compute(predictions=["a"], references=["a"], protocol="judge")


def test_a_local_judge_grades_the_wild_answers_and_its_verdicts_are_cached(tiny_llama, tmp_path, monkeypatch):
    """The plumbing, with the tiny_llama model as judge: each edit-side answer gets the verdict the judge's
    next-token logits give (" yes" over " no" after the pinned prompt), the rows get *.wild_judge,
    and a second evaluation asks the judge nothing (cached by its fingerprint)."""
    import torch

    from editeval.evaluation import judge as J

    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path))
    judge = J.Judge(tiny_llama)
    reqs = _requests()
    ev = Evaluator(tiny_llama, reqs, batch_size=4, progress=False, wild=True, judge=judge)
    rows = ev.evaluate(tiny_llama.model)
    assert {"reliability.wild_judge", "generalization.wild_judge", "portability.wild_judge"} <= set(ev.columns)
    answers = ev._wild.generator.answers(
        tiny_llama.model, [WildPrompt(i, REL, "", r["prompt"], "", False) for i, r in enumerate(reqs)]
    )
    tok = tiny_llama.tokenizer
    for r, answer, row in zip(reqs, answers, rows):
        text = J.PROMPT.format(question=r["prompt"], target=r["target_new"], answer=answer.strip())
        with torch.no_grad():
            logits = tiny_llama.model(torch.tensor([tok(text)["input_ids"]])).logits[0, -1]
        assert row["reliability.wild_judge"] == float(logits[judge.yes] > logits[judge.no])
    assert (tmp_path / "judge" / f"{tiny_llama.fingerprint()}-v{J.PROMPT_VERSION}.json").is_file()
    asked = []
    monkeypatch.setattr(J.Judge, "_ask", lambda self, items: asked.append(items) or [])
    again = Evaluator(tiny_llama, reqs, batch_size=4, progress=False, wild=True, judge=J.Judge(tiny_llama)).evaluate(
        tiny_llama.model
    )
    assert asked == [] and [r["reliability.wild_judge"] for r in again] == [r["reliability.wild_judge"] for r in rows]
    with pytest.raises(ValueError, match="--wild"):
        Evaluator(tiny_llama, reqs, progress=False, judge=judge)
