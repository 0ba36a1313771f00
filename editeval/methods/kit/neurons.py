"""Neurons added to MLP layers (T-Patcher's patches, CaliNET's calibration slots).

An `MLPNeurons` addition adds ``act(x @ keys.T + bias) @ values`` to the output of one MLP module,
where ``x`` is the MLP's input (the normalised residual stream): n extra key-value memories of the
FFN form, next to the model's own. Weights never change; the neurons are saved in a method artifact.
"""

from __future__ import annotations

import torch

from editeval.data import load_requests
from editeval.methods.kit.artifacts import Addition, register_addition
from editeval.methods.kit.objectives import encode_target_new
from editeval.runtime.architectures import architecture
from editeval.runtime.nethooks import Trace, add_hook

ACTIVATIONS = {
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
}


@register_addition
class MLPNeurons(Addition):
    kind = "mlp_neurons"

    def __init__(self, name: str, module: str, in_dim: int, out_dim: int, activation: str, device):
        super().__init__(name)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} (choose from {', '.join(ACTIVATIONS)})")
        self.module, self.activation = module, activation
        self.keys = torch.zeros((0, in_dim), device=device)
        self.bias = torch.zeros((0,), device=device)
        self.values = torch.zeros((0, out_dim), device=device)
        self.extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # neurons in training

    def attach(self, model) -> None:
        self._handles.append(add_hook(model.get_submodule(self.module), self._hook))

    def parts(self):
        keys, bias, values = self.keys, self.bias, self.values
        if self.extra is not None:
            keys = torch.cat([keys, self.extra[0]])
            bias = torch.cat([bias, self.extra[1]])
            values = torch.cat([values, self.extra[2]])
        return keys, bias, values

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        keys, bias, _ = self.parts()
        return x.to(keys.dtype) @ keys.T + bias

    def _hook(self, module, args, output):
        keys, bias, values = self.parts()
        if not len(keys):
            return output
        x = args[0]
        act = ACTIVATIONS[self.activation](x.to(keys.dtype) @ keys.T + bias)
        return output + (act @ values).to(output.dtype)

    def append(self, keys, bias, values) -> None:
        self.keys = torch.cat([self.keys, keys.detach()])
        self.bias = torch.cat([self.bias, bias.detach()])
        self.values = torch.cat([self.values, values.detach()])

    def snapshot(self):
        return self.keys, self.bias, self.values

    def load_snapshot(self, snap) -> None:
        self.keys, self.bias, self.values = snap
        self.extra = None

    def config(self) -> dict:
        return {"module": self.module, "activation": self.activation}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys, "bias": self.bias, "values": self.values}

    @classmethod
    def from_state(cls, name, config, tensors, model):
        keys, bias, values = tensors["keys"].float(), tensors["bias"].float(), tensors["values"].float()
        if not (len(keys) == len(bias) == len(values)):
            raise ValueError("keys, bias and values differ in length")
        model.get_submodule(config["module"])
        neurons = cls(name, config["module"], keys.shape[1], values.shape[1], config["activation"], keys.device)
        neurons.keys, neurons.bias, neurons.values = keys, bias, values
        return neurons


def mlp_dims(model, module_name: str) -> tuple[int, int]:
    """(input, output) width of an MLP module: both the hidden size."""
    hidden = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
    return hidden, hidden


def mlp_module(model, layer: int) -> str:
    return f"{architecture(model).layers}.{layer}.{architecture(model).mlp}"


def mlp_inputs(model, module: str, batch) -> torch.Tensor:
    """The MLP module's input [B, T, d] for a (ids, mask, ...) batch, without gradients."""
    with torch.no_grad(), Trace(model, [module], retain_input=True, retain_output=False, stop=True) as tr:
        model.base_model(input_ids=batch[0], attention_mask=batch[1], use_cache=False)
    return tr.inputs[module].float()


def memory_batches(
    tokenizer, benchmark: str, n: int, device, split: str = "train", batch_size: int = 16, datasets_dir=None
):
    """Right-padded batches of ``prompt + " " + target_new`` of the first n train-split records in
    `datasets_dir` (T-Patcher's memory of inputs the patch must not fire on)."""
    records = load_requests(benchmark, split, None, n, datasets_dir)
    texts = [(r["prompt"], r["target_new"]) for r in records if r["prompt"].strip() and r["target_new"].strip()]
    out = []
    for i in range(0, len(texts), batch_size):
        chunk = texts[i : i + batch_size]
        out.append(encode_target_new(tokenizer, [p for p, _ in chunk], [t for _, t in chunk], device))
    return out
