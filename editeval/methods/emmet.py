"""EMMET — Equality-constrained Mass Model Editing in a Transformer (Gupta, Sajnani &
Anumanchipalli 2024, "A Unified Framework for Model Editing", arXiv 2403.14236).

ROME's objective, preservation of the keys C = E[k kᵀ] under *equality* constraints, solved for a
whole batch at once (ROME is EMMET with one edit; MEMIT is the same objective with the constraints
relaxed to a least-squares term):

    min ‖(Ŵ − W) C^½‖   subject to   Ŵ K_E = V_E
    ΔW = R (K_Eᵀ (wC)⁻¹ K_E + λ I)⁻¹ K_Eᵀ (wC)⁻¹

K_E (d_in × N) are the batch's keys, R = V_E − W K_E their residuals (the share of this layer:
`editeval.methods.kit.mass_values`, which also finds the target values as MEMIT does), w =
`mom2_update_weight` and λ = `emmet_lambda`, the ridge the authors add to the N × N matrix
D = K_Eᵀ (wC)⁻¹ K_E when the batch has more than one edit, because D becomes ill-conditioned as the
batch grows (two edits with close keys). As in the authors' code the algebra is in float64 and a
D that cannot be solved falls back to the pseudo-inverse; C⁻¹K_E is a solve, not an inverse.

Settings for SmolLM2-135M (preset): one layer, ROME's layer 7 (the authors use ROME's single layer
for each model); the authors' LLaMA-2 settings (w = 1, λ = 0.1, clamp 4, weight decay 1e-3), with
up to 50 value steps as ROME's SmolLM2 preset (hard multi-token ZsRE targets need them) and MEMIT's
context templates (the authors' EMMET computes the values and keys with MEMIT's code).
"""

from __future__ import annotations

import logging

import torch
from pydantic import Field

from editeval.methods.base import Backup, register_method
from editeval.methods.kit import locate
from editeval.methods.kit.key_stats import second_moments
from editeval.methods.kit.mass_values import ValueHParams, precompute_values, spread_over_layers

log = logging.getLogger(__name__)


class EMMETHParams(ValueHParams):
    layers: list[int] = Field(default_factory=lambda: [7])
    mom2_update_weight: float = 1.0
    emmet_lambda: float = 0.1


def layer_update(
    keys: torch.Tensor, resid: torch.Tensor, mom2: torch.Tensor, weight: float, lam: float
) -> torch.Tensor:
    """ΔW (d_out, d_in) that maps each key (N, d_in) exactly to W k + its residual (N, d_out) at
    the least cost in ‖ΔW C^½‖ (with the ridge λ on D for N > 1)."""
    K, R, C = keys.T.double(), resid.double(), weight * mom2.double()
    cinv_k = torch.linalg.solve(C, K)  # (d_in, N)
    D = K.T @ cinv_k
    if D.shape[0] > 1:
        D = D + lam * torch.eye(D.shape[0], dtype=D.dtype, device=D.device)
    try:
        coef = torch.linalg.solve(D, cinv_k.T)  # (N, d_in)
    except RuntimeError:  # singular D (e.g. the same key twice without a ridge)
        log.warning("EMMET: D is singular, using its pseudo-inverse")
        coef = torch.linalg.pinv(D) @ cinv_k.T
    return (R.T @ coef).to(torch.float32)


@register_method(
    "emmet", hparams=EMMETHParams, batch=True, sequential=True, needs_subject=True, prepare=precompute_values
)
def apply_emmet(model, tokenizer, requests: list[dict], hparams: EMMETHParams) -> Backup:
    """Edit `model` in place with all `requests` at once; returns the original weights."""
    if not requests:
        return Backup()
    for request in requests:  # before the statistics, which may take minutes to build
        locate.check_request(tokenizer, request)
    layers = hparams.edit_layers(model)
    mom2 = second_moments(model, tokenizer, layers, tokens=hparams.mom2_tokens, max_len=hparams.mom2_max_len)

    def layer_delta(_i: int, layer: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        C = mom2[layer].to(keys.device)
        return layer_update(keys, resid, C, hparams.mom2_update_weight, hparams.emmet_lambda)

    return spread_over_layers(model, tokenizer, requests, hparams, layer_delta)
