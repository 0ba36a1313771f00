"""EMMET's equality-constrained batch update and R-ROME's rebuilt key: their algebra, and what each
edit writes into a tiny model."""

from __future__ import annotations

import pytest
import torch
from test_rome import DARRIEUX

from editeval.methods import restore
from editeval.methods.emmet import layer_update
from editeval.methods.kit import delta_optimisation, locate
from editeval.methods.r_rome import RROMEHParams, apply_r_rome
from editeval.methods.rome import apply_rome
from editeval.runtime.architectures import mlp_out_as_out_in, mlp_out_weight


@pytest.fixture(autouse=True)
def cache(small_raw, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EDITEVAL_RAW_DATA", str(small_raw))
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _system(d_in=10, d_out=4, n=3):
    torch.manual_seed(0)
    x = torch.randn(300, d_in)
    return torch.randn(n, d_in), torch.randn(n, d_out), x.T @ x / 300


def test_emmet_meets_the_constraints_at_the_least_cost():
    keys, resid, C = _system()
    upd = layer_update(keys, resid, C, weight=1.0, lam=0.0)
    assert torch.allclose(upd @ keys.T, resid.T, atol=1e-4)  # Ŵ K_E = V_E exactly without the ridge
    # the closed form R (KᵀC⁻¹K)⁻¹ KᵀC⁻¹ in float64
    K, Ci = keys.T.double(), torch.linalg.inv(C.double())
    expected = resid.T.double() @ torch.linalg.inv(K.T @ Ci @ K) @ K.T @ Ci
    assert torch.allclose(upd.double(), expected, atol=1e-5)
    # the ridge on D trades the constraints for a smaller update; one edit gets none (exact, as ROME)
    ridged = layer_update(keys, resid, C, weight=1.0, lam=10.0)
    assert not torch.allclose(ridged @ keys.T, resid.T, atol=1e-2)
    assert torch.allclose(layer_update(keys[:1], resid[:1], C, 1.0, 10.0) @ keys[0], resid[0], atol=1e-4)


def test_emmet_repeated_key_falls_back_to_the_pseudo_inverse(caplog):
    keys, resid, C = _system(n=1)
    twice, same = torch.cat([keys, keys]), torch.cat([resid, resid])
    with caplog.at_level("WARNING"):
        upd = layer_update(twice, same, C, weight=1.0, lam=0.0)
    assert torch.isfinite(upd).all() and torch.allclose(upd @ keys[0], resid[0], atol=1e-3)


def _tiny_hp():
    return RROMEHParams(
        layer=1, mom2_tokens=1000, mom2_max_len=128, v_num_grad_steps=4, context_short=2, context_long=2
    )


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_r_rome_maps_the_averaged_key_where_rome_maps_the_prompt_key(which, request):
    """ROME writes v* = W k + δ at the bare prompt's key k; R-ROME writes the same v* at the key k*
    averaged over the context prefixes (the key its direction is built from)."""
    m = request.getfixturevalue(which)
    model, tok, hp = m.model, m.tokenizer, _tiny_hp()
    module = locate.layer_module_name(model, 1, "mlp_out")
    prefixes = locate.context_prefixes(hp.context_short, hp.context_long)
    keys = locate.compute_keys(model, tok, [DARRIEUX], [1], prefixes, per_prefix=True)[1][0]
    k_star, k = keys.mean(0), keys[0]
    res = delta_optimisation.compute_delta(model, tok, DARRIEUX, module, prefixes, hp)
    _name, param = mlp_out_weight(model, 1)
    W = mlp_out_as_out_in(model, param).detach().clone()
    target = W @ k + res.delta
    for apply, key in ((apply_rome, k), (apply_r_rome, k_star)):
        backup = apply(model, tok, [DARRIEUX], hp)
        edited = mlp_out_as_out_in(model, param).detach()
        assert torch.allclose(edited @ key, target, atol=1e-4 * (1 + target.norm()))
        other = k_star if key is k else k
        assert not torch.allclose(edited @ other, target, atol=1e-3 * (1 + target.norm()))
        restore(model, backup)
    assert torch.equal(mlp_out_as_out_in(model, param), W)
