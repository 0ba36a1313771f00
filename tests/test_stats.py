"""Key second-moment statistics: shape, one pass for several layers, exact token count, cache."""

from __future__ import annotations

import pytest
import torch

from editeval import stats
from editeval.errors import EditevalError
from editeval.models import load

TOKENS = 1500
KW = {"tokens": TOKENS, "max_len": 128, "progress": False}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path))
    return tmp_path


def test_second_moments_one_pass_and_cache(tiny_llama, cache, monkeypatch):
    m = tiny_llama
    both = stats.second_moments(m.model, m.tokenizer, [3, 1], **KW)
    assert sorted(both) == [1, 3]
    for mom2 in both.values():
        assert mom2.shape == (128, 128) and mom2.dtype == torch.float32
        assert torch.allclose(mom2, mom2.T, atol=1e-5)
        assert torch.linalg.eigvalsh(mom2.double()).min() > -1e-6  # positive semi-definite
    files = sorted((cache / "stats").glob("*.safetensors"))
    assert len(files) == 2
    name = files[0].name
    assert m.fingerprint() in name and "model.layers.1.mlp.down_proj" in name
    assert f"t{TOKENS}" in name and f"c{stats.CORPUS_SHA256[:12]}" in name

    from safetensors import safe_open

    with safe_open(str(files[0]), "pt") as fh:
        assert int(fh.get_tensor("count")[0]) == TOKENS  # exactly the asked number of tokens
        assert fh.metadata()["corpus_sha256"] == stats.CORPUS_SHA256

    # a second call is a cache hit: the corpus is not read, the model is not run
    monkeypatch.setattr(stats, "_read_articles", lambda path: pytest.fail("recomputed"))
    again = stats.second_moments(m.model, m.tokenizer, [1, 3], **KW)
    assert all(torch.equal(again[k], both[k]) for k in both)


def test_single_layer_matches_multi_layer_pass(tiny_llama, cache):
    m = tiny_llama
    multi = stats.second_moments(m.model, m.tokenizer, [0, 2], use_cache=False, **KW)
    single = stats.second_moment(m.model, m.tokenizer, 0, use_cache=False, batch_tokens=128, **KW)
    assert torch.allclose(single, multi[0], rtol=1e-4, atol=1e-6)  # batching/padding does not change it


def test_gpt2_conv1d_keys(tiny_gpt2, cache):
    mom2 = stats.second_moment(tiny_gpt2.model, tiny_gpt2.tokenizer, 1, **KW)
    assert mom2.shape == (256, 256)  # the input of c_proj is the 4·d MLP activation


def test_bad_inputs(tiny_llama, cache, tmp_path):
    m = tiny_llama
    with pytest.raises(EditevalError, match="layer 9 does not exist"):
        stats.second_moments(m.model, m.tokenizer, [9], **KW)
    with pytest.raises(EditevalError, match="corpus not found"):
        stats.second_moments(m.model, m.tokenizer, [1], corpus=tmp_path / "missing.jsonl", **KW)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(EditevalError, match="bad.jsonl:1"):
        stats.second_moments(m.model, m.tokenizer, [1], corpus=bad, **KW)
