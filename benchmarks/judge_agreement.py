"""How often a local judge agrees with WILD's exact match (and with `wild_contains`), on real answers.

    python benchmarks/judge_agreement.py                       # SmolLM2-135M judging FT-M's answers
    python benchmarks/judge_agreement.py --edits 200 --judge smollm2-135m --method ft-m

For each of the first N zsre/edit requests: the method's edit is applied to SmolLM2-135M, the edited
model answers the edit question under the WILD protocol, the edit is undone. Each (question, new
answer, answer) is then graded by the judge (`editeval.evaluation.judge`) and by exact match; the
script prints the agreement, Cohen's kappa and the confusion counts. Figures, not a timed test.
"""

from __future__ import annotations

import argparse

import torch

from editeval.data import load_requests
from editeval.evaluation import metrics as M
from editeval.evaluation.judge import Judge
from editeval.evaluation.requests import REL
from editeval.evaluation.runner import LMRunner
from editeval.evaluation.wild import WildGenerator, WildPrompt
from editeval.methods.base import get_method, restore
from editeval.runtime.models import load


def kappa(a: list[float], b: list[float]) -> float:
    n = len(a)
    agree = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    chance = pa * pb + (1 - pa) * (1 - pb)
    return float("nan") if chance == 1 else (agree - chance) / (1 - chance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=200)
    parser.add_argument("--method", default="ft-m")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--judge", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load(args.model, device="cpu")
    method = get_method(args.method)
    hparams = method.load_hparams(lm.model, args.model)
    tok = lm.tokenizer
    generator = WildGenerator(LMRunner(pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, batch_size=8), tok)
    items = []
    for i, r in enumerate(load_requests("zsre", "edit", None, args.edits)):
        torch.manual_seed(i)
        backup = method.edit(lm.model, tok, [r], hparams)
        lm.model.eval()
        (answer,) = generator.answers(lm.model, [WildPrompt(i, REL, "", r["prompt"], r["target_new"], False)])
        restore(lm.model, backup)
        items.append((r["prompt"], r["target_new"], answer))
    judge = Judge(lm) if args.judge == args.model else Judge.load(args.judge)
    verdicts = judge.verdicts(items)
    em = [M.wild_exact_match(a, t) for _, t, a in items]
    contains = [M.wild_contains(a, t) for _, t, a in items]
    print(f"{len(items)} answers of {args.model} edited by {args.method} (zsre/edit), judged by {args.judge}")
    print(
        f"wild (exact match) {M.mean(em):.3f}, wild_contains {M.mean(contains):.3f}, judge says correct {M.mean(verdicts):.3f}"
    )
    for name, ref in (("exact match", em), ("contains", contains)):
        agree = M.mean([float(v == x) for v, x in zip(verdicts, ref)])
        both = sum(v == 1 and x == 1 for v, x in zip(verdicts, ref))
        judge_only = sum(v == 1 and x == 0 for v, x in zip(verdicts, ref))
        ref_only = sum(v == 0 and x == 1 for v, x in zip(verdicts, ref))
        neither = len(ref) - both - judge_only - ref_only
        print(
            f"judge vs {name}: agreement {agree:.3f}, kappa {kappa(verdicts, ref):.3f} "
            f"(both correct {both}, judge only {judge_only}, {name} only {ref_only}, neither {neither})"
        )


if __name__ == "__main__":
    main()
