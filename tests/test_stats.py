"""Key second-moment statistics: equal to Σ k kᵀ / n over forward-hooked MLP inputs (an oracle
outside the package), one pass for several layers, exact token count, cache, metadata, sharding, CLI.

Every test but one reads a small generated corpus (tests/_stats_oracle.py); the one marked
`needs_raw` checks the default corpus, the pinned Wikipedia file of ../shared/data/raw."""

from __future__ import annotations

import pytest
import torch
from _stats_oracle import all_windows, assert_close_to_oracle, documented_windows, hooked_second_moment, write_corpus

from editeval.errors import EditevalError
from editeval.methods.kit import key_stats as stats
from editeval.methods.kit import key_stats_files

TOKENS = 1500  # of the ~2,900 in the small corpus: the last window is cut short
KW = {"tokens": TOKENS, "max_len": 128, "progress": False}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "wiki.jsonl")


@pytest.fixture
def kw(corpus):
    return {**KW, "corpus": corpus}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_second_moments_equal_hooked_mlp_inputs(which, request, corpus):
    """The oracle: each window run alone through the model, the input of each layer's MLP output
    projection caught by a torch forward hook, Σ k kᵀ / n in float64. Once over every token of the
    corpus (independent of the article order), once over the documented first 1,500 tokens."""
    m = request.getfixturevalue(which)
    request.getfixturevalue("cache")
    windows = all_windows(m.tokenizer, corpus, 64)  # articles of 50-100 tokens: most are cut in two
    total = sum(map(len, windows))
    assert len(windows) > 60 and total > 1.5 * TOKENS
    got = stats.second_moments(
        m.model, m.tokenizer, [1, 3], tokens=total, max_len=64, corpus=corpus, batch_tokens=512, progress=False
    )  # several batches of padded windows
    oracle, n = hooked_second_moment(m.model, windows, [1, 3])
    assert n == total
    for layer in (1, 3):
        assert_close_to_oracle(got[layer], oracle[layer])
    assert not torch.allclose(oracle[1], oracle[3], rtol=1e-2)  # the layers do differ

    # exactly the first 1,500 tokens of the shuffled articles, cut into windows of 50
    got = stats.second_moment(m.model, m.tokenizer, 3, tokens=TOKENS, max_len=50, corpus=corpus, progress=False)
    oracle, n = hooked_second_moment(m.model, documented_windows(m.tokenizer, corpus, TOKENS, 50), [3])
    assert n == TOKENS
    assert_close_to_oracle(got, oracle[3])
    path = stats.cache_paths(m.model, [3], tokens=TOKENS, max_len=50, corpus=corpus)[3]
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        assert int(fh.get_tensor("count")[0]) == n  # the token count stored is the number of hooked rows


def test_second_moments_one_pass_and_cache(tiny_llama, corpus, kw, cache, monkeypatch):
    m = tiny_llama
    reads, forwards = [], []
    original = stats._read_articles
    monkeypatch.setattr(stats, "_read_articles", lambda path: (reads.append(path), original(path))[1])
    hook = m.model.register_forward_pre_hook(lambda module, args, kwargs: forwards.append(1), with_kwargs=True)
    try:
        both = stats.second_moments(m.model, m.tokenizer, [3, 1], **kw)
    finally:
        hook.remove()
    assert len(reads) == 1 and len(forwards) == 1  # both layers from one pass (1,500 tokens: one batch of 2,048)
    assert sorted(both) == [1, 3]
    oracle, n = hooked_second_moment(m.model, documented_windows(m.tokenizer, corpus, TOKENS, 128), [1, 3])
    for layer, mom2 in both.items():
        assert mom2.shape == (128, 128) and mom2.dtype == torch.float32
        assert_close_to_oracle(mom2, oracle[layer])
    files = sorted((cache / "stats").glob("*.safetensors"))
    assert len(files) == 2
    name = files[0].name
    sha = stats.file_sha256(corpus)
    assert m.fingerprint() in name and "model.layers.1.mlp.down_proj" in name
    assert f"t{TOKENS}" in name and f"c{sha[:12]}" in name

    from safetensors import safe_open

    with safe_open(str(files[0]), "pt") as fh:
        assert int(fh.get_tensor("count")[0]) == n == TOKENS  # the hooked positions, exactly the asked number
        assert fh.metadata()["corpus_sha256"] == sha

    # a second call is a cache hit: the corpus is not read, the model is not run
    monkeypatch.setattr(stats, "_read_articles", lambda path: pytest.fail("recomputed"))
    again = stats.second_moments(m.model, m.tokenizer, [1, 3], **kw)
    assert all(torch.equal(again[k], both[k]) for k in both)


def test_single_layer_matches_multi_layer_pass(tiny_llama, corpus, kw, cache):
    m = tiny_llama
    multi = stats.second_moments(m.model, m.tokenizer, [0, 2], use_cache=False, **kw)
    single = stats.second_moment(m.model, m.tokenizer, 0, use_cache=False, batch_tokens=128, **kw)
    oracle, _ = hooked_second_moment(m.model, documented_windows(m.tokenizer, corpus, TOKENS, 128), [0])
    assert_close_to_oracle(single, oracle[0])  # one window per batch
    assert_close_to_oracle(multi[0], oracle[0])  # batches of several padded windows
    assert not (cache / "stats").exists()  # use_cache=False writes nothing


@pytest.mark.needs_raw
def test_default_corpus_is_the_pinned_wikipedia_file(tiny_llama, cache):
    """Without `corpus=`, the raw data's Wikipedia JSONL is read, its sha256 pinned in the name and
    metadata, and its documented first windows are the ones averaged."""
    m = tiny_llama
    got = stats.second_moment(m.model, m.tokenizer, 2, tokens=300, max_len=64, progress=False)
    path = stats.cache_paths(m.model, [2], tokens=300, max_len=64)[2]
    assert f"c{stats.CORPUS_SHA256[:12]}" in path.name
    meta = key_stats_files.check_file(path)[0]
    assert meta["corpus"] == "enwiki2015_wikiextractor_50shards.jsonl" and meta["corpus_sha256"] == stats.CORPUS_SHA256
    assert stats.file_sha256(stats.corpus_path()) == stats.CORPUS_SHA256
    oracle, n = hooked_second_moment(m.model, documented_windows(m.tokenizer, stats.corpus_path(), 300, 64), [2])
    assert n == 300
    assert_close_to_oracle(got, oracle[2])


def test_bad_inputs(tiny_llama, corpus, cache, tmp_path):
    m = tiny_llama
    with pytest.raises(EditevalError, match="layer 9 does not exist"):
        stats.second_moments(m.model, m.tokenizer, [9], **KW)
    with pytest.raises(EditevalError, match="statistics corpus has fewer than 100000 tokens for this tokenizer"):
        stats.second_moments(m.model, m.tokenizer, [1], **{**KW, "tokens": 100_000}, corpus=corpus)
    assert not (cache / "stats").exists()
    with pytest.raises(EditevalError, match="corpus not found"):
        stats.second_moments(m.model, m.tokenizer, [1], corpus=tmp_path / "missing.jsonl", **KW)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(EditevalError, match="bad.jsonl:1"):
        stats.second_moments(m.model, m.tokenizer, [1], corpus=bad, **KW)


# ---------------------------------------------------------------------------- metadata, sharding, CLI


def _rewrite(path, out=None, **changes):
    """Copy a statistics file with some metadata fields (or the 'count' tensor) changed."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    if "count" in changes:
        tensors["count"] = torch.tensor([changes.pop("count")])
    meta.update({k: str(v) for k, v in changes.items()})
    save_file(tensors, str(out or path), metadata=meta)
    return out or path


def run_cli(capsys, *argv):
    from editeval.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def test_metadata_header_and_mismatch_recomputes(tiny_llama, corpus, kw, cache, caplog):
    import editeval

    m = tiny_llama
    first = stats.second_moment(m.model, m.tokenizer, 2, **kw)
    path = stats.cache_paths(m.model, [2], tokens=TOKENS, max_len=128, corpus=corpus)[2]
    meta = key_stats_files.read_metadata(path)
    assert meta == {
        **meta,
        "format": key_stats_files.FORMAT,
        "model_fingerprint": m.fingerprint(),
        "model_type": "llama",
        "model_dtype": "float32",
        "layer": "2",
        "module": "model.layers.2.mlp.down_proj",
        "tokens": str(TOKENS),
        "max_len": "128",
        "corpus": "wiki.jsonl",
        "corpus_sha256": stats.file_sha256(corpus),
        "dtype": "float32",
        "processes": "1",
        "editeval_version": editeval.__version__,
    }
    assert torch.equal(key_stats_files.check_file(path)[1], first)

    # a file under this name whose metadata or contents say otherwise is not used: recomputed, rewritten
    for bad in ({"tokens": TOKENS + 1}, {"model_fingerprint": "0" * 16}, {"count": 7}):
        _rewrite(path, **bad)
        again = stats.second_moment(m.model, m.tokenizer, 2, **kw)
        assert torch.equal(again, first)
        assert key_stats_files.check_file(path)[0]["tokens"] == str(TOKENS)
    assert "ignoring statistics file" in caplog.text and "recomputing" in caplog.text

    with pytest.raises(EditevalError, match=r"malformed metadata module='\.\./x'"):
        key_stats_files.check_file(_rewrite(path, cache / "evil.safetensors", module="../x"))
    with pytest.raises(EditevalError, match="expected '64'"):
        key_stats_files.check_file(path, {"max_len": 64})


def test_sharded_build_equals_one_process(tiny_llama_dir, tiny_llama, corpus, cache):
    """`accelerate launch` with 2 processes (CPU, gloo): each runs every other window of the same
    1,500 tokens; the reduced matrix is the hooked oracle's and the main process writes it."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "EDITEVAL_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # (`--cpu` alone starts one process unless MPI is set up; `--multi_gpu` on a CPU machine starts N)
    # the launcher as a module of this interpreter, as test_distributed does: no console script needed
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(port),
            "-m",
            "editeval",
            "stats",
            "build",
            "--model",
            str(tiny_llama_dir),
            "--layers",
            "1,3",
            "--tokens",
            str(TOKENS),
            "--max-len",
            "128",
            "--corpus",
            str(corpus),
            "--device",
            "cpu",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("built (2 processes)") == 2  # printed once, by the main process

    m = tiny_llama
    oracle, n = hooked_second_moment(m.model, documented_windows(m.tokenizer, corpus, TOKENS, 128), [1, 3])
    for layer, path in stats.cache_paths(m.model, [1, 3], tokens=TOKENS, max_len=128, corpus=corpus).items():
        meta, mom2 = key_stats_files.check_file(path)
        assert meta["processes"] == "2" and meta["tokens"] == str(TOKENS) == str(n)
        assert_close_to_oracle(mom2, oracle[layer])


def test_cli_build_list_publish_pull(tiny_llama_dir, tiny_llama, corpus, kw, cache, tmp_path, capsys, monkeypatch):
    import shutil

    import huggingface_hub

    code, out, _ = run_cli(
        capsys,
        "stats",
        "build",
        "--model",
        tiny_llama_dir,
        "--layers",
        "0-1",
        "--corpus",
        corpus,
        "--tokens",
        TOKENS,
        "--max-len",
        128,
        "--device",
        "cpu",
        "--no-progress",
    )
    assert code == 0 and out.count("built (1 process)") == 2
    code, out, _ = run_cli(capsys, "stats", "list")
    fp = tiny_llama.fingerprint()
    rows = [line.split() for line in out.splitlines() if line.startswith(fp)]
    assert [r[2:5] for r in rows] == [
        ["0", "model.layers.0.mlp.down_proj", "1,500"],
        ["1", "model.layers.1.mlp.down_proj", "1,500"],
    ]
    files = sorted((cache / "stats").glob("*.safetensors"))

    code, out, _ = run_cli(capsys, "stats", "publish", "--repo-id", "editeval/key-stats", "--dry-run")
    assert code == 0
    assert out.startswith("dry run: would upload 2 files to https://huggingface.co/datasets/editeval/key-stats")
    for f in files:
        assert f"stats/{f.name}" in out and f"{f.stat().st_size:,}" in out
    assert f"total: 2 files, {sum(f.stat().st_size for f in files):,} bytes" in out

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    code, _, err = run_cli(capsys, "stats", "publish", "--repo-id", "editeval/key-stats")
    assert code == 2 and err.strip().splitlines() == [
        "error: no Hugging Face token: set HF_TOKEN or run `hf auth login`, then publish again (--dry-run needs none)"
    ]
    code, _, err = run_cli(capsys, "stats", "publish", "--repo-id", "not a repo", "--dry-run")
    assert code == 2 and err.strip().splitlines() == ["error: --repo-id must look like ORG/NAME, got 'not a repo'"]

    # a "Hub snapshot": this model's two files, one of another model's weights, one broken
    hub = tmp_path / "hub"
    (hub / "stats").mkdir(parents=True)
    for f in files:
        shutil.copy(f, hub / "stats" / f.name)
    _rewrite(files[0], hub / "stats" / "other.safetensors", model_fingerprint="f" * 16)
    _rewrite(files[1], hub / "stats" / "broken.safetensors", count=3)
    shutil.rmtree(cache / "stats")
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: calls.append(kw) or str(hub))
    code, out, _ = run_cli(capsys, "stats", "pull", "--repo-id", "editeval/key-stats", "--model", tiny_llama_dir)
    assert code == 0, out
    assert calls[0]["repo_id"] == "editeval/key-stats" and calls[0]["repo_type"] == "dataset"
    assert calls[0]["allow_patterns"] == [f"*{fp}__*.safetensors"]  # only this model's files are downloaded
    assert f"skipped other.safetensors: computed on model weights {'f' * 16}, not on this model's ({fp})" in out
    assert "skipped broken.safetensors: token count [3] does not match metadata tokens=1500" in out
    assert out.strip().splitlines()[-1] == "2 pulled, 0 already cached, 2 skipped"
    assert sorted(p.name for p in (cache / "stats").glob("*.safetensors")) == [f.name for f in files]
    monkeypatch.setattr(stats, "_read_articles", lambda path: pytest.fail("recomputed"))
    mom2 = stats.second_moments(tiny_llama.model, tiny_llama.tokenizer, [0, 1], **kw)  # used as they are
    assert torch.equal(mom2[0], key_stats_files.check_file(files[0])[1])

    code, out, _ = run_cli(capsys, "stats", "pull", "--from-dir", hub, "--model", tiny_llama_dir)
    assert code == 0 and out.strip().splitlines()[-1] == "0 pulled, 2 already cached, 2 skipped"
    (hub / "stats" / files[0].name).unlink()
    (hub / "stats" / files[1].name).unlink()
    code, _, err = run_cli(capsys, "stats", "pull", "--from-dir", hub, "--model", tiny_llama_dir)
    assert code == 2 and err.strip().splitlines()[-1] == (  # (after transformers' loading bar)
        f"error: no key statistics for {tiny_llama_dir} (weights {fp}) in {hub}: 2 file(s) skipped"
    )
    code, _, err = run_cli(capsys, "stats", "pull", "--model", tiny_llama_dir)
    assert code == 2 and err.strip() == "error: give exactly one of --repo-id ORG/NAME or --from-dir FOLDER"
