"""The Hugging Face Hub boundary, with `snapshot_download` and `HfApi` mocked (no network):

- a `score.hub` checkpoint: which files are asked for (`allow_patterns`), and a download that
  delivers code (`modeling_*.py`), a config asking for custom code (`auto_map`) or pickle weights
  (`.bin`) is refused after the download, one line per problem; a failed download is one line;
- `editeval datasets publish` and `editeval stats publish` without --dry-run: the repo created
  (`repo_type="dataset"`), exactly which files are uploaded, and an upload error as one `error:` line.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from editeval.leaderboard.checks import check_submission, fetch_hub_checkpoint
from editeval.leaderboard.manifest import HUB_ALLOW_PATTERNS, SubmissionError

FP = "0123456789abcdef"
REPO = "org/edited-model"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def run_cli(capsys, *argv):
    """`editeval ARGV` in-process; (exit code, stdout, stderr)."""
    from editeval.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


# ---------------------------------------------------------------------------- score.hub checkpoints


def hub_submission(root: Path, base: str = "smollm2-135m", fingerprint: str = FP) -> Path:
    folder = root / "subs" / "hub-entry"
    folder.mkdir(parents=True)
    (folder / "submission.yaml").write_text(
        yaml.safe_dump(
            {
                "schema_version": 1,
                "title": "A Hub checkpoint",
                "authors": ["Ada Lovelace"],
                "contact": "ada@example.org",
                "method": {"name": "rome"},
                "base_model": {"name": base, "fingerprint": fingerprint},
                "benchmark": {"name": "zsre", "split": "edit"},
                "mode": "sequential",
                "num_edits": 3,
                "score": {"hub": f"{REPO}@v1"},
            }
        )
    )
    return folder


# a well-formed safetensors file: 8-byte header length, the JSON header, the tensor's 8 bytes
_HEADER = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
WEIGHTS = len(_HEADER).to_bytes(8, "little") + _HEADER + b"\0" * 8
GOOD = {"config.json": json.dumps({"model_type": "llama"}), "model.safetensors": WEIGHTS, "tokenizer.json": "{}"}


class FakeSnapshot:
    """`huggingface_hub.snapshot_download` delivering `files` into local_dir, whatever it is asked for
    (as a stale local_dir or a misbehaving mirror could)."""

    def __init__(self, files: dict[str, str | bytes] | None = None, error: Exception | None = None):
        self.files, self.error, self.calls = files, error, []

    def __call__(self, repo_id, **kwargs):
        self.calls.append({"repo_id": repo_id, **kwargs})
        if self.error is not None:
            raise self.error
        target = Path(kwargs["local_dir"])
        target.mkdir(parents=True, exist_ok=True)
        for name, content in self.files.items():
            (target / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(target)


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the offline refusal is test_submissions' (conftest sets 1)


def test_hub_checkpoint_download_asks_only_for_safe_files(tmp_path, cache, online, monkeypatch):
    import huggingface_hub

    fake = FakeSnapshot(GOOD)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    checked = check_submission(hub_submission(tmp_path))
    target = fetch_hub_checkpoint(checked)
    assert target == cache / "submissions" / "hub-entry" / "org--edited-model"
    assert sorted(p.name for p in target.iterdir()) == sorted(GOOD)
    assert len(fake.calls) == 1
    call = fake.calls[0]
    assert (call["repo_id"], call["revision"], Path(call["local_dir"])) == (REPO, "v1", target)
    assert call["allow_patterns"] == HUB_ALLOW_PATTERNS
    patterns = call["allow_patterns"]

    def asked(name):
        return any(fnmatch.fnmatch(name, p) for p in patterns)

    for name in (
        "model.safetensors",
        "model-00001-of-00002.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer.model",
        "chat_template.jinja",
        "merges.txt",
    ):
        assert asked(name), name
    for name in ("modeling_x.py", "pytorch_model.bin", "model.pt", "weights.pkl", "setup.sh", "lib.so", "x.ipynb"):
        assert not asked(name), name


@pytest.mark.parametrize(
    "files, problem",
    [
        ({**GOOD, "modeling_x.py": "import os\n"}, "modeling_x.py: code files are refused (custom code is never run)"),
        (
            {
                **GOOD,
                "config.json": json.dumps(
                    {"model_type": "llama", "auto_map": {"AutoModelForCausalLM": "modeling_x.M"}}
                ),
            },
            "config.json: asks for custom code (auto_map); trust_remote_code is never used",
        ),
        (
            {"config.json": GOOD["config.json"], "pytorch_model.bin": b"\x80\x04pickle"},
            "pytorch_model.bin: pickle-based weight files are refused (save with safetensors)",
        ),
    ],
    ids=["modeling-py", "auto-map", "bin-weights"],
)
def test_hub_checkpoint_delivering_unsafe_files_is_refused(tmp_path, cache, online, monkeypatch, files, problem):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeSnapshot(files))
    checked = check_submission(hub_submission(tmp_path))
    with pytest.raises(SubmissionError) as info:
        fetch_hub_checkpoint(checked)
    assert info.value.problems == [problem]
    assert info.value.where == str(cache / "submissions" / "hub-entry" / "org--edited-model")


def test_hub_download_failure_is_one_line(tmp_path, online, monkeypatch):
    import huggingface_hub

    fake = FakeSnapshot(error=OSError("401 Client Error: Unauthorized for url\nRequest ID: abc"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    folder = hub_submission(tmp_path)
    with pytest.raises(SubmissionError) as info:
        fetch_hub_checkpoint(check_submission(folder))
    assert str(info.value) == (
        f"{folder / 'submission.yaml'}: score.hub: cannot download '{REPO}@v1': 401 Client Error: Unauthorized for url"
    )


def test_score_refuses_a_hub_checkpoint_with_code_in_one_line(
    tmp_path, cache, online, monkeypatch, capsys, tiny_llama_dir
):
    """Through `editeval score SUBMISSION`: exit 2, the one line, no results written."""
    import huggingface_hub

    from editeval.runtime.models import load

    fingerprint = load(tiny_llama_dir, device="cpu").fingerprint()
    folder = hub_submission(tmp_path, base="base", fingerprint=fingerprint)
    shutil.copytree(tiny_llama_dir, folder / "base")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeSnapshot({**GOOD, "modeling_x.py": "import os\n"}))
    code, out, err = run_cli(capsys, "score", folder, "--device", "cpu", "--no-progress")
    target = cache / "submissions" / "hub-entry" / "org--edited-model"
    assert code == 2
    assert "Traceback" not in err and err.count("error") == 1  # (besides transformers' loading bars)
    assert [line for line in err.splitlines() if line.startswith("error")] == [
        f"error: {target}: modeling_x.py: code files are refused (custom code is never run)"
    ]
    assert not (folder / "results.json").exists() and not (folder / ".scoring").exists()


# ---------------------------------------------------------------------------- publishing


class FakeApi:
    """`huggingface_hub.HfApi`: records the calls; `fail` names a method that raises `error`."""

    instances: list[FakeApi] = []

    def __init__(self, token=None, fail: str | None = None, error: Exception | None = None):
        self.token, self.calls, self.fail, self.error = token, [], fail, error
        FakeApi.instances.append(self)

    def _call(self, name, *args, **kwargs):
        self.calls.append((name, args, kwargs))
        if name == self.fail:
            raise self.error
        return SimpleNamespace(
            commit_url=f"https://huggingface.co/datasets/{args[0] if args else kwargs['repo_id']}/commit/1"
        )

    def create_repo(self, *args, **kwargs):
        return self._call("create_repo", *args, **kwargs)

    def upload_folder(self, *args, **kwargs):
        return self._call("upload_folder", *args, **kwargs)

    def create_commit(self, *args, **kwargs):
        return self._call("create_commit", *args, **kwargs)


@pytest.fixture
def hub_api(monkeypatch):
    """A logged-in user and the fake API; returns a setter for a failing method."""
    import huggingface_hub

    FakeApi.instances = []
    settings = {}
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test_token")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: FakeApi(token, **settings))
    return settings


def fake_built_zsre(root: Path) -> Path:
    """A datasets folder whose zsre/ holds every file publish expects, plus files it must not upload."""
    from editeval.data.card import data_file
    from editeval.data.registry import get

    folder = root / "zsre"
    bench = get("zsre")
    for rel in ["README.md"] + [data_file(c.name, s.name) for c in bench.configs for s in c.splits]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(f"{rel}\n")
    (folder / "notes.txt").write_text("local notes\n")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.lock").write_text("")
    return folder


def test_datasets_publish_uploads_the_card_and_parquet(tmp_path, capsys, hub_api):
    from huggingface_hub.utils import filter_repo_objects

    folder = fake_built_zsre(tmp_path / "datasets")
    code, out, err = run_cli(
        capsys,
        "datasets",
        "publish",
        "zsre",
        "--repo-id",
        "org/zsre",
        "--private",
        "--datasets-dir",
        tmp_path / "datasets",
    )
    assert code == 0, err
    (api,) = FakeApi.instances
    assert api.token == "hf_test_token"
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1:] == (("org/zsre",), {"repo_type": "dataset", "private": True, "exist_ok": True})
    upload = api.calls[1][2]
    assert (upload["folder_path"], upload["repo_id"], upload["repo_type"]) == (str(folder), "org/zsre", "dataset")
    every = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    uploaded = sorted(
        filter_repo_objects(
            every, allow_patterns=upload.get("allow_patterns"), ignore_patterns=upload.get("ignore_patterns")
        )
    )
    assert uploaded == [
        "README.md",
        "data/default/edit-00000-of-00001.parquet",
        "data/default/knowedit_test-00000-of-00001.parquet",
        "data/default/train-00000-of-00001.parquet",
    ]
    assert out.strip().splitlines() == ["published zsre: 4 files -> https://huggingface.co/datasets/org/zsre/commit/1"]


@pytest.mark.parametrize("failing", ["create_repo", "upload_folder"])
def test_datasets_publish_upload_error_is_one_line(tmp_path, capsys, hub_api, failing):
    folder = fake_built_zsre(tmp_path / "datasets")
    hub_api.update(
        fail=failing, error=RuntimeError("403 Forbidden: you have no write access to org/zsre\nRequest ID: 1")
    )
    code, out, err = run_cli(
        capsys, "datasets", "publish", "zsre", "--repo-id", "org/zsre", "--datasets-dir", tmp_path / "datasets"
    )
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"error: upload of {folder} to org/zsre failed: 403 Forbidden: you have no write access to org/zsre"
    ]


def write_stats_file(folder: Path, layer: int, count: int = 10) -> Path:
    """A statistics file as editeval writes it (metadata + mom2 + count); count ≠ tokens makes it invalid."""
    import torch
    from safetensors.torch import save_file

    from editeval.methods.kit import key_stats_files

    meta = {
        "format": key_stats_files.FORMAT,
        "model_fingerprint": FP,
        "module": f"model.layers.{layer}.mlp.down_proj",
        "tokens": "10",
        "max_len": "8",
        "corpus_sha256": "a" * 64,
        "layer": str(layer),
    }
    path = key_stats_files.cache_name(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"mom2": torch.eye(4), "count": torch.tensor([count])}, str(path), metadata=meta)
    return path


def test_stats_publish_uploads_the_valid_files(cache, capsys, hub_api):
    good = sorted([write_stats_file(cache, 1), write_stats_file(cache, 2)])
    bad = write_stats_file(cache, 3, count=9)
    code, out, err = run_cli(capsys, "stats", "publish", "--repo-id", "org/key-stats")
    assert code == 0, err
    (api,) = FakeApi.instances
    assert [c[0] for c in api.calls] == ["create_repo", "create_commit"]
    assert api.calls[0][1:] == (("org/key-stats",), {"repo_type": "dataset", "private": False, "exist_ok": True})
    args, kwargs = api.calls[1][1:]
    assert args[0] == "org/key-stats" and kwargs["repo_type"] == "dataset"
    operations = args[1] if len(args) > 1 else kwargs["operations"]
    assert [(op.path_in_repo, op.path_or_fileobj) for op in operations] == [(f"stats/{p.name}", str(p)) for p in good]
    lines = out.strip().splitlines()
    assert lines[0] == f"skipped {bad.name}: {bad}: token count [9] does not match metadata tokens=10"
    assert lines[-1].startswith("published 2 files (") and lines[-1].endswith(
        "-> https://huggingface.co/datasets/org/key-stats/commit/1"
    )


def test_stats_publish_upload_error_is_one_line(cache, capsys, hub_api):
    write_stats_file(cache, 1)
    hub_api.update(fail="create_commit", error=ConnectionError("Offline mode is enabled.\nmore"))
    code, out, err = run_cli(capsys, "stats", "publish", "--repo-id", "org/key-stats")
    assert code == 2
    assert err.strip().splitlines() == [
        "error: upload of 1 statistics files to org/key-stats failed: Offline mode is enabled."
    ]
