"""The weight-editing methods in bfloat16 and float16 (CPU, tiny random LLaMA): the edit changes the
weights it says it changes, keeps their dtype, and `restore` gives the originals bit for bit.
ROME and MEMIT read their key statistics from a small generated corpus (EDITEVAL_RAW_DATA points at
it), so nothing here needs ../shared/data/raw."""

from __future__ import annotations

import pytest
import torch

from editeval.methods import get_method, restore
from editeval.runtime.models import load
from editeval.data.schema import empty_request

REQUEST = empty_request(case_id=1, subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux is",
                        target_new="English", ground_truth="French",
                        rephrase_prompts=["Danielle Darrieux's mother tongue is"])
TINY = {  # small budgets: the mechanics, not the quality
    "ft-l": {"layers": [1], "num_steps": 3},
    "ft-m": {"layers": [1], "num_steps": 3},
    "kn": {"steps": 4},
    "rome": {"layer": 1, "mom2_tokens": 1000, "mom2_max_len": 128, "v_num_grad_steps": 4, "context_short": 1,
             "context_long": 1},
    "memit": {"layers": [1, 2], "mom2_tokens": 1000, "mom2_max_len": 128, "v_num_grad_steps": 4, "context_long": 1},
}


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory):
    """A raw-data folder holding only a small key-statistics corpus under the name key_stats.py reads."""
    from _stats_oracle import write_corpus

    from editeval.methods.kit.key_stats import CORPUS_FILE

    raw = tmp_path_factory.mktemp("raw")
    write_corpus(raw / CORPUS_FILE)
    return raw


@pytest.fixture(autouse=True)
def cache(small_raw, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("EDITEVAL_RAW_DATA", str(small_raw))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", sorted(TINY))
def test_edit_in_half_precision_keeps_dtype_and_restores(tiny_llama_dir, name, dtype):
    lm = load(tiny_llama_dir, device="cpu", dtype=dtype)
    method = get_method(name)
    hp = method.load_hparams(lm.model)
    for key, value in TINY[name].items():
        setattr(hp, key, value)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    backup = method.apply(lm.model, lm.tokenizer, [REQUEST], hp)
    after = lm.model.state_dict()
    changed = sorted(k for k, v in after.items() if not torch.equal(v, before[k]))
    assert changed and set(changed) <= set(backup)
    assert all(after[k].dtype == getattr(torch, dtype) for k in changed)
    assert all(torch.isfinite(after[k].float()).all() for k in changed)
    restore(lm.model, backup)
    assert all(torch.equal(v, before[k]) for k, v in lm.model.state_dict().items())
