"""The stored key-statistics files (`editeval.methods.kit.key_stats` computes them): where they
live, what their metadata says, checking one, and bringing one into the cache.

Results are cached as safetensors under `cache_dir()/stats/`, content-addressed by the model's
weight fingerprint, the module, the token count, the window length and the corpus sha256, and
written atomically (temp file + rename), so the cost is paid once and the files can be shared
(`editeval stats publish / pull`). Each file's safetensors metadata says what it holds (format,
model fingerprint / name / type / dtype, layer, module, tokens, window length, corpus name and
sha256, dtype, number of processes, editeval version); a cached file is used only if its key
fields match the request and its matrix checks out, otherwise it is recomputed (with a warning).

The fingerprint of a model object is computed once and remembered on the object
(`model._editeval_fingerprint`), so statistics keep describing the model as it was first seen
even after edits (sequential editing reuses the base model's statistics, as the original code
does, instead of recomputing them after every edit).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import torch

from editeval.errors import EditevalError
from editeval.runtime.paths import atomic_file, cache_dir

log = logging.getLogger(__name__)

FORMAT = "editeval-mom2/1"
# a cached file is used only if these metadata fields match the request (they also make its name)
KEY_FIELDS = ("model_fingerprint", "module", "tokens", "max_len", "corpus_sha256")
REQUIRED_FIELDS = KEY_FIELDS + ("layer",)
FIELD_PATTERNS = {
    "model_fingerprint": r"[0-9a-f]{16}",
    "module": r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*",
    "tokens": r"[1-9][0-9]*",
    "max_len": r"[1-9][0-9]*",
    "corpus_sha256": r"[0-9a-f]{64}",
    "layer": r"[0-9]+",
}


def model_fingerprint(model: torch.nn.Module) -> str:
    """The weights fingerprint of `model`, computed once per model object (see module doc)."""
    fp = model.__dict__.get("_editeval_fingerprint")
    if fp is None:
        from editeval.runtime.models import weights_fingerprint

        fp = weights_fingerprint(model)
        model.__dict__["_editeval_fingerprint"] = fp
    return fp


def pin_fingerprint(model: torch.nn.Module, fingerprint: str) -> None:
    """Look `model`'s statistics up under `fingerprint` (its base weights', taken before saved edits
    are loaded into it), unless they are pinned already."""
    model.__dict__.setdefault("_editeval_fingerprint", fingerprint)


def stats_path(fingerprint: str, module_name: str, tokens: int, max_len: int, corpus_sha: str) -> Path:
    return (
        cache_dir()
        / "stats"
        / f"{fingerprint}__{module_name}__mom2__t{tokens}__len{max_len}__c{corpus_sha[:12]}.safetensors"
    )


def save_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    atomic_file(
        path, lambda tmp: save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
    )


def load_checked(path: Path, expected: dict[str, str] | None = None, dim: int | None = None) -> torch.Tensor | None:
    """The cached matrix, or None (with a warning) when the file is unreadable or describes
    something else than `expected`: the caller then recomputes it."""
    try:
        return check_file(path, expected, dim)[1]
    except EditevalError as err:
        log.warning("ignoring statistics file %s: %s (recomputing)", path, err)
        return None


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata header of a statistics file (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as err:  # SafetensorError, OSError, a truncated header...
        raise EditevalError(
            f"{path}: not a readable safetensors file ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from None


def check_file(
    path: str | os.PathLike, expected: dict[str, str] | None = None, dim: int | None = None
) -> tuple[dict[str, str], torch.Tensor]:
    """Read a statistics file and check it is complete and consistent (metadata fields, count =
    tokens, a finite square float32 matrix of side `dim`) and that each `expected` metadata field
    matches. Returns (metadata, matrix); raises EditevalError naming the first problem."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    absent = [k for k in REQUIRED_FIELDS if k not in meta]
    if absent:
        raise EditevalError(f"{path}: not an editeval statistics file (metadata lacks {', '.join(absent)})")
    for key, pattern in FIELD_PATTERNS.items():  # they make the cache file name: nothing else
        if key in meta and not re.fullmatch(pattern, meta[key]):
            raise EditevalError(f"{path}: malformed metadata {key}={meta[key][:80]!r}")
    for key, want in (expected or {}).items():
        if meta.get(key) != str(want):
            raise EditevalError(f"{path}: metadata {key}={meta.get(key)!r}, expected {str(want)!r}")
    try:
        tensors = load_file(str(path))
    except Exception as err:
        raise EditevalError(
            f"{path}: unreadable tensors ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from None
    mom2, count = tensors.get("mom2"), tensors.get("count")
    if mom2 is None or count is None:
        raise EditevalError(f"{path}: lacks the 'mom2' or 'count' tensor")
    if count.numel() != 1 or int(count.reshape(-1)[0]) != int(meta["tokens"]):
        raise EditevalError(
            f"{path}: token count {count.reshape(-1).tolist()} does not match metadata tokens={meta['tokens']}"
        )
    if mom2.dtype != torch.float32 or mom2.dim() != 2 or mom2.shape[0] != mom2.shape[1]:
        raise EditevalError(f"{path}: mom2 is not a square float32 matrix ({mom2.dtype}, {tuple(mom2.shape)})")
    if dim is not None and mom2.shape[0] != dim:
        raise EditevalError(f"{path}: mom2 is {mom2.shape[0]}×{mom2.shape[0]}, the module's keys have {dim} dimensions")
    if not bool(torch.isfinite(mom2).all()):
        raise EditevalError(f"{path}: mom2 has non-finite values")
    return meta, mom2


def cached_files() -> list[tuple[Path, dict[str, str] | None]]:
    """Every statistics file in the cache with its metadata (None where unreadable)."""
    out = []
    for path in sorted((cache_dir() / "stats").glob("*.safetensors")):
        try:
            out.append((path, read_metadata(path)))
        except EditevalError:
            out.append((path, None))
    return out


def cache_name(meta: dict[str, str]) -> Path:
    """Where a file with this metadata belongs in the cache."""
    return stats_path(
        meta["model_fingerprint"], meta["module"], int(meta["tokens"]), int(meta["max_len"]), meta["corpus_sha256"]
    )


def import_file(src: str | os.PathLike, model: torch.nn.Module | None = None) -> tuple[bool, Path]:
    """Check a statistics file (from the Hub or a folder) and copy it into the cache under the name
    its metadata gives. With `model`, refuse one computed on other weights or not fitting its
    modules. Returns (copied, cache path); copied is False when a valid copy was already there."""
    meta = read_metadata(src)
    expected, dim = {}, None
    if model is not None and "model_fingerprint" in meta:
        expected["model_fingerprint"] = model_fingerprint(model)
        if meta["model_fingerprint"] != expected["model_fingerprint"]:
            raise EditevalError(
                f"computed on model weights {meta['model_fingerprint']}, "
                f"not on this model's ({expected['model_fingerprint']})"
            )
        try:
            dim = key_dim(model, meta.get("module", ""))
        except (AttributeError, EditevalError):
            raise EditevalError(f"module {meta.get('module')!r} is not in this model") from None
    meta, _ = check_file(src, expected, dim)
    dest = cache_name(meta)
    if dest.exists() and load_checked(dest, {k: meta[k] for k in KEY_FIELDS}, dim) is not None:
        return False, dest
    atomic_file(dest, lambda tmp: shutil.copyfile(src, tmp))
    return True, dest


def key_dim(model: torch.nn.Module, module_name: str) -> int:
    """Dimension of the keys: the input width of `module_name` (Linear, or GPT-2's Conv1D)."""
    module = model.get_submodule(module_name)
    dim = getattr(module, "in_features", None) or getattr(module, "nx", None)
    if dim is None:
        raise EditevalError(f"{module_name} is neither a Linear nor a Conv1D layer")
    return int(dim)
