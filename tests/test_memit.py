"""MEMIT: the least-squares update, mechanics on tiny models, a real batch on SmolLM2, bad input.

The tiny-model tests read their key statistics from a small generated corpus (EDITEVAL_RAW_DATA
points at it); only the real SmolLM2 batch reads the raw data's Wikipedia text (`needs_raw`)."""

from __future__ import annotations

import shutil

import pytest
import torch
from _generation import greedy

from editeval.data.schema import empty_request
from editeval.errors import EditevalError
from editeval.methods import get_method, restore
from editeval.methods.kit import delta_optimisation, locate, mass_values
from editeval.methods.memit import MEMITHParams, apply_memit, layer_update
from editeval.runtime.paths import cache_dir

REQUESTS = [
    empty_request(
        case_id=1, subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux is", target_new="English"
    ),
    empty_request(
        case_id=2, subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of", target_new="Rome"
    ),
    empty_request(case_id=3, subject="Toyota", prompt="Toyota was founded in the country of", target_new="Italy"),
]


def tiny_hp(**kw):
    values = {"layers": [1, 2], "mom2_tokens": 1000, "mom2_max_len": 128, "v_num_grad_steps": 5, "context_long": 2}
    values.update(kw)
    return MEMITHParams(**values)


@pytest.fixture(autouse=True)
def cache(request, small_raw, tmp_path_factory, monkeypatch):
    if request.node.get_closest_marker("needs_raw") is None:
        monkeypatch.setenv("EDITEVAL_RAW_DATA", str(small_raw))
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_layer_update_solves_the_normal_equations():
    torch.manual_seed(0)
    d_in, d_out, n = 12, 5, 7
    x = torch.randn(200, d_in)
    mom2 = x.T @ x / 200
    keys, resid = torch.randn(n, d_in), torch.randn(n, d_out)
    upd = layer_update(keys, resid, mom2, 3.0)
    # ΔW (λC + KKᵀ) = R Kᵀ: the minimiser of ‖ΔW K − R‖² + λ tr(ΔW C ΔWᵀ)
    lhs = upd @ (3.0 * mom2 + keys.T @ keys)
    assert torch.allclose(lhs, resid.T @ keys, atol=1e-4)


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_batch_edit_changes_only_the_layers_and_restores(which, request):
    m = request.getfixturevalue(which)
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    backup = apply_memit(m.model, m.tokenizer, REQUESTS, tiny_hp())
    changed = sorted(k for k, v in m.model.state_dict().items() if not torch.equal(v, before[k]))
    assert changed == sorted(backup) and len(backup) == 2
    restore(m.model, backup)
    assert all(torch.equal(v, before[k]) for k, v in m.model.state_dict().items())


def test_interrupted_batch_resumes_from_cached_values(tiny_llama, monkeypatch):
    """Each group of requests' z is cached as found: a rerun after an interruption optimises only
    the rest, and the edit equals an uninterrupted one bit for bit."""
    m = tiny_llama
    hp = tiny_hp(v_lr=0.37)  # settings of their own: no values cached by other tests
    monkeypatch.setattr(mass_values, "VALUE_BATCH", 2)  # 3 requests: a group of 2, then 1
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    original, found = delta_optimisation.compute_deltas, []

    def failing_second(model, tok, requests, *args, **kw):
        if found:
            raise KeyboardInterrupt
        found.extend(r["case_id"] for r in requests)
        return original(model, tok, requests, *args, **kw)

    monkeypatch.setattr(delta_optimisation, "compute_deltas", failing_second)
    with pytest.raises(KeyboardInterrupt):
        apply_memit(m.model, m.tokenizer, REQUESTS, hp)
    assert all(torch.equal(v, before[k]) for k, v in m.model.state_dict().items())  # nothing applied yet
    first, found = list(found), []
    monkeypatch.setattr(
        delta_optimisation,
        "compute_deltas",
        lambda model, tok, requests, *a, **kw: (
            found.extend(r["case_id"] for r in requests),
            original(model, tok, requests, *a, **kw),
        )[1],
    )
    backup = apply_memit(m.model, m.tokenizer, REQUESTS, hp)
    assert len(first) == 2 and sorted(first + found) == [1, 2, 3]  # only the last request's value was optimised
    resumed = {k: v.clone() for k, v in m.model.state_dict().items()}
    restore(m.model, backup)
    monkeypatch.setattr(delta_optimisation, "compute_deltas", original)
    shutil.rmtree(cache_dir() / "memit-values")
    backup = apply_memit(m.model, m.tokenizer, REQUESTS, hp)  # from scratch
    try:
        assert all(torch.equal(v, resumed[k]) for k, v in m.model.state_dict().items())
    finally:
        restore(m.model, backup)


def test_prepare_shares_out_only_the_missing_values(tiny_llama, monkeypatch):
    """A data-parallel batch's processes share out the values not cached yet (a resumed run's
    processes stay equally busy); a request that cannot be edited is left to `apply_memit`."""
    m = tiny_llama
    hp = tiny_hp(v_lr=0.29)  # settings of their own: no values cached by other tests
    bad = empty_request(case_id=4, subject="nobody", prompt="Paris is the capital of", target_new="Spain")
    requests = [*REQUESTS, bad]
    prepare = get_method("memit").prepare
    prepare(m.model, m.tokenizer, requests[:1], hp, lambda items: items)  # the first value is cached
    original, found, offered = delta_optimisation.compute_deltas, [], []
    monkeypatch.setattr(
        delta_optimisation,
        "compute_deltas",
        lambda model, tok, requests, *a, **kw: (
            found.extend(r["case_id"] for r in requests),
            original(model, tok, requests, *a, **kw),
        )[1],
    )
    prepare(m.model, m.tokenizer, requests, hp, lambda items: (offered.append(items), items[1:])[1])
    assert [[r["case_id"] for r in items] for items in offered] == [[2, 3]]  # the missing, editable ones
    assert found == [3]  # this process's share


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_values_optimised_side_by_side_equal_one_at_a_time(which, request):
    """`compute_deltas` of several requests gives each the steps, loss and δ it gets alone, also
    when some stop early (their δ is taken at their own step while the others go on)."""
    m = request.getfixturevalue(which)
    requests = [
        *REQUESTS,
        empty_request(case_id=4, subject="Paris", prompt="Paris is the capital city of", target_new="Italy"),
    ]
    module = locate.layer_module_name(m.model, 1, "")  # MEMIT's place: a block's output
    prefixes = locate.context_prefixes(0, 2)

    def alone(hp):
        return [delta_optimisation.compute_delta(m.model, m.tokenizer, r, module, prefixes, hp) for r in requests]

    # stop between the requests' first losses: some stop at step 1, the others go on
    first = sorted(d.loss for d in alone(tiny_hp(v_num_grad_steps=1)))
    hp = tiny_hp(v_num_grad_steps=5, v_loss_stop=(first[1] + first[2]) / 2)
    singles = alone(hp)
    together = delta_optimisation.compute_deltas(m.model, m.tokenizer, requests, module, prefixes, hp)
    assert len({d.steps for d in singles}) > 1
    for one, side in zip(singles, together):
        assert one.steps == side.steps
        assert abs(one.loss - side.loss) < 1e-4 and abs(one.nll - side.nll) < 1e-4
        assert torch.allclose(one.init, side.init, atol=1e-5)
        assert torch.allclose(one.delta, side.delta, atol=1e-4)


def test_layers_scale_and_dedupe(tiny_llama):
    hp = get_method("memit").load_hparams(tiny_llama.model)  # llama family: layers 4-8 of 32
    assert hp.edit_layers(tiny_llama.model) == [0, 1]
    with pytest.raises(EditevalError, match="layer 12 does not exist"):
        tiny_hp(layers=[1, 12]).edit_layers(tiny_llama.model)


def test_bad_request_is_named(tiny_llama):
    bad = dict(REQUESTS[2], case_id=9, subject="Honda")
    with pytest.raises(EditevalError, match="request 9 .*Honda"):
        apply_memit(tiny_llama.model, tiny_llama.tokenizer, REQUESTS[:2] + [bad], tiny_hp())


@pytest.mark.needs_raw
def test_real_batch_on_smollm2(smollm2):
    """Two edits in one batch on the real model: before, the greedy answers are the true ones; after,
    both prompts and a paraphrase give the new targets while an unrelated prompt is unchanged; and
    `restore` gives back every tensor of the state dict bit for bit."""
    model, tok = smollm2.model, smollm2.tokenizer
    hp = get_method("memit").load_hparams(model, "smollm2-135m")
    hp.mom2_tokens = 4000  # small statistics keep the test fast; the edits still take
    paraphrase, keep = "Danielle Darrieux's mother tongue is", "The capital of Germany is"
    assert greedy(model, tok, REQUESTS[0]["prompt"]).startswith("French")
    assert greedy(model, tok, REQUESTS[1]["prompt"]).startswith("Paris")
    assert greedy(model, tok, paraphrase).startswith("French")
    kept = greedy(model, tok, keep)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    backup = apply_memit(model, tok, REQUESTS[:2], hp)
    try:
        assert sorted(backup) == [f"model.layers.{i}.mlp.down_proj.weight" for i in (3, 4, 5, 6, 7)]
        assert greedy(model, tok, REQUESTS[0]["prompt"]).startswith("English")
        assert greedy(model, tok, REQUESTS[1]["prompt"]).startswith("Rome")
        assert greedy(model, tok, paraphrase).startswith("English")
        assert greedy(model, tok, keep) == kept
    finally:
        restore(model, backup)
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
