"""What the MEMIT family shares (MEMIT, AlphaEdit, EMMET): the hyper-parameters of the target values,
the values themselves, cached per request, and the walk over the edited layers.

1. for each request, z = h + δ at the last edited layer's block output (subject's last token of
   the bare prompt), δ optimised as in ROME (`delta_optimisation.compute_deltas`, placed at the
   block; `VALUE_BATCH` requests side by side, each with its own loss, steps and δ);
2. `spread_over_layers`: for each layer l_i in order (lowest first), K = the requests' keys at l_i
   (mean over context templates, `locate.compute_keys`, computed with the layers below already
   updated) and R = (z − h_current) / (R − i), the residual still missing at the last layer shared
   out over the layers left; the method turns (K, R) into the layer's ΔW.

The values are the costly part of a mass edit (one δ optimisation per request), so each z is
written to the cache (`<cache>/memit-values/<weights fingerprint>-<settings>/`) as soon as it is
found: an interrupted 10,000-edit batch, a λ sweep over the same requests, or another method of
the family on the same weights starts from them. The key holds the fingerprint of the weights being
edited, so a sequential run's later batches (edited weights) never reuse values found on other weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import Field
from tqdm.auto import tqdm

from editeval.errors import EditevalError
from editeval.methods.base import Backup, HParams, backup_parameters, check_editable
from editeval.methods.kit import delta_optimisation, locate
from editeval.runtime import distributed
from editeval.runtime.architectures import (
    check_layer,
    layer_module_name,
    mlp_out_as_out_in,
    mlp_out_weight,
    num_layers,
)
from editeval.runtime.paths import atomic_file, cache_dir

log = logging.getLogger(__name__)


class ValueHParams(HParams):
    """The edited layers and how the target values are found (MEMIT's compute_z settings)."""

    layers: list[int] = Field(default_factory=lambda: [3, 4, 5, 6, 7])
    context_short: int = 0
    context_long: int = 5
    v_num_grad_steps: int = 25
    v_lr: float = 0.5
    v_loss_stop: float = 0.05
    v_weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    mom2_tokens: int = 100_000
    mom2_max_len: int = 1024
    batch_size: int = 32  # texts per forward when gathering keys / outputs

    def edit_layers(self, model) -> list[int]:
        n = num_layers(model)
        out: list[int] = []
        name = type(self).__name__.removesuffix("HParams")
        for layer in self.layers:
            try:
                scaled = check_layer(model, self.scale_layer(layer, n))
            except EditevalError as err:
                raise EditevalError(f"{name} preset: {err}") from None
            if scaled not in out:
                out.append(scaled)
        if not out:
            raise EditevalError(f"{name} preset: no layers given")
        return sorted(out)


VALUE_SETTINGS = (
    "context_short",
    "context_long",
    "v_num_grad_steps",
    "v_lr",
    "v_loss_stop",
    "v_weight_decay",
    "clamp_norm_factor",
    "kl_factor",
)


# Requests whose δ are optimised side by side (`delta_optimisation.compute_deltas`). Not a hyper-parameter: each
# request gets the δ it gets alone. On SmolLM2-135M (1 CPU thread) 4-16 at once take ~1.3x less time
# per value than one at a time (wider matrix products); memory grows with it (~8x one request's).
VALUE_BATCH = 8


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ValueStore:
    """The z (init + δ) of each request on one set of weights, one small safetensors file each."""

    def __init__(self, model, z_module: str, prefixes: list[str], hparams: ValueHParams):
        from editeval.runtime.models import weights_fingerprint

        settings = {k: getattr(hparams, k) for k in VALUE_SETTINGS}
        key = _digest({"module": z_module, "prefixes": prefixes, "settings": settings})
        self.folder = cache_dir() / "memit-values" / f"{weights_fingerprint(model)}-{key}"

    def _path(self, request: dict) -> Path:
        fields = {k: request.get(k) for k in ("prompt", "subject", "target_new")}
        return self.folder / f"{_digest(fields)}.safetensors"

    def has(self, request: dict) -> bool:
        return self._path(request).exists()

    def get(self, request: dict) -> torch.Tensor | None:
        from safetensors.torch import load_file

        path = self._path(request)
        return load_file(path)["z"] if path.exists() else None

    def put(self, request: dict, z: torch.Tensor) -> None:
        from safetensors.torch import save_file

        atomic_file(self._path(request), lambda tmp: save_file({"z": z.detach().float().cpu().contiguous()}, tmp))


def target_values(
    model,
    tokenizer,
    requests: list[dict],
    hparams: ValueHParams,
    store: ValueStore | None,
    z_module: str,
    prefixes: list[str],
) -> torch.Tensor:
    """z = h + δ per request at the last edited layer's output (N, d_model) on the CPU; from the
    store when it holds it, else optimised (and put there as each group is done). Requests not
    cached are optimised `VALUE_BATCH` at a time (`delta_optimisation.compute_deltas`: each gets the δ it
    gets alone), grouped by the length of what follows the subject so that little is padding."""
    zs: dict[int, torch.Tensor] = {}
    missing = []
    for i, request in enumerate(requests):
        z_one = store.get(request) if store else None
        if z_one is None:
            missing.append(i)
        else:
            zs[i] = z_one.float().cpu()  # cached ones are read on the CPU
    missing.sort(key=lambda i: locate.suffix_length(tokenizer, requests[i]))
    # (several processes: the main process's bar stands for all, as for the edits)
    bar = tqdm(
        total=len(missing),
        desc="values",
        unit="edit",
        leave=False,
        disable=len(missing) < 2 or not distributed.is_main_process(),
    )
    for start in range(0, len(missing), VALUE_BATCH):
        group = missing[start : start + VALUE_BATCH]
        found = delta_optimisation.compute_deltas(
            model, tokenizer, [requests[i] for i in group], z_module, prefixes, hparams
        )
        for i, d in zip(group, found):
            zs[i] = (d.init + d.delta).float().cpu()
            if store:
                store.put(requests[i], zs[i])
        bar.update(len(group))
    bar.close()
    return torch.stack([zs[i] for i in range(len(requests))])


def z_site(model, hparams: ValueHParams) -> tuple[list[int], str, list[str]]:
    """The edited layers, the module whose output holds z (the last layer's block) and the context prefixes."""
    layers = hparams.edit_layers(model)
    return (
        layers,
        layer_module_name(model, layers[-1], ""),
        locate.context_prefixes(hparams.context_short, hparams.context_long),
    )


def precompute_values(
    model, tokenizer, requests: list[dict], hparams: ValueHParams, share: Callable[[list], list]
) -> None:
    """Find and cache this process's share of the z of a batch not cached yet (a data-parallel batch
    run's processes share the values out this way before each applies the whole batch from the
    cache; sharing out only the missing ones keeps a resumed run's processes equally busy). A
    request that cannot be edited is left out: the method's `apply` reports it."""

    def editable(request: dict) -> bool:
        try:
            locate.check_request(tokenizer, request)
            return True
        except EditevalError:
            return False

    _layers, z_module, prefixes = z_site(model, hparams)
    store = ValueStore(model, z_module, prefixes, hparams)
    missing = [r for r in requests if editable(r) and not store.has(r)]
    ours = share(missing)
    if ours:
        target_values(model, tokenizer, ours, hparams, store, z_module, prefixes)


# layer_delta(i, layer, keys (N, d_in), resid (N, d_out)) -> ΔW (d_out, d_in), all float32 where the layer lives
LayerDelta = Callable[[int, int, torch.Tensor, torch.Tensor], torch.Tensor]


def spread_over_layers(
    model, tokenizer, requests: list[dict], hparams: ValueHParams, layer_delta: LayerDelta
) -> Backup:
    """Edit `model` in place: find the requests' values (cached when there are several) and walk the
    edited layers lowest first, adding `layer_delta`'s update to each; returns the original weights."""
    for request in requests:
        locate.check_request(tokenizer, request)
    layers, z_module, prefixes = z_site(model, hparams)
    names = [mlp_out_weight(model, layer)[0] for layer in layers]
    check_editable(model, names)
    store = ValueStore(model, z_module, prefixes, hparams) if len(requests) > 1 else None
    z = target_values(model, tokenizer, requests, hparams, store, z_module, prefixes)
    bare = [locate.locate(tokenizer, r) for r in requests]
    backup = backup_parameters(model, names)
    for i, layer in enumerate(layers):
        _name, param = mlp_out_weight(model, layer)
        keys = locate.compute_keys(model, tokenizer, requests, [layer], prefixes, hparams.batch_size)[layer]
        cur = locate.gather_at_subject(model, tokenizer, bare, [z_module], inputs=False, batch_size=hparams.batch_size)[
            z_module
        ]
        dev = param.device  # float32 algebra where the layer lives (a device map may spread layers)
        resid = (z.to(dev, torch.float32) - cur.to(dev, torch.float32)) / (len(layers) - i)
        upd = layer_delta(i, layer, keys.to(dev, torch.float32), resid)
        with torch.no_grad():
            mlp_out_as_out_in(model, param).add_(upd.to(param.dtype))
        log.debug("layer %d: |resid| %.3f |upd| %.3f", layer, resid.norm(dim=1).mean(), upd.norm())
    return backup
