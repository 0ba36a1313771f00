"""Shared fixtures: offline, one torch thread, tiny random models built from configs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real SmolLM2-135M folder (converted once into the editeval cache)."""
    from editeval.models import registered_model_dir

    return registered_model_dir("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    """The real SmolLM2-135M, float32 on CPU. Do not edit it in place without restoring."""
    from editeval.models import load

    return load("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    """SmolLM2's real tokenizer, borrowed by the tiny models."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok


def _save_tiny(model, tokenizer, path):
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer):
    """A 4-layer random LLaMA folder with SmolLM2's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return _save_tiny(LlamaForCausalLM(config), tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tokenizer):
    """A 4-layer random GPT-2 folder with SmolLM2's tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=4, n_head=4, n_positions=256,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return _save_tiny(GPT2LMHeadModel(config), tokenizer, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    """The tiny LLaMA loaded (a fresh copy per test module, so edits cannot leak across modules)."""
    from editeval.models import load

    return load(tiny_llama_dir, device="cpu")


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_gpt2_dir):
    """The tiny GPT-2 loaded (a fresh copy per test module)."""
    from editeval.models import load

    return load(tiny_gpt2_dir, device="cpu")
