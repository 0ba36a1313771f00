"""What the learned editors (MEND, KE) share to edit: the editor interface, the gradients of the
edit loss at the edited MLP output projections, and applying a predicted update. They are
meta-trained by `editeval.methods.kit.editor_training` and stored by
`editeval.methods.kit.editor_cache`.

An *editor* is a `torch.nn.Module` (see `Editor`) that maps an edit's fine-tuning signal to a
weight update for each edited matrix W (stored here as (out × in)):

* the trainer gives it, per edited layer, the token-wise decomposition of the gradient of the
  edit loss, dL/dW = Σ_t δ_t u_tᵀ (u_t: the input of W at token t, δ_t: dL/d(output of W) at t),
  and the edit's token ids;
* it returns ΔW per layer, differentiable in its own parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field

from editeval.errors import EditevalError
from editeval.methods.base import Backup, HParams, backup_parameters
from editeval.methods.kit.freeze import frozen_for_editing
from editeval.methods.kit.replay import UpperBlocks
from editeval.runtime.architectures import (
    check_layer,
    layer_module_name,
    mlp_out_as_out_in,
    num_layers,
)
from editeval.runtime.nethooks import add_hook


class EditorHParams(HParams):
    """Settings shared by the learned editors (training and use)."""

    layers: list[int] = Field(default_factory=lambda: [-3, -2, -1])  # MLP output projections edited
    train_benchmark: str = "auto"  # whose trained editor `apply` uses (auto: from the look of the edits)
    editor_path: str | None = None  # an editor folder to use instead of the cache
    # meta-training
    train_steps: int = 1000  # edits seen in training (one edit per forward)
    batch_size: int = 1  # edits accumulated per optimiser step
    lr: float = 1e-4  # Adam, editor parameters
    grad_clip: float = 100.0
    c_edit: float = 0.1
    c_loc: float = 1.0
    max_length: int = 64  # tokens per training sequence (longer ones are cut from the left)
    checkpoint_every: int = 100
    max_minutes: float | None = None  # stop training (and save) after this much wall time
    seed: int = 0


def editor_layers(model: torch.nn.Module, hparams: EditorHParams) -> list[int]:
    n = num_layers(model)
    return sorted({check_layer(model, hparams.scale_layer(layer, n)) for layer in hparams.layers})


def edited_modules(model: torch.nn.Module, layers: list[int]) -> list[str]:
    return [layer_module_name(model, layer, "mlp_out") for layer in layers]


def out_in_shape(model: torch.nn.Module, module_name: str) -> tuple[int, int]:
    weight = model.get_submodule(module_name).weight
    return tuple(mlp_out_as_out_in(model, weight).shape)  # type: ignore[return-value]


# --------------------------------------------------------------------------- sequences


@dataclass
class Seq:
    ids: list[int]
    start: int  # first target token (the loss covers ids[start:]); 0 for locality sequences


def encode_sequence(tokenizer, prompt: str, target: str, max_length: int) -> Seq:
    from editeval.runtime.tokens import teacher_forced_inputs

    ids, start = teacher_forced_inputs(tokenizer, prompt, target.strip())
    if len(ids) > max_length:  # keep the target whole: cut from the left
        cut = min(len(ids) - max_length, start - 1)
        if cut > 0:
            ids, start = ids[cut:], start - cut
    return Seq(ids, start)


# --------------------------------------------------------------------------- hooks on the edited projections


class EditHooks:
    """Forward hooks on the edited projections: record inputs / make outputs differentiable
    (mode 'grad'), or add x @ ΔWᵀ to the output (mode 'delta', ΔW given as (out × in))."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        self.model, self.names = model, names
        self.mode = None
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.deltas: dict[str, torch.Tensor] = {}
        self._handles = []

    def __enter__(self):
        for name in self.names:
            self._handles.append(add_hook(self.model.get_submodule(name), self._hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False

    def _hook(self, name):
        def hook(module, args, output):
            if self.mode == "grad":
                self.inputs[name] = args[0].detach()
                if not output.requires_grad:
                    output = output.detach().requires_grad_(True)
                self.outputs[name] = output
                return output
            if self.mode == "delta" and name in self.deltas:
                dw = self.deltas[name]
                return output + args[0].to(dw.dtype) @ dw.T.to(args[0].device)
            return output

        return hook


def target_nll(head, hidden: torch.Tensor, seq: Seq) -> torch.Tensor:
    """Mean NLL of ids[start:] given the hidden states [1, T, H]."""
    labels = torch.tensor(seq.ids[seq.start :], device=hidden.device)
    logits = head(hidden[0, seq.start - 1 : len(seq.ids) - 1]).float()
    return F.cross_entropy(logits, labels)


def edit_signal(
    stack: UpperBlocks, head, hooks: EditHooks, states_and_seqs
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per edited module: (u [N, in], δ [N, out]) over every token of the given edit sequences,
    from the gradient of their summed target NLLs (each the mean over its target tokens)."""
    us: dict[str, list] = {n: [] for n in hooks.names}
    ds: dict[str, list] = {n: [] for n in hooks.names}
    for state, seq in states_and_seqs:
        hooks.mode, hooks.inputs, hooks.outputs = "grad", {}, {}
        with torch.enable_grad():
            loss = target_nll(head, stack.hidden(state), seq)
            outs = [hooks.outputs[n] for n in hooks.names]
            grads = torch.autograd.grad(loss, outs, allow_unused=True)
        hooks.mode = None
        for n, g, o in zip(hooks.names, grads, outs):
            g = torch.zeros_like(o) if g is None else g
            us[n].append(hooks.inputs[n].reshape(-1, hooks.inputs[n].shape[-1]).float())
            ds[n].append(g.detach().reshape(-1, g.shape[-1]).float())
    return {n: (torch.cat(us[n]), torch.cat(ds[n])) for n in hooks.names}


# --------------------------------------------------------------------------- the editor interface


class Editor(torch.nn.Module):
    """Base of MEND / KE editors. Subclasses implement `forward(signal, text_ids)`."""

    method: str = ""

    def __init__(self, model: torch.nn.Module, module_names: list[str], hparams: EditorHParams):
        super().__init__()
        self.module_names = list(module_names)
        self.shapes = {n: out_in_shape(model, n) for n in module_names}

    def forward(
        self, signal: dict[str, tuple[torch.Tensor, torch.Tensor]], text_ids: list[list[int]], embed: torch.nn.Module
    ) -> dict[str, torch.Tensor]:
        """ΔW (out × in) per edited module name."""
        raise NotImplementedError

    def total_loss(self, edit_loss: torch.Tensor, loc_loss: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def before_step(self) -> None:
        """Called after backward, before the optimiser step (e.g. to ascend on a multiplier)."""

    def observe(self, signal) -> None:
        """Training only: update running statistics from a batch of inputs."""

    def config(self) -> dict:
        return {}


# --------------------------------------------------------------------------- applying an editor


def apply_editor(
    model: torch.nn.Module, tokenizer, requests: list[dict], editor: Editor, hparams: EditorHParams
) -> Backup:
    """Edit the model's weights in place with the editor's update for these requests (all at once:
    the edit signal of every request's tokens goes into one update)."""
    if not requests:
        return {}
    names = editor.module_names
    backup = backup_parameters(model, [f"{n}.weight" for n in names])
    stack = UpperBlocks(model, editor_layers(model, hparams)[0], check_every_batch=False)
    seqs, texts = [], []
    for r in requests:
        target = (r.get("target_new") or "").strip()
        if not target:
            raise EditevalError("empty target_new")
        seq = encode_sequence(tokenizer, r["prompt"], target, 10**9)
        seqs.append(seq)
        texts.append(seq.ids)
    with frozen_for_editing(model):
        with EditHooks(model, names) as hooks:
            signal = edit_signal(
                stack, model.get_output_embeddings(), hooks, [(stack.record_sequence(s.ids), s) for s in seqs]
            )
        with torch.no_grad():
            deltas = editor(signal, texts, model.get_input_embeddings())
            for n in names:
                weight = model.get_submodule(n).weight
                view = mlp_out_as_out_in(model, weight)
                view.copy_((view.float() + deltas[n].to(view.device)).to(weight.dtype))
    return backup


def kaiming_(weight: torch.Tensor) -> torch.Tensor:
    torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return weight
