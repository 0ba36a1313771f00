"""Bad input to `editeval datasets build`: one clear error line naming the file / record / key,
exit code 2, and no half-written dataset folder. Uses small fake raw folders holding copies of the
files a benchmark needs (altered where a test says so; the others are symlinks to the real ones).
Every refusal of the raw-data checks against SOURCES.md is here: sha256, record counts (lists and
JSON dicts), JSON / JSON Lines / UTF-8 parsing, the container type, a file without an entry, every
`parse_sources_md` error, and the builder's own row counts (`_check_shape`)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from editeval.runtime.paths import raw_data_dir

RAW = raw_data_dir()
pytestmark = pytest.mark.needs_raw  # every test reads ../shared/data/raw (skipped with a reason without it)

ZSRE_FILES = (
    "portability/zsre_mend_eval_portability_gpt4.json",
    "knowedit/ZsRE/ZsRE-test-all.json",
    "zsre/zsre_mend_train-1k.json",
)
TRAIN = "zsre/zsre_mend_train-1k.json"


@pytest.fixture
def fake_raw(tmp_path) -> Path:
    raw = tmp_path / "raw"
    for rel in ZSRE_FILES:
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(RAW / rel, raw / rel)
    return raw


def build(capsys, raw: Path, out: Path, *extra: str, name: str = "zsre"):
    """`editeval datasets build NAME` in-process; (exit code, stderr lines)."""
    from editeval.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["datasets", "build", name, "--raw-dir", str(raw), "--out-dir", str(out), "--no-progress", *extra])
    _, err = capsys.readouterr()
    return exit_info.value.code, err.strip().splitlines()


def linked_raw(tmp_path: Path, name: str, copies: tuple[str, ...] = ()) -> Path:
    """A raw folder for benchmark NAME: symlinks to the real files, real copies of `copies` (to alter)."""
    from editeval.data.registry import get

    raw = tmp_path / "raw"
    for rel in get(name).raw_files:
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel in copies:
            shutil.copyfile(RAW / rel, raw / rel)
        else:
            os.symlink(RAW / rel, raw / rel)
    return raw


def sources_md_for(raw: Path, rel: str, dest: Path, records: int | None = None) -> Path:
    """The real SOURCES.md with `rel`'s size and sha256 recomputed from the altered copy (and its
    record count replaced, if given): the sha check still runs, against honest values."""
    text = (RAW / "SOURCES.md").read_text(encoding="utf-8")
    head = text.index(f"### `{rel}`")
    end = text.find("\n### ", head + 1)
    block = text[head:end]
    data = (raw / rel).read_bytes()
    block = re.sub(
        r"- size: [\d,]+ bytes; sha256: `[0-9a-f]{64}`",
        f"- size: {len(data):,} bytes; sha256: `{hashlib.sha256(data).hexdigest()}`",
        block,
    )
    if records is not None:
        block = re.sub(r"records: \*\*\d+\*\*", f"records: **{records}**", block)
    dest.write_text(text[:head] + block + text[end:], encoding="utf-8")
    return dest


def assert_nothing_written(out: Path):
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


def test_unknown_benchmark(capsys, tmp_path):
    from editeval.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["datasets", "build", "zsre", "nope", "--out-dir", str(tmp_path / "out")])
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert err.strip().splitlines() == [
        "error: unknown benchmark 'nope': choose from zsre, counterfact, portability, locality, knowedit, mquake, "
        "rippleedits, qaedit"
    ]
    assert_nothing_written(tmp_path / "out")  # zsre was not built either


def test_unknown_benchmark_from_the_shell():
    proc = subprocess.run(
        [sys.executable, "-m", "editeval", "datasets", "show", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown benchmark 'nope': choose from zsre, counterfact, portability, locality, knowedit, mquake, "
        "rippleedits, qaedit"
    ]


def test_missing_raw_file(capsys, fake_raw, tmp_path):
    (fake_raw / TRAIN).unlink()
    code, err = build(capsys, fake_raw, tmp_path / "out")
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: raw file missing: {fake_raw / TRAIN}")
    assert_nothing_written(tmp_path / "out")


def test_wrong_sha256(capsys, fake_raw, tmp_path):
    path = fake_raw / TRAIN
    path.write_bytes(path.read_bytes().replace(b"UniFirst", b"UniLast!", 1))
    code, err = build(capsys, fake_raw, tmp_path / "out")
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: raw file {path}: sha256 ")
    assert "does not match SOURCES.md (e62596101d8ed551889c26c0d2a5277f92eaef3b14416d8eaee39b04a244ab60)" in err[0]
    assert_nothing_written(tmp_path / "out")


def test_record_missing_a_required_key(capsys, fake_raw, tmp_path):
    records = json.loads((fake_raw / TRAIN).read_text(encoding="utf-8"))
    del records[17]["alt"]
    (fake_raw / TRAIN).write_text(json.dumps(records), encoding="utf-8")
    sources = sources_md_for(fake_raw, TRAIN, tmp_path / "SOURCES.md")
    code, err = build(capsys, fake_raw, tmp_path / "out", "--sources", str(sources))
    assert code == 2
    assert err == [f"error: {TRAIN} record 17: missing required key 'alt'"]
    assert_nothing_written(tmp_path / "out")


def test_record_count_differs(capsys, fake_raw, tmp_path):
    records = json.loads((fake_raw / TRAIN).read_text(encoding="utf-8"))
    (fake_raw / TRAIN).write_text(json.dumps(records[:-1]), encoding="utf-8")
    sources = sources_md_for(fake_raw, TRAIN, tmp_path / "SOURCES.md")  # sha fits, count still says 1000
    code, err = build(capsys, fake_raw, tmp_path / "out", "--sources", str(sources))
    assert code == 2
    assert err == [f"error: raw file {fake_raw / TRAIN}: 999 records, SOURCES.md says 1000"]
    assert_nothing_written(tmp_path / "out")


def test_failed_rebuild_keeps_the_previous_folder(capsys, fake_raw, tmp_path):
    out = tmp_path / "out"
    code, _ = build(capsys, fake_raw, out)
    assert code == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    records = json.loads((fake_raw / TRAIN).read_text(encoding="utf-8"))
    records[3]["answers"] = "uniform"  # a string where a list is required
    (fake_raw / TRAIN).write_text(json.dumps(records), encoding="utf-8")
    sources = sources_md_for(fake_raw, TRAIN, tmp_path / "SOURCES.md")
    code, err = build(capsys, fake_raw, out, "--sources", str(sources))
    assert code == 2
    assert err == [f"error: {TRAIN} record 3: key 'answers' must be a list, got str"]
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in out.iterdir()] == ["zsre"]


def test_failure_while_writing_leaves_no_folder(fake_raw, tmp_path, monkeypatch):
    """A failure after some splits were written removes the temp folder; the target never appears."""
    import pyarrow.parquet as pq

    from editeval.data.build import build_benchmarks

    calls = []

    def failing_write(table, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(table, path, **kwargs)

    real_write = pq.write_table
    monkeypatch.setattr(pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        build_benchmarks(["zsre"], raw_dir=fake_raw, out_dir=tmp_path / "out", progress=False)
    assert len(calls) == 2
    assert_nothing_written(tmp_path / "out")


def test_record_checks_without_sha():
    """The record validation is a function of its own: builders call it on parsed records."""
    from editeval.data.common import CF_FULL_REQUIRED
    from editeval.data.sources import check_records
    from editeval.errors import EditevalError

    good = {
        "case_id": 1,
        "requested_rewrite": {
            "prompt": "{} is in",
            "subject": "X",
            "relation_id": "P1",
            "target_new": {"str": "A"},
            "target_true": {"str": "B"},
        },
        "paraphrase_prompts": [],
        "neighborhood_prompts": [],
        "attribute_prompts": [],
        "generation_prompts": [],
    }
    check_records([good], CF_FULL_REQUIRED, "cf.json")
    bad = json.loads(json.dumps(good))
    del bad["requested_rewrite"]["target_true"]["str"]
    with pytest.raises(
        EditevalError, match=r"^cf\.json record 1: missing required key 'requested_rewrite\.target_true\.str'$"
    ):
        check_records([good, bad], CF_FULL_REQUIRED, "cf.json")
    with pytest.raises(EditevalError, match=r"^cf\.json record 0: expected an object, got list$"):
        check_records([[]], CF_FULL_REQUIRED, "cf.json")


# ---------------------------------------------------------------------------- every SOURCES.md check

SANITATION_TEST = "knowedit/Sanitation/trivia_qa_test.json"
PIQA = "locality/commonsense_task/piqa_valid.jsonl"


def refused(capsys, raw: Path, out: Path, *extra: str, name: str = "zsre") -> str:
    """Build NAME expecting a refusal: exit 2, exactly one stderr line, nothing under `out`."""
    code, err = build(capsys, raw, out, *extra, name=name)
    assert code == 2 and len(err) == 1, (code, err)
    assert_nothing_written(out)
    return err[0]


def test_json_dict_record_counts_differ(capsys, tmp_path):
    """Sanitation's test file is a JSON dict of two record lists (success: 80 / locality: 453)."""
    raw = linked_raw(tmp_path, "knowedit", copies=(SANITATION_TEST,))
    data = json.loads((raw / SANITATION_TEST).read_text(encoding="utf-8"))
    assert {k: len(v) for k, v in data.items()} == {"success": 80, "locality": 453}
    data["locality"].pop()
    (raw / SANITATION_TEST).write_text(json.dumps(data), encoding="utf-8")
    sources = sources_md_for(raw, SANITATION_TEST, tmp_path / "SOURCES.md")  # sha fits, counts still 80 / 453
    line = refused(capsys, raw, tmp_path / "out", "--sources", str(sources), name="knowedit")
    assert line == (
        f"error: raw file {raw / SANITATION_TEST}: record counts {{'success': 80, 'locality': 452}} "
        "do not match SOURCES.md {'success': 80, 'locality': 453}"
    )


def test_json_dict_given_a_list(capsys, tmp_path):
    raw = linked_raw(tmp_path, "knowedit", copies=(SANITATION_TEST,))
    data = json.loads((raw / SANITATION_TEST).read_text(encoding="utf-8"))
    (raw / SANITATION_TEST).write_text(json.dumps(data["success"]), encoding="utf-8")
    sources = sources_md_for(raw, SANITATION_TEST, tmp_path / "SOURCES.md")
    line = refused(capsys, raw, tmp_path / "out", "--sources", str(sources), name="knowedit")
    assert line == f"error: raw file {raw / SANITATION_TEST}: expected a JSON object of record lists, got list"


def test_json_list_given_an_object(capsys, fake_raw, tmp_path):
    records = json.loads((fake_raw / TRAIN).read_text(encoding="utf-8"))
    (fake_raw / TRAIN).write_text(json.dumps({"data": records}), encoding="utf-8")
    sources = sources_md_for(fake_raw, TRAIN, tmp_path / "SOURCES.md")
    line = refused(capsys, fake_raw, tmp_path / "out", "--sources", str(sources))
    assert line == f"error: raw file {fake_raw / TRAIN}: expected a JSON list of records, got dict"


def test_invalid_json(capsys, fake_raw, tmp_path):
    text = (fake_raw / TRAIN).read_text(encoding="utf-8")
    (fake_raw / TRAIN).write_text(text[:-1], encoding="utf-8")  # the closing ']' cut off
    sources = sources_md_for(fake_raw, TRAIN, tmp_path / "SOURCES.md")
    line = refused(capsys, fake_raw, tmp_path / "out", "--sources", str(sources))
    lines = text[:-1].split("\n")
    assert line == (
        f"error: raw file {fake_raw / TRAIN}: invalid JSON at line {len(lines)} column {len(lines[-1]) + 1} "
        "(Expecting ',' delimiter)"
    )


def test_invalid_json_lines_line(capsys, tmp_path):
    raw = linked_raw(tmp_path, "locality", copies=(PIQA,))
    lines = (raw / PIQA).read_text(encoding="utf-8").split("\n")
    lines[4] = lines[4][:-1]  # line 5 loses its closing brace
    (raw / PIQA).write_text("\n".join(lines), encoding="utf-8")
    sources = sources_md_for(raw, PIQA, tmp_path / "SOURCES.md")
    line = refused(capsys, raw, tmp_path / "out", "--sources", str(sources), name="locality")
    assert line == f"error: raw file {raw / PIQA} line 5: invalid JSON (Expecting ',' delimiter)"


def test_text_that_is_not_utf8(capsys, fake_raw, tmp_path):
    data = (fake_raw / TRAIN).read_bytes()
    at = data.index(b"UniFirst")
    (fake_raw / TRAIN).write_bytes(data[:at] + b"\xff" + data[at + 1 :])
    sources = sources_md_for(fake_raw, TRAIN, tmp_path / "SOURCES.md")
    line = refused(capsys, fake_raw, tmp_path / "out", "--sources", str(sources))
    assert line == f"error: raw file {fake_raw / TRAIN}: not UTF-8 text (invalid start byte at byte {at})"


def test_file_without_a_sources_entry(capsys, fake_raw, tmp_path):
    text = (RAW / "SOURCES.md").read_text(encoding="utf-8")
    head = text.index(f"### `{TRAIN}`")
    end = text.find("\n## ", head + 1)  # the section only: the next heading after it is a "## " one
    assert end < text.find("\n### ", head + 1)
    (tmp_path / "SOURCES.md").write_text(text[:head] + text[end + 1 :], encoding="utf-8")
    line = refused(capsys, fake_raw, tmp_path / "out", "--sources", str(tmp_path / "SOURCES.md"))
    assert line == f"error: raw file {TRAIN} has no entry in SOURCES.md, so it cannot be checked"


def _section(rel: str) -> tuple[str, int, int]:
    text = (RAW / "SOURCES.md").read_text(encoding="utf-8")
    head = text.index(f"### `{rel}`")
    return text, head, text.find("\n### ", head + 1)


@pytest.mark.parametrize(
    "case", ["missing", "no sections", "no format line", "no size line", "unknown format", "unreadable count"]
)
def test_every_sources_md_error(capsys, fake_raw, tmp_path, case):
    text, head, end = _section(TRAIN)
    block = text[head:end]
    path = tmp_path / "SOURCES.md"
    lacks = (
        f"{path}: section for {TRAIN} lacks a '- format: ...; records: **N**' or '- size: N bytes; sha256: `...`' line"
    )
    edits = {
        "no sections": (
            "# Raw data\n\nNothing listed here.\n",
            f"{path}: no '### `file`' sections found; is this a SOURCES.md?",
        ),
        "no format line": (block.replace("- format: JSON list; records: **1000**", "- format: JSON list"), lacks),
        "no size line": (re.sub(r"- size: [\d,]+ bytes", "- size: unknown", block), lacks),
        "unknown format": (
            block.replace("- format: JSON list;", "- format: YAML;"),
            f"{path}: section for {TRAIN} has unknown format 'YAML'",
        ),
        "unreadable count": (
            block.replace("records: **1000**", "records: **about 1000**"),
            f"{path}: section for {TRAIN} has an unreadable record count 'about 1000'",
        ),
    }
    assert "- format: JSON list; records: **1000**" in block  # the real section, as the edits expect
    if case == "missing":
        expected = f"cannot read sources file {path}: No such file or directory"
    elif case == "no sections":
        path.write_text(edits[case][0], encoding="utf-8")
        expected = edits[case][1]
    else:
        changed, expected = edits[case]
        assert changed != block
        path.write_text(text[:head] + changed + text[end:], encoding="utf-8")
    line = refused(capsys, fake_raw, tmp_path / "out", "--sources", str(path))
    assert line == f"error: {expected}"


def _dropping(bench, config: str, split: str, keep=lambda rows: rows[:-1]):
    """The benchmark with a builder that loses rows of one split (or, with keep=None, the split)."""
    import dataclasses

    def build(ctx):
        built = bench.build(ctx)
        if keep is None:
            del built[config][split]
        else:
            built[config][split] = keep(built[config][split])
        return built

    return dataclasses.replace(bench, build=build)


def test_builder_row_counts_are_checked(capsys, fake_raw, tmp_path, monkeypatch):
    """`_check_shape`: a builder that drops a record (or a split) is refused before anything is written."""
    from editeval.data import registry

    zsre = registry.BENCHMARKS["zsre"]
    monkeypatch.setitem(registry.BENCHMARKS, "zsre", _dropping(zsre, "default", "train"))
    line = refused(capsys, fake_raw, tmp_path / "out")
    assert line == "error: zsre/default/train: 999 rows, expected 1000"
    monkeypatch.setitem(registry.BENCHMARKS, "zsre", _dropping(zsre, "default", "knowedit_test", keep=None))
    line = refused(capsys, fake_raw, tmp_path / "out")
    assert line == "error: zsre: builder produced no split default/knowedit_test"
