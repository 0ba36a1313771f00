"""What a run does, resolved once at the entry point and passed down: `EditConfig` (`editeval edit`,
the submission system) or `ScoreConfig` (`editeval score`), each with the `EvalConfig` both share,
and the `Runtime` it runs under. Unknown keys are refused."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class EvalConfig(BaseModel):
    """How the rows are taken, the same way for an edit run and a scored checkpoint."""

    model_config = ConfigDict(extra="forbid")

    eval_batch_size: int = Field(default=32, ge=1)  # sequences per forward pass
    chat_template: bool = False  # wrap edit-side prompts with the tokenizer's chat template
    generation: bool = True  # also the greedy-generation protocol
    fluency: bool = False  # n-gram entropy of 100-token greedy generations (slow)
    piqa_items: int = Field(default=0, ge=0)  # Other-Task locality on the first N PIQA items
    wild: bool = False  # also the WILD protocol: free generation to a natural stop (`evaluation.wild`)
    judge: str | None = None  # with wild: a local model folder whose verdicts give *.wild_judge (`evaluation.judge`)


class EditConfig(EvalConfig):
    method: str = "rome"
    model: str = "smollm2-135m"
    benchmark: str = "zsre"
    config: str | None = None
    split: str = "edit"
    limit: int | None = None
    mode: str = "single"  # single | batch | sequential, checked with the method (`modes.check_mode`)
    edit_batch_size: int | None = None  # batch: default all edits in one batch; sequential: 1
    hparams_path: str | None = None
    eval_every_edit: bool = False
    curve_every: int = Field(default=0, ge=0)  # sequential: evaluate the edits so far after every N edits
    curve_sample: int = Field(default=0, ge=0)  # ... at most this many of them, evenly spaced (0: all)
    save_checkpoint: str | None = None
    out: str | None = None
    seed: int = 0

    def out_path(self) -> Path:
        if self.out:
            return Path(self.out)
        return Path("results") / f"{self.method}-{self.benchmark}-{self.split}-{self.mode}.json"


DEFAULT_PIQA_ITEMS = 100  # a scored checkpoint: the first 100 PIQA validation items, in file order


class ScoreConfig(EvalConfig):
    """A checkpoint (registered name, HF folder or method artifact folder) scored against `base`."""

    model: str
    base: str = "smollm2-135m"
    benchmark: str = "zsre"
    config: str | None = None
    split: str = "edit"
    limit: int | None = None
    piqa_items: int = Field(default=DEFAULT_PIQA_ITEMS, ge=0)
    out: str | None = None

    def out_path(self) -> Path:
        if self.out:
            return Path(self.out)
        import os
        import re

        name = Path(self.model).name if os.sep in self.model else self.model
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"
        parts = [self.benchmark] + ([self.config] if self.config else []) + [self.split, slug]
        return Path("results") / ("-".join(parts) + ".json")
