"""editeval's generation scorers as an `evaluate` metric: the numbers the editeval pipeline computes
for the same strings (it calls the same functions, `editeval.evaluation.metrics`).

    import evaluate
    from editeval.evaluation.editeval_generation import PATH

    wild = evaluate.load(PATH)                      # offline: a local folder
    wild.compute(predictions=[" Paris. It is"], references=["Paris"])
    # {'wild': 1.0, 'wild_contains': 1.0}
    wild.compute(predictions=[...], references=[...], protocol="locality")    # references: the unedited
    wild.compute(predictions=[...], references=[...], protocol="generation")  # model's answers / targets
"""

import evaluate

import datasets
from editeval.evaluation import metrics as M

_CITATION = """\
@inproceedings{yang2025mirage,
  title={The Mirage of Model Editing: Revisiting Evaluation in the Wild},
  author={Yang, Wanli and others},
  booktitle={Proceedings of ACL 2025},
  year={2025},
  note={arXiv:2502.11177}
}
"""

_DESCRIPTION = """\
Scores free-form answers of an edited language model the way editeval does.
protocol="wild" (default): each prediction (the decoded continuation of a greedy generation) is cut
at its first natural stop (a period or a newline), normalised (lower case, no punctuation, no
articles, single spaces) and compared with the reference: `wild` is the exact-match rate,
`wild_contains` the rate at which the reference is a whole-word span of it.
protocol="locality": the reference is the unedited model's answer; `locality_wild` is the rate at
which the normalised answers are equal.
protocol="generation": editeval's target-length generation protocol; `generation` is the
normalised exact-match rate (no cut at a stop).
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: list of str, the model's continuations.
    references: list of str, the new answers (wild, generation) or the unedited model's answers (locality).
    protocol: "wild" | "locality" | "generation".
Returns:
    dict of rates in [0, 1] (NaN for no predictions).
Examples:
    >>> metric = evaluate.load(PATH)
    >>> metric.compute(predictions=[" The Eiffel Tower.", " Rome"], references=["Eiffel Tower", "Paris"])
    {'wild': 0.5, 'wild_contains': 0.5}
"""

PROTOCOLS = ("wild", "locality", "generation")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EditevalGeneration(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=[
                "https://arxiv.org/abs/2502.11177",
                "https://github.com/WanliYoung/Revisit-Editing-Evaluation",
            ],
        )

    def _compute(self, predictions, references, protocol="wild"):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r}: choose from {', '.join(PROTOCOLS)}")
        if protocol == "generation":
            return {"generation": M.mean([M.generation_exact_match(p, r) for p, r in zip(predictions, references)])}
        answers = [M.wild_answer(p) for p in predictions]
        if protocol == "locality":
            return {
                "locality_wild": M.mean([M.wild_locality(a, M.wild_answer(r)) for a, r in zip(answers, references)])
            }
        return {
            "wild": M.mean([M.wild_exact_match(a, r) for a, r in zip(answers, references)]),
            "wild_contains": M.mean([M.wild_contains(a, r) for a, r in zip(answers, references)]),
        }
