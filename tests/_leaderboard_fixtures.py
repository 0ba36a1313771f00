"""Fixture submissions for the leaderboard tests: real results records (editeval.results) built
from synthetic per-edit rows, plus invalid entries of each kind. Never written into submissions/."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from editeval.results import build_record, write_record

FP = "0123456789abcdef"
XSS_TITLE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2">'

# slug -> (method, title, benchmark, mode, edit batch size, reliability, locality, seconds per edit)
ENTRIES = {
    "base-zsre": ("unedited", "SmolLM2-135M, unedited", "zsre", "single", None, 0.22, 1.00, None),
    "rome-zsre": ("rome", "ROME (reference)", "zsre", "single", None, 0.97, 0.93, 1.9),
    "memit-zsre": ("memit", "MEMIT (reference)", "zsre", "single", None, 0.90, 0.97, 3.2),
    "memit-batch-zsre": ("memit", "MEMIT batch of 20", "zsre", "batch", 20, 0.71, 0.88, 0.4),
    "ft-l-zsre": ("ft-l", "FT-L (reference)", "zsre", "single", None, 0.55, 0.60, 0.8),
    "xss-zsre": ("kn", XSS_TITLE, "zsre", "single", None, 0.12, 0.95, 2.5),
    "rome-cf": ("rome", "ROME on CounterFact", "counterfact", "single", None, 0.99, 0.85, 1.7),
    "base-cf": ("unedited", "SmolLM2-135M, unedited", "counterfact", "single", None, 0.05, 1.00, None),
}


def _rows(n: int, rel: float, loc: float, seed: int, benchmark: str) -> list[dict]:
    rng = random.Random(seed)

    def near(x):
        return min(1.0, max(0.0, x + rng.uniform(-0.1, 0.1)))

    rows = []
    for i in range(n):
        row = {"case_id": i, "reliability.teacher_forced": near(rel), "generalization.teacher_forced": near(rel * 0.8),
               "locality.nq.teacher_forced": near(loc), "locality.teacher_forced": near(loc),
               "fluency.ngram_entropy": 5.5 + rng.uniform(-0.3, 0.3)}
        if benchmark == "zsre":
            row["portability.one_hop.teacher_forced"] = near(rel * 0.4)
            row["portability.subject_replace.teacher_forced"] = near(rel * 0.6)
            row["portability.teacher_forced"] = (row["portability.one_hop.teacher_forced"]
                                                 + row["portability.subject_replace.teacher_forced"]) / 2
        else:
            row["efficacy_score"] = float(rng.random() < rel)
            row["paraphrase_score"] = float(rng.random() < rel * 0.8)
            row["neighborhood_score"] = float(rng.random() < loc)
        rows.append(row)
    return rows


def manifest(slug: str, method: str, title: str, benchmark: str, mode: str, k: int | None) -> dict:
    data = {
        "schema_version": 1, "title": title, "authors": ["Test Author"], "contact": "test@example.org",
        "method": {"name": method, "link": "https://example.org/" + method},
        "base_model": {"name": "smollm2-135m", "fingerprint": FP},
        "benchmark": {"name": benchmark, "split": "edit"}, "mode": mode, "num_edits": 20,
        "score": {"unedited": True} if method == "unedited" else {"hparams": "preset"},
    }
    if k:
        data["batch_size"] = k
    return data


def make_submissions(root: Path) -> Path:
    """A submissions folder with the valid ENTRIES and three invalid folders."""
    root.mkdir(parents=True, exist_ok=True)
    for seed, (slug, (method, title, benchmark, mode, k, rel, loc, spe)) in enumerate(ENTRIES.items()):
        folder = root / slug
        folder.mkdir()
        (folder / "submission.yaml").write_text(yaml.safe_dump(manifest(slug, method, title, benchmark, mode, k)))
        rows = _rows(20, rel, loc, seed, benchmark)
        meta = {"benchmark": benchmark, "split": "edit", "dataset_fingerprint": "d" * 16,
                "base_model": "smollm2-135m", "base_fingerprint": FP, "edited_model": slug,
                "peak_rss_mb": 900.0 + seed, "wall_time_s": 12.0, "base_num_parameters": 134_515_008}
        if method != "unedited":
            meta.update(method=method, mode=mode, edit_batch_size=k, seconds_per_edit=spe,
                        hparams={"layers": [4], "lr": 0.5, "note": "<b>not bold</b>"}, hparams_hash="abc123")
        write_record(build_record(rows, meta), rows, folder / "results.json")
    # invalid: bad yaml, an old results schema, not scored yet
    bad = root / "bad-yaml"
    bad.mkdir()
    (bad / "submission.yaml").write_text("title: [unclosed\n")
    old = root / "old-schema"
    old.mkdir()
    (old / "submission.yaml").write_text(yaml.safe_dump(manifest("old-schema", "rome", "Old", "zsre", "single", None)))
    (old / "results.json").write_text(json.dumps({"schema_version": "0", "metrics": {"rel": 1.0}}))
    pending = root / "pending"
    pending.mkdir()
    (pending / "submission.yaml").write_text(yaml.safe_dump(manifest("pending", "rome", "Pending", "zsre", "single", None)))
    return root
