"""Portability suites (Yao et al. 2023): does an edit carry over to questions that depend on it?"""

from __future__ import annotations

from editeval.data.common import (
    CF_FULL_REQUIRED,
    COUNTERFACT_PROTOCOL,
    ZSRE_LOC_REQUIRED,
    ZSRE_REQUIRED,
    Benchmark,
    BuildContext,
    ConfigSpec,
    SplitSpec,
    cf_full_request,
    pa,
    zsre_request,
)
from editeval.data.schema import EDIT_REQUEST_FEATURES

ZSRE_SUBJECT_REPLACE = "portability/zsre_subject_replace.json"
CF_SUBJECT_REPLACE = "portability/counterfact_subject_replace.json"
ZSRE_INVERSE = "portability/zsre_inverse_relation.json"
ZSRE_ONE_HOP = "portability/zsre_mend_eval_portability_gpt4.json"
CF_ONE_HOP = "portability/counterfact_portability_gpt4.json"


def zsre_rows(ctx: BuildContext, path: str, kind: str, extra: dict, desc: str) -> list[dict]:
    records = ctx.records(path, {**ZSRE_REQUIRED, **extra})
    rows = []
    for i, r in enumerate(ctx.iter(records, desc)):
        row = zsre_request(r, i, path, locality="loc" in r)
        if kind == "subject_replace":  # the edited question about an alias; the answer is the new object
            row["portability"] = [pa(kind, r["alter_subject_question"], r["alt"])]
        elif kind == "inverse_relation":  # the inverse question about the new object; the answer is the subject
            row["portability"] = [pa(kind, r["inverse question"], r["subject"])]
        else:
            row["portability"] = [pa(kind, r["portability"]["New Question"], r["portability"]["New Answer"])]
        rows.append(row)
    return rows


def cf_rows(ctx: BuildContext, path: str, kind: str, extra: dict, desc: str) -> list[dict]:
    records = ctx.records(path, {**CF_FULL_REQUIRED, **extra})
    rows = [
        cf_full_request(r, i, path, locality=("neighborhood",), portability=(kind,))
        for i, r in enumerate(ctx.iter(records, desc))
    ]
    return sorted(rows, key=lambda row: row["case_id"])


def build(ctx: BuildContext) -> dict:
    one_hop = {"portability.New Question": str, "portability.New Answer": str}
    return {
        "subject_replace": {
            "zsre": zsre_rows(
                ctx,
                ZSRE_SUBJECT_REPLACE,
                "subject_replace",
                {"alter_subject_question": str, "alternative_subject": str},
                "portability/subject_replace/zsre",
            ),
            "counterfact": cf_rows(
                ctx,
                CF_SUBJECT_REPLACE,
                "subject_replace",
                {"alternative_subject": str},
                "portability/subject_replace/counterfact",
            ),
        },
        "inverse_relation": {
            "zsre": zsre_rows(
                ctx, ZSRE_INVERSE, "inverse_relation", {"inverse question": str}, "portability/inverse_relation/zsre"
            ),
        },
        "one_hop": {
            "zsre": zsre_rows(
                ctx, ZSRE_ONE_HOP, "one_hop", {**ZSRE_LOC_REQUIRED, **one_hop}, "portability/one_hop/zsre"
            ),
            "counterfact": cf_rows(ctx, CF_ONE_HOP, "one_hop", one_hop, "portability/one_hop/counterfact"),
        },
    }


CARD = """\
Portability asks whether an edit *carries over*: after teaching a model that the IAAF Combined
Events Challenge started in 2006, does it also answer questions that depend on the new fact?
These are the three portability suites of Yao et al. (2023), built on ZsRE and CounterFact,
normalised into editeval's edit-request schema. Each record is a complete edit request; its
`portability` list holds the config's kind.

{{ counts_table }}

## Configs

- **subject_replace** — the edited question asked about an alias of the subject ("What is the
  constellation of UGC 6870?" after editing NGC 3953). Answer: the new object. ZsRE: the
  `alter_subject_question`; CounterFact: the rewrite template filled with `alternative_subject`.
- **inverse_relation** (ZsRE, symmetric relations such as sibling / spouse) — the inverse
  question about the new object ("Who is Marian Clairmont's sister?"). Answer: the subject.
- **one_hop** — a GPT-4-written question one reasoning hop from the new fact ("What famous food is
  associated with the city where Spike Hughes originates from?" → Cheesesteaks), with the
  recalled relation it relies on. Answer: `New Answer`. The ZsRE split holds the same 1,037 edits
  as `zsre` split `edit`.

Splits are named after the benchmark the edits come from (`zsre`, `counterfact`).

## Fields

All configs use the edit-request schema:

| field | ZsRE splits | CounterFact splits |
|---|---|---|
| `case_id` | index in the raw file | CounterFact case id |
| `subject`, `prompt`, `target_new`, `ground_truth` | `subject`, `src`, `alt`, `answers[0]` | `requested_rewrite` (prompt filled with the subject; `target_new.str`, `target_true.str`) |
| `rephrase_prompts` | `[rephrase]` | the two `paraphrase_prompts` |
| `locality` | one `nq` item (`loc`, `loc_ans`) in `one_hop`; empty in the other configs (their files carry none) | 10 `neighborhood` items (answer = true object) |
| `portability` | one item of the config's kind | one item of the config's kind |
| `relation_id`, `prompt_template`, `*_prompts` | empty | from the ROME record |

## How the metrics use the fields

- **Portability** (the point of these configs): teacher-forced token accuracy of the
  `portability` answer after its prompt, on the edited model; reported per kind.
- **Reliability / generalization / locality** work as everywhere in editeval (token accuracy on
  `prompt` / `rephrase_prompts` + `target_new`; pre/post-edit agreement on `locality` items), so a
  portability run also reports whether the edit itself succeeded.

{{ notes }}
## Source and licence

EasyEdit (zjunlp/EasyEdit, mirrored by leonz-z/EasyEdit @ 5d49c47, `dataset/edit_data/portability/`;
MIT), sha256-checked against `SOURCES.md` at build time. Underlying data: ZsRE (no explicit data
licence) and CounterFact (released with ROME, MIT).

## Citation

```bibtex
@inproceedings{yao2023editing,
  title={Editing Large Language Models: Problems, Methods, and Opportunities},
  author={Yao, Yunzhi and Wang, Peng and Tian, Bozhong and Cheng, Siyuan and Li, Zhoubo and Deng, Shumin and Chen, Huajun and Zhang, Ningyu},
  booktitle={Proceedings of EMNLP 2023},
  year={2023}
}
@inproceedings{meng2022locating,
  title={Locating and Editing Factual Associations in {GPT}},
  author={Meng, Kevin and Bau, David and Andonian, Alex and Belinkov, Yonatan},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2022}
}
```
"""

BENCHMARK = Benchmark(
    name="portability",
    pretty_name="Portability suites for knowledge editing",
    license="mit",
    configs=(
        ConfigSpec(
            "subject_replace",
            (
                SplitSpec("zsre", 293, ZSRE_SUBJECT_REPLACE),
                SplitSpec("counterfact", 213, CF_SUBJECT_REPLACE, (COUNTERFACT_PROTOCOL,)),
            ),
            EDIT_REQUEST_FEATURES,
            "question about an alias of the subject",
        ),
        ConfigSpec(
            "inverse_relation",
            (SplitSpec("zsre", 385, ZSRE_INVERSE),),
            EDIT_REQUEST_FEATURES,
            "inverse question, answered by the subject",
        ),
        ConfigSpec(
            "one_hop",
            (
                SplitSpec("zsre", 1037, ZSRE_ONE_HOP),
                SplitSpec("counterfact", 1031, CF_ONE_HOP, (COUNTERFACT_PROTOCOL,)),
            ),
            EDIT_REQUEST_FEATURES,
            "question one reasoning hop from the new fact",
        ),
    ),
    raw_files=(ZSRE_SUBJECT_REPLACE, CF_SUBJECT_REPLACE, ZSRE_INVERSE, ZSRE_ONE_HOP, CF_ONE_HOP),
    build=build,
    card=CARD,
    tags=("portability", "zsre", "counterfact"),
)
