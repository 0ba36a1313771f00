"""The one LM runner: padded batches, KV caches, greedy decoding, and the transformers cache-keyword
differences. Nothing else in editeval runs a model forward for evaluation.

* `LMRunner.score` scores the target span of teacher-forced sequences in padded batches sorted by
  length, one forward per batch through the model body; the LM head is applied only at the
  target-span positions (the logits of the other positions are never needed). Padding side is a
  setting; positions are passed explicitly so left padding is exact for absolute- and
  rotary-position models alike.
* Generation protocol (greedy, target-length): greedy decoding agrees with the teacher-forced
  argmax up to the first mispredicted target token, so generation continues from the KV cache of
  the teacher-forced pass at that point; only the remaining tokens are decoded. A sequence whose
  prompt tokenises differently alone (``gen_prompt`` set) is generated from scratch from it.
* `LMRunner.greedy` is plain batched greedy decoding from prompts (left padded), for fluency and
  free generation; prompts opening with the same few-shot demonstrations can share the KV cache of
  those (``share_prefix``), computed once instead of once per prompt.

Both equal Hugging Face ``model.generate`` (greedy) on each prompt alone (tests/test_evaluate.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

# CPU BLAS computes matrices with fewer rows by another kernel (different rounding): never go below
_MIN_GEMM_ROWS = 4
# greedy continuations of up to this many batches decode together (fewer, fuller decoding steps)
_DECODE_BATCHES = 4


class Scorable(Protocol):
    """What the runner needs of a sequence (`editeval.evaluation.requests.EvalSequence` is one)."""

    ids: list[int]
    start: int  # the first scored token; the span is ids[start:]
    gen: bool  # also generate the span's length greedily from the prompt
    gen_prompt: list[int] | None  # generate from these ids alone (the prompt tokenises differently alone)


@dataclass
class SpanOutput:
    pred: list[int]  # the argmax at each span position (teacher forced)
    logprob: float  # sum of the span tokens' log-probabilities
    generated: list[int] = field(default_factory=list)  # greedy generation, when asked


@dataclass
class _Pending:
    """Sequences whose greedy generation continues after the teacher-forced pass."""

    seqs: list[int]
    tokens: list[int]  # the next input token of each (its first mispredicted token)
    positions: list[int]
    remaining: list[int]  # tokens still to generate
    mask: torch.Tensor  # [R, W] visible cache columns
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None  # per layer (keys, values) [R, H, W, D]
    cache: object = None  # the batch's own cache when it could not be sliced


def _body_and_head(model):
    """(body, head) so that ``head(body(x).last_hidden_state)`` are the logits, or None when the
    model post-processes its logits (soft-capping, scaling) and must run whole."""
    cfg = getattr(model, "config", None)
    if cfg is not None and (getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None)):
        return None
    try:
        head = model.get_output_embeddings()
        body = model.base_model
    except (AttributeError, NotImplementedError):
        return None
    if head is None or body is None or body is model:
        return None
    return body, head


def _cache_kwargs(module, cache) -> dict:
    """The KV-cache keyword of this forward: ``cache`` (transformers >= 5.x) or ``past_key_values``."""
    params = inspect.signature(module.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def _result_cache(res):
    cache = getattr(res, "cache", None)
    return cache if cache is not None else getattr(res, "past_key_values", None)


def _kv_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Per-layer (keys, values) of a plain dynamic cache, or None for any other cache kind."""
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        return None
    if any(getattr(layer, "keys", None) is None for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def _new_cache(layers):
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(layers):
        cache.update(k, v, i)
    return cache


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


class LMRunner:
    """Runs a causal LM over token-id sequences.

    Args:
        pad_id / eos_id: the tokenizer's padding and end-of-sequence ids.
        batch_size: sequences per forward pass.
        padding_side: "right" or "left", for padded batches; results are the same.
        mixed_lengths: let one batch hold sequences of different lengths (padded to the longest).
            Off: batches hold one length each (no padding at all), so every number is
            bit-identical on CPU whatever the batch size.
        progress: show a tqdm progress bar while scoring.
    """

    def __init__(
        self,
        *,
        pad_id: int,
        eos_id: int | None,
        batch_size: int = 32,
        padding_side: str = "right",
        mixed_lengths: bool = False,
        progress: bool = False,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if padding_side not in ("left", "right"):
            raise ValueError("padding_side must be 'left' or 'right'")
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.batch_size = batch_size
        self.padding_side = padding_side
        self.mixed_lengths = mixed_lengths
        self.progress = progress

    def batches(self, seqs: Sequence[Scorable], seq_ids: Sequence[int]) -> list[list[int]]:
        """Sorted by length; unless ``mixed_lengths``, a batch never mixes lengths, so no padding
        is needed and each sequence's arithmetic does not depend on its batch companions."""
        order = sorted(seq_ids, key=lambda s: (len(seqs[s].ids), s))
        if self.mixed_lengths:
            return [order[k : k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        batches, group = [], []
        for s in order:
            if group and (len(group) == self.batch_size or len(seqs[group[0]].ids) != len(seqs[s].ids)):
                batches.append(group)
                group = []
            group.append(s)
        if group:
            batches.append(group)
        return batches

    def _pad(self, rows: Sequence[Sequence[int]], device, side: str):
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        offsets = []
        for b, r in enumerate(rows):
            off = width - len(r) if side == "left" else 0
            ids[b, off : off + len(r)] = torch.tensor(r, dtype=torch.long)
            mask[b, off : off + len(r)] = 1
            offsets.append(off)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(device), mask.to(device), pos.to(device), offsets

    @torch.no_grad()
    def score(
        self, model, seqs: Sequence[Scorable], seq_ids: Sequence[int], *, generate: bool, desc: str = ""
    ) -> dict[int, SpanOutput]:
        """The span outputs of ``seqs[s]`` for each ``s`` of ``seq_ids`` on ``model``; with
        ``generate``, sequences with ``gen`` set also get their greedy generation."""
        from tqdm.auto import tqdm

        device = _model_device(model)
        split = _body_and_head(model)
        outs: dict[int, SpanOutput] = {}
        batches = self.batches(seqs, seq_ids)
        fallback_gen: list[int] = []
        pending: list[_Pending] = []
        bar = tqdm(total=len(seq_ids), desc=desc, unit="seq", disable=not self.progress, leave=False)
        for batch in batches:
            batch_seqs = [seqs[s] for s in batch]
            want_gen = generate and any(q.gen and q.gen_prompt is None for q in batch_seqs)
            rows = [q.ids for q in batch_seqs]
            while len(rows) * len(rows[0]) < _MIN_GEMM_ROWS:  # tiny inputs take another BLAS path
                rows.append(rows[0])
            ids, mask, pos, offs = self._pad(rows, device, self.padding_side)
            if split is not None:
                body, head = split
                res = body(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=want_gen)
                states = res.last_hidden_state
            else:
                head = None
                res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=want_gen)
                states = res.logits
            _span_outputs(states, head, batch, batch_seqs, offs, outs, device)
            if want_gen:
                work = _continue(seqs, _result_cache(res), batch, outs, mask, offs)
                if work is not None:
                    pending.append(work)
                    if work.cache is not None or sum(len(w.seqs) for w in pending) >= self.batch_size * _DECODE_BATCHES:
                        _decode(model, split, pending, outs)
                        pending = []
            if generate:
                fallback_gen += [s for s in batch if seqs[s].gen and seqs[s].gen_prompt is not None]
            del res, states
            bar.update(len(batch))
        _decode(model, split, pending, outs)
        bar.close()
        if fallback_gen:
            gens = self.greedy(
                model,
                [seqs[s].gen_prompt for s in fallback_gen],
                [len(seqs[s].ids) - seqs[s].start for s in fallback_gen],
                stop_at_eos=False,
            )
            for s, g in zip(fallback_gen, gens):
                outs[s].generated = g
        return outs

    @torch.no_grad()
    def greedy(
        self,
        model,
        prompts: Sequence[Sequence[int]],
        max_new: Sequence[int],
        *,
        stop_at_eos: bool,
        stop_after: Collection[int] = (),
        stop_when: Callable[[list[int]], bool] | None = None,
        share_prefix: int = 0,
    ) -> list[list[int]]:
        """Batched greedy decoding from token-id prompts (left padded, explicit positions): up to
        ``max_new[k]`` new tokens for prompt k; with ``stop_at_eos``, up to (without) the EOS token;
        a token of ``stop_after`` ends its row after it (a natural stop: a period, a newline), and so
        does ``stop_when(tokens so far)`` returning True (a stop that depends on the text, such as a
        chain of thought's finished answer line).

        ``share_prefix`` (a token count; 0: off): prompts that open with the same first
        ``share_prefix`` tokens are batched together, and where a batch's prompts share at least
        that many leading tokens (few-shot demonstrations), those are run once and their KV cache
        serves every row; only the rest of each prompt is run per row (`_shared_prefix`)."""
        device = _model_device(model)
        split = _body_and_head(model)
        results: list[list[int]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda k: (len(prompts[k]), k))
        groups: dict[tuple, list[int]] = {}  # with share_prefix: by opening tokens (by length within)
        for k in order:
            groups.setdefault(tuple(prompts[k][:share_prefix]) if share_prefix else (), []).append(k)
        batches = [g[i : i + self.batch_size] for g in groups.values() for i in range(0, len(g), self.batch_size)]
        eos = self.eos_id if stop_at_eos else None
        for idx in batches:
            rows = [prompts[k] for k in idx]
            shared = _shared_prefix(model, split, rows, share_prefix, device) if share_prefix else None
            if shared is None:
                ids, mask, pos, _ = self._pad(rows, device, "left")
                cache = None
            else:
                n, cache = shared
                ids, mask, pos, _ = self._pad([r[n:] for r in rows], device, "left")
                mask = torch.cat([mask.new_ones((len(rows), n)), mask], 1)
                pos = pos + n
            limit = [max_new[k] for k in idx]
            gens = _greedy_batch(model, split, ids, mask, pos, limit, eos, stop_after, stop_when, cache)
            for k, generated in zip(idx, gens):
                results[k] = generated
        return results


def _span_outputs(states, head, batch, batch_seqs, offs, outs, device) -> None:
    """Argmax and summed log-probability of each sequence's span, the head applied only there."""
    rows_idx, cols_idx, labels, spans = [], [], [], []
    for b, q in enumerate(batch_seqs):
        n = len(q.ids) - q.start
        first = offs[b] + q.start - 1
        rows_idx += [b] * n
        cols_idx += range(first, first + n)
        labels += q.ids[q.start :]
        spans.append(n)
    n_pick = len(rows_idx)
    while len(rows_idx) < _MIN_GEMM_ROWS:
        rows_idx.append(0)
        cols_idx.append(cols_idx[0])
    picked = states[torch.tensor(rows_idx, device=device), torch.tensor(cols_idx, device=device)]
    logits = (head(picked) if head is not None else picked).float()[:n_pick]
    pred = logits.argmax(-1)
    lab = torch.tensor(labels, device=device)
    lp = torch.log_softmax(logits, -1).gather(-1, lab[:, None])[:, 0].double()
    pred_l, lp_l = pred.tolist(), lp.tolist()
    k = 0
    for s, n in zip(batch, spans):
        outs[s] = SpanOutput(pred_l[k : k + n], float(sum(lp_l[k : k + n])))
        k += n


def _shared_prefix(model, split, rows: Sequence[Sequence[int]], at_least: int, device):
    """``(n, cache)``: the KV cache of the ``n`` leading tokens all `rows` share, run once and
    expanded to one row per prompt, when ``n >= at_least`` (every row keeps at least one token of
    its own, which gives its first next-token logits); else None (also for a cache kind whose
    tensors cannot be shared)."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for r in rows[1:]:
        n = next((j for j in range(n) if r[j] != first[j]), n)
    if n < at_least:
        return None
    ids = torch.tensor([list(first[:n])], dtype=torch.long, device=device)
    body = split[0] if split is not None else model
    res = body(input_ids=ids, position_ids=torch.arange(n, device=device)[None], use_cache=True)
    kv = _kv_tensors(_result_cache(res))
    if kv is None:
        return None
    b = len(rows)
    return n, _new_cache([(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in kv])


def _greedy_batch(
    model,
    split,
    ids,
    mask,
    pos,
    limit: list[int],
    eos: int | None,
    stop_after: Collection[int] = (),
    stop_when: Callable[[list[int]], bool] | None = None,
    cache=None,
) -> list[list[int]]:
    """Greedy decoding of one left-padded batch: up to ``limit[r]`` new tokens for row r; with an
    ``eos`` id, up to (without) that token; after a token of ``stop_after``, or once ``stop_when``
    holds for the row's tokens, no more. `cache`: the KV cache of what comes before `ids` (a shared
    prefix; `mask` covers it too)."""
    device = ids.device
    results: list[list[int]] = [[] for _ in limit]
    past = {} if cache is None else _cache_kwargs(split[0] if split is not None else model, cache)
    if split is not None:
        res = split[0](input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **past)
        nxt = split[1](res.last_hidden_state[:, -1]).float().argmax(-1)
    else:
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **past)
        nxt = res.logits[:, -1].float().argmax(-1)
    cache = _result_cache(res)
    cur = pos[:, -1:] + 1
    done = [False] * len(limit)
    for step in range(max(limit)):
        for r in range(len(limit)):
            if done[r] or step >= limit[r]:
                continue
            t = int(nxt[r])
            if eos is not None and t == eos:
                done[r] = True
                continue
            results[r].append(t)
            done[r] = t in stop_after or (stop_when is not None and stop_when(results[r]))
        if step + 1 >= max(limit) or all(d or step + 1 >= lim for d, lim in zip(done, limit)):
            break
        mask = torch.cat([mask, torch.ones((len(limit), 1), dtype=mask.dtype, device=device)], 1)
        nxt, cache = _step(model, split, nxt[:, None], mask, cur, cache)
        cur = cur + 1
    return results


def _step(model, split, tokens, mask, pos, cache):
    """One decoding step: the next greedy token of each row, and the grown cache."""
    if split is not None:
        body, head = split
        res = body(
            input_ids=tokens, attention_mask=mask, position_ids=pos, use_cache=True, **_cache_kwargs(body, cache)
        )
        return head(res.last_hidden_state[:, -1]).float().argmax(-1), _result_cache(res)
    res = model(input_ids=tokens, attention_mask=mask, position_ids=pos, use_cache=True, **_cache_kwargs(model, cache))
    return res.logits[:, -1].float().argmax(-1), _result_cache(res)


def _continue(seqs, cache, batch, outs, mask, offs) -> _Pending | None:
    """Greedy target-length generation, resumed from the teacher-forced pass's KV cache at
    each sequence's first mispredicted target token. Sequences predicted right all along are
    done here; the others are returned as pending work (their cache rows, cropped), so that
    the decoding steps of several batches run together (`_decode`)."""
    device = mask.device
    rows, tokens, positions, remaining, cut = [], [], [], [], []
    for b, s in enumerate(batch):
        q, o = seqs[s], outs[s]
        if not q.gen or q.gen_prompt is not None:
            continue
        labels = q.ids[q.start :]
        j = next((t for t, (p, y) in enumerate(zip(o.pred, labels)) if p != y), len(labels))
        o.generated = list(o.pred[: j + 1])
        if j + 1 < len(labels):
            rows.append(b)
            tokens.append(o.pred[j])
            positions.append(q.start + j)  # the position the mispredicted token now occupies
            remaining.append(len(labels) - j - 1)
            cut.append(offs[b] + q.start + j)  # cache columns before this one stay visible
    if not rows:
        return None
    width = max(cut)
    sel = torch.tensor(rows, device=device)
    base_mask = mask[sel, :width].clone()
    cols = torch.arange(width, device=device)[None, :]
    base_mask[cols >= torch.tensor(cut, device=device)[:, None]] = 0
    kv = _kv_tensors(cache)
    if kv is not None:
        kv = [(k[sel, :, :width], v[sel, :, :width]) for k, v in kv]
    else:  # a cache we cannot slice: decode this batch alone, on the cache as it is
        cache.batch_select_indices(sel)
        base_mask = torch.cat([base_mask, base_mask.new_zeros((len(rows), mask.shape[1] - width))], 1)
    return _Pending(
        [batch[b] for b in rows], tokens, positions, remaining, base_mask, kv, cache if kv is None else None
    )


def _decode(model, split, work: list[_Pending], outs) -> None:
    """Run the remaining greedy steps of pending sequences, several batches' worth at once
    (caches right-padded to a common width; padded columns masked)."""
    if not work:
        return
    if len(work) == 1 and work[0].cache is not None:
        w = work[0]
        cache, base_mask = w.cache, w.mask
    else:
        width = max(w.mask.shape[1] for w in work)
        base_mask = torch.cat([torch.nn.functional.pad(w.mask, (0, width - w.mask.shape[1])) for w in work])
        layers = []
        for layer in range(len(work[0].kv)):
            ks = [torch.nn.functional.pad(w.kv[layer][0], (0, 0, 0, width - w.kv[layer][0].shape[2])) for w in work]
            vs = [torch.nn.functional.pad(w.kv[layer][1], (0, 0, 0, width - w.kv[layer][1].shape[2])) for w in work]
            layers.append((torch.cat(ks), torch.cat(vs)))
        cache = _new_cache(layers)
    seqs = [s for w in work for s in w.seqs]
    remaining = [r for w in work for r in w.remaining]
    device = base_mask.device
    tok = torch.tensor([t for w in work for t in w.tokens], device=device)[:, None]
    pos = torch.tensor([p for w in work for p in w.positions], device=device)[:, None]
    ones = base_mask.new_ones((len(seqs), 0))
    for step in range(max(remaining)):
        ones = torch.cat([ones, base_mask.new_ones((len(seqs), 1))], 1)
        nxt, cache = _step(model, split, tok, torch.cat([base_mask, ones], 1), pos, cache)
        nxt_l = nxt.tolist()
        for r, s in enumerate(seqs):
            if step < remaining[r]:
                outs[s].generated.append(nxt_l[r])
        tok = nxt[:, None]
        pos = pos + 1
