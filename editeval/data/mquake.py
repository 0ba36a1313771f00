"""MQuAKE (Zhong et al. 2023): multi-hop questions whose answers must change as a consequence of
several edited facts. One row is one case: its edits (applied together), three multi-hop questions,
the answers before and after editing, and the single-hop chain; the official prompt files are
configs of their own. Here: the 429-case MQuAKE-hard subset (DeepEdit); the full sets build from
the same code when their files are put in the raw folder (`FULL_SETS`)."""

from __future__ import annotations

from datasets import Features, List, Value
from editeval.data.common import (
    Benchmark,
    BuildContext,
    ConfigSpec,
    FullSet,
    SplitSpec,
    full_sets_md,
)
from editeval.data.schema import empty_request
from editeval.data.sources import field
from editeval.errors import EditevalError

HARD = "mquake/MQuAKE-hard.json"
PROMPT_DIR = "mquake/prompts/"
# the ICL prompt files of the multi-hop protocols: (config row name, file, the line that starts a demo)
PROMPT_FILES = (
    ("multihop", PROMPT_DIR + "multihop-prompts.txt", "Q: "),
    ("multihop_cot", PROMPT_DIR + "multihop-cot-prompts.txt", "Question: "),
    ("mello", PROMPT_DIR + "MeLLo-prompt.txt", "Question: "),
)
REL_PROMPTS = PROMPT_DIR + "rel-prompts.json"
CLOZE_TEMPLATES = PROMPT_DIR + "templates/cloze_templates.json"
QUESTION_TEMPLATES = PROMPT_DIR + "templates/question_templates.json"

# one edit of a case, in editeval's request field names (see `case_requests`)
EDIT = {
    "subject": Value("string"),
    "prompt": Value("string"),  # the cloze template filled with the subject
    "prompt_template": Value("string"),  # MQuAKE's `prompt`, "{}" for the subject
    "target_new": Value("string"),
    "ground_truth": Value("string"),
    "relation_id": Value("string"),
    "target_new_id": Value("string"),
    "ground_truth_id": Value("string"),
    "question": Value("string"),  # the edited fact as a question
}
HOP = {
    "question": Value("string"),
    "cloze": Value("string"),
    "answer": Value("string"),
    "answer_alias": List(Value("string")),
}
TRIPLES = List(List(Value("string")))

CASE_FEATURES = Features(
    {
        "case_id": Value("int64"),
        "edits": List(EDIT),
        "questions": List(Value("string")),
        "answer": Value("string"),
        "answer_alias": List(Value("string")),
        "answer_extended": List(Value("string")),
        "new_answer": Value("string"),
        "new_answer_alias": List(Value("string")),
        "single_hops": List(HOP),
        "new_single_hops": List(HOP),
        "orig": {
            "triples": TRIPLES,
            "triples_labeled": TRIPLES,
            "new_triples": TRIPLES,
            "new_triples_labeled": TRIPLES,
            "edit_triples": TRIPLES,
            "edit_triples_idx": List(Value("int64")),
        },
    }
)
PROMPT_FEATURES = Features(
    {"name": Value("string"), "file": Value("string"), "demos": Value("int64"), "text": Value("string")}
)
RELATION_FEATURES = Features(
    {
        "relation_id": Value("string"),
        "cloze_template": Value("string"),
        "question_template": Value("string"),
        "demos": Value("string"),  # rel-prompts.json: 8 "Q: ... A: ..." lines; "" for the 7 relations it lacks
    }
)

CASE_REQUIRED = {
    "case_id": int,
    "requested_rewrite": list,
    "questions": list,
    "answer": str,
    "answer_alias": list,
    "new_answer": str,
    "new_answer_alias": list,
    "single_hops": list,
    "new_single_hops": list,
    "orig": dict,
}
REWRITE_REQUIRED = ("prompt", "subject", "relation_id", "question", "target_new.str", "target_new.id")
HOP_REQUIRED = ("question", "cloze", "answer")


def _strings(value, where: str, index: int, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EditevalError(f"{where} record {index}: key '{key}' must be a list of strings")
    return list(value)


def _edit(rw: dict, where: str, index: int) -> dict:
    for key in (*REWRITE_REQUIRED, "target_true.str", "target_true.id"):
        field(rw, key, where, index)
    template, subject = rw["prompt"], rw["subject"]
    if template.count("{}") != 1:
        raise EditevalError(
            f"{where} record {index}: requested_rewrite prompt must contain exactly one '{{}}', got {template!r}"
        )
    return {
        "subject": subject,
        "prompt": template.format(subject),
        "prompt_template": template,
        "target_new": rw["target_new"]["str"],
        "ground_truth": rw["target_true"]["str"],
        "relation_id": rw["relation_id"],
        "target_new_id": rw["target_new"]["id"],
        "ground_truth_id": rw["target_true"]["id"],
        "question": rw["question"],
    }


def _hops(hops: list, where: str, index: int, key: str) -> list[dict]:
    out = []
    for hop in hops:
        for k in HOP_REQUIRED:
            field(hop, k, where, index)
        out.append(
            {
                "question": hop["question"],
                "cloze": hop["cloze"],
                "answer": hop["answer"],
                "answer_alias": _strings(hop.get("answer_alias", []), where, index, f"{key}.answer_alias"),
            }
        )
    return out


def _triples(orig: dict, key: str, where: str, index: int) -> list[list[str]]:
    triples = orig.get(key, [])
    if not isinstance(triples, list) or not all(
        isinstance(t, list) and all(isinstance(x, str) for x in t) for t in triples
    ):
        raise EditevalError(f"{where} record {index}: key 'orig.{key}' must be a list of string triples")
    return triples


def case_rows(ctx: BuildContext, path: str) -> list[dict]:
    """MQuAKE case records (any of the official files or MQuAKE-hard) as rows, in file order."""
    records = ctx.records(path, CASE_REQUIRED)
    rows = []
    for i, r in enumerate(ctx.iter(records, path)):
        if not r["requested_rewrite"]:
            raise EditevalError(f"{path} record {i}: key 'requested_rewrite' is empty")
        orig = r["orig"]
        idx = orig.get("edit_triples_idx", [])  # MQuAKE-hard has it; the README's field list does not
        if not isinstance(idx, list) or not all(isinstance(x, int) for x in idx):
            raise EditevalError(f"{path} record {i}: key 'orig.edit_triples_idx' must be a list of integers")
        rows.append(
            {
                "case_id": r["case_id"],
                "edits": [_edit(rw, path, i) for rw in r["requested_rewrite"]],
                "questions": _strings(r["questions"], path, i, "questions"),
                "answer": r["answer"],
                "answer_alias": _strings(r["answer_alias"], path, i, "answer_alias"),
                "answer_extended": _strings(r.get("answer_extended", []), path, i, "answer_extended"),  # MQuAKE-T
                "new_answer": r["new_answer"],
                "new_answer_alias": _strings(r["new_answer_alias"], path, i, "new_answer_alias"),
                "single_hops": _hops(r["single_hops"], path, i, "single_hops"),
                "new_single_hops": _hops(r["new_single_hops"], path, i, "new_single_hops"),
                "orig": {
                    **{
                        k: _triples(orig, k, path, i)
                        for k in ("triples", "triples_labeled", "new_triples", "new_triples_labeled", "edit_triples")
                    },
                    "edit_triples_idx": idx,
                },
            }
        )
    return rows


def prompt_rows(ctx: BuildContext) -> list[dict]:
    """The multi-hop ICL prompt files, verbatim; each file's demos counted against SOURCES.md."""
    rows = []
    for name, path, starts in PROMPT_FILES:
        text = ctx.raw.load(path)
        demos = sum(line.startswith(starts) for line in text.split("\n"))
        stated = ctx.raw.spec(path).records
        if demos != stated:
            raise EditevalError(f"raw file {ctx.raw.root / path}: {demos} demos, SOURCES.md says {stated}")
        rows.append({"name": name, "file": path.removeprefix("mquake/"), "demos": demos, "text": text})
    return rows


def relation_rows(ctx: BuildContext) -> list[dict]:
    """One row per relation of the templates files, with its single-hop demos from rel-prompts.json."""
    cloze, question, demos = (ctx.raw.load(p) for p in (CLOZE_TEMPLATES, QUESTION_TEMPLATES, REL_PROMPTS))
    if list(cloze) != list(question):
        raise EditevalError(f"{CLOZE_TEMPLATES} and {QUESTION_TEMPLATES} list different relations")
    extra = sorted(set(demos) - set(cloze))
    if extra:
        raise EditevalError(f"{REL_PROMPTS}: relations without templates: {', '.join(extra)}")
    for path, table in ((CLOZE_TEMPLATES, cloze), (QUESTION_TEMPLATES, question), (REL_PROMPTS, demos)):
        bad = [k for k, v in table.items() if not isinstance(v, str)]
        if bad:
            raise EditevalError(f"{path}: the value of '{bad[0]}' must be a string")
    return [
        {
            "relation_id": rel,
            "cloze_template": cloze[rel],
            "question_template": question[rel],
            "demos": demos.get(rel, ""),
        }
        for rel in cloze
    ]


def case_requests(case: dict) -> list[dict]:
    """A case's edits as editeval edit requests (editeval.data.schema), to be applied together; each
    keeps the case's id. What is evaluated after them (the multi-hop questions) stays on the case."""
    return [
        empty_request(
            case_id=case["case_id"],
            subject=e["subject"],
            prompt=e["prompt"],
            target_new=e["target_new"],
            ground_truth=e["ground_truth"],
            relation_id=e["relation_id"],
            prompt_template=e["prompt_template"],
        )
        for e in case["edits"]
    ]


def build(ctx: BuildContext) -> dict:
    return {
        "hard": {"edit": case_rows(ctx, HARD)},
        "prompts": {"files": prompt_rows(ctx)},
        "relations": {"relations": relation_rows(ctx)},
    }


_MQUAKE_ORIGIN = "princeton-nlp/MQuAKE : `datasets/{}` @ fb43dad"
FULL_SETS = tuple(
    FullSet(
        config,
        "edit",
        f"mquake/{name}",
        "json_list",
        blob,
        count,
        _MQUAKE_ORIGIN.format(name),
        CASE_FEATURES,
        summary,
        case_rows,
    )
    for config, name, blob, count, summary in (
        (
            "cf_3k_v2",
            "MQuAKE-CF-3k-v2.json",
            "6cf0904341e9910ce702641c5a24547ce23ff1e2",
            3000,
            "MQuAKE-CF-3k v2 (the fixed 3,000 cases)",
        ),
        (
            "cf_3k",
            "MQuAKE-CF-3k.json",
            "b9d0963c6c1c81b24d8113ffdc3fd0865a423e18",
            3000,
            "MQuAKE-CF-3k (v1, the paper's)",
        ),
        (
            "cf",
            "MQuAKE-CF.json",
            "86f8c0d357f55173fc80a1d040e3eb480e2e76a7",
            9218,
            "MQuAKE-CF, all counterfactual cases",
        ),
        ("t", "MQuAKE-T.json", "afd89d0c8fe5e304f771bad88cc0ced611278fe0", 1825, "MQuAKE-T, temporal updates"),
    )
)

CARD = """\
MQuAKE (Zhong et al. 2023, "MQuAKE: Assessing Knowledge Editing in Language Models via Multi-Hop
Questions") asks whether an edit's *consequences* follow. A case edits a chain of facts (Hey Jude
was performed by The Beatles → **Madonna**; the director of Madonna → **Narendra Modi**; …) and
asks multi-hop questions whose answer changes with them ("What is the official language of the
country of citizenship of the director/manager of "Hey Jude"'s performer?" English → **Arabic**).

**This is a subset.** The `hard` config is **MQuAKE-hard** (429 cases, 4 edits each), selected from
MQuAKE-CF by the DeepEdit authors (Wang et al. 2024) as the cases with the most edited facts; it has
no overlap with MQuAKE-CF-3k. The official MQuAKE files (CF-3k, CF-3k-v2, CF, T) are not included:
they could not be obtained here (see "Full sets").

{{ counts_table }}

## Configs

- **hard** (`edit`, 429): one row per case, as described below. An evaluation unit is the whole
  case: its edits are applied together, then its questions are asked. Loading it as single edit
  requests (`editeval.data.load_requests`) is refused on purpose; `editeval.data.mquake.case_requests`
  turns a row into the case's edit requests.
- **prompts** (`files`, 3): the official in-context prompt files, verbatim: `multihop`
  (`prompts/multihop-prompts.txt`, 16 `Q: … A: …` demos, the standard protocol), `multihop_cot`
  (`prompts/multihop-cot-prompts.txt`, 5 `Question:` / `Thoughts:` / `Answer:` demos, the
  chain-of-thought protocol), `mello` (`prompts/MeLLo-prompt.txt`, 4 MeLLo demos). As released: one
  standard demo has no `A:` (`Q: Who was Dodge Ram SRT-10 created by? Dodge`), and the file has no
  final newline.
- **relations** (`relations`, 44): per Wikidata relation, the cloze and question templates
  (`prompts/templates/`, `[X]` for the subject) and the 8 single-hop demos of `prompts/rel-prompts.json`
  (`demos`, one `Q: … A: …` per line; empty for the 7 relations that file lacks). The 30 relations
  of MQuAKE-hard all have demos.

## Fields

`hard` (MQuAKE's schema; `requested_rewrite` is renamed `edits`, its items use editeval's request
field names):

| field | meaning |
|---|---|
| `case_id` | MQuAKE's case id (7417–9213 in MQuAKE-hard) |
| `edits` | the case's edits, in order: `subject`, `prompt` (the cloze template filled with the subject), `prompt_template` (MQuAKE's `prompt`, `{}` for the subject), `target_new` / `target_new_id` (`target_new.str` / `.id`), `ground_truth` / `ground_truth_id` (`target_true.str` / `.id`), `relation_id`, `question` (the edited fact asked as a question) |
| `questions` | the 3 multi-hop questions (paraphrases of one another) |
| `answer`, `answer_alias` | the answer **before** editing and its Wikidata aliases |
| `answer_extended` | MQuAKE-T only: further acceptable pre-edit answers; empty here |
| `new_answer`, `new_answer_alias` | the answer **after** editing and its aliases (144 cases have none) |
| `single_hops` | the chain before editing, one hop each: `question`, `cloze`, `answer`, `answer_alias` |
| `new_single_hops` | the chain after editing, same fields (for hop-wise accuracy) |
| `orig` | the Wikidata triples: `triples`, `triples_labeled`, `new_triples`, `new_triples_labeled`, `edit_triples` (`[subject, relation, object]` ids or labels) and `edit_triples_idx` (the edited hops; empty where a file lacks it) |

## How the metrics use the fields

As the MQuAKE paper, README and `run_mello.ipynb` describe them:

- **Edits**: every item of `edits` is injected (`prompt_template` filled with `subject` →
  `target_new`, ROME / CounterFact style), all of a case's edits together. *Edit-wise* success asks
  the same cloze `prompt`s, with no demonstrations.
- **Multi-hop accuracy**: after the case's edits, each of the 3 `questions` is answered by greedy
  generation after the `multihop` prompt (or `multihop_cot` for the chain-of-thought protocol). A
  case is correct if **any** question's answer is `new_answer` or one of `new_answer_alias`. On the
  unedited model the same check uses `answer` / `answer_alias` (and `answer_extended` for MQuAKE-T).
- **Hop-wise accuracy**: every `new_single_hops` question is answered correctly, each asked after
  its relation's 8 demos (`relations` config, `demos`).
- The paper edits k cases at once (k = 1, 100, 1,000, all) and reports multi-hop accuracy per k.

## Full sets

The official files are larger than could be collected here. With a network, download one, put it
in your raw folder at the path below and build again (`editeval datasets build mquake --raw-dir
DIR`): the builder checks it by its git blob id at the origin (what `git hash-object FILE` prints)
and its record count, and adds it as the config named here (split `edit`, the same features as
`hard`).

{{ full_sets }}

Further sets in MQuAKE's schema exist: DeepEdit's `MQuAKE-2002.json` (CF-3k without conflicting
cases; wangywUST/DeepEdit, blob `6cd7a1a5bbe1fa08be8403a735044662d85d1510`) and MQuAKE-Remastered
(henryzhongsc/MQuAKE-Remastered, `datasets/`).

{{ notes }}
## Source and licence

`mquake/MQuAKE-hard.json` from wangywUST/DeepEdit (`datasets/MQuAKE-hard.json` @ c90b295, blob
`1425b170ab045beef777f9dbd28e08a4a52eb224`; the repository has no licence file). The prompt files
from princeton-nlp/MQuAKE (`prompts/` @ fb43dad, unchanged since the release). Both sha256-checked
against `SOURCES.md` at build time. MQuAKE: MIT (Copyright (c) 2023 Princeton Natural Language
Processing); the facts come from Wikidata (CC0).

## Citation

```bibtex
@inproceedings{zhong2023mquake,
  title={{MQuAKE}: Assessing Knowledge Editing in Language Models via Multi-Hop Questions},
  author={Zhong, Zexuan and Wu, Zhengxuan and Manning, Christopher D. and Potts, Christopher and Chen, Danqi},
  booktitle={Proceedings of EMNLP 2023},
  year={2023}
}
@article{wang2024deepedit,
  title={{DeepEdit}: Knowledge Editing as Decoding with Constraints},
  author={Wang, Yiwei and Chen, Muhao and Peng, Nanyun and Chang, Kai-Wei},
  journal={arXiv preprint arXiv:2401.10471},
  year={2024}
}
```
""".replace("{{ full_sets }}", full_sets_md(FULL_SETS))

BENCHMARK = Benchmark(
    name="mquake",
    pretty_name="MQuAKE (multi-hop knowledge editing)",
    license="mit",
    configs=(
        ConfigSpec(
            "hard", (SplitSpec("edit", 429, HARD),), CASE_FEATURES, "MQuAKE-hard: 429 cases of 4 edits", default=True
        ),
        ConfigSpec(
            "prompts",
            (SplitSpec("files", 3, ", ".join(path for _, path, _ in PROMPT_FILES)),),
            PROMPT_FEATURES,
            "the official multi-hop ICL prompt files",
        ),
        ConfigSpec(
            "relations",
            (SplitSpec("relations", 44, f"{CLOZE_TEMPLATES}, {QUESTION_TEMPLATES}, {REL_PROMPTS}"),),
            RELATION_FEATURES,
            "per-relation templates and single-hop demos",
        ),
    ),
    raw_files=(HARD, *(path for _, path, _ in PROMPT_FILES), REL_PROMPTS, CLOZE_TEMPLATES, QUESTION_TEMPLATES),
    build=build,
    card=CARD,
    tags=("mquake", "multi-hop"),
    full_sets=FULL_SETS,
)
