"""Replaying the upper blocks: final hidden states that recompute only the blocks an edit changes.

When an edit trains something at layer L (a weight, a codebook value, added neurons, a learned
editor's ΔW), nothing below L changes during training. One full forward pass records the input of
every block from L on (hidden state, masks, position embeddings); each training step then replays
those blocks and the final norm, and nothing else. The replay is checked against the full pass
(`torch.allclose`, 1e-4); where it differs (an architecture that passes something else between
blocks), full forward passes are used instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from editeval.runtime.architectures import architecture
from editeval.runtime.models import input_device
from editeval.runtime.nethooks import hooked

log = logging.getLogger(__name__)


@dataclass
class Recording:
    """One recorded batch: its inputs, and each replayed block's (args, kwargs), or None when
    replay is off (full passes)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    calls: list | None


class UpperBlocks:
    """Final (normed) hidden states of recorded batches, recomputing only the blocks from
    `first_layer` on.

    check_every_batch: check the replay on every recorded batch (fine-tuning: a few batches whose
    padding differs) or on the first one only (meta-training: thousands of unpadded sequences).
    Once a check fails, every later batch runs full forward passes.
    """

    def __init__(self, model: torch.nn.Module, first_layer: int, *, check_every_batch: bool = True):
        arch = architecture(model)
        self.model = model
        self.blocks = list(model.get_submodule(arch.layers))[first_layer:]
        self.norm = model.get_submodule(arch.final_norm)
        self.base = model.get_submodule(arch.layers.split(".")[0])
        self.check_every_batch = check_every_batch
        self.replay_ok: bool | None = None  # unknown until checked once
        self._by_batch: dict[int, Recording] = {}

    def _full(self, input_ids, attention_mask) -> torch.Tensor:
        return self.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    def _replay(self, calls) -> torch.Tensor:
        hidden = calls[0][0][0]
        for block, (args, kwargs) in zip(self.blocks, calls):
            out = block(hidden, *args[1:], **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return self.norm(hidden)

    def record(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Recording:
        """Run the batch once (no grad), recording the upper blocks' inputs."""
        if self.replay_ok is False:
            return Recording(input_ids, attention_mask, None)
        calls: list = []

        def remember(module, args, kwargs):
            calls.append((args, dict(kwargs)))

        with hooked(((block, remember) for block in self.blocks), before=True, with_kwargs=True):
            with torch.no_grad():
                reference = self._full(input_ids, attention_mask)
        if self.replay_ok is None or self.check_every_batch:
            ok = len(calls) == len(self.blocks) and bool(calls[0][0])
            if ok:
                with torch.no_grad():
                    replayed = self._replay(calls)
                ok = replayed.shape == reference.shape and torch.allclose(replayed, reference, rtol=1e-4, atol=1e-4)
            if not ok:
                log.info("block replay does not reproduce the model here: using full forward passes")
            self.replay_ok = ok
        return Recording(input_ids, attention_mask, calls)

    def record_sequence(self, ids: list[int]) -> Recording:
        """`record` of one unpadded sequence of token ids."""
        return self.record(torch.tensor([ids], device=input_device(self.model)))

    def hidden(self, recording: Recording) -> torch.Tensor:
        """Final hidden states [B, T, H] of a recorded batch, with the current weights."""
        if self.replay_ok and recording.calls is not None:
            return self._replay(recording.calls)
        return self._full(recording.input_ids, recording.attention_mask)

    def __call__(self, batch) -> torch.Tensor:
        """`hidden` of an (input_ids, attention_mask, ...) batch, recorded the first time it is seen
        (the `hidden_fn` of `editeval.methods.kit.objectives`)."""
        if self.replay_ok is False:
            return self._full(batch[0], batch[1])
        key = id(batch)
        if key not in self._by_batch:
            self._by_batch[key] = self.record(batch[0], batch[1])
        return self.hidden(self._by_batch[key])
