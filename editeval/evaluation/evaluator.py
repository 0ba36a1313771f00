"""The evaluator: every metric of `editeval.evaluation.metrics` for many edits at once.

Usage (the edit driver and `editeval score` both go through this)::

    ev = Evaluator(base, requests, batch_size=32)      # builds sequences; caches base predictions
    rows = ev.evaluate(edited_model)                   # all edits on one edited model (batch/seq.)
    rows = ev.evaluate(edited_model, indices=[i])      # one edit (single mode), after applying it

How it works
------------
* At construction every evaluation sequence of every request is tokenised once
  (`editeval.evaluation.requests`).
* The *unedited* base model's argmax over each locality answer span (and its PIQA choices) is
  computed once and cached on disk under ``cache_dir()/preedit/``, keyed by the base weights'
  fingerprint, the metric version and a hash of the exact token ids scored; sequential editing
  never compares against an already-edited model (`editeval.evaluation.preedit`).
* ``evaluate`` runs the sequences through `editeval.evaluation.runner.LMRunner` (batching, padding,
  KV caches, greedy generation) and turns its span outputs into per-edit rows named by
  `editeval.evaluation.specs.MetricName`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence

from editeval.evaluation import metrics as M
from editeval.evaluation.preedit import base_predictions, piqa_correct
from editeval.evaluation.requests import (  # noqa: F401  (the roles, for callers that pick sequences)
    CF_TRUE,
    GEN,
    LOC,
    NEIGH_NEW,
    NEIGH_TRUE,
    PIQA,
    PORT,
    REL,
    EvalSequence,
    build_sequences,
    conditioned,
)
from editeval.evaluation.rows import PIQA_ACCURACY, PIQA_AGREEMENT, piqa_choices, piqa_item_scores, request_row
from editeval.evaluation.runner import LMRunner, SpanOutput
from editeval.evaluation.specs import COUNTERFACT, MetricName, declared_protocols, row_columns
from editeval.evaluation.wild import WildGenerator, WildPrompt, wild_prompts, wild_row
from editeval.methods.kit.artifacts import prompt_transform
from editeval.runtime import tokens

log = logging.getLogger(__name__)

FLUENCY = str(MetricName("fluency", "ngram_entropy"))


def wants_counterfact(requests: Iterable[Mapping]) -> bool:
    """Whether the ROME CounterFact scores apply when not said (``counterfact=None``): some
    request has neighbourhood prompts or a prompt template."""
    return any(r.get("neighborhood_prompts") or r.get("prompt_template") for r in requests)


def run_counterfact(
    benchmark: str, config: str | None, split: str, requests: Iterable[Mapping], *, loaded: bool
) -> bool:
    """Whether a run scores the CounterFact protocol: as its benchmark split declares it, when the
    requests were loaded from a registered split. Requests handed to the run, or of a split no
    registered benchmark declares, also get it when they carry CounterFact fields
    (`wants_counterfact`, the Evaluator's default)."""
    declared = declared_protocols(benchmark, config, split)
    if declared is not None and (COUNTERFACT in declared or loaded):
        return COUNTERFACT in declared
    return wants_counterfact(requests)


def evaluation_columns(
    requests: Iterable[Mapping],
    *,
    generation: bool = True,
    counterfact: bool | None = None,
    fluency: bool = False,
    piqa: bool = False,
    wild: bool = False,
    judge: bool = False,
) -> list[str]:
    """The row columns an `Evaluator` over `requests` gives (without tokenising anything): lets
    rows of evaluators over parts of the requests (data-parallel shards, resumed runs) be put in
    the columns of one evaluator over all of them."""
    requests = [dict(r) for r in requests]
    if counterfact is None:
        counterfact = wants_counterfact(requests)
    loc = sorted({e.get("kind") or "default" for r in requests for e in r.get("locality") or []})
    port = sorted({e.get("kind") or "default" for r in requests for e in r.get("portability") or []})
    return row_columns(
        loc, port, generation=generation, counterfact=counterfact, fluency=fluency, piqa=piqa, wild=wild, judge=judge
    )


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
        wild: also the WILD protocol (`editeval.evaluation.wild`): free generation to a natural stop.
        judge: with `wild`, a `editeval.evaluation.judge.Judge` whose verdicts give ``*.wild_judge``.
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
        wild: bool = False,
        judge=None,
    ):
        self.base = base
        self.tokenizer = base.tokenizer
        self.runner = _runner(self.tokenizer, batch_size, padding_side, mixed_lengths, progress)
        self.requests = [dict(r) for r in requests]
        self.batch_size = batch_size
        self.chat_template = chat_template
        self.generation = generation
        self.fluency = fluency
        self.piqa = [dict(p) for p in piqa] if piqa else []
        self.dataset_fingerprint = dataset_fingerprint
        self.progress = progress
        self.padding_side = padding_side
        self.use_cache = use_cache
        self.counterfact = counterfact = wants_counterfact(self.requests) if counterfact is None else counterfact
        if chat_template:
            tokens.chat_prompt(self.tokenizer, "x")  # fail early when the tokenizer has none
        built = build_sequences(
            self.tokenizer,
            self.requests,
            chat_template=chat_template,
            generation=generation,
            counterfact=counterfact,
            piqa=self.piqa,
        )
        self._seqs, self._by_owner, self._piqa_seqs = built.seqs, built.by_owner, built.piqa
        self.locality_kinds, self.portability_kinds = built.kinds(LOC), built.kinds(PORT)
        self.columns = row_columns(
            self.locality_kinds,
            self.portability_kinds,
            generation=generation,
            counterfact=counterfact,
            fluency=fluency,
            piqa=bool(self.piqa),
            wild=wild,
            judge=judge is not None,
        )
        self.base_fingerprint = base.fingerprint()
        self.last_piqa: dict[str, list[float]] = {}  # per-item correctness/agreement of the last call
        self.timings: dict[str, float] = {}
        t0 = time.perf_counter()
        pre = base_predictions(  # the unedited base's locality predictions and PIQA choices
            self.runner,
            base.model,
            self._seqs,
            self._piqa_seqs,
            self.piqa,
            base_fingerprint=self.base_fingerprint,
            dataset_fingerprint=dataset_fingerprint,
            padding_side=padding_side,
            use_cache=use_cache,
        )
        self._pre_loc, self._pre_piqa, self.base_piqa_accuracy = pre.loc, pre.piqa, pre.piqa_accuracy
        if judge is not None and not wild:
            raise ValueError("a judge grades WILD answers: ask for the WILD protocol too (--wild)")
        self._wild = _Wild(self, base.model, judge) if wild else None
        self.timings["preedit_s"] = time.perf_counter() - t0

    @property
    def base_piqa_correct(self) -> list[float]:
        """Per PIQA item, whether the base model chose the right solution (1.0 / 0.0)."""
        return piqa_correct(self._pre_piqa, self.piqa)

    @property
    def n_sequences(self) -> int:
        return len(self._seqs)

    def sequence_tokens(self, indices: Sequence[int] | None = None) -> list[list[int]]:
        """The token ids of every teacher-forced sequence of these requests (for benchmarks)."""
        owners = range(len(self.requests)) if indices is None else indices
        return [self._seqs[s].ids for i in owners for s in self._by_owner.get(i, [])]

    def evaluate(self, model, indices: Sequence[int] | None = None) -> list[dict]:
        """Per-edit rows for ``requests[indices]`` (all when None) scored on ``model`` (the edited
        model; same tokenizer as the base). Each row is a flat dict: ``case_id`` plus every
        column of ``self.columns`` (NaN where a metric does not apply to that request)."""
        indices = _checked_indices(indices, len(self.requests))
        seq_ids = [s for i in indices for s in self._by_owner.get(i, [])] + list(self._piqa_seqs)
        t0 = time.perf_counter()
        self.timings["sequences"] = len(seq_ids)
        self.timings["tokens"] = sum(len(self._seqs[s].ids) for s in seq_ids)
        fluency_requests = [self.requests[i] for i in indices] if self.fluency else None
        outs, fluency, wild = _score(
            self.runner,
            self.tokenizer,
            model,
            self._seqs,
            seq_ids,
            self.generation,
            fluency_requests,
            indices,
            self._wild,
        )
        piqa = {}
        if self.piqa:
            self.last_piqa = piqa_item_scores(
                piqa_choices(self._seqs, self._piqa_seqs, outs), self.piqa, self._pre_piqa
            )
            piqa = {c: M.mean(self.last_piqa[c]) for c in (PIQA_ACCURACY, PIQA_AGREEMENT)}
        rows = []
        for i in indices:
            row = self._row(i, outs)
            if self.fluency:
                row[FLUENCY] = fluency.get(i, float("nan"))
            if self._wild is not None:
                row.update(wild.get(i, {}))
            row.update(piqa)
            rows.append({c: row.get(c, float("nan")) for c in self.columns})
        self.timings["evaluate_s"] = time.perf_counter() - t0
        return rows

    def _row(self, i: int, outs: Mapping[int, SpanOutput]) -> dict:
        scored = [(self._seqs[s], outs[s], self._pre_loc.get(s)) for s in self._by_owner.get(i, [])]
        return request_row(
            self.requests[i],
            scored,
            self.tokenizer,
            locality_kinds=self.locality_kinds,
            portability_kinds=self.portability_kinds,
            counterfact=self.counterfact,
        )


def _checked_indices(indices: Sequence[int] | None, n: int) -> list[int]:
    """``indices`` as a list of ints (all ``n`` when None); IndexError for one out of range."""
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    for i in indices:
        if not 0 <= i < n:
            raise IndexError(f"request index {i} out of range (0..{n - 1})")
    return indices


def _runner(tokenizer, batch_size: int, padding_side: str, mixed_lengths: bool, progress: bool) -> LMRunner:
    """The evaluator's runner: pads with the tokenizer's padding id (else its EOS id, else 0)."""
    pad = tokenizer.pad_token_id
    return LMRunner(
        pad_id=pad if pad is not None else (tokenizer.eos_token_id or 0),
        eos_id=tokenizer.eos_token_id,
        batch_size=batch_size,
        padding_side=padding_side,
        mixed_lengths=mixed_lengths,
        progress=progress,
    )


def _score(
    runner: LMRunner,
    tokenizer,
    model,
    seqs: Sequence[EvalSequence],
    seq_ids: list[int],
    generation: bool,
    fluency_requests: Sequence[Mapping] | None,
    owners: Sequence[int],
    wild: _Wild | None = None,
) -> tuple[dict[int, SpanOutput], dict[int, float], dict[int, dict]]:
    """The span outputs of ``seqs[seq_ids]`` on ``model`` in eval mode (its training flag restored
    after), with ``fluency_requests`` (of ``owners``) their fluency (`_fluency`), with `wild` the
    owners' WILD metrics."""
    was_training = model.training
    model.eval()
    try:
        transform = prompt_transform(model)
        if transform is not None:  # in-context editing (IKE): every prompt gets its prefix
            seqs = conditioned(tokenizer, seqs, transform, seq_ids)
        outs = runner.score(model, seqs, seq_ids, generate=generation, desc="scoring")
        fluency = {}
        if fluency_requests is not None:
            fluency = _fluency(runner, tokenizer, model, fluency_requests, owners)
        wild_rows = wild.rows(model, owners, transform) if wild is not None else {}
    finally:
        model.train(was_training)
    return outs, fluency, wild_rows


def _fluency(
    runner: LMRunner, tokenizer, model, requests: Sequence[Mapping], owners: Sequence[int]
) -> dict[int, float]:
    """Per owner (of each request), the mean n-gram entropy of the greedy generations from its
    ``generation_prompts`` (none: left out)."""
    prompts, prompt_owners, texts = [], [], []
    for owner, r in zip(owners, requests):
        for p in r.get("generation_prompts") or []:
            prompts.append(tokens.encode(tokenizer, p))
            prompt_owners.append(owner)
            texts.append(p)
    if not prompts:
        return {}
    gens = runner.greedy(model, prompts, [M.FLUENCY_MAX_NEW_TOKENS] * len(prompts), stop_at_eos=True)
    per: dict[int, list[float]] = {}
    for i, p, g in zip(prompt_owners, texts, gens):
        per.setdefault(i, []).append(M.ngram_entropy(p + tokenizer.decode(g, skip_special_tokens=True)))
    return {i: M.mean(v) for i, v in per.items()}


class _Wild:
    """The evaluator's WILD questions, and the base model's answers to its locality questions."""

    def __init__(self, evaluator: Evaluator, base_model, judge=None):
        self.generator = WildGenerator(evaluator.runner, evaluator.tokenizer)
        self.judge = judge
        self.by_owner: dict[int, list[WildPrompt]] = {}
        for p in wild_prompts(evaluator.requests, evaluator.chat_template):
            self.by_owner.setdefault(p.owner, []).append(p)
        loc = [p for ps in self.by_owner.values() for p in ps if p.role == LOC]
        answers = self.generator.base_answers(
            base_model, loc, base_fingerprint=evaluator.base_fingerprint, use_cache=evaluator.use_cache
        )
        self.base = dict(zip(loc, answers))

    def rows(self, model, owners: Sequence[int], transform) -> dict[int, dict]:
        prompts = [p for i in owners for p in self.by_owner.get(i, [])]
        answers = dict(zip(prompts, self.generator.answers(model, prompts, transform)))
        verdicts = None
        if self.judge is not None:
            asked = [p for p in prompts if p.role != LOC]
            found = self.judge.verdicts([(p.question, p.answer, answers[p]) for p in asked])
            verdicts = dict(zip(asked, found))
        return {
            i: wild_row(self.by_owner.get(i, []), [answers[p] for p in self.by_owner.get(i, [])], self.base, verdicts)
            for i in owners
        }
