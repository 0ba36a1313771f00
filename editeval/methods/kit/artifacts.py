"""Model additions of wrapper methods, and the method artifact folder that saves them.

Some editing methods do not (only) change weights: IKE conditions every prompt on in-context
demonstrations, GRACE adds a key-value codebook at one layer, T-Patcher and CaliNET add neurons /
memory slots to MLP layers. Each installs an `Addition` on the model:

* `install(model, addition)` attaches it (its forward hooks are registered) and returns the undo
  callable the method puts in `Backup.undo`, so `restore` removes it exactly;
* `additions(model)` lists what is installed, in installation order;
* `prompt_transform(model)` is the in-context hook the evaluator applies to every prompt it scores
  (set by IKE): a callable ``prompt -> prefix`` (the text put before the prompt), or None.

An edited model that carries additions is saved as a **method artifact folder** (see
docs/artifacts.md): ``editeval_artifact.json`` (format, method, base model and its weights
fingerprint, one entry per addition: kind, name, JSON config) + ``additions.safetensors`` (their
tensors, keyed ``<name>/<tensor>``). `load_artifact(model, folder)` re-installs them on the base
model; `editeval score --model FOLDER --base MODEL` does exactly that.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import torch

from editeval.errors import EditevalError
from editeval.runtime.paths import atomic_dir
from editeval.runtime.registry import Registry

ARTIFACT_FILE = "editeval_artifact.json"
TENSORS_FILE = "additions.safetensors"
ARTIFACT_FORMAT = "editeval-method-artifact"
ARTIFACT_VERSION = 1
_ATTR = "_editeval_additions"


def _import_methods() -> None:
    from editeval.methods.base import METHODS

    METHODS.load_all()  # importing every method module (plugins too) registers its addition kinds


# addition kind -> class, what `load_artifact` rebuilds an addition from (plugins: entry-point group
# ``editeval.additions``; an addition kind that a plugin method defines is found through the method)
ADDITIONS: Registry[type[Addition]] = Registry("addition kind", builtins=_import_methods, group="editeval.additions")


def register_addition(cls: type[Addition]) -> type[Addition]:
    """Class decorator: make an addition kind loadable from an artifact."""
    return ADDITIONS.add(cls.kind, cls)


class Addition:
    """Something a wrapper method adds to a model. Subclasses set `kind`, keep their state in
    `config()` (JSON) + `tensors()` and rebuild from them in `from_state`."""

    kind: ClassVar[str] = ""

    def __init__(self, name: str):
        self.name = name
        self._handles: list = []

    # -- life cycle
    def attach(self, model: torch.nn.Module) -> None:
        """Register forward hooks (subclasses); called by `install`."""

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- state
    def config(self) -> dict:
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    @classmethod
    def from_state(cls, name: str, config: dict, tensors: dict[str, torch.Tensor], model: torch.nn.Module) -> Addition:
        raise NotImplementedError


def additions(model: torch.nn.Module) -> list[Addition]:
    return list(model.__dict__.get(_ATTR, []))


def find_addition(model: torch.nn.Module, kind: str) -> Addition | None:
    """The last installed addition of `kind` (methods that grow one addition edit it in place)."""
    for addition in reversed(additions(model)):
        if addition.kind == kind:
            return addition
    return None


def install(model: torch.nn.Module, addition: Addition) -> Callable[[], None]:
    """Attach `addition` to `model`; returns the callable that removes it again."""
    installed = model.__dict__.setdefault(_ATTR, [])
    addition.attach(model)
    installed.append(addition)

    def undo() -> None:
        addition.detach()
        if addition in installed:
            installed.remove(addition)

    return undo


def remove_all(model: torch.nn.Module) -> None:
    for addition in reversed(additions(model)):
        addition.detach()
    model.__dict__.pop(_ATTR, None)


def prompt_transform(model: torch.nn.Module) -> Callable[[str], str] | None:
    """The prefix function of the last installed addition that conditions prompts, if any."""
    for addition in reversed(additions(model)):
        fn = getattr(addition, "prefix_for", None)
        if fn is not None:
            return fn
    return None


def unique_name(model: torch.nn.Module, stem: str) -> str:
    taken = {a.name for a in additions(model)}
    k = 0
    while f"{stem}.{k}" in taken:
        k += 1
    return f"{stem}.{k}"


# --------------------------------------------------------------------------- artifact folders


def is_artifact(path: str | os.PathLike) -> bool:
    return (Path(path) / ARTIFACT_FILE).is_file()


def save_artifact(
    model: torch.nn.Module,
    directory: str | os.PathLike,
    *,
    method: str,
    hparams: dict,
    base_model: str,
    base_fingerprint: str,
    extra: dict | None = None,
) -> Path:
    """Write the additions installed on `model` as an artifact folder (temp folder, then rename)."""
    from safetensors.torch import save_file

    from editeval.runtime.models import architecture_summary

    installed = additions(model)
    if not installed:
        raise EditevalError("the edited model carries no method additions to save as an artifact")
    tensors, entries = {}, []
    for addition in installed:
        entries.append({"kind": addition.kind, "name": addition.name, "config": addition.config()})
        for key, value in addition.tensors().items():
            tensors[f"{addition.name}/{key}"] = value.detach().to("cpu").contiguous()
    meta = {
        "format": ARTIFACT_FORMAT,
        "version": ARTIFACT_VERSION,
        "method": method,
        "hparams": hparams,
        "base_model": str(base_model),
        "base_fingerprint": base_fingerprint,
        "base_architecture": architecture_summary(model.config),
        "additions": entries,
        "tensors": TENSORS_FILE,
        **(extra or {}),
    }
    target = Path(directory)
    with atomic_dir(target) as tmp:
        save_file(tensors, str(tmp / TENSORS_FILE))
        (tmp / ARTIFACT_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return target


def read_artifact(directory: str | os.PathLike) -> dict:
    path = Path(directory) / ARTIFACT_FILE
    if not path.is_file():
        raise EditevalError(f"{directory} is not a method artifact folder (no {ARTIFACT_FILE})")
    try:
        meta = json.loads(path.read_text())
    except ValueError as err:
        raise EditevalError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
        raise EditevalError(
            f"{path}: not an editeval method artifact (format {meta.get('format')!r})"
            if isinstance(meta, dict)
            else f"{path}: not an editeval method artifact"
        )
    if meta.get("version") != ARTIFACT_VERSION:
        raise EditevalError(
            f"{path}: artifact version {meta.get('version')!r} is not supported "
            f"(this editeval reads version {ARTIFACT_VERSION})"
        )
    if not isinstance(meta.get("additions"), list):
        raise EditevalError(f"{path}: 'additions' must be a list")
    return meta


def load_artifact(
    model: torch.nn.Module, directory: str | os.PathLike, *, check_base: bool = True
) -> Callable[[], None]:
    """Install the additions of an artifact folder on `model` (the base model it was made from);
    returns the callable that removes them."""
    from safetensors.torch import load_file

    from editeval.runtime.models import architecture_summary, input_device, weights_fingerprint

    meta = read_artifact(directory)
    if check_base:
        mine = architecture_summary(model.config)
        theirs = meta.get("base_architecture") or {}
        diffs = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
        if diffs:
            raise EditevalError(
                f"artifact {directory} was made for another architecture "
                f"({', '.join(f'{k} {theirs.get(k)!r} vs {mine.get(k)!r}' for k in diffs)})"
            )
        fp = meta.get("base_fingerprint")
        if fp and fp != weights_fingerprint(model):
            raise EditevalError(
                f"artifact {directory} was made from base weights {fp}, not from this base model "
                f"({weights_fingerprint(model)}): pass the --base it was made with ({meta.get('base_model')})"
            )
    tensor_path = Path(directory) / meta.get("tensors", TENSORS_FILE)
    if not tensor_path.is_file():
        raise EditevalError(f"artifact {directory}: tensor file {tensor_path.name} is missing")
    flat = load_file(str(tensor_path))
    device = input_device(model)
    undos = []
    try:
        for entry in meta["additions"]:
            kind, name = entry.get("kind"), entry.get("name")
            if kind not in ADDITIONS:
                raise EditevalError(
                    f"artifact {directory}: unknown addition kind {kind!r} (known: {', '.join(ADDITIONS.names())})"
                )
            prefix = f"{name}/"
            own = {k[len(prefix) :]: v.to(device) for k, v in flat.items() if k.startswith(prefix)}
            try:
                addition = ADDITIONS.get(kind).from_state(name, entry.get("config") or {}, own, model)
            except (KeyError, ValueError, TypeError) as err:
                raise EditevalError(f"artifact {directory}: addition {name!r} is malformed ({err})") from None
            undos.append(install(model, addition))
    except BaseException:
        for undo in reversed(undos):
            undo()
        raise

    def undo_all() -> None:
        for undo in reversed(undos):
            undo()

    return undo_all


def artifact_fingerprint(directory: str | os.PathLike) -> str:
    """sha256 (16 hex) of the artifact's JSON and tensor file: what a results record names as the
    edited model's fingerprint (its weights are the base model's)."""
    import hashlib

    digest = hashlib.sha256()
    meta = read_artifact(directory)
    for name in (ARTIFACT_FILE, meta.get("tensors", TENSORS_FILE)):
        path = Path(directory) / name
        if path.is_file():
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]
