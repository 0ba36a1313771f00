"""Greedy continuations for the tests that show an edit changed a real model's answer."""

from __future__ import annotations

import torch


def greedy(model, tokenizer, prompt: str, n: int = 3) -> str:
    """The model's greedy continuation of `prompt`: `n` new tokens, decoded, stripped."""
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :]).strip()
