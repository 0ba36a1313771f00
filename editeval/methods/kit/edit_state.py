"""What a method carries from one edit of a model to the next, besides the weights: AlphaEdit's
K Kᵀ of the keys it edited before, UltraEdit's running normalisation statistics.

The tensors live in a dict on the model object (so they go with that model and nothing else), are
put back with the weights when an edit is undone (`put` adds the undo to the edit's `Backup`), and a
sequential run saves and reloads them with its changed weights (`editeval.run.partial`), so a
resumed run continues from exactly the state an uninterrupted one had. Names are
``<method>.<what>`` (e.g. ``alphaedit.prev_kkt.layer3``).
"""

from __future__ import annotations

import torch

from editeval.methods.base import Backup

_ATTR = "_editeval_edit_state"
PREFIX = "edit_state:"  # how the tensors are named in a sequential run's state file


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return model.__dict__.setdefault(_ATTR, {})


def get(model: torch.nn.Module, name: str) -> torch.Tensor | None:
    return _state(model).get(name)


def put(model: torch.nn.Module, name: str, value: torch.Tensor, backup: Backup) -> None:
    """Set `name` to `value`; undoing `backup` sets it back to what it was (or removes it)."""
    state = _state(model)
    missing = object()
    old = state.get(name, missing)

    def undo() -> None:
        if old is missing:
            state.pop(name, None)
        else:
            state[name] = old

    backup.undo.append(undo)
    state[name] = value


def tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every state tensor of `model`, named for a safetensors file (CPU, contiguous)."""
    return {PREFIX + name: value.detach().to("cpu").contiguous() for name, value in sorted(_state(model).items())}


def load(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Replace `model`'s state with the ``edit_state:`` entries of `saved` (a state file's tensors)."""
    state = _state(model)
    state.clear()
    state.update({name[len(PREFIX) :]: value for name, value in saved.items() if name.startswith(PREFIX)})
