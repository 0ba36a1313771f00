"""Leaderboard submissions: the `submission.yaml` manifest, its safety checks, and scoring.

A submission is a folder `submissions/<slug>/` holding `submission.yaml` and, once scored,
`results.json` (the results record, `editeval.evaluation.results`) with its per-edit Parquet side file.
What is scored is one of:

- `score.checkpoint`: an edited model folder *inside* the submission folder (safetensors only);
- `score.hub`: a Hugging Face Hub repo id (`org/name` or `org/name@revision`), downloaded with
  safetensors/json/txt files only (never with `HF_HUB_OFFLINE=1`);
- `score.hparams`: a method run: editeval applies `method.name` with this hyper-parameter file
  (inside the folder) or `preset` (editeval's preset for the base model);
- `score.unedited: true`: the base model itself (the reference row every edit is compared with).

Submissions come from strangers, so nothing in them is ever executed: weights load from
safetensors only (pickle files are refused), `trust_remote_code` is never set and a checkpoint that
ships code or asks for it (`auto_map`) is refused, every path must stay inside the submission
folder (no `..`, no absolute paths, no symlinks leading out), and file sizes are capped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from editeval.errors import EditevalError
from editeval.runtime.paths import REPO_ROOT
from editeval.runtime.settings import Runtime

log = logging.getLogger(__name__)

MANIFEST = "submission.yaml"
RESULTS = "results.json"
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
    fingerprint: str = Field(pattern=FINGERPRINT_RE, description="editeval.runtime.models.weights_fingerprint of the base")


class BenchmarkInfo(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    config: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    split: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ScoreTarget(_Strict):
    checkpoint: str | None = Field(default=None, max_length=500, description="model folder inside the submission")
    hub: str | None = Field(default=None, max_length=300, description="Hub repo id org/name[@revision]")
    hparams: str | None = Field(default=None, max_length=500, description="hparams file inside the submission, or 'preset'")
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
    num_edits: int = Field(ge=1, le=1_000_000, description="the first N edits of the split")
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
            raise ValueError("batch_size of mode 'sequential' is for method runs (a checkpoint holds its edits already)")
        if self.batch_size is not None and self.batch_size > self.num_edits:
            raise ValueError(f"batch_size {self.batch_size} is larger than num_edits {self.num_edits}")
        if self.score.kind in ("checkpoint", "hub") and self.mode == "single":
            raise ValueError("a checkpoint is one edited model holding every edit: mode 'sequential', "
                             "or 'batch' with batch_size = num_edits (not 'single')")
        if self.score.unedited and self.mode != "single":
            raise ValueError("an unedited base-model entry uses mode 'single'")
        return self

    @property
    def mode_label(self) -> str:
        if self.mode == "batch":
            return f"batch of {self.batch_size}"
        return f"sequential, batches of {self.batch_size}" if self.batch_size else self.mode


def _format_errors(err: ValidationError) -> list[str]:
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


# ----------------------------------------------------------------------------- path safety


def _read_capped(path: Path, cap: int, what: str) -> str:
    size = path.stat().st_size
    if size > cap:
        raise SubmissionError(path, [f"{what} is {size:,} bytes, over the {cap:,}-byte limit"])
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SubmissionError(path, [f"{what} is not UTF-8 text"]) from None


def safe_path(root: Path, rel: str, field_name: str) -> Path:
    """`rel` resolved inside `root`; refuses absolute paths, `..` and symlinks leading out."""
    if not rel or PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or rel.startswith("~"):
        raise SubmissionError(root / MANIFEST, [f"{field_name}: '{rel}' must be a relative path inside the submission folder"])
    parts = re.split(r"[\\/]", rel)
    if ".." in parts:
        raise SubmissionError(root / MANIFEST, [f"{field_name}: '{rel}' must not contain '..'"])
    path = root / rel
    if not path.resolve().is_relative_to(root.resolve()):
        raise SubmissionError(root / MANIFEST, [f"{field_name}: '{rel}' leads out of the submission folder (symlink)"])
    return path


def check_checkpoint_folder(folder: Path, root: Path | None = None, limits: Limits = DEFAULT_LIMITS) -> list[Path]:
    """Refuse anything but safetensors weights + config/tokenizer files; returns the weight files.

    Every entry must be a regular file (or a symlink that stays inside `root`), no pickle files,
    no code, no `auto_map` (custom code) in the configs, sizes under `limits`."""
    root = (root or folder).resolve()
    if not folder.is_dir():
        raise SubmissionError(folder, [f"checkpoint folder '{folder.name}' does not exist"])
    problems: list[str] = []
    weights: list[Path] = []
    total = 0
    count = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                problems.append(f"{rel}: symlink leads out of the submission folder")
                continue
            if name in dirnames:
                if name.startswith(".") and name not in {".cache"}:
                    problems.append(f"{rel}: hidden folder not allowed in a checkpoint")
                continue
            count += 1
            suffix = path.suffix.lower()
            if suffix in PICKLE_SUFFIXES:
                problems.append(f"{rel}: pickle-based weight files are refused (save with safetensors)")
                continue
            if suffix in CODE_SUFFIXES:
                problems.append(f"{rel}: code files are refused (custom code is never run)")
                continue
            if suffix not in ALLOWED_SUFFIXES and name not in ALLOWED_NAMES:
                problems.append(f"{rel}: file type not allowed in a checkpoint (safetensors, json, txt, tokenizer files)")
                continue
            if not path.is_file():
                problems.append(f"{rel}: not a regular file")
                continue
            size = path.stat().st_size
            total += size
            cap = limits.weights_file if suffix == ".safetensors" else limits.small_file
            if size > cap:
                problems.append(f"{rel}: {size:,} bytes, over the {cap:,}-byte limit")
            if suffix == ".safetensors":
                weights.append(path)
            elif suffix == ".json" and size <= limits.small_file:
                try:
                    content = json.loads(path.read_text(encoding="utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    problems.append(f"{rel}: not valid JSON")
                    continue
                if isinstance(content, dict) and "auto_map" in content:
                    problems.append(f"{rel}: asks for custom code (auto_map); trust_remote_code is never used")
    if count > limits.files:
        problems.append(f"{count} files, over the limit of {limits.files}")
    if total > limits.checkpoint:
        problems.append(f"{total:,} bytes in all, over the {limits.checkpoint:,}-byte limit")
    if not problems and not weights:
        problems.append("no .safetensors weights in the checkpoint folder")
    if not problems and not (folder / "config.json").is_file():
        problems.append("no config.json in the checkpoint folder")
    if problems:
        raise SubmissionError(folder, problems)
    return weights


# ----------------------------------------------------------------------------- loading and checking


@dataclass
class CheckedSubmission:
    """A validated submission and the local files it points at."""

    dir: Path
    slug: str
    submission: Submission
    checkpoint_dir: Path | None = None  # score.checkpoint (or a downloaded hub snapshot)
    hparams_path: Path | None = None  # score.hparams unless 'preset'
    hparams: dict | None = None  # the parsed hyper-parameter file

    @property
    def results_path(self) -> Path:
        return self.dir / RESULTS


def load_submission(directory: str | os.PathLike, limits: Limits = DEFAULT_LIMITS) -> Submission:
    """Parse and validate `DIR/submission.yaml` (schema only, no files checked)."""
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not directory.is_dir():
        raise SubmissionError(directory, ["submission folder does not exist"])
    if not manifest.is_file():
        raise SubmissionError(directory, [f"no {MANIFEST} (create one with: editeval submit new {directory})"])
    if manifest.is_symlink():
        raise SubmissionError(manifest, ["must be a regular file, not a symlink"])
    text = _read_capped(manifest, limits.manifest, MANIFEST)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise SubmissionError(manifest, [f"not valid YAML{where}: {getattr(err, 'problem', None) or err}"]) from None
    if not isinstance(data, dict):
        raise SubmissionError(manifest, ["expected a mapping of fields (see: editeval submit new)"])
    try:
        return Submission.model_validate(data)
    except ValidationError as err:
        raise SubmissionError(manifest, _format_errors(err)) from None


def _base_is_registered(name: str) -> bool:
    from editeval.runtime.models import REGISTRY

    return name in REGISTRY


def check_submission(
    directory: str | os.PathLike, *, check_files: bool = True, limits: Limits = DEFAULT_LIMITS
) -> CheckedSubmission:
    """Validate a submission folder: the manifest schema, the slug, every path it names (inside the
    folder, no symlinks out, size caps), the checkpoint's files (safetensors only, no code), the
    hparams file, and that a method run names an editeval method supporting its mode.
    Raises `SubmissionError` listing every problem, one line each."""
    directory = Path(directory)
    sub = load_submission(directory, limits)
    root = directory.resolve()
    slug = root.name
    problems: list[str] = []
    if not SLUG_RE.match(slug):
        problems.append(f"folder name '{slug}' is not a valid slug (lowercase letters, digits, '.', '_', '-')")
    checked = CheckedSubmission(dir=directory, slug=slug, submission=sub)
    target = sub.score

    base = sub.base_model.name
    if not _base_is_registered(base):
        try:
            safe_path(directory, base, "base_model.name")
            if not (directory / base / "config.json").is_file():
                problems.append(f"base_model.name: '{base}' is neither a registered model nor a model folder in the submission")
        except SubmissionError as err:
            problems.append(
                f"base_model.name: '{base}' is not a registered model "
                f"({err.problems[0].split(': ', 1)[-1]})"
            )

    if target.kind == "checkpoint":
        try:
            checked.checkpoint_dir = safe_path(directory, target.checkpoint, "score.checkpoint")
            if check_files:
                check_checkpoint_folder(checked.checkpoint_dir, root, limits)
        except SubmissionError as err:
            problems.extend(p if p.startswith("score.") else f"score.checkpoint: {p}" for p in err.problems)
    elif target.kind == "method":
        from editeval.methods import get_method

        try:
            method = get_method(sub.method.name)
            if sub.mode == "batch" and not method.batch:
                problems.append(f"method '{method.name}' does not support mode 'batch'")
            if sub.mode == "sequential" and sub.batch_size and not method.batch:
                problems.append(f"method '{method.name}' edits one request at a time (no sequential batch_size)")
            if sub.mode == "sequential" and not method.sequential:
                problems.append(f"method '{method.name}' does not support mode 'sequential'")
        except EditevalError as err:
            problems.append(f"method.name: {err}")
        if target.hparams != "preset":
            try:
                path = safe_path(directory, target.hparams, "score.hparams")
                if path.suffix.lower() not in {".yaml", ".yml"}:
                    problems.append(f"score.hparams: '{target.hparams}' must be a .yaml file")
                elif not path.is_file():
                    problems.append(f"score.hparams: file '{target.hparams}' does not exist")
                else:
                    values = yaml.safe_load(_read_capped(path, limits.hparams, "hparams file"))
                    if not isinstance(values, dict):
                        problems.append(f"score.hparams: '{target.hparams}' must hold a mapping of hyper-parameters")
                    else:
                        checked.hparams_path, checked.hparams = path, values
            except SubmissionError as err:
                problems.extend(err.problems)
            except yaml.YAMLError as err:
                problems.append(f"score.hparams: '{target.hparams}' is not valid YAML ({str(err).splitlines()[0]})")
    if problems:
        raise SubmissionError(directory / MANIFEST, problems)
    return checked


def fetch_hub_checkpoint(checked: CheckedSubmission, limits: Limits = DEFAULT_LIMITS) -> Path:
    """Download a `score.hub` checkpoint (safetensors + json/txt files only) into the cache."""
    repo = checked.submission.score.hub
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        raise SubmissionError(
            checked.dir / MANIFEST,
            [(f"score.hub: '{repo}' is a Hub repo id, and HF_HUB_OFFLINE is set: download it elsewhere "
             "into the submission folder and give score.checkpoint instead")],
        )
    from huggingface_hub import snapshot_download

    from editeval.runtime.paths import cache_dir

    repo_id, _, revision = repo.partition("@")
    target = cache_dir() / "submissions" / checked.slug / repo_id.replace("/", "--")
    try:
        snapshot_download(repo_id, revision=revision or None, local_dir=target, allow_patterns=HUB_ALLOW_PATTERNS)
    except Exception as err:  # noqa: BLE001 - network, auth, missing repo: all reported as one line
        raise SubmissionError(checked.dir / MANIFEST, [f"score.hub: cannot download '{repo}': {str(err).splitlines()[0]}"]) from None
    check_checkpoint_folder(target, target, limits)
    return target


# ----------------------------------------------------------------------------- scoring

STAGING = ".scoring"  # inside the submission folder: the run's partial files (resumable), then renamed


def base_model_dir(checked: CheckedSubmission) -> Path:
    from editeval.runtime.models import model_dir

    name = checked.submission.base_model.name
    return model_dir(name) if _base_is_registered(name) else checked.dir / name


def count_parameters(model_dir: Path) -> int | None:
    """Parameter count from the safetensors headers (no weights are read)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open is not iterable
                n = 1
                for d in fh.get_slice(name).get_shape():
                    n *= d
                total += n
    return total or None


class Current:
    """What a submission would be scored against now: base fingerprints (loading each base once),
    dataset fingerprints (of the first N requests), hyper-parameters. One instance per call."""

    def __init__(self, device: str = "cpu", requests: list[dict] | None = None,
                 datasets_dir: str | os.PathLike | None = None):
        self.device = device
        self.requests = requests  # tests: scored instead of the benchmark split
        self.datasets_dir = datasets_dir  # None: `paths.datasets_dir()`
        self._base: dict[str, str] = {}
        self._data: dict[tuple, str] = {}

    def base_fingerprint(self, base_dir: Path) -> str:
        key = str(base_dir.resolve())
        if key not in self._base:
            from editeval.runtime.models import load

            self._base[key] = load(base_dir, device=self.device).fingerprint()
        return self._base[key]

    def load_requests(self, sub: Submission) -> list[dict]:
        from editeval.data import load_requests

        if self.requests is not None:
            return [dict(r) for r in self.requests][: sub.num_edits]
        return load_requests(sub.benchmark.name, sub.benchmark.split, sub.benchmark.config, sub.num_edits,
                             self.datasets_dir)

    def dataset_fingerprint(self, sub: Submission) -> str:
        from editeval.run.scoring import dataset_fingerprint

        key = (sub.benchmark.name, sub.benchmark.config, sub.benchmark.split, sub.num_edits)
        if key not in self._data:
            self._data[key] = dataset_fingerprint(self.load_requests(sub))
        return self._data[key]

    def hparams(self, checked: CheckedSubmission) -> dict:
        """The hyper-parameters a method run would use (its file, or editeval's preset)."""
        from types import SimpleNamespace

        from transformers import AutoConfig

        from editeval.methods import get_method

        method = get_method(checked.submission.method.name)
        base_dir = base_model_dir(checked)
        stand_in = SimpleNamespace(config=AutoConfig.from_pretrained(base_dir, trust_remote_code=False))
        hparams = method.load_hparams(stand_in, checked.submission.base_model.name, checked.hparams_path)
        return hparams.to_dict()


def staleness(checked: CheckedSubmission, current: Current) -> str | None:
    """Why `results.json` must be (re)computed, or None when it is up to date: missing or unreadable,
    another results schema or metric version, the submission changed (benchmark, split, edits,
    mode, hyper-parameters), the base model's weights or the dataset changed."""
    from editeval.evaluation.metrics import METRIC_VERSION
    from editeval.evaluation.results import SCHEMA_VERSION, grouped_batch_size, hparams_hash

    path = checked.results_path
    if not path.is_file():
        return f"no {RESULTS}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data.get("schema_version") if isinstance(data, dict) else None
        if str(version) != SCHEMA_VERSION:
            return f"results schema version {version!r} (now {SCHEMA_VERSION!r})"
        from editeval.evaluation.results import ResultsRecord

        meta = ResultsRecord.model_validate(data).meta
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as err:
        return f"{RESULTS} unreadable ({str(err).splitlines()[0]})"
    sub = checked.submission
    if meta.metric_version != METRIC_VERSION:
        return f"metric version {meta.metric_version} (now {METRIC_VERSION})"
    declared = (sub.benchmark.name, sub.benchmark.config, sub.benchmark.split, sub.num_edits, sub.mode, sub.batch_size)
    recorded = (meta.benchmark, meta.config, meta.split, meta.limit, meta.mode,
                grouped_batch_size(meta.mode, meta.edit_batch_size))
    if declared != recorded:
        return f"submission changed: benchmark/config/split/num_edits/mode/batch_size {recorded} -> {declared}"
    if sub.score.kind == "method" and meta.hparams_hash != hparams_hash(current.hparams(checked)):
        return f"hyper-parameters changed (hash {meta.hparams_hash} -> {hparams_hash(current.hparams(checked))})"
    base_fp = current.base_fingerprint(base_model_dir(checked))
    if meta.base_fingerprint != base_fp:
        return f"base model changed (fingerprint {meta.base_fingerprint} -> {base_fp})"
    data_fp = current.dataset_fingerprint(sub)
    if meta.dataset_fingerprint != data_fp:
        return f"dataset changed (fingerprint {meta.dataset_fingerprint} -> {data_fp})"
    return None


def score_submission(
    directory: str | os.PathLike, *, runtime: Runtime = Runtime(), fluency: bool = False,
    piqa_items: int | None = None, limits: Limits = DEFAULT_LIMITS,
    requests: list[dict] | None = None, current: Current | None = None,
):
    """Score one submission folder under `runtime` (device, dtype, progress, datasets folder) and
    write `results.json` + its per-edit Parquet beside `submission.yaml` (both renamed into place
    only when scoring succeeded).

    A checkpoint (local or Hub) is scored with `editeval.run.scoring.score_checkpoint` against the
    declared base model (its fingerprint must match); a method run goes through the edit driver
    (`editeval.run.editing.run_edits`) in the declared mode; `unedited` scores the base model itself.
    Seeds are fixed, so scoring twice gives the same numbers. `requests` replaces the benchmark
    split (tests). Returns the `ResultsRecord`."""
    import torch

    from editeval.evaluation.results import read_record, rows_path

    checked = check_submission(directory, limits=limits)
    sub = checked.submission
    current = current or Current(device="cpu", requests=requests, datasets_dir=runtime.datasets_dir)
    base_dir = base_model_dir(checked)
    base_fp = current.base_fingerprint(base_dir)
    if base_fp != sub.base_model.fingerprint:
        message = (f"base_model.fingerprint {sub.base_model.fingerprint} does not match base model "
                   f"'{sub.base_model.name}' (its weights have fingerprint {base_fp})")
        if sub.score.kind in ("checkpoint", "hub"):
            raise SubmissionError(checked.dir / MANIFEST, [message + ": the checkpoint was edited from another base"])
        log.warning("%s: %s; scoring the method on the current base", checked.slug, message)
    if sub.score.kind == "hub":
        checked.checkpoint_dir = fetch_hub_checkpoint(checked, limits)

    reqs = current.load_requests(sub)
    from editeval.run.scoring import DEFAULT_PIQA_ITEMS, dataset_fingerprint

    data_fp = dataset_fingerprint(reqs)
    staging = checked.dir / STAGING  # made by the first write into it: a run refused before leaves no folder
    out = staging / RESULTS
    extra = {"submission": checked.slug, "submission_kind": sub.score.kind, "limit": sub.num_edits,
             "base_num_parameters": count_parameters(base_dir)}
    torch.manual_seed(0)
    if sub.score.kind == "method":
        from editeval.run.config import EditConfig
        from editeval.run.editing import run_edits
        from editeval.runtime.models import load

        config = EditConfig(
            method=sub.method.name, model=sub.base_model.name, benchmark=sub.benchmark.name,
            config=sub.benchmark.config, split=sub.benchmark.split, limit=sub.num_edits, mode=sub.mode,
            edit_batch_size=sub.batch_size, hparams_path=str(checked.hparams_path) if checked.hparams_path else None,
            out=str(out), seed=0,
        )
        loaded = load(base_dir, device=runtime.device, dtype=runtime.dtype, device_map=runtime.device_map)
        loaded.name = sub.base_model.name
        run_edits(config, runtime, loaded=loaded, requests=reqs, dataset_fingerprint=data_fp)
        record = read_record(out)
        record.meta = record.meta.model_copy(update=extra)
        _atomic_write_text(out, record.model_dump_json(indent=2) + "\n")
    else:
        from editeval.run.scoring import score_checkpoint

        model = base_dir if sub.score.kind == "unedited" else checked.checkpoint_dir
        extra.update(mode=sub.mode, edit_batch_size=sub.batch_size, base_model=sub.base_model.name,
                     edited_model=sub.score.hub or sub.score.checkpoint or sub.base_model.name)
        score_checkpoint(
            model, base=base_dir, benchmark=sub.benchmark.name, split=sub.benchmark.split,
            config=sub.benchmark.config, limit=sub.num_edits, runtime=runtime, fluency=fluency,
            piqa_items=DEFAULT_PIQA_ITEMS if piqa_items is None else piqa_items, out=out,
            requests=reqs, extra_meta=extra,
        )
    # both files into place: the rows first, so a results.json never points at missing rows
    os.replace(rows_path(out), rows_path(checked.results_path))
    os.replace(out, checked.results_path)
    shutil.rmtree(staging, ignore_errors=True)
    return read_record(checked.results_path)


def list_submissions(submissions_dir: str | os.PathLike = SUBMISSIONS_DIR) -> list[Path]:
    root = Path(submissions_dir)
    if not root.is_dir():
        raise EditevalError(f"submissions folder not found: {root}")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def stale_submissions(
    submissions_dir: str | os.PathLike = SUBMISSIONS_DIR, *, current: Current | None = None,
) -> list[tuple[Path, str]]:
    """(folder, reason) for every submission whose results are missing or stale. Folders whose
    submission.yaml is invalid are reported with their problems (they cannot be scored)."""
    current = current or Current()
    out = []
    for folder in list_submissions(submissions_dir):
        try:
            reason = staleness(check_submission(folder, check_files=False), current)
        except EditevalError as err:
            reason = f"invalid: {str(err).splitlines()[0]}"
        if reason:
            out.append((folder, reason))
    return out


@dataclass
class ScoreAllReport:
    scored: list[Path] = field(default_factory=list)
    up_to_date: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def score_all(
    submissions_dir: str | os.PathLike = SUBMISSIONS_DIR, *, force: bool = False, runtime: Runtime = Runtime(),
    fluency: bool = False, piqa_items: int | None = None, echo=print, current: Current | None = None,
) -> ScoreAllReport:
    """Score every submission whose results are missing or stale (all of them with `force`), under
    `runtime`. A submission that fails is reported and the others still run."""
    current = current or Current(datasets_dir=runtime.datasets_dir)
    stale = {p: r for p, r in stale_submissions(submissions_dir, current=current)}
    report = ScoreAllReport()
    for folder in list_submissions(submissions_dir):
        reason = stale.get(folder, "forced" if force else None)
        if reason is None:
            report.up_to_date.append(folder)
            continue
        if reason.startswith("invalid: "):
            report.failed.append((folder, reason))
            echo(f"{folder.name}: {reason}")
            continue
        echo(f"{folder.name}: scoring ({reason})")
        try:
            score_submission(folder, runtime=runtime, fluency=fluency, piqa_items=piqa_items, current=current)
            report.scored.append(folder)
        except EditevalError as err:
            report.failed.append((folder, str(err).splitlines()[0]))
            echo(f"{folder.name}: failed: {str(err).splitlines()[0]}")
    return report


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
    "checkpoint": ('  checkpoint: "checkpoint"         # model folder inside this submission folder (safetensors),\n'
                   "                                    # e.g. from: editeval edit ... --save-checkpoint {directory}/checkpoint\n"
                   '  # hub: "org/name@revision"       # or a Hugging Face Hub repo id (safetensors files only)\n'
                   '  # hparams: "hparams.yaml"        # or a method run: editeval applies method.name with these\n'
                   "  # unedited: true                 # or the unedited base model itself"),
    "hub": ('  hub: "org/name"                  # a Hugging Face Hub repo id, optionally @revision (safetensors only)\n'
            '  # checkpoint: "checkpoint"       # or a model folder inside this submission folder'),
    "method": ('  hparams: "preset"                # a .yaml file inside this folder, or "preset" (editeval\'s preset)\n'
               '  # checkpoint: "checkpoint"       # or a model folder inside this submission folder'),
    "unedited": "  unedited: true                   # the unedited base model (the reference row)",
}


def write_template(
    directory: str | os.PathLike, *, base: str = "smollm2-135m", benchmark: str = "zsre", split: str = "edit",
    method: str = "rome", kind: str = "checkpoint", fingerprint: bool = True, force: bool = False,
) -> Path:
    """Write a filled-in, commented `DIR/submission.yaml` (the base fingerprint computed when asked)."""
    if kind not in SCORE_LINES:
        raise EditevalError(f"--kind {kind}: choose from {', '.join(SCORE_LINES)}")
    directory = Path(directory)
    path = directory / MANIFEST
    if path.exists() and not force:
        raise EditevalError(f"{path} exists (pass --force to overwrite)")
    if not SLUG_RE.match(directory.resolve().name):
        raise EditevalError(f"folder name '{directory.resolve().name}' is not a valid slug (lowercase letters, digits, '.', '_', '-')")
    fingerprint_value = "0" * 16
    if fingerprint:
        from editeval.runtime.models import load

        fingerprint_value = load(base, device="cpu").fingerprint()
    from editeval.methods import available_methods

    text = TEMPLATE.format(
        directory=directory.as_posix(), title=f"{method} on {base} ({benchmark}/{split})", method=method,
        methods=", ".join(available_methods()) or "none yet", base=base, fingerprint=fingerprint_value,
        benchmark=benchmark, split=split, score=SCORE_LINES[kind].format(directory=directory.as_posix()),
        mode="sequential" if kind in ("checkpoint", "hub") else "single",
        mode_note=("; a checkpoint holds every edit: sequential, or batch with batch_size = num_edits"
                   if kind in ("checkpoint", "hub") else ""),
    )
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, text)
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
