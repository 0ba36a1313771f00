"""CounterFact: counterfactual fact edits (ROME), EasyEdit's simplified splits and the
full-schema cases we have (the union of the portability and locality files)."""

from __future__ import annotations

from editeval.data.common import (
    CF_FULL_REQUIRED,
    COUNTERFACT_PROTOCOL,
    Benchmark,
    BuildContext,
    ConfigSpec,
    SplitSpec,
    cf_full_request,
    pa,
)
from editeval.data.schema import EDIT_REQUEST_FEATURES, empty_request
from editeval.errors import EditevalError

SIMPLE = {s: f"counterfact/counterfact-{s}.json" for s in ("edit", "train", "val")}
ONE_HOP = "portability/counterfact_portability_gpt4.json"
SUBJECT_REPLACE = "portability/counterfact_subject_replace.json"
LOCALITY = "locality/counterfact_other_attribution.json"  # byte-identical to the distracting-neighbor file
CF = (COUNTERFACT_PROTOCOL,)  # every split is scored with ROME's probability scores too

SIMPLE_REQUIRED = {
    "case_id": int,
    "prompt": str,
    "subject": str,
    "target_new": str,
    "ground_truth": str,
    "rephrase_prompt": str,
    "locality_prompt": str,
    "locality_ground_truth": str,
}


def simple_rows(ctx: BuildContext, split: str) -> list[dict]:
    path = SIMPLE[split]
    records = ctx.records(path, SIMPLE_REQUIRED)
    rows = []
    for r in ctx.iter(records, f"counterfact/{split}"):
        prompt, subject = r["prompt"], r["subject"]
        rows.append(
            empty_request(
                case_id=r["case_id"],
                subject=subject,
                prompt=prompt,
                target_new=r["target_new"],
                ground_truth=r["ground_truth"],
                rephrase_prompts=[r["rephrase_prompt"]],
                locality=[pa("neighborhood", r["locality_prompt"], r["locality_ground_truth"])],
                prompt_template=prompt.replace(subject, "{}", 1) if subject and subject in prompt else "",
            )
        )
    return sorted(rows, key=lambda row: row["case_id"])


def full_rows(ctx: BuildContext) -> list[dict]:
    """The 1,129 distinct full-schema cases; each with every locality / portability item we have for it."""
    by_case: dict[int, dict] = {}
    sources = [
        (ONE_HOP, {"portability.New Question": str, "portability.New Answer": str}),
        (SUBJECT_REPLACE, {"alternative_subject": str}),
        (
            LOCALITY,
            {
                "unrelated_relation.question": str,
                "unrelated_relation.object": str,
                "distracting_neighborhood_prompts": list,
            },
        ),
    ]
    for path, extra in sources:
        for i, r in enumerate(ctx.records(path, {**CF_FULL_REQUIRED, **extra})):
            merged = by_case.setdefault(r["case_id"], {})
            for key, value in r.items():
                if key in merged and merged[key] != value:
                    raise EditevalError(
                        f"{path} record {i}: case {r['case_id']} key '{key}' differs from the same case in another file"
                    )
                merged[key] = value
    rows = []
    for case_id in ctx.iter(sorted(by_case), "counterfact/full"):
        rows.append(
            cf_full_request(
                by_case[case_id],
                case_id,
                "counterfact full-schema case",
                locality=("neighborhood", "other_attribution", "distracting_neighbor"),
                portability=("one_hop", "subject_replace"),
            )
        )
    return rows


def build(ctx: BuildContext) -> dict:
    simple = {split: simple_rows(ctx, split) for split in SIMPLE}
    ids = [set(row["case_id"] for row in rows) for rows in simple.values()]
    if sum(map(len, ids)) != len(set().union(*ids)):
        raise EditevalError("counterfact: the edit / train / val files share case_ids; they must partition CounterFact")
    return {"default": simple, "full": {"edit": full_rows(ctx)}}


CARD = """\
CounterFact (Meng et al. 2022, ROME) asks a model to accept a *counterfactual* fact: "The mother
tongue of Danielle Darrieux is" French → **English**. Counterfactual targets are unlikely under
the unedited model, so a successful edit is clearly visible, and neighbouring subjects that share
the true object (other native French speakers) show whether the edit leaked.

{{ counts_table }}

## Configs

- **default** (`edit` / `train` / `val`, 10,000 / 10,000 / 1,919): EasyEdit's simplified
  CounterFact splits. Together they partition all 21,919 CounterFact cases (checked at build
  time). Each record has one rephrase and one neighbourhood locality prompt; no
  paraphrase / neighbourhood / attribute / generation lists. `train` is for methods that train
  (MEND, SERAC) or retrieve demonstrations (IKE); `edit` is what edits are scored on.
- **full** (`edit`, 1,129): every distinct case we hold in the original ROME schema — the union of
  the One-hop portability file (1,031), its 804-case subset in the locality files and the 213
  Subject-Replace cases (98 of them outside the 1,031). These carry the lists the ROME/MEMIT
  protocol needs. The complete 21,919-case `counterfact.json` is not included (not obtainable).

## Fields (edit-request schema)

| field | default | full |
|---|---|---|
| `case_id` | CounterFact case id | CounterFact case id |
| `subject` | subject | `requested_rewrite.subject` |
| `prompt` | edit prompt | `requested_rewrite.prompt` filled with the subject |
| `target_new` / `ground_truth` | new / true object | `target_new.str` / `target_true.str` |
| `rephrase_prompts` | one rephrase | the two `paraphrase_prompts` |
| `locality` | one `neighborhood` item (`locality_prompt`, `locality_ground_truth`) | 10 `neighborhood` items (answer = true object); for 804 cases also one `other_attribution` item (`unrelated_relation`: question, object) and 10 `distracting_neighbor` items (answer = true object) |
| `portability` | none | `one_hop` (`New Question`, `New Answer`) for 1,031 cases; `subject_replace` (the prompt with `alternative_subject`, answer = new object) for 213 |
| `relation_id` | empty | Wikidata relation, e.g. P103 |
| `prompt_template` | the prompt with the subject replaced by `{}` | `requested_rewrite.prompt` |
| `neighborhood_prompts` / `attribute_prompts` / `generation_prompts` | empty | the ROME lists (10 each) |

## How the metrics use the fields

- **Reliability / generalization**: teacher-forced token accuracy of `target_new` after `prompt`
  / each `rephrase_prompts` entry.
- **Locality**: per `locality` item, agreement of the edited and unedited model's argmax over the
  answer span; reported per `kind` (the answer fixes the span only).
- **Portability**: teacher-forced token accuracy of each `portability` answer, per `kind`.
- **ROME/MEMIT protocol** (full config): efficacy score P(`target_new`) > P(`ground_truth`) on
  `prompt`; paraphrase score on `rephrase_prompts`; neighbourhood score P(`ground_truth`) >
  P(`target_new`) on `neighborhood_prompts`; magnitudes from the same probabilities; fluency
  (bi/tri-gram entropy) of generations from `generation_prompts`. `attribute_prompts` are kept for
  reference-consistency scoring, which also needs TF-IDF statistics this package does not ship.

{{ notes }}
## Source and licence

EasyEdit's files (zjunlp/EasyEdit, mirrored by leonz-z/EasyEdit @ 5d49c47; MIT), sha256-checked
against `SOURCES.md` at build time. CounterFact was released with ROME (kmeng01/rome, MIT); no
separate data licence is stated.

## Citation

```bibtex
@inproceedings{meng2022locating,
  title={Locating and Editing Factual Associations in {GPT}},
  author={Meng, Kevin and Bau, David and Andonian, Alex and Belinkov, Yonatan},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2022}
}
@inproceedings{yao2023editing,
  title={Editing Large Language Models: Problems, Methods, and Opportunities},
  author={Yao, Yunzhi and Wang, Peng and Tian, Bozhong and Cheng, Siyuan and Li, Zhoubo and Deng, Shumin and Chen, Huajun and Zhang, Ningyu},
  booktitle={Proceedings of EMNLP 2023},
  year={2023}
}
```
"""

BENCHMARK = Benchmark(
    name="counterfact",
    pretty_name="CounterFact (knowledge editing)",
    license="mit",
    configs=(
        ConfigSpec(
            "default",
            (
                SplitSpec("edit", 10000, SIMPLE["edit"], CF),
                SplitSpec("train", 10000, SIMPLE["train"], CF),
                SplitSpec("val", 1919, SIMPLE["val"], CF),
            ),
            EDIT_REQUEST_FEATURES,
            "simplified schema (EasyEdit splits)",
            default=True,
            train_split="train",
        ),
        ConfigSpec(
            "full",
            (SplitSpec("edit", 1129, f"{ONE_HOP} ∪ {SUBJECT_REPLACE} ∪ {LOCALITY}", CF),),
            EDIT_REQUEST_FEATURES,
            "full ROME schema, distinct cases",
        ),
    ),
    raw_files=(*SIMPLE.values(), ONE_HOP, SUBJECT_REPLACE, LOCALITY),
    build=build,
    card=CARD,
    tags=("counterfact", "rome"),
)
