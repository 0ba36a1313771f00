"""KN: integrated gradients against a naive computation, the thresholds, the value-vector edit."""

from __future__ import annotations

import pytest
import torch

from editeval.data.schema import empty_request
from editeval.errors import EditevalError
from editeval.methods import kn
from editeval.methods.base import get_method, restore
from editeval.runtime.models import load

REQ = empty_request(
    prompt="The capital of France is",
    target_new="Rome",
    ground_truth="Paris",
    subject="France",
    rephrase_prompts=["France has its capital in"],
)


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    lm = load(tiny_llama_dir, device="cpu")
    for p in lm.model.parameters():
        p.requires_grad_(False)
    return lm


def _naive_ig(model, tok, prompt, answer, layer, steps):
    """One full forward per step, scaling the last position's MLP neurons of one layer."""
    ids = torch.tensor([tok(prompt)["input_ids"]])
    target = tok(" " + answer, add_special_tokens=False)["input_ids"][0]
    module = model.model.layers[layer].mlp.down_proj
    natural = {}

    def capture(mod, args):
        natural["a"] = args[0][0, -1].detach().clone()

    h = module.register_forward_pre_hook(capture)
    with torch.no_grad():
        model(ids)
    h.remove()
    grads = []
    for k in range(1, steps + 1):
        leaf = (k / steps * natural["a"]).requires_grad_(True)

        def swap(mod, args):
            x = args[0].clone()
            x[0, -1] = leaf
            return (x,)

        h = module.register_forward_pre_hook(swap)
        with torch.enable_grad():
            p = torch.softmax(model(ids).logits[0, -1], -1)[target]
            grads.append(torch.autograd.grad(p, leaf)[0])
        h.remove()
    return natural["a"] * torch.stack(grads).mean(0)


def test_batched_attribution_equals_naive_integrated_gradients(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    hp = kn.KNHParams(steps=5)
    scores = kn.attribution_scores(model, tok, REQ["prompt"], "Paris", [0, 1, 2, 3], hp)
    assert scores.shape == (4, model.config.intermediate_size)
    for layer in (0, 3):
        naive = _naive_ig(model, tok, REQ["prompt"], "Paris", layer, 5)
        assert torch.allclose(scores[layer], naive, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("layers", [None, [1, 3]])
def test_skipping_clean_rows_gives_the_plain_batched_scores(fixture, layers, request):
    """Block l runs only the rows of layers <= l (+ one clean row): the same attributions as every
    row through every block, for all layers and for a subset, with a prefix and after a first
    answer token."""
    lm = request.getfixturevalue(fixture)
    model, tok = lm.model, lm.tokenizer
    for p in model.parameters():
        p.requires_grad_(False)
    layers = layers or list(
        range(model.config.num_hidden_layers if hasattr(model.config, "num_hidden_layers") else model.config.n_layer)
    )
    hp = kn.KNHParams(steps=4, max_answer_tokens=2)
    from editeval.methods.kit.neurons import mlp_module

    seen = []  # rows reaching the first block's MLP
    handle = model.get_submodule(mlp_module(model, 0)).register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].shape[0])
    )
    try:
        fast = kn.attribution_scores(model, tok, REQ["prompt"], "Paris Hilton", layers, hp)
    finally:
        handle.remove()
    # the prefix pass (1 row), then layer 0's 4 steps (when searched) and the clean row, never all rows
    assert max(seen) == (4 if layers[0] == 0 else 0) + 1 < 4 * len(layers)
    plain = kn.attribution_scores(model, tok, REQ["prompt"], "Paris Hilton", layers, hp, skip_clean_rows=False)
    assert fast.shape == plain.shape == (len(layers), plain.shape[1])
    assert torch.allclose(fast, plain, atol=1e-7, rtol=1e-4)
    assert fast.abs().sum() > 0


def test_attributions_are_complete(tiny_llama):
    """IG completeness: a layer's attributions sum to P(answer) minus P(answer) with that layer's
    last-position neurons zeroed (up to the Riemann-sum error)."""
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    scores = kn.attribution_scores(model, tok, REQ["prompt"], "Paris", [2], kn.KNHParams(steps=100))
    ids = torch.tensor([tok(REQ["prompt"])["input_ids"]])
    target = tok(" Paris", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        p_full = torch.softmax(model(ids).logits[0, -1], -1)[target]
        module = model.model.layers[2].mlp.down_proj

        def zero(mod, args):
            x = args[0].clone()
            x[0, -1] = 0
            return (x,)

        h = module.register_forward_pre_hook(zero)
        p_zero = torch.softmax(model(ids).logits[0, -1], -1)[target]
        h.remove()
    assert scores.sum().item() == pytest.approx((p_full - p_zero).item(), rel=0.05, abs=1e-7)


def test_selection_thresholds():
    hp = kn.KNHParams(adaptive_threshold=0.2, p=0.5)
    a = torch.tensor([[1.0, 0.3, 0.1], [0.0, 0.25, 0.0]])  # threshold 0.2: (0,0) (0,1) (1,1)
    b = torch.tensor([[2.0, 0.1, 0.0], [0.0, 0.5, 0.0]])  # threshold 0.4: (0,0) (1,1)
    assert kn.select_neurons([a, b], [5, 7], hp) == [(5, 0), (7, 1)]  # shared by > half; strongest first
    assert kn.select_neurons([a], [5, 7], hp) == [(5, 0), (5, 1), (7, 1)]
    assert kn.select_neurons([a, b], [5, 7], kn.KNHParams(max_neurons=1)) == [(5, 0)]


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_kn_edits_value_vectors_and_restores_exactly(fixture, request):
    lm = load(request.getfixturevalue(fixture), device="cpu")
    model, tok = lm.model, lm.tokenizer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hp = kn.KNHParams(steps=4, scale=1.0)
    backup = get_method("kn").apply(model, tok, [REQ], hp)
    assert backup
    changed = [k for k in before if not torch.equal(before[k], model.state_dict()[k])]
    assert sorted(changed) == sorted(backup)
    emb = model.get_input_embeddings().weight
    delta = (
        emb[tok(" Rome", add_special_tokens=False)["input_ids"][0]]
        - emb[tok(" Paris", add_special_tokens=False)["input_ids"][0]]
    )
    name = changed[0]
    diff = model.get_parameter(name) - before[name]
    if model.config.model_type == "gpt2":
        diff = diff.T
    cols = (diff.abs().sum(0) > 0).nonzero().flatten()
    assert len(cols) >= 1
    assert torch.allclose(diff[:, cols[0]], delta, atol=1e-5)
    restore(model, backup)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_kn_is_single_edit_only(tiny_llama):
    with pytest.raises(EditevalError, match="one request at a time"):
        get_method("kn").apply(tiny_llama.model, tiny_llama.tokenizer, [REQ, REQ], kn.KNHParams(steps=2))
    assert get_method("kn").batch is False
