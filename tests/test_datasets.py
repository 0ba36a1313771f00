"""The benchmarks as Hugging Face datasets: every config's split sizes and features, real values,
cards, deterministic builds, and the list / show / publish commands.

All benchmarks are built once per session into a temp folder from the real raw files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from editeval.runtime.paths import REPO_ROOT, raw_data_dir

RAW = raw_data_dir()
pytestmark = pytest.mark.needs_raw  # every test reads ../shared/data/raw (skipped with a reason without it)


@pytest.fixture(scope="module")
def hf_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf-datasets-cache")


@pytest.fixture(autouse=True)
def hf_cache(hf_cache_dir, monkeypatch):
    """Keep `datasets`' Arrow cache of these test builds out of the user's cache: a folder of this
    module's, patched in for each test only (the patch is undone after it; no other module sees it)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(hf_cache_dir))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(hf_cache_dir))


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    """Every benchmark, built once from the real raw files."""
    from editeval.data.build import build_benchmarks

    out = tmp_path_factory.mktemp("datasets")
    build_benchmarks(out_dir=out, progress=False)
    return out


def load(built, name, config=None, split=None):
    import datasets

    return datasets.load_dataset(str(built / name), config, split=split)


def run_cli(capsys, *argv):
    """Run `editeval ARGV` in-process; (exit code, stdout, stderr)."""
    from editeval.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


# ---------------------------------------------------------------------------- sizes and features

# the raw file each split is built from, where one raw record makes one row (SOURCES.md's count is
# then the split's size); for a JSON dict, the key whose records are the rows
ONE_TO_ONE = {
    ("zsre", "default", "edit"): "portability/zsre_mend_eval_portability_gpt4.json",
    ("zsre", "default", "knowedit_test"): "knowedit/ZsRE/ZsRE-test-all.json",
    ("zsre", "default", "train"): "zsre/zsre_mend_train-1k.json",
    ("counterfact", "default", "edit"): "counterfact/counterfact-edit.json",
    ("counterfact", "default", "train"): "counterfact/counterfact-train.json",
    ("counterfact", "default", "val"): "counterfact/counterfact-val.json",
    ("portability", "subject_replace", "zsre"): "portability/zsre_subject_replace.json",
    ("portability", "subject_replace", "counterfact"): "portability/counterfact_subject_replace.json",
    ("portability", "inverse_relation", "zsre"): "portability/zsre_inverse_relation.json",
    ("portability", "one_hop", "zsre"): "portability/zsre_mend_eval_portability_gpt4.json",
    ("portability", "one_hop", "counterfact"): "portability/counterfact_portability_gpt4.json",
    ("locality", "other_attribution", "counterfact"): "locality/counterfact_other_attribution.json",
    ("locality", "distracting_neighbor", "counterfact"): "locality/counterfact_distracting_neighbor.json",
    ("locality", "other_task", "piqa"): "locality/commonsense_task/piqa_valid.jsonl",
    ("knowedit", "wiki_recent", "train"): "knowedit/wiki_recent/recent_train.json",
    ("knowedit", "wiki_counterfact", "train"): "knowedit/wiki_counterfact/train_cf.json",
    ("knowedit", "wiki_counterfact", "test"): "knowedit/wiki_counterfact/test_cf-generate-10.jsonl",
    ("knowedit", "wikibio", "train"): "knowedit/WikiBio/wikibio-train-all.json",
    ("knowedit", "wikibio", "test"): "knowedit/WikiBio/wikibio-test-all.json",
    ("knowedit", "convsent", "val"): "knowedit/Convsent/blender_val.json",
    ("knowedit", "convsent", "test"): "knowedit/Convsent/blender_test.json",
    ("knowedit", "sanitation", "train"): ("knowedit/Sanitation/trivia_qa_train.json", "K_F"),
    ("knowedit", "sanitation", "test"): ("knowedit/Sanitation/trivia_qa_test.json", "success"),
    ("knowedit", "zsre", "test"): "knowedit/ZsRE/ZsRE-test-all.json",
    ("mquake", "hard", "edit"): "mquake/MQuAKE-hard.json",
    ("mquake", "relations", "relations"): "mquake/prompts/templates/cloze_templates.json",
    ("rippleedits", "popular_gptj", "edit"): "rippleedits/gpt-j-popular.json",
    ("rippleedits", "stats", "popular"): "rippleedits/stats/popular_stats.json",
    ("rippleedits", "stats", "random"): "rippleedits/stats/random_stats.json",
    ("rippleedits", "stats", "recent"): "rippleedits/stats/recent_stats.json",
    ("qaedit", "inter_1k", "edit"): "qaedit/QAEdit_inter_1k.json",
}
# the splits that merge several files: their sizes as the issue gives them
MERGED = {
    ("counterfact", "full", "edit"): 1129,  # distinct cases of One-hop ∪ Subject-Replace ∪ locality
    ("mquake", "prompts", "files"): 3,  # one row per multi-hop prompt file
}


def _count(source) -> int:
    from editeval.data.sources import SOURCES

    path, key = source if isinstance(source, tuple) else (source, None)
    records = SOURCES[path].records
    return dict(records)[key] if key else records


def _expected() -> dict[tuple[str, str], dict[str, int]]:
    sizes = {**{k: _count(src) for k, src in ONE_TO_ONE.items()}, **MERGED}
    out: dict[tuple[str, str], dict[str, int]] = {}
    for (name, config, split), n in sizes.items():
        out.setdefault((name, config), {})[split] = n
    return out


EXPECTED = _expected()


def test_expected_sizes_come_from_sources_md():
    """The derived sizes are the issue's (a spot check) and every one-to-one split names its raw file."""
    from editeval.data.registry import BENCHMARKS

    assert EXPECTED[("portability", "one_hop")] == {"zsre": 1037, "counterfact": 1031}
    assert EXPECTED[("counterfact", "default")] == {"edit": 10000, "train": 10000, "val": 1919}
    assert EXPECTED[("knowedit", "sanitation")] == {"train": 80, "test": 80}
    assert EXPECTED[("locality", "other_task")] == {"piqa": 1838}
    for b in BENCHMARKS.values():
        for c in b.configs:
            for split in c.splits:
                key = (b.name, c.name, split.name)
                assert key in ONE_TO_ONE or key in MERGED, key
                if key in ONE_TO_ONE:
                    source = ONE_TO_ONE[key]
                    assert (source[0] if isinstance(source, tuple) else source) in split.source, (key, split.source)


def test_registry_matches_the_issue():
    from editeval.data.registry import BENCHMARKS

    declared = {(b.name, c.name): {s.name: s.count for s in c.splits} for b in BENCHMARKS.values() for c in b.configs}
    assert declared == EXPECTED


@pytest.mark.parametrize("name,config", sorted(EXPECTED))
def test_every_config_loads_with_its_sizes_and_features(built, name, config):
    from editeval.data.registry import get

    spec = get(name).config(config)
    ds = load(built, name, config)
    assert {split: len(d) for split, d in ds.items()} == EXPECTED[(name, config)]
    for d in ds.values():
        assert d.features == spec.features


def test_load_dataset_from_folder_without_config(built):
    ds = load(built, "zsre", split="edit")
    assert len(ds) == 1037
    assert len(load(built, "counterfact", split="val")) == 1919  # default config


def test_edit_request_features_everywhere_but_the_other_record_kinds(built):
    """Fact-edit configs have exactly the edit-request features; a few add their own columns to
    them; the rest hold other records (PIQA questions, MQuAKE cases and prompts, statistics)."""
    from editeval.data.registry import BENCHMARKS
    from editeval.data.schema import EDIT_REQUEST_FEATURES

    extended = {
        ("knowedit", "convsent"): {"target_sentiment", "positive_responses", "negative_responses"},
        ("rippleedits", "popular_gptj"): {
            "example_type",
            "edit",
            "target_new_aliases",
            "ground_truth_aliases",
            "logical_generalization",
            "compositionality_i",
            "compositionality_ii",
            "subject_aliasing",
            "relation_specificity",
            "forgetfulness",
        },
        ("qaedit", "inter_1k"): {"source", "source_id", "locality_pairs"},
    }
    other = {
        ("locality", "other_task"),
        ("mquake", "hard"),
        ("mquake", "prompts"),
        ("mquake", "relations"),
        ("rippleedits", "stats"),
    }
    for bench in BENCHMARKS.values():
        for c in bench.configs:
            key = (bench.name, c.name)
            if key in other:
                assert "prompt" not in c.features or "target_new" not in c.features, key
            elif key in extended:
                assert all(c.features[k] == v for k, v in EDIT_REQUEST_FEATURES.items()), key
                assert set(c.features) - set(EDIT_REQUEST_FEATURES) == extended[key], key
            else:
                assert c.features == EDIT_REQUEST_FEATURES, key


# ---------------------------------------------------------------------------- real values


def test_counterfact_case_0(built):
    row = load(built, "counterfact", split="edit")[0]
    assert row["case_id"] == 0
    assert row["subject"] == "Danielle Darrieux"
    assert row["prompt"] == "The mother tongue of Danielle Darrieux is"
    assert row["target_new"] == "English"
    assert row["ground_truth"] == "French"
    assert row["rephrase_prompts"] == ["Where Danielle Darrieux is from, people speak the language of"]
    assert row["locality"] == [
        {"kind": "neighborhood", "prompt": "Michel Rocard is a native speaker of", "answer": "French"}
    ]
    assert row["prompt_template"] == "The mother tongue of {} is"


def test_counterfact_splits_partition_case_ids(built):
    ids = [set(load(built, "counterfact", split=s)["case_id"]) for s in ("edit", "train", "val")]
    assert sum(map(len, ids)) == len(set().union(*ids)) == 21919


def test_counterfact_full_schema(built):
    ds = load(built, "counterfact", "full", "edit")
    ids = list(ds["case_id"])
    assert len(set(ids)) == 1129 and ids == sorted(ids)
    row = ds[ds["case_id"].index(4482)]
    assert (row["subject"], row["target_new"], row["ground_truth"], row["relation_id"]) == (
        "Spike Hughes",
        "Philadelphia",
        "London",
        "P19",
    )
    assert row["prompt"] == "Spike Hughes originates from" and row["prompt_template"] == "{} originates from"
    kinds = [item["kind"] for item in row["locality"]]
    assert kinds.count("neighborhood") == 10 and kinds.count("distracting_neighbor") == 10
    assert {"kind": "other_attribution", "prompt": "What is Spike Hughes an instance of?", "answer": "human"} in row[
        "locality"
    ]
    assert row["portability"] == [
        {
            "kind": "one_hop",
            "answer": "Cheesesteaks",
            "prompt": "What famous food is associated with the city where Spike Hughes originates from?",
        }
    ]
    assert len(row["neighborhood_prompts"]) == len(row["attribute_prompts"]) == len(row["generation_prompts"]) == 10
    sewall = ds[ds["case_id"].index(4496)]  # in the One-hop and the Subject-Replace file
    assert [p["kind"] for p in sewall["portability"]] == ["one_hop", "subject_replace"]
    assert sewall["portability"][1] == {
        "kind": "subject_replace",
        "prompt": "Mary Eliza Wright passed away in",
        "answer": "Birmingham",
    }
    agency = ds[ds["case_id"].index(1725)]  # only in the Subject-Replace file
    assert agency["portability"] == [
        {"kind": "subject_replace", "prompt": "intelligence service's area of work is", "answer": "physics"}
    ]
    assert [item["kind"] for item in agency["locality"]] == ["neighborhood"] * 10


def test_zsre_records(built):
    edit = load(built, "zsre", split="edit")[0]
    assert edit["subject"] == "IAAF Combined Events Challenge"
    assert edit["prompt"] == "When was the inception of IAAF Combined Events Challenge?"
    assert (edit["target_new"], edit["ground_truth"]) == ("2006", "1998")
    assert edit["rephrase_prompts"] == ["When was the IAAF Combined Events Challenge launched?"]
    assert edit["locality"] == [
        {
            "kind": "nq",
            "prompt": "nq question: what is the name of the last episode of spongebob",
            "answer": "The String",
        }
    ]
    assert edit["portability"][0]["kind"] == "one_hop" and edit["portability"][0]["answer"] == "Athletics"
    train = load(built, "zsre", split="train")[0]
    assert (train["subject"], train["target_new"], train["ground_truth"]) == (
        "UniFirst",
        "unmanned aircraft",
        "uniform",
    )
    assert train["portability"] == []
    kt = load(built, "zsre", split="knowedit_test")[0]
    assert (kt["subject"], kt["target_new"], kt["ground_truth"]) == ("Epaspidoceras", "Noctuidae", "Aspidoceratidae")
    assert kt["locality"][0] == {
        "kind": "relation_specificity",
        "prompt": "The taxon rank of Epaspidoceras is",
        "answer": "genus",
    }
    assert kt["portability"] == [
        {
            "kind": "reasoning",
            "answer": "Owlet moths",
            "prompt": "What is the common name for the family Epaspidoceras belongs to?",
        }
    ]


def test_portability_records(built):
    inverse = load(built, "portability", "inverse_relation", "zsre")[0]
    assert inverse["portability"] == [
        {"kind": "inverse_relation", "prompt": "Who is Marian Clairmont's sister?", "answer": "Claire Clairmont"}
    ]
    assert inverse["locality"] == []  # the file carries none
    replace = load(built, "portability", "subject_replace", "zsre")[0]
    assert replace["portability"] == [
        {"kind": "subject_replace", "prompt": "What is the constellation of UGC 6870?", "answer": "Triangulum"}
    ]
    one_hop = load(built, "portability", "one_hop")
    assert list(one_hop["zsre"]["prompt"]) == list(load(built, "zsre", split="edit")["prompt"])
    assert all(len(p) == 1 and p[0]["kind"] == "one_hop" for p in one_hop["counterfact"]["portability"])
    assert all(item["kind"] == "neighborhood" for loc in one_hop["counterfact"]["locality"] for item in loc)


def test_locality_records(built):
    other = load(built, "locality", "other_attribution", "counterfact")
    assert all([item["kind"] for item in loc] == ["other_attribution"] for loc in other["locality"])
    distract = load(built, "locality", "distracting_neighbor", "counterfact")
    row = distract[distract["case_id"].index(4482)]
    assert len(row["locality"]) == 10
    assert row["locality"][0] == {
        "kind": "distracting_neighbor",
        "answer": "London",
        "prompt": "Spike Hughes originates from Philadelphia. Max Mosley originates from",
    }
    piqa = load(built, "locality", "other_task", "piqa")
    assert piqa.features["label"].names == ["sol1", "sol2"]
    assert piqa[0]["goal"] == "How do I ready a guinea pig cage for it's new occupants?" and piqa[0]["label"] == 0
    assert set(piqa["label"]) == {0, 1}


def test_knowedit_records(built):
    cf = load(built, "knowedit", "wiki_counterfact", "test")
    assert "generate_prompt" not in cf.column_names
    row = cf[0]
    assert (row["subject"], row["target_new"], row["ground_truth"]) == (
        "Leonardo DiCaprio",
        "Syria",
        "United States of America",
    )
    assert {
        "kind": "reasoning",
        "answer": "Syrian pound",
        "prompt": "The name of the currency in the country of citizenship of Leonardo DiCaprio is",
    } in row["portability"]
    assert {item["kind"] for item in row["locality"]} == {"relation_specificity", "forgetfulness"}
    recent = load(built, "knowedit", "wiki_recent", "train")[0]
    assert (recent["subject"], recent["target_new"], recent["ground_truth"]) == ("Ingrīda Amantova", "female", "")
    bio = load(built, "knowedit", "wikibio", "test")[0]
    assert bio["subject"] == "john russell reynolds" and bio["prompt"].startswith(
        "This is a Wikipedia passage about john russell reynolds."
    )
    assert bio["locality"][0] == {
        "kind": "relation_specificity",
        "prompt": "The field of work of john russell reynolds is",
        "answer": "medicine",
    }
    conv = load(built, "knowedit", "convsent", "test")
    assert conv[0]["subject"] == "Estero" and conv[0]["target_sentiment"] == "positive"
    assert conv[0]["target_new"] == "I really like his style." and conv[1]["target_sentiment"] == "negative"
    assert len(conv[0]["rephrase_prompts"]) == 12
    for split in ("train", "test"):
        san = load(built, "knowedit", "sanitation", split)
        retained = [item["prompt"] for loc in san["locality"] for item in loc]
        assert len(retained) == 453 and all(t == "I don't know." for t in san["target_new"])
    for config in ("wiki_recent", "wiki_counterfact", "zsre"):
        for d in load(built, "knowedit", config).values():
            assert all(item["answer"] for items in list(d["locality"]) + list(d["portability"]) for item in items)


# ---------------------------------------------------------------------------- cards and determinism


def test_cards_declare_configs_and_features(built):
    from editeval.data.registry import BENCHMARKS

    for bench in BENCHMARKS.values():
        text = (built / bench.name / "README.md").read_text(encoding="utf-8")
        meta = yaml.safe_load(text.split("---\n")[1])
        assert [c["config_name"] for c in meta["configs"]] == [c.name for c in bench.configs]
        for entry, info, spec in zip(meta["configs"], meta["dataset_info"], bench.configs):
            assert [f["split"] for f in entry["data_files"]] == [s.name for s in spec.splits]
            assert [s["num_examples"] for s in info["splits"]] == [s.count for s in spec.splits]
            assert [f["name"] for f in info["features"]] == list(spec.features)
        for heading in ("## Fields", "## How the metrics use the fields", "## Source and licence", "## Citation"):
            assert heading in text, (bench.name, heading)


def test_committed_cards_are_up_to_date(built):
    from editeval.data.registry import BENCHMARKS

    for name in BENCHMARKS:
        committed = REPO_ROOT / "datasets" / name / "README.md"
        assert committed.read_text(encoding="utf-8") == (built / name / "README.md").read_text(encoding="utf-8"), (
            f"{committed} is stale: run `editeval datasets build {name}`"
        )


def test_build_is_deterministic(built, tmp_path):
    from editeval.data.build import build_benchmarks

    build_benchmarks(["zsre", "locality"], out_dir=tmp_path, progress=False)
    for name in ("zsre", "locality"):
        files = sorted(p.relative_to(tmp_path / name) for p in (tmp_path / name).rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(built / name) for p in (built / name).rglob("*") if p.is_file())
        for rel in files:
            assert (tmp_path / name / rel).read_bytes() == (built / name / rel).read_bytes(), rel
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locality", "zsre"]  # no temp folders left


def test_sources_table_matches_sources_md():
    from editeval.data.sources import SOURCES
    from editeval.data.sources_md import parse_sources_md

    assert parse_sources_md(RAW / "SOURCES.md") == SOURCES


# ---------------------------------------------------------------------------- commands


def test_list_shows_every_split(built, capsys):
    code, out, _ = run_cli(capsys, "datasets", "list", "--datasets-dir", str(built))
    assert code == 0
    lines = out.splitlines()
    assert any(line.split()[:5] == ["counterfact", "default", "edit", "10,000", "10,000"] for line in lines)
    assert any(line.split()[:5] == ["knowedit", "sanitation", "test", "80", "80"] for line in lines)
    assert (
        sum(
            1
            for line in lines
            if line.split()[:1] in (["zsre"], ["counterfact"], ["portability"], ["locality"], ["knowedit"])
        )
        == 25
    )


def test_show_prints_records(built, capsys):
    import json

    code, out, _ = run_cli(
        capsys, "datasets", "show", "zsre", "--split", "edit", "-n", "2", "--datasets-dir", str(built)
    )
    assert code == 0
    assert out.startswith("# zsre / default / edit: 1,037 rows; showing 2")
    assert '"subject": "IAAF Combined Events Challenge"' in out
    code, out, _ = run_cli(
        capsys, "datasets", "show", "locality", "--config", "other_task", "-n", "1", "--datasets-dir", str(built)
    )
    assert code == 0 and json.loads(out.split("\n", 1)[1])["sol1"].startswith("Provide the guinea pig")


def test_publish_dry_run_lists_files_with_sizes(built, capsys):
    code, out, _ = run_cli(
        capsys, "datasets", "publish", "zsre", "--repo-id", "editeval/zsre", "--dry-run", "--datasets-dir", str(built)
    )
    assert code == 0
    folder = built / "zsre"
    files = [folder / "README.md"] + sorted((folder / "data").rglob("*.parquet"))
    for f in files:
        rel = str(f.relative_to(folder))
        assert any(line.split() == [rel, f"{f.stat().st_size:,}"] for line in out.splitlines()), rel
    total = sum(f.stat().st_size for f in files)
    assert f"total: {len(files)} files, {total:,} bytes" in out


def test_publish_refuses_without_token(built, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")}
    env["HF_HOME"] = str(tmp_path / "hf-home")  # no stored login either
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "editeval",
            "datasets",
            "publish",
            "zsre",
            "--repo-id",
            "editeval/zsre",
            "--datasets-dir",
            str(built),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: no Hugging Face token: set HF_TOKEN or run `hf auth login`, then publish again (--dry-run needs none)"
    ]
