"""The batched evaluation engine: every metric of `editeval.evaluation.metrics` for many edits at once.

Usage (the edit driver and `editeval score` both go through this)::

    ev = Evaluator(base, requests, batch_size=32)      # builds sequences; caches base predictions
    rows = ev.evaluate(edited_model)                   # all edits on one edited model (batch/seq.)
    rows = ev.evaluate(edited_model, indices=[i])      # one edit (single mode), after applying it

How it works
------------
* At construction every evaluation sequence of every request is tokenised once (reliability,
  generalization, locality, portability, CounterFact true/new completions, PIQA solutions).
* The *unedited* base model's argmax over each locality answer span (and its PIQA choices) is
  computed once and cached on disk under ``cache_dir()/preedit/``, keyed by the base weights'
  fingerprint, the metric version and a hash of the exact token ids scored; sequential editing
  never compares against an already-edited model.
* ``evaluate`` scores the requested sequences in padded batches sorted by length, one forward
  per batch through the model body; the LM head is applied only at the target-span positions
  (the logits of the other positions are never needed). Padding side is a setting
  (``padding_side``); positions are passed explicitly so left padding is exact for absolute-
  and rotary-position models alike.
* Generation protocol (greedy, target-length): greedy decoding agrees with the teacher-forced
  argmax up to the first mispredicted target token, so generation continues from the KV cache
  of the teacher-forced pass at that point; only the remaining tokens are decoded. Where the
  prompt's own tokenisation differs from its tokens inside ``prompt + " " + target`` (a BPE
  merge across the boundary), that sequence is generated from scratch from the prompt alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from editeval.evaluation import metrics as M
from editeval.runtime import tokens
from editeval.methods.kit.artifacts import prompt_transform
from editeval.runtime.paths import cache_dir

log = logging.getLogger(__name__)

# sequence roles
REL, GEN, LOC, PORT, CF_TRUE, NEIGH_NEW, NEIGH_TRUE, PIQA = (
    "reliability", "generalization", "locality", "portability", "cf_true", "neigh_new",
    "neigh_true", "piqa",
)


# CPU BLAS computes matrices with fewer rows by another kernel (different rounding): never go below
_MIN_GEMM_ROWS = 4
# greedy continuations of up to this many batches decode together (fewer, fuller decoding steps)
_DECODE_BATCHES = 4


@dataclass
class _Seq:
    ids: list[int]
    start: int  # prompt_len: the first scored token; the span is ids[start:]
    owner: int  # request position (-1 for PIQA)
    role: str
    kind: str = ""
    slot: int = 0
    gen: bool = False  # wants the generation protocol
    gen_prompt: list[int] | None = None  # set when the prompt alone tokenises differently
    text: tuple[str, str, bool] | None = None  # (prompt, target, chat): to re-build conditioned


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


@dataclass
class _Out:
    pred: list[int]
    logprob: float  # sum of the span tokens' log-probabilities
    generated: list[int] = field(default_factory=list)


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


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
    import inspect

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


def wants_counterfact(requests: Iterable[Mapping]) -> bool:
    """Whether the ROME CounterFact scores apply when not said (``counterfact=None``): some
    request has neighbourhood prompts or a prompt template."""
    return any(r.get("neighborhood_prompts") or r.get("prompt_template") for r in requests)


def evaluation_columns(requests: Iterable[Mapping], *, generation: bool = True, counterfact: bool | None = None,
                       fluency: bool = False, piqa: bool = False) -> list[str]:
    """The row columns an `Evaluator` over `requests` gives (without tokenising anything): lets
    rows of evaluators over parts of the requests (data-parallel shards, resumed runs) be put in
    the columns of one evaluator over all of them."""
    requests = [dict(r) for r in requests]
    if counterfact is None:
        counterfact = wants_counterfact(requests)
    loc = sorted({e.get("kind") or "default" for r in requests for e in r.get("locality") or []})
    port = sorted({e.get("kind") or "default" for r in requests for e in r.get("portability") or []})
    return _columns_for(loc, port, generation=generation, counterfact=counterfact, fluency=fluency, piqa=piqa)


def _columns_for(locality_kinds: Sequence[str], portability_kinds: Sequence[str], *, generation: bool,
                 counterfact: bool, fluency: bool, piqa: bool) -> list[str]:
    cols = ["case_id", "reliability.teacher_forced", "generalization.teacher_forced"]
    if generation:
        cols += ["reliability.generation", "generalization.generation"]
    cols.append("locality.teacher_forced")
    cols += [f"locality.{k}.teacher_forced" for k in locality_kinds]
    protos = ["teacher_forced"] + (["generation"] if generation else [])
    for p in protos:
        cols.append(f"portability.{p}")
        cols += [f"portability.{k}.{p}" for k in portability_kinds]
    if counterfact:
        cols += ["efficacy_score", "efficacy_magnitude", "paraphrase_score", "paraphrase_magnitude",
                 "neighborhood_score", "neighborhood_magnitude"]
    if fluency:
        cols.append("fluency.ngram_entropy")
    if piqa:
        cols += ["other_task.piqa_accuracy", "other_task.piqa_agreement"]
    return cols


class Evaluator:
    """Scores edited models on a fixed list of edit requests.

    Args:
        base: the unedited `LoadedModel` (its tokenizer is used for everything).
        requests: edit-request records (`editeval.data.schema`), a list or a `datasets.Dataset`.
        batch_size: sequences per forward pass.
        chat_template: wrap edit-side prompts (reliability, generalization, portability,
            efficacy/paraphrase) with the tokenizer's chat template; never locality prompts.
        generation: also compute the ``*.generation`` protocol.
        fluency: greedy generations (100 new tokens) from ``generation_prompts``.
        piqa: PIQA records ``{goal, sol1, sol2, label}`` for Other-Task locality, or None.
        dataset_fingerprint: recorded only; the pre-edit cache keys on the token ids themselves.
        progress: show tqdm progress bars.
        counterfact: compute the ROME CounterFact scores (needs ``ground_truth``); None = when
            any request has neighbourhood prompts or a prompt template. Neighbourhood prompts are
            ``neighborhood_prompts``, else the ``locality`` entries of kind ``neighborhood``.
        padding_side: "right" (default) or "left", for padded batches; results are the same.
        mixed_lengths: let one batch hold sequences of different lengths (padded to the longest).
            Off by default: batches then hold one length each (no padding at all), which makes
            every number bit-identical on CPU whatever the batch size; padding changes the
            float arithmetic of a row in its last bits (magnitudes may move by ~1e-7).
        use_cache: read/write the pre-edit cache on disk.
    """

    def __init__(
        self,
        base,
        requests: Iterable[Mapping],
        *,
        batch_size: int = 32,
        chat_template: bool = False,
        generation: bool = True,
        fluency: bool = False,
        piqa: Sequence[Mapping] | None = None,
        dataset_fingerprint: str = "",
        progress: bool = True,
        counterfact: bool | None = None,
        padding_side: str = "right",
        mixed_lengths: bool = False,
        use_cache: bool = True,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if padding_side not in ("left", "right"):
            raise ValueError("padding_side must be 'left' or 'right'")
        self.base = base
        self.tokenizer = base.tokenizer
        self.requests = [dict(r) for r in requests]
        self.batch_size = batch_size
        self.chat_template = chat_template
        self.generation = generation
        self.fluency = fluency
        self.piqa = [dict(p) for p in piqa] if piqa else []
        self.dataset_fingerprint = dataset_fingerprint
        self.progress = progress
        self.padding_side = padding_side
        self.mixed_lengths = mixed_lengths
        self.use_cache = use_cache
        if counterfact is None:
            counterfact = wants_counterfact(self.requests)
        self.counterfact = counterfact
        if chat_template:
            tokens.chat_prompt(self.tokenizer, "x")  # fail early when the tokenizer has none
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self.eos_id = self.tokenizer.eos_token_id

        self._seqs: list[_Seq] = []
        self._by_owner: dict[int, list[int]] = {}
        self._piqa_seqs: list[int] = []
        self._build()
        self.locality_kinds = sorted({s.kind for s in self._seqs if s.role == LOC})
        self.portability_kinds = sorted({s.kind for s in self._seqs if s.role == PORT})
        self.columns = self._columns()
        self.base_fingerprint = base.fingerprint()
        self._pre_loc: dict[int, list[int]] = {}
        self._pre_piqa: list[int] = []
        self.base_piqa_accuracy = float("nan")
        self.last_piqa: dict[str, list[float]] = {}  # per-item correctness/agreement of the last call
        self.timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self._preedit()
        self.timings["preedit_s"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ building sequences

    def _add(self, seq: _Seq) -> None:
        self._seqs.append(seq)
        self._by_owner.setdefault(seq.owner, []).append(len(self._seqs) - 1)

    def _tf(self, prompt: str, target: str, owner: int, role: str, *, chat: bool, kind="", slot=0, gen=False):
        ids, start = tokens.teacher_forced_inputs(self.tokenizer, prompt, target, chat_template=chat)
        gen_prompt = None
        if gen:
            alone = tokens.encode(self.tokenizer, tokens.chat_prompt(self.tokenizer, prompt) if chat else prompt, templated=chat)
            if alone != ids[:start]:
                gen_prompt = alone
        self._add(_Seq(ids, start, owner, role, kind, slot, gen, gen_prompt, (prompt, target, chat)))

    def _build(self) -> None:
        chat = self.chat_template
        for i, r in enumerate(self.requests):
            for name in ("prompt", "target_new"):
                if not isinstance(r.get(name), str) or not r[name]:
                    raise ValueError(f"request {i} (case_id {r.get('case_id')}): empty or missing '{name}'")
            gen = self.generation
            self._tf(r["prompt"], r["target_new"], i, REL, chat=chat, gen=gen)
            for j, p in enumerate(r.get("rephrase_prompts") or []):
                self._tf(p, r["target_new"], i, GEN, chat=chat, slot=j, gen=gen)
            for j, e in enumerate(r.get("locality") or []):
                self._tf(e["prompt"], e["answer"], i, LOC, chat=False, kind=e.get("kind") or "default", slot=j)
            for j, e in enumerate(r.get("portability") or []):
                self._tf(e["prompt"], e["answer"], i, PORT, chat=chat, kind=e.get("kind") or "default", slot=j, gen=gen)
            truth = r.get("ground_truth") or ""
            if self.counterfact and truth and truth != r["target_new"]:
                # efficacy / paraphrase reuse the reliability / generalization sequences for NLL(new)
                self._tf(r["prompt"], truth, i, CF_TRUE, chat=chat, slot=-1)
                for j, p in enumerate(r.get("rephrase_prompts") or []):
                    self._tf(p, truth, i, CF_TRUE, chat=chat, slot=j)
                # ROME neighbourhood prompts; the simplified CounterFact carries them as locality
                # entries of kind "neighborhood" (whose answer is the shared true object)
                neighbours = list(r.get("neighborhood_prompts") or []) or [
                    e["prompt"] for e in r.get("locality") or [] if e.get("kind") == "neighborhood"]
                for j, p in enumerate(neighbours):
                    self._tf(p, r["target_new"], i, NEIGH_NEW, chat=False, slot=j)
                    self._tf(p, truth, i, NEIGH_TRUE, chat=False, slot=j)
        for k, item in enumerate(self.piqa):
            for j, sol in enumerate((item["sol1"], item["sol2"])):
                self._tf(item["goal"], sol, -1, PIQA, chat=False, slot=k, kind=str(j))
        self._piqa_seqs = self._by_owner.get(-1, [])

    def _columns(self) -> list[str]:
        return _columns_for(self.locality_kinds, self.portability_kinds, generation=self.generation,
                            counterfact=self.counterfact, fluency=self.fluency, piqa=bool(self.piqa))

    @property
    def base_piqa_correct(self) -> list[float]:
        """Per PIQA item, whether the base model chose the right solution (1.0 / 0.0)."""
        return [float(c == int(p["label"])) for c, p in zip(self._pre_piqa, self.piqa)]

    @property
    def n_sequences(self) -> int:
        return len(self._seqs)

    def sequence_tokens(self, indices: Sequence[int] | None = None) -> list[list[int]]:
        """The token ids of every teacher-forced sequence of these requests (for benchmarks)."""
        owners = range(len(self.requests)) if indices is None else indices
        return [self._seqs[s].ids for i in owners for s in self._by_owner.get(i, [])]

    # ------------------------------------------------------------------ pre-edit cache

    def _preedit(self) -> None:
        loc = [s for s, q in enumerate(self._seqs) if q.role == LOC]
        if not loc and not self._piqa_seqs:
            return
        key = _sha({
            "model": self.base_fingerprint, "metric": M.METRIC_VERSION, "pad": self.padding_side,
            "loc": [(self._seqs[s].ids, self._seqs[s].start) for s in loc],
            "piqa": [(self._seqs[s].ids, self._seqs[s].start) for s in self._piqa_seqs],
        })
        path = cache_dir() / "preedit" / f"{key}.json"
        if self.use_cache and path.exists():
            try:
                data = json.loads(path.read_text())
                self._pre_loc = dict(zip(loc, data["loc"]))
                self._pre_piqa = data["piqa"]
                self.base_piqa_accuracy = data["piqa_accuracy"] if data["piqa_accuracy"] is not None else float("nan")
                log.info("pre-edit predictions from cache %s", path)
                return
            except (ValueError, KeyError):
                log.warning("ignoring unreadable pre-edit cache %s", path)
        outs = self._score(self.base.model, loc + self._piqa_seqs, generate=False, desc="pre-edit (base)")
        self._pre_loc = {s: outs[s].pred for s in loc}
        self._pre_piqa = self._piqa_choices(outs)
        if self.piqa:
            self.base_piqa_accuracy = M.mean([float(c == int(p["label"])) for c, p in zip(self._pre_piqa, self.piqa)])
        if self.use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            payload = {"loc": [self._pre_loc[s] for s in loc], "piqa": self._pre_piqa,
                       "piqa_accuracy": None if self.base_piqa_accuracy != self.base_piqa_accuracy else self.base_piqa_accuracy,
                       "base_fingerprint": self.base_fingerprint, "dataset_fingerprint": self.dataset_fingerprint,
                       "metric_version": M.METRIC_VERSION}
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                json.dump(payload, fh)
            os.replace(tmp, path)

    def _piqa_choices(self, outs: Mapping[int, _Out]) -> list[int]:
        choices = []
        for k in range(len(self.piqa)):
            a, b = self._piqa_seqs[2 * k], self._piqa_seqs[2 * k + 1]
            sa, sb = self._seqs[a], self._seqs[b]
            choices.append(M.piqa_choice([outs[a].logprob, outs[b].logprob],
                                         [len(sa.ids) - sa.start, len(sb.ids) - sb.start]))
        return choices

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, model, indices: Sequence[int] | None = None) -> list[dict]:
        """Per-edit rows for ``requests[indices]`` (all when None) scored on ``model`` (the edited
        model; same tokenizer as the base). Each row is a flat dict: ``case_id`` plus every
        column of ``self.columns`` (NaN where a metric does not apply to that request)."""
        indices = list(range(len(self.requests))) if indices is None else [int(i) for i in indices]
        for i in indices:
            if not 0 <= i < len(self.requests):
                raise IndexError(f"request index {i} out of range (0..{len(self.requests) - 1})")
        seq_ids = [s for i in indices for s in self._by_owner.get(i, [])] + list(self._piqa_seqs)
        t0 = time.perf_counter()
        self.timings["sequences"] = len(seq_ids)
        self.timings["tokens"] = sum(len(self._seqs[s].ids) for s in seq_ids)
        was_training = model.training
        model.eval()
        plain = self._seqs
        try:
            transform = prompt_transform(model)
            if transform is not None:  # in-context editing (IKE): every prompt gets its prefix
                self._seqs = self._conditioned(transform, seq_ids)
            outs = self._score(model, seq_ids, generate=self.generation, desc="scoring")
            fluency = self._fluency(model, indices) if self.fluency else {}
        finally:
            self._seqs = plain
            model.train(was_training)
        piqa_acc = piqa_agree = float("nan")
        if self.piqa:
            choices = self._piqa_choices(outs)
            self.last_piqa = {
                "other_task.piqa_accuracy": [float(c == int(p["label"])) for c, p in zip(choices, self.piqa)],
                "other_task.piqa_agreement": [float(c == b) for c, b in zip(choices, self._pre_piqa)],
            }
            piqa_acc = M.mean(self.last_piqa["other_task.piqa_accuracy"])
            piqa_agree = M.mean(self.last_piqa["other_task.piqa_agreement"])
        rows = []
        for i in indices:
            row = self._row(i, outs)
            if self.fluency:
                row["fluency.ngram_entropy"] = fluency.get(i, float("nan"))
            if self.piqa:
                row["other_task.piqa_accuracy"] = piqa_acc
                row["other_task.piqa_agreement"] = piqa_agree
            rows.append({c: row.get(c, float("nan")) for c in self.columns})
        self.timings["evaluate_s"] = time.perf_counter() - t0
        return rows

    def _conditioned(self, transform, seq_ids: Sequence[int]) -> list[_Seq]:
        """A copy of the sequences with ``transform(prompt)`` (the in-context prefix a wrapper
        method such as IKE installs, `editeval.methods.kit.artifacts.prompt_transform`) put before each prompt
        of ``seq_ids``. The text ``prefix + prompt + " " + target`` is tokenised as a whole (as the
        field's IKE does); should that change the scored span's tokens (a BPE merge across the
        prefix), the prefix's tokens are inserted after the leading special tokens instead, so
        every span keeps its tokens and locality stays comparable with the base predictions."""
        seqs = list(self._seqs)
        n_special = len(tokens.encode(self.tokenizer, "x")) - len(self.tokenizer("x", add_special_tokens=False)["input_ids"])
        for s in seq_ids:
            q = seqs[s]
            if q.text is None:
                continue
            prompt, target, chat = q.text
            prefix = transform(prompt)
            if not prefix:
                continue
            ids, start = tokens.teacher_forced_inputs(self.tokenizer, prefix + prompt, target, chat_template=chat)
            gen_prompt = None
            if ids[start:] != q.ids[q.start:]:
                extra = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
                cut = 0 if chat else max(0, n_special)
                ids = q.ids[:cut] + extra + q.ids[cut:]
                start = q.start + len(extra)
                if q.gen:
                    plain = q.gen_prompt if q.gen_prompt is not None else q.ids[: q.start]
                    gen_prompt = plain[:cut] + extra + plain[cut:]
            elif q.gen:
                alone = tokens.encode(self.tokenizer, tokens.chat_prompt(self.tokenizer, prefix + prompt) if chat else prefix + prompt,
                                 templated=chat)
                if alone != ids[:start]:
                    gen_prompt = alone
            seqs[s] = _Seq(ids, start, q.owner, q.role, q.kind, q.slot, q.gen, gen_prompt, q.text)
        return seqs

    def _row(self, i: int, outs: Mapping[int, _Out]) -> dict:
        nan = float("nan")
        row: dict = {"case_id": self.requests[i]["case_id"]}
        acc: dict[tuple, list[float]] = {}
        nll_new: dict[int, float] = {}
        nll_true: dict[int, float] = {}
        neigh: dict[int, list[float | None]] = {}
        for s in self._by_owner.get(i, []):
            q, o = self._seqs[s], outs[s]
            labels = q.ids[q.start :]
            n = len(labels)
            if q.role in (REL, GEN, PORT):
                fam = q.role if q.role != PORT else f"portability.{q.kind}"
                acc.setdefault((fam, "teacher_forced"), []).append(M.token_accuracy(o.pred, labels))
                if q.gen:
                    answer = self._answer(q)
                    text = self.tokenizer.decode(o.generated, skip_special_tokens=True)
                    acc.setdefault((fam, "generation"), []).append(M.generation_exact_match(text, answer))
                if q.role in (REL, GEN):
                    nll_new[-1 if q.role == REL else q.slot] = -o.logprob / n
            elif q.role == LOC:
                acc.setdefault((f"locality.{q.kind}", "teacher_forced"), []).append(
                    M.locality_agreement(self._pre_loc[s], o.pred))
            elif q.role == CF_TRUE:
                nll_true[q.slot] = -o.logprob / n
            elif q.role in (NEIGH_NEW, NEIGH_TRUE):
                neigh.setdefault(q.slot, [None, None])[0 if q.role == NEIGH_NEW else 1] = -o.logprob / n
        for (fam, proto), vals in acc.items():
            row[f"{fam}.{proto}"] = M.mean(vals)
        for fam, kinds in (("locality", self.locality_kinds), ("portability", self.portability_kinds)):
            for proto in ("teacher_forced", "generation"):
                vals = [row[f"{fam}.{k}.{proto}"] for k in kinds if f"{fam}.{k}.{proto}" in row]
                if vals:
                    row[f"{fam}.{proto}"] = M.mean(vals)
        if self.counterfact and nll_true:
            eff = M.rewrite_success(nll_new[-1], nll_true[-1])
            row["efficacy_score"], row["efficacy_magnitude"] = eff
            para = [M.rewrite_success(nll_new[j], nll_true[j]) for j in nll_true if j >= 0]
            if para:
                row["paraphrase_score"] = M.mean([p[0] for p in para])
                row["paraphrase_magnitude"] = M.mean([p[1] for p in para])
            nb = [M.neighborhood_success(a, b) for a, b in neigh.values()]
            if nb:
                row["neighborhood_score"] = M.mean([p[0] for p in nb])
                row["neighborhood_magnitude"] = M.mean([p[1] for p in nb])
        for key in ("reliability.teacher_forced",):
            row.setdefault(key, nan)
        return row

    def _answer(self, q: _Seq) -> str:
        r = self.requests[q.owner]
        if q.role == PORT:
            return r["portability"][q.slot]["answer"]
        return r["target_new"]

    # ------------------------------------------------------------------ forward passes

    def _batches(self, seq_ids: Sequence[int]) -> list[list[int]]:
        """Sorted by length; unless ``mixed_lengths``, a batch never mixes lengths, so no padding
        is needed and each sequence's arithmetic does not depend on its batch companions."""
        order = sorted(seq_ids, key=lambda s: (len(self._seqs[s].ids), s))
        if self.mixed_lengths:
            return [order[k : k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        batches, group = [], []
        for s in order:
            if group and (len(group) == self.batch_size or len(self._seqs[group[0]].ids) != len(self._seqs[s].ids)):
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
    def _score(self, model, seq_ids: Sequence[int], *, generate: bool, desc: str) -> dict[int, _Out]:
        from tqdm.auto import tqdm

        device = _model_device(model)
        split = _body_and_head(model)
        outs: dict[int, _Out] = {}
        batches = self._batches(seq_ids)
        fallback_gen: list[int] = []
        pending: list[_Pending] = []
        bar = tqdm(total=len(seq_ids), desc=desc, unit="seq", disable=not self.progress, leave=False)
        for batch in batches:
            seqs = [self._seqs[s] for s in batch]
            want_gen = generate and any(q.gen and q.gen_prompt is None for q in seqs)
            rows = [q.ids for q in seqs]
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
            rows_idx, cols_idx, labels, spans = [], [], [], []
            for b, q in enumerate(seqs):
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
            for b, (s, n) in enumerate(zip(batch, spans)):
                outs[s] = _Out(pred_l[k : k + n], float(sum(lp_l[k : k + n])))
                k += n
            if want_gen:
                work = self._continue(model, split, _result_cache(res), batch, outs, mask, offs)
                if work is not None:
                    pending.append(work)
                    if work.cache is not None or sum(len(w.seqs) for w in pending) >= self.batch_size * _DECODE_BATCHES:
                        self._decode(model, split, pending, outs)
                        pending = []
            if generate:
                fallback_gen += [s for s in batch if self._seqs[s].gen and self._seqs[s].gen_prompt is not None]
            del res, states
            bar.update(len(batch))
        self._decode(model, split, pending, outs)
        bar.close()
        if fallback_gen:
            gens = self._greedy(model, [self._seqs[s].gen_prompt for s in fallback_gen],
                                [len(self._seqs[s].ids) - self._seqs[s].start for s in fallback_gen], stop_at_eos=False)
            for s, g in zip(fallback_gen, gens):
                outs[s].generated = g
        return outs

    def _step(self, model, split, tokens, mask, pos, cache):
        if split is not None:
            body, head = split
            res = body(input_ids=tokens, attention_mask=mask, position_ids=pos, use_cache=True,
                       **_cache_kwargs(body, cache))
            return head(res.last_hidden_state[:, -1]).float().argmax(-1), _result_cache(res)
        res = model(input_ids=tokens, attention_mask=mask, position_ids=pos, use_cache=True, **_cache_kwargs(model, cache))
        return res.logits[:, -1].float().argmax(-1), _result_cache(res)

    def _continue(self, model, split, cache, batch, outs, mask, offs) -> _Pending | None:
        """Greedy target-length generation, resumed from the teacher-forced pass's KV cache at
        each sequence's first mispredicted target token. Sequences predicted right all along are
        done here; the others are returned as pending work (their cache rows, cropped), so that
        the decoding steps of several batches run together (`_decode`)."""
        device = mask.device
        rows, tokens, positions, remaining, cut = [], [], [], [], []
        for b, s in enumerate(batch):
            q, o = self._seqs[s], outs[s]
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
        return _Pending([batch[b] for b in rows], tokens, positions, remaining, base_mask, kv, cache if kv is None else None)

    def _decode(self, model, split, work: list[_Pending], outs) -> None:
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
            nxt, cache = self._step(model, split, tok, torch.cat([base_mask, ones], 1), pos, cache)
            nxt_l = nxt.tolist()
            for r, s in enumerate(seqs):
                if step < remaining[r]:
                    outs[s].generated.append(nxt_l[r])
            tok = nxt[:, None]
            pos = pos + 1

    @torch.no_grad()
    def _greedy(self, model, prompts: Sequence[Sequence[int]], max_new: Sequence[int], *, stop_at_eos: bool) -> list[list[int]]:
        """Batched greedy decoding from token-id prompts (left padded, explicit positions)."""
        device = _model_device(model)
        split = _body_and_head(model)
        results: list[list[int]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda k: (len(prompts[k]), k))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            ids, mask, pos, _ = self._pad([prompts[k] for k in idx], device, "left")
            if split is not None:
                res = split[0](input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
                nxt = split[1](res.last_hidden_state[:, -1]).float().argmax(-1)
            else:
                res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
                nxt = res.logits[:, -1].float().argmax(-1)
            cache = _result_cache(res)
            cur = pos[:, -1:] + 1
            done = [False] * len(idx)
            limit = [max_new[k] for k in idx]
            for step in range(max(limit)):
                for r, k in enumerate(idx):
                    if done[r] or step >= limit[r]:
                        continue
                    t = int(nxt[r])
                    if stop_at_eos and t == self.eos_id:
                        done[r] = True
                        continue
                    results[k].append(t)
                if step + 1 >= max(limit) or all(d or step + 1 >= lim for d, lim in zip(done, limit)):
                    break
                mask = torch.cat([mask, torch.ones((len(idx), 1), dtype=mask.dtype, device=device)], 1)
                nxt, cache = self._step(model, split, nxt[:, None], mask, cur, cache)
                cur = cur + 1
        return results

    def _fluency(self, model, indices: Sequence[int]) -> dict[int, float]:
        prompts, owners, texts = [], [], []
        for i in indices:
            for p in self.requests[i].get("generation_prompts") or []:
                prompts.append(tokens.encode(self.tokenizer, p))
                owners.append(i)
                texts.append(p)
        if not prompts:
            return {}
        gens = self._greedy(model, prompts, [M.FLUENCY_MAX_NEW_TOKENS] * len(prompts), stop_at_eos=True)
        per: dict[int, list[float]] = {}
        for i, p, g in zip(owners, texts, gens):
            per.setdefault(i, []).append(M.ngram_entropy(p + self.tokenizer.decode(g, skip_special_tokens=True)))
        return {i: M.mean(v) for i, v in per.items()}
