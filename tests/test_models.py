"""Model loading across architectures (tiny random models from configs) and the base/checkpoint check."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from editeval.data.schema import empty_request
from editeval.errors import EditevalError
from editeval.evaluation.evaluator import Evaluator
from editeval.runtime.models import architecture_summary, check_compatible, load, weights_fingerprint


def _config(kind, tokenizer):
    import transformers as tf

    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if kind == "qwen2":
        return tf.Qwen2Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **common,
        ), tf.Qwen2ForCausalLM
    if kind == "mistral":
        return tf.MistralConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            sliding_window=128,
            **common,
        ), tf.MistralForCausalLM
    if kind == "gptj":
        return tf.GPTJConfig(
            n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=256, **common
        ), tf.GPTJForCausalLM
    raise ValueError(kind)


@pytest.fixture(scope="module", params=["qwen2", "mistral", "gptj"])
def tiny_other_dir(request, tokenizer, tmp_path_factory):
    config, cls = _config(request.param, tokenizer)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    cls(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


REQS = [
    empty_request(
        case_id=0,
        prompt="The Eiffel Tower is in",
        target_new="Rome city",
        ground_truth="Paris",
        rephrase_prompts=["Eiffel Tower location:"],
        locality=[{"kind": "nq", "prompt": "who wrote hamlet?", "answer": "Shakespeare"}],
    ),
    empty_request(
        case_id=1,
        prompt="Danielle Darrieux speaks",
        target_new="English",
        locality=[{"kind": "nq", "prompt": "capital of Germany, in a few words:", "answer": "it is Berlin"}],
    ),
]


SAFETENSORS_DTYPES = {"F32": "torch.float32", "BF16": "torch.bfloat16", "F16": "torch.float16"}
TIED_INPUT_EMBEDDING = {"gpt2": "transformer.wte.weight"}  # where a tied output embedding is stored


def _file_fingerprint(folder) -> str:
    """The weights fingerprint computed independently of torch and of editeval: `model.safetensors`
    parsed by hand (8-byte little-endian header length, JSON header, raw bytes), then sha256 over
    "name|dtype|shape|" + bytes of every tensor in name order, first 16 hex digits. A tied output
    embedding is stored once in the file; the model names it twice (lm_head.weight too)."""
    raw = (folder / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n :]
    tensors = {
        name: (
            SAFETENSORS_DTYPES[info["dtype"]],
            tuple(info["shape"]),
            data[info["data_offsets"][0] : info["data_offsets"][1]],
        )
        for name, info in header.items()
    }
    config = json.loads((folder / "config.json").read_text())
    if "lm_head.weight" not in tensors:
        assert config.get("tie_word_embeddings", True), "lm_head missing from an untied model's file"
        tensors["lm_head.weight"] = tensors[TIED_INPUT_EMBEDDING[config["model_type"]]]
    digest = hashlib.sha256()
    for name in sorted(tensors):
        dtype, shape, blob = tensors[name]
        digest.update(f"{name}|{dtype}|{shape}|".encode())
        digest.update(blob)
    return digest.hexdigest()[:16]


def _check_architecture(path):
    lm = load(path, device="cpu")
    assert lm.model.training is False and lm.tokenizer.pad_token is not None
    fingerprint = lm.fingerprint()
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    assert fingerprint == _file_fingerprint(path)  # the weights as stored, byte for byte
    rows = [
        Evaluator(
            lm, REQS, batch_size=bs, progress=False, use_cache=False, counterfact=True, mixed_lengths=mixed
        ).evaluate(lm.model)
        for bs, mixed in ((1, False), (4, False), (4, True))
    ]
    for a, b in zip(rows[0], rows[1]):  # bit-identical whatever the batch size (NaN where n/a)
        assert all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a)
    for a, b in zip(rows[0], rows[2]):
        assert a["reliability.teacher_forced"] == b["reliability.teacher_forced"]
        assert a["reliability.generation"] == b["reliability.generation"]
    assert all(r["locality.teacher_forced"] == 1.0 for r in rows[0])
    return lm


def test_every_architecture_loads_and_scores(tiny_other_dir):
    _check_architecture(tiny_other_dir)


def test_llama_and_gpt2_load_and_score(tiny_llama_dir, tiny_gpt2_dir):
    for path in (tiny_llama_dir, tiny_gpt2_dir):
        _check_architecture(path)


def test_fingerprint_is_stable_across_loads_and_differs_by_dtype(tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    first = load(tiny_llama_dir, device="cpu")
    fp32 = first.fingerprint()
    assert fp32 == _file_fingerprint(tiny_llama_dir)
    copy = shutil.copytree(tiny_llama_dir, tmp_path / "elsewhere")
    second = load(copy, device="cpu")  # an independent load, from another path
    assert second.model is not first.model and second.fingerprint() == fp32
    assert fp32 == first.fingerprint()  # computing it changes nothing
    bf16 = load(tiny_llama_dir, device="cpu", dtype="bfloat16")
    assert bf16.fingerprint() != fp32  # other bytes, other dtype names
    assert bf16.fingerprint() == weights_fingerprint(bf16.model.to(torch.float32).to(torch.bfloat16))
    assert _file_fingerprint(tiny_gpt2_dir) != fp32
    # weights_fingerprint depends on the weights, not on which object holds them
    assert weights_fingerprint(second.model) == fp32


def test_fingerprint_changes_with_one_weight(tiny_llama_dir):
    lm = load(tiny_llama_dir, device="cpu")
    before = lm.fingerprint()
    with torch.no_grad():
        lm.model.model.layers[0].mlp.down_proj.weight[0, 0] += 1e-3
    assert lm.fingerprint() != before
    with torch.no_grad():
        lm.model.model.layers[0].mlp.down_proj.weight.copy_(
            load(tiny_llama_dir, device="cpu").model.model.layers[0].mlp.down_proj.weight
        )
    assert lm.fingerprint() == before  # the same bytes again, the same fingerprint


def test_check_compatible(tiny_llama_dir, tiny_gpt2_dir, tiny_other_dir):
    llama = load(tiny_llama_dir, device="cpu")
    check_compatible(llama, load(tiny_llama_dir, device="cpu"))
    for other in (tiny_gpt2_dir, tiny_other_dir):
        with pytest.raises(EditevalError, match="architecture") as err:
            check_compatible(llama, load(other, device="cpu"))
        assert "\n" not in str(err.value)
    assert architecture_summary({"n_embd": 8, "n_layer": 2, "model_type": "gpt2"}) == {
        "hidden_size": 8,
        "num_hidden_layers": 2,
        "model_type": "gpt2",
    }


def test_bad_inputs_are_one_line_errors(tmp_path, tiny_llama_dir):
    with pytest.raises(EditevalError, match="unknown model"):
        load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EditevalError, match="config.json"):
        load(tmp_path / "empty")
    with pytest.raises(EditevalError, match=r"^--dtype float8: unknown dtype \(choose from bf16, bfloat16, "):
        load(tiny_llama_dir, dtype="float8")  # a tiny folder: the SmolLM2 weights are not needed for this
