"""The trained editors of MEND and KE on disk: where each is stored, saving one, and loading the
one a model and benchmark need (`editeval.methods.kit.editor_training` trains them).

The finished editor is cached under ``cache_dir()/editors/<method>/<model fingerprint>/<benchmark>/``
as ``editor.safetensors`` + ``editor.json``.

The *model fingerprint* of an editor is the weights fingerprint of every parameter the editor
does not change (plus the shapes of those it changes), so an editor keeps being found while
edits accumulate on the edited matrices (sequential editing).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from editeval.errors import EditevalError
from editeval.methods.base import train_benchmark_for
from editeval.methods.kit.learned_editor import Editor, EditorHParams, edited_modules, editor_layers
from editeval.runtime.models import input_device
from editeval.runtime.paths import atomic_file, cache_dir

EDITOR_FILE = "editor.safetensors"
CONFIG_FILE = "editor.json"


def frozen_fingerprint(model: torch.nn.Module, module_names: list[str]) -> str:
    """Fingerprint of the parameters an editor does not change (+ the shapes of those it does)."""
    skip = {f"{n}.weight" for n in module_names}
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if name not in skip and t.numel():
            digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def editor_dir(method: str, fingerprint: str, benchmark: str) -> Path:
    return cache_dir() / "editors" / method / fingerprint / benchmark


def model_label(model: torch.nn.Module) -> str:
    """The registered name (or folder) a model was loaded from, for messages."""
    from editeval.runtime.models import MODELS

    path = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    for name in MODELS:
        if path and Path(path).resolve() == (cache_dir() / "models" / name).resolve():
            return name
    return path or "MODEL"


def loaded_editors(model: torch.nn.Module) -> dict:
    """The editors (and SERAC classifiers) loaded for `model`, kept on the model object."""
    return model.__dict__.setdefault("_editeval_editors", {})


def not_trained(what: str, method: str, model: torch.nn.Module, benchmark: str, folder: Path) -> EditevalError:
    """The error for a trained `what` that is not in `folder`, naming the command that trains it."""
    label = model_label(model)
    return EditevalError(
        f"no trained {what} for model {label} and benchmark '{benchmark}' (looked in {folder}): "
        f"train it with `editeval train {method} --model {label} --benchmark {benchmark}`"
    )


def save_editor(editor: Editor, folder: Path, config: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in editor.state_dict().items()}
    atomic_file(folder / EDITOR_FILE, lambda p: save_file(tensors, p))
    atomic_file(folder / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(config, indent=2, default=str)))


def load_editor(
    build, model: torch.nn.Module, tokenizer, method: str, hparams: EditorHParams, requests: list[dict]
) -> Editor:
    """The editor trained for this model on `hparams.train_benchmark` (``auto``: the benchmark the
    `requests` look like), cached on the model object, or an EditevalError naming the command that
    trains it."""
    from safetensors.torch import load_file

    names = edited_modules(model, editor_layers(model, hparams))
    benchmark = train_benchmark_for(hparams.train_benchmark, requests)
    if hparams.editor_path:
        folder = Path(hparams.editor_path)
        key = (method, str(folder.resolve()))
    else:
        cache = getattr(model, "_editeval_fingerprints", None)
        if cache is None:
            cache = {}
            model._editeval_fingerprints = cache  # the frozen parameters never change while editing
        fp_key = tuple(names)
        if fp_key not in cache:
            cache[fp_key] = frozen_fingerprint(model, names)
        folder = editor_dir(method, cache[fp_key], benchmark)
        key = (method, str(folder))
    loaded = loaded_editors(model)
    if key in loaded:
        return loaded[key]
    if not (folder / EDITOR_FILE).exists():
        raise not_trained(f"{method.upper()} editor", method, model, benchmark, folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    train_hp = type(hparams).from_dict(config["hparams"], source=str(folder / CONFIG_FILE))
    if editor_layers(model, train_hp) != editor_layers(model, hparams):
        raise EditevalError(
            f"the editor in {folder} edits layers {editor_layers(model, train_hp)}, "
            f"the hyper-parameters ask for {editor_layers(model, hparams)}"
        )
    editor = build(model, tokenizer, names, train_hp)
    state = load_file(str(folder / EDITOR_FILE))
    try:
        editor.load_state_dict(state)
    except RuntimeError as err:
        raise EditevalError(f"{folder / EDITOR_FILE} does not fit this model: {str(err).splitlines()[0]}") from None
    editor.to(input_device(model)).eval()
    loaded[key] = editor
    return editor
