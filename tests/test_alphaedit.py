"""AlphaEdit: the null-space projection, the update's algebra, the earlier edits' keys carried from
edit to edit (undone with an edit, saved and reloaded by a sequential run), a real batch on SmolLM2."""

from __future__ import annotations

import pytest
import torch
from _generation import greedy
from test_memit import REQUESTS  # the same three facts

from editeval.methods import get_method, restore
from editeval.methods.alphaedit import AlphaEditHParams, apply_alphaedit, layer_update
from editeval.methods.kit import edit_state
from editeval.methods.kit.null_space import null_space_projection, projections


def tiny_hp(**kw):
    values = {"layers": [1, 2], "mom2_tokens": 1000, "mom2_max_len": 128, "v_num_grad_steps": 5, "context_long": 2}
    return AlphaEditHParams(**{**values, **kw})


@pytest.fixture(autouse=True)
def cache(request, small_raw, tmp_path_factory, monkeypatch):
    if request.node.get_closest_marker("needs_raw") is None:
        monkeypatch.setenv("EDITEVAL_RAW_DATA", str(small_raw))
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _covariance(d: int, n: int = 400) -> torch.Tensor:
    """A key second moment with a few strong directions and many weak ones."""
    torch.manual_seed(0)
    scales = torch.cat([torch.full((4,), 3.0), torch.full((d - 4,), 0.05)])
    x = torch.randn(n, d) * scales
    return x.T @ x / n


def test_projection_keeps_exactly_the_weak_directions():
    C = _covariance(12)
    P = null_space_projection(C, threshold=0.05)
    values, vectors = torch.linalg.eigh(C.double())
    weak = int((values < 0.05).sum())
    assert 0 < weak < 12
    assert torch.allclose(P, P.T, atol=1e-6) and torch.allclose(P @ P, P, atol=1e-5)
    assert round(P.trace().item()) == weak
    strong = vectors[:, values >= 0.05].float()
    assert torch.allclose(P @ strong, torch.zeros_like(strong), atol=1e-5)


def test_update_solves_the_projected_normal_equations_and_spares_the_kept_keys():
    torch.manual_seed(1)
    d_in, d_out, n = 12, 5, 3
    P = null_space_projection(_covariance(d_in), threshold=0.05)
    keys, resid = torch.randn(n, d_in), torch.randn(n, d_out)
    prev = torch.randn(d_in, 2) @ torch.randn(2, d_in)
    prev = prev @ prev.T
    upd = layer_update(keys, resid, P, prev, l2=0.5)
    # the authors' system: (P (K Kᵀ + K_p K_pᵀ) + α I) ΔWᵀ = P K Rᵀ
    lhs = (P @ (keys.T @ keys + prev) + 0.5 * torch.eye(d_in)) @ upd.T
    assert torch.allclose(lhs, P @ keys.T @ resid, atol=1e-4)
    # ΔW = ΔW P: a key in the preserved directions is mapped as before
    kept = (torch.eye(d_in) - P) @ torch.randn(d_in)
    assert upd.abs().max() > 1e-3 and (upd @ kept).abs().max() < 1e-4


def _kkt(model, layer):
    value = edit_state.get(model, f"alphaedit.prev_kkt.layer{layer}")
    return None if value is None else value.clone()


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_earlier_keys_accumulate_and_are_undone_with_the_edit(which, request):
    m = request.getfixturevalue(which)
    hp = tiny_hp()
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    first = apply_alphaedit(m.model, m.tokenizer, REQUESTS[:2], hp)
    after_first = _kkt(m.model, 2)
    second = apply_alphaedit(m.model, m.tokenizer, REQUESTS[2:], hp)
    after_second = _kkt(m.model, 2)
    assert sorted(first) == sorted(second) and len(first) == 2
    # each edit adds its keys' K Kᵀ (rank = its number of requests) to what the layer must keep
    assert torch.linalg.matrix_rank(after_first.double(), rtol=1e-4).item() == 2
    assert torch.linalg.matrix_rank((after_second - after_first).double(), rtol=1e-4).item() == 1
    restore(m.model, second)
    assert torch.equal(_kkt(m.model, 2), after_first)
    restore(m.model, first)
    assert _kkt(m.model, 1) is None and _kkt(m.model, 2) is None
    assert all(torch.equal(v, before[k]) for k, v in m.model.state_dict().items())


def test_next_edit_spares_the_earlier_keys(tiny_llama):
    """With the first edit's keys kept (K_p K_pᵀ in the system), the second edit's change maps them
    to (almost) nothing; forgetting them, the same edit moves them."""
    m, hp = tiny_llama, tiny_hp(l2=1e-6)  # a weak ridge: the kept keys, not α, hold the first edit
    name = "model.layers.2.mlp.down_proj.weight"
    original = m.model.get_parameter(name).detach().clone()
    first = apply_alphaedit(m.model, m.tokenizer, REQUESTS[:1], hp)
    edited = m.model.get_parameter(name).detach().clone()
    kkt = _kkt(m.model, 2)  # k₁k₁ᵀ: ΔW k₁ = 0 exactly when ΔW k₁k₁ᵀ = 0

    def second_change(forget: bool) -> torch.Tensor:
        backup = first.__class__()
        if forget:
            for layer in (1, 2):
                edit_state.put(m.model, f"alphaedit.prev_kkt.layer{layer}", torch.zeros_like(kkt), backup)
        second = apply_alphaedit(m.model, m.tokenizer, REQUESTS[1:2], hp)
        change = m.model.get_parameter(name).detach() - edited
        restore(m.model, second)
        restore(m.model, backup)
        return change

    kept, forgotten = second_change(False), second_change(True)
    restore(m.model, first)
    assert torch.equal(m.model.get_parameter(name), original)
    assert (kept @ kkt).norm() < 0.01 * (forgotten @ kkt).norm()


def test_projection_is_cached(tiny_llama, caplog):
    m = tiny_llama
    first = projections(m.model, m.tokenizer, [1], 0.02, tokens=1000, max_len=128)[1]
    with caplog.at_level("INFO", logger="editeval.methods.kit.null_space"):
        again = projections(m.model, m.tokenizer, [1], 0.02, tokens=1000, max_len=128)[1]
        other = projections(m.model, m.tokenizer, [1], 0.5, tokens=1000, max_len=128)[1]
    assert torch.equal(first, again)
    assert [r.message for r in caplog.records if "null space" in r.message] == [
        f"null space of layer 1 below 0.5: {round(other.trace().item())} of {other.shape[0]} directions"
    ]


@pytest.mark.needs_raw
def test_real_batch_on_smollm2(smollm2):
    """Two edits in one batch on the real model take (prompt and paraphrase) and an unrelated
    prompt keeps its answer; `restore` gives back every tensor bit for bit."""
    model, tok = smollm2.model, smollm2.tokenizer
    hp = get_method("alphaedit").load_hparams(model, "smollm2-135m")
    hp.mom2_tokens = 4000  # small statistics keep the test fast; the edits still take
    paraphrase, keep = "Danielle Darrieux's mother tongue is", "The capital of Germany is"
    kept = greedy(model, tok, keep)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    backup = apply_alphaedit(model, tok, REQUESTS[:2], hp)
    try:
        assert greedy(model, tok, REQUESTS[0]["prompt"]).startswith("English")
        assert greedy(model, tok, REQUESTS[1]["prompt"]).startswith("Rome")
        assert greedy(model, tok, paraphrase).startswith("English")
        assert greedy(model, tok, keep) == kept
    finally:
        restore(model, backup)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
