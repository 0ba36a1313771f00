"""Bad submissions fail in one line: a valid checkpoint submission (tiny LLaMA base and checkpoint
inside it) is broken in one place at a time — the manifest, the safetensors headers, the
checkpoint's files — and `editeval submit check` and `editeval score` must each exit with status 2,
print exactly one `error:` line and no traceback, and write nothing."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import yaml

from editeval.cli import main


def read_safetensors(path) -> tuple[dict, bytes]:
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def write_safetensors(path, header, data: bytes, length: int | None = None) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


def weights(folder):
    return folder / "checkpoint" / "model.safetensors"


def edit_header(change):
    """A mutation that rewrites the checkpoint's header with `change(header)` (data kept)."""

    def mutate(folder):
        header, data = read_safetensors(weights(folder))
        change(header)
        write_safetensors(weights(folder), header, data)

    return mutate


def first_weight(header) -> str:
    return next(k for k in header if k != "__metadata__")


def set_entry(key, value, name=None):
    def change(header):
        header[name or first_weight(header)][key] = value

    return edit_header(change)


def manifest_edit(change):
    def mutate(folder):
        data = yaml.safe_load((folder / "submission.yaml").read_text())
        change(data)
        (folder / "submission.yaml").write_text(yaml.safe_dump(data))

    return mutate


def manifest_text(text: str | bytes):
    def mutate(folder):
        path = folder / "submission.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())

    return mutate


def manifest_title(text: str):
    """The valid manifest with its title line replaced by `text` (YAML oddities in one place)."""

    def mutate(folder):
        path = folder / "submission.yaml"
        lines = [text if line.startswith("title:") else line for line in path.read_text().splitlines()]
        path.write_text("\n".join(lines) + "\n")

    return mutate


def write_file(relative: str, content: str | bytes):
    def mutate(folder):
        path = folder / relative
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return mutate


def truncate(keep: float):
    def mutate(folder):
        blob = weights(folder).read_bytes()
        weights(folder).write_bytes(blob[: int(len(blob) * keep)])

    return mutate


def shift_second_tensor(folder):
    header, data = read_safetensors(weights(folder))
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    begin, end = header[names[1]]["data_offsets"]
    header[names[1]]["data_offsets"] = [begin + 4, end + 4]
    write_safetensors(weights(folder), header, data)


def drop_a_tensor(folder):
    header, data = read_safetensors(weights(folder))
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    last = names[-1]  # the last one: the others keep their offsets
    begin, _ = header.pop(last)["data_offsets"]
    write_safetensors(weights(folder), header, data[:begin])


def as_integers(folder):
    header, data = read_safetensors(weights(folder))
    header[first_weight(header)]["dtype"] = "I32"  # same size as F32: the file stays well-formed
    write_safetensors(weights(folder), header, data)


def wrong_shape(folder):
    header, data = read_safetensors(weights(folder))
    entry = header[first_weight(header)]
    a, b = entry["shape"]
    entry["shape"] = [b, a] if a != b else [a * b, 1]
    write_safetensors(weights(folder), header, data)


def rename_tensor(folder):
    header, data = read_safetensors(weights(folder))
    name = first_weight(header)
    header["model.not_a_weight"] = header.pop(name)
    write_safetensors(weights(folder), header, data)


def bad_config_value(folder):
    path = folder / "checkpoint" / "config.json"
    config = json.loads(path.read_text())
    config["hidden_size"] = "wide"
    path.write_text(json.dumps(config))


MUTATIONS = {
    # the manifest
    "manifest not utf-8": manifest_text(b"title: \xff\xfe\n"),
    "manifest bad yaml": manifest_text("title: [unclosed\n"),
    "manifest a list": manifest_text("- a\n- b\n"),
    "manifest empty": manifest_text(""),
    "manifest python tag": manifest_title("title: !!python/object/apply:os.system ['true']"),
    "manifest alias bomb": manifest_title("title: &a [[x, x, x, x, x, x, x, x], *a, *a, *a, *a, *a, *a, *a]"),
    "manifest tab indent": manifest_title("title: x\n\tauthors: [a]"),
    "manifest huge": manifest_title("title: " + "x" * 200_000),
    "manifest unknown key": manifest_edit(lambda d: d.update(surprise=1)),
    "manifest missing title": manifest_edit(lambda d: d.pop("title")),
    "num_edits text": manifest_edit(lambda d: d.update(num_edits="ten")),
    "num_edits negative": manifest_edit(lambda d: d.update(num_edits=-1)),
    "mode unknown": manifest_edit(lambda d: d.update(mode="parallel")),
    "checkpoint outside": manifest_edit(lambda d: d.update(score={"checkpoint": "../elsewhere"})),
    "checkpoint absolute": manifest_edit(lambda d: d.update(score={"checkpoint": "/etc"})),
    "checkpoint missing": manifest_edit(lambda d: d.update(score={"checkpoint": "nowhere"})),
    "base unknown": manifest_edit(lambda d: d["base_model"].update(name="no-such-model")),
    # the safetensors headers
    "weights truncated": truncate(0.5),
    "weights four bytes": truncate(0.0000001),
    "header length huge": lambda f: write_safetensors(weights(f), b"{}", b"", length=2**60),
    "header past the end": lambda f: write_safetensors(weights(f), b'{"a": 1}', b"", length=4096),
    "header not json": lambda f: write_safetensors(weights(f), b"{not json", b""),
    "header not utf-8": lambda f: write_safetensors(weights(f), b'{"\xff": 1}', b""),
    "header a list": lambda f: write_safetensors(weights(f), b"[1, 2]", b""),
    "header no tensors": lambda f: write_safetensors(weights(f), b"{}", b""),
    "dtype unknown": set_entry("dtype", "F33"),
    "shape negative": set_entry("shape", [-1, 4]),
    "shape not a list": set_entry("shape", "4x4"),
    "offsets wrong size": set_entry("data_offsets", [0, 3]),
    "huge declared shape": set_entry("shape", [10**12, 10**12]),
    "extra entry field": set_entry("note", "hi"),
    "metadata not text": edit_header(lambda h: h.update(__metadata__={"a": 1})),
    "gap between tensors": shift_second_tensor,
    "trailing bytes": lambda f: weights(f).write_bytes(weights(f).read_bytes() + b"\0" * 16),
    # the tensors against the base model
    "integer weights": as_integers,
    "wrong shape": wrong_shape,
    "name not in base": rename_tensor,
    "a weight missing": drop_a_tensor,
    # the checkpoint's other files
    "config not utf-8": write_file("checkpoint/config.json", b"\xff\xfe{}"),
    "config not json": write_file("checkpoint/config.json", "{"),
    "config custom code": write_file("checkpoint/config.json", '{"model_type": "llama", "auto_map": {"x": "y"}}'),
    "pickle weights": write_file("checkpoint/pytorch_model.bin", b"\x80\x04"),
    "code file": write_file("checkpoint/modeling.py", "import os\n"),
    "no config": lambda f: (f / "checkpoint" / "config.json").unlink(),
    "tokenizer not json": write_file("checkpoint/tokenizer.json", "{{"),
}


def test_there_are_at_least_thirty_mutations():
    assert len(MUTATIONS) >= 30


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_llama_dir):
    """A valid checkpoint submission with its base inside, and a built three-record `zsre`."""
    from test_editing import write_benchmark
    from test_submissions import manifest as submission_manifest

    from editeval.data.schema import empty_request
    from editeval.runtime.models import load

    root = tmp_path_factory.mktemp("mutations")
    folder = root / "template"
    shutil.copytree(tiny_llama_dir, folder / "base")
    shutil.copytree(tiny_llama_dir, folder / "checkpoint")
    fingerprint = load(folder / "base", device="cpu").fingerprint()
    manifest = submission_manifest(
        title="A checkpoint", base_model={"name": "base", "fingerprint": fingerprint}, num_edits=2
    )
    (folder / "submission.yaml").write_text(yaml.safe_dump(manifest))
    requests = [
        empty_request(case_id=i, subject="France", prompt="The capital of France is", target_new=t)
        for i, t in enumerate(["Rome", "Oslo"])
    ]
    write_benchmark(root / "datasets", "zsre", requests)
    return folder


@pytest.fixture()
def env(good, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("EDITEVAL_DATASETS", str(good.parent / "datasets"))
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_unbroken_submission_passes_check_with_its_tensors_checked_against_the_base(good, env, capsys):
    folder = env / "entry"
    shutil.copytree(good, folder)
    code, out, err = run(["submit", "check", folder], capsys)
    assert code == 0 and out.startswith("ok: entry:") and "note:" not in out, (out, err)


@pytest.mark.parametrize("command", ["check", "score"])
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_broken_submission_fails_in_one_line_and_writes_nothing(good, env, capsys, mutation, command):
    folder = env / "entry"
    shutil.copytree(good, folder)
    MUTATIONS[mutation](folder)
    before, work = tree(folder), sorted(p.name for p in env.iterdir())
    argv = ["submit", "check", folder] if command == "check" else ["score", folder, "--piqa", "0", "--no-progress"]
    code, out, err = run(argv + (["--device", "cpu"] if command == "score" else []), capsys)
    assert code == 2, (out, err)
    assert "Traceback" not in err + out
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert tree(folder) == before and sorted(p.name for p in env.iterdir()) == work


@pytest.mark.parametrize("command", ["check", "score"])
def test_a_config_that_transformers_cannot_build_fails_in_one_line(good, env, capsys, command):
    """A checkpoint whose config.json is valid JSON with a value no model can be built from."""
    folder = env / "entry"
    shutil.copytree(good, folder)
    bad_config_value(folder)
    before = tree(folder)
    argv = ["submit", "check", folder] if command == "check" else ["score", folder, "--piqa", "0", "--device", "cpu"]
    code, out, err = run(argv, capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err + out and len(errors) == 1, (out, err)
    assert "config.json" in errors[0] and tree(folder) == before
