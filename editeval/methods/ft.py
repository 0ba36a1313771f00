"""FT-L and FT-M: constrained fine-tuning of one (or a few) MLP output projections.

Both optimise only the weight of the MLP output ("down") projection of the configured layer(s)
with Adam for `num_steps` steps, and after every step clamp the change to an L-infinity ball of
radius `norm_constraint` around the original weight (Zhu et al. 2020; the FT baseline of ROME).
They differ only in the loss, as in the reference toolkit of the field:

- **FT-L** (`objective = prompt_last`): at the prompt's last position only, the mean negative
  log-probability of the target's tokens (every target token is scored at that one position — the
  reference toolkit's "prompt_last" objective).
- **FT-M** (`objective = target_new`): the usual teacher-forced cross-entropy on
  `prompt + " " + target_new`, masked to the target tokens (prompt and padding positions carry no
  loss). The prompt length is counted by tokenising the prompt alone, as the evaluation does.

Optimisation runs on a float32 master copy of each edited weight (the model may be bf16/fp16):
the model's weight receives `master.to(dtype)` after every step, so the L-infinity constraint and
Adam's small steps are exact in float32. Requests are optimised together in mini-batches of
`batch_size` (batch editing); each step walks over all mini-batches once. Training stops early
when the mean loss of a step falls below `early_stop_loss` (the reference toolkit uses 1e-2).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from editeval.errors import EditevalError
from editeval.methods.base import Backup, HParams, backup_parameters, register_method
from editeval.methods.kit.freeze import frozen_for_editing
from editeval.methods.kit.objectives import (
    encode_prompt_last,
    encode_target_new,
    prompt_last_loss,
    target_new_loss,
)
from editeval.methods.kit.replay import UpperBlocks
from editeval.runtime.architectures import check_layer, mlp_out_weight, num_layers
from editeval.runtime.models import input_device


class FTHParams(HParams):
    layers: list[int] = Field(default_factory=lambda: [21])
    num_steps: int = 25
    lr: float = 5e-4
    weight_decay: float = 0.0
    # L-infinity bound on the change of each edited weight entry; null/0 = unconstrained
    norm_constraint: float | None = 5e-4
    batch_size: int = 1  # requests per optimisation mini-batch
    early_stop_loss: float = 1e-2
    objective: Literal["target_new", "prompt_last"] = "target_new"  # FT-M or FT-L


class FTLHParams(FTHParams):
    objective: Literal["target_new", "prompt_last"] = "prompt_last"


class FTMHParams(FTHParams):
    objective: Literal["target_new", "prompt_last"] = "target_new"


# objective name -> (batch encoder, loss) (`editeval.methods.kit.objectives`)
OBJECTIVES = {"prompt_last": (encode_prompt_last, prompt_last_loss), "target_new": (encode_target_new, target_new_loss)}


def fine_tune(model: torch.nn.Module, tokenizer, requests: list[dict], hparams: FTHParams) -> Backup:
    if not requests:
        return Backup()
    n = num_layers(model)
    layers = sorted({check_layer(model, hparams.scale_layer(layer, n)) for layer in hparams.layers})
    names_params = [mlp_out_weight(model, layer) for layer in layers]
    names = [name for name, _ in names_params]
    backup = backup_parameters(model, names)

    device = input_device(model)
    prompts = [r["prompt"] for r in requests]
    targets = [r["target_new"] for r in requests]
    for target in targets:
        if not target.strip():
            raise EditevalError("empty target_new")
    encode, loss_fn = OBJECTIVES[hparams.objective]
    bs = max(1, hparams.batch_size)
    batches = [encode(tokenizer, prompts[i : i + bs], targets[i : i + bs], device) for i in range(0, len(requests), bs)]

    masters = [p.detach().float().clone().requires_grad_(True) for _, p in names_params]
    originals = [p.detach().float().clone() for _, p in names_params]
    eps = hparams.norm_constraint or 0.0
    opt = torch.optim.Adam(masters, lr=hparams.lr, weight_decay=hparams.weight_decay)

    hidden_fn = UpperBlocks(model, layers[0])
    head = model.get_output_embeddings()
    with frozen_for_editing(model):  # eval mode: no dropout, the edit is deterministic
        for _, p in names_params:
            p.requires_grad_(True)
        for _step in range(hparams.num_steps):
            total = 0.0
            for batch in batches:
                for _, p in names_params:
                    p.grad = None
                loss = loss_fn(hidden_fn, head, batch)
                loss.backward()
                total += loss.item() * batch[0].shape[0]
                for master, (_, p) in zip(masters, names_params):
                    master.grad = p.grad.float()
                opt.step()
                opt.zero_grad(set_to_none=True)
                with torch.no_grad():
                    for master, original, (_, p) in zip(masters, originals, names_params):
                        if eps > 0:
                            master.copy_(torch.clamp(master, original - eps, original + eps))
                        p.copy_(master.to(p.dtype))
            if total / len(requests) < hparams.early_stop_loss:
                break
    return backup


@register_method("ft-l", hparams=FTLHParams, batch=True, sequential=True)
def apply_ft_l(model, tokenizer, requests, hparams: FTHParams) -> Backup:
    return fine_tune(model, tokenizer, requests, hparams)


@register_method("ft-m", hparams=FTMHParams, batch=True, sequential=True)
def apply_ft_m(model, tokenizer, requests, hparams: FTHParams) -> Backup:
    return fine_tune(model, tokenizer, requests, hparams)
