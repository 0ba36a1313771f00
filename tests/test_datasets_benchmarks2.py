"""Benchmarks II as Hugging Face datasets: MQuAKE (hard), RippleEdits (POPULAR for GPT-J, statistics)
and QAEdit (1k). Each builds and loads with its counts; one record of each is checked field by field
against its raw file; QAEdit (and RippleEdits) load as edit requests and run through `editeval
edit`; a tampered raw file or a wrong count is one error line with nothing written; a full set put
in the raw folder is checked by its git blob id and built as a config of its own.

The three are built once per module into a temp folder from the real raw files (about 2 s)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from editeval.runtime.paths import raw_data_dir

RAW = raw_data_dir()
NAMES = ("mquake", "rippleedits", "qaedit")
pytestmark = pytest.mark.needs_raw  # every test reads ../shared/data/raw (skipped with a reason without it)

MQUAKE = "mquake/MQuAKE-hard.json"
RIPPLE = "rippleedits/gpt-j-popular.json"
QAEDIT = "qaedit/QAEdit_inter_1k.json"

# (benchmark, config) -> {split: rows}, as SOURCES.md and the issue give them
EXPECTED = {
    ("mquake", "hard"): {"edit": 429},
    ("mquake", "prompts"): {"files": 3},
    ("mquake", "relations"): {"relations": 44},
    ("rippleedits", "popular_gptj"): {"edit": 710},
    ("rippleedits", "stats"): {"popular": 885, "random": 1922, "recent": 1948},
    ("qaedit", "inter_1k"): {"edit": 1000},
}


@pytest.fixture(scope="module")
def hf_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf-datasets-cache")


@pytest.fixture(autouse=True)
def hf_cache(hf_cache_dir, monkeypatch):
    """`datasets`' Arrow cache of these test builds in a folder of this module's (patched per test)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(hf_cache_dir))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(hf_cache_dir))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    from editeval.data.build import build_benchmarks

    out = tmp_path_factory.mktemp("datasets")
    build_benchmarks(NAMES, out_dir=out, progress=False)
    return out


def load(built, name, config=None, split=None):
    import datasets

    return datasets.load_dataset(str(built / name), config, split=split)


def raw(rel: str):
    return json.loads((RAW / rel).read_text(encoding="utf-8"))


def cli(capsys, *argv):
    """`editeval ARGV` in-process; (exit code, stdout, stderr lines)."""
    from editeval.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err.strip().splitlines()


# ---------------------------------------------------------------------------- sizes, features, cards


def test_registry_declares_the_counts_of_sources_md():
    from editeval.data.registry import get
    from editeval.data.sources import SOURCES

    declared = {(n, c.name): {s.name: s.count for s in c.splits} for n in NAMES for c in get(n).configs}
    assert declared == EXPECTED
    assert SOURCES[MQUAKE].records == 429 and SOURCES[RIPPLE].records == 710 and SOURCES[QAEDIT].records == 1000
    assert [SOURCES[f"rippleedits/stats/{n}_stats.json"].records for n in ("popular", "random", "recent")] == [
        885,
        1922,
        1948,
    ]
    assert SOURCES["mquake/prompts/templates/cloze_templates.json"].records == 44


def test_gptj_test_counts_are_those_of_sources_md():
    """The per-criterion test counts the builder checks are the ones SOURCES.md states."""
    from editeval.data.rippleedits import GPTJ_TESTS

    text = (RAW / "SOURCES.md").read_text(encoding="utf-8")
    line = re.search(r"records: \*\*710\*\* edits \(tests: ([^=]+)= ([\d,]+);", text)
    stated = {name: int(n) for name, n in re.findall(r"(\w+) (\d+)", line.group(1))}
    assert stated == GPTJ_TESTS and sum(GPTJ_TESTS.values()) == int(line.group(2).replace(",", "")) == 1579


@pytest.mark.parametrize("name,config", sorted(EXPECTED))
def test_every_config_loads_with_its_counts_and_features(built, name, config):
    from editeval.data.registry import get

    spec = get(name).config(config)
    ds = load(built, name, config)
    assert {split: len(d) for split, d in ds.items()} == EXPECTED[(name, config)]
    for d in ds.values():
        assert d.features == spec.features


def test_default_configs_and_request_schema(built):
    from editeval.data.registry import get
    from editeval.data.schema import EDIT_REQUEST_FEATURES

    assert len(load(built, "mquake", split="edit")) == 429  # hard is the default
    assert len(load(built, "rippleedits", split="edit")) == 710
    assert len(load(built, "qaedit", split="edit")) == 1000
    for name, config in (("rippleedits", "popular_gptj"), ("qaedit", "inter_1k")):
        features = get(name).config(config).features
        assert all(features[k] == v for k, v in EDIT_REQUEST_FEATURES.items()), (name, config)
    assert "prompt" not in get("mquake").config("hard").features  # a case is not one edit request


def test_cards_say_subset_and_give_full_sets(built):
    from editeval.data.registry import get

    for name in NAMES:
        text = (built / name / "README.md").read_text(encoding="utf-8")
        meta = yaml.safe_load(text.split("---\n")[1])
        bench = get(name)
        assert [c["config_name"] for c in meta["configs"]] == [c.name for c in bench.configs]
        assert [e.get("default", False) for e in meta["configs"]] == [c.default for c in bench.configs]
        assert "**This is a subset.**" in text
        for full in bench.full_sets:  # where each full set lives and its blob id
            assert f"| `{full.config}` | `{full.path}` |" in text and f"`{full.blob}`" in text
        for heading in ("## Fields", "## How the metrics use the fields", "## Source and licence", "## Citation"):
            assert heading in text, (name, heading)
    sources = (RAW / "SOURCES.md").read_text(encoding="utf-8")
    for full in (f for n in NAMES for f in get(n).full_sets):
        assert full.blob in sources, full.config  # the ids are SOURCES.md's
        if full.count is not None:
            assert f"{full.count:,}" in sources or str(full.count) in sources


def test_build_is_deterministic(built, tmp_path):
    from editeval.data.build import build_benchmarks

    build_benchmarks(NAMES, out_dir=tmp_path, progress=False)
    for name in NAMES:
        files = sorted(p.relative_to(tmp_path / name) for p in (tmp_path / name).rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(built / name) for p in (built / name).rglob("*") if p.is_file())
        for rel in files:
            assert (tmp_path / name / rel).read_bytes() == (built / name / rel).read_bytes(), rel


def test_list_shows_the_three(built, capsys):
    code, out, _ = cli(capsys, "datasets", "list", "--datasets-dir", built)
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    for (name, config), splits in EXPECTED.items():
        for split, n in splits.items():
            label = [config, "(default)"] if config in ("hard", "popular_gptj", "inter_1k") else [config]
            assert [name, *label, split, f"{n:,}", f"{n:,}"] in rows, (name, config, split)


# ---------------------------------------------------------------------------- records against the raw files


def _hop(h):
    return {"question": h["question"], "cloze": h["cloze"], "answer": h["answer"], "answer_alias": h["answer_alias"]}


@pytest.mark.parametrize("index", [0, 428])
def test_mquake_case_field_by_field(built, index):
    r = raw(MQUAKE)[index]
    row = load(built, "mquake", "hard", "edit")[index]
    assert row["case_id"] == r["case_id"]
    assert len(row["edits"]) == len(r["requested_rewrite"]) == 4
    for edit, rw in zip(row["edits"], r["requested_rewrite"]):
        assert edit == {
            "subject": rw["subject"],
            "prompt": rw["prompt"].format(rw["subject"]),
            "prompt_template": rw["prompt"],
            "target_new": rw["target_new"]["str"],
            "ground_truth": rw["target_true"]["str"],
            "relation_id": rw["relation_id"],
            "target_new_id": rw["target_new"]["id"],
            "ground_truth_id": rw["target_true"]["id"],
            "question": rw["question"],
        }
    for key in ("questions", "answer", "answer_alias", "new_answer", "new_answer_alias"):
        assert row[key] == r[key], key
    assert row["answer_extended"] == []
    assert row["single_hops"] == [_hop(h) for h in r["single_hops"]]
    assert row["new_single_hops"] == [_hop(h) for h in r["new_single_hops"]]
    assert row["orig"] == r["orig"]
    if index == 0:  # the case SOURCES.md shows
        assert row["edits"][0]["prompt"] == "Hey Jude was performed by" and row["new_answer"] == "Arabic"
        assert len(row["questions"]) == 3 and row["orig"]["edit_triples_idx"] == [0, 1, 2, 3]


def test_mquake_prompt_files_verbatim_and_relations(built):
    prompts = load(built, "mquake", "prompts", "files")
    files = {
        "multihop": "multihop-prompts.txt",
        "multihop_cot": "multihop-cot-prompts.txt",
        "mello": "MeLLo-prompt.txt",
    }
    assert list(prompts["name"]) == list(files)
    for row in prompts:
        assert row["file"] == "prompts/" + files[row["name"]]
        assert row["text"] == (RAW / "mquake" / row["file"]).read_text(encoding="utf-8")
    assert list(prompts["demos"]) == [16, 5, 4]
    assert not prompts[0]["text"].endswith("\n")  # kept as released

    relations = load(built, "mquake", "relations", "relations")
    cloze = raw("mquake/prompts/templates/cloze_templates.json")
    demos = raw("mquake/prompts/rel-prompts.json")
    assert list(relations["relation_id"]) == list(cloze)
    p17 = relations[list(cloze).index("P17")]
    assert p17["cloze_template"] == "[X] is located in the country of __"
    assert p17["question_template"] == "Which country is [X] located in?" and p17["demos"] == ""  # not in rel-prompts
    with_demos = {r["relation_id"]: r["demos"] for r in relations if r["demos"]}
    assert with_demos == demos and all(len(d.split("\n")) == 8 for d in with_demos.values())
    used = {e["relation_id"] for case in load(built, "mquake", "hard", "edit") for e in case["edits"]}
    assert used <= set(with_demos)  # hop-wise accuracy has demos for every relation of the hard set


def test_mquake_case_becomes_its_edit_requests(built):
    from editeval.data import load_requests
    from editeval.data.mquake import case_requests
    from editeval.data.schema import empty_request
    from editeval.errors import EditevalError

    case = load(built, "mquake", "hard", "edit")[0]
    requests = case_requests(case)
    assert [r["case_id"] for r in requests] == [7417] * 4
    assert requests[1] == empty_request(
        case_id=7417,
        subject="Madonna",
        prompt="The director of Madonna is",
        target_new="Narendra Modi",
        ground_truth="Guy Oseary",
        relation_id="P1037",
        prompt_template="The director of {} is",
    )
    with pytest.raises(EditevalError, match="not an edit-request split"):  # never squashed into one request
        load_requests("mquake", "edit", "hard", root=built)


def _query(q):
    two_hop = q["query_type"] == "two_hop"
    subject = q["subject_id"][0] if isinstance(q["subject_id"], list) else q["subject_id"]
    return {
        "prompt": q["prompt"],
        "answers": q["answers"],
        "query_type": q["query_type"],
        "subject_id": subject,
        "relation": q["relation"],
        "target_ids": q["target_ids"],
        "phrase": q["phrase"] or "",
        "second_relation": q["second_relation"] if two_hop else "",
        "second_hop_target_ids": q["second_hop_target_ids"] if two_hop else [],
    }


def _tests(tests):
    return [
        {
            "test_queries": [_query(q) for q in t["test_queries"]],
            "test_condition": t["test_condition"],
            "condition_queries": [_query(q) for q in t["condition_queries"]],
        }
        for t in tests
    ]


def test_rippleedits_edit_field_by_field(built):
    from editeval.data.rippleedits import CRITERIA

    records = raw(RIPPLE)
    ds = load(built, "rippleedits", "popular_gptj", "edit")
    # record 0 (SOURCES.md's example) and the first with a two-hop query of Compositionality II and
    # a one-element-list subject_id
    listed = next(
        i
        for i, r in enumerate(records)
        if any(
            isinstance(q["subject_id"], list)
            for t in r["Logical_Generalization"]
            for q in t["test_queries"] + t["condition_queries"]
        )
    )
    for index in (0, listed, next(i for i, r in enumerate(records) if r["Compositionality_II"])):
        r, row = records[index], ds[index]
        assert row["case_id"] == index and row["example_type"] == r["example_type"] == "counter_fact"
        assert row["edit"] == r["edit"]
        for key, column in CRITERIA.items():
            assert row[column] == _tests(r[key]), (index, key)
        # the request fields rebuild the edit's sentences exactly
        assert row["prompt"] + " " + row["target_new"] + "." == r["edit"]["prompt"]
        assert row["prompt"] + " " + row["ground_truth"] + "." == r["edit"]["original_fact"]["prompt"]
        assert row["prompt_template"].format(row["subject"]) == row["prompt"]
        assert row["rephrase_prompts"] == row["locality"] == row["portability"] == []
    row = ds[0]
    assert (row["subject"], row["target_new"], row["ground_truth"], row["relation_id"]) == (
        "Leonardo DiCaprio",
        "Syria",
        "United States of America",
        "P27",
    )
    assert row["prompt_template"] == "The name of the country of citizenship of {} is"
    assert "USA" in row["ground_truth_aliases"]
    two_hop = row["compositionality_i"][0]["test_queries"][0]
    assert two_hop["second_relation"] == "CURRENCY" and two_hop["answers"][0]["value"] == "Syrian pound"
    assert row["compositionality_i"][0]["condition_queries"][0]["prompt"] == "The name of the currency in Syria is"


def test_rippleedits_counts_per_criterion_and_readings(built):
    from editeval.data.rippleedits import CRITERIA, GPTJ_TESTS

    ds = load(built, "rippleedits", "popular_gptj", "edit")
    assert {key: sum(len(t) for t in ds[column]) for key, column in CRITERIA.items()} == GPTJ_TESTS
    assert all(row["subject"] in row["prompt"] and row["target_new"] for row in ds)
    text = (built / "rippleedits" / "README.md").read_text(encoding="utf-8")
    assert "## Build notes" not in text  # no ambiguous reading, no label that disagrees


def test_rippleedits_stats_rows(built):
    stats = load(built, "rippleedits", "stats")
    for name, total in (("popular", 11309), ("random", 13387), ("recent", 20709)):
        assert sum(stats[name]["test_count"]) == total
    r = raw("rippleedits/stats/recent_stats.json")
    first_nan = next(i for i, v in r["target_claim_count"].items() if v is None)
    row = stats["recent"][int(first_nan)]
    assert row["target_claim_count"] is None
    for column, values in r.items():
        if column != "target_claim_count":
            assert row[column] == values[first_nan], column
    assert stats["popular"][0]["subject_id"] == "Q38111" and stats["popular"][0]["test_count"] == 21
    # the GPT-J file keeps POPULAR's order: its edits are a subsequence of the statistics rows
    keys = iter(zip(stats["popular"]["subject_id"], stats["popular"]["relation"], stats["popular"]["target_id"]))
    edits = load(built, "rippleedits", "popular_gptj", "edit")["edit"]
    assert all((e["subject_id"], e["relation"], e["target_id"]) in keys for e in edits)


def test_qaedit_record_field_by_field(built):
    records = raw(QAEDIT)
    ds = load(built, "qaedit", "inter_1k", "edit")
    for index in (0, 999):
        r, row = records[index], ds[index]
        assert row["case_id"] == index
        assert (row["subject"], row["prompt"], row["target_new"], row["ground_truth"]) == (
            r["subject"],
            r["prompt"],
            r["target"],
            "",
        )
        assert row["rephrase_prompts"] == [r["rephrase"]]
        assert row["locality"] == [
            {"kind": "nq", "prompt": r["locality"][0]["loc"], "answer": r["locality"][0]["loc_ans"]}
        ]
        assert (row["source"], row["source_id"], row["locality_pairs"]) == (r["source"], r["id"], r["locality"])
    assert ds[0]["target_new"] == "Wilt Chamberlain *"  # verbatim, as SOURCES.md notes
    assert {s: list(ds["source"]).count(s) for s in ("NQ", "TQA", "SQA")} == {"NQ": 247, "TQA": 364, "SQA": 389}
    assert len(set(zip(ds["source"], ds["source_id"]))) == 1000


def test_qaedit_and_rippleedits_load_as_edit_requests(built):
    from editeval.data import load_requests

    requests = load_requests("qaedit", "edit", root=built)
    assert len(requests) == 1000
    assert all(r["prompt"] and r["target_new"] and r["subject"] in r["prompt"] for r in requests)
    assert all(len(r["locality"]) == 1 and len(r["rephrase_prompts"]) == 1 for r in requests)
    ripple = load_requests("rippleedits", "edit", limit=5, root=built)
    assert [r["case_id"] for r in ripple] == [0, 1, 2, 3, 4] and all(r["subject"] in r["prompt"] for r in ripple)


def test_editeval_edit_runs_qaedit(built, tiny_llama_dir, tmp_path, monkeypatch, capsys):
    """`editeval edit --benchmark qaedit` takes its records as ordinary single edits."""
    from editeval.evaluation.results import read_record

    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ft.yaml").write_text("layers: [1]\nnum_steps: 1\nlr: 0.01\nnorm_constraint: null\n")
    code, out, err = cli(
        capsys,
        "edit",
        "--method",
        "ft-m",
        "--model",
        tiny_llama_dir,
        "--benchmark",
        "qaedit",
        "--limit",
        "2",
        "--hparams",
        "ft.yaml",
        "--datasets-dir",
        built,
        "--no-generation",
        "--no-progress",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--out",
        "run.json",
    )
    assert code == 0 and not [line for line in err if line.startswith("error:")], err
    record = read_record(tmp_path / "run.json")
    assert record.meta.n_edits == 2


# ---------------------------------------------------------------------------- refusals


def linked_raw(tmp_path: Path, name: str, copies: tuple[str, ...] = ()) -> Path:
    """A raw folder for NAME: symlinks to the real files, real copies of `copies` (to alter)."""
    from editeval.data.registry import get

    folder = tmp_path / "raw"
    for rel in get(name).raw_files:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel in copies:
            shutil.copyfile(RAW / rel, folder / rel)
        else:
            os.symlink(RAW / rel, folder / rel)
    return folder


def sources_md_for(folder: Path, rel: str, dest: Path, records: int | None = None) -> Path:
    """The real SOURCES.md with `rel`'s size and sha256 recomputed from the altered copy (and its
    record count replaced, if given)."""
    text = (RAW / "SOURCES.md").read_text(encoding="utf-8")
    head = text.index(f"### `{rel}`")
    end = text.find("\n### ", head + 1)
    data = (folder / rel).read_bytes()
    block = re.sub(
        r"- size: [\d,]+ bytes; sha256: `[0-9a-f]{64}`",
        f"- size: {len(data):,} bytes; sha256: `{hashlib.sha256(data).hexdigest()}`",
        text[head:end],
    )
    if records is not None:
        block = re.sub(r"records: \*\*\d+\*\*", f"records: **{records}**", block)
    dest.write_text(text[:head] + block + text[end:], encoding="utf-8")
    return dest


def refused(capsys, folder: Path, out: Path, name: str, *extra) -> str:
    """Build NAME expecting a refusal: exit 2, exactly one stderr line, nothing under `out`."""
    code, _, err = cli(
        capsys, "datasets", "build", name, "--raw-dir", folder, "--out-dir", out, "--no-progress", *extra
    )
    assert code == 2 and len(err) == 1, (code, err)
    assert not out.exists() or not any(out.iterdir())
    return err[0]


def test_tampered_raw_file(capsys, tmp_path):
    folder = linked_raw(tmp_path, "qaedit", copies=(QAEDIT,))
    path = folder / QAEDIT
    path.write_bytes(path.read_bytes().replace(b"Wilt Chamberlain", b"Wilt Chamberlin!", 1))
    line = refused(capsys, folder, tmp_path / "out", "qaedit")
    assert line.startswith(f"error: raw file {path}: sha256 ")
    assert line.endswith(
        "does not match SOURCES.md (640e1d279759263fdaae543a385680d21a55aa3597ca8b597ffd7937fef07c42); the file is not the published one"
    )


def test_wrong_case_count(capsys, tmp_path):
    folder = linked_raw(tmp_path, "mquake", copies=(MQUAKE,))
    cases = raw(MQUAKE)
    (folder / MQUAKE).write_text(json.dumps(cases[:-1]), encoding="utf-8")
    sources = sources_md_for(folder, MQUAKE, tmp_path / "SOURCES.md")  # the sha fits; the count still says 429
    line = refused(capsys, folder, tmp_path / "out", "mquake", "--sources", sources)
    assert line == f"error: raw file {folder / MQUAKE}: 428 records, SOURCES.md says 429"


def test_wrong_test_count(capsys, tmp_path):
    folder = linked_raw(tmp_path, "rippleedits", copies=(RIPPLE,))
    edits = raw(RIPPLE)
    edits[0]["Compositionality_I"].pop()
    (folder / RIPPLE).write_text(json.dumps(edits), encoding="utf-8")
    sources = sources_md_for(folder, RIPPLE, tmp_path / "SOURCES.md")
    line = refused(capsys, folder, tmp_path / "out", "rippleedits", "--sources", sources)
    assert line.startswith(f"error: raw file {folder / RIPPLE}: tests per criterion {{")
    assert "'Compositionality_I': 308" in line and line.endswith("'Forgetfulness': 0}")


def test_wrong_demo_count(capsys, tmp_path):
    """A prompt file's demos are counted against the count SOURCES.md's summary gives it."""
    folder = linked_raw(tmp_path, "mquake")
    text = (RAW / "SOURCES.md").read_text(encoding="utf-8")
    row = "| `mquake/prompts/multihop-prompts.txt` | 16 demos |"
    assert row in text
    (tmp_path / "SOURCES.md").write_text(text.replace(row, row.replace("16", "15")), encoding="utf-8")
    line = refused(capsys, folder, tmp_path / "out", "mquake", "--sources", tmp_path / "SOURCES.md")
    rel = "mquake/prompts/multihop-prompts.txt"
    assert line == f"error: raw file {folder / rel}: 16 demos, SOURCES.md says 15"


def test_missing_statistics_file(capsys, tmp_path):
    folder = linked_raw(tmp_path, "rippleedits")
    stats = folder / "rippleedits/stats/random_stats.json"
    stats.unlink()
    line = refused(capsys, folder, tmp_path / "out", "rippleedits")
    assert line.startswith(f"error: raw file missing: {stats}")


# ---------------------------------------------------------------------------- full sets


def test_a_full_set_that_is_not_the_published_file(capsys, tmp_path):
    """A file at a full set's path is checked by the official git blob id: a copy of the subset is refused."""
    folder = linked_raw(tmp_path, "qaedit")
    shutil.copyfile(RAW / QAEDIT, folder / "qaedit/QAEdit.json")
    line = refused(capsys, folder, tmp_path / "out", "qaedit")
    assert line == (
        f"error: raw file {folder / 'qaedit/QAEdit.json'}: git blob id e5e743b4c1e391f8da75e92d312687063d8d2990 "
        "does not match the published file's (5f95260c4b14490eb44019f22253549ac866da1d); the file is not the published one"
    )


def _with_full_set(monkeypatch, name: str, config: str, **changes):
    """Register NAME with full set CONFIG changed (its blob id set to a stand-in file's, its count)."""
    from editeval.data import registry

    bench = registry.BENCHMARKS[name]
    fulls = tuple(dataclasses.replace(f, **changes) if f.config == config else f for f in bench.full_sets)
    monkeypatch.setitem(registry.BENCHMARKS, name, dataclasses.replace(bench, full_sets=fulls))


def test_a_full_set_builds_as_its_own_config(capsys, tmp_path, monkeypatch):
    """With the file in the raw folder, the same builder adds the config: MQuAKE (count checked) and
    QAEdit (no count stated), both stood in for by their subset files."""
    import datasets
    from editeval.data.sources import git_blob_id

    folder = linked_raw(tmp_path, "mquake")
    shutil.copyfile(RAW / MQUAKE, folder / "mquake/MQuAKE-T.json")
    _with_full_set(monkeypatch, "mquake", "t", blob=git_blob_id(RAW / MQUAKE), count=429)
    code, out, err = cli(
        capsys, "datasets", "build", "mquake", "--raw-dir", folder, "--out-dir", tmp_path / "out", "--no-progress"
    )
    assert code == 0, err
    assert ["mquake", "t", "edit", "429"] in [line.split() for line in out.splitlines()]
    t = datasets.load_dataset(str(tmp_path / "out" / "mquake"), "t", split="edit")
    assert len(t) == 429 and t[0]["case_id"] == 7417
    assert "| `t` | `edit` | 429 | `mquake/MQuAKE-T.json` |" in (tmp_path / "out/mquake/README.md").read_text()

    capsys.readouterr()  # what loading printed
    _with_full_set(monkeypatch, "mquake", "t", blob=git_blob_id(RAW / MQUAKE), count=3000)  # a stated count is checked
    line = refused(capsys, folder, tmp_path / "out2", "mquake")
    assert line == f"error: raw file {folder / 'mquake/MQuAKE-T.json'}: 429 records, SOURCES.md says 3000"

    folder = linked_raw(tmp_path / "q", "qaedit")
    shutil.copyfile(RAW / QAEDIT, folder / "qaedit/QAEdit.json")
    _with_full_set(monkeypatch, "qaedit", "full", blob=git_blob_id(RAW / QAEDIT))
    code, out, err = cli(
        capsys, "datasets", "build", "qaedit", "--raw-dir", folder, "--out-dir", tmp_path / "out3", "--no-progress"
    )
    assert code == 0, err
    full = datasets.load_dataset(str(tmp_path / "out3" / "qaedit"), "full", split="edit")
    assert len(full) == 1000 and full[0]["target_new"] == "Wilt Chamberlain *"


def test_a_full_rippleedits_set_is_checked_against_the_statistics(capsys, tmp_path, monkeypatch):
    """Full POPULAR must have the edits of popular_stats.json, edit by edit: the GPT-J file does not."""
    from editeval.data.sources import git_blob_id

    folder = linked_raw(tmp_path, "rippleedits")
    shutil.copyfile(RAW / RIPPLE, folder / "rippleedits/popular.json")
    _with_full_set(monkeypatch, "rippleedits", "popular", blob=git_blob_id(RAW / RIPPLE), count=710)
    line = refused(capsys, folder, tmp_path / "out", "rippleedits")
    assert (
        line
        == f"error: raw file {folder / 'rippleedits/popular.json'}: 710 edits, rippleedits/stats/popular_stats.json has 885"
    )


# ---------------------------------------------------------------------------- SOURCES.md group sections


def test_group_sections_are_read(tmp_path):
    from editeval.data.sources import SOURCES
    from editeval.data.sources_md import parse_sources_md
    from editeval.errors import EditevalError

    table = parse_sources_md(RAW / "SOURCES.md")
    assert table["mquake/prompts/rel-prompts.json"] == SOURCES["mquake/prompts/rel-prompts.json"]
    assert table["mquake/prompts/rel-prompts.json"].format == "json_object"
    assert table["mquake/prompts/MeLLo-prompt.txt"].records == 4
    assert table["rippleedits/stats/random_stats.json"].records == 1922
    assert table["rippleedits/stats/random_stats.json"].format == "pandas_json"
    text = (RAW / "SOURCES.md").read_text(encoding="utf-8")
    row = "| `mquake/prompts/rel-prompts.json` | 37 relations |"
    (tmp_path / "S.md").write_text(text.replace(row, ""), encoding="utf-8")
    with pytest.raises(EditevalError, match=r"lists rel-prompts\.json, but no summary row gives its count$"):
        parse_sources_md(tmp_path / "S.md")
    (tmp_path / "S.md").write_text(text.replace("**885 / 1922 / 1948**", "**885 / 1922**"), encoding="utf-8")
    with pytest.raises(EditevalError, match=r"has an unreadable record count '885 / 1922'$"):
        parse_sources_md(tmp_path / "S.md")
