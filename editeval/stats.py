"""Key second-moment statistics for ROME / MEMIT: C = E[k kᵀ] over a text corpus.

`k` is the input of a layer's MLP output ("down") projection at one token position, the vector
ROME and MEMIT treat as a key. C is estimated from the English Wikipedia text in
`<raw data>/text/enwiki2015_wikiextractor_50shards.jsonl` (SOURCES.md): articles in a fixed
shuffled order (seed 0), each tokenised and cut into windows of at most `max_len` tokens
(1,024, the original ROME setting for GPT-2), until exactly `tokens` token positions are seen.
The forward pass stops at the deepest requested layer (nothing past it is computed), several
layers are gathered in one pass (MEMIT), and the sums are accumulated in float32.

Results are cached as safetensors under `cache_dir()/stats/`, content-addressed by the model's
weight fingerprint, the module, the token count, the window length and the corpus sha256, and
written atomically (temp file + rename), so the cost is paid once and the files can be shared.

The fingerprint of a model object is computed once and remembered on the object
(`model._editeval_fingerprint`), so statistics keep describing the model as it was first seen
even after edits (sequential editing reuses the base model's statistics, as the original code
does, instead of recomputing them after every edit).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from editeval.architectures import check_layer, layer_module_name
from editeval.errors import EditevalError
from editeval.nethooks import Trace, no_grad_eval
from editeval.paths import cache_dir, raw_data_dir

log = logging.getLogger(__name__)

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


def model_fingerprint(model: torch.nn.Module) -> str:
    """The weights fingerprint of `model`, computed once per model object (see module doc)."""
    fp = model.__dict__.get("_editeval_fingerprint")
    if fp is None:
        from editeval.models import weights_fingerprint

        fp = weights_fingerprint(model)
        model.__dict__["_editeval_fingerprint"] = fp
    return fp


def stats_path(fingerprint: str, module_name: str, tokens: int, max_len: int, corpus_sha: str) -> Path:
    return (cache_dir() / "stats"
            / f"{fingerprint}__{module_name}__mom2__t{tokens}__len{max_len}__c{corpus_sha[:12]}.safetensors")


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
            window = ids[start:start + max_len][:left]
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


def _save_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path) -> torch.Tensor | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)["mom2"]
    except (SafetensorError, KeyError, OSError) as err:
        log.warning("ignoring unreadable statistics file %s (%s)", path, err)
        return None


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
) -> dict[int, torch.Tensor]:
    """E[k kᵀ] (float32, on the weight's device) of the input of `place` at each of `layers`.

    Cached layers are read from disk; all missing ones are computed in one forward pass over the
    corpus that stops after the deepest of them.
    """
    if tokens <= 0 or max_len <= 0:
        raise EditevalError(f"statistics need a positive token count and window length (got {tokens}, {max_len})")
    layers = [layers] if isinstance(layers, int) else list(layers)
    layers = sorted({check_layer(model, layer) for layer in layers})
    path = corpus_path(corpus)
    sha = file_sha256(path)
    fingerprint = model_fingerprint(model)
    device = next(model.parameters()).device
    names = {layer: layer_module_name(model, layer, place) for layer in layers}
    paths = {layer: stats_path(fingerprint, names[layer], tokens, max_len, sha) for layer in layers}

    result: dict[int, torch.Tensor] = {}
    if use_cache:
        for layer in layers:
            if paths[layer].exists():
                mom2 = _load(paths[layer])
                if mom2 is not None:
                    result[layer] = mom2.to(device)
    missing = [layer for layer in layers if layer not in result]
    if not missing:
        return result

    module_names = [names[layer] for layer in missing]  # ascending depth: the last one stops the pass
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    texts = _read_articles(path)
    bar = tqdm(total=tokens, unit="tok", desc=f"key statistics, layers {missing}", disable=not progress,
               leave=False)
    with no_grad_eval(model):
        for batch in _batches(_windows(tokenizer, texts, tokens, max_len), batch_tokens):
            longest = max(len(w) for w in batch)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            ids = torch.full((len(batch), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for row, window in enumerate(batch):
                ids[row, :len(window)] = torch.tensor(window)
                mask[row, :len(window)] = 1
            ids, mask = ids.to(device), mask.to(device)
            with Trace(model, module_names, retain_input=True, retain_output=False, stop=True) as tr:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            keep = mask.reshape(-1).bool()
            for name in module_names:
                keys = tr.inputs[name].reshape(-1, tr.inputs[name].shape[-1])[keep].float()
                prod = keys.T @ keys
                sums[name] = prod if name not in sums else sums[name].add_(prod)
            n = int(keep.sum())
            seen += n
            bar.update(n)
    bar.close()

    for layer in missing:
        mom2 = sums[names[layer]] / seen
        if use_cache:
            meta = {"model_fingerprint": fingerprint, "layer": str(layer), "module": names[layer],
                    "statistic": "E[k k^T] of the module input", "tokens": str(seen),
                    "max_len": str(max_len), "corpus": path.name, "corpus_sha256": sha,
                    "dtype": "float32", "shuffle_seed": str(SHUFFLE_SEED)}
            _save_atomic(paths[layer], {"mom2": mom2, "count": torch.tensor([seen])}, meta)
        result[layer] = mom2
    return result


def second_moment(model, tokenizer, layer: int, **kwargs) -> torch.Tensor:
    """E[k kᵀ] at one layer (see `second_moments`)."""
    return next(iter(second_moments(model, tokenizer, [layer], **kwargs).values()))
