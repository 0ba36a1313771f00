"""The one edit-request record every benchmark is normalised into.

Methods and the scorer consume only these fields. Fields a benchmark does not have are
empty strings / empty lists (never missing), so every config shares one set of features.

- case_id: the benchmark's own id (CounterFact case_id; otherwise the record's index in its raw file)
- subject: the entity whose fact is edited; occurs verbatim in `prompt` where the data allows
- prompt: the edit prompt, e.g. "The mother tongue of Danielle Darrieux is"
- target_new: the new answer the edit should make the model give, e.g. "English"
- ground_truth: the true (pre-edit) answer, e.g. "French" ("" when unknown)
- rephrase_prompts: paraphrases of `prompt` (generalization)
- locality: prompts that must NOT change, each {kind, prompt, answer}
- portability: questions whose answer should follow from the new fact, each {kind, prompt, answer}
- relation_id: Wikidata relation (P103, ...) where known
- prompt_template: the prompt with "{}" in place of the subject (CounterFact), else ""
- neighborhood_prompts / attribute_prompts / generation_prompts: CounterFact full-schema lists
"""

from __future__ import annotations

from datasets import Features, List, Value

PROMPT_ANSWER = {"kind": Value("string"), "prompt": Value("string"), "answer": Value("string")}

EDIT_REQUEST_FEATURES = Features(
    {
        "case_id": Value("int64"),
        "subject": Value("string"),
        "prompt": Value("string"),
        "target_new": Value("string"),
        "ground_truth": Value("string"),
        "rephrase_prompts": List(Value("string")),
        "locality": List(PROMPT_ANSWER),
        "portability": List(PROMPT_ANSWER),
        "relation_id": Value("string"),
        "prompt_template": Value("string"),
        "neighborhood_prompts": List(Value("string")),
        "attribute_prompts": List(Value("string")),
        "generation_prompts": List(Value("string")),
    }
)

REQUIRED_TEXT_FIELDS = ("prompt", "target_new")


def empty_request(**fields) -> dict:
    """A record with every schema field present (empty), updated with `fields`."""
    record = {
        "case_id": 0,
        "subject": "",
        "prompt": "",
        "target_new": "",
        "ground_truth": "",
        "rephrase_prompts": [],
        "locality": [],
        "portability": [],
        "relation_id": "",
        "prompt_template": "",
        "neighborhood_prompts": [],
        "attribute_prompts": [],
        "generation_prompts": [],
    }
    unknown = set(fields) - set(record)
    if unknown:
        raise KeyError(f"not edit-request fields: {sorted(unknown)}")
    record.update(fields)
    return record
