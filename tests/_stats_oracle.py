"""A small text corpus and an independent oracle for the ROME/MEMIT key statistics.

`write_corpus` writes a deterministic JSON-lines corpus (English words, a few stubs under the
200-character minimum that must be skipped), so tests need neither ../shared/data/raw nor its 50 MB
Wikipedia file. `hooked_second_moment` computes E[k kᵀ] the plain way: the documented token windows
(editeval.methods.kit.key_stats module doc: articles of at least 200 characters, shuffled with seed 0, tokenised,
cut into windows of at most `max_len` tokens until exactly `tokens` positions), each window run
alone (no batching, no padding), the input of the MLP output projection captured with a torch
forward hook (not editeval's Trace), summed in float64 and divided by the number of hooked rows.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

WORDS = (
    "the of and in to was is for on as by with he at from his an were are which this be has had it "
    "city river school church station village county district football club team season league album "
    "song film band music record released single series television episode character novel author "
    "book published university college student professor research science species family genus found "
    "north south east west island mountain lake road railway built century war army battle king queen "
    "president minister party election government state country region population census born died "
    "married son daughter father mother company founded product market water light energy system model "
    "number first second third new old large small early late known called named used played won"
).split()
MIN_CHARS = 200  # editeval.methods.kit.key_stats.MIN_ARTICLE_CHARS, restated: stubs below it are not read


def write_corpus(path: Path, articles: int = 40, seed: int = 1) -> Path:
    """`articles` articles of 45-90 words (each well over 200 characters), plus 3 short stubs."""
    rng = random.Random(seed)
    lines = []
    for i in range(articles):
        words = [rng.choice(WORDS) for _ in range(rng.randint(45, 90))]
        text = f"Article {i}. " + " ".join(words).capitalize() + "."
        assert len(text) >= MIN_CHARS
        lines.append({"id": str(i), "title": f"Article {i}", "text": text})
        if i % 15 == 7:
            lines.append({"id": f"stub{i}", "title": "stub", "text": f"Stub {i} may refer to several places."})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def documented_windows(tokenizer, corpus: Path, tokens: int, max_len: int) -> list[list[int]]:
    """The token windows the module doc describes, in order, exactly `tokens` ids in all."""
    lines = corpus.read_text(encoding="utf-8").split("\n")  # (not splitlines: texts hold U+2028 and the like)
    texts = [json.loads(line)["text"] for line in lines if line]
    texts = [t for t in texts if len(t) >= MIN_CHARS]
    random.Random(0).shuffle(texts)
    windows, left = [], tokens
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        for start in range(0, len(ids), max_len):
            window = ids[start : start + max_len][:left]
            if window:
                windows.append(window)
                left -= len(window)
            if left == 0:
                return windows
    raise AssertionError(f"corpus {corpus} has fewer than {tokens} tokens")


def all_windows(tokenizer, corpus: Path, max_len: int) -> list[list[int]]:
    """Every window of every article of at least 200 characters (any order: for a token count equal
    to the corpus's, the statistic does not depend on the shuffle)."""
    windows = []
    for line in filter(None, corpus.read_text(encoding="utf-8").split("\n")):
        text = json.loads(line)["text"]
        if len(text) >= MIN_CHARS:
            ids = tokenizer(text)["input_ids"]
            windows += [ids[s : s + max_len] for s in range(0, len(ids), max_len)]
    return windows


def down_projection(model, layer: int) -> torch.nn.Module:
    """The MLP output projection of `layer`, named here independently of editeval.runtime.architectures."""
    if model.config.model_type == "gpt2":
        return model.transformer.h[layer].mlp.c_proj
    return model.model.layers[layer].mlp.down_proj


@torch.no_grad()
def hooked_second_moment(model, windows: list[list[int]], layers: list[int]) -> tuple[dict[int, torch.Tensor], int]:
    """({layer: Σ k kᵀ / n in float64}, n) with k the hooked input of each layer's down projection,
    one forward pass per window; n is the number of hooked rows (checked equal for every layer)."""
    sums: dict[int, torch.Tensor] = {}
    rows: dict[int, int] = {layer: 0 for layer in layers}
    handles = []

    class Done(Exception):
        pass

    def hook(layer):
        def record(module, args, output):
            keys = args[0].reshape(-1, args[0].shape[-1]).double()
            sums[layer] = keys.T @ keys if layer not in sums else sums[layer] + keys.T @ keys
            rows[layer] += keys.shape[0]
            if layer == max(layers):
                raise Done  # nothing deeper is needed

        return record

    for layer in layers:
        handles.append(down_projection(model, layer).register_forward_hook(hook(layer)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for window in windows:
            try:
                model(input_ids=torch.tensor([window], device=device), use_cache=False)
            except Done:
                pass
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    counts = set(rows.values())
    assert len(counts) == 1, rows
    n = counts.pop()
    return {layer: sums[layer].cpu() / n for layer in layers}, n


def assert_close_to_oracle(mom2: torch.Tensor, oracle: torch.Tensor) -> None:
    """rtol 1e-5 against the float64 oracle (plus an absolute slack of 1e-6 of the largest entry for
    entries that cancel to near zero: the package accumulates in float32)."""
    got = mom2.detach().cpu().double()
    slack = 1e-6 * float(oracle.abs().max())
    err = (got - oracle).abs() - 1e-5 * oracle.abs()
    assert torch.allclose(got, oracle, rtol=1e-5, atol=slack), (
        f"largest excess over rtol 1e-5: {float(err.max()):.3g} (atol {slack:.3g})"
    )
