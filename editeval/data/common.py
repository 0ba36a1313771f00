"""What every builder shares: benchmark/config/split specs, the build context, the full sets a
user may add to the raw folder, and the mappings of the two record families (ZsRE question
records, ROME full-schema CounterFact records) into the edit-request schema.

Locality kinds used across benchmarks (documented in each card):
  nq                    ZsRE, QAEdit: a Natural Questions question and its answer
  neighborhood          CounterFact: another subject with the same relation and the same true object
  other_attribution     CounterFact: another relation of the same subject (Yao et al. 2023)
  distracting_neighbor  CounterFact: the edited fact prepended to a neighborhood prompt (Yao et al. 2023)
  relation_specificity  KnowEdit: another relation of the same subject
  forgetfulness         KnowEdit: the edited relation asked so that the old object should stay reachable
  retain                KnowEdit Sanitation: a TriviaQA question whose answer must be kept
Portability kinds:
  one_hop               a question one reasoning hop away from the new fact (Yao et al. 2023)
  subject_replace       the edited question asked about an alias of the subject (KnowEdit: Subject_Aliasing)
  inverse_relation      the inverse question, answered by the subject (Yao et al. 2023)
  reasoning             KnowEdit: a multi-hop question whose answer follows from the new fact
  logical_generalization KnowEdit: a logically implied fact
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

from editeval.data.schema import empty_request
from editeval.data.sources import FileSpec, RawData, check_records, field
from editeval.errors import EditevalError

KNOWEDIT_LOCALITY_KINDS = {"Relation_Specificity": "relation_specificity", "Forgetfulness": "forgetfulness"}
KNOWEDIT_PORTABILITY_KINDS = {
    "Reasoning": "reasoning",
    "Subject_Aliasing": "subject_replace",
    "Logical_Generalization": "logical_generalization",
}


# the evaluation protocols a split can declare beyond the ones every edit split gets (named as in
# `editeval.evaluation.specs.EVALUATION_PROTOCOLS`)
COUNTERFACT_PROTOCOL = "counterfact"  # ROME's probability scores: efficacy, paraphrase, neighbourhood


@dataclass(frozen=True)
class SplitSpec:
    name: str
    count: int  # the number of rows the split must have
    source: str  # where its rows come from (raw file(s)), for the card
    protocols: tuple[str, ...] = ()  # extra evaluation protocols its requests are scored with


@dataclass(frozen=True)
class ConfigSpec:
    name: str
    splits: tuple[SplitSpec, ...]
    features: Any  # datasets.Features
    summary: str  # one line for the card's table
    default: bool = False
    train_split: str | None = None  # the split trained editors and demonstrations are drawn from


@dataclass(frozen=True)
class FullSet:
    """A full set whose file could not be collected (SOURCES.md lists it under "Not obtained", by its
    git blob id at the origin). Put the file at `path` in the raw folder and `editeval datasets build`
    adds config `config` (one split), after checking the file by that blob id and its record count."""

    config: str
    split: str
    path: str  # relative to the raw data folder
    format: str  # as FileSpec.format
    blob: str  # git blob id at the origin (`git hash-object FILE`)
    count: int | None  # records, where SOURCES.md states the count
    origin: str  # "owner/repo : path @ commit", for the card
    features: Any  # datasets.Features
    summary: str
    rows: Callable[[BuildContext, str], list[dict]]  # the builder, given the file's path


def full_sets_md(full_sets: Iterable[FullSet]) -> str:
    """The card's table of full sets (config, where the file goes, origin, blob id, records)."""
    lines = ["| config | put the file at (raw folder) | origin | git blob id | records |", "|---|---|---|---|---:|"]
    for f in full_sets:
        count = f"{f.count:,}" if f.count is not None else "not stated"
        lines.append(f"| `{f.config}` | `{f.path}` | {f.origin} | `{f.blob}` | {count} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Benchmark:
    name: str
    pretty_name: str
    license: str  # Hub licence id
    configs: tuple[ConfigSpec, ...]
    raw_files: tuple[str, ...]
    build: Callable[[BuildContext], dict[str, dict[str, list[dict]]]]  # config -> split -> rows
    card: str  # the card body (markdown with the placeholders {{ counts_table }} and {{ notes }})
    tags: tuple[str, ...] = ()
    full_sets: tuple[FullSet, ...] = ()  # built as extra configs when their files are in the raw folder

    def with_full_sets(self, raw: RawData) -> Benchmark:
        """This benchmark plus a config for each full set whose file is in `raw`'s folder; the file is
        checked by its git blob id (unless a SOURCES.md given with --sources describes it by sha256)."""
        present = [f for f in self.full_sets if (raw.root / f.path).is_file()]
        if not present:
            return self
        configs = []
        for f in present:
            if f.path not in raw.sources:
                raw.add(FileSpec(f.path, f.format, None, "", f.count, blob=f.blob))
            records = raw.spec(f.path).records
            count = records if isinstance(records, int) else len(raw.load(f.path))  # no stated count: the file's
            configs.append(ConfigSpec(f.config, (SplitSpec(f.split, count, f.path),), f.features, f.summary))

        def build(ctx: BuildContext) -> dict[str, dict[str, list[dict]]]:
            built = self.build(ctx)
            for f in present:
                built[f.config] = {f.split: f.rows(ctx, f.path)}
            return built

        return dataclasses.replace(
            self,
            configs=self.configs + tuple(configs),
            raw_files=self.raw_files + tuple(f.path for f in present),
            build=build,
        )

    def config(self, name: str | None) -> ConfigSpec:
        if name is None:
            defaults = [c for c in self.configs if c.default] or (list(self.configs) if len(self.configs) == 1 else [])
            if not defaults:
                raise EditevalError(
                    f"benchmark '{self.name}' has several configs; choose one with --config: "
                    + ", ".join(c.name for c in self.configs)
                )
            return defaults[0]
        for c in self.configs:
            if c.name == name:
                return c
        raise EditevalError(
            f"benchmark '{self.name}' has no config '{name}': choose from " + ", ".join(c.name for c in self.configs)
        )

    def split(self, config: str | None, name: str) -> SplitSpec:
        for s in self.config(config).splits:
            if s.name == name:
                return s
        raise EditevalError(f"benchmark '{self.name}' config {config!r} has no split '{name}'")

    def protocols(self, config: str | None, split: str) -> tuple[str, ...]:
        """The extra evaluation protocols declared for this split (e.g. CounterFact's scores)."""
        return self.split(config, split).protocols

    def train_split(self, config: str | None = None) -> str:
        """The split a config declares for training (learned editors, in-context demonstrations)."""
        spec = self.config(config)
        if spec.train_split is None:
            raise EditevalError(f"benchmark '{self.name}' config '{spec.name}' declares no train split")
        return spec.train_split


@dataclass
class BuildContext:
    raw: RawData
    progress: bool = True
    notes: list[str] = dc_field(default_factory=list)  # facts found while building, printed in the card

    def records(self, relpath: str, required: dict[str, type | tuple[type, ...]] | None = None, key: str | None = None):
        """The raw file's records (list, or the list under `key` of a JSON dict), checked for `required` keys."""
        data = self.raw.load(relpath)
        records = data[key] if key is not None else data
        if required:
            check_records(records, required, relpath if key is None else f"{relpath} [{key}]")
        return records

    def iter(self, items: Iterable, desc: str, total: int | None = None) -> Iterator:
        from tqdm.auto import tqdm

        return iter(tqdm(items, desc=desc, total=total, disable=not self.progress, leave=False, unit="rec"))


def pa(kind: str, prompt: str, answer: str) -> dict:
    """One {kind, prompt, answer} item."""
    return {"kind": kind, "prompt": prompt, "answer": answer}


def first_answer(value: Any) -> str | None:
    """The first non-empty string in a (nested) answer list: "a" | ["a", ...] | [["a", "alias"], ...]."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, list):
        for item in value:
            found = first_answer(item)
            if found is not None:
                return found
    return None


# --------------------------------------------------------------------------- ZsRE question records

ZSRE_REQUIRED = {"subject": str, "src": str, "alt": str, "answers": list, "rephrase": str}
ZSRE_LOC_REQUIRED = {"loc": str, "loc_ans": str}


def zsre_request(record: dict, index: int, where: str, *, locality: bool = True) -> dict:
    """EasyEdit's ZsRE mapping: prompt=src, target_new=alt, ground_truth=answers[0], rephrase, loc/loc_ans (NQ)."""
    answers = field(record, "answers", where, index, list, nonempty=True)
    if not isinstance(answers[0], str):
        raise EditevalError(f"{where} record {index}: key 'answers' must hold strings, got {type(answers[0]).__name__}")
    loc = []
    if locality:
        loc = [pa("nq", field(record, "loc", where, index), field(record, "loc_ans", where, index))]
    return empty_request(
        case_id=index,
        subject=field(record, "subject", where, index),
        prompt=field(record, "src", where, index),
        target_new=field(record, "alt", where, index),
        ground_truth=answers[0],
        rephrase_prompts=[field(record, "rephrase", where, index)],
        locality=loc,
    )


# --------------------------------------------------------------------------- CounterFact full schema

CF_FULL_REQUIRED = {
    "case_id": int,
    "requested_rewrite.prompt": str,
    "requested_rewrite.subject": str,
    "requested_rewrite.relation_id": str,
    "requested_rewrite.target_new.str": str,
    "requested_rewrite.target_true.str": str,
    "paraphrase_prompts": list,
    "neighborhood_prompts": list,
    "attribute_prompts": list,
    "generation_prompts": list,
}
CF_ONE_HOP_REQUIRED = {"portability.New Question": str, "portability.New Answer": str}
CF_LOCALITY_REQUIRED = {
    "unrelated_relation.question": str,
    "unrelated_relation.object": str,
    "distracting_neighborhood_prompts": list,
}


def _strings(record: dict, key: str, where: str, index: int) -> list[str]:
    values = field(record, key, where, index, list)
    if not all(isinstance(v, str) for v in values):
        raise EditevalError(f"{where} record {index}: key '{key}' must be a list of strings")
    return list(values)


def cf_full_request(
    record: dict,
    index: int,
    where: str,
    *,
    locality: Iterable[str] = ("neighborhood",),
    portability: Iterable[str] = (),
) -> dict:
    """A ROME-schema CounterFact record. `locality` / `portability` name the kinds to attach
    (only those the record holds data for): neighborhood, other_attribution, distracting_neighbor;
    one_hop, subject_replace."""
    rw = "requested_rewrite"
    template = field(record, f"{rw}.prompt", where, index)
    subject = field(record, f"{rw}.subject", where, index)
    if template.count("{}") != 1:
        raise EditevalError(
            f"{where} record {index}: key '{rw}.prompt' must contain exactly one '{{}}', got {template!r}"
        )
    target_new = field(record, f"{rw}.target_new.str", where, index)
    target_true = field(record, f"{rw}.target_true.str", where, index)
    neighborhood = _strings(record, "neighborhood_prompts", where, index)
    loc: list[dict] = []
    for kind in locality:
        if kind == "neighborhood":
            loc += [pa(kind, p, target_true) for p in neighborhood]
        elif kind == "other_attribution" and "unrelated_relation" in record:
            loc.append(
                pa(
                    kind,
                    field(record, "unrelated_relation.question", where, index),
                    field(record, "unrelated_relation.object", where, index),
                )
            )
        elif kind == "distracting_neighbor" and "distracting_neighborhood_prompts" in record:
            loc += [
                pa(kind, p, target_true) for p in _strings(record, "distracting_neighborhood_prompts", where, index)
            ]
    port: list[dict] = []
    for kind in portability:
        if kind == "one_hop" and "portability" in record:
            port.append(
                pa(
                    kind,
                    field(record, "portability.New Question", where, index),
                    field(record, "portability.New Answer", where, index),
                )
            )
        elif kind == "subject_replace" and "alternative_subject" in record:
            port.append(pa(kind, template.format(field(record, "alternative_subject", where, index)), target_new))
    return empty_request(
        case_id=field(record, "case_id", where, index, int),
        subject=subject,
        prompt=template.format(subject),
        target_new=target_new,
        ground_truth=target_true,
        rephrase_prompts=_strings(record, "paraphrase_prompts", where, index),
        locality=loc,
        portability=port,
        relation_id=field(record, f"{rw}.relation_id", where, index),
        prompt_template=template,
        neighborhood_prompts=neighborhood,
        attribute_prompts=_strings(record, "attribute_prompts", where, index),
        generation_prompts=_strings(record, "generation_prompts", where, index),
    )


# --------------------------------------------------------------------------- KnowEdit nested lists


def knowedit_items(
    record: dict, section: str, kinds: dict[str, str], where: str, index: int, dropped: dict[str, int]
) -> list[dict]:
    """KnowEdit's {"Kind": [{"prompt", "ground_truth"}]} -> [{kind, prompt, answer}], answer = the
    first alias of the first answer (as EasyEdit's runners take it); items with no answer at all
    are dropped and counted in `dropped`."""
    groups = record.get(section) or {}
    if not isinstance(groups, dict):
        raise EditevalError(f"{where} record {index}: key '{section}' must be an object, got {type(groups).__name__}")
    out = []
    for raw_kind, items in groups.items():
        if raw_kind not in kinds:
            raise EditevalError(
                f"{where} record {index}: unknown {section} kind '{raw_kind}' (known: {', '.join(kinds)})"
            )
        if not isinstance(items, list):
            raise EditevalError(f"{where} record {index}: key '{section}.{raw_kind}' must be a list")
        for item in items:
            if not isinstance(item, dict) or "prompt" not in item or "ground_truth" not in item:
                raise EditevalError(
                    f"{where} record {index}: each '{section}.{raw_kind}' item needs 'prompt' and 'ground_truth'"
                )
            prompt = first_answer(item["prompt"])
            answer = first_answer(item["ground_truth"])
            if prompt is None or answer is None:
                dropped[f"{section}.{raw_kind}"] = dropped.get(f"{section}.{raw_kind}", 0) + 1
                continue
            out.append(pa(kinds[raw_kind], prompt, answer))
    return out


def dropped_note(dropped: dict[str, int], where: str) -> list[str]:
    return [
        f"`{where}`: {n} `{k}` item(s) without any answer (empty string or empty alias lists) were dropped."
        for k, n in sorted(dropped.items())
    ]
