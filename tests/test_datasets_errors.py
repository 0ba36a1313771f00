"""Bad input to `editeval datasets build`: one clear error line naming the file / record / key,
exit code 2, and no half-written dataset folder. Uses small fake raw folders holding copies of the
three files the zsre benchmark needs (altered where a test says so)."""

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

from editeval.paths import raw_data_dir

RAW = raw_data_dir()
pytestmark = pytest.mark.skipif(not (RAW / "SOURCES.md").is_file(), reason=f"raw benchmark data not found at {RAW}")

ZSRE_FILES = ("portability/zsre_mend_eval_portability_gpt4.json", "knowedit/ZsRE/ZsRE-test-all.json",
              "zsre/zsre_mend_train-1k.json")
TRAIN = "zsre/zsre_mend_train-1k.json"


@pytest.fixture
def fake_raw(tmp_path) -> Path:
    raw = tmp_path / "raw"
    for rel in ZSRE_FILES:
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(RAW / rel, raw / rel)
    return raw


def build(capsys, raw: Path, out: Path, *extra: str):
    """`editeval datasets build zsre` in-process; (exit code, stderr lines)."""
    from editeval.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["datasets", "build", "zsre", "--raw-dir", str(raw), "--out-dir", str(out), "--no-progress", *extra])
    _, err = capsys.readouterr()
    return exit_info.value.code, err.strip().splitlines()


def sources_md_for(raw: Path, rel: str, dest: Path, records: int | None = None) -> Path:
    """The real SOURCES.md with `rel`'s size and sha256 recomputed from the altered copy (and its
    record count replaced, if given): the sha check still runs, against honest values."""
    text = (RAW / "SOURCES.md").read_text(encoding="utf-8")
    head = text.index(f"### `{rel}`")
    end = text.find("\n### ", head + 1)
    block = text[head:end]
    data = (raw / rel).read_bytes()
    block = re.sub(r"- size: [\d,]+ bytes; sha256: `[0-9a-f]{64}`",
                   f"- size: {len(data):,} bytes; sha256: `{hashlib.sha256(data).hexdigest()}`", block)
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
    assert err.strip().splitlines() == ["error: unknown benchmark 'nope': choose from zsre, counterfact, portability, locality, knowedit"]
    assert_nothing_written(tmp_path / "out")  # zsre was not built either


def test_unknown_benchmark_from_the_shell():
    proc = subprocess.run([sys.executable, "-m", "editeval", "datasets", "show", "nope"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: unknown benchmark 'nope': choose from zsre, counterfact, portability, locality, knowedit"]


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

    good = {"case_id": 1, "requested_rewrite": {"prompt": "{} is in", "subject": "X", "relation_id": "P1",
                                                "target_new": {"str": "A"}, "target_true": {"str": "B"}},
            "paraphrase_prompts": [], "neighborhood_prompts": [], "attribute_prompts": [], "generation_prompts": []}
    check_records([good], CF_FULL_REQUIRED, "cf.json")
    bad = json.loads(json.dumps(good))
    del bad["requested_rewrite"]["target_true"]["str"]
    with pytest.raises(EditevalError, match=r"^cf\.json record 1: missing required key 'requested_rewrite\.target_true\.str'$"):
        check_records([good, bad], CF_FULL_REQUIRED, "cf.json")
    with pytest.raises(EditevalError, match=r"^cf\.json record 0: expected an object, got list$"):
        check_records([[]], CF_FULL_REQUIRED, "cf.json")
