"""GRACE (Hartvigsen et al. 2023, "Aging with GRACE"): a discrete key-value codebook at one layer.

The adapter wraps the MLP output ("down") projection of one layer (the field's LLaMA setting:
layer 27 of 32, rescaled to the model's depth). Its codebook holds

* keys: the projection's *input* at the last prompt token of an edited prompt,
* values: vectors that replace the projection's *output* there, trained for the edit,
* a deferral radius eps per key, and the label (target_new) each key was made for.

At inference every position's input is a query: when its nearest key (Euclidean) lies within that
key's radius, the layer's output at that position is replaced by the key's value; otherwise the
layer runs unchanged (the model "defers" to itself). The same rule holds token by token during
greedy generation, so teacher-forced and generation scoring see the same adapter.

Editing one request (the paper's codebook maintenance): with no key near the new query
(distance > eps_init + eps of the nearest key) a key is added with radius eps_init; a nearby key
with the *same* label has its radius expanded to the distance (and its value is trained further);
a nearby key with a *different* label splits: both radii become half the distance and a new key is
added. A value is trained with Adam (lr 1.0, up to 50 steps; early stop below `early_stop_loss`) on
the teacher-forced target cross-entropy while the layer's output at the last prompt token is
replaced by it (as in the reference implementation, the value sits at that one position; the later
target positions see it through attention). Values start "cold" (uniform [0,1)) or "warm" (the
layer's current output). Weights never change: the codebook is an `editeval.methods.kit.artifacts.Addition`,
saved as a method artifact. Edits in one batch or across sequential calls grow the same codebook;
`restore` shrinks it back exactly.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from editeval.methods.base import Backup, HParams, register_method
from editeval.methods.kit.artifacts import (
    Addition,
    find_addition,
    install,
    register_addition,
    unique_name,
)
from editeval.methods.kit.freeze import frozen_for_editing
from editeval.methods.kit.objectives import encode_target_new, target_new_loss
from editeval.methods.kit.replay import UpperBlocks
from editeval.runtime.architectures import check_layer, layer_module_name, num_layers
from editeval.runtime.models import input_device
from editeval.runtime.nethooks import Trace, add_hook


class GRACEHParams(HParams):
    layer: int = 27
    eps: float = Field(1.0, gt=0)  # initial deferral radius of a new key
    num_steps: int = 50
    lr: float = 1.0
    early_stop_loss: float = 1e-2
    val_init: Literal["cold", "warm"] = "cold"  # "cold": uniform [0,1) | "warm": the layer's current output
    replacement: Literal["replace_last"] = "replace_last"  # the value replaces the output at the matching position only


@register_addition
class GRACECodebook(Addition):
    kind = "grace_codebook"

    def __init__(self, name: str, module: str, key_dim: int, value_dim: int, device, dtype=torch.float32):
        super().__init__(name)
        self.module = module
        self.keys = torch.zeros((0, key_dim), device=device, dtype=dtype)
        self.values = torch.zeros((0, value_dim), device=device, dtype=dtype)
        self.eps = torch.zeros((0,), device=device, dtype=dtype)
        self.labels: list[str] = []
        self.forced: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # training: rows, cols, value

    def attach(self, model) -> None:
        self._handles.append(add_hook(model.get_submodule(self.module), self._hook))

    def _hook(self, module, args, output):
        if self.forced is not None:
            rows, cols, value = self.forced
            out = output.clone()
            out[rows, cols] = value.to(out.dtype)
            return out
        if not len(self.keys):
            return output
        x = args[0]
        flat = x.reshape(-1, x.shape[-1]).to(self.keys.dtype)
        dist = torch.cdist(flat, self.keys, compute_mode="donot_use_mm_for_euclid_dist")
        best, which = dist.min(-1)
        hit = best <= self.eps[which]
        if not bool(hit.any()):
            return output
        out = output.reshape(-1, output.shape[-1]).clone()
        out[hit] = self.values[which[hit]].to(out.dtype)
        return out.view_as(output)

    def snapshot(self):
        return self.keys.clone(), self.values.clone(), self.eps.clone(), list(self.labels)

    def load_snapshot(self, snap) -> None:
        self.keys, self.values, self.eps, self.labels = snap[0], snap[1], snap[2], list(snap[3])

    def config(self) -> dict:
        return {"module": self.module, "labels": list(self.labels), "replacement": "replace_last"}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys, "values": self.values, "eps": self.eps}

    @classmethod
    def from_state(cls, name, config, tensors, model):
        keys, values, eps = tensors["keys"], tensors["values"], tensors["eps"]
        labels = list(config["labels"])
        if not (len(keys) == len(values) == len(eps) == len(labels)):
            raise ValueError("keys, values, eps and labels differ in length")
        model.get_submodule(config["module"])  # raises when the module does not exist
        book = cls(name, config["module"], keys.shape[1], values.shape[1], keys.device, keys.dtype)
        book.keys, book.values, book.eps, book.labels = keys.float(), values.float(), eps.float(), labels
        return book


def _codebook(model, hparams: GRACEHParams, backup: Backup) -> GRACECodebook:
    """The model's codebook at the configured layer (grown in place), or a new one."""
    layer = check_layer(model, hparams.scale_layer(hparams.layer, num_layers(model)))
    module = layer_module_name(model, layer, "mlp_out")
    existing = find_addition(model, GRACECodebook.kind)
    if existing is not None and existing.module == module:
        snap = existing.snapshot()
        backup.undo.append(lambda: existing.load_snapshot(snap))
        return existing
    proj = model.get_submodule(module)
    weight = proj.weight
    in_dim, out_dim = (
        (weight.shape[0], weight.shape[1]) if type(proj).__name__ == "Conv1D" else (weight.shape[1], weight.shape[0])
    )
    book = GRACECodebook(unique_name(model, "grace"), module, in_dim, out_dim, weight.device)
    backup.undo.append(install(model, book))
    return book


def _trace_layer(model, module: str, batch, position: int):
    """(input, output) of `module` at `position` of the one-row batch."""
    with torch.no_grad(), Trace(model, [module], retain_input=True, stop=True) as tr:
        model.base_model(input_ids=batch[0], attention_mask=batch[1], use_cache=False)
    return tr.inputs[module][0, position].float(), tr.outputs[module][0, position].float()


def _train_value(
    model, book: GRACECodebook, index: int, batch, position: int, hparams: GRACEHParams, first_layer: int
) -> None:
    value = book.values[index].detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([value], lr=hparams.lr)
    hidden_fn = UpperBlocks(model, first_layer)
    head = model.get_output_embeddings()
    rows = torch.tensor([0], device=value.device)
    cols = torch.tensor([position], device=value.device)
    try:
        for _ in range(hparams.num_steps):
            book.forced = (rows, cols, value[None])
            loss = target_new_loss(hidden_fn, head, batch)
            if loss.item() < hparams.early_stop_loss:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        book.forced = None
    with torch.no_grad():
        book.values[index] = value.detach()


@register_method("grace", hparams=GRACEHParams, batch=True, sequential=True)
def apply_grace(model, tokenizer, requests, hparams: GRACEHParams) -> Backup:
    backup = Backup()
    if not requests:
        return backup
    device = input_device(model)
    layer = check_layer(model, hparams.scale_layer(hparams.layer, num_layers(model)))
    with frozen_for_editing(model, backup):
        book = _codebook(model, hparams, backup)
        for request in requests:
            batch = encode_target_new(tokenizer, [request["prompt"]], [request["target_new"]], device)
            position = int((batch[2][0] == -100).sum()) - 1  # the last prompt token
            saved, book.keys = book.keys, book.keys[:0]  # the key is read without the codebook acting
            try:
                query, current = _trace_layer(model, book.module, batch, position)
            finally:
                book.keys = saved
            label = request["target_new"]
            init = current if hparams.val_init == "warm" else torch.rand_like(current)
            new_eps = hparams.eps
            index = None
            if len(book.keys):
                dist = torch.linalg.vector_norm(book.keys - query[None], dim=-1)
                d, j = float(dist.min()), int(dist.argmin())
                if d <= hparams.eps + float(book.eps[j]):
                    if book.labels[j] == label:  # expand the radius, keep training the same value
                        book.eps[j] = max(float(book.eps[j]), d)
                        index = j
                    else:  # split: both radii become half the distance
                        book.eps[j] = d / 2
                        new_eps = d / 2
            if index is None:
                book.keys = torch.cat([book.keys, query[None]])
                book.values = torch.cat([book.values, init[None]])
                book.eps = torch.cat([book.eps, torch.tensor([new_eps], device=device)])
                book.labels.append(label)
                index = len(book.keys) - 1
            _train_value(model, book, index, batch, position, hparams, layer)
    return backup
