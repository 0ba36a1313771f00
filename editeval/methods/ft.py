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

from dataclasses import dataclass, field

import torch

from editeval.runtime.architectures import architecture, check_layer, mlp_out_weight, num_layers
from editeval.errors import EditevalError
from editeval.methods.base import Backup, HParams, backup_parameters, frozen_for_editing, register_method


@dataclass
class FTHParams(HParams):
    layers: list[int] = field(default_factory=lambda: [21])
    num_steps: int = 25
    lr: float = 5e-4
    weight_decay: float = 0.0
    # L-infinity bound on the change of each edited weight entry; null/0 = unconstrained
    norm_constraint: float | None = 5e-4
    batch_size: int = 1  # requests per optimisation mini-batch
    early_stop_loss: float = 1e-2
    objective: str = "target_new"  # "target_new" (FT-M) or "prompt_last" (FT-L)


@dataclass
class FTLHParams(FTHParams):
    objective: str = "prompt_last"


@dataclass
class FTMHParams(FTHParams):
    objective: str = "target_new"


OBJECTIVES = ("prompt_last", "target_new")


def _with_space(target: str) -> str:
    return target if target.startswith(" ") else " " + target


def _special(tokenizer, prompt: str) -> bool:
    """Add the tokenizer's special tokens unless the prompt already carries them (a chat-templated
    prompt starts with its BOS), as the evaluation does."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and prompt.startswith(bos))


def _encode_target_new(tokenizer, prompts: list[str], targets: list[str], device):
    """Right-padded `prompt + " " + target` with labels = target tokens only (-100 elsewhere)."""
    ids, labels = [], []
    for prompt, target in zip(prompts, targets):
        special = _special(tokenizer, prompt)
        full = tokenizer(prompt + _with_space(target), add_special_tokens=special)["input_ids"]
        n_prompt = len(tokenizer(prompt, add_special_tokens=special)["input_ids"])
        if n_prompt >= len(full):
            raise EditevalError(f"target {target!r} adds no tokens after prompt {prompt!r}")
        ids.append(full)
        labels.append([-100] * n_prompt + full[n_prompt:])
    return _pad(tokenizer, ids, labels, device)


def _pad(tokenizer, ids, labels, device):
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    lab = torch.full((len(ids), width), -100, dtype=torch.long)
    for i, (row, row_labels) in enumerate(zip(ids, labels)):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        lab[i, : len(row_labels)] = torch.tensor(row_labels)
    return input_ids.to(device), mask.to(device), lab.to(device)


def _loss_target_new(hidden_fn, head, batch) -> torch.Tensor:
    _, _, labels = batch
    hidden = hidden_fn(batch)[:, :-1]
    labels = labels[:, 1:]
    keep = labels != -100
    logits = head(hidden[keep]).float()  # only the target positions go through the LM head
    nll = torch.nn.functional.cross_entropy(logits, labels[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    per_request = torch.zeros(len(labels), device=nll.device).index_add(0, rows, nll) / keep.sum(1)
    return per_request.mean()  # mean over each request's target tokens, then over requests


def _encode_prompt_last(tokenizer, prompts: list[str], targets: list[str], device):
    """Right-padded prompts, the index of each prompt's last token, and the target token ids."""
    ids, target_ids = [], []
    for prompt, target in zip(prompts, targets):
        ids.append(tokenizer(prompt, add_special_tokens=_special(tokenizer, prompt))["input_ids"])
        tgt = tokenizer(_with_space(target), add_special_tokens=False)["input_ids"]
        if not tgt:
            raise EditevalError(f"target {target!r} tokenises to nothing")
        target_ids.append(tgt)
    input_ids, mask, _ = _pad(tokenizer, ids, ids, device)
    last = torch.tensor([len(row) - 1 for row in ids], device=device)
    width = max(map(len, target_ids))
    tgt = torch.zeros((len(ids), width), dtype=torch.long)
    tgt_mask = torch.zeros((len(ids), width), dtype=torch.bool)
    for i, row in enumerate(target_ids):
        tgt[i, : len(row)] = torch.tensor(row)
        tgt_mask[i, : len(row)] = True
    return input_ids, mask, last, tgt.to(device), tgt_mask.to(device)


def _loss_prompt_last(hidden_fn, head, batch) -> torch.Tensor:
    _, _, last, tgt, tgt_mask = batch
    hidden = hidden_fn(batch)
    logp = torch.log_softmax(head(hidden[torch.arange(len(last), device=last.device), last]).float(), dim=-1)
    nll = -logp.gather(-1, tgt) * tgt_mask
    return (nll.sum(1) / tgt_mask.sum(1)).mean()


class _UpperStack:
    """Final hidden states of a batch, recomputing only the blocks from `first_layer` on.

    Nothing below the lowest edited layer changes during fine-tuning, so one full forward pass
    records the input of every block from `first_layer` on (hidden state, masks, position
    embeddings); each training step then replays those blocks, the final norm, and nothing else.
    The replay is checked once against a full forward pass; if they differ (an architecture that
    passes something else between blocks), it falls back to full forward passes.
    """

    def __init__(self, model: torch.nn.Module, first_layer: int):
        arch = architecture(model)
        self.model = model
        self.blocks = list(model.get_submodule(arch.layers))[first_layer:]
        self.norm = model.get_submodule(arch.final_norm)
        self.base = model.get_submodule(arch.layers.split(".")[0])
        self.cache: dict[int, list] = {}
        self.replay_ok = True

    def _full(self, batch) -> torch.Tensor:
        return self.base(input_ids=batch[0], attention_mask=batch[1], use_cache=False).last_hidden_state

    def _capture(self, batch) -> list:
        calls: list = []
        hooks = [block.register_forward_pre_hook(
            lambda module, args, kwargs: calls.append((args, dict(kwargs))), with_kwargs=True)
            for block in self.blocks]
        try:
            with torch.no_grad():
                reference = self._full(batch)
        finally:
            for hook in hooks:
                hook.remove()
        if len(calls) != len(self.blocks) or not calls[0][0]:
            self.replay_ok = False
            return calls
        with torch.no_grad():
            replayed = self._replay(calls)
        if replayed.shape != reference.shape or not torch.allclose(replayed, reference, rtol=1e-4, atol=1e-4):
            self.replay_ok = False
        return calls

    def _replay(self, calls) -> torch.Tensor:
        hidden = calls[0][0][0]
        for block, (args, kwargs) in zip(self.blocks, calls):
            out = block(hidden, *args[1:], **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return self.norm(hidden)

    def __call__(self, batch) -> torch.Tensor:
        if self.replay_ok:
            key = id(batch)
            if key not in self.cache:
                self.cache[key] = self._capture(batch)
            if self.replay_ok:
                return self._replay(self.cache[key])
        return self._full(batch)


def fine_tune(model: torch.nn.Module, tokenizer, requests: list[dict], hparams: FTHParams) -> Backup:
    if hparams.objective not in OBJECTIVES:
        raise EditevalError(f"FT objective must be one of {', '.join(OBJECTIVES)}, not {hparams.objective!r}")
    if not requests:
        return Backup()
    n = num_layers(model)
    layers = sorted({check_layer(model, hparams.scale_layer(layer, n)) for layer in hparams.layers})
    names_params = [mlp_out_weight(model, layer) for layer in layers]
    names = [name for name, _ in names_params]
    backup = backup_parameters(model, names)

    device = next(model.parameters()).device
    prompts = [r["prompt"] for r in requests]
    targets = [r["target_new"] for r in requests]
    for target in targets:
        if not target.strip():
            raise EditevalError("empty target_new")
    encode, loss_fn = (
        (_encode_target_new, _loss_target_new) if hparams.objective == "target_new"
        else (_encode_prompt_last, _loss_prompt_last)
    )
    bs = max(1, hparams.batch_size)
    batches = [encode(tokenizer, prompts[i: i + bs], targets[i: i + bs], device)
               for i in range(0, len(requests), bs)]

    masters = [p.detach().float().clone().requires_grad_(True) for _, p in names_params]
    originals = [p.detach().float().clone() for _, p in names_params]
    eps = hparams.norm_constraint or 0.0
    opt = torch.optim.Adam(masters, lr=hparams.lr, weight_decay=hparams.weight_decay)

    hidden_fn = _UpperStack(model, layers[0])
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
