"""R-ROME — ROME rebuilt (Gupta, Baskaran & Anumanchipalli 2024, "Rebuilding ROME: Resolving Model
Collapse during Sequential Model Editing", arXiv 2403.07175).

ROME's update (`editeval.methods.rome`) uses two keys: the direction u ∝ C⁻¹k* comes from the key
k* averaged over the context-template prefixes, while the denominator and the residual use the
bare prompt's key k:

    ROME:    Ŵ = W + (v* − W k)(C⁻¹k*)ᵀ / ((C⁻¹k*)ᵀ k)
    R-ROME:  Ŵ = W + (v* − W k*)(C⁻¹k*)ᵀ / ((C⁻¹k*)ᵀ k*)

The mismatch makes some of ROME's updates huge (a small (C⁻¹k*)ᵀk), which in sequential editing
collapses the model; R-ROME uses k* everywhere. As in the authors' code (rebuilding-rome,
`enable_random_prefix_keys`), the target v* stays the bare prompt's output plus the optimised δ,
so the residual is v* − W k* = δ + W (k − k*). Everything else is ROME's: one layer, one request
at a time, the same value optimisation and key statistics (C⁻¹ on, as in the authors' settings;
EasyEdit's presets turn it off).

Settings for SmolLM2-135M: ROME's preset (layer 7, up to 50 value steps; see hparams/rome).
"""

from __future__ import annotations

from editeval.methods.base import Backup, register_method
from editeval.methods.kit.rank_one import ROMEHParams, edit_one


class RROMEHParams(ROMEHParams):
    pass


@register_method("r-rome", hparams=RROMEHParams, batch=False, sequential=True, needs_subject=True)
def apply_r_rome(model, tokenizer, requests: list[dict], hparams: RROMEHParams) -> Backup:
    """Edit `model` in place, one rebuilt rank-one update per request; returns the original weights."""
    backup: Backup = Backup()
    for request in requests:
        edit_one(model, tokenizer, request, hparams, backup, rebuilt=True)
    return backup
