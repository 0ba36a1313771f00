"""MEMIT — Mass-Editing Memory in a Transformer (Meng et al. 2023).

Many edits at once, spread over the MLP output projections of a range of layers L = [l₁..l_R]
(`editeval.methods.kit.mass_values`: the target values z, cached per request, and the walk over the
layers). At each layer l_i, with K the requests' keys and R the share of the residual still missing:

    ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹,  C = E[k kᵀ] at l_i (`editeval.methods.kit.key_stats`), λ = mom2_update_weight

computed as a solve, never an explicit inverse: ΔW = R · solve(λC + KKᵀ, K)ᵀ.

Memory grows as (d_in + d_out) × N for N edits (10,000 edits of SmolLM2: ~90 MB) plus one
d_in × d_in system; keys and residuals are gathered in batches. Mass edits are resumable: the values
are cached as they are found (see `mass_values`).
"""

from __future__ import annotations

import torch

from editeval.methods.base import Backup, register_method
from editeval.methods.kit import locate
from editeval.methods.kit.key_stats import second_moments
from editeval.methods.kit.mass_values import ValueHParams, precompute_values, spread_over_layers


class MEMITHParams(ValueHParams):
    mom2_update_weight: float = 15000.0


def layer_update(keys: torch.Tensor, resid: torch.Tensor, mom2: torch.Tensor, weight: float) -> torch.Tensor:
    """ΔW = resid · solve(λC + KKᵀ, K)ᵀ for keys (N, d_in) and residuals (N, d_out): (d_out, d_in)."""
    K = keys.T  # (d_in, N)
    A = weight * mom2 + K @ K.T
    adj = torch.linalg.solve(A, K)  # (d_in, N)
    return resid.T @ adj.T


@register_method(
    "memit", hparams=MEMITHParams, batch=True, sequential=True, needs_subject=True, prepare=precompute_values
)
def apply_memit(model, tokenizer, requests: list[dict], hparams: MEMITHParams) -> Backup:
    """Edit `model` in place with all `requests` at once; returns the original weights."""
    if not requests:
        return {}
    for request in requests:  # before the statistics, which may take minutes to build
        locate.check_request(tokenizer, request)
    layers = hparams.edit_layers(model)
    mom2 = second_moments(model, tokenizer, layers, tokens=hparams.mom2_tokens, max_len=hparams.mom2_max_len)

    def layer_delta(_i: int, layer: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        return layer_update(keys, resid, mom2[layer].to(keys.device, torch.float32), hparams.mom2_update_weight)

    return spread_over_layers(model, tokenizer, requests, hparams, layer_delta)
