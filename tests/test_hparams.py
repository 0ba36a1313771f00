"""Hyper-parameters are typed: every preset of every method loads; unknown keys, wrong types and
out-of-range values are refused with one line naming the key; what a preset says is what
`to_dict` (and so a results record and its hash) holds."""

from __future__ import annotations

import pytest

from editeval.errors import EditevalError
from editeval.methods.base import HPARAMS_DIR, available_methods, get_method

PRESETS = [(name, path.name) for name in available_methods() for path in sorted((HPARAMS_DIR / name).glob("*.yaml"))]


def test_every_method_has_presets():
    assert {name for name, _ in PRESETS} == set(available_methods())


@pytest.mark.parametrize("name, preset", PRESETS)
def test_every_preset_loads(name, preset):
    method = get_method(name)
    hp = method.hparams.from_yaml(HPARAMS_DIR / name / preset)
    assert type(hp).from_dict(hp.to_dict()).to_dict() == hp.to_dict()


def test_a_preset_keeps_what_the_file_says():
    hp = get_method("lora").hparams.from_yaml(HPARAMS_DIR / "lora" / "llama.yaml")
    assert hp.to_dict()["lora_alpha"] == 32 and type(hp.to_dict()["lora_alpha"]) is int  # not 32.0
    assert get_method("lora").hparams(lora_alpha=0.5).lora_alpha == 0.5


@pytest.mark.parametrize(
    "text, message",
    [
        ("num_stepz: 3\n", "unknown hyper-parameter(s) num_stepz for FTMHParams"),
        ("num_steps: 2.5\n", "num_steps: input should be a valid integer, got 2.5"),
        ("num_steps: '3'\n", "num_steps: input should be a valid integer, got '3'"),
        ("lr: 1e-3\n", "lr: input should be a valid number, got '1e-3' (YAML reads"),
        ("layers: [one]\n", "layers.0: input should be a valid integer, got 'one'"),
        ("objective: both\n", "objective: input should be 'target_new' or 'prompt_last', got 'both'"),
        ("- 1\n", "expected a mapping of hyper-parameters"),
    ],
)
def test_a_bad_file_is_refused_in_one_line_naming_the_key(tmp_path, text, message):
    path = tmp_path / "hp.yaml"
    path.write_text(text)
    with pytest.raises(EditevalError) as err:
        get_method("ft-m").load_hparams(path=path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name, values, key",
    [
        ("grace", {"eps": 0}, "eps"),
        ("lora", {"rank": 0}, "rank"),
        ("lora", {"lora_type": "dora"}, "lora_type"),
        ("calinet", {"num_slots": 0}, "num_slots"),
        ("t-patcher", {"activation": "tanh"}, "activation"),
        ("ike", {"k": -1}, "k"),
        ("kn", {"p": 1.5}, "p"),
        ("serac", {"threshold": 2.0}, "threshold"),
    ],
)
def test_documented_ranges_are_enforced_in_code_and_on_assignment(name, values, key):
    cls = get_method(name).hparams
    with pytest.raises(EditevalError, match=rf"^{key}: "):
        cls(**values)
    hp = cls()
    with pytest.raises(EditevalError, match=rf"^{key}: "):
        setattr(hp, key, values[key])
