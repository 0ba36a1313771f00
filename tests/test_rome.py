"""ROME: mechanics on tiny random models, the real edit on SmolLM2, exact restore, bad input."""

from __future__ import annotations

import pytest
import torch
from _generation import greedy

from editeval.data.schema import empty_request
from editeval.errors import EditevalError
from editeval.methods import get_method, restore
from editeval.methods.kit import delta_optimisation, locate
from editeval.methods.rome import ROMEHParams, apply_rome
from editeval.runtime.nethooks import Trace

DARRIEUX = empty_request(
    case_id=1,
    subject="Danielle Darrieux",
    prompt="The mother tongue of Danielle Darrieux is",
    target_new="English",
    ground_truth="French",
)


def tiny_hp(**kw):
    values = {
        "layer": 1,
        "mom2_tokens": 1000,
        "mom2_max_len": 128,
        "v_num_grad_steps": 6,
        "context_short": 2,
        "context_long": 2,
    }
    values.update(kw)
    return ROMEHParams(**values)


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_rank_one_edit_writes_value_and_restores_exactly(which, request):
    m = request.getfixturevalue(which)
    model, tok = m.model, m.tokenizer
    hp = tiny_hp()
    before = _state(model)
    module = locate.layer_module_name(model, 1, "mlp_out")
    prefixes = locate.context_prefixes(hp.context_short, hp.context_long)
    res = delta_optimisation.compute_delta(model, tok, DARRIEUX, module, prefixes, hp)
    backup = apply_rome(model, tok, [DARRIEUX], hp)
    name = module + ".weight"
    assert list(backup) == [name]
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == [name]  # (GPT-2 ties nothing to c_proj)
    # after the edit, the MLP output at the subject's last token of the bare prompt is v* = W k + δ
    loc = locate.locate(tok, DARRIEUX)
    with Trace(model, [module]) as tr, torch.no_grad():
        model(input_ids=torch.tensor([loc.ids]))
    got = tr.outputs[module][0, loc.index]
    assert torch.allclose(got, res.init + res.delta, atol=1e-4 * (1 + res.init.norm()))
    restore(model, backup)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("layer,place", [(2, "mlp_out"), (0, "mlp_out"), (1, ""), (3, "")])
def test_fast_delta_equals_naive(which, layer, place, request):
    """The fast path (prefix KV cache, frozen blocks replayed, LM head only where the loss reads)
    changes the work, not the loss, the steps or δ; the model's blocks are put back after."""
    m = request.getfixturevalue(which)
    # at the last block of these random models the gradient is ~1e-9, inside Adam's eps, so rounding
    # noise steers δ after one update: there, only the forward pass (loss, init) is compared
    steps = 1 if layer == 3 else 4
    hp = tiny_hp(v_num_grad_steps=steps, v_loss_stop=0.0)
    module = locate.layer_module_name(m.model, layer, place)  # place "": block output (MEMIT)
    prefixes = locate.context_prefixes(2, 2)
    blocks = list(m.model.base_model.modules())
    fast = delta_optimisation.compute_delta(m.model, m.tokenizer, DARRIEUX, module, prefixes, hp)
    assert list(m.model.base_model.modules()) == blocks
    slow = delta_optimisation.compute_delta(m.model, m.tokenizer, DARRIEUX, module, prefixes, hp, fast=False)
    assert fast.steps == slow.steps == steps
    assert abs(fast.loss - slow.loss) < 1e-4 and abs(fast.nll - slow.nll) < 1e-4
    assert torch.allclose(fast.init, slow.init, atol=1e-5)
    assert torch.allclose(fast.delta, slow.delta, atol=1e-4)


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_gathered_keys_equal_one_text_at_a_time(which, request):
    """Keys and outputs at the subject's last token, gathered in length-sorted batches cut at that
    token, are the ones a full forward pass of each text alone gives, in the callers' order."""
    m = request.getfixturevalue(which)
    requests = [
        DARRIEUX,
        empty_request(
            case_id=2, subject="Paris", prompt="Paris is the capital city of", target_new="Italy", ground_truth="France"
        ),
    ]
    prefixes = locate.context_prefixes(2, 3)
    located = [locate.locate(m.tokenizer, r, p) for r in requests for p in prefixes]
    assert len({loc.index for loc in located}) > 3 and any(len(loc.ids) > loc.index + 1 for loc in located)
    names = [locate.layer_module_name(m.model, 1, "mlp_out"), locate.layer_module_name(m.model, 2, "")]
    got_in = locate.gather_at_subject(m.model, m.tokenizer, located, names[:1], inputs=True, batch_size=3)
    got_out = locate.gather_at_subject(m.model, m.tokenizer, located, names[1:], inputs=False, batch_size=4)
    for row, loc in enumerate(located):
        with Trace(m.model, names, retain_input=True) as tr, torch.no_grad():
            m.model(input_ids=torch.tensor([loc.ids]))
        assert torch.allclose(got_in[names[0]][row], tr.inputs[names[0]][0, loc.index], atol=1e-5)
        out = tr.outputs[names[1]]
        out = out[0] if isinstance(out, tuple) else out
        assert torch.allclose(got_out[names[1]][row], out[0, loc.index], atol=1e-5)


def test_context_templates_are_fixed():
    prefixes = locate.context_prefixes(10, 10)
    assert len(prefixes) == 21 and prefixes[0] == ""
    assert all(p.endswith(". ") for p in prefixes[1:])


def test_bad_inputs(tiny_llama):
    m = tiny_llama
    bad_subject = dict(DARRIEUX, subject="Marie Curie")
    with pytest.raises(EditevalError, match="request 1 .*Marie Curie.*does not occur"):
        apply_rome(m.model, m.tokenizer, [bad_subject], tiny_hp())
    with pytest.raises(EditevalError, match="tokenises to nothing"):
        apply_rome(m.model, m.tokenizer, [dict(DARRIEUX, target_new="  ")], tiny_hp())
    with pytest.raises(EditevalError, match="layer 7 does not exist"):
        apply_rome(m.model, m.tokenizer, [DARRIEUX], tiny_hp(layer=7))


def test_presets_resolve_and_scale(tiny_llama, tiny_gpt2):
    method = get_method("rome")
    assert method.needs_subject and not method.batch
    smol = method.load_hparams(model_name="smollm2-135m")
    assert isinstance(smol, ROMEHParams) and smol.mom2_tokens == 100_000 and smol.kl_factor == 0.0625
    llama = method.load_hparams(tiny_llama.model)  # family fallback by model_type
    assert llama.reference_num_layers == 32 and llama.edit_layer(tiny_llama.model) == 1
    gpt2 = method.load_hparams(tiny_gpt2.model)
    assert gpt2.edit_layer(tiny_gpt2.model) == 1


def test_real_edit_on_smollm2(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    hp = get_method("rome").load_hparams(model, "smollm2-135m")
    hp.mom2_tokens = 4000  # small statistics keep the test fast; the edit still takes
    assert greedy(model, tok, DARRIEUX["prompt"], n=4).startswith("French")
    paris = greedy(model, tok, "The Eiffel Tower is located in the city of", n=4)
    before = _state(model)
    backup = apply_rome(model, tok, [DARRIEUX], hp)
    try:
        assert greedy(model, tok, DARRIEUX["prompt"], n=4).startswith("English")
        assert greedy(model, tok, "Danielle Darrieux's mother tongue is", n=4).startswith("English")
        assert greedy(model, tok, "The Eiffel Tower is located in the city of", n=4) == paris
    finally:
        restore(model, backup)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
