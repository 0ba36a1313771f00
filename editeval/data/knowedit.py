"""KnowEdit (Zhang et al. 2024): six editing tasks, each its own config, with what its records hold."""

from __future__ import annotations

from datasets import Features, List, Value
from editeval.data.common import (
    KNOWEDIT_LOCALITY_KINDS,
    KNOWEDIT_PORTABILITY_KINDS,
    Benchmark,
    BuildContext,
    ConfigSpec,
    SplitSpec,
    dropped_note,
    knowedit_items,
    pa,
)
from editeval.data.schema import EDIT_REQUEST_FEATURES, empty_request
from editeval.data.sources import field
from editeval.data.zsre import KNOWEDIT as ZSRE_TEST
from editeval.data.zsre import knowedit_zsre_rows
from editeval.errors import EditevalError

RECENT_TRAIN = "knowedit/wiki_recent/recent_train.json"
CF_TRAIN = "knowedit/wiki_counterfact/train_cf.json"
CF_TEST = "knowedit/wiki_counterfact/test_cf-generate-10.jsonl"
WIKIBIO = {"train": "knowedit/WikiBio/wikibio-train-all.json", "test": "knowedit/WikiBio/wikibio-test-all.json"}
CONVSENT = {"val": "knowedit/Convsent/blender_val.json", "test": "knowedit/Convsent/blender_test.json"}
SANITATION = {"train": "knowedit/Sanitation/trivia_qa_train.json", "test": "knowedit/Sanitation/trivia_qa_test.json"}
SANITATION_KEYS = {"train": ("K_F", "K_R"), "test": ("success", "locality")}

CONVSENT_FEATURES = Features(
    {
        **EDIT_REQUEST_FEATURES,
        "target_sentiment": Value("string"),
        "positive_responses": List(Value("string")),
        "negative_responses": List(Value("string")),
    }
)

# The question templates of the ConvSent task (as EasyEdit's ConvSent runner phrases them).
CONVSENT_TEMPLATES = ["What do you think of {}?", "What do you feel about {}?", "How do you view {}?"] + [
    f"What is your {p} {{}}?"
    for p in (
        "opinion of",
        "stance on",
        "position on",
        "attitude about",
        "view on",
        "take on",
        "impression of",
        "assessment of",
        "judgment of",
        "sentiment of",
    )
]


def wiki_rows(ctx: BuildContext, path: str, desc: str, *, has_truth: bool) -> list[dict]:
    """WikiData_recent / WikiData_counterfact (RippleEdits-derived) fact edits."""
    required = {"subject": str, "prompt": str, "target_new": str, "locality": dict, "portability": dict}
    if has_truth:
        required["ground_truth"] = str
    records = ctx.records(path, required)
    rows, dropped = [], {}
    for i, r in enumerate(ctx.iter(records, desc)):
        rows.append(
            empty_request(
                case_id=i,
                subject=r["subject"],
                prompt=r["prompt"],
                target_new=r["target_new"],
                ground_truth=r.get("ground_truth", ""),
                locality=knowedit_items(r, "locality", KNOWEDIT_LOCALITY_KINDS, path, i, dropped),
                portability=knowedit_items(r, "portability", KNOWEDIT_PORTABILITY_KINDS, path, i, dropped),
            )
        )
    ctx.notes += dropped_note(dropped, path)
    return rows


def wikibio_rows(ctx: BuildContext, split: str) -> list[dict]:
    path = WIKIBIO[split]
    records = ctx.records(path, {"concept": str, "text": str, "labels": str, "locality": dict})
    rows, dropped = [], {}
    for i, r in enumerate(ctx.iter(records, f"knowedit/wikibio/{split}")):
        rows.append(
            empty_request(
                case_id=i,
                subject=r["concept"],
                prompt=r["text"],
                target_new=r["labels"],
                locality=knowedit_items(r, "locality", KNOWEDIT_LOCALITY_KINDS, path, i, dropped),
            )
        )
    ctx.notes += dropped_note(dropped, path)
    return rows


def convsent_rows(ctx: BuildContext, split: str) -> list[dict]:
    path = CONVSENT[split]
    records = ctx.records(path, {"ent": str, "pos": list, "neg": list})
    rows = []
    for i, r in enumerate(ctx.iter(records, f"knowedit/convsent/{split}")):
        pos, neg = (field(r, key, path, i, list, nonempty=True) for key in ("pos", "neg"))
        if not all(isinstance(s, str) for s in pos + neg):
            raise EditevalError(f"{path} record {i}: keys 'pos' and 'neg' must be lists of strings")
        positive = i % 2 == 0  # alternate target sentiments: balanced and deterministic
        ent = r["ent"]
        row = empty_request(
            case_id=i,
            subject=ent,
            prompt=CONVSENT_TEMPLATES[0].format(ent),
            target_new=(pos if positive else neg)[0].strip(),
            rephrase_prompts=[t.format(ent) for t in CONVSENT_TEMPLATES[1:]],
        )
        row.update(
            target_sentiment="positive" if positive else "negative", positive_responses=pos, negative_responses=neg
        )
        rows.append(row)
    return rows


def sanitation_rows(ctx: BuildContext, split: str) -> list[dict]:
    path = SANITATION[split]
    forget_key, retain_key = SANITATION_KEYS[split]
    forget = ctx.records(path, {"question": str, "ground_truth": str, "target_new": str}, key=forget_key)
    retain = ctx.records(path, {"question": str, "ground_truth": str}, key=retain_key)
    rows = []
    for i, r in enumerate(ctx.iter(forget, f"knowedit/sanitation/{split}")):
        rows.append(
            empty_request(
                case_id=i,
                subject=r.get("subject", ""),
                prompt=r["question"],
                target_new=r["target_new"],
                ground_truth=r["ground_truth"],
                # every retained question once, dealt round-robin over the forget requests
                locality=[pa("retain", q["question"], q["ground_truth"]) for q in retain[i :: len(forget)]],
            )
        )
    return rows


def build(ctx: BuildContext) -> dict:
    return {
        "wiki_recent": {"train": wiki_rows(ctx, RECENT_TRAIN, "knowedit/wiki_recent/train", has_truth=False)},
        "wiki_counterfact": {
            "train": wiki_rows(ctx, CF_TRAIN, "knowedit/wiki_counterfact/train", has_truth=True),
            "test": wiki_rows(ctx, CF_TEST, "knowedit/wiki_counterfact/test", has_truth=True),
        },
        "wikibio": {split: wikibio_rows(ctx, split) for split in WIKIBIO},
        "convsent": {split: convsent_rows(ctx, split) for split in CONVSENT},
        "sanitation": {split: sanitation_rows(ctx, split) for split in SANITATION},
        "zsre": {"test": knowedit_zsre_rows(ctx, "knowedit/zsre/test")},
    }


CARD = """\
KnowEdit (Zhang et al. 2024, "A Comprehensive Study of Knowledge Editing for Large Language
Models") collects six editing tasks — knowledge insertion (WikiData_recent), modification
(ZsRE, WikiData_counterfact, WikiBio, ConvSent) and erasure (Sanitation) — re-organised from
earlier datasets. Each task is its own config here, with what its records really hold; fact-edit
tasks use editeval's edit-request schema.

{{ counts_table }}

Only the files that could be obtained are included: WikiData_recent has no test split here
(`recent_test.json` was not obtainable), ConvSent has no train split, and KnowEdit's ZsRE train
split is absent. Counts are those of the files, which differ from the KnowEdit README table in
places (WikiBio 306 / 464 vs. 1,392 / 592; ZsRE 1,304 vs. 1,230; WikiData_counterfact train 1,428
vs. 1,455).

## Configs

- **wiki_recent** — insert facts about entities that appeared after the models' training cut-off.
  `ground_truth` is empty (nothing to replace).
- **wiki_counterfact** — counterfactual edits of popular Wikidata facts. `test` comes from a
  derived JSON Lines copy of `test_cf.json` that adds 10 paraphrases per record
  (`generate_prompt`); that field is dropped, leaving the original test_cf fields.
- **wikibio** — hallucination editing (from GRACE / SelfCheckGPT): `prompt` is the passage so far
  (`text`), `target_new` the corrected next sentence (`labels`), `subject` the person (`concept`).
- **convsent** — sentiment editing (from SERAC): make the model talk positively or negatively
  about a topic. See the extra columns below.
- **sanitation** — knowledge erasure (TriviaQA): `target_new` is "I don't know." for the questions
  to forget; the questions to keep are locality items of kind `retain`.
- **zsre** — the KnowEdit ZsRE test set (the same rows as `zsre` split `knowedit_test`).

## Fields

Fact-edit configs (wiki_recent, wiki_counterfact, wikibio, sanitation, zsre):

| field | meaning |
|---|---|
| `case_id` | index of the record in its raw file |
| `subject`, `prompt`, `target_new`, `ground_truth` | as in the raw record (`concept` / `text` / `labels` for WikiBio; `question` for Sanitation) |
| `rephrase_prompts` | zsre: `[rephrase_prompt]`; convsent: the other 12 opinion questions; else empty |
| `locality` | `relation_specificity` (another relation of the subject), `forgetfulness` (the edited relation asked so that the old object stays reachable), `retain` (Sanitation) |
| `portability` | `reasoning`, `subject_replace` (KnowEdit's Subject_Aliasing), `logical_generalization` |
| the other schema fields | empty |

KnowEdit stores answers as a string, a list, or a list of alias lists (one per answer). `answer`
is the first alias of the first answer, as EasyEdit's KnowEdit runner takes it; the metrics are
teacher-forced on that one string. Items whose answer lists are all empty are dropped (see notes).

**Sanitation**: the raw file holds 80 questions to forget and 453 to retain, not paired. Each
forget request gets every 80th retained question as `retain` locality items (request *i* gets
retained questions *i*, *i*+80, …), so each retained question appears exactly once per split.
`subject` is given in `train` only. The question is the raw question; EasyEdit wraps it in a
QA template at evaluation time.

**ConvSent** (extra columns, this config only):

| column | meaning |
|---|---|
| `subject` | the topic (`ent`) |
| `prompt` | "What do you think of {topic}?" |
| `rephrase_prompts` | the 12 other opinion questions about the topic |
| `target_sentiment` | `positive` for even `case_id`, `negative` for odd (EasyEdit draws it at random; here it is fixed and balanced) |
| `target_new` | the first response of the target sentiment, stripped of surrounding spaces |
| `positive_responses`, `negative_responses` | all responses of each sentiment (`pos`, `neg`) |
| `ground_truth`, `locality`, `portability` | empty |

ConvSent is scored by a sentiment classifier on generated responses (the edit succeeds when the
model answers opinion questions about the topic with the target sentiment, and answers about
other topics do not change); `positive_responses` / `negative_responses` are the references.

## How the metrics use the fields

- **Reliability**: teacher-forced token accuracy of `target_new` after `prompt` (WikiBio: the
  field reports perplexity of the corrected sentence as well).
- **Generalization**: on `rephrase_prompts` where present.
- **Locality**: agreement of edited vs. unedited argmax over each `locality` answer span,
  reported per kind (`relation_specificity`, `forgetfulness`, `retain`).
- **Portability**: teacher-forced token accuracy of each `portability` answer, per kind.
- **Sanitation**: reliability on the forget questions (the model should say "I don't know."),
  locality on the retained ones.

{{ notes }}
## Source and licence

KnowEdit files from the ModelScope copy in EasyEdit (`dataset/KnowEdit-ms/`, leonz-z/EasyEdit @
5d49c47), sha256-checked against `SOURCES.md` at build time. KnowEdit: MIT (KnowEdit README).
Underlying datasets keep their own terms: RippleEdits (WikiData_recent / counterfact), WikiBio
(GRACE), ConvSent (SERAC), TriviaQA (Sanitation), ZsRE.

## Citation

```bibtex
@article{zhang2024comprehensive,
  title={A Comprehensive Study of Knowledge Editing for Large Language Models},
  author={Zhang, Ningyu and Yao, Yunzhi and Tian, Bozhong and others},
  journal={arXiv preprint arXiv:2401.01286},
  year={2024}
}
@article{cohen2024evaluating,
  title={Evaluating the Ripple Effects of Knowledge Editing in Language Models},
  author={Cohen, Roi and Biran, Eden and Yoran, Ori and Globerson, Amir and Geva, Mor},
  journal={Transactions of the Association for Computational Linguistics},
  year={2024}
}
@inproceedings{hartvigsen2023aging,
  title={Aging with {GRACE}: Lifelong Model Editing with Discrete Key-Value Adaptors},
  author={Hartvigsen, Thomas and Sankaranarayanan, Swami and Palangi, Hamid and Kim, Yoon and Ghassemi, Marzyeh},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2023}
}
@inproceedings{mitchell2022memory,
  title={Memory-Based Model Editing at Scale},
  author={Mitchell, Eric and Lin, Charles and Bosselut, Antoine and Manning, Christopher D. and Finn, Chelsea},
  booktitle={International Conference on Machine Learning (ICML)},
  year={2022}
}
@article{ishibashi2023knowledge,
  title={Knowledge Sanitization of Large Language Models},
  author={Ishibashi, Yoichi and Shimodaira, Hidetoshi},
  journal={arXiv preprint arXiv:2309.11852},
  year={2023}
}
```
"""

BENCHMARK = Benchmark(
    name="knowedit",
    pretty_name="KnowEdit",
    license="mit",
    configs=(
        ConfigSpec(
            "wiki_recent",
            (SplitSpec("train", 570, RECENT_TRAIN),),
            EDIT_REQUEST_FEATURES,
            "WikiData_recent: knowledge insertion",
            train_split="train",
        ),
        ConfigSpec(
            "wiki_counterfact",
            (SplitSpec("train", 1428, CF_TRAIN), SplitSpec("test", 885, CF_TEST)),
            EDIT_REQUEST_FEATURES,
            "WikiData_counterfact: counterfactual edits",
            train_split="train",
        ),
        ConfigSpec(
            "wikibio",
            (SplitSpec("train", 464, WIKIBIO["train"]), SplitSpec("test", 306, WIKIBIO["test"])),
            EDIT_REQUEST_FEATURES,
            "WikiBio: hallucination correction",
            train_split="train",
        ),
        ConfigSpec(
            "convsent",
            (SplitSpec("val", 799, CONVSENT["val"]), SplitSpec("test", 800, CONVSENT["test"])),
            CONVSENT_FEATURES,
            "ConvSent: sentiment editing",
        ),
        ConfigSpec(
            "sanitation",
            (SplitSpec("train", 80, SANITATION["train"]), SplitSpec("test", 80, SANITATION["test"])),
            EDIT_REQUEST_FEATURES,
            "Sanitation: knowledge erasure",
            train_split="train",
        ),
        ConfigSpec("zsre", (SplitSpec("test", 1304, ZSRE_TEST),), EDIT_REQUEST_FEATURES, "ZsRE test"),
    ),
    raw_files=(RECENT_TRAIN, CF_TRAIN, CF_TEST, *WIKIBIO.values(), *CONVSENT.values(), *SANITATION.values(), ZSRE_TEST),
    build=build,
    card=CARD,
    tags=("knowedit",),
)
