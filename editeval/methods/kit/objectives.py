"""Edit objectives shared by the training methods: how an edit's prompt and target become a batch,
and the loss on that batch.

* **target_new** (FT-M, LoRA, GRACE, T-Patcher, CaliNET): teacher-forced cross-entropy on
  ``prompt + " " + target_new``, masked to the target tokens (prompt and padding positions carry
  no loss); the prompt length is counted by tokenising the prompt alone, as the evaluation does.
* **prompt_last** (FT-L): at the prompt's last position only, the mean negative log-probability
  of the target's tokens (every target token is scored at that one position — the reference
  toolkit's "prompt_last" objective).

A loss takes `hidden_fn(batch) -> final hidden states` (a full forward pass or
`editeval.methods.kit.replay.UpperBlocks`), the LM head and the batch, so only the positions the
loss reads go through the head.
"""

from __future__ import annotations

import torch

from editeval.errors import EditevalError


def with_space(target: str) -> str:
    return target if target.startswith(" ") else " " + target


def adds_special_tokens(tokenizer, prompt: str) -> bool:
    """Add the tokenizer's special tokens unless the prompt already carries them (a chat-templated
    prompt starts with its BOS), as the evaluation does."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and prompt.startswith(bos))


def pad_right(tokenizer, ids: list[list[int]], labels: list[list[int]], device):
    """(input_ids, attention_mask, labels) right-padded to the longest row; labels -100 on padding."""
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


def encode_target_new(tokenizer, prompts: list[str], targets: list[str], device):
    """Right-padded `prompt + " " + target` with labels = target tokens only (-100 elsewhere)."""
    ids, labels = [], []
    for prompt, target in zip(prompts, targets):
        special = adds_special_tokens(tokenizer, prompt)
        full = tokenizer(prompt + with_space(target), add_special_tokens=special)["input_ids"]
        n_prompt = len(tokenizer(prompt, add_special_tokens=special)["input_ids"])
        if n_prompt >= len(full):
            raise EditevalError(f"target {target!r} adds no tokens after prompt {prompt!r}")
        ids.append(full)
        labels.append([-100] * n_prompt + full[n_prompt:])
    return pad_right(tokenizer, ids, labels, device)


def target_new_loss(hidden_fn, head, batch) -> torch.Tensor:
    """Mean NLL over each request's target tokens, then over the requests of the batch."""
    _, _, labels = batch
    hidden = hidden_fn(batch)[:, :-1]
    labels = labels[:, 1:]
    keep = labels != -100
    logits = head(hidden[keep]).float()  # only the target positions go through the LM head
    nll = torch.nn.functional.cross_entropy(logits, labels[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    per_request = torch.zeros(len(labels), device=nll.device).index_add(0, rows, nll) / keep.sum(1)
    return per_request.mean()  # mean over each request's target tokens, then over requests


def encode_prompt_last(tokenizer, prompts: list[str], targets: list[str], device):
    """Right-padded prompts, the index of each prompt's last token, and the target token ids."""
    ids, target_ids = [], []
    for prompt, target in zip(prompts, targets):
        ids.append(tokenizer(prompt, add_special_tokens=adds_special_tokens(tokenizer, prompt))["input_ids"])
        tgt = tokenizer(with_space(target), add_special_tokens=False)["input_ids"]
        if not tgt:
            raise EditevalError(f"target {target!r} tokenises to nothing")
        target_ids.append(tgt)
    input_ids, mask, _ = pad_right(tokenizer, ids, ids, device)
    last = torch.tensor([len(row) - 1 for row in ids], device=device)
    width = max(map(len, target_ids))
    tgt = torch.zeros((len(ids), width), dtype=torch.long)
    tgt_mask = torch.zeros((len(ids), width), dtype=torch.bool)
    for i, row in enumerate(target_ids):
        tgt[i, : len(row)] = torch.tensor(row)
        tgt_mask[i, : len(row)] = True
    return input_ids, mask, last, tgt.to(device), tgt_mask.to(device)


def prompt_last_loss(hidden_fn, head, batch) -> torch.Tensor:
    _, _, last, tgt, tgt_mask = batch
    hidden = hidden_fn(batch)
    logp = torch.log_softmax(head(hidden[torch.arange(len(last), device=last.device), last]).float(), dim=-1)
    nll = -logp.gather(-1, tgt) * tgt_mask
    return (nll.sum(1) / tgt_mask.sum(1)).mean()
