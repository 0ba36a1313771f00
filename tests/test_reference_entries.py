"""The committed reference entries still come out of the code: a sample of them re-scored on the real
SmolLM2-135M gives their committed per-edit rows exactly (first edits of each: in single mode an edit's
row depends on that edit alone), and `editeval score --all` finds none of them stale. Any change that
moves a number fails here; it then needs a version bump and re-scored entries."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SUBMISSIONS = REPO / "submissions"
PREFIX = "reference-smollm2-135m-"

# entry -> how many of its first edits to re-score (ROME costs ~30 s an edit here, FT-M ~3 s)
SAMPLE = {"unedited-zsre": 8, "ft-m-zsre": 3, "ft-m-counterfact": 2, "grace-zsre": 2, "rome-zsre": 1}
# the case benchmarks (first cases: a case's row depends on that case alone) and QAEdit (WILD)
SAMPLE.update({"unedited-mquake": 2, "ft-m-rippleedits": 2, "ft-m-qaedit": 2})


def _built(benchmark: str) -> bool:
    return any((REPO / "datasets" / benchmark / "data").rglob("*.parquet"))  # git-ignored: built by setup.sh


@pytest.fixture()
def repo_paths(monkeypatch):
    for name in ("EDITEVAL_DATASETS", "EDITEVAL_RAW_DATA"):  # the repository's own data
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("entry, k", SAMPLE.items())
def test_reference_entry_rescores_to_its_committed_rows(entry, k, smollm2_dir, repo_paths, tmp_path):
    from editeval.data import load_benchmark, load_requests
    from editeval.evaluation.cases import is_case_benchmark
    from editeval.evaluation.results import read_rows
    from editeval.leaderboard.submissions import score_submission
    from editeval.runtime.settings import Runtime

    benchmark = entry.rsplit("-", 1)[1]
    if not _built(benchmark):
        pytest.skip(f"datasets/{benchmark} is not built (editeval datasets build {benchmark})")
    folder = tmp_path / (PREFIX + entry)
    folder.mkdir()
    for name in ("submission.yaml", "hparams.yaml"):
        if (SUBMISSIONS / folder.name / name).exists():
            shutil.copy(SUBMISSIONS / folder.name / name, folder / name)
    if is_case_benchmark(benchmark):
        requests = load_benchmark(benchmark, "edit").select(range(k)).to_list()
    else:
        requests = load_requests(benchmark, "edit", None, k)
    score_submission(
        folder,
        runtime=Runtime(device="cpu", progress=False),
        piqa_items=0,
        requests=requests,
        wild=benchmark == "qaedit",  # its authors' protocol (scripts/reference_entries.py)
    )
    got = read_rows(folder / "results.json", timings=False)  # the seconds are the run's own
    committed = read_rows(SUBMISSIONS / folder.name / "results.json", timings=False).iloc[:k]
    assert len(got) == k
    # kinds that appear only in later edits are columns of the committed rows, empty in the first k
    assert committed.drop(columns=got.columns).isna().all().all()
    pd.testing.assert_frame_equal(got, committed[got.columns], check_exact=True)


def test_no_reference_entry_is_stale(smollm2_dir, repo_paths):
    from editeval.leaderboard.submissions import stale_submissions

    benchmarks = {p.name.rsplit("-", 1)[1] for p in SUBMISSIONS.iterdir() if p.name.startswith(PREFIX)}
    missing = [b for b in sorted(benchmarks) if not _built(b)]
    if missing:
        pytest.skip(f"datasets not built: {', '.join(missing)}")
    assert stale_submissions(SUBMISSIONS) == []


def test_the_tf_vs_wild_table_reads_the_entries(tmp_path, capsys):
    """scripts/tf_vs_wild.py: one row per single-mode entry, ×100, the gap TF − WILD reliability,
    "–" for a figure an entry lacks; mass and lifelong entries are left to their own tables."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("tf_vs_wild", REPO / "scripts" / "tf_vs_wild.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    metrics = {"reliability.teacher_forced": 0.95, "reliability.wild": 0.25, "locality.wild": 1.0}
    for slug in ("rome-zsre", "memit-sequential100-1000-zsre"):
        folder = tmp_path / f"{PREFIX}{slug}"
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps({"metrics": {k: {"mean": v} for k, v in metrics.items()}}))
    entries = script.rows(tmp_path, "zsre")
    assert [label for label, _ in entries] == ["rome"]
    row = script.table("zsre", entries).splitlines()[-1]
    assert row == "| rome | 95.0 | 25.0 | – | – | – | – | 100.0 | – | – | 70.0 |"
