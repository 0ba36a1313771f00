"""One table of module names per `config.model_type`.

Methods name an abstract place (the MLP's output projection of layer 5, ...) and this table
resolves it for the model at hand, so a new architecture is one entry here, not a copied YAML.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editeval.errors import EditevalError


@dataclass(frozen=True)
class Architecture:
    layers: str  # the ModuleList of transformer blocks
    mlp: str  # the MLP module, relative to a block
    mlp_out: str  # the MLP output ("down") projection, relative to a block; its input is the key
    attn: str  # the attention module, relative to a block
    embed: str  # token embedding
    final_norm: str  # last layer norm before the head
    lm_head: str
    # GPT-2 uses Conv1D, whose weight is stored (in_features, out_features) instead of (out, in)
    mlp_out_transposed: bool = False


_LLAMA_LIKE = Architecture(
    layers="model.layers", mlp="mlp", mlp_out="mlp.down_proj", attn="self_attn",
    embed="model.embed_tokens", final_norm="model.norm", lm_head="lm_head",
)

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "gpt2": Architecture(
        layers="transformer.h", mlp="mlp", mlp_out="mlp.c_proj", attn="attn",
        embed="transformer.wte", final_norm="transformer.ln_f", lm_head="lm_head",
        mlp_out_transposed=True,
    ),
    "gptj": Architecture(
        layers="transformer.h", mlp="mlp", mlp_out="mlp.fc_out", attn="attn",
        embed="transformer.wte", final_norm="transformer.ln_f", lm_head="lm_head",
    ),
    "gpt_neox": Architecture(
        layers="gpt_neox.layers", mlp="mlp", mlp_out="mlp.dense_4h_to_h", attn="attention",
        embed="gpt_neox.embed_in", final_norm="gpt_neox.final_layer_norm", lm_head="embed_out",
    ),
}


def architecture(model: torch.nn.Module) -> Architecture:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise EditevalError(
            f"model type '{model_type}' has no entry in editeval.runtime.architectures.ARCHITECTURES "
            f"(known: {', '.join(sorted(ARCHITECTURES))})"
        )
    return ARCHITECTURES[model_type]


def num_layers(model: torch.nn.Module) -> int:
    return len(model.get_submodule(architecture(model).layers))


def check_layer(model: torch.nn.Module, layer: int) -> int:
    n = num_layers(model)
    if not -n <= layer < n:
        raise EditevalError(f"layer {layer} does not exist: the model has {n} layers (0..{n - 1})")
    return layer % n


def layer_module_name(model: torch.nn.Module, layer: int, place: str) -> str:
    """Full module name of `place` ('mlp', 'mlp_out', 'attn', or '' for the block) in `layer`."""
    arch = architecture(model)
    layer = check_layer(model, layer)
    block = f"{arch.layers}.{layer}"
    return f"{block}.{getattr(arch, place)}" if place else block


def mlp_out_weight(model: torch.nn.Module, layer: int) -> tuple[str, torch.nn.Parameter]:
    """(parameter name, parameter) of the MLP output projection's weight in `layer`."""
    name = layer_module_name(model, layer, "mlp_out") + ".weight"
    return name, model.get_parameter(name)


def mlp_out_as_out_in(model: torch.nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """The MLP output weight viewed as (out_features, in_features), whatever its storage."""
    return weight.T if architecture(model).mlp_out_transposed else weight
