"""MQuAKE's scorer (Zhong et al. 2023): after a case's edits, are the multi-hop questions that follow
from them answered with the new answer?

Protocols (metric ``mquake.<protocol>``, one value per case, 1.0 or 0.0):

- ``multihop`` (the paper's multi-hop accuracy): each of the case's 3 questions is asked after the
  official 16 few-shot demonstrations (``prompts/multihop-prompts.txt``, one ``Q: … A: …`` per
  line) as ``{demos}\\nQ: {question} A:``; greedy generation to the end of the line (a newline, EOS,
  at most `MAX_NEW_TOKENS`); the answer is that line, stripped. The case counts when **any** of the
  3 answers is the new answer or one of its aliases.
- ``cot``: the same with the official chain-of-thought demonstrations
  (``prompts/multihop-cot-prompts.txt``: ``Question:`` / ``Thoughts:`` / ``Answer:``), asked as
  ``{demos}\\n\\nQuestion: {question}\\nThoughts:``; generation stops once an ``Answer:`` line is
  complete (or a next ``Question:`` starts, EOS, `COT_MAX_NEW_TOKENS`); the answer is what follows
  ``Answer:`` on the first line that starts with it (none: no answer), as the authors' MeLLo
  notebook reads its ``Final answer:`` line.
- ``hopwise``: every question of the new chain (``new_single_hops``) answered right, each asked
  after its relation's 8 demonstrations (``prompts/rel-prompts.json``) as ``{demos}\\nQ: {question}
  A:`` and read as ``multihop``.
- ``*_original``: the same questions scored against the answers *before* editing (``answer`` /
  ``answer_alias`` and MQuAKE-T's ``answer_extended``; the ``single_hops`` chain): on the unedited
  model, the "no edit" baseline; after editing, how often the old answer survives.

Matching rule: the authors' only released scorer (``run_mello.ipynb``) compares the answer string
exactly (``ans == d["new_answer"] or ans in d["new_answer_alias"]``). Here both sides are first put
through WILD's SQuAD normalisation (`metrics.normalize_answer`: lower case, no punctuation, no
articles, single spaces): exact match after normalisation, never a substring. It accepts every
answer the authors accept, and also those differing only in case, punctuation, articles or spacing
("the Arabic language." for the alias "Arabic language").

Open in the authors' description and chosen here: the question's format after the demos (the demo
lines' own); the few-shot answer ends at the newline (the demo format; a period would cut
"Washington, D.C."); 256 tokens for a chain of thought (the MeLLo notebook's ``max_tokens``); no
filtering of cases the unedited model cannot answer (the ``*_original`` columns give what such a
filter needs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from editeval.evaluation.cases import CaseProtocol, continuations
from editeval.evaluation.metrics import normalize_answer
from editeval.evaluation.specs import MQUAKE_PROTOCOLS, MetricName
from editeval.evaluation.wild import stop_tokens

MAX_NEW_TOKENS = 50  # a few-shot answer: one line
COT_MAX_NEW_TOKENS = 256  # a chain of thought and its answer line (the MeLLo notebook's max_tokens)

COLUMNS = tuple(str(MetricName("mquake", p)) for p in MQUAKE_PROTOCOLS)
MULTIHOP, COT, HOPWISE, MULTIHOP_ORIGINAL, COT_ORIGINAL, HOPWISE_ORIGINAL = COLUMNS


def multihop_prompt(demos: str, question: str) -> str:
    """A question after ``Q: … A: …`` demo lines (the multi-hop or a relation's single-hop demos).

    >>> multihop_prompt("Q: Who is the spouse of Joe Biden? A: Jill Biden", "Who performed Hey Jude?")
    'Q: Who is the spouse of Joe Biden? A: Jill Biden\\nQ: Who performed Hey Jude? A:'
    """
    return demos.rstrip("\n") + "\nQ: " + question + " A:"


def cot_prompt(demos: str, question: str) -> str:
    """A question after the chain-of-thought demos (blank-line separated, as in the file).

    >>> cot_prompt("Question: q?\\nThoughts: t.\\nAnswer: a", "Who performed Hey Jude?")
    'Question: q?\\nThoughts: t.\\nAnswer: a\\n\\nQuestion: Who performed Hey Jude?\\nThoughts:'
    """
    return demos.rstrip("\n") + "\n\nQuestion: " + question + "\nThoughts:"


def line_answer(continuation: str) -> str:
    """A few-shot answer: the continuation up to its first newline, stripped.

    >>> line_answer(" Arabic\\nQ: Who is")
    'Arabic'
    """
    return continuation.split("\n", 1)[0].strip()


def _answer_line(line: str) -> str | None:
    line = line.strip()
    return line[len("Answer:") :].strip() if line.startswith("Answer:") else None


def cot_answer(continuation: str) -> str:
    """A chain of thought's answer: the rest of its first line that starts with ``Answer:`` ("" if none).

    >>> cot_answer(" Hey Jude was performed by Madonna.\\nAnswer: Arabic\\n")
    'Arabic'
    >>> cot_answer(" I do not know.")
    ''
    """
    for line in continuation.split("\n"):
        found = _answer_line(line)
        if found is not None:
            return found
    return ""


def cot_finished(continuation: str) -> bool:
    """Whether a chain of thought is done: an ``Answer:`` line ended by a newline, or a next demo's
    ``Question:`` begun.

    >>> cot_finished(" t.\\nAnswer: Arabic"), cot_finished(" t.\\nAnswer: Arabic\\n")
    (False, True)
    """
    ended = continuation.split("\n")[:-1]  # the lines a newline has closed
    return any(_answer_line(line) is not None for line in ended) or "\nQuestion:" in continuation


def is_correct(answer: str, gold: str, aliases: Sequence[str] = ()) -> bool:
    """The answer is `gold` or one of its aliases, after normalisation; an empty answer never is.

    >>> is_correct("the Arabic language.", "Arabic", ["ar", "Arabic language"])
    True
    >>> is_correct("Arabic script", "Arabic", ["Arabic language"])
    False
    """
    said = normalize_answer(answer)
    return bool(said) and said in {normalize_answer(g) for g in (gold, *aliases)}


@dataclass(frozen=True)
class CaseAnswers:
    """What a model answered for one case: its 3 multi-hop questions (few-shot and chain of thought)
    and each hop of the new and of the original chain."""

    multihop: Sequence[str]
    cot: Sequence[str]
    new_hops: Sequence[str]
    hops: Sequence[str]


def case_row(case: Mapping, answers: CaseAnswers) -> dict:
    """A case's metrics (1.0 / 0.0 each) from its answers: strings in, numbers out."""
    new = (case["new_answer"], case["new_answer_alias"])
    old = (case["answer"], [*case["answer_alias"], *(case.get("answer_extended") or [])])

    def any_right(said: Sequence[str], gold) -> float:
        return float(any(is_correct(a, *gold) for a in said))

    def all_hops(said: Sequence[str], hops: Sequence[Mapping]) -> float:
        return float(all(is_correct(a, h["answer"], h["answer_alias"]) for a, h in zip(said, hops, strict=True)))

    return {
        MULTIHOP: any_right(answers.multihop, new),
        COT: any_right(answers.cot, new),
        HOPWISE: all_hops(answers.new_hops, case["new_single_hops"]),
        MULTIHOP_ORIGINAL: any_right(answers.multihop, old),
        COT_ORIGINAL: any_right(answers.cot, old),
        HOPWISE_ORIGINAL: all_hops(answers.hops, case["single_hops"]),
    }


def hop_relations(case: Mapping, key: str) -> list[str]:
    """The relation of each hop of a chain (``single_hops`` follow ``orig.triples``,
    ``new_single_hops`` ``orig.new_triples``)."""
    triples = case["orig"]["new_triples" if key == "new_single_hops" else "triples"]
    if len(triples) != len(case[key]):
        raise ValueError(f"MQuAKE case {case['case_id']}: {len(case[key])} {key} but {len(triples)} triples")
    return [t[1] for t in triples]


class MQuAKEProtocol(CaseProtocol):
    """``mquake.*`` of cases on a model, from the official prompt files (`prompts` by config name:
    ``multihop``, ``multihop_cot``; `relation_demos`: relation id -> its demo lines)."""

    name = "mquake"
    columns = COLUMNS

    def __init__(self, tokenizer, runner, prompts: Mapping[str, str], relation_demos: Mapping[str, str]):
        self.tokenizer, self.runner = tokenizer, runner
        self.demos, self.cot_demos = prompts["multihop"], prompts["multihop_cot"]
        self.relation_demos = dict(relation_demos)
        self.newline = stop_tokens(tokenizer, ("\n",))

    @classmethod
    def load(cls, tokenizer, runner, datasets_dir=None) -> MQuAKEProtocol:
        """With the prompt files of the built ``mquake`` dataset (configs ``prompts`` and ``relations``)."""
        from editeval.data import load_benchmark

        files = load_benchmark("mquake", "files", "prompts", datasets_dir)
        relations = load_benchmark("mquake", "relations", "relations", datasets_dir)
        return cls(
            tokenizer,
            runner,
            {row["name"]: row["text"] for row in files},
            {row["relation_id"]: row["demos"] for row in relations if row["demos"]},
        )

    def requests(self, case: Mapping) -> list[dict]:
        from editeval.data.mquake import case_requests

        return case_requests(case)

    def hop_prompts(self, case: Mapping, key: str) -> list[tuple[str, str]]:
        """(prompt, question) of each hop of a chain (`key`: ``new_single_hops`` or ``single_hops``)."""
        prompts = []
        for hop, relation in zip(case[key], hop_relations(case, key)):
            if relation not in self.relation_demos:
                raise ValueError(f"MQuAKE case {case['case_id']}: no single-hop demos for relation {relation}")
            prompts.append((multihop_prompt(self.relation_demos[relation], hop["question"]), hop["question"]))
        return prompts

    def rows(self, model, cases: Sequence[Mapping]) -> list[dict]:
        # every one-line answer of the cases in one pass, the chains of thought in another
        lines: list[tuple[str, str]] = []
        for case in cases:
            lines += [(multihop_prompt(self.demos, q), q) for q in case["questions"]]
            lines += self.hop_prompts(case, "new_single_hops") + self.hop_prompts(case, "single_hops")
        said = self._generate(model, lines, MAX_NEW_TOKENS, stop_after=self.newline)
        cots = [(cot_prompt(self.cot_demos, q), q) for case in cases for q in case["questions"]]
        thought = self._generate(model, cots, COT_MAX_NEW_TOKENS, stop_when=cot_finished)
        rows = []
        for case in cases:
            answers = CaseAnswers(
                multihop=[line_answer(said[multihop_prompt(self.demos, q)]) for q in case["questions"]],
                cot=[cot_answer(thought[cot_prompt(self.cot_demos, q)]) for q in case["questions"]],
                new_hops=[line_answer(said[p]) for p, _ in self.hop_prompts(case, "new_single_hops")],
                hops=[line_answer(said[p]) for p, _ in self.hop_prompts(case, "single_hops")],
            )
            rows.append({"case_id": case["case_id"], **case_row(case, answers)})
        return rows

    def _generate(self, model, asked: list[tuple[str, str]], max_new: int, **stops) -> dict[str, str]:
        """prompt -> its greedy continuation on `model` (`asked`: (prompt, its question), the question
        being what an in-context method's retrieval sees)."""
        prompts, questions = [p for p, _ in asked], [q for _, q in asked]
        said = continuations(self.runner, self.tokenizer, model, prompts, max_new, queries=questions, **stops)
        return dict(zip(prompts, said))
