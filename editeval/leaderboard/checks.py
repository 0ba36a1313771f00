"""Safety checks of a submission folder (paths stay inside it, safetensors only, no code, sizes
capped), loading and checking its manifest, and fetching a Hub checkpoint."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import yaml
from pydantic import (
    ValidationError,
)

from editeval.errors import EditevalError
from editeval.leaderboard.manifest import (
    ALLOWED_NAMES,
    ALLOWED_SUFFIXES,
    CODE_SUFFIXES,
    DEFAULT_LIMITS,
    HUB_ALLOW_PATTERNS,
    MANIFEST,
    PICKLE_SUFFIXES,
    RESULTS,
    SLUG_RE,
    Limits,
    Submission,
    SubmissionError,
    format_errors,
)
from editeval.leaderboard.weights import WeightsError, declared_tensors
from editeval.leaderboard.weights import check_fits_base as check_fits_base_files

log = logging.getLogger(__name__)

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
        raise SubmissionError(
            root / MANIFEST, [f"{field_name}: '{rel}' must be a relative path inside the submission folder"]
        )
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
                problems.append(
                    f"{rel}: file type not allowed in a checkpoint (safetensors, json, txt, tokenizer files)"
                )
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
    if not problems:
        problems += _config_problems(folder)
    if not problems:  # each file's header, without reading a tensor
        try:
            declared_tensors(weights)
        except WeightsError as err:
            problems.append(str(err))
    if problems:
        raise SubmissionError(folder, problems)
    return weights


def _config_problems(folder: Path) -> list[str]:
    """transformers must be able to read the checkpoint's config (types and values checked)."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - whatever transformers raises for a bad config: one line
        why = (str(err).strip().splitlines() or [type(err).__name__])[-1].strip()
        return [f"config.json: transformers cannot read it ({why})"]
    return []


def local_base_dir(name: str, directory: Path) -> Path | None:
    """The base model's weights folder when it is on this machine without converting anything: a
    model folder in the submission, or a registered model already converted in the cache."""
    if base_is_registered(name):
        from editeval.runtime.paths import cache_dir

        folder = cache_dir() / "models" / name
        return folder if (folder / "model.safetensors").is_file() else None
    folder = directory / name
    return folder if (folder / "config.json").is_file() else None


def check_fits_base(checked: CheckedSubmission, checkpoint: Path, base_dir: Path) -> None:
    """The checkpoint's tensors (from their headers) are the base model's: names, shapes, float dtypes."""
    try:
        check_fits_base_files(sorted(checkpoint.rglob("*.safetensors")), sorted(base_dir.glob("*.safetensors")))
    except WeightsError as err:
        field = "score.hub" if checked.submission.score.kind == "hub" else "score.checkpoint"
        raise SubmissionError(checked.dir / MANIFEST, [f"{field}: does not fit the base model: {err}"]) from None


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
    fits_base_checked: bool = False  # the checkpoint's tensors were checked against the base's (on this machine)

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
        raise SubmissionError(manifest, format_errors(err)) from None


def base_is_registered(name: str) -> bool:
    from editeval.runtime.models import MODELS

    return name in MODELS


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
    if not base_is_registered(base):
        try:
            safe_path(directory, base, "base_model.name")
            if not (directory / base / "config.json").is_file():
                problems.append(
                    f"base_model.name: '{base}' is neither a registered model nor a model folder in the submission"
                )
        except SubmissionError as err:
            problems.append(
                f"base_model.name: '{base}' is not a registered model ({err.problems[0].split(': ', 1)[-1]})"
            )

    if target.kind == "checkpoint":
        try:
            checked.checkpoint_dir = safe_path(directory, target.checkpoint, "score.checkpoint")
            if check_files:
                check_checkpoint_folder(checked.checkpoint_dir, root, limits)
                base_dir = local_base_dir(base, directory) if not problems else None
                if base_dir is not None:
                    check_fits_base(checked, checked.checkpoint_dir, base_dir)
                checked.fits_base_checked = base_dir is not None
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
            [
                (
                    f"score.hub: '{repo}' is a Hub repo id, and HF_HUB_OFFLINE is set: download it elsewhere "
                    "into the submission folder and give score.checkpoint instead"
                )
            ],
        )
    from huggingface_hub import snapshot_download

    from editeval.runtime.paths import cache_dir

    repo_id, _, revision = repo.partition("@")
    target = cache_dir() / "submissions" / checked.slug / repo_id.replace("/", "--")
    try:
        snapshot_download(repo_id, revision=revision or None, local_dir=target, allow_patterns=HUB_ALLOW_PATTERNS)
    except Exception as err:  # noqa: BLE001 - network, auth, missing repo: all reported as one line
        raise SubmissionError(
            checked.dir / MANIFEST, [f"score.hub: cannot download '{repo}': {str(err).splitlines()[0]}"]
        ) from None
    check_checkpoint_folder(target, target, limits)
    return target
