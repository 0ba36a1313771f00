"""One registry entry per `config.model_type`: where its modules are, and its preset family.

Methods name an abstract place (the MLP's output projection of layer 5, ...) and this table
resolves it for the model at hand, so a new architecture is one entry here (or, from another
package, one entry point in the ``editeval.architectures`` group), not a copied YAML.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editeval.errors import EditevalError
from editeval.runtime.registry import Registry


@dataclass(frozen=True)
class Architecture:
    layers: str  # the ModuleList of transformer blocks
    mlp: str  # the MLP module, relative to a block
    mlp_out: str  # the MLP output ("down") projection, relative to a block; its input is the key
    attn: str  # the attention module, relative to a block
    embed: str  # token embedding
    final_norm: str  # last layer norm before the head
    lm_head: str
    # the hyper-parameter presets it uses when none exists for the model's own name:
    # editeval/hparams/<method>/<family>.yaml
    family: str
    # GPT-2 uses Conv1D, whose weight is stored (in_features, out_features) instead of (out, in)
    mlp_out_transposed: bool = False


ARCHITECTURES: Registry[Architecture] = Registry("architecture", group="editeval.architectures")

_LLAMA_LIKE = Architecture(
    layers="model.layers",
    mlp="mlp",
    mlp_out="mlp.down_proj",
    attn="self_attn",
    embed="model.embed_tokens",
    final_norm="model.norm",
    lm_head="lm_head",
    family="llama",
)
for _model_type in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"):
    ARCHITECTURES.add(_model_type, _LLAMA_LIKE)
ARCHITECTURES.add(
    "gpt2",
    Architecture(
        layers="transformer.h",
        mlp="mlp",
        mlp_out="mlp.c_proj",
        attn="attn",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        family="gpt2",
        mlp_out_transposed=True,
    ),
)
ARCHITECTURES.add(
    "gptj",
    Architecture(
        layers="transformer.h",
        mlp="mlp",
        mlp_out="mlp.fc_out",
        attn="attn",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        family="gpt2",
    ),
)
ARCHITECTURES.add(
    "gpt_neox",
    Architecture(
        layers="gpt_neox.layers",
        mlp="mlp",
        mlp_out="mlp.dense_4h_to_h",
        attn="attention",
        embed="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        lm_head="embed_out",
        family="gpt2",
    ),
)


def architecture(model: torch.nn.Module) -> Architecture:
    model_type = getattr(model.config, "model_type", None)
    arch = ARCHITECTURES.get(model_type, None) if isinstance(model_type, str) else None
    if arch is None:
        raise EditevalError(
            f"model type '{model_type}' has no entry in editeval.runtime.architectures.ARCHITECTURES "
            f"(known: {', '.join(sorted(ARCHITECTURES.names()))})"
        )
    return arch


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
