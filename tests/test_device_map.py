"""`--device-map` (accelerate big-model inference): a model spread over devices / offloaded to disk
scores exactly like a normal load, its fingerprint is the same, its key statistics equal the hooked
oracle's, and an offloaded layer is not edited. Key statistics come from a small generated corpus
(EDITEVAL_RAW_DATA points at it), so no test here needs ../shared/data/raw."""

from __future__ import annotations

import pytest
import torch

from editeval.data.schema import empty_request
from editeval.errors import EditevalError
from editeval.runtime.models import load

# layers 2-3 and the head on disk (meta tensors in the model, the values in accelerate's weights map)
DISK_MAP = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "cpu",
    "model.layers.2": "disk",
    "model.layers.3": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "disk",
}

REQS = [
    empty_request(
        case_id=i,
        subject="Danielle Darrieux",
        prompt=f"({i}) The mother tongue of Danielle Darrieux is",
        target_new=["English", "German"][i % 2],
        ground_truth="French",
        rephrase_prompts=["Danielle Darrieux's mother tongue is"],
        locality=[{"kind": "nq", "prompt": f"who wrote hamlet {i}?", "answer": "Shakespeare"}],
        portability=[{"kind": "one_hop", "prompt": "Danielle Darrieux speaks", "answer": "English"}],
    )
    for i in range(3)
]


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory):
    """A raw-data folder holding only a small key-statistics corpus under the name key_stats.py reads."""
    from _stats_oracle import write_corpus

    from editeval.methods.kit.key_stats import CORPUS_FILE

    raw = tmp_path_factory.mktemp("raw")
    write_corpus(raw / CORPUS_FILE)
    return raw


@pytest.fixture
def cache(tmp_path, small_raw, monkeypatch):
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EDITEVAL_RAW_DATA", str(small_raw))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def offloaded(tiny_llama_dir, tmp_path_factory):
    return load(tiny_llama_dir, device_map=DISK_MAP, offload_folder=tmp_path_factory.mktemp("offload"))


def test_auto_map_with_disk_offload_gives_the_same_logits_and_fingerprint(tiny_llama, tiny_llama_dir, tmp_path):
    # max_memory too small for the whole model: accelerate puts the rest on disk
    lm = load(tiny_llama_dir, device_map="auto", max_memory={"cpu": "10KB"}, offload_folder=tmp_path / "off")
    assert set(lm.model.hf_device_map.values()) == {"disk"}
    assert lm.device == torch.device("cpu")  # inputs go where accelerate runs the layers
    assert lm.fingerprint() == tiny_llama.fingerprint()  # read from the offloaded values
    ids = torch.tensor([[1, 400, 200, 35, 9]])
    with torch.no_grad():
        assert torch.allclose(lm.model(ids).logits, tiny_llama.model(ids).logits, atol=1e-6)


def test_scoring_with_a_device_map_equals_the_normal_load(tiny_llama_dir, cache, tmp_path):
    from editeval.run.scoring import score_checkpoint
    from editeval.runtime.settings import Runtime

    kw = dict(base=tiny_llama_dir, requests=REQS, piqa_items=0, benchmark="toy", generation=True)
    plain, plain_rows, _ = score_checkpoint(
        tiny_llama_dir, out=tmp_path / "a.json", runtime=Runtime(device="cpu", progress=False), **kw
    )
    spread, spread_rows, _ = score_checkpoint(
        tiny_llama_dir, out=tmp_path / "b.json", runtime=Runtime(device_map=DISK_MAP, progress=False), **kw
    )
    assert plain.meta.base_fingerprint == spread.meta.base_fingerprint
    assert plain_rows == spread_rows
    assert {k: m.mean for k, m in plain.metrics.items()} == {k: m.mean for k, m in spread.metrics.items()}


def test_key_statistics_of_offloaded_layers(tiny_llama, offloaded, cache, small_raw):
    """Layer 3's keys are computed from weights accelerate keeps on disk: the matrix equals the
    oracle's (Σ k kᵀ / n over forward-hooked MLP inputs of the plain model, one window at a time)."""
    from _stats_oracle import assert_close_to_oracle, documented_windows, hooked_second_moment

    from editeval.methods.kit import key_stats as stats

    kw = dict(tokens=600, max_len=64, use_cache=False, progress=False)
    spread = stats.second_moments(offloaded.model, offloaded.tokenizer, [1, 3], **kw)
    windows = documented_windows(tiny_llama.tokenizer, small_raw / stats.CORPUS_FILE, 600, 64)
    oracle, n = hooked_second_moment(tiny_llama.model, windows, [1, 3])
    assert n == 600
    for layer in (1, 3):
        assert_close_to_oracle(spread[layer], oracle[layer])


def test_rome_on_a_device_map_edits_the_kept_layer_and_refuses_an_offloaded_one(tiny_llama, offloaded, cache):
    from editeval.methods.base import get_method, restore

    rome = get_method("rome")
    request = dict(REQS[0], prompt="The mother tongue of Danielle Darrieux is")
    hp = rome.hparams(layer=1, mom2_tokens=400, mom2_max_len=64, context_short=2, context_long=0)
    name = "model.layers.1.mlp.down_proj.weight"
    plain = rome.apply(tiny_llama.model, tiny_llama.tokenizer, [request], hp)
    spread = rome.apply(offloaded.model, offloaded.tokenizer, [request], hp)
    try:
        delta_plain = tiny_llama.model.get_parameter(name) - plain[name]
        delta_spread = offloaded.model.get_parameter(name) - spread[name]
        assert delta_plain.norm() > 0
        assert torch.allclose(delta_plain, delta_spread, atol=1e-6)
    finally:
        restore(tiny_llama.model, plain)
        restore(offloaded.model, spread)
    before = offloaded.model.get_parameter(name).clone()
    with pytest.raises(
        EditevalError,
        match=r"cannot edit model\.layers\.3\.mlp\.down_proj\.weight: the device map "
        r"offloaded it",
    ):
        rome.apply(offloaded.model, offloaded.tokenizer, [request], rome.hparams(layer=3, mom2_adjustment=False))
    with pytest.raises(EditevalError, match="offloaded"):
        get_method("memit").apply(
            offloaded.model,
            offloaded.tokenizer,
            [request],
            get_method("memit").hparams(layers=[1, 2], mom2_tokens=400, mom2_max_len=64),
        )
    assert torch.equal(offloaded.model.get_parameter(name), before)


def test_bad_device_map_is_one_line(tiny_llama_dir):
    with pytest.raises(EditevalError, match="--device-map everywhere: choose from auto, balanced"):
        load(tiny_llama_dir, device_map="everywhere")
