"""Model loading across architectures (tiny random models from configs) and the base/checkpoint check."""

from __future__ import annotations

import pytest
import torch

from editeval.errors import EditevalError
from editeval.evaluate import Evaluator
from editeval.models import architecture_summary, check_compatible, load, weights_fingerprint
from editeval.schema import empty_request


def _config(kind, tokenizer):
    import transformers as tf

    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if kind == "qwen2":
        return tf.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=256, **common), tf.Qwen2ForCausalLM
    if kind == "mistral":
        return tf.MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=256, sliding_window=128,
                                **common), tf.MistralForCausalLM
    if kind == "gptj":
        return tf.GPTJConfig(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=256, **common), tf.GPTJForCausalLM
    raise ValueError(kind)


@pytest.fixture(scope="module", params=["qwen2", "mistral", "gptj"])
def tiny_other_dir(request, tokenizer, tmp_path_factory):
    config, cls = _config(request.param, tokenizer)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    cls(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


REQS = [empty_request(case_id=0, prompt="The Eiffel Tower is in", target_new="Rome city", ground_truth="Paris",
                      rephrase_prompts=["Eiffel Tower location:"],
                      locality=[{"kind": "nq", "prompt": "who wrote hamlet?", "answer": "Shakespeare"}]),
        empty_request(case_id=1, prompt="Danielle Darrieux speaks", target_new="English",
                      locality=[{"kind": "nq", "prompt": "capital of Germany, in a few words:", "answer": "it is Berlin"}])]


def _check_architecture(path):
    lm = load(path, device="cpu")
    assert lm.model.training is False and lm.tokenizer.pad_token is not None
    assert lm.fingerprint() == weights_fingerprint(lm.model) and len(lm.fingerprint()) == 16
    rows = [Evaluator(lm, REQS, batch_size=bs, progress=False, use_cache=False, counterfact=True,
                      mixed_lengths=mixed).evaluate(lm.model) for bs, mixed in ((1, False), (4, False), (4, True))]
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


def test_fingerprint_changes_with_one_weight(tiny_llama_dir):
    lm = load(tiny_llama_dir, device="cpu")
    before = lm.fingerprint()
    with torch.no_grad():
        lm.model.model.layers[0].mlp.down_proj.weight[0, 0] += 1e-3
    assert lm.fingerprint() != before


def test_check_compatible(tiny_llama_dir, tiny_gpt2_dir, tiny_other_dir):
    llama = load(tiny_llama_dir, device="cpu")
    check_compatible(llama, load(tiny_llama_dir, device="cpu"))
    for other in (tiny_gpt2_dir, tiny_other_dir):
        with pytest.raises(EditevalError, match="architecture") as err:
            check_compatible(llama, load(other, device="cpu"))
        assert "\n" not in str(err.value)
    assert architecture_summary({"n_embd": 8, "n_layer": 2, "model_type": "gpt2"}) == {
        "hidden_size": 8, "num_hidden_layers": 2, "model_type": "gpt2"}


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(EditevalError, match="unknown model"):
        load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EditevalError, match="config.json"):
        load(tmp_path / "empty")
    with pytest.raises(EditevalError, match="dtype"):
        load("smollm2-135m", dtype="float8")
