"""Metric specs and metric names: every number editeval reports is a registered family measured by
one of its protocols, optionally for one kind of its data.

A `MetricName` is that triple; its text form is the column name of the per-edit rows and the key of
a results record (``reliability.teacher_forced``, ``locality.nq.teacher_forced``,
``efficacy_score`` for ROME's CounterFact scores, ``counterfact.score`` for their aggregate,
``mquake.multihop`` and ``rippleedits.relation_specificity`` for the case benchmarks' authors' scorers).
Parse names with `MetricName.parse`, never by splitting strings. What each protocol computes is
documented in `editeval.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from editeval.runtime.registry import Registry

TEACHER_FORCED, GENERATION = "teacher_forced", "generation"
WILD, WILD_CONTAINS = "wild", "wild_contains"  # free generation to a natural stop (`evaluation.wild`)
WILD_JUDGE = "wild_judge"  # a local model's verdict on the WILD answer (`evaluation.judge`)

# evaluation protocols a benchmark split can declare (`editeval.data.common.SplitSpec.protocols`)
COUNTERFACT = "counterfact"  # ROME's probability comparisons: efficacy, paraphrase, neighbourhood
EVALUATION_PROTOCOLS = (COUNTERFACT,)


def declared_protocols(benchmark: str, config: str | None, split: str) -> tuple[str, ...] | None:
    """The evaluation protocols a registered benchmark declares for this split, or None when
    ``benchmark``/``config``/``split`` names no registered split (requests made up by hand)."""
    from editeval.data import registry  # here: the builders import `datasets`, slow to load
    from editeval.errors import EditevalError

    try:
        protocols = registry.get(benchmark).protocols(config, split)
    except EditevalError:
        return None
    unknown = [p for p in protocols if p not in EVALUATION_PROTOCOLS]
    if unknown:
        raise ValueError(
            f"benchmark '{benchmark}' split '{split}' declares unknown protocols {unknown} "
            f"(known: {', '.join(EVALUATION_PROTOCOLS)})"
        )
    return protocols


@dataclass(frozen=True)
class MetricSpec:
    family: str
    protocols: tuple[str, ...]
    per_kind: bool = False  # one column per data kind, and the family figure = mean over kinds
    joiner: str = "."  # ROME's CounterFact names join family and protocol with "_"
    percent: tuple[str, ...] = ()  # protocols shown x100 on the leaderboard (fractions of 0..1)


# the metric families, in registration order (the order of row columns and site tables); a
# third-party package adds one through the ``editeval.metrics`` entry-point group (a `MetricSpec`)
METRICS: Registry[MetricSpec] = Registry("metric family", group="editeval.metrics", ordered=True)


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Register `spec` under its family name (once; a second registration is an EditevalError)."""
    return METRICS.add(spec.family, spec)


_EDIT_SIDE = (TEACHER_FORCED, GENERATION, WILD, WILD_CONTAINS, WILD_JUDGE)
# MQuAKE: multi-hop accuracy with the few-shot prompt and with the chain-of-thought prompt, hop-wise
# accuracy; each also against the answers before editing (`_original`: the unedited model's figures)
MQUAKE_PROTOCOLS = ("multihop", "cot", "hopwise", "multihop_original", "cot_original", "hopwise_original")
# RippleEdits: the edit's own fact query, the six criteria, and `overall` (an aggregate: the mean of
# the criteria's accuracies, the paper's "Avg.")
RIPPLE_CRITERIA = (
    "logical_generalization",
    "compositionality_i",
    "compositionality_ii",
    "subject_aliasing",
    "relation_specificity",
    "forgetfulness",
)
RIPPLE_OVERALL = "overall"
RIPPLE_PROTOCOLS = ("edit", *RIPPLE_CRITERIA, RIPPLE_OVERALL)
for _spec in (
    MetricSpec("reliability", _EDIT_SIDE, percent=_EDIT_SIDE),
    MetricSpec("generalization", _EDIT_SIDE, percent=_EDIT_SIDE),
    MetricSpec("locality", (TEACHER_FORCED, WILD), per_kind=True, percent=(TEACHER_FORCED, WILD)),
    MetricSpec("portability", _EDIT_SIDE, per_kind=True, percent=_EDIT_SIDE),
    MetricSpec("efficacy", ("score", "magnitude"), joiner="_", percent=("score",)),
    MetricSpec("paraphrase", ("score", "magnitude"), joiner="_", percent=("score",)),
    MetricSpec("neighborhood", ("score", "magnitude"), joiner="_", percent=("score",)),
    MetricSpec("fluency", ("ngram_entropy",)),
    # the site has always shown these as fractions (kept so that its pages do not change)
    MetricSpec("other_task", ("piqa_accuracy", "piqa_agreement")),
    MetricSpec("counterfact", ("score",)),  # aggregate: harmonic mean of the three CounterFact scores
    # the authors' scorers of the benchmarks whose evaluation unit is a case (`evaluation.cases`):
    # one figure per case, named after the benchmark (`evaluation.mquake`, `evaluation.rippleedits`)
    MetricSpec("mquake", MQUAKE_PROTOCOLS, percent=MQUAKE_PROTOCOLS),
    MetricSpec("rippleedits", RIPPLE_PROTOCOLS, percent=RIPPLE_PROTOCOLS),
):
    register_metric(_spec)


@dataclass(frozen=True)
class MetricName:
    family: str
    protocol: str
    kind: str | None = None

    def __post_init__(self):
        spec = METRICS.get(self.family, None)
        if spec is None:
            raise ValueError(f"unknown metric family '{self.family}' (known: {', '.join(METRICS.names())})")
        if self.protocol not in spec.protocols:
            raise ValueError(f"metric family '{self.family}' has no protocol '{self.protocol}'")
        if self.kind is not None and (not spec.per_kind or not self.kind or "." in self.kind):
            raise ValueError(f"metric family '{self.family}' has no kind '{self.kind}'")

    @property
    def spec(self) -> MetricSpec:
        return METRICS[self.family]

    @property
    def percent(self) -> bool:
        return self.protocol in self.spec.percent

    def family_level(self) -> MetricName:
        """The name without its kind (``locality.nq.teacher_forced`` -> ``locality.teacher_forced``)."""
        return MetricName(self.family, self.protocol)

    def __str__(self) -> str:
        spec = self.spec
        if self.kind is not None:
            return f"{self.family}.{self.kind}.{self.protocol}"
        return f"{self.family}{spec.joiner}{self.protocol}"

    @classmethod
    def parse(cls, text: str) -> MetricName:
        """The name of ``text``; ValueError when it names no registered metric."""
        parts = text.split(".")
        if len(parts) == 2:
            return cls(parts[0], parts[1])
        if len(parts) == 3:
            return cls(parts[0], parts[2], parts[1])
        for spec in METRICS.values():
            if spec.joiner != "." and text.startswith(spec.family + spec.joiner):
                return cls(spec.family, text[len(spec.family) + len(spec.joiner) :])
        raise ValueError(f"not a metric name: '{text}'")

    @classmethod
    def try_parse(cls, text: str) -> MetricName | None:
        try:
            return cls.parse(text)
        except ValueError:
            return None


def per_kind_families() -> tuple[str, ...]:
    """The families measured per data kind (their records carry a breakdown by kind)."""
    return tuple(family for family, spec in METRICS.items() if spec.per_kind)


COUNTERFACT_SCORES = tuple(MetricName(family, "score") for family in ("efficacy", "paraphrase", "neighborhood"))
COUNTERFACT_AGGREGATE = MetricName("counterfact", "score")  # the harmonic mean of COUNTERFACT_SCORES' means
RIPPLE_CRITERION_NAMES = tuple(MetricName("rippleedits", c) for c in RIPPLE_CRITERIA)
RIPPLE_AGGREGATE = MetricName("rippleedits", RIPPLE_OVERALL)  # the mean of RIPPLE_CRITERION_NAMES' means


def row_columns(
    locality_kinds: Sequence[str],
    portability_kinds: Sequence[str],
    *,
    generation: bool,
    counterfact: bool,
    fluency: bool,
    piqa: bool,
    wild: bool = False,
    judge: bool = False,
) -> list[str]:
    """The columns of an evaluator's per-edit rows, in their order (``case_id`` first)."""
    protos = [TEACHER_FORCED] + ([GENERATION] if generation else [])
    names = [MetricName(family, p) for p in protos for family in ("reliability", "generalization")]
    names.append(MetricName("locality", TEACHER_FORCED))
    names += [MetricName("locality", TEACHER_FORCED, k) for k in locality_kinds]
    for p in protos:
        names.append(MetricName("portability", p))
        names += [MetricName("portability", p, k) for k in portability_kinds]
    if wild:
        edit_side = (WILD, WILD_CONTAINS) + ((WILD_JUDGE,) if judge else ())
        names += [MetricName(family, p) for family in ("reliability", "generalization") for p in edit_side]
        names.append(MetricName("locality", WILD))
        names += [MetricName("locality", WILD, k) for k in locality_kinds]
        for p in edit_side:
            names.append(MetricName("portability", p))
            names += [MetricName("portability", p, k) for k in portability_kinds]
    if counterfact:
        names += [
            MetricName(family, p)
            for family in ("efficacy", "paraphrase", "neighborhood")
            for p in ("score", "magnitude")
        ]
    if fluency:
        names.append(MetricName("fluency", "ngram_entropy"))
    if piqa:
        names += [MetricName("other_task", "piqa_accuracy"), MetricName("other_task", "piqa_agreement")]
    return ["case_id"] + [str(n) for n in names]
