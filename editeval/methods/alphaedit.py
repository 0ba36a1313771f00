"""AlphaEdit — null-space constrained knowledge editing (Fang et al., ICLR 2025, arXiv 2410.02355).

MEMIT's edit (the same target values z, the same walk over the layers with the residual shared
out: `editeval.methods.kit.mass_values`), with each layer's update projected onto the null space
of the keys the model must keep, so that it cannot disturb them, and with the keys of earlier
edits of the same model kept in the objective:

    Δ = argmin ‖(W + ΔP) K₁ − V₁‖² + ‖ΔP‖² + ‖ΔP K_p‖²
    ΔW = Δ P = R K₁ᵀ P (K_p K_pᵀ P + K₁ K₁ᵀ P + α I)⁻¹                      (paper, eq. 14)

computed as the authors' code does, as one solve on the transposed system:
ΔWᵀ = solve(P (K₁K₁ᵀ + K_pK_pᵀ) + α I, P K₁ Rᵀ). K₁ (d_in × N) are this batch's keys, R the
residual share of the layer (d_out × N), K_pK_pᵀ the sum over the earlier edits of this model of
their keys' K Kᵀ (accumulated after each edit: `editeval.methods.kit.edit_state`, saved and
reloaded with a sequential run), α = `l2` (the authors' ``L2``) and P the projection onto the null
space of C = E[k kᵀ] over Wikipedia (`editeval.methods.kit.null_space`: the eigenvectors whose
eigenvalue is below `nullspace_threshold`, cached). There is no λC term: P plays its part.

The keys of a batch are the ones `spread_over_layers` computes at each layer before updating it;
they equal the keys of the fully edited model (no later layer feeds an earlier one), which is
what the authors' code recomputes after the edit to accumulate K_pK_pᵀ.

Settings for SmolLM2-135M (preset): MEMIT's layers 3-7; the authors' threshold 2e-2 (at layer 7
of SmolLM2 it keeps 1,017 of 1,536 directions: C's eigenvalues run from 0.004 to 1.66, median
0.014) and α = 10 (their LLaMA-3 value); the value settings as MEMIT's preset.
"""

from __future__ import annotations

import torch

from editeval.methods.base import Backup, register_method
from editeval.methods.kit import edit_state, locate
from editeval.methods.kit.mass_values import ValueHParams, precompute_values, spread_over_layers
from editeval.methods.kit.null_space import projections


class AlphaEditHParams(ValueHParams):
    nullspace_threshold: float = 2e-2
    l2: float = 10.0  # α: the weight of ‖ΔP‖² (the authors' L2)


def _state_name(layer: int) -> str:
    return f"alphaedit.prev_kkt.layer{layer}"


def layer_update(
    keys: torch.Tensor, resid: torch.Tensor, projection: torch.Tensor, prev_kkt: torch.Tensor | None, l2: float
) -> torch.Tensor:
    """ΔW (d_out, d_in) for keys (N, d_in), residuals (N, d_out), P (d_in, d_in) and the earlier
    edits' K Kᵀ (d_in, d_in, or None before the first edit)."""
    K = keys.T
    kkt = K @ K.T if prev_kkt is None else K @ K.T + prev_kkt
    eye = torch.eye(K.shape[0], dtype=K.dtype, device=K.device)
    return torch.linalg.solve(projection @ kkt + l2 * eye, projection @ K @ resid).T


@register_method(
    "alphaedit", hparams=AlphaEditHParams, batch=True, sequential=True, needs_subject=True, prepare=precompute_values
)
def apply_alphaedit(model, tokenizer, requests: list[dict], hparams: AlphaEditHParams) -> Backup:
    """Edit `model` in place with all `requests` at once; returns the original weights and undoes
    the accumulated keys with them."""
    if not requests:
        return Backup()
    for request in requests:  # before the projections, which may take minutes to build
        locate.check_request(tokenizer, request)
    layers = hparams.edit_layers(model)
    P = projections(
        model, tokenizer, layers, hparams.nullspace_threshold, tokens=hparams.mom2_tokens, max_len=hparams.mom2_max_len
    )
    new_kkt: dict[int, torch.Tensor] = {}

    def layer_delta(_i: int, layer: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        prev = edit_state.get(model, _state_name(layer))
        dev = keys.device
        new_kkt[layer] = keys.T @ keys
        return layer_update(
            keys, resid, P[layer].to(dev), None if prev is None else prev.to(dev, torch.float32), hparams.l2
        )

    backup = spread_over_layers(model, tokenizer, requests, hparams, layer_delta)
    for layer, kkt in new_kkt.items():  # the keys this edit must keep from now on
        prev = edit_state.get(model, _state_name(layer))
        edit_state.put(model, _state_name(layer), kkt if prev is None else prev + kkt, backup)
    return backup
