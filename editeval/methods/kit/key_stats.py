"""Key second-moment statistics for ROME / MEMIT: C = E[k kᵀ] over a text corpus.

`k` is the input of a layer's MLP output ("down") projection at one token position, the vector
ROME and MEMIT treat as a key. C is estimated from the English Wikipedia text in
`<raw data>/text/enwiki2015_wikiextractor_50shards.jsonl` (SOURCES.md): articles in a fixed
shuffled order (seed 0), each tokenised and cut into windows of at most `max_len` tokens
(1,024, the original ROME setting for GPT-2), until exactly `tokens` token positions are seen.
The forward pass stops at the deepest requested layer (nothing past it is computed), several
layers are gathered in one pass (MEMIT), and the sums are accumulated in float32.

The results are cached as safetensors files under `cache_dir()/stats/`
(`editeval.methods.kit.key_stats_files`: content-addressed, checked before use, shared with
`editeval stats publish / pull`).

Sharded over processes (`shard=True` under `accelerate launch` / torchrun, as `editeval stats
build` does; see `editeval.runtime.distributed`):
every process reads the same token stream and runs every N-th window of it (window i → process
i mod N), the float32 sums and token counts are all-reduced, and the main process writes the file.
The same tokens are counted as in one process, so the matrix is the same up to float rounding.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
from pathlib import Path

import torch
from tqdm.auto import tqdm

from editeval.errors import EditevalError
from editeval.methods.kit.key_stats_files import (
    FORMAT,
    key_dim,
    load_checked,
    model_fingerprint,
    save_atomic,
    stats_path,
)
from editeval.runtime.architectures import check_layer, layer_module_name
from editeval.runtime.nethooks import Trace, no_grad_eval
from editeval.runtime.paths import raw_data_dir

CORPUS_FILE = "text/enwiki2015_wikiextractor_50shards.jsonl"
CORPUS_SHA256 = "296a4bdd614c4c2a7e3021aa969909518644c088a4e87b858c5b4b3c84403930"
DEFAULT_TOKENS = 100_000
DEFAULT_MAX_LEN = 1024
MIN_ARTICLE_CHARS = 200  # stubs / disambiguation remnants are skipped
SHUFFLE_SEED = 0


def corpus_path(override: str | os.PathLike | None = None) -> Path:
    path = Path(override) if override else raw_data_dir() / CORPUS_FILE
    if not path.exists():
        raise EditevalError(f"statistics corpus not found: {path} (see ../shared/data/raw/text/SOURCES.md)")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_articles(path: Path) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise EditevalError(f"{path}:{line_no}: not a JSON line with a 'text' field") from None
            if len(text) >= MIN_ARTICLE_CHARS:
                texts.append(text)
    random.Random(SHUFFLE_SEED).shuffle(texts)
    return texts


def _windows(tokenizer, texts: list[str], tokens: int, max_len: int):
    """Yield token-id windows (≤ max_len) in corpus order until exactly `tokens` ids are given."""
    left = tokens
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        for start in range(0, len(ids), max_len):
            window = ids[start : start + max_len][:left]
            if not window:
                continue
            left -= len(window)
            yield window
            if left == 0:
                return
    if left:
        raise EditevalError(f"statistics corpus has fewer than {tokens} tokens for this tokenizer")


def _batches(windows, batch_tokens: int):
    """Group consecutive windows so that (rows × longest) stays within batch_tokens."""
    batch: list[list[int]] = []
    for window in windows:
        longest = max([len(window)] + [len(w) for w in batch])
        if batch and longest * (len(batch) + 1) > batch_tokens:
            yield batch
            batch = []
        batch.append(window)
    if batch:
        yield batch


def _result_device(model: torch.nn.Module, module_name: str, fallback: torch.device) -> torch.device:
    """The device of the module's weight (several with a device map), or `fallback` if offloaded."""
    weight = getattr(model.get_submodule(module_name), "weight", None)
    if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
        return weight.device
    return fallback


def _metadata(
    model, fingerprint: str, layer: int, module: str, seen: int, max_len: int, corpus: Path, sha: str, processes: int
) -> dict[str, str]:
    from editeval import __version__

    config = getattr(model, "config", None)
    name = Path(str(getattr(config, "_name_or_path", "") or "")).name
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return {
        "format": FORMAT,
        "statistic": "E[k k^T] of the module input",
        "model_fingerprint": fingerprint,
        "model_name": name,
        "model_type": str(getattr(config, "model_type", "")),
        "model_dtype": dtype,
        "layer": str(layer),
        "module": module,
        "tokens": str(seen),
        "max_len": str(max_len),
        "corpus": corpus.name,
        "corpus_sha256": sha,
        "dtype": "float32",
        "accumulation": "float32",
        "shuffle_seed": str(SHUFFLE_SEED),
        "min_article_chars": str(MIN_ARTICLE_CHARS),
        "processes": str(processes),
        "editeval_version": __version__,
    }


class _Counted:
    """Passes windows through, counting their tokens (progress over the whole stream)."""

    def __init__(self, windows):
        self.windows, self.tokens = windows, 0

    def __iter__(self):
        for window in self.windows:
            self.tokens += len(window)
            yield window


def process_group() -> tuple[int, int]:
    """(rank, number of processes) under a launcher (`accelerate launch`, torchrun: the group is
    joined through `editeval.runtime.distributed.setup`) or an initialised torch.distributed; (0, 1) alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    from editeval.runtime import distributed

    group = distributed.setup()
    return (0, 1) if group is None else (group.rank, group.world)


def _all_reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
    """Sum / max of `tensor` over the process group (on CPU for gloo, on CUDA for NCCL)."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        comm = tensor.device if tensor.device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    else:
        comm = torch.device("cpu")
    buf = tensor.to(comm, copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return buf.to(tensor.device)


def second_moments(
    model: torch.nn.Module,
    tokenizer,
    layers: list[int] | int,
    *,
    tokens: int = DEFAULT_TOKENS,
    max_len: int = DEFAULT_MAX_LEN,
    place: str = "mlp_out",
    batch_tokens: int = 2048,
    corpus: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = True,
    shard: bool = False,
    refresh: bool = False,
) -> dict[int, torch.Tensor]:
    """E[k kᵀ] (float32, on the weight's device) of the input of `place` at each of `layers`.

    Cached layers are read from disk (a file whose metadata does not match is recomputed); all
    missing ones are computed in one forward pass over the corpus that stops after the deepest of
    them. With `shard=True` under `accelerate launch` / torch.distributed, every process of the
    group must make the same call: each runs every N-th window of the same token stream, the sums
    are all-reduced, the main process writes the files, and all get the same result.
    `refresh=True` recomputes and rewrites cached files.
    """
    if tokens <= 0 or max_len <= 0:
        raise EditevalError(f"statistics need a positive token count and window length (got {tokens}, {max_len})")
    layers = [layers] if isinstance(layers, int) else list(layers)
    layers = sorted({check_layer(model, layer) for layer in layers})
    path = corpus_path(corpus)
    sha = file_sha256(path)
    fingerprint = model_fingerprint(model)
    from editeval.runtime.models import input_device

    device = input_device(model)
    rank, world = process_group() if shard else (0, 1)
    names = {layer: layer_module_name(model, layer, place) for layer in layers}
    paths = {layer: stats_path(fingerprint, names[layer], tokens, max_len, sha) for layer in layers}

    result: dict[int, torch.Tensor] = {}
    if use_cache and not refresh:
        for layer in layers:
            if paths[layer].exists():
                expected = {
                    "model_fingerprint": fingerprint,
                    "module": names[layer],
                    "tokens": str(tokens),
                    "max_len": str(max_len),
                    "corpus_sha256": sha,
                }
                mom2 = load_checked(paths[layer], expected, key_dim(model, names[layer]))
                if mom2 is not None:
                    result[layer] = mom2.to(_result_device(model, names[layer], device))
    if world > 1:  # every process must take part in the pass if any one lacks a layer
        flags = torch.tensor([float(layer not in result) for layer in layers])
        flags = _all_reduce(flags, "max")
        for layer, flag in zip(layers, flags.tolist()):
            if flag:
                result.pop(layer, None)
    missing = [layer for layer in layers if layer not in result]
    if not missing:
        return result

    module_names = [names[layer] for layer in missing]  # ascending depth: the last one stops the pass
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    texts = _read_articles(path)
    stream = _Counted(_windows(tokenizer, texts, tokens, max_len))
    mine = itertools.islice(stream, rank, None, world)  # window i goes to process i mod N
    desc = f"key statistics, layers {missing}" + (f", {world} processes" if world > 1 else "")
    bar = tqdm(total=tokens, unit="tok", desc=desc, disable=not progress or rank != 0, leave=False)
    with no_grad_eval(model):
        for batch in _batches(mine, batch_tokens):
            longest = max(len(w) for w in batch)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            ids = torch.full((len(batch), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for row, window in enumerate(batch):
                ids[row, : len(window)] = torch.tensor(window)
                mask[row, : len(window)] = 1
            ids, mask = ids.to(device), mask.to(device)
            with Trace(model, module_names, retain_input=True, retain_output=False, stop=True) as tr:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            keep = mask.reshape(-1).bool()
            for name in module_names:
                x = tr.inputs[name]
                keys = x.reshape(-1, x.shape[-1])[keep.to(x.device)].float()
                prod = keys.T @ keys
                sums[name] = prod if name not in sums else sums[name].add_(prod)
            seen += int(keep.sum())
            bar.update(stream.tokens - bar.n)  # the whole stream's progress (all processes)
    bar.update(stream.tokens - bar.n)
    bar.close()

    for name in module_names:  # a process may have had no window at all
        if name not in sums:
            d = key_dim(model, name)
            sums[name] = torch.zeros((d, d), device=_result_device(model, name, device))
    if world > 1:
        seen = int(_all_reduce(torch.tensor([seen], dtype=torch.float64), "sum").item())
        for name in module_names:
            sums[name] = _all_reduce(sums[name], "sum")
    if seen != tokens:  # cannot happen unless the stream and the sharding disagree
        raise EditevalError(f"key statistics saw {seen} tokens instead of {tokens}")

    for layer in missing:
        mom2 = sums[names[layer]] / seen
        if use_cache and rank == 0:
            meta = _metadata(model, fingerprint, layer, names[layer], seen, max_len, path, sha, world)
            save_atomic(paths[layer], {"mom2": mom2, "count": torch.tensor([seen])}, meta)
        result[layer] = mom2.to(_result_device(model, names[layer], device))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # the files exist for every process once this returns
    return result


def cache_paths(
    model: torch.nn.Module,
    layers: list[int],
    *,
    tokens: int = DEFAULT_TOKENS,
    max_len: int = DEFAULT_MAX_LEN,
    place: str = "mlp_out",
    corpus: str | os.PathLike | None = None,
) -> dict[int, Path]:
    """The cache file of each layer's statistics (whether or not it exists yet)."""
    sha = file_sha256(corpus_path(corpus))
    fingerprint = model_fingerprint(model)
    return {
        check_layer(model, layer): stats_path(fingerprint, layer_module_name(model, layer, place), tokens, max_len, sha)
        for layer in layers
    }


def second_moment(model, tokenizer, layer: int, **kwargs) -> torch.Tensor:
    """E[k kᵀ] at one layer (see `second_moments`)."""
    return next(iter(second_moments(model, tokenizer, [layer], **kwargs).values()))
