"""Benchmarks whose evaluation unit is a *case*: several edits applied together, then scored by the
benchmark's authors' own protocol (not the per-request protocols of `editeval.evaluation.evaluator`).

==============  =============================================================  ===========================
benchmark       a case                                                         scorer
==============  =============================================================  ===========================
``mquake``      a chain of edited facts (4 in MQuAKE-hard) and 3 multi-hop      `evaluation.mquake`
                questions whose answer follows from all of them
``rippleedits`` one edit and the tests of its ripple effects, by criterion      `evaluation.rippleedits`
==============  =============================================================  ===========================

A scorer (`CaseProtocol`) gives a case's edit requests, computes once what its protocol takes from
the *unedited* model (RippleEdits' condition queries), and scores cases on a model: one row per
case, ``case_id`` plus its metric columns (`editeval.evaluation.specs`: ``mquake.*``,
``rippleedits.*``). `editeval.run.cases` applies each case's edits together and undoes them
(``editeval edit``), or scores every case on one checkpoint (``editeval score``).

QAEdit is not a case benchmark: its records are ordinary edit requests and ``editeval edit
--benchmark qaedit --wild`` computes its authors' protocol (`evaluation.qaedit`, a named view of
the WILD columns).

Every generation here is greedy through the one `LMRunner`; an in-context method's prefix (IKE's)
goes before every prompt the edited model is asked, as for the other protocols.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from editeval.evaluation.runner import LMRunner
from editeval.methods.kit.artifacts import prompt_transform
from editeval.runtime import tokens

CASE_BENCHMARKS = ("mquake", "rippleedits")
# prompts opening with this many identical tokens (MQuAKE's few-shot demonstrations, an in-context
# method's prefix) share the KV cache of their common opening (`LMRunner.greedy`)
SHARED_PREFIX = 64


def is_case_benchmark(benchmark: str) -> bool:
    return benchmark in CASE_BENCHMARKS


class CaseProtocol:
    """A case benchmark's scorer: `requests` (a case's edits), `prepare` (on the unedited model,
    before any edit), `rows` (the cases scored on a model)."""

    name: str = ""
    columns: tuple[str, ...] = ()  # the metric columns of a row, after ``case_id``

    def requests(self, case: Mapping) -> list[dict]:
        raise NotImplementedError

    def prepare(self, base_model, cases: Sequence[Mapping]) -> None:
        """What the protocol takes from the unedited model for `cases` (nothing by default)."""

    def rows(self, model, cases: Sequence[Mapping]) -> list[dict]:
        raise NotImplementedError


def case_protocol(
    benchmark: str,
    tokenizer,
    *,
    base_fingerprint: str,
    batch_size: int = 32,
    datasets_dir=None,
    use_cache: bool = True,
) -> CaseProtocol:
    """The scorer of a case benchmark, for models with this tokenizer (`base_fingerprint`: the
    unedited model's, which keys what is cached of it)."""
    from editeval.evaluation import mquake, rippleedits

    runner = new_runner(tokenizer, batch_size)
    if benchmark == "mquake":
        return mquake.MQuAKEProtocol.load(tokenizer, runner, datasets_dir)
    if benchmark == "rippleedits":
        return rippleedits.RippleEditsProtocol(
            tokenizer, runner, base_fingerprint=base_fingerprint, use_cache=use_cache
        )
    raise ValueError(f"'{benchmark}' is not a case benchmark (known: {', '.join(CASE_BENCHMARKS)})")


def new_runner(tokenizer, batch_size: int) -> LMRunner:
    """A runner padding with the tokenizer's padding id (else its EOS id, else 0), as the evaluator's."""
    pad = tokenizer.pad_token_id
    return LMRunner(
        pad_id=pad if pad is not None else (tokenizer.eos_token_id or 0),
        eos_id=tokenizer.eos_token_id,
        batch_size=batch_size,
    )


def continuations(
    runner: LMRunner,
    tokenizer,
    model,
    prompts: Sequence[str],
    max_new: int | Callable[[str, int], int],
    *,
    stop_after: frozenset[int] = frozenset(),
    stop_when: Callable[[str], bool] | None = None,
    queries: Sequence[str] | None = None,
) -> list[str]:
    """Each prompt's greedy continuation on `model`, decoded without special tokens. It ends at EOS,
    after `max_new` tokens (or ``max_new(text, n_tokens)`` of the text the model reads), after a
    token of `stop_after`, or once `stop_when(continuation so far)` holds. An in-context method's
    prefix goes before each prompt, chosen for the prompt's query (`queries[k]`, default the prompt
    itself: a question asked after few-shot demonstrations passes the question alone, or the
    method's retrieval would see the demonstrations). Repeated prompts are generated once, and the
    common opening of prompts that share at least `SHARED_PREFIX` tokens is run once."""
    asked = list(zip(prompts, queries if queries is not None else prompts, strict=True))
    unique = list(dict.fromkeys(asked))
    prefix = prompt_transform(model)
    texts = [(prefix(q) if prefix else "") + p for p, q in unique]
    ids = [tokens.encode(tokenizer, t) for t in texts]
    limits = [max_new if isinstance(max_new, int) else max_new(t, len(i)) for t, i in zip(texts, ids)]
    when = None
    if stop_when is not None:

        def when(generated: list[int]) -> bool:
            return stop_when(tokenizer.decode(generated, skip_special_tokens=True))

    was_training = model.training
    model.eval()
    try:
        gens = runner.greedy(
            model, ids, limits, stop_at_eos=True, stop_after=stop_after, stop_when=when, share_prefix=SHARED_PREFIX
        )
    finally:
        model.train(was_training)
    decoded = {pq: tokenizer.decode(g, skip_special_tokens=True) for pq, g in zip(unique, gens)}
    return [decoded[pq] for pq in asked]
