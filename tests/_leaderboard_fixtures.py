"""Fixture submissions for the leaderboard tests: real results records (editeval.evaluation.results) built
from synthetic per-edit rows, plus invalid entries of each kind. Never written into submissions/."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from editeval.evaluation.results import build_record, write_record

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
        row = {
            "case_id": i,
            "reliability.teacher_forced": near(rel),
            "generalization.teacher_forced": near(rel * 0.8),
            "locality.nq.teacher_forced": near(loc),
            "locality.teacher_forced": near(loc),
            "fluency.ngram_entropy": 5.5 + rng.uniform(-0.3, 0.3),
        }
        if benchmark == "zsre":
            row["portability.one_hop.teacher_forced"] = near(rel * 0.4)
            row["portability.subject_replace.teacher_forced"] = near(rel * 0.6)
            row["portability.teacher_forced"] = (
                row["portability.one_hop.teacher_forced"] + row["portability.subject_replace.teacher_forced"]
            ) / 2
        else:
            row["efficacy_score"] = float(rng.random() < rel)
            row["paraphrase_score"] = float(rng.random() < rel * 0.8)
            row["neighborhood_score"] = float(rng.random() < loc)
        rows.append(row)
    return rows


def manifest(slug: str, method: str, title: str, benchmark: str, mode: str, k: int | None) -> dict:
    data = {
        "schema_version": 1,
        "title": title,
        "authors": ["Test Author"],
        "contact": "test@example.org",
        "method": {"name": method, "link": "https://example.org/" + method},
        "base_model": {"name": "smollm2-135m", "fingerprint": FP},
        "benchmark": {"name": benchmark, "split": "edit"},
        "mode": mode,
        "num_edits": 20,
        "score": {"unedited": True} if method == "unedited" else {"hparams": "preset"},
    }
    if k:
        data["batch_size"] = k
    return data


# with make_submissions(wild=...): each entry's WILD figures are its teacher-forced ones times this
# (GRACE-like collapse for ROME here, so that the WILD ranking differs from the teacher-forced one)
WILD_FACTOR = {"rome-zsre": 0.3, "memit-zsre": 0.9, "ft-l-zsre": 0.8, "xss-zsre": 0.5, "base-zsre": 1.0}


def with_wild(rows: list[dict], factor: float) -> list[dict]:
    """The rows with WILD columns: every teacher-forced headline value times `factor`."""
    out = []
    for row in rows:
        extra = {}
        for column, value in row.items():
            parts = column.split(".")
            if parts[-1] == "teacher_forced" and parts[0] in (
                "reliability",
                "generalization",
                "locality",
                "portability",
            ):
                extra[".".join([*parts[:-1], "wild"])] = value * factor
        out.append({**row, **extra})
    return out


def make_submissions(root: Path, wild: set[str] = frozenset()) -> Path:
    """A submissions folder with the valid ENTRIES and three invalid folders; the entries named in
    `wild` also carry WILD figures (`WILD_FACTOR`)."""
    root.mkdir(parents=True, exist_ok=True)
    for seed, (slug, (method, title, benchmark, mode, k, rel, loc, spe)) in enumerate(ENTRIES.items()):
        folder = root / slug
        folder.mkdir()
        (folder / "submission.yaml").write_text(yaml.safe_dump(manifest(slug, method, title, benchmark, mode, k)))
        rows = _rows(20, rel, loc, seed, benchmark)
        if slug in wild:
            rows = with_wild(rows, WILD_FACTOR[slug])
        meta = {
            "benchmark": benchmark,
            "split": "edit",
            "dataset_fingerprint": "d" * 16,
            "base_model": "smollm2-135m",
            "base_fingerprint": FP,
            "edited_model": slug,
            "peak_rss_mb": 900.0 + seed,
            "wall_time_s": 12.0,
            "base_num_parameters": 134_515_008,
        }
        if method != "unedited":
            meta.update(
                method=method,
                mode=mode,
                edit_batch_size=k,
                seconds_per_edit=spe,
                hparams={"layers": [4], "lr": 0.5, "note": "<b>not bold</b>"},
                hparams_hash="abc123",
            )
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
    (pending / "submission.yaml").write_text(
        yaml.safe_dump(manifest("pending", "rome", "Pending", "zsre", "single", None))
    )
    return root


# ---------------------------------------------------------------------------- sequential runs, lifelong curves


def curve_points(every: int, columns: dict[str, list], evaluated: int | None = None) -> list[dict]:
    """A hand-made `meta.curve`: point k is taken after (k + 1) * `every` edits and holds the k-th
    value of each column; `evaluated` of the edits so far were evaluated (default: all of them)."""
    n = len(next(iter(columns.values())))
    return [
        {
            "edits": (k + 1) * every,
            "evaluated": min(evaluated or (k + 1) * every, (k + 1) * every),
            "metrics": {column: values[k] for column, values in columns.items()},
        }
        for k in range(n)
    ]


def add_sequential(
    root: Path,
    slug: str,
    method: str,
    title: str,
    rel: float,
    loc: float,
    curve: list[dict] | None,
    wild: float | None = None,
) -> Path:
    """One scored zsre entry of mode sequential (20 edits, one at a time) with `curve` as its
    `meta.curve` (None: a run without --curve-every); WILD columns at `wild` times the
    teacher-forced ones when given."""
    folder = root / slug
    folder.mkdir(parents=True)
    (folder / "submission.yaml").write_text(yaml.safe_dump(manifest(slug, method, title, "zsre", "sequential", None)))
    rows = _rows(20, rel, loc, len(slug), "zsre")
    if wild is not None:
        rows = with_wild(rows, wild)
    meta = {
        "benchmark": "zsre",
        "split": "edit",
        "dataset_fingerprint": "d" * 16,
        "base_model": "smollm2-135m",
        "base_fingerprint": FP,
        "edited_model": slug,
        "method": method,
        "mode": "sequential",
        "edit_batch_size": 1,
        "seconds_per_edit": 1.0,
        "hparams": {"layers": [4]},
        "hparams_hash": "abc123",
        "evaluated": "after all edits",
        "curve": curve,
    }
    write_record(build_record(rows, meta), rows, folder / "results.json")
    return folder


# ---------------------------------------------------------------------------- a case benchmark (MQuAKE)


def add_mquake(root: Path, slug: str, method: str, multihop: float, hopwise: float) -> Path:
    """One scored MQuAKE entry (10 cases, single mode): per-case 0/1 rows whose means are
    `multihop` (also the CoT column) and `hopwise`."""
    from editeval.evaluation.mquake import COLUMNS

    folder = root / slug
    folder.mkdir(parents=True)
    data = manifest(slug, method, f"{method} on MQuAKE", "mquake", "single", None)
    (folder / "submission.yaml").write_text(yaml.safe_dump({**data, "num_edits": 10}))
    rows = [
        {
            "case_id": i,
            **dict.fromkeys(COLUMNS, 0.0),
            "mquake.multihop": float(i < 10 * multihop),
            "mquake.cot": float(i < 10 * multihop),
            "mquake.hopwise": float(i < 10 * hopwise),
        }
        for i in range(10)
    ]
    meta = {
        "benchmark": "mquake",
        "split": "edit",
        "dataset_fingerprint": "d" * 16,
        "base_model": "smollm2-135m",
        "base_fingerprint": FP,
        "edited_model": slug,
    }
    if method != "unedited":
        meta.update(method=method, mode="single", seconds_per_edit=2.0, hparams={"layers": [4]}, hparams_hash="abc")
    write_record(build_record(rows, meta), rows, folder / "results.json")
    return folder


# ---------------------------------------------------------------------------- hostile strings everywhere

PWN = """<script>self['__pwned']=1</script> <img src=x onerror="self['__pwned']=2">"""


def hostile(tag: str, slash: bool = True, short: bool = False) -> str:
    """A string holding markup and both quote kinds, each right after `tag` (so a test can tell
    whether that character reached a page raw), then a script and an onerror handler that set
    `__pwned` if they ever run. No dots (it also names metric kinds); no '/' when `slash` is False
    (a folder name); under 80 characters when `short` (method.name)."""
    head = f"{tag}<b>{tag}\"{tag}'{tag}"
    if short:
        return head + """ <img src=x onerror=self['__pwned']=4>"""
    return head + (" " + PWN if slash else """ <img src=x onerror="self['__pwned']=3">""")


# field -> tag; where each one must show up (escaped) is in test_leaderboard.HOSTILE_PAGES
HOSTILE_TAGS = {
    "title": "Htitle",
    "description": "Hdescription",
    "author0": "Hauthorzero",
    "author1": "Hauthorone",
    "contact": "Hcontact",
    "manifest_method": "Hmm",
    "base_model_name": "Hbasename",
    "score_hparams": "Hscorehparams",
    "meta_method": "Hmetamethod",
    "meta_benchmark": "Hmetabenchmark",
    "meta_config": "Hmetaconfig",
    "meta_split": "Hmetasplit",
    "meta_base_model": "Hmetabasemodel",
    "meta_edited_model": "Hmetaedited",
    "meta_extra_key": "Hmetakey",
    "meta_extra_value": "Hmetavalue",
    "hparams_key": "Hhpkey",
    "hparams_value": "Hhpvalue",
    "hparams_hash": "Hhphash",
    "portability_kind": "Hportkind",
    "locality_kind": "Hlockind",
    "invalid_key": "Hinvalidkey",
    "invalid_folder": "Hinvalidfolder",
    "invalid_schema": "Hinvalidschema",
}
HOSTILE_SLUG = "hostile-entry"


def make_hostile_submissions(root: Path) -> Path:
    """A submissions folder whose one valid entry carries markup in every free-text field of its
    manifest and results record, plus invalid entries whose reasons echo hostile strings (an
    unknown key in submission.yaml or in the record's metadata, a folder name, a schema version)."""
    h = {field: hostile(tag, short=field == "manifest_method") for field, tag in HOSTILE_TAGS.items()}
    assert len(h["manifest_method"]) <= 80
    root.mkdir(parents=True, exist_ok=True)
    folder = root / HOSTILE_SLUG
    folder.mkdir()
    data = {
        "schema_version": 1,
        "title": h["title"],
        "description": h["description"],
        "authors": [h["author0"], h["author1"]],
        "contact": h["contact"],
        "method": {"name": h["manifest_method"], "link": "https://example.org/paper"},
        "base_model": {"name": h["base_model_name"], "fingerprint": FP},
        "benchmark": {"name": "zsre", "split": "edit"},
        "mode": "single",
        "num_edits": 20,
        "score": {"hparams": h["score_hparams"]},
    }
    (folder / "submission.yaml").write_text(yaml.safe_dump(data, width=10_000, allow_unicode=True))
    port, loc = h["portability_kind"], h["locality_kind"]
    rows = [
        {
            **row,
            f"portability.{port}.teacher_forced": row["portability.teacher_forced"],
            f"locality.{loc}.teacher_forced": row["locality.teacher_forced"],
        }
        for row in _rows(20, 0.8, 0.9, 99, "zsre")
    ]
    meta = {
        "benchmark": h["meta_benchmark"],
        "config": h["meta_config"],
        "split": h["meta_split"],
        "dataset_fingerprint": "d" * 16,
        "base_model": h["meta_base_model"],
        "base_fingerprint": FP,
        "edited_model": h["meta_edited_model"],
        "peak_rss_mb": 900.0,
        "wall_time_s": 12.0,
        "base_num_parameters": 134_515_008,
        "method": h["meta_method"],
        "mode": "single",
        "seconds_per_edit": 1.5,
        "hparams": {h["hparams_key"]: h["hparams_value"], "layers": [4]},
        "hparams_hash": h["hparams_hash"],
        "evaluated": h["meta_extra_value"],
    }
    write_record(build_record(rows, meta), rows, folder / "results.json")

    # a record's metadata refuses unknown keys: the entry is listed invalid, the reason echoes the key
    extra_key = root / "unknown-meta-key"
    extra_key.mkdir()
    (extra_key / "submission.yaml").write_text(yaml.safe_dump(data, width=10_000, allow_unicode=True))
    record = json.loads((folder / "results.json").read_text())
    record["meta"][h["meta_extra_key"]] = 1
    (extra_key / "results.json").write_text(json.dumps(record))

    unknown = root / "unknown-key"  # the reason echoes the unknown key
    unknown.mkdir()
    (unknown / "submission.yaml").write_text(yaml.safe_dump({**data, h["invalid_key"]: 1}, width=10_000))
    bad_name = root / hostile(HOSTILE_TAGS["invalid_folder"], slash=False)  # listed by its folder name
    bad_name.mkdir()
    old = root / "hostile-schema"  # the reason echoes the schema version
    old.mkdir()
    (old / "submission.yaml").write_text(yaml.safe_dump(data, width=10_000))
    (old / "results.json").write_text(json.dumps({"schema_version": h["invalid_schema"], "metrics": {}}))
    return root
