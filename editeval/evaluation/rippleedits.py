"""RippleEdits' scorer (Cohen et al., TACL 2024), as the authors' code computes it
(``src/testrunner.py``, ``src/queryexecutor.py``, ``src/query.py``, ``src/evaluation.py``).

- **A query** is its ``prompt`` given to the model: greedy generation (EOS or a total length of
  ``len(prompt in characters) + 30`` *tokens*, the authors' ``max_length``); the output is the
  prompt followed by the continuation (the authors decode the whole sequence, without an
  in-context editor's context). It passes when, for **every** entry of its ``answers``, the
  ``value`` or one of its ``aliases`` is a substring of the output, **case-sensitive**. As their
  ``Query._filter_answers``, strings of one character are dropped unless they are a digit; a query
  with no answers passes (their loop over answers finds nothing to fail). Consequences of the
  authors' rule kept here: an answer already in the prompt passes whatever the model says (in
  ``popular_gptj``, 103 of the 1,579 tests, and the 214 Logical Generalization tests with no
  answers, pass on any model).
- **Conditions**: on the *unedited* model, each test's ``condition_queries`` are run; a test with a
  failing one is not executed and is left out. The unedited model's outputs are cached on disk
  (its weights' fingerprint, the metric version and the exact token ids).
- **A test** passes when any (``OR``) or all (``AND``) of its ``test_queries`` pass on the edited model.
- **The edit** succeeded when its fact query (the edit's ``prompt``, answers ``target_new`` and its
  aliases) passes on the edited model: ``rippleedits.edit``, 1.0 or 0.0.
- **Per criterion** (``rippleedits.<criterion>``): the case's passed / executed tests. NaN when none
  of its tests of that criterion was executed, **and when the edit failed**: the authors average
  each criterion over the edits that succeeded and had an executed test.
- **Overall** (``rippleedits.overall``, a record aggregate): the mean of the six criteria's
  accuracies, over those with cases (the paper's "Avg."; `results.ripple_overall`).

On an unedited model (``editeval score --model B --base B``) no edit holds, so the criteria are NaN
and ``rippleedits.edit`` is the share of new facts the model already states.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from editeval.evaluation import metrics as M
from editeval.evaluation.cases import CaseProtocol, continuations
from editeval.evaluation.specs import RIPPLE_CRITERIA, RIPPLE_CRITERION_NAMES, MetricName
from editeval.runtime import tokens
from editeval.runtime.paths import atomic_file, cache_dir

log = logging.getLogger(__name__)

ANSWER_LENGTH = 30  # the authors' execute_query(answer_length=30)
EDIT = str(MetricName("rippleedits", "edit"))
CRITERIA = tuple(str(name) for name in RIPPLE_CRITERION_NAMES)  # rippleedits.<the dataset's column>
COLUMNS = (EDIT, *CRITERIA)


def answer_strings(answer: Mapping) -> list[str]:
    """An answer's value and aliases, without the one-character strings the authors drop (digits kept).

    >>> answer_strings({"value": "male", "aliases": ["m", "man", "1"]})
    ['male', 'man', '1']
    """
    return [s for s in (answer["value"], *answer["aliases"]) if len(s) > 1 or s.isdigit()]


def query_passes(query: Mapping, output: str) -> bool:
    """Every answer of the query has its value or an alias in `output` (case-sensitive substring).

    >>> q = {"answers": [{"value": "Syria", "aliases": ["Syrian Arab Republic"]}]}
    >>> query_passes(q, "... is Syria."), query_passes(q, "... is syria.")
    (True, False)
    """
    return all(any(s in output for s in answer_strings(a)) for a in query["answers"])


def test_passes(test: Mapping, outputs: Sequence[str]) -> bool:
    """OR: any test query passes; AND: all do (`outputs`: one per test query)."""
    results = [query_passes(q, out) for q, out in zip(test["test_queries"], outputs, strict=True)]
    return any(results) if test["test_condition"] == "OR" else all(results)


def fact_query(case: Mapping) -> dict:
    """The edit's own query: its prompt, answered by the new target or one of its aliases."""
    return {"prompt": case["prompt"], "answers": [{"value": case["target_new"], "aliases": case["target_new_aliases"]}]}


def case_row(case: Mapping, base_outputs: Mapping[str, str], outputs: Mapping[str, str]) -> dict:
    """A case's metrics from the outputs (prompt -> output) of the unedited model (conditions) and of
    the edited model (the fact query and the tests): strings in, numbers out."""
    edited = query_passes(fact_query(case), outputs[case["prompt"]])
    row = {EDIT: float(edited)}
    for criterion, column in zip(RIPPLE_CRITERIA, CRITERIA):
        executed = [
            t
            for t in case[criterion]
            if all(query_passes(q, base_outputs[q["prompt"]]) for q in t["condition_queries"])
        ]
        passed = [test_passes(t, [outputs[q["prompt"]] for q in t["test_queries"]]) for t in executed]
        row[column] = sum(passed) / len(passed) if passed and edited else math.nan
    return row


def condition_prompts(cases: Sequence[Mapping]) -> list[str]:
    return list(
        dict.fromkeys(q["prompt"] for c in cases for k in RIPPLE_CRITERIA for t in c[k] for q in t["condition_queries"])
    )


def test_prompts(cases: Sequence[Mapping]) -> list[str]:
    prompts = [c["prompt"] for c in cases]
    prompts += [q["prompt"] for c in cases for k in RIPPLE_CRITERIA for t in c[k] for q in t["test_queries"]]
    return list(dict.fromkeys(prompts))


def _max_new(text: str, n_tokens: int) -> int:
    """New tokens under the authors' ``max_length = len(prompt) + 30`` (characters, counted as tokens)."""
    return max(1, len(text) + ANSWER_LENGTH - n_tokens)


class RippleEditsProtocol(CaseProtocol):
    """``rippleedits.*`` of cases on a model; `prepare` runs the condition queries on the unedited one."""

    name = "rippleedits"
    columns = COLUMNS

    def __init__(self, tokenizer, runner, *, base_fingerprint: str, use_cache: bool = True):
        self.tokenizer, self.runner = tokenizer, runner
        self.base_fingerprint, self.use_cache = base_fingerprint, use_cache
        self.base_outputs: dict[str, str] = {}

    def requests(self, case: Mapping) -> list[dict]:
        from editeval.data.schema import EDIT_REQUEST_FEATURES

        return [{k: case[k] for k in EDIT_REQUEST_FEATURES}]

    def outputs(self, model, prompts: Sequence[str]) -> dict[str, str]:
        """Each query's output on `model`: the prompt followed by its continuation."""
        gens = continuations(self.runner, self.tokenizer, model, prompts, _max_new)
        return {p: p + g for p, g in zip(prompts, gens)}

    def prepare(self, base_model, cases: Sequence[Mapping]) -> None:
        prompts = [p for p in condition_prompts(cases) if p not in self.base_outputs]
        if not prompts:
            return
        key = {
            "model": self.base_fingerprint,
            "metric": M.METRIC_VERSION,
            "ripple_conditions": [tokens.encode(self.tokenizer, p) for p in prompts],
        }
        path = cache_dir() / "preedit" / f"ripple-{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]}.json"
        cached = None
        if self.use_cache and path.exists():
            try:
                cached = json.loads(path.read_text())
            except ValueError:
                log.warning("ignoring unreadable RippleEdits condition cache %s", path)
        if not (isinstance(cached, dict) and set(cached) == set(prompts)):
            cached = self.outputs(base_model, prompts)
            if self.use_cache:
                atomic_file(path, lambda tmp: Path(tmp).write_text(json.dumps(cached)))
        self.base_outputs.update(cached)

    def rows(self, model, cases: Sequence[Mapping]) -> list[dict]:
        missing = [p for p in condition_prompts(cases) if p not in self.base_outputs]
        if missing:
            raise RuntimeError("RippleEdits: prepare() on the unedited model first (its condition queries)")
        outputs = self.outputs(model, test_prompts(cases))
        return [{"case_id": c["case_id"], **case_row(c, self.base_outputs, outputs)} for c in cases]
