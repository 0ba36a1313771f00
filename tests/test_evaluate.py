"""The batched engine: bit-identical whatever the batch size, generation = HF greedy generation,
the pre-edit cache, subsets, PIQA and fluency."""

from __future__ import annotations

import json
import math

import pytest
import torch

from editeval.evaluate import Evaluator
from editeval.models import load
from editeval.schema import empty_request

WORDS = "alpha beta gamma delta river mountain city king queen language paris rome berlin".split()


def _requests(n=6):
    reqs = []
    for i in range(n):
        w = WORDS[i % len(WORDS)]
        reqs.append(empty_request(
            case_id=100 + i, subject=w.title(), prompt=f"The {w} of {'very ' * (i % 3)}{w.title()} is",
            target_new=" ".join(WORDS[(i + 3) % len(WORDS)] for _ in range(1 + i % 3)),
            ground_truth=WORDS[(i + 5) % len(WORDS)],
            rephrase_prompts=[f"{w.title()}'s {w} is"] * (i % 2 + 1),
            locality=[{"kind": "nq", "prompt": f"question {i} about {w}?", "answer": "the answer " * (1 + i % 2)},
                      {"kind": "other", "prompt": f"{w} {w}", "answer": "yes"}],
            portability=[{"kind": "one_hop", "prompt": f"The {w} hop is", "answer": WORDS[i % 5]}] if i % 2 else [],
            neighborhood_prompts=[f"The {w} of Someone is"],
            generation_prompts=[f"{w.title()} is famous for"] if i < 2 else [],
        ))
    return reqs


PIQA = [{"goal": "To open a jar,", "sol1": "twist the lid.", "sol2": "eat the lid.", "label": 0},
        {"goal": "To dry hands,", "sol1": "use water", "sol2": "use a towel", "label": 1}]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load(tiny_llama_dir, device="cpu")


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    return load(tiny_gpt2_dir, device="cpu")


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])), k


@pytest.mark.parametrize("which", ["tiny", "gpt2"])
def test_bit_identical_whatever_the_batch_size(which, request):
    lm = request.getfixturevalue(which)
    reqs = _requests()
    runs = [Evaluator(lm, reqs, batch_size=bs, progress=False, use_cache=False, counterfact=True, piqa=PIQA,
                      fluency=True).evaluate(lm.model) for bs in (1, 3, 32)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            _same(a, b)  # exact float equality, magnitudes included
    row = runs[0][0]
    assert row["locality.teacher_forced"] == 1.0 and row["other_task.piqa_agreement"] == 1.0
    assert row["fluency.ngram_entropy"] >= 0 and math.isnan(runs[0][3]["fluency.ngram_entropy"])


@pytest.mark.parametrize("which", ["tiny", "gpt2"])
def test_padding_either_side_gives_the_same_token_metrics(which, request):
    lm = request.getfixturevalue(which)
    reqs = _requests()
    ref = Evaluator(lm, reqs, batch_size=4, progress=False, use_cache=False).evaluate(lm.model)
    for side in ("left", "right"):
        rows = Evaluator(lm, reqs, batch_size=4, progress=False, use_cache=False, mixed_lengths=True,
                         padding_side=side).evaluate(lm.model)
        for a, b in zip(ref, rows):
            _same(a, b)  # token-level metrics are argmax-based: identical across paddings


def test_generation_equals_hf_greedy_generate(gpt2):
    ev = Evaluator(gpt2, _requests(), batch_size=5, progress=False, use_cache=False)
    outs = ev._score(gpt2.model, list(range(ev.n_sequences)), generate=True, desc="")
    checked = 0
    for s, q in enumerate(ev._seqs):
        if not q.gen:
            continue
        prompt = torch.tensor([q.ids[: q.start]])
        with torch.no_grad():
            g = gpt2.model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                    max_new_tokens=len(q.ids) - q.start, pad_token_id=gpt2.tokenizer.pad_token_id)
        assert outs[s].generated == g[0, q.start :].tolist()
        checked += 1
    assert checked >= 10


def test_preedit_cache_is_written_once_and_reused(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path))
    reqs = _requests(3)
    first = Evaluator(tiny, reqs, progress=False, piqa=PIQA)
    files = list((tmp_path / "preedit").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["base_fingerprint"] == tiny.fingerprint()

    def boom(*a, **k):
        raise AssertionError("base model re-scored despite the cache")

    monkeypatch.setattr(Evaluator, "_score", boom)
    second = Evaluator(tiny, reqs, progress=False, piqa=PIQA)
    assert second._pre_loc == first._pre_loc and second.base_piqa_accuracy == first.base_piqa_accuracy
    monkeypatch.undo()
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path))
    Evaluator(tiny, reqs[:2], progress=False)  # other data -> another cache entry
    assert len(list((tmp_path / "preedit").glob("*.json"))) == 2


def test_subset_rows_equal_full_rows_and_locality_uses_the_base(tiny, tiny_llama_dir):
    reqs = _requests()
    ev = Evaluator(tiny, reqs, progress=False, use_cache=False)
    full = ev.evaluate(tiny.model)
    part = ev.evaluate(tiny.model, indices=[4, 1])
    _same(part[0], full[4])
    _same(part[1], full[1])
    edited = load(tiny_llama_dir, device="cpu")
    with torch.no_grad():
        edited.model.model.embed_tokens.weight.mul_(-1)  # a drastic "edit"
    rows = ev.evaluate(edited.model)
    assert sum(r["locality.teacher_forced"] for r in rows) / len(rows) < 1.0
    assert ev.evaluate(tiny.model)[0]["locality.teacher_forced"] == 1.0  # cache untouched by the edit
    with pytest.raises(IndexError):
        ev.evaluate(tiny.model, indices=[99])


def test_columns_and_options(tiny):
    reqs = _requests(2)
    ev = Evaluator(tiny, reqs, progress=False, use_cache=False, generation=False)
    rows = ev.evaluate(tiny.model)
    assert list(rows[0]) == ev.columns and "reliability.generation" not in ev.columns
    assert "efficacy_score" in ev.columns  # auto: neighbourhood prompts present
    assert ev.locality_kinds == ["nq", "other"] and ev.portability_kinds == ["one_hop"]
    with pytest.raises(ValueError, match="target_new"):
        Evaluator(tiny, [empty_request(prompt="x")], progress=False, use_cache=False)


def test_chat_template_wraps_edit_prompts_only(tiny):
    reqs = _requests(2)
    ev = Evaluator(tiny, reqs, progress=False, use_cache=False, chat_template=True)
    tok = tiny.tokenizer
    rel = next(q for q in ev._seqs if q.role == "reliability")
    loc = next(q for q in ev._seqs if q.role == "locality")
    assert tok.decode(rel.ids).startswith("<|im_start|>") and reqs[0]["prompt"] in tok.decode(rel.ids)
    assert not tok.decode(loc.ids).startswith("<|im_start|>")
    assert ev.evaluate(tiny.model)[0]["locality.teacher_forced"] == 1.0


@pytest.mark.parametrize("sliceable", [True, False])
def test_generation_paths_agree(gpt2, monkeypatch, sliceable):
    """Continuations decoded together from sliced caches, or batch by batch on the cache itself."""
    import editeval.evaluate as E

    calls = []
    real = E._kv_tensors

    def spy(cache):
        kv = real(cache)
        calls.append(kv is not None)
        return kv if sliceable else None

    monkeypatch.setattr(E, "_kv_tensors", spy)
    reqs = _requests()
    ev = Evaluator(gpt2, reqs, batch_size=2, progress=False, use_cache=False)
    rows = ev.evaluate(gpt2.model)
    assert calls and all(calls)  # GPT-2's cache is a plain dynamic cache
    monkeypatch.undo()
    ref = Evaluator(gpt2, reqs, batch_size=2, progress=False, use_cache=False, generation=True).evaluate(gpt2.model)
    for a, b in zip(rows, ref):
        _same(a, b)
