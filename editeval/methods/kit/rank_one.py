"""ROME's rank-one edit of one layer, shared by ROME and R-ROME (`editeval.methods.rome` has the
equations; `editeval.methods.r_rome` what the rebuilt variant changes)."""

from __future__ import annotations

import logging

import torch

from editeval.errors import EditevalError
from editeval.methods.base import Backup, HParams, backup_parameters, check_editable
from editeval.methods.kit import delta_optimisation, locate
from editeval.methods.kit.key_stats import second_moment
from editeval.runtime.architectures import (
    check_layer,
    layer_module_name,
    mlp_out_as_out_in,
    mlp_out_weight,
    num_layers,
)

log = logging.getLogger(__name__)


class ROMEHParams(HParams):
    layer: int = 4
    # context templates: the bare prompt + this many short (~5 tokens) and long (~10 tokens) prefixes
    context_short: int = 10
    context_long: int = 10
    # value optimisation (compute_v)
    v_num_grad_steps: int = 25
    v_lr: float = 0.5
    v_loss_stop: float = 0.05
    v_weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    # key second moments (editeval.methods.kit.key_stats)
    mom2_adjustment: bool = True
    mom2_tokens: int = 100_000
    mom2_max_len: int = 1024

    def edit_layer(self, model) -> int:
        layer = self.scale_layer(self.layer, num_layers(model))
        try:
            return check_layer(model, layer)
        except EditevalError as err:
            raise EditevalError(f"ROME preset: {err}") from None


def rank_one_update(
    key_star: torch.Tensor, key: torch.Tensor, delta: torch.Tensor, mom2: torch.Tensor | None
) -> torch.Tensor:
    """ΔW (out × in, float32) that maps `key` to W key + delta along u ∝ C⁻¹ key_star."""
    u = key_star if mom2 is None else torch.linalg.solve(mom2, key_star)
    u = u / u.norm()
    denom = torch.dot(key, u)
    return torch.outer(delta / denom, u)


def edit_one(model, tokenizer, request: dict, hp: ROMEHParams, backup: Backup, rebuilt: bool = False) -> dict:
    """One rank-one update. `rebuilt` (R-ROME): the prefix-averaged key k* also in the denominator
    and the residual, W k* ↦ v* (see `editeval.methods.r_rome`); else ROME's bare-prompt key there."""
    layer = hp.edit_layer(model)
    name, param = mlp_out_weight(model, layer)
    check_editable(model, [name])
    module = layer_module_name(model, layer, "mlp_out")
    prefixes = locate.context_prefixes(hp.context_short, hp.context_long)
    locate.check_request(tokenizer, request)
    mom2 = None
    if hp.mom2_adjustment:
        mom2 = second_moment(model, tokenizer, layer, tokens=hp.mom2_tokens, max_len=hp.mom2_max_len)
    keys = locate.compute_keys(model, tokenizer, [request], [layer], prefixes, per_prefix=True)[layer][0]
    key_star, key = keys.mean(0), keys[0]  # prefixes[0] is the bare prompt
    res = delta_optimisation.compute_delta(model, tokenizer, request, module, prefixes, hp)
    dev = param.device  # float32 algebra where the layer lives (a device map may spread layers)
    key_star, key, delta = (t.to(dev, torch.float32) for t in (key_star, key, res.delta))
    if rebuilt:  # v* − W k* = (W k + δ) − W k*: the target is the bare prompt's output + δ
        weight = mlp_out_as_out_in(model, param).to(torch.float32)
        delta, key = delta + weight @ (key - key_star), key_star
    upd = rank_one_update(key_star, key, delta, None if mom2 is None else mom2.to(dev, torch.float32))
    backup_parameters(model, [name], backup)
    with torch.no_grad():
        mlp_out_as_out_in(model, param).add_(upd.to(param.dtype))
    log.debug("ROME layer %d: %d steps, loss %.3f, |delta| %.2f", layer, res.steps, res.loss, res.delta.norm())
    return {"layer": layer, "steps": res.steps, "loss": res.loss, "nll": res.nll}
