"""An optional local judge of WILD answers (``--judge MODEL_FOLDER``): ``*.wild_judge``.

The authors of WILD grade answers with gpt-4o-mini when given an API key. editeval makes no API
call: a local causal LM reads a pinned, versioned yes/no prompt (`PROMPT`, `PROMPT_VERSION`) and
its verdict is whether it puts more probability on " yes" than on " no" as the next token (one
forward pass, deterministic). Verdicts are cached on disk by the judge's weights fingerprint, the
prompt version and the exact (question, gold answer, predicted answer), so a re-run asks nothing
twice. A small judge is weak (docs/results.md gives SmolLM2-135M's agreement with exact match):
the exact-match ``*.wild`` stays the protocol's figure.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from editeval.errors import EditevalError
from editeval.runtime.paths import atomic_file, cache_dir

log = logging.getLogger(__name__)

PROMPT_VERSION = "1"
PROMPT = (
    "You grade answers to questions. An answer is correct when it gives the gold answer (other words "
    "for the same thing are fine) and says nothing that contradicts it.\n\n"
    "Question: {question}\n"
    "Gold answer: {target}\n"
    "Predicted answer: {answer}\n\n"
    "Is the predicted answer correct? Reply yes or no.\n"
    "Reply:"
)


class Judge:
    """A local model's yes/no verdicts on (question, gold answer, predicted answer) triples."""

    def __init__(self, loaded, batch_size: int = 8):
        self.loaded, self.batch_size = loaded, batch_size
        tok = loaded.tokenizer
        self.yes, self.no = (tok(w, add_special_tokens=False)["input_ids"][0] for w in (" yes", " no"))
        if self.yes == self.no:
            raise EditevalError("the judge's tokenizer does not tell ' yes' from ' no'")
        self.fingerprint = loaded.fingerprint()
        self.path = cache_dir() / "judge" / f"{self.fingerprint}-v{PROMPT_VERSION}.json"
        self._cache: dict[str, float] | None = None

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> Judge:
        from editeval.runtime.models import load

        return cls(load(folder, device=device))

    @staticmethod
    def key(question: str, target: str, answer: str) -> str:
        return hashlib.sha256(json.dumps([question, target, answer]).encode()).hexdigest()[:24]

    def _cached(self) -> dict[str, float]:
        if self._cache is None:
            self._cache = {}
            if self.path.exists():
                try:
                    self._cache = dict(json.loads(self.path.read_text()))
                except ValueError:
                    log.warning("ignoring unreadable judge cache %s", self.path)
        return self._cache

    def verdicts(self, items: Sequence[tuple[str, str, str]]) -> list[float]:
        """1.0 (correct) or 0.0 per (question, gold answer, predicted answer)."""
        cache = self._cached()
        todo = sorted({self.key(*item): item for item in items if self.key(*item) not in cache}.items())
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            for (key, _), verdict in zip(chunk, self._ask([item for _, item in chunk])):
                cache[key] = verdict
        if todo:
            atomic_file(self.path, lambda tmp: Path(tmp).write_text(json.dumps(cache)))
        return [cache[self.key(*item)] for item in items]

    @torch.no_grad()
    def _ask(self, items: Sequence[tuple[str, str, str]]) -> list[float]:
        tok, model = self.loaded.tokenizer, self.loaded.model
        texts = [PROMPT.format(question=q, target=t, answer=a.strip()) for q, t, a in items]
        ids = [tok(text)["input_ids"] for text in texts]
        width = max(len(i) for i in ids)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        # left padded: every prompt's last token is at the end
        batch = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=self.loaded.device)
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=self.loaded.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=batch, attention_mask=mask, position_ids=positions).logits[:, -1].float()
        return [float(row[self.yes] > row[self.no]) for row in logits]
