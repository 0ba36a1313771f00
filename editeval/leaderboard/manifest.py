"""The `submission.yaml` manifest: its schema (pydantic, strict), limits, and the template
`editeval submit new` writes. See `editeval.leaderboard.submissions` for what a submission is."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from editeval.errors import EditevalError
from editeval.runtime.paths import REPO_ROOT, atomic_file

log = logging.getLogger(__name__)


MANIFEST = "submission.yaml"
RESULTS = "results.json"
STAGING = ".scoring"  # inside the submission folder: the run's partial files (resumable), then renamed
SCHEMA_VERSION = 1
SUBMISSIONS_DIR = REPO_ROOT / "submissions"

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9._-]{1,96}(@[A-Za-z0-9._/-]{1,100})?$")
FINGERPRINT_RE = r"^[0-9a-f]{16}$"

# what a checkpoint folder may contain: weights as safetensors, configs, tokenizer files, a card
ALLOWED_SUFFIXES = {".safetensors", ".json", ".txt", ".model", ".md", ".jinja", ".yaml", ".yml"}
ALLOWED_NAMES = {".gitattributes", "LICENSE", "README", "NOTICE"}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".h5", ".msgpack"}
CODE_SUFFIXES = {".py", ".pyc", ".pyo", ".so", ".dll", ".dylib", ".sh", ".ipynb"}
HUB_ALLOW_PATTERNS = ["*.safetensors", "*.json", "*.txt", "*.model", "*.jinja"]


@dataclass(frozen=True)
class Limits:
    """Size caps for untrusted submissions (bytes)."""

    manifest: int = 64 * 1024  # submission.yaml
    hparams: int = 64 * 1024  # a hyper-parameter file
    small_file: int = 64 * 1024 * 1024  # any non-weight file in a checkpoint (tokenizer.json ~ 4 MB)
    weights_file: int = 32 * 1024**3  # one .safetensors file
    checkpoint: int = 64 * 1024**3  # a whole checkpoint folder
    files: int = 512  # files in a checkpoint folder


DEFAULT_LIMITS = Limits()


class SubmissionError(EditevalError):
    """One or more problems with a submission; `problems` holds one line each."""

    def __init__(self, where: str | os.PathLike, problems: list[str]):
        self.where = str(where)
        self.problems = list(problems)
        super().__init__("\n".join(f"{self.where}: {p}" for p in self.problems))


# ----------------------------------------------------------------------------- the manifest schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class MethodInfo(_Strict):
    name: str = Field(min_length=1, max_length=80, description="method name; an editeval method for a method run")
    link: str | None = Field(default=None, max_length=500, description="paper or code (http/https)")

    @field_validator("link")
    @classmethod
    def _http_only(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s<>\"']+$", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


class BaseModelInfo(_Strict):
    name: str = Field(min_length=1, max_length=200, description="a registered model name (editeval.runtime.models)")
    fingerprint: str = Field(
        pattern=FINGERPRINT_RE, description="editeval.runtime.models.weights_fingerprint of the base"
    )


class BenchmarkInfo(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    config: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    split: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ScoreTarget(_Strict):
    checkpoint: str | None = Field(default=None, max_length=500, description="model folder inside the submission")
    hub: str | None = Field(default=None, max_length=300, description="Hub repo id org/name[@revision]")
    hparams: str | None = Field(
        default=None, max_length=500, description="hparams file inside the submission, or 'preset'"
    )
    unedited: bool = False

    @field_validator("hub")
    @classmethod
    def _hub_id(cls, value: str | None) -> str | None:
        if value is not None and not HUB_ID_RE.match(value):
            raise ValueError("must be a Hub repo id 'org/name' or 'org/name@revision'")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> ScoreTarget:
        given = [k for k in ("checkpoint", "hub", "hparams") if getattr(self, k) is not None]
        if self.unedited:
            given.append("unedited")
        if len(given) != 1:
            raise ValueError(
                "give exactly one of checkpoint / hub / hparams / unedited: true"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def kind(self) -> Literal["checkpoint", "hub", "method", "unedited"]:
        if self.checkpoint is not None:
            return "checkpoint"
        if self.hub is not None:
            return "hub"
        return "method" if self.hparams is not None else "unedited"


class Submission(_Strict):
    """The content of `submission.yaml`."""

    schema_version: Literal[1] = SCHEMA_VERSION
    title: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=5000)
    authors: list[str] = Field(min_length=1, max_length=50)
    contact: str = Field(min_length=3, max_length=200, description="an e-mail address or URL")
    method: MethodInfo
    base_model: BaseModelInfo
    benchmark: BenchmarkInfo
    mode: Literal["single", "batch", "sequential"]
    # batch: edits applied at once; sequential: edits applied at once, batch after batch (default 1)
    batch_size: int | None = Field(default=None, ge=1, le=1_000_000)
    num_edits: int = Field(
        ge=1, le=1_000_000, description="the first N edits of the split (cases, for MQuAKE and RippleEdits)"
    )
    score: ScoreTarget

    @field_validator("authors")
    @classmethod
    def _authors(cls, value: list[str]) -> list[str]:
        if any(not a.strip() or len(a) > 200 for a in value):
            raise ValueError("each author must be a non-empty name of at most 200 characters")
        return value

    @model_validator(mode="after")
    def _mode(self) -> Submission:
        if self.mode == "batch" and self.batch_size is None:
            raise ValueError("mode 'batch' needs batch_size (edits applied at once)")
        if self.mode == "single" and self.batch_size is not None:
            raise ValueError("batch_size is only for modes 'batch' and 'sequential' (mode is 'single')")
        if self.mode == "sequential" and self.batch_size == 1:
            self.batch_size = None  # one edit at a time: the default
        if self.mode == "sequential" and self.batch_size is not None and self.score.kind != "method":
            raise ValueError(
                "batch_size of mode 'sequential' is for method runs (a checkpoint holds its edits already)"
            )
        if self.batch_size is not None and self.batch_size > self.num_edits:
            raise ValueError(f"batch_size {self.batch_size} is larger than num_edits {self.num_edits}")
        if self.score.kind in ("checkpoint", "hub") and self.mode == "single":
            raise ValueError(
                "a checkpoint is one edited model holding every edit: mode 'sequential', "
                "or 'batch' with batch_size = num_edits (not 'single')"
            )
        if self.score.unedited and self.mode != "single":
            raise ValueError("an unedited base-model entry uses mode 'single'")
        return self

    @property
    def mode_label(self) -> str:
        if self.mode == "batch":
            return f"batch of {self.batch_size}"
        return f"sequential, batches of {self.batch_size}" if self.batch_size else self.mode


def format_errors(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "missing":
            lines.append(f"missing field '{loc}'")
        elif e["type"] == "extra_forbidden":
            lines.append(f"unknown field '{loc}'")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{loc}: {msg}" if loc else msg)
    return lines


# ----------------------------------------------------------------------------- the template

TEMPLATE = """\
# editeval leaderboard submission. Check it with: editeval submit check {directory}
# Score it with: editeval score {directory}    (writes results.json beside this file)
schema_version: 1
title: "{title}"
# description: "one paragraph on what is special about this entry"
authors:
  - "Your Name"
contact: "you@example.org"          # an e-mail address or a URL
method:
  name: "{method}"  # for a method run: an editeval method ({methods})
  link: "https://arxiv.org/abs/0000.00000"   # paper or code (http/https), or remove
base_model:
  name: "{base}"  # a registered model name
  fingerprint: "{fingerprint}"  # editeval.runtime.models.weights_fingerprint of the base
benchmark:
  name: "{benchmark}"
  # config: "default"
  split: "{split}"
mode: {mode}                    # single | batch | sequential{mode_note}
# batch_size: 200                   # mode batch: edits applied at once; sequential: per step (default 1)
num_edits: 200                      # the first N edits of the split are scored
score:                              # exactly one of the following:
{score}
"""

SCORE_LINES = {
    "checkpoint": (
        '  checkpoint: "checkpoint"         # model folder inside this submission folder (safetensors),\n'
        "                                    # e.g. from: editeval edit ... --save-checkpoint {directory}/checkpoint\n"
        '  # hub: "org/name@revision"       # or a Hugging Face Hub repo id (safetensors files only)\n'
        '  # hparams: "hparams.yaml"        # or a method run: editeval applies method.name with these\n'
        "  # unedited: true                 # or the unedited base model itself"
    ),
    "hub": (
        '  hub: "org/name"                  # a Hugging Face Hub repo id, optionally @revision (safetensors only)\n'
        '  # checkpoint: "checkpoint"       # or a model folder inside this submission folder'
    ),
    "method": (
        '  hparams: "preset"                # a .yaml file inside this folder, or "preset" (editeval\'s preset)\n'
        '  # checkpoint: "checkpoint"       # or a model folder inside this submission folder'
    ),
    "unedited": "  unedited: true                   # the unedited base model (the reference row)",
}


def write_template(
    directory: str | os.PathLike,
    *,
    base: str = "smollm2-135m",
    benchmark: str = "zsre",
    split: str = "edit",
    method: str = "rome",
    kind: str = "checkpoint",
    fingerprint: bool = True,
    force: bool = False,
) -> Path:
    """Write a filled-in, commented `DIR/submission.yaml` (the base fingerprint computed when asked)."""
    if kind not in SCORE_LINES:
        raise EditevalError(f"--kind {kind}: choose from {', '.join(SCORE_LINES)}")
    directory = Path(directory)
    path = directory / MANIFEST
    if path.exists() and not force:
        raise EditevalError(f"{path} exists (pass --force to overwrite)")
    if not SLUG_RE.match(directory.resolve().name):
        raise EditevalError(
            f"folder name '{directory.resolve().name}' is not a valid slug (lowercase letters, digits, '.', '_', '-')"
        )
    fingerprint_value = "0" * 16
    if fingerprint:
        from editeval.runtime.models import load

        fingerprint_value = load(base, device="cpu").fingerprint()
    from editeval.methods import available_methods

    text = TEMPLATE.format(
        directory=directory.as_posix(),
        title=f"{method} on {base} ({benchmark}/{split})",
        method=method,
        methods=", ".join(available_methods()) or "none yet",
        base=base,
        fingerprint=fingerprint_value,
        benchmark=benchmark,
        split=split,
        score=SCORE_LINES[kind].format(directory=directory.as_posix()),
        mode="sequential" if kind in ("checkpoint", "hub") else "single",
        mode_note=(
            "; a checkpoint holds every edit: sequential, or batch with batch_size = num_edits"
            if kind in ("checkpoint", "hub")
            else ""
        ),
    )
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path


def atomic_write_text(path: Path, text: str) -> None:
    atomic_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
