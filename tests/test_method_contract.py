"""The contract every registered method keeps, on tiny LLaMA and GPT-2 in float32, bfloat16 and
float16: its preset resolves for the model, `apply` changes only the tensors it backed up (keeping
their dtype, finite; a wrapper method changes none and installs an addition instead), and `restore`
gives back the model bit for bit (weights, additions and logits). Budgets are tiny: the mechanics,
not the quality. A new method joins by adding its tiny budget to TINY (a test asks for it).

The learned methods use an editor (MEND, KE) or scope classifier (SERAC) trained here for a few
steps on float32 models; IKE and T-Patcher read the small zsre train split of conftest."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from _stats_oracle import write_corpus
from _zsre_train import train_requests

from editeval.data.schema import empty_request
from editeval.methods.base import available_methods, get_method, restore
from editeval.methods.kit import artifacts
from editeval.runtime.models import load

REQUESTS = [
    empty_request(
        case_id=0,
        subject="Danielle Darrieux",
        prompt="The mother tongue of Danielle Darrieux is",
        target_new="English",
        ground_truth="French",
        rephrase_prompts=["Danielle Darrieux's mother tongue is"],
        locality=[{"kind": "nq", "prompt": "nq question: who wrote hamlet", "answer": "Shakespeare"}],
    ),
    empty_request(
        case_id=1,
        subject="Water",
        prompt="Water boils at a temperature of",
        target_new="fifty degrees",
        ground_truth="hundred",
        rephrase_prompts=["The boiling point of water is"],
    ),
]
PROBE = "The mother tongue of Danielle Darrieux is English. Water boils at"
# preset values replaced for speed; the layers are those of the 4-layer tiny models
_MASS = {"mom2_tokens": 500, "mom2_max_len": 64, "v_num_grad_steps": 2, "context_long": 1}
_ROME = {
    "layer": 1,
    "mom2_tokens": 500,
    "mom2_max_len": 64,
    "v_num_grad_steps": 2,
    "context_short": 1,
    "context_long": 1,
}
TINY = {
    "alphaedit": {"layers": [1, 2], **_MASS},
    "calinet": {"layers": [3], "num_slots": 4, "num_steps": 2},
    "ft-l": {"layers": [1], "num_steps": 2},
    "ft-m": {"layers": [1], "num_steps": 2},
    "grace": {"layer": 2, "num_steps": 2},
    "ike": {"k": 2},
    "ke": {"layers": [2, 3], "train_steps": 2, "cond_dim": 8, "head_dim": 8},
    "kn": {"steps": 2, "max_prompts": 1},
    "lora": {"layers": [3], "rank": 2, "num_steps": 2},
    "emmet": {"layers": [2], **_MASS},
    "memit": {"layers": [1, 2], **_MASS},
    "mend": {"layers": [2, 3], "train_steps": 2, "rank": 8},
    "r-rome": _ROME,
    "rome": _ROME,
    "serac": {"train_steps": 2, "batch_size": 4, "val_fraction": 0.0},
    "t-patcher": {"num_steps": 2, "memory_size": 4},
    "ultraedit": {"layers": [2, 3], "lr": 1e-2},
    "wise": {"layer": 2, "n_iter": 2, "context_short": 1, "context_long": 1, "irrelevant_pool": 4},
}
DTYPES = ["float32", "bfloat16", "float16"]
LEARNED = {"mend": "editor_path", "ke": "editor_path", "serac": "classifier_path"}


def test_every_method_is_in_the_contract():
    assert sorted(TINY) == available_methods()


@pytest.fixture(scope="module")
def environment(tmp_path_factory, built_zsre):
    from editeval.methods.kit.key_stats import CORPUS_FILE

    raw = tmp_path_factory.mktemp("raw")
    write_corpus(raw / CORPUS_FILE, articles=10)
    return {
        "EDITEVAL_RAW_DATA": str(raw),
        "EDITEVAL_DATASETS": str(built_zsre / "datasets"),
        "EDITEVAL_CACHE": str(tmp_path_factory.mktemp("cache")),
    }


@pytest.fixture(autouse=True)
def _environment(environment, monkeypatch):
    import datasets
    from editeval.methods import ike, t_patcher, wise
    from editeval.runtime import paths

    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    # IKE, T-Patcher and WISE read the small zsre train split: `apply` is called without a run's folder
    monkeypatch.setattr(paths, "DEFAULT_DATASETS_DIR", Path(environment["EDITEVAL_DATASETS"]))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", environment["EDITEVAL_CACHE"] + "/hf-datasets")
    monkeypatch.setattr(ike, "_POOLS", {})  # pools of other test modules' datasets
    monkeypatch.setattr(t_patcher, "_MEMORY", {})
    monkeypatch.setattr(wise, "_POOLS", {})


@pytest.fixture(scope="module")
def models(tiny_llama_dir, tiny_gpt2_dir):
    """(architecture, dtype) -> loaded model, shared: every test leaves it as it found it (it checks so)."""
    dirs = {"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir}
    return {(arch, dtype): load(dirs[arch], device="cpu", dtype=dtype) for arch in dirs for dtype in DTYPES}


@pytest.fixture(scope="module")
def trained(models, tmp_path_factory):
    """(method, architecture) -> the folder of a learned method's editor / classifier, trained lazily."""
    folders = {}

    def get(name: str, arch: str, hparams):
        if (name, arch) not in folders:
            records = train_requests()
            module = importlib.import_module(f"editeval.methods.{name.replace('-', '_')}")
            folder = tmp_path_factory.mktemp(f"{name}-{arch}")
            module.train(models[(arch, "float32")], records, hparams, "zsre", out_dir=folder, progress=False)
            folders[(name, arch)] = str(folder)
        return folders[(name, arch)]

    return get


def _logits(loaded) -> torch.Tensor:
    ids = loaded.tokenizer(PROBE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return loaded.model(input_ids=ids).logits


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("name", sorted(TINY))
def test_apply_changes_only_what_it_backs_up_and_restore_is_exact(models, trained, name, arch, dtype):
    loaded = models[(arch, dtype)]
    model = loaded.model
    method = get_method(name)
    hparams = method.load_hparams(model).replace(reference_num_layers=None, **TINY[name])
    if name in LEARNED:
        hparams = hparams.replace(train_benchmark="zsre", **{LEARNED[name]: trained(name, arch, hparams)})
    before, logits, installed = model.state_dict(), _logits(loaded), artifacts.additions(model)
    before = {k: v.clone() for k, v in before.items()}
    requests = REQUESTS if method.batch else REQUESTS[:1]

    backup = method.apply(model, loaded.tokenizer, requests, hparams)

    after = model.state_dict()
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    added = [a for a in artifacts.additions(model) if a not in installed]
    assert changed <= set(backup), f"{name} changed tensors it did not back up: {sorted(changed - set(backup))}"
    assert changed or added, f"{name} changed nothing"
    assert all(after[k].dtype == before[k].dtype and torch.isfinite(after[k].float()).all() for k in changed)
    restore(model, backup)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert artifacts.additions(model) == installed
    assert torch.equal(_logits(loaded), logits)
