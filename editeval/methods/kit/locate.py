"""What ROME and MEMIT share before they change a weight: context templates, locating the subject
in a prompt, and the keys read at it.

Named after the papers' steps (Meng et al. 2022, "Locating and Editing Factual Associations in
GPT"; Meng et al. 2023, "Mass-Editing Memory in a Transformer"):

- `compute_keys`: k* = mean over context-template prefixes of the subject's last-token input to
  the MLP output projection (ROME's compute_u before the C⁻¹ step; MEMIT's compute_ks).
- the value vectors δ (ROME's compute_v / MEMIT's compute_z) are optimised in
  `editeval.methods.kit.delta_optimisation`, on the rows located here.

Context templates. The original code samples its prefixes from the model being edited (top-k
with a fixed seed); for SmolLM2 these come out odd ('The-I-A. {}', FIELD.md), and they differ
per model, which makes results harder to compare. We use a fixed list of natural English
sentence openings instead — ten of about 5 tokens and ten of about 10 tokens, the lengths the
original samples — formatted like the original as "{prefix}. {prompt}", plus the bare prompt.
ROME uses the bare prompt + 10 short + 10 long (21, as the original); MEMIT the bare prompt +
5 long (6, as the MEMIT code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editeval.errors import EditevalError
from editeval.runtime import distributed
from editeval.runtime.architectures import layer_module_name
from editeval.runtime.models import input_device
from editeval.runtime.nethooks import Trace, no_grad_eval

SHORT_PREFIXES = [  # ~5 tokens each
    "The following is true",
    "It is well known that",
    "According to the records",
    "In a recent interview",
    "As a matter of fact",
    "Here is what we know",
    "I was surprised to learn",
    "Many people wonder about",
    "The history of the region",
    "This article is about",
]
LONG_PREFIXES = [  # ~10 tokens each
    "The first thing I noticed when I arrived was the",
    "According to a report published by the local newspaper",
    "In the early years of the twentieth century, the town",
    "After a long discussion with my friends about the",
    "The museum has a large collection of paintings from the",
    "Scientists have recently discovered a new species of bird",
    "When I was a child, my grandmother used to tell",
    "The company announced on Monday that it would expand",
    "One of the most important questions in modern history",
    "The book describes the life of a young woman who",
]
KL_TEMPLATE = "{} is a"


def context_prefixes(n_short: int, n_long: int) -> list[str]:
    """Text put before the prompt: "" (the bare prompt) first, then "{prefix}. " for each prefix."""
    if not (0 <= n_short <= len(SHORT_PREFIXES) and 0 <= n_long <= len(LONG_PREFIXES)):
        raise EditevalError(
            f"context templates: at most {len(SHORT_PREFIXES)} short and "
            f"{len(LONG_PREFIXES)} long prefixes (asked {n_short}, {n_long})"
        )
    return [""] + [p + ". " for p in SHORT_PREFIXES[:n_short] + LONG_PREFIXES[:n_long]]


def _describe(request: dict) -> str:
    return f"request {request.get('case_id', '?')} ({request.get('prompt', '')[:60]!r})"


def subject_span(request: dict) -> tuple[int, int]:
    """Character span of the subject in the prompt (exact match first, then case-insensitive)."""
    subject, prompt = (request.get("subject") or "").strip(), request.get("prompt") or ""
    if not subject:
        raise EditevalError(f"{_describe(request)}: no subject (ROME/MEMIT need the subject)")
    start = prompt.rfind(subject)
    if start < 0:
        start = prompt.lower().rfind(subject.lower())
    if start < 0:
        raise EditevalError(f"{_describe(request)}: subject {subject!r} does not occur in the prompt")
    return start, start + len(subject)


def last_token_index(tokenizer, text: str, char_end: int) -> tuple[list[int], int]:
    """Token ids of `text` and the index of the token holding character char_end - 1."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, return_offsets_mapping=True)
        idx = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < char_end]
        if idx:
            return list(enc["input_ids"]), idx[-1]
    ids = list(tokenizer(text)["input_ids"])
    return ids, len(tokenizer(text[:char_end])["input_ids"]) - 1


def target_ids(tokenizer, request: dict) -> list[int]:
    """Token ids of " " + target_new as they follow the prompt (the evaluation's split)."""
    target = request.get("target_new") or ""
    prompt = request["prompt"]
    # the target exactly as the evaluation joins it (a target stored with a leading space, e.g.
    # ' species' in zsre, is scored as prompt + "  species"; stripping it here edited toward
    # other tokens than the ones scored: reliability 0 on such requests)
    full = tokenizer(prompt + " " + target)["input_ids"]
    n_prompt = len(tokenizer(prompt)["input_ids"])
    ids = list(full[n_prompt:])
    if not target.strip() or not ids:
        raise EditevalError(f"{_describe(request)}: target_new {request.get('target_new')!r} tokenises to nothing")
    return ids


def check_request(tokenizer, request: dict) -> None:
    """Raise EditevalError if ROME/MEMIT cannot edit with this request."""
    for field in ("prompt", "subject", "target_new"):
        if not isinstance(request.get(field), str):
            raise EditevalError(f"{_describe(request)}: field {field!r} missing or not text")
    subject_span(request)
    target_ids(tokenizer, request)


@dataclass
class Located:
    ids: list[int]
    index: int  # subject's last token


def locate(tokenizer, request: dict, prefix: str = "") -> Located:
    _start, end = subject_span(request)
    ids, index = last_token_index(tokenizer, prefix + request["prompt"], len(prefix) + end)
    return Located(ids, index)


def suffix_length(tokenizer, request: dict) -> int:
    """Columns a δ optimisation runs each step for the request's rows: the prompt from the
    subject's last token on, plus the target (`delta_optimisation.compute_deltas` pads a batch to its longest)."""
    loc = locate(tokenizer, request)
    return len(loc.ids) - loc.index + len(target_ids(tokenizer, request))


def _pad_right(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def first_output(output):
    return output[0] if isinstance(output, tuple) else output


def gather_at_subject(
    model, tokenizer, located: list[Located], module_names: list[str], *, inputs: bool, batch_size: int = 32
) -> dict[str, torch.Tensor]:
    """Input (inputs=True) or output of each module at each text's subject-last token, float32,
    (len(located), dim) per module.

    Only what those values depend on is run: each text up to its subject-last token (causal
    attention: later tokens cannot change it), texts of about the same length batched together
    (little padding), the forward pass stopped after the deepest module. Inside a batch that every process
    of a data-parallel run applies (`distributed.collective`) the batches are shared out over the
    processes (MEMIT's keys of a mass edit)."""
    device = input_device(model)
    pad = pad_id(tokenizer)
    order = sorted(range(len(located)), key=lambda i: located[i].index)
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

    def run(batch: list[int]) -> dict[str, torch.Tensor]:
        part = [located[i] for i in batch]
        ids, mask = _pad_right([p.ids[: p.index + 1] for p in part], pad, device)
        rows = torch.arange(len(part), device=device)
        cols = torch.tensor([p.index for p in part], device=device)
        with Trace(model, module_names, retain_input=inputs, retain_output=not inputs, stop=True) as tr:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        got = {}
        for name in module_names:
            h = tr.inputs[name] if inputs else first_output(tr.outputs[name])
            got[name] = h[rows.to(h.device), cols.to(h.device)].float()
        return got

    with no_grad_eval(model):
        parts = distributed.split_map(run, batches)
    back = torch.empty(len(order), dtype=torch.long)  # row of each text in the sorted order
    back[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    out = {}
    for name in module_names:
        where = parts[0][name].device if parts else device
        out[name] = torch.cat([p[name].to(where) for p in parts])[back.to(where)] if parts else torch.empty(0)
    return out


def compute_keys(
    model,
    tokenizer,
    requests: list[dict],
    layers: list[int],
    prefixes: list[str],
    batch_size: int = 32,
    *,
    per_prefix: bool = False,
) -> dict[int, torch.Tensor]:
    """k* per request and layer: (len(requests), d_in) float32, mean over the context prefixes
    (per_prefix=True: (len(requests), len(prefixes), d_in), not averaged)."""
    located = [locate(tokenizer, r, p) for r in requests for p in prefixes]
    names = {layer: layer_module_name(model, layer, "mlp_out") for layer in layers}
    order = sorted(layers)
    got = gather_at_subject(
        model, tokenizer, located, [names[layer] for layer in order], inputs=True, batch_size=batch_size
    )
    keys = {layer: got[names[layer]].view(len(requests), len(prefixes), -1) for layer in layers}
    return keys if per_prefix else {layer: k.mean(1) for layer, k in keys.items()}
