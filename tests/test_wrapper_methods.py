"""IKE, LoRA, GRACE, T-Patcher, CaliNET: edits take effect on tiny models, restore is exact,
method artifacts save and reload through `editeval score`, bad input fails with one clear line."""

from __future__ import annotations

import json

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


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    return load(tiny_llama_dir, device="cpu")


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_gpt2_dir):
    return load(tiny_gpt2_dir, device="cpu")


def _reliability(loaded, requests, model=None):
    ev = Evaluator(loaded, requests, generation=False, use_cache=False, progress=False)
    return [row["reliability.teacher_forced"] for row in ev.evaluate(model or loaded.model)]


def _hp(name, **values):
    return get_method(name).hparams(**values)


TINY = {
    "grace": dict(layer=2, eps=1.0, num_steps=40, lr=1.0, early_stop_loss=0.0),
}


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_edit_takes_effect_and_restores_exactly(request, name, arch):
    loaded = request.getfixturevalue(arch)
    model, tok = loaded.model, loaded.tokenizer
    fp = weights_fingerprint(model)
    before = _reliability(loaded, [REQ, REQ2])
    assert before[0] < 1.0
    backup = get_method(name).apply(model, tok, [REQ, REQ2], _hp(name, **TINY[name]))
    after = _reliability(loaded, [REQ, REQ2])
    assert after == [1.0, 1.0], (before, after)
    restore(model, backup)
    assert weights_fingerprint(model) == fp
    assert artifacts.additions(model) == []
    assert _reliability(loaded, [REQ, REQ2]) == before
    assert all(p.grad is None for p in model.parameters())
