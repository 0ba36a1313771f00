"""Locality suites (Yao et al. 2023): what an edit must NOT change."""

from __future__ import annotations

from datasets import ClassLabel, Features, Value
from editeval.data.common import (
    CF_FULL_REQUIRED,
    CF_LOCALITY_REQUIRED,
    CF_ONE_HOP_REQUIRED,
    COUNTERFACT_PROTOCOL,
    Benchmark,
    BuildContext,
    ConfigSpec,
    SplitSpec,
    cf_full_request,
)
from editeval.data.schema import EDIT_REQUEST_FEATURES
from editeval.errors import EditevalError

OTHER_ATTRIBUTION = "locality/counterfact_other_attribution.json"
DISTRACTING = "locality/counterfact_distracting_neighbor.json"
PIQA = "locality/commonsense_task/piqa_valid.jsonl"
PIQA_LABELS = "locality/commonsense_task/piqa_valid-labels.lst"

PIQA_FEATURES = Features(
    {
        "case_id": Value("int64"),
        "goal": Value("string"),
        "sol1": Value("string"),
        "sol2": Value("string"),
        "label": ClassLabel(names=["sol1", "sol2"]),
    }
)


def cf_rows(ctx: BuildContext, path: str, kind: str) -> list[dict]:
    records = ctx.records(path, {**CF_FULL_REQUIRED, **CF_LOCALITY_REQUIRED, **CF_ONE_HOP_REQUIRED})
    rows = [
        cf_full_request(r, i, path, locality=(kind,), portability=("one_hop",))
        for i, r in enumerate(ctx.iter(records, f"locality/{kind}"))
    ]
    return sorted(rows, key=lambda row: row["case_id"])


def piqa_rows(ctx: BuildContext) -> list[dict]:
    records = ctx.records(PIQA, {"goal": str, "sol1": str, "sol2": str})
    labels = ctx.records(PIQA_LABELS)
    rows = []
    for i, (r, label) in enumerate(ctx.iter(zip(records, labels), "locality/other_task", total=len(records))):
        if label.strip() not in ("0", "1"):
            raise EditevalError(f"{PIQA_LABELS} line {i + 1}: label must be 0 or 1, got {label!r}")
        rows.append({"case_id": i, "goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(label)})
    return rows


def build(ctx: BuildContext) -> dict:
    return {
        "other_attribution": {"counterfact": cf_rows(ctx, OTHER_ATTRIBUTION, "other_attribution")},
        "distracting_neighbor": {"counterfact": cf_rows(ctx, DISTRACTING, "distracting_neighbor")},
        "other_task": {"piqa": piqa_rows(ctx)},
    }


CARD = """\
Locality asks what an edit must *not* change. Besides the usual neighbourhood prompts, Yao et al.
(2023) test three harder kinds of side effect; this folder holds them, normalised for editeval.

{{ counts_table }}

## Configs

- **other_attribution** (804 CounterFact edits) — another relation of the *same* subject must keep
  its answer ("What is Spike Hughes an instance of?" → human, after editing where Spike Hughes is
  from). `locality` holds one `other_attribution` item (`unrelated_relation`: question, object).
- **distracting_neighbor** (the same 804 edits) — a neighbourhood prompt with the edited fact
  prepended ("Spike Hughes originates from Philadelphia. Max Mosley originates from") must still
  be answered with the neighbour's true object. `locality` holds the 10 `distracting_neighbor`
  items; the answer is the true object shared by the neighbours (`target_true`), as in ROME's
  neighbourhood protocol.
- **other_task** (PIQA validation, 1,838) — general ability on another task: physical commonsense
  multiple choice (`goal`, `sol1`, `sol2`, `label` = index of the right solution). The edited
  model's PIQA accuracy is compared with the unedited model's. Its own features, not edit requests.

The two CounterFact raw files are byte-identical (the same records carry both kinds); the configs
differ only in which locality kind they attach. Their splits are named `counterfact`, PIQA's `piqa`.

## Fields

other_attribution / distracting_neighbor use the edit-request schema, from the ROME records:
`case_id` (CounterFact id), `subject`, `prompt` (template filled with the subject), `target_new`,
`ground_truth` (true object), `rephrase_prompts` (2 paraphrases), `locality` (the config's kind
only), `portability` (the record's `one_hop` question), `relation_id`, `prompt_template`,
`neighborhood_prompts`, `attribute_prompts`, `generation_prompts`.

other_task: `case_id` (line index), `goal`, `sol1`, `sol2`, `label` (ClassLabel: sol1 / sol2).

## How the metrics use the fields

- **Locality** (edit-request configs): for each `locality` item, the edited and unedited model's
  argmax tokens over the span of `" " + answer` after the prompt; score = fraction that agree
  (the answer fixes the span; correctness is not checked). Reported per kind.
- **Other task**: for each PIQA item, the solution with the higher (length-normalised)
  log-likelihood after `goal` is the prediction; accuracy against `label`, before vs. after the edit.
- Reliability / generalization / portability are available from the same records.

{{ notes }}
## Source and licence

EasyEdit (zjunlp/EasyEdit, mirrored by leonz-z/EasyEdit @ 5d49c47, `dataset/edit_data/locality/`;
MIT), sha256-checked against `SOURCES.md` at build time. CounterFact: released with ROME (MIT).
PIQA (Bisk et al. 2020): the validation set as EasyEdit ships it; its licence is not stated in
the source repository — check the upstream PIQA release before redistributing.

## Citation

```bibtex
@inproceedings{yao2023editing,
  title={Editing Large Language Models: Problems, Methods, and Opportunities},
  author={Yao, Yunzhi and Wang, Peng and Tian, Bozhong and Cheng, Siyuan and Li, Zhoubo and Deng, Shumin and Chen, Huajun and Zhang, Ningyu},
  booktitle={Proceedings of EMNLP 2023},
  year={2023}
}
@inproceedings{hoelscher2023detecting,
  title={Detecting Edit Failures In Large Language Models: An Improved Specificity Benchmark},
  author={Hoelscher-Obermaier, Jason and Persson, Julia and Kran, Esben and Konstas, Ioannis and Barez, Fazl},
  booktitle={Findings of ACL 2023},
  year={2023}
}
@inproceedings{bisk2020piqa,
  title={{PIQA}: Reasoning about Physical Commonsense in Natural Language},
  author={Bisk, Yonatan and Zellers, Rowan and Le Bras, Ronan and Gao, Jianfeng and Choi, Yejin},
  booktitle={Proceedings of AAAI 2020},
  year={2020}
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
    name="locality",
    pretty_name="Locality suites for knowledge editing",
    license="other",
    configs=(
        ConfigSpec(
            "other_attribution",
            (SplitSpec("counterfact", 804, OTHER_ATTRIBUTION, (COUNTERFACT_PROTOCOL,)),),
            EDIT_REQUEST_FEATURES,
            "another relation of the same subject",
        ),
        ConfigSpec(
            "distracting_neighbor",
            (SplitSpec("counterfact", 804, DISTRACTING, (COUNTERFACT_PROTOCOL,)),),
            EDIT_REQUEST_FEATURES,
            "neighbourhood prompt after the edited fact",
        ),
        ConfigSpec(
            "other_task",
            (SplitSpec("piqa", 1838, f"{PIQA} + {PIQA_LABELS}"),),
            PIQA_FEATURES,
            "PIQA accuracy (physical commonsense)",
        ),
    ),
    raw_files=(OTHER_ATTRIBUTION, DISTRACTING, PIQA, PIQA_LABELS),
    build=build,
    card=CARD,
    tags=("locality", "counterfact", "piqa"),
)
