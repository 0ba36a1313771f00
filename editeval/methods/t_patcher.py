"""T-Patcher (Huang et al. 2023, "Transformer-Patcher: One Mistake Worth One Neuron").

One patch neuron per edit is added to the last FFN layer: ``FFN(x) + act(x . k + b) * v``
(`editeval.methods.kit.neurons.MLPNeurons`; ReLU, so a patch that does not fire contributes exactly
nothing). Only the new neuron's key k, bias b and value v are trained (Adam), on the paper's loss

    L = L_edit + a * L_act + m * (L_mem1 + L_mem2)

* L_edit: teacher-forced cross-entropy of ``prompt + " " + target_new`` on the target tokens;
* L_act = mean_e exp(-(q_e . k + b)): the patch fires on the edit's queries q_e (the FFN input at
  every position that predicts a target token);
* L_mem1 = mean_{q in M} exp((q . k + b) - beta): it stays below the threshold beta on the memory M
  (FFN inputs at every token of `memory_size` train-split prompts + answers, computed once);
* L_mem2 = mean_{q in M, e} exp((q - q_e) . k - gamma): and fires more on the edit than on memory.
  The other edits of the same call belong to the memory of each patch.

The key starts along the direction from the memory mean to the edit queries' mean, scaled so that
the pre-activation is +1 on the edit and -1 on the memory mean; the value starts at zero. Training
stops after `num_steps` or once the edit loss is below `early_stop_loss` with the patch firing on
every edit query and on no memory query. Batch editing trains one neuron per request, each on its
own edit; sequential edits append neurons to the same patched layer. The neurons are a method
addition (saved as an artifact); `restore` removes them exactly.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from editeval.errors import EditevalError
from editeval.methods.base import Backup, HParams, register_method, train_benchmark_for
from editeval.methods.kit.artifacts import find_addition, install, unique_name
from editeval.methods.kit.freeze import frozen_for_editing
from editeval.methods.kit.neurons import (
    MLPNeurons,
    memory_batches,
    mlp_dims,
    mlp_inputs,
    mlp_module,
)
from editeval.methods.kit.objectives import encode_target_new, target_new_loss
from editeval.methods.kit.replay import UpperBlocks
from editeval.runtime.architectures import check_layer, num_layers
from editeval.runtime.models import input_device


class TPatcherHParams(HParams):
    layer: int = -1  # the last FFN layer
    activation: Literal["relu", "gelu"] = "relu"  # a key of kit.neurons.ACTIVATIONS
    num_steps: int = 60
    lr: float = 1e-1
    act_weight: float = 1.0  # a
    mem_weight: float = 1.0  # m
    mem_threshold: float = -1.0  # beta: memory pre-activations should stay below
    mem_margin: float = 0.0  # gamma
    memory_size: int = Field(64, ge=1)  # train-split records whose tokens form the memory
    memory_benchmark: str = "auto"  # zsre | counterfact | auto
    early_stop_loss: float = 1e-2


_MEMORY: dict[tuple, torch.Tensor] = {}


def _memory(model, tokenizer, module: str, hparams: TPatcherHParams, requests, datasets_dir) -> torch.Tensor:
    bench = train_benchmark_for(hparams.memory_benchmark, requests)
    key = (id(model), module, bench, hparams.memory_size, datasets_dir)
    if key not in _MEMORY:
        device = input_device(model)
        try:
            batches = memory_batches(tokenizer, bench, hparams.memory_size, device, datasets_dir=datasets_dir)
        except EditevalError as err:
            raise EditevalError(f"T-Patcher needs memory prompts from {bench}/train: {err}") from None
        rows = []
        for batch in batches:
            x = mlp_inputs(model, module, batch)
            rows.append(x[batch[1].bool()])
        _MEMORY.clear()
        _MEMORY[key] = torch.cat(rows)
    return _MEMORY[key]


def _edit_queries(model, module: str, batch) -> torch.Tensor:
    """The FFN inputs at the positions that predict the target's tokens."""
    positions = (batch[2][0][1:] != -100).nonzero()[:, 0]
    return mlp_inputs(model, module, batch)[0, positions]


def _patch_one(
    model, neurons: MLPNeurons, batch, q_edit: torch.Tensor, memory: torch.Tensor, hparams: TPatcherHParams, layer: int
):
    centre, mem_mean = q_edit.mean(0), memory.mean(0)
    direction = centre - mem_mean
    gap = float(direction.norm())
    if gap == 0:
        raise EditevalError("T-Patcher: the edit's queries equal the memory mean")
    k = (direction / gap * (2.0 / gap)).clone().requires_grad_(True)
    b = (1.0 - centre @ k).detach().clone().reshape(1).requires_grad_(True)
    v = torch.zeros((1, neurons.values.shape[1]), device=k.device, requires_grad=True)
    opt = torch.optim.Adam([k, b, v], lr=hparams.lr)
    hidden_fn = UpperBlocks(model, layer)
    head = model.get_output_embeddings()
    try:
        for _ in range(hparams.num_steps):
            neurons.extra = (k[None], b, v)
            edit_loss = target_new_loss(hidden_fn, head, batch)
            a_edit = q_edit @ k + b
            a_mem = memory @ k + b
            loss = (
                edit_loss
                + hparams.act_weight * torch.exp(-a_edit).mean()
                + hparams.mem_weight
                * (
                    torch.exp(a_mem - hparams.mem_threshold).mean()
                    + torch.exp((memory @ k)[:, None] - (q_edit @ k)[None] - hparams.mem_margin).mean()
                )
            )
            if edit_loss.item() < hparams.early_stop_loss and bool((a_edit > 0).all()) and bool((a_mem <= 0).all()):
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        neurons.extra = None
    neurons.append(k.detach()[None], b.detach(), v.detach())


@register_method("t-patcher", hparams=TPatcherHParams, batch=True, sequential=True, uses_datasets=True)
def apply_t_patcher(model, tokenizer, requests, hparams: TPatcherHParams, *, datasets_dir=None) -> Backup:
    backup = Backup()
    if not requests:
        return backup
    layer = check_layer(model, hparams.scale_layer(hparams.layer, num_layers(model)))
    module = mlp_module(model, layer)
    device = input_device(model)
    with frozen_for_editing(model, backup):
        neurons = find_addition(model, MLPNeurons.kind)
        if neurons is not None and neurons.module == module and neurons.name.startswith("t-patcher"):
            snap = neurons.snapshot()
            backup.undo.append(lambda: neurons.load_snapshot(snap))
        else:
            neurons = MLPNeurons(
                unique_name(model, "t-patcher"), module, *mlp_dims(model, module), hparams.activation, device
            )
            backup.undo.append(install(model, neurons))
        memory = _memory(model, tokenizer, module, hparams, requests, datasets_dir)
        batches = [encode_target_new(tokenizer, [r["prompt"]], [r["target_new"]], device) for r in requests]
        queries = [_edit_queries(model, module, batch) for batch in batches]
        for i, batch in enumerate(batches):
            # the other edits of this call are memory too: each patch fires on its own edit only
            others = [q for j, q in enumerate(queries) if j != i]
            _patch_one(model, neurons, batch, queries[i], torch.cat([memory, *others]), hparams, layer)
    return backup
