"""The projection onto the null space of the keys a layer must keep (AlphaEdit, Fang et al. 2025).

With C = E[k kᵀ] the layer's key second moment over Wikipedia text (`editeval.methods.kit.key_stats`),
C = U Λ Uᵀ, the directions whose eigenvalue is below `threshold` are the ones the preserved keys
hardly use: P = Û Ûᵀ over those columns of U. An update ΔW with ΔW P = ΔW leaves W k unchanged for
every key k in the span of the others, so it does not disturb what the model already knows.

P is d_in × d_in; it is computed once per (weights, layer, statistics settings, threshold) and
cached under `cache_dir()/projections/`, beside the statistics it is made from.
"""

from __future__ import annotations

import logging

import torch

from editeval.methods.kit.key_stats import cache_paths, second_moments
from editeval.methods.kit.key_stats_files import read_metadata, save_atomic
from editeval.runtime.paths import cache_dir

log = logging.getLogger(__name__)


def null_space_projection(mom2: torch.Tensor, threshold: float) -> torch.Tensor:
    """P = Û Ûᵀ, Û the eigenvectors of the symmetric `mom2` with eigenvalue < `threshold` (float32)."""
    values, vectors = torch.linalg.eigh(mom2.to(torch.float64))
    kept = vectors[:, values < threshold]
    return (kept @ kept.T).to(torch.float32)


def projections(
    model, tokenizer, layers: list[int], threshold: float, *, tokens: int, max_len: int
) -> dict[int, torch.Tensor]:
    """P per layer (float32, on the device of that layer's statistics), from the cache when it is there."""
    stats = cache_paths(model, layers, tokens=tokens, max_len=max_len)
    out: dict[int, torch.Tensor] = {}
    missing = []
    for layer in layers:
        found = _load(_path(stats[layer].name, threshold), {"threshold": repr(threshold), "stats": stats[layer].name})
        if found is None:
            missing.append(layer)
        else:
            out[layer] = found
    if missing:
        mom2 = second_moments(model, tokenizer, missing, tokens=tokens, max_len=max_len)
        for layer in missing:
            P = null_space_projection(mom2[layer], threshold).to(mom2[layer].device)
            rank = int(round(P.trace().item()))
            log.info("null space of layer %d below %g: %d of %d directions", layer, threshold, rank, P.shape[0])
            meta = {"threshold": repr(threshold), "stats": stats[layer].name, "rank": str(rank)}
            save_atomic(_path(stats[layer].name, threshold), {"projection": P}, meta)
            out[layer] = P
    return out


def _path(stats_name: str, threshold: float):
    return cache_dir() / "projections" / f"{stats_name.removesuffix('.safetensors')}__null{threshold!r}.safetensors"


def _load(path, expected: dict[str, str]) -> torch.Tensor | None:
    """The cached projection, or None when it is absent or not the one wanted (then it is recomputed)."""
    from safetensors.torch import load_file

    if not path.exists():
        return None
    try:
        meta = read_metadata(path)
        if any(meta.get(key) != value for key, value in expected.items()):
            return None
        return load_file(str(path))["projection"]
    except Exception as err:  # EditevalError, SafetensorError, KeyError...: a truncated or foreign file
        log.warning("ignoring projection file %s: %s (recomputing)", path, err)
        return None
