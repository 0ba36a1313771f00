"""The WILD protocol of "The Mirage of Model Editing" (Yang et al., ACL 2025, arXiv 2502.11177): the
edited model answers each question in free generation, as a user would see it, instead of being
teacher-forced on the target's tokens.

As the authors' code (WanliYoung/Revisit-Editing-Evaluation, `test_prediction_acc_real`) does it:

- the input is the question alone (their default ``question-only`` context; with ``--chat-template``
  the edit-side questions are wrapped in the tokenizer's chat template, as every other protocol here
  does, where their code hard-codes a Llama-2 ``[INST]`` string); an in-context method's prefix
  (IKE) goes before it, as for the other protocols;
- greedy decoding until a natural stop: EOS, a period or a newline, at most 50 new tokens
  (`metrics.WILD_MAX_NEW_TOKENS`); the answer is the decoded continuation up to the first period or
  newline (`metrics.wild_answer`; their stop criteria end generation on the token that completes
  the stop string and then drop that string, the same text for every usual tokenizer);
- `metrics.normalize_answer` (lower case, no punctuation, no articles, single spaces), then
  ``*.wild``: exact match with the new answer (their metric without a judge), and ``*.wild_contains``:
  the new answer as a whole-word span of the answer (ours: a generous reading, shown beside it);
- locality: the edited model's normalised answer equals the *unedited* model's on the locality
  question (their code compares the generated token ids; normalised text forgives a changed
  trailing space or case). The base answers are computed once and cached on disk like the
  pre-edit predictions;
- portability, which their code leaves teacher-forced, gets the same protocol on the portability
  question and its answer.

Choices left open by the paper and made here: no few-shot context, no ``qa_inst`` template (their
non-default option), the judge is optional and local, and the exact match is the
default, as in their code without an API key; ``--judge MODEL_FOLDER`` adds a local model's
verdict (`editeval.evaluation.judge`) as ``*.wild_judge``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from editeval.evaluation import metrics as M
from editeval.evaluation.requests import GEN, LOC, PORT, REL
from editeval.evaluation.specs import WILD, WILD_CONTAINS, WILD_JUDGE, MetricName
from editeval.runtime import tokens
from editeval.runtime.paths import atomic_file, cache_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WildPrompt:
    owner: int  # the request's position
    role: str  # REL, GEN, PORT or LOC
    kind: str  # the portability / locality kind ("" for reliability and generalization)
    question: str
    answer: str  # the new answer it must give ("" for locality: compared with the base model)
    chat: bool  # wrapped in the chat template


def wild_prompts(requests: Sequence[Mapping], chat_template: bool) -> list[WildPrompt]:
    """Every question the WILD protocol asks of `requests`, in request order; locality questions
    are never wrapped in the chat template (as for the other protocols)."""
    out = []
    for i, r in enumerate(requests):
        out.append(WildPrompt(i, REL, "", r["prompt"], r["target_new"], chat_template))
        out += [WildPrompt(i, GEN, "", p, r["target_new"], chat_template) for p in r.get("rephrase_prompts") or []]
        for e in r.get("portability") or []:
            out.append(WildPrompt(i, PORT, e.get("kind") or "default", e["prompt"], e["answer"], chat_template))
        out += [WildPrompt(i, LOC, e.get("kind") or "default", e["prompt"], "", False) for e in r.get("locality") or []]
    return out


def stop_tokens(tokenizer, stops: Sequence[str] | None = None) -> frozenset[int]:
    """The token ids whose text holds a natural stop (`stops`, by default WILD's: a period, a
    newline): generation ends after one. Special tokens have no text in an answer (it is decoded
    without them), so none of them is one."""
    stops = M.WILD_STOPS if stops is None else stops
    vocab = tokenizer.get_vocab().values()
    return frozenset(t for t in vocab if any(s in tokenizer.decode([t], skip_special_tokens=True) for s in stops))


class WildGenerator:
    """Asks a model WILD questions through the evaluator's `LMRunner`."""

    def __init__(self, runner, tokenizer):
        self.runner, self.tokenizer = runner, tokenizer
        self.stops = stop_tokens(tokenizer)

    def encode(self, p: WildPrompt, prefix: Callable[[str], str] | None = None) -> list[int]:
        text = (prefix(p.question) if prefix else "") + p.question
        tok = self.tokenizer
        return tokens.encode(tok, tokens.chat_prompt(tok, text) if p.chat else text, templated=p.chat)

    def answers(self, model, prompts: Sequence[WildPrompt], prefix: Callable[[str], str] | None = None) -> list[str]:
        """Each question's answer: greedy until a natural stop, decoded, cut at the stop."""
        if not prompts:
            return []
        ids = [self.encode(p, prefix) for p in prompts]
        gens = self.runner.greedy(
            model, ids, [M.WILD_MAX_NEW_TOKENS] * len(ids), stop_at_eos=True, stop_after=self.stops
        )
        return [M.wild_answer(self.tokenizer.decode(g, skip_special_tokens=True)) for g in gens]

    def base_answers(
        self, model, prompts: Sequence[WildPrompt], *, base_fingerprint: str, use_cache: bool
    ) -> list[str]:
        """The unedited base model's answers (the locality reference), cached on disk by the base
        weights' fingerprint, the metric version and the exact token ids asked."""
        if not prompts:
            return []
        key = {"model": base_fingerprint, "metric": M.METRIC_VERSION, "wild": [self.encode(p) for p in prompts]}
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
        path = cache_dir() / "preedit" / f"wild-{digest}.json"
        if use_cache and path.exists():
            try:
                cached = json.loads(path.read_text())
                if isinstance(cached, list) and len(cached) == len(prompts):
                    return cached
            except ValueError:
                log.warning("ignoring unreadable WILD base-answer cache %s", path)
        answers = self.answers(model, prompts)
        if use_cache:
            atomic_file(path, lambda tmp: Path(tmp).write_text(json.dumps(answers)))
        return answers


def wild_row(
    prompts: Sequence[WildPrompt],
    answers: Sequence[str],
    base: Mapping[WildPrompt, str],
    verdicts: Mapping[WildPrompt, float] | None = None,
) -> dict:
    """One request's WILD metrics from its prompts and the edited model's answers (`base`: the
    unedited model's answer to each locality prompt; `verdicts`: a judge's on the others). Per-kind
    columns for locality and portability, and the family figure as the mean over kinds (as
    teacher-forced)."""
    values: dict[MetricName, list[float]] = {}
    for p, answer in zip(prompts, answers):
        kind = p.kind if p.role in (PORT, LOC) else None
        if p.role == LOC:
            values.setdefault(MetricName(LOC, WILD, kind), []).append(M.wild_locality(answer, base[p]))
            continue
        values.setdefault(MetricName(p.role, WILD, kind), []).append(M.wild_exact_match(answer, p.answer))
        values.setdefault(MetricName(p.role, WILD_CONTAINS, kind), []).append(M.wild_contains(answer, p.answer))
        if verdicts is not None:
            values.setdefault(MetricName(p.role, WILD_JUDGE, kind), []).append(verdicts[p])
    row = {str(name): M.mean(v) for name, v in values.items()}
    for family in (LOC, PORT):
        for proto in (WILD, WILD_CONTAINS, WILD_JUDGE):
            kinds = [row[str(n)] for n in values if n.family == family and n.protocol == proto]
            if kinds:
                row[str(MetricName(family, proto))] = M.mean(kinds)
    return row
