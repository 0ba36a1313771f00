"""Evaluation sequences built from edit requests: every teacher-forced text an `Evaluator` scores.

Each request gives its reliability, generalization (one per rephrase), locality and portability
sequences; with the CounterFact protocol also the true-object completions of its prompt and
rephrases and its neighbourhood prompts completed with the new and the true object. PIQA items give
two sequences each (one per solution), owned by no request (owner -1). Every text is tokenised once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from editeval.runtime import tokens

# sequence roles
REL, GEN, LOC, PORT, CF_TRUE, NEIGH_NEW, NEIGH_TRUE, PIQA = (
    "reliability",
    "generalization",
    "locality",
    "portability",
    "cf_true",
    "neigh_new",
    "neigh_true",
    "piqa",
)
PIQA_OWNER = -1


@dataclass
class EvalSequence:
    ids: list[int]
    start: int  # prompt_len: the first scored token; the span is ids[start:]
    owner: int  # request position (PIQA_OWNER for PIQA)
    role: str
    kind: str = ""
    slot: int = 0
    gen: bool = False  # wants the generation protocol
    gen_prompt: list[int] | None = None  # set when the prompt alone tokenises differently
    text: tuple[str, str, bool] | None = None  # (prompt, target, chat): to re-build conditioned


@dataclass
class EvalSequences:
    """The sequences of a list of requests (and PIQA items), and which request owns which."""

    seqs: list[EvalSequence] = field(default_factory=list)
    by_owner: dict[int, list[int]] = field(default_factory=dict)

    @property
    def piqa(self) -> list[int]:
        return self.by_owner.get(PIQA_OWNER, [])

    def kinds(self, role: str) -> list[str]:
        return sorted({s.kind for s in self.seqs if s.role == role})

    def add(self, seq: EvalSequence) -> None:
        self.seqs.append(seq)
        self.by_owner.setdefault(seq.owner, []).append(len(self.seqs) - 1)


class _Builder:
    def __init__(self, tokenizer, generation: bool):
        self.tokenizer = tokenizer
        self.generation = generation
        self.out = EvalSequences()

    def teacher_forced(
        self, prompt: str, target: str, owner: int, role: str, *, chat: bool, kind="", slot=0, gen=False
    ) -> None:
        tok = self.tokenizer
        ids, start = tokens.teacher_forced_inputs(tok, prompt, target, chat_template=chat)
        gen_prompt = None
        if gen:
            alone = tokens.encode(tok, tokens.chat_prompt(tok, prompt) if chat else prompt, templated=chat)
            if alone != ids[:start]:
                gen_prompt = alone
        self.out.add(EvalSequence(ids, start, owner, role, kind, slot, gen, gen_prompt, (prompt, target, chat)))

    def request(self, i: int, r: Mapping, *, chat: bool, counterfact: bool) -> None:
        for name in ("prompt", "target_new"):
            if not isinstance(r.get(name), str) or not r[name]:
                raise ValueError(f"request {i} (case_id {r.get('case_id')}): empty or missing '{name}'")
        add, gen = self.teacher_forced, self.generation
        add(r["prompt"], r["target_new"], i, REL, chat=chat, gen=gen)
        for j, p in enumerate(r.get("rephrase_prompts") or []):
            add(p, r["target_new"], i, GEN, chat=chat, slot=j, gen=gen)
        for j, e in enumerate(r.get("locality") or []):
            add(e["prompt"], e["answer"], i, LOC, chat=False, kind=e.get("kind") or "default", slot=j)
        for j, e in enumerate(r.get("portability") or []):
            add(e["prompt"], e["answer"], i, PORT, chat=chat, kind=e.get("kind") or "default", slot=j, gen=gen)
        truth = r.get("ground_truth") or ""
        if counterfact and truth and truth != r["target_new"]:
            # efficacy / paraphrase reuse the reliability / generalization sequences for NLL(new)
            add(r["prompt"], truth, i, CF_TRUE, chat=chat, slot=-1)
            for j, p in enumerate(r.get("rephrase_prompts") or []):
                add(p, truth, i, CF_TRUE, chat=chat, slot=j)
            # ROME neighbourhood prompts; the simplified CounterFact carries them as locality
            # entries of kind "neighborhood" (whose answer is the shared true object)
            neighbours = list(r.get("neighborhood_prompts") or []) or [
                e["prompt"] for e in r.get("locality") or [] if e.get("kind") == "neighborhood"
            ]
            for j, p in enumerate(neighbours):
                add(p, r["target_new"], i, NEIGH_NEW, chat=False, slot=j)
                add(p, truth, i, NEIGH_TRUE, chat=False, slot=j)


def build_sequences(
    tokenizer,
    requests: Sequence[Mapping],
    *,
    chat_template: bool,
    generation: bool,
    counterfact: bool,
    piqa: Sequence[Mapping] = (),
) -> EvalSequences:
    """Every evaluation sequence of `requests` (in request order) and then of the PIQA items.
    Edit-side prompts are wrapped in the chat template when asked; locality and neighbourhood
    prompts never are. Raises ValueError on a request without prompt or target."""
    builder = _Builder(tokenizer, generation)
    for i, r in enumerate(requests):
        builder.request(i, r, chat=chat_template, counterfact=counterfact)
    for k, item in enumerate(piqa):
        for j, sol in enumerate((item["sol1"], item["sol2"])):
            builder.teacher_forced(item["goal"], sol, PIQA_OWNER, PIQA, chat=False, slot=k, kind=str(j))
    return builder.out


def conditioned(
    tokenizer, seqs: Sequence[EvalSequence], transform: Callable[[str], str], seq_ids: Sequence[int]
) -> list[EvalSequence]:
    """A copy of the sequences with ``transform(prompt)`` (the in-context prefix a wrapper
    method such as IKE installs, `editeval.methods.kit.artifacts.prompt_transform`) put before each prompt
    of ``seq_ids``. The text ``prefix + prompt + " " + target`` is tokenised as a whole (as the
    field's IKE does); should that change the scored span's tokens (a BPE merge across the
    prefix), the prefix's tokens are inserted after the leading special tokens instead, so
    every span keeps its tokens and locality stays comparable with the base predictions."""
    seqs = list(seqs)
    n_special = len(tokens.encode(tokenizer, "x")) - len(tokenizer("x", add_special_tokens=False)["input_ids"])
    for s in seq_ids:
        q = seqs[s]
        if q.text is None:
            continue
        prompt, target, chat = q.text
        prefix = transform(prompt)
        if not prefix:
            continue
        ids, start = tokens.teacher_forced_inputs(tokenizer, prefix + prompt, target, chat_template=chat)
        gen_prompt = None
        if ids[start:] != q.ids[q.start :]:
            extra = tokenizer(prefix, add_special_tokens=False)["input_ids"]
            cut = 0 if chat else max(0, n_special)
            ids = q.ids[:cut] + extra + q.ids[cut:]
            start = q.start + len(extra)
            if q.gen:
                plain = q.gen_prompt if q.gen_prompt is not None else q.ids[: q.start]
                gen_prompt = plain[:cut] + extra + plain[cut:]
        elif q.gen:
            text = tokens.chat_prompt(tokenizer, prefix + prompt) if chat else prefix + prompt
            alone = tokens.encode(tokenizer, text, templated=chat)
            if alone != ids[:start]:
                gen_prompt = alone
        seqs[s] = EvalSequence(ids, start, q.owner, q.role, q.kind, q.slot, q.gen, gen_prompt, q.text)
    return seqs
