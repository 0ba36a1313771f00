"""ROME — Rank-One Model Editing (Meng et al. 2022, "Locating and Editing Factual Associations
in GPT").

One edit = one rank-one update of the MLP output projection W (out × in) of one layer:

1. key k* (`locate.compute_keys`): mean over the context templates of the subject's last-token
   input to W;
2. value (`delta_optimisation.compute_delta`): δ added to W's output at the subject's last token, optimised
   so the model gives target_new (NLL over the templated prompts + KL on "{subject} is a" +
   weight decay; Adam, lr 0.5, ≤ 25 steps, stop when the loss < 0.05, ‖δ‖ ≤ 4‖W k‖);
3. update (as the reference code): u = C⁻¹k* / ‖C⁻¹k*‖ with C = E[k kᵀ] from Wikipedia
   (`editeval.methods.kit.key_stats`); W += (v* − W k)·uᵀ / (uᵀ k), where k is the bare prompt's key and
   v* = W k + δ, so W k becomes exactly v*. C's scale cancels. With mom2_adjustment off, C = I.

Requests are applied one after the other (each on the already edited model).
"""

from __future__ import annotations

from editeval.methods.base import Backup, register_method
from editeval.methods.kit.rank_one import ROMEHParams, edit_one, rank_one_update

__all__ = ["ROMEHParams", "apply_rome", "rank_one_update"]


@register_method("rome", hparams=ROMEHParams, batch=False, sequential=True, needs_subject=True)
def apply_rome(model, tokenizer, requests: list[dict], hparams: ROMEHParams) -> Backup:
    """Edit `model` in place, one rank-one update per request; returns the original weights."""
    backup: Backup = {}
    for request in requests:
        edit_one(model, tokenizer, request, hparams, backup)
    return backup
