"""LoRA (Hu et al. 2022) and AdaLoRA (Zhang et al. 2023) adapters trained on the edit(s), with `peft`.

A low-rank adapter is injected into the configured modules of the configured layers (the field's
LLaMA defaults: every layer's attention query and value projections, rank 8, alpha 32, dropout
0.1, 70 steps at lr 5e-3; `lora_type: adalora` switches to AdaLoRA's adaptive rank budget, from
`init_r` down to `rank`). It is trained with Adam on the teacher-forced cross-entropy of
``prompt + " " + target_new`` masked to the target tokens (the FT-M loss), all requests of a call
together (batch editing) in mini-batches of `batch_size`, stopping early when the mean loss falls
below `early_stop_loss`. Then the adapter is merged into the weights (W += scale * B A) and
removed, so the edited model is an ordinary model of the same architecture: `--save-checkpoint`
writes a normal checkpoint, sequential edits merge one after another, and `restore` copies back
the original values of the adapted weights (exact). AdaLoRA's orthogonality regulariser is not
added to the loss (training runs a handful of steps on a few tokens).

`target_modules` are names relative to a transformer block (``self_attn.q_proj``, ``mlp.down_proj``;
GPT-2: ``attn.c_attn``, ``mlp.c_proj``); `layers: null` means every layer.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from editeval.errors import EditevalError
from editeval.methods.base import Backup, HParams, backup_parameters, register_method
from editeval.methods.kit.freeze import frozen_for_editing
from editeval.methods.kit.objectives import encode_target_new, target_new_loss
from editeval.runtime.architectures import architecture, check_layer, num_layers
from editeval.runtime.models import input_device


class LoRAHParams(HParams):
    lora_type: Literal["lora", "adalora"] = "lora"
    layers: list[int] | None = None  # null: every layer
    target_modules: list[str] = Field(default_factory=lambda: ["self_attn.q_proj", "self_attn.v_proj"])
    rank: int = Field(8, ge=1)  # LoRA rank; AdaLoRA's target (average) rank
    init_r: int = 12  # AdaLoRA: initial rank
    lora_alpha: float = 32
    lora_dropout: float = Field(0.1, ge=0, le=1)
    num_steps: int = 70
    lr: float = 5e-3
    weight_decay: float = 0.0
    batch_size: int = 1
    early_stop_loss: float = 1e-2


def _target_names(model, hparams: LoRAHParams) -> list[str]:
    arch = architecture(model)
    n = num_layers(model)
    layers = (
        range(n)
        if hparams.layers is None
        else sorted({check_layer(model, hparams.scale_layer(layer, n)) for layer in hparams.layers})
    )
    if not hparams.target_modules:
        raise EditevalError("LoRA target_modules is empty")
    names = []
    for layer in layers:
        for rel in hparams.target_modules:
            name = f"{arch.layers}.{layer}.{rel}"
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise EditevalError(
                    f"LoRA target module '{rel}' does not exist in layer {layer} ({name}); "
                    f"name modules relative to a block, e.g. self_attn.q_proj"
                ) from None
            if not hasattr(module, "weight"):
                raise EditevalError(f"LoRA target module {name} has no weight")
            names.append(name)
    return names


def _peft_config(hparams: LoRAHParams, names: list[str], conv1d: bool):
    from peft import AdaLoraConfig, LoraConfig

    common = {
        "target_modules": names,
        "lora_alpha": hparams.lora_alpha,
        "lora_dropout": hparams.lora_dropout,
        "fan_in_fan_out": conv1d,
        "bias": "none",
    }
    if hparams.lora_type == "lora":
        return LoraConfig(r=hparams.rank, **common)
    steps = max(hparams.num_steps, 3)
    return AdaLoraConfig(
        init_r=max(hparams.init_r, hparams.rank),
        target_r=hparams.rank,
        total_step=steps,
        tinit=0,
        tfinal=0,
        deltaT=1,
        **common,
    )


@register_method("lora", hparams=LoRAHParams, batch=True, sequential=True)
def apply_lora(model, tokenizer, requests, hparams: LoRAHParams) -> Backup:
    if not requests:
        return Backup()
    try:
        import peft  # noqa: F401
    except ImportError:
        raise EditevalError("LoRA needs the 'peft' package: pip install peft") from None
    names = _target_names(model, hparams)
    backup = backup_parameters(model, [f"{name}.weight" for name in names])
    conv1d = any(type(model.get_submodule(n)).__name__ == "Conv1D" for n in names)

    device = input_device(model)
    prompts = [r["prompt"] for r in requests]
    targets = [r["target_new"] for r in requests]
    bs = max(1, hparams.batch_size)
    batches = [
        encode_target_new(tokenizer, prompts[i : i + bs], targets[i : i + bs], device)
        for i in range(0, len(requests), bs)
    ]

    with frozen_for_editing(model):  # peft wraps the target modules inside; their names are back after
        _train_merge(model, hparams, names, conv1d, batches, len(requests))
    return backup


def _train_merge(model, hparams: LoRAHParams, names: list[str], conv1d: bool, batches, n_requests: int) -> None:
    """Train the adapter on the batches, then merge it into the weights (on error: unload it)."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, _peft_config(hparams, names, conv1d))
    merged = False
    try:
        for name, module in model.named_modules():
            if name.endswith("lora_dropout") or ".lora_dropout." in name:
                module.train()  # the adapter's own dropout; the model stays in eval mode
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=hparams.lr, weight_decay=hparams.weight_decay)
        head = model.get_output_embeddings()
        body = model.base_model

        def hidden_fn(batch):
            return body(input_ids=batch[0], attention_mask=batch[1], use_cache=False).last_hidden_state

        for step in range(hparams.num_steps):
            total = 0.0
            for batch in batches:
                loss = target_new_loss(hidden_fn, head, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if hparams.lora_type == "adalora":
                    peft_model.base_model.update_and_allocate(step)
                total += loss.item() * batch[0].shape[0]
            if total / n_requests < hparams.early_stop_loss:
                break
        with torch.no_grad():
            peft_model.merge_and_unload()
        merged = True
    finally:
        if not merged:  # an error while training: take the adapter out, weights untouched
            peft_model.unload()
