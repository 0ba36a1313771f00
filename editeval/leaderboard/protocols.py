"""The two protocols side by side on the site: teacher-forced and WILD (`editeval.evaluation.wild`).

A table whose entries carry WILD figures shows each headline metric's WILD column beside its
teacher-forced one, an "Average (WILD)" beside the teacher-forced "Average", ranks by the WILD
average when every entry has one (a switch above the table re-ranks by either), and draws the gap
between the two reliabilities of each entry.

A case benchmark's table (MQuAKE, RippleEdits: `CASE_TABLES`) shows its authors' metrics instead,
ranked by their headline metric.
"""

from __future__ import annotations

from dataclasses import dataclass

from editeval.evaluation.specs import TEACHER_FORCED, WILD, MetricName

FAMILIES = ("reliability", "generalization", "locality", "portability")
WILD_AVERAGE_DEFINITION = (
    "Average (WILD) = the same mean over the WILD figures: the edited model answers each question in "
    "free greedy generation until a natural stop (EOS, a period, a newline; at most 50 tokens), and an "
    "answer counts only when it is the new answer (normalised exact match; locality: the same answer as "
    "the unedited model). Teacher-forced scores only check the target's tokens one at a time given the "
    'right prefix, which is why they run far higher (Yang et al., ACL 2025, "The Mirage of Model Editing").'
)


def wild_metric(family: str) -> str:
    return str(MetricName(family, WILD))


def interleave(columns: list[dict], members) -> list[dict]:
    """`columns` with each headline family's WILD column right after its teacher-forced one, where
    any entry of the table has it."""
    out = []
    for c in columns:
        out.append(c)
        if c["key"] in FAMILIES and any(e.record.value(wild_metric(c["key"])) is not None for e in members):
            out.append({"key": f"{c['key']}_wild", "label": f"{c['label']} (WILD)", "metric": wild_metric(c["key"])})
    return out


def averages(entry, families: list[str]) -> tuple[float | None, float | None]:
    """The entry's teacher-forced and WILD averages over `families` (None when one is missing)."""
    out = []
    for protocol in (TEACHER_FORCED, WILD):
        values = [entry.record.value(str(MetricName(f, protocol))) for f in families]
        out.append(None if not values or any(v is None for v in values) else sum(values) / len(values))
    return out[0], out[1]


def gap_plot(members) -> dict | None:
    """One row per entry (in table order): its teacher-forced and WILD reliability (0-100), joined."""
    tf, wild = str(MetricName("reliability", TEACHER_FORCED)), wild_metric("reliability")
    rows = [e for e in members if e.record.value(tf) is not None and e.record.value(wild) is not None]
    if not rows:
        return None
    width, left, right, step = 420, 150, 16, 22

    def x(v: float) -> float:
        return round(left + v * (width - left - right), 1)

    bars = [
        {
            "y": 24 + k * step,
            "x_tf": x(e.record.value(tf)),
            "x_wild": x(e.record.value(wild)),
            "label": e.method,
            "slug": e.slug,
            "title": e.submission.title,
            "tf": 100 * e.record.value(tf),
            "wild": 100 * e.record.value(wild),
        }
        for k, e in enumerate(rows)
    ]
    ticks = [{"x": x(t), "label": f"{round(t * 100)}"} for t in (0, 0.25, 0.5, 0.75, 1)]
    return {"width": width, "height": 40 + len(rows) * step, "left": x(0), "right": x(1), "bars": bars, "ticks": ticks}


# ----------------------------------------------------------------------------- case benchmarks


@dataclass(frozen=True)
class CaseTable:
    """How a case benchmark's table (`editeval.evaluation.cases`) is shown: its authors' metrics
    as columns, ranked by their headline metric instead of the four-family average."""

    score: str  # the metric the table is ranked by (shown as its score column)
    score_label: str
    definition: str
    columns: tuple[tuple[str, str], ...]  # (metric, label), after the score column
    unit: str = "Cases"


CASE_TABLES = {
    "mquake": CaseTable(
        score=str(MetricName("mquake", "multihop")),
        score_label="Multi-hop",
        definition=(
            "MQuAKE multi-hop accuracy (Zhong et al. 2023): after a case's edits (applied together), the "
            "share of cases where any of the 3 multi-hop questions, asked after the official few-shot "
            "demonstrations and answered by greedy generation, gets the new answer or an alias "
            "(normalised exact match). CoT: the same with the chain-of-thought demonstrations. Hop-wise: "
            "every single-hop question of the new chain right. Old answer: the multi-hop questions still "
            "answered as before the edits."
        ),
        columns=(
            (str(MetricName("mquake", "cot")), "Multi-hop (CoT)"),
            (str(MetricName("mquake", "hopwise")), "Hop-wise"),
            (str(MetricName("mquake", "multihop_original")), "Old answer"),
        ),
    ),
    "rippleedits": CaseTable(
        score=str(MetricName("rippleedits", "overall")),
        score_label="Overall",
        definition=(
            "RippleEdits (Cohen et al. 2024): after an edit, each test query passes when an answer or alias "
            "is a substring of the greedy output (tests whose conditions fail on the unedited model are "
            "dropped); Overall = the mean of the six criteria's accuracies (the paper's Avg.). Edit: the "
            "edited fact itself."
        ),
        columns=(
            (str(MetricName("rippleedits", "edit")), "Edit"),
            (str(MetricName("rippleedits", "logical_generalization")), "Logical gen."),
            (str(MetricName("rippleedits", "compositionality_i")), "Comp. I"),
            (str(MetricName("rippleedits", "compositionality_ii")), "Comp. II"),
            (str(MetricName("rippleedits", "subject_aliasing")), "Subject aliasing"),
            (str(MetricName("rippleedits", "relation_specificity")), "Relation spec."),
            (str(MetricName("rippleedits", "forgetfulness")), "Forgetfulness"),
        ),
    ),
}
