"""QAEdit ("The Mirage of Model Editing", Yang et al., ACL 2025): real questions from Natural
Questions, TriviaQA and SimpleQA, each edited to its correct answer and asked as is. Here: the
authors' 1,000-question subset, as ordinary single-edit requests plus the record's own fields; the
full set builds from the same code when its file is put in the raw folder (`FULL_SETS`)."""

from __future__ import annotations

from datasets import Features, List, Value
from editeval.data.common import Benchmark, BuildContext, ConfigSpec, FullSet, SplitSpec, full_sets_md, pa
from editeval.data.schema import EDIT_REQUEST_FEATURES, empty_request
from editeval.errors import EditevalError

SUBSET = "qaedit/QAEdit_inter_1k.json"

FEATURES = Features(
    {
        **EDIT_REQUEST_FEATURES,
        "source": Value("string"),  # NQ | TQA | SQA
        "source_id": Value("int64"),  # the file's `id`: unique only within a source
        "locality_pairs": List({"loc": Value("string"), "loc_ans": Value("string")}),  # all of the record's
    }
)

REQUIRED = {
    "id": int,
    "source": str,
    "prompt": str,
    "target": str,
    "subject": str,
    "rephrase": str,
    "locality": list,
}


def rows(ctx: BuildContext, path: str) -> list[dict]:
    """QAEdit records as edit requests: the question edited to its answer; locality is the first
    locality pair, the only one the authors score (`edit.py`); every pair stays in `locality_pairs`."""
    records = ctx.records(path, REQUIRED)
    out = []
    for i, r in enumerate(ctx.iter(records, path)):
        pairs = r["locality"]
        if not pairs or not all(
            isinstance(p, dict) and isinstance(p.get("loc"), str) and isinstance(p.get("loc_ans"), str) for p in pairs
        ):
            raise EditevalError(
                f"{path} record {i}: key 'locality' must be a non-empty list of {{loc, loc_ans}} strings"
            )
        row = empty_request(
            case_id=i,
            subject=r["subject"],
            prompt=r["prompt"],
            target_new=r["target"],
            rephrase_prompts=[r["rephrase"]],
            locality=[pa("nq", pairs[0]["loc"], pairs[0]["loc_ans"])],
        )
        row.update(
            source=r["source"],
            source_id=r["id"],
            locality_pairs=[{"loc": p["loc"], "loc_ans": p["loc_ans"]} for p in pairs],
        )
        out.append(row)
    return out


def build(ctx: BuildContext) -> dict:
    return {"inter_1k": {"edit": rows(ctx, SUBSET)}}


FULL_SETS = (
    FullSet(
        "full",
        "edit",
        "qaedit/QAEdit.json",
        "json_list",
        "5f95260c4b14490eb44019f22253549ac866da1d",
        None,  # SOURCES.md states no count for the full set
        "WanliYoung/Revisit-Editing-Evaluation : `data/QAEdit.json` @ 61ccca3 (also HF `WenDingY/QAEdit`)",
        FEATURES,
        "QAEdit, all questions",
        rows,
    ),
)

CARD = """\
QAEdit is the benchmark of "The Mirage of Model Editing: Revisiting Evaluation in the Wild" (Yang
et al., ACL 2025). Its questions come from real question-answering sets — Natural Questions (NQ),
TriviaQA (TQA) and SimpleQA (SQA) — and the edit teaches the model each question's **correct**
answer ("who has the most 70 point games in nba history?" → "Wilt Chamberlain *"). The edited model
is then asked the question as is and must *generate* the answer (the WILD evaluation), not just
rank it under teacher forcing.

**This is a subset.** The `inter_1k` config is the 1,000-question sample the authors uploaded for
sequential editing (`data/QAEdit_inter_1k.json`; NQ 247, TQA 364, SQA 389). The full QAEdit
(`data/QAEdit.json`, and on the Hugging Face Hub as `WenDingY/QAEdit`) could not be obtained here
(see "Full set").

{{ counts_table }}

## Fields

Edit-request schema (so `editeval edit --benchmark qaedit` runs it as ordinary single edits), plus
the record's own fields:

| field | meaning |
|---|---|
| `case_id` | index of the record in the file (the file's `id` repeats across sources) |
| `subject` | the question's subject (`subject`) |
| `prompt` | the question (`prompt`) |
| `target_new` | its answer (`target`), verbatim: one keeps a trailing ` *` from its source (`"Wilt Chamberlain *"`) |
| `ground_truth` | empty: QAEdit gives no pre-edit answer |
| `rephrase_prompts` | one paraphrased question (`rephrase`) |
| `locality` | one `nq` item: the record's **first** locality question and answer (`locality[0]`: `loc`, `loc_ans`) — the only one the authors score |
| `portability` and the other schema lists | empty |
| `source` | `NQ`, `TQA` or `SQA` |
| `source_id` | the file's `id` (unique only within a source; (`source`, `source_id`) is unique) |
| `locality_pairs` | all 5 locality pairs of the record, as in the file (`loc`, `loc_ans`) |

## How the metrics use the fields

The authors' protocol (`edit.py`, `easyeditor/evaluate/evaluate_utils.py::test_prediction_acc_real`,
the "WILD" evaluation):

- **Edit**: `prompt` → `target_new`, subject `subject`.
- **Reliability** on `prompt`, **generalization** on `rephrase_prompts`: the question is the input
  as is (optionally inside the QA instruction `"Please answer the question:\\n\\nQ: {question}\\nA:"`
  or a chat template), greedy generation of at most 50 new tokens that stops at `.`, `\\n` or EOS;
  correct when a GPT-4o-mini judge says so against `target_new`, or, without one, on exact match
  after SQuAD normalisation (lower case, no punctuation or articles, collapsed whitespace).
- **Locality** on the `locality` item: 1 if the edited model's greedy output tokens for its prompt
  equal the unedited model's. Its answer (`loc_ans`) is not used for scoring.
- Results are reported for single, batch and sequential editing (the 1,000 edits of this subset
  one after another).

## Full set

With a network, download the full QAEdit file, put it in your raw folder at the path below and
build again (`editeval datasets build qaedit --raw-dir DIR`): the builder checks it by its git blob
id at the origin (what `git hash-object FILE` prints) and adds it as config `full` (split `edit`,
the same features). SOURCES.md gives no record count for it; the blob id fixes the content.

{{ full_sets }}

{{ notes }}
## Source and licence

`qaedit/QAEdit_inter_1k.json` from WanliYoung/Revisit-Editing-Evaluation (`data/QAEdit_inter_1k.json`
@ 61ccca3, blob `e5e743b4c1e391f8da75e92d312687063d8d2990`), sha256-checked against `SOURCES.md` at
build time. Repository licence: Apache-2.0. The questions keep their sources' terms (as usually
stated: Natural Questions CC BY-SA 3.0, TriviaQA Apache-2.0, SimpleQA MIT).

## Citation

```bibtex
@inproceedings{yang2025mirage,
  title={The Mirage of Model Editing: Revisiting Evaluation in the Wild},
  author={Yang, Wanli and Sun, Fei and Tan, Jiajun and Ma, Xinyu and Cao, Qi and Yin, Dawei and Shen, Huawei and Cheng, Xueqi},
  booktitle={Proceedings of ACL 2025},
  year={2025}
}
```
""".replace("{{ full_sets }}", full_sets_md(FULL_SETS))

BENCHMARK = Benchmark(
    name="qaedit",
    pretty_name="QAEdit (knowledge editing in the wild)",
    license="apache-2.0",
    configs=(
        ConfigSpec(
            "inter_1k",
            (SplitSpec("edit", 1000, SUBSET),),
            FEATURES,
            "the authors' 1,000-question subset",
            default=True,
        ),
    ),
    raw_files=(SUBSET,),
    build=build,
    card=CARD,
    tags=("qaedit", "question-answering", "wild"),
    full_sets=FULL_SETS,
)
