"""ZsRE: question-style fact edits (MEND/ROME/EasyEdit) and the KnowEdit ZsRE test set."""

from __future__ import annotations

from editeval.data.common import (
    KNOWEDIT_LOCALITY_KINDS,
    KNOWEDIT_PORTABILITY_KINDS,
    ZSRE_LOC_REQUIRED,
    ZSRE_REQUIRED,
    Benchmark,
    BuildContext,
    ConfigSpec,
    SplitSpec,
    dropped_note,
    knowedit_items,
    pa,
    zsre_request,
)
from editeval.data.schema import EDIT_REQUEST_FEATURES, empty_request

EVAL = "portability/zsre_mend_eval_portability_gpt4.json"
KNOWEDIT = "knowedit/ZsRE/ZsRE-test-all.json"
TRAIN = "zsre/zsre_mend_train-1k.json"

KNOWEDIT_REQUIRED = {
    "subject": str,
    "prompt": str,
    "target_new": str,
    "ground_truth": list,
    "rephrase_prompt": str,
    "locality": dict,
    "portability": dict,
}


def build_edit(ctx: BuildContext) -> list[dict]:
    records = ctx.records(
        EVAL, {**ZSRE_REQUIRED, **ZSRE_LOC_REQUIRED, "portability.New Question": str, "portability.New Answer": str}
    )
    rows = []
    for i, r in enumerate(ctx.iter(records, "zsre/edit")):
        row = zsre_request(r, i, EVAL)
        row["portability"] = [pa("one_hop", r["portability"]["New Question"], r["portability"]["New Answer"])]
        rows.append(row)
    return rows


def knowedit_zsre_rows(ctx: BuildContext, desc: str) -> list[dict]:
    """KnowEdit ZsRE test records (shared with the knowedit benchmark's `zsre` config)."""
    records = ctx.records(KNOWEDIT, KNOWEDIT_REQUIRED)
    rows, dropped = [], {}
    for i, r in enumerate(ctx.iter(records, desc)):
        truth = r["ground_truth"]
        rows.append(
            empty_request(
                case_id=i,
                subject=r["subject"],
                prompt=r["prompt"],
                target_new=r["target_new"],
                ground_truth=truth[0] if truth and isinstance(truth[0], str) else "",
                rephrase_prompts=[r["rephrase_prompt"]],
                locality=knowedit_items(r, "locality", KNOWEDIT_LOCALITY_KINDS, KNOWEDIT, i, dropped),
                portability=knowedit_items(r, "portability", KNOWEDIT_PORTABILITY_KINDS, KNOWEDIT, i, dropped),
            )
        )
    ctx.notes += dropped_note(dropped, KNOWEDIT)
    return rows


def build_train(ctx: BuildContext) -> list[dict]:
    records = ctx.records(TRAIN, {**ZSRE_REQUIRED, **ZSRE_LOC_REQUIRED})
    return [zsre_request(r, i, TRAIN) for i, r in enumerate(ctx.iter(records, "zsre/train"))]


def build(ctx: BuildContext) -> dict:
    return {
        "default": {
            "edit": build_edit(ctx),
            "knowedit_test": knowedit_zsre_rows(ctx, "zsre/knowedit_test"),
            "train": build_train(ctx),
        }
    }


CARD = """\
ZsRE (zero-shot relation extraction questions) is the standard question-answering benchmark for
knowledge editing: each record asks a question about a subject ("When was the inception of IAAF
Combined Events Challenge?") and gives a new answer the edited model must give ("2006").
This folder normalises three public ZsRE files into editeval's one edit-request schema.

{{ counts_table }}

## Splits

- **edit** (1,037): the ZsRE evaluation records that carry a One-hop portability question
  (Yao et al. 2023, EasyEdit `data/portability/One Hop/zsre_mend_eval_portability_gpt4.json`).
  They are MEND/ROME `zsre_mend_eval` records (`src`, `alt`, `answers`, `rephrase`, `loc`,
  `loc_ans`) plus a GPT-4-written question one reasoning hop from the new answer. The full
  19,086-record `zsre_mend_eval.json` is not included (not obtainable here).
- **knowedit_test** (1,304): the KnowEdit ZsRE test file (`ZsRE-test-all.json`, ModelScope copy of
  KnowEdit; the KnowEdit README table says 1,230, the file holds 1,304). Locality is
  relation-specificity (other relations of the same subject), portability is reasoning, subject
  aliasing and logical generalisation. Also published as `knowedit` config `zsre`.
- **train** (1,000): a 1,000-record subset of the MEND ZsRE train split (`zsre_mend_train-1k.json`
  from Jometeorie/KnowledgeSpread; the selection rule is not documented), for methods that
  train (MEND, SERAC) or retrieve demonstrations (IKE).

## Fields (edit-request schema)

| field | here |
|---|---|
| `case_id` | index of the record in its raw file |
| `subject` | the question's subject |
| `prompt` | the question (`src` / `prompt`) |
| `target_new` | the new answer (`alt` / `target_new`) |
| `ground_truth` | the first true answer (`answers[0]` / `ground_truth[0]`) |
| `rephrase_prompts` | one paraphrased question (`rephrase` / `rephrase_prompt`) |
| `locality` | edit/train: one `nq` item (`loc` Natural Questions question, `loc_ans`); knowedit_test: `relation_specificity` items |
| `portability` | edit: one `one_hop` item (`New Question`, `New Answer`); knowedit_test: `reasoning`, `subject_replace` (KnowEdit's Subject_Aliasing), `logical_generalization`; train: none |
| `relation_id`, `prompt_template`, `neighborhood_prompts`, `attribute_prompts`, `generation_prompts` | empty (not in ZsRE) |

The mapping is the one EasyEdit's ZsRE loader uses (prompt=`src`, target_new=`alt`,
ground_truth=`answers[0]`, rephrase=`rephrase`, locality prompt=`loc` with answer `loc_ans`).
The NQ locality prompts keep their `nq question: ` prefix, as in the source files.

## How the metrics use the fields

- **Reliability**: teacher-forced token accuracy of `target_new` after `prompt + " "`.
- **Generalization**: the same on each `rephrase_prompts` entry.
- **Locality**: for each `locality` item, the argmax tokens over the span of `" " + answer` after
  `prompt`, edited vs. unedited model; the fraction that agree. The answer only fixes context and
  span; it is not checked for correctness. Scores are reported per `kind`.
- **Portability**: teacher-forced token accuracy of each `portability` answer after its prompt,
  reported per `kind` and as their mean.
- `ground_truth` is what the unedited model is expected to know (used for P(new) > P(true) style
  scores and for IKE/SERAC-style conditioning).

{{ notes }}
## Source and licence

Files byte-for-byte from public repositories (sha256-checked at build time against
`SOURCES.md`): EasyEdit (zjunlp/EasyEdit, mirrored by leonz-z/EasyEdit @ 5d49c47, MIT licence;
KnowEdit files declared MIT in the KnowEdit README) and Jometeorie/KnowledgeSpread @ 51d7402
(licence not stated). The underlying ZsRE data (Levy et al. 2017, MEND split by De Cao et al.
2021 / Mitchell et al. 2022) carries no explicit data licence; use it for research and cite the
original authors.

## Citation

```bibtex
@inproceedings{levy2017zeroshot,
  title={Zero-Shot Relation Extraction via Reading Comprehension},
  author={Levy, Omer and Seo, Minjoon and Choi, Eunsol and Zettlemoyer, Luke},
  booktitle={Proceedings of CoNLL 2017},
  year={2017}
}
@inproceedings{decao2021editing,
  title={Editing Factual Knowledge in Language Models},
  author={De Cao, Nicola and Aziz, Wilker and Titov, Ivan},
  booktitle={Proceedings of EMNLP 2021},
  year={2021}
}
@inproceedings{mitchell2022fast,
  title={Fast Model Editing at Scale},
  author={Mitchell, Eric and Lin, Charles and Bosselut, Antoine and Finn, Chelsea and Manning, Christopher D.},
  booktitle={International Conference on Learning Representations (ICLR)},
  year={2022}
}
@inproceedings{yao2023editing,
  title={Editing Large Language Models: Problems, Methods, and Opportunities},
  author={Yao, Yunzhi and Wang, Peng and Tian, Bozhong and Cheng, Siyuan and Li, Zhoubo and Deng, Shumin and Chen, Huajun and Zhang, Ningyu},
  booktitle={Proceedings of EMNLP 2023},
  year={2023}
}
@article{zhang2024comprehensive,
  title={A Comprehensive Study of Knowledge Editing for Large Language Models},
  author={Zhang, Ningyu and Yao, Yunzhi and Tian, Bozhong and others},
  journal={arXiv preprint arXiv:2401.01286},
  year={2024}
}
```
"""

BENCHMARK = Benchmark(
    name="zsre",
    pretty_name="ZsRE (knowledge editing)",
    license="other",
    configs=(
        ConfigSpec(
            "default",
            (
                SplitSpec("edit", 1037, EVAL),
                SplitSpec("knowedit_test", 1304, KNOWEDIT),
                SplitSpec("train", 1000, TRAIN),
            ),
            EDIT_REQUEST_FEATURES,
            "ZsRE edit requests",
            default=True,
            train_split="train",
        ),
    ),
    raw_files=(EVAL, KNOWEDIT, TRAIN),
    build=build,
    card=CARD,
    tags=("zsre", "question-answering"),
)
