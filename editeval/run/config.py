"""What an edit run does: `EditConfig`, built once by `editeval edit` (or the submission system)
and passed to `run_edits` with the `Runtime` it runs under. Unknown keys are refused."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict


class EditConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

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
    save_checkpoint: str | None = None
    chat_template: bool = False
    out: str | None = None
    eval_batch_size: int = 32
    generation: bool = True
    seed: int = 0

    def out_path(self) -> Path:
        if self.out:
            return Path(self.out)
        return Path("results") / f"{self.method}-{self.benchmark}-{self.split}-{self.mode}.json"
