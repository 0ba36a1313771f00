"""KN: knowledge neurons (Dai et al. 2022, "Knowledge Neurons in Pretrained Transformers").

1. **Attribution.** For each prompt (the edit prompt and its rephrasings) and each token of the
   answer (the ground truth; the target when there is none), integrated gradients over every MLP
   intermediate neuron of every layer (the input of the MLP output projection, at the last
   position): the neuron's activation `a` is scaled from 0 to `a` in `steps` steps (Riemann sum),
   and attribution = a · mean_k ∂P(answer token | prompt)/∂(k/m · a). Scores are averaged over the
   answer's tokens (each scored after the tokens before it, as in the reference implementation).
2. **Selection.** Per prompt, the neurons above `adaptive_threshold` × the prompt's largest
   attribution (the paper's adaptive threshold, 0.2); then the neurons shared by more than a
   fraction `p` of the prompts (if none is, the edit prompt's own neurons). At most `max_neurons`
   (highest total attribution first) when set.
3. **Edit.** Each selected neuron's value vector (its column of the MLP output projection,
   out × in) gets `- scale · E[erased token] + scale · E[first token of " " + target_new]`, with E the
   input word embeddings (the reference implementation's "edit" mode uses scale 2). The erased
   token is the first token of the ground truth (the model's current prediction when there is no
   ground truth, or with `erase: prediction`).

Efficiency: the prefix's keys/values are computed once per prompt; every (layer, step) pair is one
row of a single batched one-token forward/backward (a hook scales only its own layer's neurons in
its own rows), so a prompt-token costs one pass over `num_layers × steps` single tokens. Rows are
ordered by layer, and below its own layer a row is the clean pass: so block l runs only the rows of
the layers ≤ l plus one clean row standing for all the others (hooks on the blocks cut the batch
and broadcast the clean row back out), which halves the blocks' work with the same result.
Single edits only (the method's selection is per fact).
"""

from __future__ import annotations

import inspect
from typing import Literal

import torch
from pydantic import Field

from editeval.errors import EditevalError
from editeval.methods.base import Backup, HParams, backup_parameters, register_method
from editeval.methods.kit.freeze import frozen_for_editing
from editeval.runtime.architectures import (
    architecture,
    layer_module_name,
    mlp_out_as_out_in,
    mlp_out_weight,
    num_layers,
)
from editeval.runtime.models import input_device
from editeval.runtime.nethooks import add_hook


class KNHParams(HParams):
    steps: int = Field(20, ge=1)  # integrated-gradients steps (m)
    adaptive_threshold: float = Field(0.2, ge=0, le=1)  # keep neurons above this fraction of the largest attribution
    p: float = Field(0.5, ge=0, le=1)  # keep neurons shared by more than this fraction of the prompts
    use_rephrases: bool = True  # the prompts are the edit prompt and its rephrasings
    max_prompts: int = 4
    max_neurons: int | None = None
    layers: list[int] | None = None  # layers searched (None = all)
    scale: float = 2.0  # value-vector edit: -scale * E[erased] + scale * E[target]
    erase: Literal["ground_truth", "prediction"] = "ground_truth"
    attribution_target: Literal["ground_truth", "target_new"] = "ground_truth"
    max_answer_tokens: int = 4  # answer tokens scored by attribution


def _cache_kwargs(model, cache) -> dict:
    params = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def _result_cache(res):
    cache = getattr(res, "cache", None)
    return cache if cache is not None else getattr(res, "past_key_values", None)


def _first_token(tokenizer, text: str) -> int | None:
    ids = tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"]
    return ids[0] if ids else None


class _ActiveRows:
    """Hooks on every block: block l computes only its first `active[l]` rows (the rows of the
    layers ≤ l, then one clean row); its output is broadcast back to all rows from that clean row,
    which is what every later row holds at block l (their own layer's scaling comes later)."""

    def __init__(self, blocks, active: list[int], rows: int):
        self.rows, self.handles = rows, []
        for block, n in zip(blocks, active):
            if n < rows:
                self.handles.append(add_hook(block, self._cut(n), before=True, with_kwargs=True))
                self.handles.append(add_hook(block, self._spread(n)))

    def _cut(self, n: int):
        def slice_rows(value):
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == self.rows:
                return value[:n]
            if isinstance(value, tuple) and any(isinstance(v, torch.Tensor) for v in value):
                return tuple(slice_rows(v) for v in value)
            return value

        def hook(module, args, kwargs):
            return tuple(slice_rows(a) for a in args), {k: slice_rows(v) for k, v in kwargs.items()}

        return hook

    def _spread(self, n: int):
        def spread(h):
            return torch.cat([h, h[n - 1 : n].expand(self.rows - n, *h.shape[1:])], 0)

        def hook(module, args, output):
            if isinstance(output, tuple):
                return (spread(output[0]),) + tuple(output[1:])
            return spread(output)

        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def attribution_scores(
    model, tokenizer, prompt: str, answer: str, layers: list[int], hparams: KNHParams, *, skip_clean_rows: bool = True
) -> torch.Tensor:
    """(len(layers), intermediate) integrated-gradients attributions, averaged over answer tokens.
    `layers` ascending. ``skip_clean_rows=False`` runs every row through every block (the plain
    batched computation; the same result up to float rounding)."""
    device = input_device(model)
    prompt_ids = tokenizer(prompt)["input_ids"]
    answer_ids = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"][: hparams.max_answer_tokens]
    if not answer_ids:
        raise EditevalError(f"answer {answer!r} tokenises to nothing")
    m = hparams.steps
    alphas = torch.arange(1, m + 1, device=device, dtype=torch.float32) / m
    modules = [model.get_submodule(layer_module_name(model, layer, "mlp_out")) for layer in layers]
    rows = len(layers) * m
    blocks = list(model.get_submodule(architecture(model).layers))
    # rows block b computes: those of the layers ≤ b, and one clean row when any layer is above b
    active = [rows] * len(blocks)
    if skip_clean_rows:
        for block in range(len(blocks)):
            below = sum(1 for layer in layers if layer <= block) * m
            active[block] = min(rows, below + 1)
    total = None
    for t, target in enumerate(answer_ids):
        ids = prompt_ids + answer_ids[:t]
        prefix, last = ids[:-1], ids[-1]
        cache = None
        if prefix:
            with torch.no_grad():
                res = model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
            cache = _result_cache(res)
            for layer_cache, n in zip(cache.layers, active):  # each block's prefix for its rows
                layer_cache.keys = layer_cache.keys.expand(n, *layer_cache.keys.shape[1:])
                layer_cache.values = layer_cache.values.expand(n, *layer_cache.values.shape[1:])
        acts: dict[int, torch.Tensor] = {}
        leaves: dict[int, torch.Tensor] = {}

        def make_hook(g: int):
            def hook(module, args):
                x = args[0]  # (rows, 1, intermediate)
                natural = x[g * m].detach()  # every row of group g is unscaled below layer g
                scaled = (alphas[:, None, None] * natural.float()).to(x.dtype).requires_grad_(True)
                acts[g], leaves[g] = natural, scaled  # noqa: B023 (the hook runs within this iteration)
                x = torch.cat([x[: g * m], scaled, x[(g + 1) * m :]], 0)
                return (x,) + tuple(args[1:])

            return hook

        handles = [add_hook(mod, make_hook(g), before=True) for g, mod in enumerate(modules)]
        cut = _ActiveRows(blocks, active, rows)
        try:
            with torch.enable_grad():
                kwargs = _cache_kwargs(model, cache) if cache is not None else {}
                out = model(
                    input_ids=torch.full((rows, 1), last, device=device),
                    attention_mask=torch.ones((rows, len(ids)), dtype=torch.long, device=device),
                    position_ids=torch.full((rows, 1), len(ids) - 1, device=device),
                    use_cache=cache is not None,
                    **kwargs,
                )
                probs = torch.softmax(out.logits[:, -1].float(), -1)[:, target]
                grads = torch.autograd.grad(probs.sum(), [leaves[g] for g in range(len(modules))])
        finally:
            cut.close()
            for h in handles:
                h.remove()
        scores = torch.stack(
            [acts[g].float().reshape(-1) * grads[g].float().reshape(m, -1).mean(0) for g in range(len(modules))]
        )
        total = scores if total is None else total + scores
    return total / len(answer_ids)


def select_neurons(
    scores_per_prompt: list[torch.Tensor], layers: list[int], hparams: KNHParams
) -> list[tuple[int, int]]:
    """The paper's thresholds: adaptive per prompt, then shared by more than p of the prompts."""
    counts: dict[tuple[int, int], int] = {}
    strength: dict[tuple[int, int], float] = {}
    coarse_first: list[tuple[int, int]] = []
    for k, scores in enumerate(scores_per_prompt):
        threshold = hparams.adaptive_threshold * scores.max()
        picked = (scores > threshold).nonzero().tolist()
        for g, n in picked:
            key = (layers[g], n)
            counts[key] = counts.get(key, 0) + 1
            strength[key] = strength.get(key, 0.0) + float(scores[g, n])
            if k == 0:
                coarse_first.append(key)
    need = hparams.p * len(scores_per_prompt)
    neurons = [key for key, c in counts.items() if c > need] or coarse_first
    neurons.sort(key=lambda key: -strength[key])
    if hparams.max_neurons:
        neurons = neurons[: hparams.max_neurons]
    return neurons


@register_method("kn", hparams=KNHParams, batch=False, sequential=True)
def apply_kn(model, tokenizer, requests, hparams: KNHParams) -> Backup:
    if len(requests) != 1:
        raise EditevalError("KN edits one request at a time")
    request = requests[0]
    n = num_layers(model)
    layers = list(range(n)) if hparams.layers is None else [hparams.scale_layer(layer, n) for layer in hparams.layers]
    layers = sorted({layer % n for layer in layers})
    architecture(model)
    target_id = _first_token(tokenizer, request["target_new"])
    if target_id is None:
        raise EditevalError(f"target_new {request['target_new']!r} tokenises to nothing")
    truth = request.get("ground_truth") or ""
    answer = truth if hparams.attribution_target == "ground_truth" and truth.strip() else request["target_new"]
    prompts = [request["prompt"]]
    if hparams.use_rephrases:
        prompts += list(request.get("rephrase_prompts") or [])
    prompts = prompts[: max(1, hparams.max_prompts)]

    with frozen_for_editing(model):
        scores = [attribution_scores(model, tokenizer, prompt, answer, layers, hparams) for prompt in prompts]
        if hparams.erase == "ground_truth" and truth.strip():
            erase_id = _first_token(tokenizer, truth)
        else:
            with torch.no_grad():
                ids = torch.tensor([tokenizer(request["prompt"])["input_ids"]], device=input_device(model))
                erase_id = int(model(input_ids=ids).logits[0, -1].argmax())

    neurons = select_neurons(scores, layers, hparams)
    names = sorted({mlp_out_weight(model, layer)[0] for layer, _ in neurons})
    backup = backup_parameters(model, names)
    embeddings = model.get_input_embeddings().weight
    delta = hparams.scale * (embeddings[target_id].float() - embeddings[erase_id].float())
    with torch.no_grad():
        for layer, neuron in neurons:
            _, weight = mlp_out_weight(model, layer)
            w = mlp_out_as_out_in(model, weight)  # (hidden, intermediate) view
            w[:, neuron] = (w[:, neuron].float() + delta.to(w.device)).to(w.dtype)
    return backup
