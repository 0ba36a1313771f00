"""Where things live: raw data, the repository's dataset folders, the user cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import platformdirs

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # editeval/
REPO_ROOT = PACKAGE_DIR.parent
DEFAULT_DATASETS_DIR = REPO_ROOT / "datasets"  # built datasets when no folder is given


def raw_data_dir(override: str | os.PathLike | None = None) -> Path:
    """Raw benchmark files: flag > $EDITEVAL_RAW_DATA > ../shared/data/raw beside the repo."""
    if override:
        return Path(override)
    if os.environ.get("EDITEVAL_RAW_DATA"):
        return Path(os.environ["EDITEVAL_RAW_DATA"])
    return REPO_ROOT.parent / "shared" / "data" / "raw"


def datasets_dir(override: str | os.PathLike | None = None) -> Path:
    """Built datasets: `override`, else ./datasets in the repository. A command resolves the folder
    once (--datasets-dir, else $EDITEVAL_DATASETS: `editeval.commands.options.datasets_folder`) and
    passes it down; the library never reads the environment for it."""
    if override:
        return Path(override)
    return DEFAULT_DATASETS_DIR


def cache_dir() -> Path:
    """Converted models, key statistics, pre-edit predictions: $EDITEVAL_CACHE or the user cache dir."""
    root = Path(os.environ.get("EDITEVAL_CACHE") or platformdirs.user_cache_dir("editeval"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def atomic_file(target: str | os.PathLike, write) -> None:
    """Call `write(temp path)` on a temp file beside `target`, then rename it into place: readers
    see the old file or the new one, never half of one; on error the temp file is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(target: str | os.PathLike):
    """Yield a temp folder beside `target`; on success it replaces `target` (an existing one is
    moved aside first and restored if the swap fails), on error it is removed: no half-written folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    old = None
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
