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


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load(tiny_llama_dir, device="cpu")


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    return load(tiny_gpt2_dir, device="cpu")


@pytest.mark.parametrize("which", ["tiny", "gpt2"])
def test_answers_equal_hf_greedy_generate_cut_at_the_first_natural_stop(which, request, monkeypatch):
    """Stopping after the token that holds a period or newline gives the text that generating all 50
    tokens (HF `generate`, stopping at EOS) and cutting at the first stop gives. A random tiny model
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


@pytest.mark.parametrize("which", ["tiny", "gpt2"])
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


def test_without_wild_nothing_changes(tiny):
    reqs = _requests()
    plain = Evaluator(tiny, reqs, batch_size=4, progress=False, use_cache=False)
    assert not any("wild" in c for c in plain.columns)
    with_wild = Evaluator(tiny, reqs, batch_size=4, progress=False, use_cache=False, wild=True)
    a, b = plain.evaluate(tiny.model), with_wild.evaluate(tiny.model)
    for x, y in zip(a, b):
        for key, value in x.items():
            assert value == y[key] or (math.isnan(value) and math.isnan(y[key])), key
