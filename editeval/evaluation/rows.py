"""Per-edit rows: the metrics of one edit request from the runner's outputs on its sequences.

The row's keys are `editeval.evaluation.specs.MetricName` texts; what each metric computes is in
`editeval.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from editeval.evaluation import metrics as M
from editeval.evaluation.requests import CF_TRUE, GEN, LOC, NEIGH_NEW, NEIGH_TRUE, PORT, REL, EvalSequence
from editeval.evaluation.runner import SpanOutput
from editeval.evaluation.specs import GENERATION, METRICS, TEACHER_FORCED, MetricName

PIQA_ACCURACY = str(MetricName("other_task", "piqa_accuracy"))
PIQA_AGREEMENT = str(MetricName("other_task", "piqa_agreement"))


def request_row(
    request: Mapping,
    scored: Sequence[tuple[EvalSequence, SpanOutput, list[int] | None]],
    tokenizer,
    *,
    locality_kinds: Sequence[str],
    portability_kinds: Sequence[str],
    counterfact: bool,
) -> dict:
    """The metrics of one request from ``(sequence, output, base predictions)`` of each of its
    sequences (base predictions: the unedited model's argmax over a locality span, else None).
    Metrics that do not apply to the request are left out."""
    row: dict = {"case_id": request["case_id"]}
    acc: dict[MetricName, list[float]] = {}
    nll_new: dict[int, float] = {}
    nll_true: dict[int, float] = {}
    neigh: dict[int, list[float | None]] = {}
    for q, o, pre in scored:
        labels = q.ids[q.start :]
        n = len(labels)
        if q.role in (REL, GEN, PORT):
            kind = q.kind if q.role == PORT else None
            acc.setdefault(MetricName(q.role, TEACHER_FORCED, kind), []).append(M.token_accuracy(o.pred, labels))
            if q.gen:
                text = tokenizer.decode(o.generated, skip_special_tokens=True)
                acc.setdefault(MetricName(q.role, GENERATION, kind), []).append(
                    M.generation_exact_match(text, _answer(request, q))
                )
            if q.role in (REL, GEN):
                nll_new[-1 if q.role == REL else q.slot] = -o.logprob / n
        elif q.role == LOC:
            acc.setdefault(MetricName(LOC, TEACHER_FORCED, q.kind), []).append(M.locality_agreement(pre, o.pred))
        elif q.role == CF_TRUE:
            nll_true[q.slot] = -o.logprob / n
        elif q.role in (NEIGH_NEW, NEIGH_TRUE):
            neigh.setdefault(q.slot, [None, None])[0 if q.role == NEIGH_NEW else 1] = -o.logprob / n
    for name, vals in acc.items():
        row[str(name)] = M.mean(vals)
    for family, kinds in ((LOC, locality_kinds), (PORT, portability_kinds)):
        for proto in METRICS[family].protocols:  # the family figure: mean over its kinds
            per_kind = [str(MetricName(family, proto, k)) for k in kinds]
            vals = [row[name] for name in per_kind if name in row]
            if vals:
                row[str(MetricName(family, proto))] = M.mean(vals)
    if counterfact and nll_true:
        row.update(_counterfact_scores(nll_new, nll_true, neigh))
    return row


def _answer(request: Mapping, q: EvalSequence) -> str:
    if q.role == PORT:
        return request["portability"][q.slot]["answer"]
    return request["target_new"]


def _counterfact_scores(
    nll_new: Mapping[int, float], nll_true: Mapping[int, float], neigh: Mapping[int, list[float | None]]
) -> dict[str, float]:
    """ROME's efficacy (slot -1: the prompt), paraphrase (slots >= 0) and neighbourhood scores and
    magnitudes, from mean per-token NLLs of the new and the true object."""
    out = {}
    out[str(MetricName("efficacy", "score"))], out[str(MetricName("efficacy", "magnitude"))] = M.rewrite_success(
        nll_new[-1], nll_true[-1]
    )
    para = [M.rewrite_success(nll_new[j], nll_true[j]) for j in nll_true if j >= 0]
    if para:
        out[str(MetricName("paraphrase", "score"))] = M.mean([p[0] for p in para])
        out[str(MetricName("paraphrase", "magnitude"))] = M.mean([p[1] for p in para])
    nb = [M.neighborhood_success(a, b) for a, b in neigh.values()]
    if nb:
        out[str(MetricName("neighborhood", "score"))] = M.mean([p[0] for p in nb])
        out[str(MetricName("neighborhood", "magnitude"))] = M.mean([p[1] for p in nb])
    return out


def piqa_choices(seqs: Sequence[EvalSequence], piqa_seqs: Sequence[int], outs: Mapping[int, SpanOutput]) -> list[int]:
    """The solution the model picks for each PIQA item (its two sequences are consecutive)."""
    choices = []
    for k in range(len(piqa_seqs) // 2):
        a, b = piqa_seqs[2 * k], piqa_seqs[2 * k + 1]
        sa, sb = seqs[a], seqs[b]
        choices.append(
            M.piqa_choice([outs[a].logprob, outs[b].logprob], [len(sa.ids) - sa.start, len(sb.ids) - sb.start])
        )
    return choices


def piqa_item_scores(
    choices: Sequence[int], items: Sequence[Mapping], base_choices: Sequence[int]
) -> dict[str, list[float]]:
    """Per PIQA item: whether the model chose right, and whether it chose as the base model did."""
    return {
        PIQA_ACCURACY: [float(c == int(p["label"])) for c, p in zip(choices, items)],
        PIQA_AGREEMENT: [float(c == b) for c, b in zip(choices, base_choices)],
    }
