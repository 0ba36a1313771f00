"""The one interface every editing method implements, the registry, presets and exact undo.

A method is one module under `editeval/methods/` that defines its hyper-parameters (a pydantic
model, subclass of `HParams`) and an `apply` function, registered with `@register_method`:

    @register_method("rome", hparams=ROMEHParams, batch=False, sequential=True)
    def apply_rome(model, tokenizer, requests, hparams) -> Backup: ...

The registration is the whole of adding a method (docs/extending.md): `METHODS` imports every module of
this package the first time it is read, and a third-party package registers its methods through the
``editeval.methods`` entry-point group. A learned method also registers its `train` function.

`apply` edits the model's weights in place and returns a `Backup` (the original values of every
parameter it changed); `restore(model, backup)` puts them back bit for bit. Methods that wrap the
model instead of changing weights (IKE, GRACE, T-Patcher, CaliNET) install an `Addition`
(`editeval.methods.kit.artifacts`: a hook, codebook, added neurons or an in-context prompt) and put its removal
in `Backup.undo`; such an edited model is saved as a method artifact folder, not a checkpoint. Presets live in
`editeval/hparams/<method>/<model>.yaml` (a registered model name, or the preset family of the model's
architecture: `gpt2`, `llama`; see `editeval.runtime.architectures`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from editeval.errors import EditevalError
from editeval.runtime.architectures import ARCHITECTURES
from editeval.runtime.paths import PACKAGE_DIR
from editeval.runtime.registry import Registry, import_modules

HPARAMS_DIR = PACKAGE_DIR / "hparams"


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
    def from_dict(cls, values: dict, source: str = "hparams") -> HParams:
        try:
            return cls(**{str(key): value for key, value in values.items()})
        except EditevalError as err:
            raise EditevalError(f"{source}: {err}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> HParams:
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

    def replace(self, **changes) -> HParams:
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
# train(loaded, records, hparams, benchmark, *, out_dir, progress, fresh) -> a report (steps,
# resumed_from, finished, seconds, last_losses, folder): `editeval train METHOD`
TrainFn = Callable[..., object]


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
    # optional: a learned method's training of what `apply` needs (MEND/KE editors, SERAC's classifier)
    train: TrainFn | None = None
    # `apply` draws on a benchmark's train split (IKE's demonstrations, T-Patcher's memory): it takes
    # the run's built-datasets folder as the keyword ``datasets_dir`` (None: `paths.datasets_dir()`)
    uses_datasets: bool = False

    def edit(self, model: torch.nn.Module, tokenizer, requests: list[Request], hparams: HParams, *, datasets_dir=None):
        """`apply`, handed the run's datasets folder when the method reads one (`uses_datasets`)."""
        if self.uses_datasets:
            return self.apply(model, tokenizer, requests, hparams, datasets_dir=datasets_dir)
        return self.apply(model, tokenizer, requests, hparams)

    def load_hparams(
        self, model: torch.nn.Module | None = None, model_name: str | None = None, path: str | Path | None = None
    ) -> HParams:
        return self.hparams.from_yaml(path or preset_path(self.name, model, model_name))


# every method module of this package registers itself when imported; plugins through entry points
METHODS: Registry[Method] = Registry(
    "method", builtins=lambda: import_modules("editeval.methods", skip=("base",)), group="editeval.methods"
)


def register_method(
    name: str,
    *,
    hparams: type[HParams],
    batch: bool,
    sequential: bool = True,
    needs_subject: bool = False,
    prepare: PrepareFn | None = None,
    train: TrainFn | None = None,
    uses_datasets: bool = False,
):
    """Decorator over a method's `apply`: registers the method as `name`."""

    def decorator(fn: ApplyFn) -> ApplyFn:
        METHODS.add(name, Method(name, hparams, fn, batch, sequential, needs_subject, prepare, train, uses_datasets))
        return fn

    return decorator


def get_method(name: str) -> Method:
    return METHODS.get(name)


def available_methods() -> list[str]:
    return sorted(METHODS.names())


def trainable_methods() -> list[str]:
    """The methods registered with a `train` (`editeval train METHOD`), sorted."""
    return [name for name, method in METHODS.items() if method.train is not None]


def train_benchmark_for(setting: str, requests: list[dict]) -> str:
    """The benchmark whose train split a learned or retrieval method draws on: `setting` itself,
    or for ``auto`` counterfact when the edits look like CounterFact (neighbourhood prompts, a
    prompt template), else zsre."""
    if setting != "auto":
        return setting
    looks_cf = any(
        r.get("prompt_template")
        or r.get("neighborhood_prompts")
        or any(e.get("kind") == "neighborhood" for e in r.get("locality") or [])
        for r in requests
    )
    return "counterfact" if looks_cf else "zsre"


def preset_path(method: str, model: torch.nn.Module | None = None, model_name: str | None = None) -> Path:
    """hparams/<method>/<model name>.yaml if it exists, else the model family's preset."""
    folder = HPARAMS_DIR / method
    candidates = []
    if model_name:
        candidates.append(folder / f"{Path(str(model_name)).name}.yaml")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    arch = ARCHITECTURES.get(model_type, None) if isinstance(model_type, str) else None
    if arch is not None:
        candidates.append(folder / f"{arch.family}.yaml")
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
                f"weights; edit a layer kept on a device, or give the devices more memory (max_memory)"
            )


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
