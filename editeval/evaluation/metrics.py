"""Metric definitions: pure functions, one per protocol, as the field computes them.

Every number editeval reports is named by its protocol (``<family>.<protocol>``):

=====================================  ==========================================================
name                                   protocol
=====================================  ==========================================================
``reliability.teacher_forced``         token accuracy of ``prompt + " " + target_new`` (below)
``reliability.generation``             greedy generation of the target's token length from the
                                       prompt, normalised exact match against ``target_new``
``generalization.*``                   the same on each rephrased prompt, mean over rephrases
``locality.teacher_forced``            agreement of the edited model's argmax with the *unedited*
                                       base model's argmax over ``loc_prompt + " " + loc_answer``'s
                                       answer span; mean over locality kinds
``locality.<kind>.teacher_forced``     the same, one locality kind (``nq``, ``neighborhood``, ...)
``portability.*``                      the reliability protocols on the portability question and
                                       its new answer; the family figure = mean over its kinds
``portability.<kind>.*``               one portability kind (``one_hop``, ``subject_replace``...)
``efficacy_score``                     CounterFact/ROME: ``[NLL(true) > NLL(new)]`` on the prompt
``efficacy_magnitude``                 ``exp(-NLL(new)) - exp(-NLL(true))`` on the prompt
``paraphrase_score`` / ``_magnitude``  the same on the paraphrases, mean over them
``neighborhood_score`` / ``_magn.``    ``[NLL(true) < NLL(new)]`` / ``exp(-NLL(true)) -
                                       exp(-NLL(new))`` on the neighbourhood prompts
``<family>.wild``                      WILD (Yang et al. 2025, `editeval.evaluation.wild`): greedy
                                       generation from the question alone until a natural stop
                                       (EOS, a period, a newline; at most 50 new tokens), normalised
                                       exact match against the new answer (reliability,
                                       generalization, portability)
``<family>.wild_contains``             the normalised new answer is a whole-word span of it
``locality.wild``                      the edited model's normalised WILD answer equals the
                                       *unedited* model's, on the locality question
``fluency.ngram_entropy``              weighted bi/tri-gram entropy of greedy generations
``other_task.piqa_accuracy``           PIQA accuracy of the evaluated model (length-normalised
                                       log-likelihood choice), on a fixed prefix of the split
``other_task.piqa_agreement``          fraction of PIQA items where it picks what the base picks
``mquake.multihop`` / ``.cot``         MQuAKE, per case (`editeval.evaluation.mquake`): any of
                                       its 3 multi-hop questions answered with the new answer
                                       (few-shot / chain-of-thought prompt); ``mquake.hopwise``:
                                       every hop of the new chain; ``*_original``: the old answers
``rippleedits.<criterion>``            RippleEdits, per case (`editeval.evaluation.rippleedits`):
                                       passed / executed tests of the criterion, where the edit
                                       holds (``rippleedits.edit``); ``rippleedits.overall``: the
                                       mean of the criteria (a record aggregate)
=====================================  ==========================================================

NLL is the *mean per-token* negative log-likelihood of the target tokens after the prefix.
All values are fractions in [0, 1] (magnitudes in [-1, 1]; entropy in bits); tables may show ×100.

Teacher-forced protocol (the reference toolkit's "accuracy", "exact match" and "token em"):
the text ``prompt + " " + target`` is tokenised with the tokenizer's default special tokens;
``prompt_len`` is the length of the prompt tokenised *alone*. The predictions at positions
``[prompt_len - 1 : -1]`` are compared with tokens ``[prompt_len:]``; the score is the mean of
equal tokens. A BPE merge across the prompt/target boundary shifts the split (a known quirk of
the reference, kept for comparability). If the merge would leave no target token, the last token
is scored (the reference would produce NaN).

Bump ``METRIC_VERSION`` whenever any number could change for the same model and data.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

METRIC_VERSION = "1"

FLUENCY_MAX_NEW_TOKENS = 100
FLUENCY_WEIGHTS = {2: 2 / 3, 3: 4 / 3}


# --------------------------------------------------------------------------- per-sequence scores


def token_accuracy(predicted: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of positions where the predicted token equals the label token.

    >>> token_accuracy([5, 7, 9], [5, 7, 8])
    0.6666666666666666
    """
    if len(predicted) != len(labels) or not labels:
        raise ValueError("predictions and labels must be non-empty and of equal length")
    return sum(int(p == t) for p, t in zip(predicted, labels)) / len(labels)


def teacher_forced_predictions(logits, prompt_len: int) -> list[int]:
    """Argmax predictions for the target span from one unpadded sequence's logits ``[T, V]``:
    the predictions at positions ``prompt_len - 1 .. T - 2`` (each predicts the next token)."""
    return [int(i) for i in logits[prompt_len - 1 : -1].argmax(-1).tolist()]


def locality_agreement(pre: Sequence[int], post: Sequence[int]) -> float:
    """Fraction of answer positions where the edited model's argmax equals the base model's.

    >>> locality_agreement([1, 2, 3, 4], [1, 2, 0, 4])
    0.75
    """
    return token_accuracy(post, pre)


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces.

    >>> normalize_answer("  The Eiffel-Tower. ")
    'eiffeltower'
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def generation_exact_match(generated: str, answer: str) -> float:
    """1.0 when the normalised generation equals the normalised answer, else 0.0.

    >>> generation_exact_match(" Paris.", "paris")
    1.0
    >>> generation_exact_match(" Paris is", "Paris")
    0.0
    """
    return float(normalize_answer(generated) == normalize_answer(answer))


def mean_nll(token_logprobs: Sequence[float]) -> float:
    """Mean per-token negative log-likelihood of a completion.

    >>> round(mean_nll([-0.5, -1.5]), 6)
    1.0
    """
    if not token_logprobs:
        raise ValueError("empty completion")
    return -sum(token_logprobs) / len(token_logprobs)


def rewrite_success(nll_new: float, nll_true: float) -> tuple[float, float]:
    """ROME efficacy / paraphrase: ``(score, magnitude)`` for one prompt.

    score = ``[NLL(true) > NLL(new)]``; magnitude = ``exp(-NLL(new)) - exp(-NLL(true))``.

    >>> rewrite_success(0.5, 2.0)[0]
    1.0
    >>> round(rewrite_success(0.5, 2.0)[1], 4)
    0.4712
    """
    return float(nll_true > nll_new), math.exp(-nll_new) - math.exp(-nll_true)


def neighborhood_success(nll_new: float, nll_true: float) -> tuple[float, float]:
    """ROME neighbourhood: ``(score, magnitude)``; the true answer must stay more likely.

    score = ``[NLL(true) < NLL(new)]``; magnitude = ``exp(-NLL(true)) - exp(-NLL(new))``.

    >>> score, magnitude = neighborhood_success(0.5, 2.0)
    >>> score, round(magnitude, 4)
    (0.0, -0.4712)
    """
    return float(nll_true < nll_new), math.exp(-nll_true) - math.exp(-nll_new)


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean (0 when any value is 0): the CounterFact overall score of ES, PS, NS.

    >>> harmonic_mean([0.5, 1.0])
    0.6666666666666666
    """
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1 / v for v in values)


# --------------------------------------------------------------------------- WILD

WILD_MAX_NEW_TOKENS = 50
WILD_STOPS = (".", "\n")  # the natural stops; EOS too


def wild_answer(continuation: str) -> str:
    """The answer of a WILD generation: the decoded continuation up to its first natural stop.

    >>> wild_answer(" Paris. It is the capital")
    ' Paris'
    >>> wild_answer(" Rome\\nQ: next")
    ' Rome'
    """
    cut = min((i for i in (continuation.find(s) for s in WILD_STOPS) if i >= 0), default=len(continuation))
    return continuation[:cut]


def wild_exact_match(answer: str, target: str) -> float:
    """1.0 when the normalised WILD answer equals the normalised target (the paper's EM).

    >>> wild_exact_match(" the Eiffel Tower", "Eiffel Tower")
    1.0
    """
    return float(normalize_answer(answer) == normalize_answer(target))


def wild_contains(answer: str, target: str) -> float:
    """1.0 when the normalised target's words appear, in order and together, among the normalised
    answer's words (a whole-word span); 0.0 for a target that normalises to nothing.

    >>> wild_contains(" It is Paris, France", "paris")
    1.0
    >>> wild_contains(" Parisian", "Paris")
    0.0
    """
    words, want = normalize_answer(answer).split(), normalize_answer(target).split()
    if not want:
        return 0.0
    return float(any(words[i : i + len(want)] == want for i in range(len(words) - len(want) + 1)))


def wild_locality(edited: str, base: str) -> float:
    """1.0 when the edited model's normalised answer equals the unedited model's.

    >>> wild_locality(" William Shakespeare.", " william shakespeare")
    1.0
    """
    return float(normalize_answer(edited) == normalize_answer(base))


# --------------------------------------------------------------------------- fluency

_WORD = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def word_tokenize(text: str) -> list[str]:
    """Words and punctuation marks (a dependency-free stand-in for ``nltk.word_tokenize``;
    it differs only on contractions, which nltk splits as ``do n't``).

    >>> word_tokenize("Paris, the capital.")
    ['Paris', ',', 'the', 'capital', '.']
    """
    return _WORD.findall(text)


def ngram_entropy(text: str, weights: dict[int, float] = FLUENCY_WEIGHTS) -> float:
    """ROME's fluency of one text: the arithmetic mean over n of ``weight_n * H_n`` where
    ``H_n`` is the entropy (bits) of the text's word n-gram frequency distribution
    (bigrams weighted 2/3, trigrams 4/3). A text too short for an n-gram contributes 0.

    >>> round(ngram_entropy("a b c d"), 6)  # (2/3 * log2(3) + 4/3 * log2(2)) / 2
    1.194988
    """
    tokens = word_tokenize(text)
    parts = []
    for n, w in weights.items():
        counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        total = sum(counts.values())
        h = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        parts.append(w * h)
    return sum(parts) / len(parts)


# --------------------------------------------------------------------------- PIQA


def piqa_choice(loglik: Sequence[float], n_tokens: Sequence[int]) -> int:
    """Index of the solution with the higher length-normalised (per token) log-likelihood;
    ties go to the first.

    >>> piqa_choice([-6.0, -4.0], [3, 1])
    0
    """
    scores = [ll / max(n, 1) for ll, n in zip(loglik, n_tokens)]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def mean(values: Sequence[float]) -> float:
    """Mean ignoring NaN; NaN when nothing is left.

    >>> mean([1.0, float("nan"), 0.0])
    0.5
    """
    kept = [v for v in values if v == v]
    return sum(kept) / len(kept) if kept else float("nan")
