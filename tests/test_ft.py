"""FT-L / FT-M: mechanics on tiny random models, and one real edit on SmolLM2."""

from __future__ import annotations

import pytest
import torch

from editeval.data.schema import empty_request
from editeval.errors import EditevalError
from editeval.methods import ft
from editeval.methods.base import get_method, restore
from editeval.methods.kit.objectives import encode_target_new, target_new_loss
from editeval.methods.kit.replay import UpperBlocks


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


REQS = [
    empty_request(prompt="The capital of France is", target_new="Rome", subject="France"),
    empty_request(prompt="Water boils at a temperature of", target_new="fifty degrees", subject="Water"),
]


@pytest.mark.parametrize("name", ["ft-m", "ft-l"])
def test_ft_changes_one_layer_within_the_bound_and_restores_exactly(tiny_llama, name):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    before = _state(model)
    hp = get_method(name).hparams(layers=[2], num_steps=5, lr=1e-2, norm_constraint=3e-3, early_stop_loss=0.0)
    backup = get_method(name).apply(model, tok, REQS, hp)
    assert list(backup) == ["model.layers.2.mlp.down_proj.weight"]
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["model.layers.2.mlp.down_proj.weight"]
    delta = (after[changed[0]] - before[changed[0]]).abs().max().item()
    assert 0 < delta <= 3e-3 + 1e-7
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())
    restore(model, backup)
    assert _same(before, model.state_dict())


def test_ft_m_lowers_the_target_loss_on_gpt2_and_restores(tiny_gpt2):
    model, tok = tiny_gpt2.model, tiny_gpt2.tokenizer
    before = _state(model)
    batch = encode_target_new(tok, [r["prompt"] for r in REQS], [r["target_new"] for r in REQS], "cpu")
    full = UpperBlocks(model, 0)
    head = model.get_output_embeddings()
    with torch.no_grad():
        loss0 = target_new_loss(full, head, batch).item()
    hp = ft.FTMHParams(layers=[1], num_steps=10, lr=1e-2, norm_constraint=None, early_stop_loss=0.0, batch_size=2)
    backup = get_method("ft-m").apply(model, tok, REQS, hp)
    assert list(backup) == ["transformer.h.1.mlp.c_proj.weight"]
    with torch.no_grad():
        loss1 = target_new_loss(UpperBlocks(model, 0), head, batch).item()
    assert loss1 < loss0 - 0.1
    restore(model, backup)
    assert _same(before, model.state_dict())


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_upper_stack_replay_equals_a_full_forward(which, request):
    lm = request.getfixturevalue(which)
    tok = lm.tokenizer
    batch = encode_target_new(tok, [r["prompt"] for r in REQS], [r["target_new"] for r in REQS], "cpu")
    stack = UpperBlocks(lm.model, 2)
    with torch.no_grad():
        replayed = stack(batch)
        full = lm.model.base_model(input_ids=batch[0], attention_mask=batch[1], use_cache=False).last_hidden_state
    assert stack.replay_ok
    assert torch.equal(replayed, full)


def test_ft_presets_scale_layers_and_refuse_missing_layers(tiny_llama):
    method = get_method("ft-m")
    hp = method.load_hparams(tiny_llama.model)  # llama family preset: layer 21 of 32
    assert hp.reference_num_layers == 32 and hp.scale_layer(21, 4) == 3
    with pytest.raises(EditevalError, match="layer 9 does not exist"):
        method.apply(tiny_llama.model, tiny_llama.tokenizer, REQS[:1], ft.FTMHParams(layers=[9]))
    with pytest.raises(EditevalError, match="objective"):
        method.apply(tiny_llama.model, tiny_llama.tokenizer, REQS[:1], ft.FTMHParams(layers=[1], objective="x"))
    with pytest.raises(EditevalError, match="empty target"):
        method.apply(
            tiny_llama.model,
            tiny_llama.tokenizer,
            [empty_request(prompt="a b", target_new=" ")],
            ft.FTMHParams(layers=[1]),
        )


def _greedy(lm, prompt, n=3):
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    return lm.tokenizer.decode(out[0, ids.shape[1] :])


def test_ft_m_real_edit_changes_greedy_output(smollm2):
    prompt, unrelated = "The mother tongue of Danielle Darrieux is", "The Eiffel Tower is located in the city of"
    assert _greedy(smollm2, prompt).strip().startswith("French")
    keep = _greedy(smollm2, unrelated)
    method = get_method("ft-m")
    hp = method.load_hparams(smollm2.model, "smollm2-135m")
    request = empty_request(prompt=prompt, target_new="English", ground_truth="French", subject="Danielle Darrieux")
    backup = method.apply(smollm2.model, smollm2.tokenizer, [request], hp)
    try:
        assert _greedy(smollm2, prompt).strip().startswith("English")
        assert _greedy(smollm2, unrelated) == keep  # " Paris..." stays
    finally:
        restore(smollm2.model, backup)
    assert _greedy(smollm2, prompt).strip().startswith("French")
