"""CaliNET (Dong et al. 2022, "Calibrating Factual Knowledge in Pretrained Language Models").

Calibration memory slots of the FFN form are added next to the FFN of the last layers:
``FFN(x) + GELU(x K_c^T) V_c`` with `num_slots` key-value slots per calibrated layer
(`editeval.methods.kit.neurons.MLPNeurons`); the model's own parameters stay frozen and only the
slots are trained (Adam) on the edits' teacher-forced target cross-entropy (all requests of a call
together, the FT-M loss), stopping early below `early_stop_loss`. Keys start random (normal,
std `init_std`), values at zero, so untrained slots change nothing. Every call adds its own slots
(sequential edits accumulate calibration memories); the slots are a method addition saved as an
artifact, and `restore` removes them exactly.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from editeval.errors import EditevalError
from editeval.methods.base import Backup, HParams, register_method
from editeval.methods.kit.artifacts import install, unique_name
from editeval.methods.kit.freeze import frozen_for_editing
from editeval.methods.kit.neurons import MLPNeurons, mlp_dims, mlp_module
from editeval.methods.kit.objectives import encode_target_new, target_new_loss
from editeval.methods.kit.replay import UpperBlocks
from editeval.runtime.architectures import check_layer, num_layers
from editeval.runtime.models import input_device


class CaliNETHParams(HParams):
    layers: list[int] = Field(default_factory=lambda: [-2, -1])  # the last two FFN layers
    num_slots: int = Field(64, ge=1)  # calibration slots per layer and call
    activation: Literal["relu", "gelu"] = "gelu"  # a key of kit.neurons.ACTIVATIONS
    num_steps: int = 100
    lr: float = 5e-3
    weight_decay: float = 0.0
    init_std: float = 0.02
    batch_size: int = 8
    early_stop_loss: float = 1e-2


@register_method("calinet", hparams=CaliNETHParams, batch=True, sequential=True)
def apply_calinet(model, tokenizer, requests, hparams: CaliNETHParams) -> Backup:
    backup = Backup()
    if not requests:
        return backup
    n = num_layers(model)
    layers = sorted({check_layer(model, hparams.scale_layer(layer, n)) for layer in hparams.layers})
    if not layers:
        raise EditevalError("CaliNET layers is empty")
    device = input_device(model)
    bs = max(1, hparams.batch_size)
    batches = [
        encode_target_new(
            tokenizer,
            [r["prompt"] for r in requests[i : i + bs]],
            [r["target_new"] for r in requests[i : i + bs]],
            device,
        )
        for i in range(0, len(requests), bs)
    ]
    slots, params = [], []
    with frozen_for_editing(model, backup):  # on failure: drop the slots, then undo the installs
        try:
            for layer in layers:
                module = mlp_module(model, layer)
                d_in, d_out = mlp_dims(model, module)
                neurons = MLPNeurons(unique_name(model, "calinet"), module, d_in, d_out, hparams.activation, device)
                backup.undo.append(install(model, neurons))
                k = (torch.randn((hparams.num_slots, d_in), device=device) * hparams.init_std).requires_grad_(True)
                b = torch.zeros((hparams.num_slots,), device=device, requires_grad=True)
                v = torch.zeros((hparams.num_slots, d_out), device=device, requires_grad=True)
                neurons.extra = (k, b, v)
                slots.append(neurons)
                params += [k, v]
            opt = torch.optim.Adam(params, lr=hparams.lr, weight_decay=hparams.weight_decay)
            hidden_fn = UpperBlocks(model, layers[0])
            head = model.get_output_embeddings()
            for _ in range(hparams.num_steps):
                total = 0.0
                for batch in batches:
                    loss = target_new_loss(hidden_fn, head, batch)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += loss.item() * batch[0].shape[0]
                if total / len(requests) < hparams.early_stop_loss:
                    break
            for neurons in slots:
                neurons.append(*neurons.extra)
                neurons.extra = None
        except BaseException:
            for neurons in slots:
                neurons.extra = None
            raise
    return backup
