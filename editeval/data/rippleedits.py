"""RippleEdits (Cohen et al., TACL 2024): one fact edit and the tests of its ripple effects, grouped by
criterion (Logical Generalization, Compositionality I and II, Subject Aliasing, Relation
Specificity, Forgetfulness), each test with its queries and the condition queries that decide
whether it runs. Here: POPULAR as filtered for GPT-J by the authors' script (710 edits / 1,579
tests) and the official per-edit statistics of the three subsets; the full subsets build from the
same code when their files are put in the raw folder (`FULL_SETS`)."""

from __future__ import annotations

from datasets import Features, List, Value
from editeval.data.common import Benchmark, BuildContext, ConfigSpec, FullSet, SplitSpec, full_sets_md
from editeval.data.schema import EDIT_REQUEST_FEATURES, empty_request
from editeval.data.sources import field
from editeval.errors import EditevalError

GPTJ_POPULAR = "rippleedits/gpt-j-popular.json"
STATS = {name: f"rippleedits/stats/{name}_stats.json" for name in ("popular", "random", "recent")}

# the criteria: the raw file's key -> the column here
CRITERIA = {
    "Logical_Generalization": "logical_generalization",
    "Compositionality_I": "compositionality_i",
    "Compositionality_II": "compositionality_ii",
    "Subject_Aliasing": "subject_aliasing",
    "Relation_Specificity": "relation_specificity",
    "Forgetfulness": "forgetfulness",
}
# the tests per criterion in gpt-j-popular.json, as SOURCES.md states them (1,579 in all)
GPTJ_TESTS = {
    "Relation_Specificity": 793,
    "Logical_Generalization": 429,
    "Compositionality_I": 309,
    "Compositionality_II": 32,
    "Subject_Aliasing": 16,
    "Forgetfulness": 0,
}

# The authors' relations (RippleEdits src/relation.py): name -> (Wikidata id, phrase). An edit's
# `prompt` is the phrase filled with the subject's label, a space, the target's label and "." —
# which is how subject and targets are read back here. NATIVE_LANGUAGE is P103 (the source says "P03").
RELATIONS = {
    "MOTHER": ("P25", "The name of the mother of <subject> is"),
    "FATHER": ("P22", "The name of the father of <subject> is"),
    "BROTHER": ("P7", "The name of the brother of <subject> is"),
    "SISTER": ("P9", "The name of the sister of <subject> is"),
    "SIBLING": ("P3373", "The names of the siblings of <subject> are"),
    "SPOUSE": ("P26", "The name of the spouse of <subject> is"),
    "UNCLE": ("", "The name of the uncle of <subject> is"),
    "AUNT": ("", "The name of the aunt of <subject> is"),
    "CHILD": ("P40", "The name of the child of <subject> is"),
    "NUMBER_OF_CHILDREN": ("P1971", "The number of children <subject> has is"),
    "SEX_OR_GENDER": ("P21", "The gender of <subject> is"),
    "PLACE_OF_BIRTH": ("P19", "The place of birth of <subject> is"),
    "PLACE_OF_DEATH": ("P20", "The place of death of <subject> is"),
    "PLACE_OF_BURIAL": ("P119", "The place of burial of <subject> is"),
    "COUNTRY": ("P17", "The name of the country which <subject> is associated with is"),
    "COUNTRY_OF_CITIZENSHIP": ("P27", "The name of the country of citizenship of <subject> is"),
    "POSITION_HELD": ("P39", "The name of the position held by <subject> is"),
    "STEPFATHER": ("P43", "The name of the stepfather of <subject> is"),
    "STEPMOTHER": ("P44", "The name of the stepmother of <subject> is"),
    "MEMBER_OF_SPORTS_TEAM": ("P54", "The name of the sports team which <subject> is a member of is"),
    "ALMA_MATER": ("P69", "The name of the alma mater of <subject> is"),
    "SEXUAL_ORIENTATION": ("P91", "The sexual orientation of <subject> is"),
    "OCCUPATION": ("P106", "The occupation of <subject> is"),
    "EMPLOYER": ("P108", "The name of the employer of <subject> is"),
    "LEAGUE": ("P118", "The name of the league which <subject> plays in is"),
    "FIELD_OF_WORK": ("P101", "The name of the field of work of <subject> is"),
    "NATIVE_LANGUAGE": ("P103", "The mother tongue of <subject> is"),
    "AWARD_RECEIVED": ("P166", "The name of the award <subject> won is"),
    "FOLLOWS": ("P155", "<subject> follows"),
    "FOLLOWED_BY": ("P156", "<subject> is followed by"),
    "ETHNIC_GROUP": ("P172", "The name of the ethnic group which <subject> is associated with is"),
    "RELIGION": ("P140", "The name of the religion which <subject> is associated with is"),
    "EYE_COLOR": ("P1340", "The eye color of <subject> is"),
    "DATE_OF_BIRTH": ("P569", "The date of birth of <subject> is"),
    "DATE_OF_DEATH": ("P570", "The date of death of <subject> is"),
    "IS_ALIVE": ("", "Is <subject> still alive?"),
    "HEAD_OF_GOVERNMENT": ("P6", "The name of the head of government of <subject> is"),
    "HEAD_OF_STATE": ("P35", "The name of the head of state of <subject> is"),
    "CONTINENT": ("P30", "The name of the continent which <subject> is part of is"),
    "CAPITAL": ("P36", "The name of the capital city of <subject> is"),
    "CURRENCY": ("P38", "The name of the currency in <subject> is"),
    "OFFICIAL_LANGUAGE": ("P37", "The official language of <subject> is"),
    "ANTHEM": ("P85", "The name of the anthem of <subject> is"),
    "LIKELY_ANTHEM": ("", "The name of the anthem that is most likely to be performed in <subject> is"),
    "CAPITAL_OF": ("P1376", "The name of the country which <subject> is the capital of is"),
    "AUTHOR": ("P50", "The name of the author of <subject> is"),
    "EDITOR": ("P98", "The name of the editor of <subject> is"),
    "DIRECTOR": ("P57", "The name of the director of <subject> is"),
    "SCREENWRITER": ("P58", "The name of the screenwriter of <subject> is"),
    "CAST_MEMBER": ("P161", "The names of the cast members of <subject> are"),
    "ARCHITECT": ("P84", "The name of the architect of <subject> is"),
    "COMPOSER": ("P86", "The name of the composer of <subject> is"),
    "FOUNDER": ("P112", "The name of the founder of <subject> is"),
}

ANSWER = {"value": Value("string"), "aliases": List(Value("string"))}
QUERY = {
    "prompt": Value("string"),
    "answers": List(ANSWER),
    "query_type": Value("string"),  # "regular" | "two_hop"
    "subject_id": Value("string"),
    "relation": Value("string"),
    "target_ids": List(Value("string")),
    "phrase": Value("string"),  # "" where the file has null
    "second_relation": Value("string"),  # two_hop only, else ""
    "second_hop_target_ids": List(Value("string")),  # two_hop only, else []
}
TEST = {"test_queries": List(QUERY), "test_condition": Value("string"), "condition_queries": List(QUERY)}
FACT = {
    "prompt": Value("string"),
    "subject_id": Value("string"),
    "relation": Value("string"),
    "target_id": Value("string"),
}
EDIT_FEATURES = Features(
    {
        **EDIT_REQUEST_FEATURES,
        "example_type": Value("string"),
        "edit": {**FACT, "original_fact": FACT},  # original_fact: null for RECENT (a fact added, not replaced)
        "target_new_aliases": List(Value("string")),
        "ground_truth_aliases": List(Value("string")),
        **{column: List(TEST) for column in CRITERIA.values()},
    }
)
INT, FLOAT = Value("int64"), Value("float64")
STATS_FEATURES = Features(
    {
        "example_type": Value("string"),
        "subject_id": Value("string"),
        "subject_claim_count": INT,
        "subject_backlinks": FLOAT,
        "subject_views": FLOAT,
        "target_id": Value("string"),
        "target_claim_count": INT,
        "target_backlinks": FLOAT,
        "target_views": FLOAT,
        "relation": Value("string"),
        "test_count": INT,
        "test_query_count": INT,
        "condition_query_count": INT,
    }
)

RECORD_REQUIRED = {"example_type": str, "edit": dict, **{key: list for key in CRITERIA}}
FACT_REQUIRED = ("prompt", "subject_id", "relation", "target_id")


def _ids(values, where: str, index: int, key: str) -> list[str]:
    # the authors write non-entity targets (numbers) as they are; ids are strings here
    if not isinstance(values, list):
        raise EditevalError(f"{where} record {index}: key '{key}' must be a list")
    return [str(v) for v in values]


def _query(q, where: str, index: int, key: str) -> dict:
    if not isinstance(q, dict):
        raise EditevalError(f"{where} record {index}: each query of '{key}' must be an object")
    for k in ("prompt", "query_type", "relation"):
        field(q, k, where, index)
    subject_id = field(q, "subject_id", where, index, (str, list))
    if isinstance(subject_id, list):  # some queries give a one-element list (the authors' phrase takes [0])
        if len(subject_id) != 1 or not isinstance(subject_id[0], str):
            raise EditevalError(f"{where} record {index}: a query of '{key}' has subject_id {subject_id!r}")
        subject_id = subject_id[0]
    answers = field(q, "answers", where, index, list)
    for a in answers:
        if not isinstance(a, dict) or not isinstance(a.get("value"), str) or not isinstance(a.get("aliases"), list):
            raise EditevalError(f"{where} record {index}: each answer of '{key}' needs 'value' and 'aliases'")
    two_hop = q["query_type"] == "two_hop"
    return {
        "prompt": q["prompt"],
        "answers": [{"value": a["value"], "aliases": [str(x) for x in a["aliases"]]} for a in answers],
        "query_type": q["query_type"],
        "subject_id": subject_id,
        "relation": q["relation"],
        "target_ids": _ids(q.get("target_ids", []), where, index, f"{key}.target_ids"),
        "phrase": q.get("phrase") or "",
        "second_relation": field(q, "second_relation", where, index) if two_hop else "",
        "second_hop_target_ids": _ids(field(q, "second_hop_target_ids", where, index, list), where, index, key)
        if two_hop
        else [],
    }


def _test(t, where: str, index: int, key: str) -> dict:
    if not isinstance(t, dict):
        raise EditevalError(f"{where} record {index}: each test of '{key}' must be an object")
    condition = field(t, "test_condition", where, index)
    if condition not in ("OR", "AND"):
        raise EditevalError(f"{where} record {index}: '{key}' test_condition must be OR or AND, got {condition!r}")
    return {
        "test_queries": [_query(q, where, index, key) for q in field(t, "test_queries", where, index, list)],
        "test_condition": condition,
        "condition_queries": [_query(q, where, index, key) for q in field(t, "condition_queries", where, index, list)],
    }


def _labels(tests: list[dict]) -> dict[str, tuple[str, list[str]]]:
    """Entity id -> (label, aliases), from every query answer of the (converted) tests: answers
    follow the query's target ids, or its second-hop ids for a two-hop query."""
    labels: dict[str, tuple[str, list[str]]] = {}
    for t in tests:
        for q in t["test_queries"] + t["condition_queries"]:
            ids = q["second_hop_target_ids"] if q["query_type"] == "two_hop" else q["target_ids"]
            if len(ids) == len(q["answers"]):
                for i, a in zip(ids, q["answers"]):
                    labels.setdefault(i, (a["value"], a["aliases"]))
    return labels


def _split_fact(fact: dict, subject: str | None, where: str, index: int, key: str) -> list[tuple[str, str]]:
    """The (subject, target) readings of a fact's sentence "<phrase with subject> <target>.";
    `subject` given: only the reading with that subject."""
    relation = fact["relation"]
    if relation not in RELATIONS:
        raise EditevalError(f"{where} record {index}: unknown relation '{relation}' in '{key}'")
    prefix, suffix = RELATIONS[relation][1].split("<subject>")
    sentence, sep = fact["prompt"], suffix + " "
    if not sentence.startswith(prefix) or not sentence.endswith("."):
        raise EditevalError(
            f"{where} record {index}: '{key}.prompt' does not follow the {relation} phrase: {sentence!r}"
        )
    body = sentence[len(prefix) : -1]
    readings = [(body[:p], body[p + len(sep) :]) for p in range(1, len(body)) if body.startswith(sep, p)]
    readings = [(s, t) for s, t in readings if t and (subject is None or s == subject)]
    if not readings:
        raise EditevalError(f"{where} record {index}: cannot read subject and target from '{key}.prompt' {sentence!r}")
    return readings


def _request_fields(edit: dict, labels: dict, where: str, index: int) -> tuple[dict, bool]:
    """subject / prompt / target_new / ground_truth ... of an edit, and whether its reading was ambiguous."""
    original = edit.get("original_fact")
    readings = _split_fact(edit, None, where, index, "edit")
    if original is not None:  # the replaced fact has the same subject: keep the readings both allow
        allowed = {s for s, _ in _split_fact(original, None, where, index, "edit.original_fact")}
        readings = [(s, t) for s, t in readings if s in allowed] or readings
    if len(readings) > 1 and edit["target_id"] in labels:
        readings = [(s, t) for s, t in readings if t == labels[edit["target_id"]][0]] or readings
    subject, target_new = readings[0]
    ground_truth = ""
    if original is not None:
        ground_truth = _split_fact(original, subject, where, index, "edit.original_fact")[0][1]
    relation_id, phrase = RELATIONS[edit["relation"]]
    fields = dict(
        subject=subject,
        prompt=phrase.replace("<subject>", subject),
        target_new=target_new,
        ground_truth=ground_truth,
        relation_id=relation_id,
        prompt_template=phrase.replace("<subject>", "{}"),
    )
    return fields, len(readings) > 1


def _fact(fact: dict, where: str, index: int, key: str) -> dict:
    for k in FACT_REQUIRED:
        field(fact, k, where, index)
    return {k: fact[k] for k in FACT_REQUIRED}


def edit_rows(ctx: BuildContext, path: str) -> list[dict]:
    """RippleEdits edit records as rows, in file order."""
    records = ctx.records(path, RECORD_REQUIRED)
    rows = []
    for i, r in enumerate(ctx.iter(records, path)):
        edit = r["edit"]
        original = edit.get("original_fact", edit.get("previous_fact"))  # the authors' code names it either way
        fact = _fact(edit, path, i, "edit")
        fact["original_fact"] = _fact(original, path, i, "edit.original_fact") if original is not None else None
        row = {"example_type": r["example_type"], "edit": fact}
        for key, column in CRITERIA.items():
            row[column] = [_test(t, path, i, key) for t in r[key]]
        rows.append(row)
    # the request fields need every entity label the file gives, so they come second
    labels = _labels([t for row in rows for column in CRITERIA.values() for t in row[column]])
    ambiguous = unlike = 0
    for i, row in enumerate(rows):
        fact, original = row["edit"], row["edit"]["original_fact"]
        fields, unsure = _request_fields(fact, labels, path, i)
        ambiguous += unsure
        targets = [(fact["target_id"], fields["target_new"])]
        if original is not None:
            targets.append((original["target_id"], fields["ground_truth"]))
        unlike += sum(1 for tid, label in targets if tid in labels and labels[tid][0] != label)
        row.update(
            empty_request(case_id=i, **fields),
            target_new_aliases=labels.get(fact["target_id"], ("", []))[1],
            ground_truth_aliases=labels.get(original["target_id"], ("", []))[1] if original is not None else [],
        )
    if ambiguous:
        ctx.notes.append(f"`{path}`: {ambiguous} edit sentence(s) read two ways; the shortest subject was taken.")
    if unlike:
        ctx.notes.append(
            f"`{path}`: {unlike} target label(s) read from an edit differ from a query's answer for that entity."
        )
    return rows


def _check_test_counts(ctx: BuildContext, path: str, rows: list[dict], stated: dict[str, int]) -> None:
    found = {key: sum(len(row[column]) for row in rows) for key, column in CRITERIA.items()}
    if found != stated:
        raise EditevalError(
            f"raw file {ctx.raw.root / path}: tests per criterion {found} do not match SOURCES.md {stated}"
        )


def _check_against_stats(ctx: BuildContext, path: str, rows: list[dict], stats: str) -> None:
    table = ctx.raw.load(stats)
    if len(table) != len(rows):
        raise EditevalError(f"raw file {ctx.raw.root / path}: {len(rows)} edits, {stats} has {len(table)}")
    for i, (row, st) in enumerate(zip(rows, table)):
        fact = row["edit"]
        tests = sum(len(row[column]) for column in CRITERIA.values())
        if (fact["subject_id"], fact["relation"], fact["target_id"], tests) != (
            st["subject_id"],
            st["relation"],
            st["target_id"],
            st["test_count"],
        ):
            raise EditevalError(f"{path} record {i}: its edit or test count differs from row {i} of {stats}")


def _stat(value, kind, where: str, index: int, key: str):
    if value is None:  # NaN in the authors' DataFrame
        return None
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)  # a count column pandas wrote as float because of NaNs
    if not isinstance(value, (int, float)) or isinstance(value, bool) or (kind is int and not isinstance(value, int)):
        raise EditevalError(f"{where} row {index}: column '{key}' must be a number, got {value!r}")
    return kind(value)


def stats_rows(ctx: BuildContext, name: str) -> list[dict]:
    path = STATS[name]
    rows = []
    for i, r in enumerate(ctx.raw.load(path)):
        row = {}
        for key, feature in STATS_FEATURES.items():
            if key not in r:
                raise EditevalError(f"{path} row {i}: missing column '{key}'")
            if feature.dtype == "string":
                row[key] = field(r, key, path, i)
            else:
                row[key] = _stat(r[key], int if feature.dtype == "int64" else float, path, i, key)
        rows.append(row)
    return rows


def build(ctx: BuildContext) -> dict:
    gptj = edit_rows(ctx, GPTJ_POPULAR)
    _check_test_counts(ctx, GPTJ_POPULAR, gptj, GPTJ_TESTS)
    return {"popular_gptj": {"edit": gptj}, "stats": {name: stats_rows(ctx, name) for name in STATS}}


def full_rows(ctx: BuildContext, path: str, subset: str) -> list[dict]:
    """A full subset file: its edits, checked edit by edit against the official statistics."""
    rows = edit_rows(ctx, path)
    _check_against_stats(ctx, path, rows, STATS[subset])
    return rows


def _full_set(config: str, blob: str, count: int) -> FullSet:
    return FullSet(
        config,
        "edit",
        f"rippleedits/{config}.json",
        "json_list",
        blob,
        count,
        f"edenbiran/RippleEdits : `data/benchmark/{config}.json` @ 54f3b88",
        EDIT_FEATURES,
        f"{config.upper()}: all edits and tests (unfiltered)",
        lambda ctx, path: full_rows(ctx, path, config),
    )


FULL_SETS = (
    _full_set("popular", "67a707cc7fb57d83456fe62f767c968d51e4f2e0", 885),
    _full_set("random", "9da7717ed33c09da181c2dd93fe765c31f97aac2", 1922),
    _full_set("recent", "cbfd85c428ba5d1c5d227ec91717a0b855033759", 1948),
)

CARD = """\
RippleEdits (Cohen, Biran, Yoran, Globerson and Geva, TACL 2024, "Evaluating the Ripple Effects of
Knowledge Editing in Language Models") asks whether the consequences of an edit hold. Each edit
("The name of the country of citizenship of Leonardo DiCaprio is **Syria**.") comes with tests of
six criteria: facts that follow logically, two-hop questions through the new fact, the edit asked
about an alias of the subject, other facts of the subject that must not change, and the old fact's
other objects that must not be forgotten.

**This is a subset.** The `popular_gptj` config is the POPULAR subset **as filtered for GPT-J** by
the authors' own script (`src/filter_benchmark_by_model.py`, run by the SWEA authors): it keeps the
tests whose condition queries GPT-J answers, so 710 of POPULAR's 885 edits remain, with 1,579 of its
11,309 tests. It is the authors' evaluation set for GPT-J; another model needs the full file
filtered for it (the authors' protocol also runs the condition queries on the unedited model
before it scores, so each model's own failed conditions drop tests anyway).
The unfiltered POPULAR, RANDOM and RECENT files could not be obtained here (see "Full sets"); their
official per-edit statistics are the `stats` config. All 885 POPULAR edits are also in
`knowedit` config `wiki_counterfact` split `test` (KnowEdit's schema, without condition queries;
editeval keeps one answer per test item there).

{{ counts_table }}

## Configs

- **popular_gptj** (`edit`, 710): one row per edit, in the file's order (which is POPULAR's order).
  Tests per criterion: Relation Specificity 793, Logical Generalization 429, Compositionality I 309,
  Compositionality II 32, Subject Aliasing 16, Forgetfulness 0 (checked at build time against
  `SOURCES.md`). Every test here has `test_condition` "OR".
- **stats** (`popular` 885 / `random` 1,922 / `recent` 1,948): the official statistics of the three
  subsets (`data/stats/*_stats.json`, from `src/benchmark_statistics.py`), one row per edit in
  benchmark order: `example_type`, `subject_id`, `target_id`, `relation`, Wikidata popularity
  (`*_claim_count`, `*_backlinks`, `*_views`; null where the file has NaN) and `test_count`,
  `test_query_count`, `condition_query_count`. Sums of `test_count`: 11,309 / 13,387 / 20,709.

## Fields

`popular_gptj`: editeval's edit-request schema (so `editeval edit --benchmark rippleedits` runs the
edits), plus the record as the authors store it.

| field | meaning |
|---|---|
| `case_id` | index of the edit in the file |
| `subject`, `target_new`, `ground_truth` | the labels of the edit's subject, new target and replaced target, read from `edit.prompt` / `edit.original_fact.prompt` with the authors' relation phrase (see below) |
| `prompt`, `prompt_template` | the relation phrase filled with the subject ("The name of the country of citizenship of Leonardo DiCaprio is"), and with `{}` — what the authors give ROME/MEMIT/MEND |
| `relation_id` | the relation's Wikidata id (P27) |
| `rephrase_prompts`, `locality`, `portability`, other schema lists | empty: the tests are in the criterion columns |
| `example_type` | as in the file (`counter_fact` here: the filter re-serialises through the authors' `to_dict`; the official files say `popular` / `random` / `recent`) |
| `edit` | `prompt` (the full sentence, with the new target), `subject_id`, `relation`, `target_id`, and `original_fact` (same fields; null for RECENT) |
| `target_new_aliases`, `ground_truth_aliases` | the target's Wikidata aliases where some query of the file answers with that entity (the authors fetch them from Wikidata); else empty |
| `logical_generalization`, `compositionality_i`, `compositionality_ii`, `subject_aliasing`, `relation_specificity`, `forgetfulness` | the tests of each criterion (the file's `Logical_Generalization`, …) |

A test is `test_queries`, `test_condition` ("OR": any query passes; "AND": all) and
`condition_queries`. A query is `prompt`, `answers` (each a `value` and its `aliases`; a query with
several answers needs all of them), `query_type` ("regular" or "two_hop"), `subject_id`,
`relation`, `target_ids`, `phrase` ("" where null), and for two-hop queries `second_relation` and
`second_hop_target_ids` (else "" and []). Where the file gives `subject_id` as a one-element list
(117 Logical Generalization queries of `popular_gptj`), it is stored as that id.

An edit's sentence is the relation phrase filled with the subject's label, a space, the target's
label and "." (`Fact.get_fact_phrased`). The builder holds the authors' phrase table
(`src/relation.py`) and reads subject and targets back; the reading must agree with the replaced
fact's sentence. Where a query of the file answers with the same entity, its label is compared
with the one read (all 285 such targets of `popular_gptj` agree; a build note would list others).

## How the metrics use the fields

As the authors' `src/testrunner.py`, `queryexecutor.py` and `evaluation.py` compute them:

- **Edit**: `prompt_template` filled with `subject` → `target_new` (in-context editing prepends
  `edit.prompt` instead). The edit counts as applied if the fact query (`prompt`, answers
  `target_new` + `target_new_aliases`) passes after editing.
- **Conditions**: on the unedited model, each test's `condition_queries` are run; a test with a
  failing condition is not executed and is left out.
- **Queries**: greedy generation from `prompt` up to `len(prompt) + 30` tokens (`len` in
  characters); a query passes if, for every entry of `answers`, the `value` or one of its
  `aliases` is a substring of the output. A test passes if any (OR) or all (AND) of its
  `test_queries` pass.
- **Accuracy** per criterion: passed / (passed + failed) per edit, averaged over the edits whose
  edit succeeded; reported for the six criteria separately and overall.

## Full sets

With a network, download an official subset file, put it in your raw folder at the path below and
build again (`editeval datasets build rippleedits --raw-dir DIR`): the builder checks it by its git
blob id at the origin (what `git hash-object FILE` prints), its edits against the `stats` rows
(subject, relation, target and number of tests, edit by edit), and adds it as the config named
here (split `edit`, the same features as `popular_gptj`). The same blobs are in xpq-tech/SWEA
`ripple_benchmark/`; `recent.json` was stored with Git LFS at edenbiran/RippleEdits commit
`21182d13` (oid sha256 `bc71807ea72280e2587bd1974fc79ae7e23aa24b1d5887bcdced40d448910547`,
19,658,316 bytes).

{{ full_sets }}

{{ notes }}
## Source and licence

`rippleedits/gpt-j-popular.json` from xpq-tech/SWEA (`ripple_benchmark/gpt-j-popular.json` @
0ab4351, blob `c906b0ba64a76b9cfe1dec5e55a368e38d37727a`), the output of the authors' filter script
in SWEA's vendored copy; the statistics from edenbiran/RippleEdits (`data/stats/` @ 54f3b88). All
sha256-checked against `SOURCES.md` at build time. RippleEdits: MIT ("Copyright (c) 2023 Eden
Biran"); the facts come from Wikidata (CC0).

## Citation

```bibtex
@article{cohen2024evaluating,
  title={Evaluating the Ripple Effects of Knowledge Editing in Language Models},
  author={Cohen, Roi and Biran, Eden and Yoran, Ori and Globerson, Amir and Geva, Mor},
  journal={Transactions of the Association for Computational Linguistics},
  volume={12},
  year={2024}
}
```
""".replace("{{ full_sets }}", full_sets_md(FULL_SETS))

BENCHMARK = Benchmark(
    name="rippleedits",
    pretty_name="RippleEdits (ripple effects of knowledge editing)",
    license="mit",
    configs=(
        ConfigSpec(
            "popular_gptj",
            (SplitSpec("edit", 710, GPTJ_POPULAR),),
            EDIT_FEATURES,
            "POPULAR, filtered for GPT-J: 710 edits, 1,579 tests",
            default=True,
        ),
        ConfigSpec(
            "stats",
            tuple(
                SplitSpec(name, count, STATS[name])
                for name, count in (("popular", 885), ("random", 1922), ("recent", 1948))
            ),
            STATS_FEATURES,
            "official per-edit statistics of POPULAR / RANDOM / RECENT",
        ),
    ),
    raw_files=(GPTJ_POPULAR, *STATS.values()),
    build=build,
    card=CARD,
    tags=("rippleedits", "ripple-effects", "multi-hop"),
    full_sets=FULL_SETS,
)
