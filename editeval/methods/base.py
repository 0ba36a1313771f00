"""The one interface every editing method implements, the registry, presets and exact undo.

A method is one module under `editeval/methods/` that defines its hyper-parameters (a pydantic
model, subclass of `HParams`) and an `apply` function, registered with `@register_method`:

    @register_method("rome", hparams=ROMEHParams, batch=False, sequential=True)
    def apply_rome(model, tokenizer, requests, hparams) -> Backup: ...

`apply` edits the model's weights in place and returns a `Backup` (the original values of every
parameter it changed); `restore(model, backup)` puts them back bit for bit. Methods that wrap the
model instead of changing weights (IKE, GRACE, T-Patcher, CaliNET) install an `Addition`
(`editeval.methods.kit.artifacts`: a hook, codebook, added neurons or an in-context prompt) and put its removal
in `Backup.undo`; such an edited model is saved as a method artifact folder, not a checkpoint. Presets live in
`editeval/hparams/<method>/<model>.yaml` (a registered model name, or a family: `gpt2`, `llama`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from editeval.errors import EditevalError
from editeval.runtime.paths import PACKAGE_DIR

HPARAMS_DIR = PACKAGE_DIR / "hparams"

# model_type -> preset family used when no preset exists for the model's own name
FAMILY_OF_MODEL_TYPE = {
    "gpt2": "gpt2", "gptj": "gpt2", "gpt_neox": "gpt2",
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "gemma": "llama",
    "gemma2": "llama", "phi3": "llama",
}


class HParams(BaseModel):
    """Base of every method's hyper-parameters: a pydantic model that refuses unknown keys and
    values of the wrong type or out of their documented range, when a preset or a user file is
    loaded, when one is built in code and when one is assigned, with one error line naming the key
    (an EditevalError). Layer lists given for a model of `reference_num_layers` layers are rescaled
    to the depth of the model being edited.

    Values are checked strictly (no "5" for 5, no 1.5 for an int, no true for a number); an integer
    stays an integer in a float field (``lora_alpha: 32``), so `to_dict` and `hash` give what the
    file says, as the results records and caches have always stored it."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)

    reference_num_layers: int | None = Field(default=None, ge=1)

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise EditevalError(_describe(err, type(self).__name__)) from None

    def __setattr__(self, name: str, value) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as err:
            raise EditevalError(_describe(err, type(self).__name__)) from None

    @field_validator("*", mode="wrap")
    @classmethod
    def _integers_stay_integers(cls, value, handler):
        checked = handler(value)
        return value if type(value) is int and type(checked) is float else checked

    @classmethod
    def from_dict(cls, values: dict, source: str = "hparams") -> "HParams":
        try:
            return cls(**{str(key): value for key, value in values.items()})
        except EditevalError as err:
            raise EditevalError(f"{source}: {err}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "HParams":
        path = Path(path)
        if not path.exists():
            raise EditevalError(f"hyper-parameter file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise EditevalError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise EditevalError(f"{path}: expected a mapping of hyper-parameters")
        return cls.from_dict(values, source=str(path))

    def to_dict(self) -> dict:
        return self.model_dump()

    def replace(self, **changes) -> "HParams":
        """A copy with `changes`, checked like a loaded file."""
        return type(self).from_dict({**self.to_dict(), **changes}, source=f"{type(self).__name__} override")

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def scale_layer(self, layer: int, num_layers: int) -> int:
        """Map a layer index chosen for `reference_num_layers` onto a model with `num_layers`."""
        if self.reference_num_layers is None or self.reference_num_layers == num_layers:
            return layer
        return min(num_layers - 1, round(layer * num_layers / self.reference_num_layers))


def _describe(err: ValidationError, model: str) -> str:
    """One line for all of a validation's errors: the unknown keys, then each bad key's problem."""
    problems = err.errors()
    unknown = [str(e["loc"][0]) for e in problems if e["type"] == "extra_forbidden"]
    parts = [f"unknown hyper-parameter(s) {', '.join(sorted(unknown))} for {model}"] if unknown else []
    for e in problems:
        if e["type"] == "extra_forbidden":
            continue
        key = ".".join(str(part) for part in e["loc"]) or model
        hint = ""
        if isinstance(e.get("input"), str) and "number" in e["msg"] and _is_number(e["input"]):
            hint = " (YAML reads a number without a dot, like 1e-3, as text: write 1.0e-3)"
        parts.append(f"{key}: {e['msg'][0].lower()}{e['msg'][1:]}, got {e.get('input')!r}{hint}")
    return "; ".join(parts)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


Request = dict  # an edit-request record (editeval.data.schema.EDIT_REQUEST_FEATURES)


class Backup(dict):
    """What `restore` needs to undo an edit exactly: parameter name -> its original value (a
    detached copy), plus `undo`, callables that take away what the edit added instead of changing
    weights (forward hooks, codebooks, added neurons, an in-context prompt; see
    `editeval.methods.kit.artifacts`). `restore` copies the parameters back, then runs `undo` last-first.
    A plain dict is accepted wherever a Backup is (it has no `undo`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.undo: list[Callable[[], None]] = []

ApplyFn = Callable[[torch.nn.Module, object, list[Request], HParams], Backup]
# prepare(model, tokenizer, batch, hparams, share): `share(items)` is this process's block of items
# (called once by every process)
PrepareFn = Callable[[torch.nn.Module, object, list[Request], HParams, Callable[[list], list]], None]


@dataclass(frozen=True)
class Method:
    name: str
    hparams: type[HParams]
    apply: ApplyFn
    batch: bool  # can apply many requests in one call
    sequential: bool  # edits can accumulate on one model
    needs_subject: bool  # the request's subject must occur in its prompt
    # optional: the costly per-request part of a batch edit, cached where `apply` finds it, so a
    # data-parallel batch run shares it out over the processes (MEMIT's value vectors); it is given
    # the whole batch and shares out what is still to compute (a resumed run's work stays even)
    prepare: PrepareFn | None = None

    def load_hparams(self, model: torch.nn.Module | None = None, model_name: str | None = None,
                     path: str | Path | None = None) -> HParams:
        return self.hparams.from_yaml(path or preset_path(self.name, model, model_name))


_METHODS: dict[str, Method] = {}


def register_method(name: str, *, hparams: type[HParams], batch: bool, sequential: bool = True,
                    needs_subject: bool = False, prepare: PrepareFn | None = None):
    def decorator(fn: ApplyFn) -> ApplyFn:
        _METHODS[name] = Method(name, hparams, fn, batch, sequential, needs_subject, prepare)
        return fn

    return decorator


def _import_all() -> None:
    import editeval.methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in {"base"} and not info.name.startswith("_"):
            importlib.import_module(f"editeval.methods.{info.name}")


def get_method(name: str) -> Method:
    _import_all()
    if name not in _METHODS:
        raise EditevalError(f"unknown method '{name}' (available: {', '.join(sorted(_METHODS))})")
    return _METHODS[name]


def available_methods() -> list[str]:
    _import_all()
    return sorted(_METHODS)


def train_benchmark_for(setting: str, requests: list[dict]) -> str:
    """The benchmark whose train split a learned or retrieval method draws on: `setting` itself,
    or for ``auto`` counterfact when the edits look like CounterFact (neighbourhood prompts, a
    prompt template), else zsre."""
    if setting != "auto":
        return setting
    looks_cf = any(r.get("prompt_template") or r.get("neighborhood_prompts")
                   or any(e.get("kind") == "neighborhood" for e in r.get("locality") or []) for r in requests)
    return "counterfact" if looks_cf else "zsre"


def preset_path(method: str, model: torch.nn.Module | None = None, model_name: str | None = None) -> Path:
    """hparams/<method>/<model name>.yaml if it exists, else the model family's preset."""
    folder = HPARAMS_DIR / method
    candidates = []
    if model_name:
        candidates.append(folder / f"{Path(str(model_name)).name}.yaml")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in FAMILY_OF_MODEL_TYPE:
        candidates.append(folder / f"{FAMILY_OF_MODEL_TYPE[model_type]}.yaml")
    for path in candidates:
        if path.exists():
            return path
    raise EditevalError(
        f"no hyper-parameter preset for method '{method}' and model '{model_name or model_type}' "
        f"in {folder} (pass --hparams FILE)"
    )


def check_editable(model: torch.nn.Module, names: list[str]) -> None:
    """Refuse (one line) to edit a parameter that a device map offloaded to CPU or disk: accelerate
    keeps only a meta placeholder in the model, so there is no weight in memory to change."""
    for name in names:
        if model.get_parameter(name).device.type == "meta":
            raise EditevalError(
                f"cannot edit {name}: the device map offloaded it to CPU or disk, so no device holds its "
                f"weights; edit a layer kept on a device, or give the devices more memory (max_memory)")


def backup_parameters(model: torch.nn.Module, names: list[str], backup: Backup | None = None) -> Backup:
    """Copy the current value of each named parameter into `backup` (first copy wins)."""
    check_editable(model, names)
    backup = Backup() if backup is None else backup
    for name in names:
        if name not in backup:
            backup[name] = model.get_parameter(name).detach().clone()
    return backup


def restore(model: torch.nn.Module, backup: Backup) -> None:
    """Put every backed-up parameter back exactly, then run the backup's `undo` callables
    (last-first) to remove what the edit added."""
    with torch.no_grad():
        for name, original in backup.items():
            model.get_parameter(name).copy_(original)
    for undo in reversed(getattr(backup, "undo", None) or []):
        undo()
