"""Freezing a model while an edit trains its own tensors."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def frozen_for_editing(model: torch.nn.Module, backup=None):
    """Freeze every parameter and switch to eval mode (no dropout: the edit is deterministic) while
    an edit trains its own tensors; after, put back each parameter's requires_grad, clear grads and
    restore the training flag. If the edit fails, first undo what it installed (`backup.undo`, last
    first), then re-raise.

    Parameters are matched by name, so a method may wrap modules inside the block (peft's LoRA
    layers) as long as the original names are back on exit; a parameter added inside the block
    and still there on exit is left frozen."""
    grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        yield
    except BaseException:
        for undo in reversed(getattr(backup, "undo", None) or []):
            undo()
        raise
    finally:
        for name, p in model.named_parameters():
            p.grad = None
            p.requires_grad_(grad_flags.get(name, False))
        model.train(was_training)
