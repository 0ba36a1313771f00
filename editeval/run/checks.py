"""Checks of a run before its work starts: refusals shared by the edit pipeline (`editing`) and
checkpoint scoring (`scoring`), and the edit pipeline's checks of hyper-parameters and requests."""

from __future__ import annotations

from pathlib import Path

import torch

from editeval.errors import EditevalError
from editeval.methods.base import Method


def check_device_map_alone(group, device_map: str | None) -> None:
    """A model spread over the devices (--device-map) is one replica: it does not combine with
    data-parallel processes (`group`, from `distributed.setup`), which each hold their own."""
    if group is not None and device_map not in (None, "none"):
        raise EditevalError(
            "--device-map spreads one model over the devices; it does not combine with several processes "
            "(each process holds its own replica): launch one process, or leave out --device-map"
        )


def check_record_path(out: Path) -> None:
    """A results record is written as ``<name>.json`` (its rows go next to it)."""
    if out.suffix != ".json":
        raise EditevalError(f"--out {out}: the results record must be a .json path")


def check_hparams_layers(model: torch.nn.Module, hparams) -> None:
    """A preset naming a layer the model does not have fails before any edit is tried."""
    from editeval.runtime.architectures import check_layer, num_layers

    n = num_layers(model)
    for name in ("layer", "layers"):
        value = getattr(hparams, name, None)
        if value is None:
            continue
        for layer in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(layer, int):
                check_layer(model, hparams.scale_layer(layer, n))


def request_problem(request: dict, method: Method, tokenizer) -> str | None:
    """Why this request cannot be edited by `method`, or None when it can."""
    prompt, target = request.get("prompt") or "", request.get("target_new") or ""
    if not prompt.strip():
        return "empty prompt"
    if not target.strip():
        return "empty target_new"
    if not tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"]:
        return f"target_new {target!r} tokenises to nothing"
    if method.needs_subject:
        subject = request.get("subject") or ""
        if not subject.strip():
            return f"method '{method.name}' needs a subject and the request has none"
        if subject not in prompt:
            return f"subject {subject!r} does not occur in the prompt {prompt!r}"
    return None
