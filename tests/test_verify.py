"""`editeval leaderboard verify`: a submission is re-scored in a temporary copy and its per-edit rows
compared; forged rows (with figures to match), forged fingerprints and a stale metric version are
caught, and the site shows "verified" only for the record that was verified."""

from __future__ import annotations

import json
import subprocess

import pytest
from test_submissions import _score, cache, tiny_requests, tiny_submission  # noqa: F401 (fixtures)

from editeval.evaluation.results import build_record, read_record, read_rows, write_record
from editeval.leaderboard import build_site
from editeval.leaderboard.verify import NOT_REPRODUCED, STAMP, VERIFIED, verify_submission
from editeval.runtime.settings import Runtime

QUIET = Runtime(device="cpu", progress=False)


@pytest.fixture
def scored(tiny_submission):  # noqa: F811 (the fixture imported above)
    _score(tiny_submission)
    return tiny_submission


def verify(folder):
    return verify_submission(folder, runtime=QUIET, requests=tiny_requests())


def rewrite(folder, change_rows=None, change_meta=None):
    """Forge a record as a submitter could: change its rows and/or meta, recompute every figure."""
    path = folder / "results.json"
    record, rows = read_record(path), read_rows(path).to_dict("records")
    if change_rows:
        change_rows(rows)
    meta = record.meta.model_dump()
    if change_meta:
        change_meta(meta)
    write_record(build_record(rows, meta), rows, path)


def site(folder, tmp_path):
    report = build_site(folder.parent, tmp_path / "site")
    return {e.slug: e for e in report.entries}, {i.slug: i.reason for i in report.invalid}, tmp_path / "site"


def test_an_honest_submission_is_verified_and_shown_so_until_its_record_changes(scored, tmp_path):
    entries, _, out = site(scored, tmp_path)
    assert not entries["tiny-ckpt"].verified and "self-reported</span>" in (out / "index.html").read_text()
    verdict = verify(scored)
    assert verdict.result == VERIFIED and verdict.reason == ""
    stamp = json.loads((scored / STAMP).read_text())
    assert stamp["result"] == VERIFIED and stamp["device"] == "cpu" and stamp["editeval_version"]
    assert not (scored / ".scoring").exists() and sorted(p.name for p in scored.iterdir() if p.is_file()) == [
        "results.json",
        "results.rows.parquet",
        "submission.yaml",
        STAMP,
    ]
    entries, _, out = site(scored, tmp_path)
    assert entries["tiny-ckpt"].verified and 'class="tag verified"' in (out / "index.html").read_text()
    assert "verified: re-scored by editeval" in (out / "entries" / "tiny-ckpt.html").read_text()
    # the record changes after verification (here only its formatting): shown as self-reported again
    record = json.loads((scored / "results.json").read_text())
    (scored / "results.json").write_text(json.dumps(record))
    entries, _, _ = site(scored, tmp_path)
    assert not entries["tiny-ckpt"].verified


FORGERIES = {
    "rows and figures": (
        {"change_rows": lambda rows: rows[0].update({"reliability.teacher_forced": 1.0})},
        "reliability.teacher_forced of case 0: the record says 1.0, scoring it again gives",
    ),
    "edited fingerprint": (
        {"change_meta": lambda meta: meta.update(edited_fingerprint="f" * 16)},
        "edited_fingerprint: the record says 'ffffffffffffffff', scoring it again gives",
    ),
    "dataset fingerprint": (
        {"change_meta": lambda meta: meta.update(dataset_fingerprint="d" * 16)},
        "dataset_fingerprint: the record says 'dddddddddddddddd'",
    ),
    "stale metric version": (
        {"change_meta": lambda meta: meta.update(metric_version="0")},
        "metric_version: the record says '0', scoring it again gives '1' (scored with another metric version",
    ),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_forged_record_the_build_accepts_is_caught_by_verify_and_then_listed_invalid(scored, tmp_path, forgery):
    change, reason = FORGERIES[forgery]
    rewrite(scored, **change)
    entries, invalid, _ = site(scored, tmp_path)
    assert "tiny-ckpt" in entries  # its figures are its rows': the build cannot tell
    verdict = verify(scored)
    assert verdict.result == NOT_REPRODUCED and verdict.reason.startswith(reason), verdict.reason
    entries, invalid, _ = site(scored, tmp_path)
    assert "tiny-ckpt" not in entries and invalid["tiny-ckpt"].startswith(
        "not reproduced by `editeval leaderboard verify`"
    )


def test_figures_that_are_not_the_rows_are_not_reproduced_without_scoring(scored):
    record = json.loads((scored / "results.json").read_text())
    record["metrics"]["reliability.teacher_forced"]["mean"] = 1.0
    (scored / "results.json").write_text(json.dumps(record))
    verdict = verify(scored)
    assert verdict.result == NOT_REPRODUCED and "its figures are not those of its per-edit rows" in verdict.reason


def test_changed_picks_the_submissions_a_git_diff_touches(tmp_path, monkeypatch):
    from editeval.commands.leaderboard import _chosen

    subs = tmp_path / "submissions"
    for slug in ("a", "b", "c"):
        (subs / slug).mkdir(parents=True)
        (subs / slug / "results.json").write_text("{}")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "."], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=tmp_path, check=True)
    (subs / "b" / "results.json").write_text('{"changed": 1}')
    assert _chosen([], False, "HEAD", subs) == ["b"]
    assert _chosen([], True, None, subs) == ["a", "b", "c"]
    with pytest.raises(Exception, match="one of them"):
        _chosen(["a"], True, None, subs)
