"""The runtime a command runs under: where (device, placement, dtype), how (threads, progress) and
which data folder. Resolved once at the entry point (`editeval.commands.options.resolve_runtime`)
and passed down as an argument; library code never reads the environment for these."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict


class Runtime(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = "auto"  # auto | cpu | cuda[:N]; under a launcher each process takes its own
    dtype: str = "float32"  # float32 | bfloat16 | float16, checked by `models.resolve_dtype` when loading
    # accelerate's placement of one model over several devices: a strategy name or {module: device}
    device_map: str | dict[str, int | str] | None = None
    threads: int | None = None  # torch CPU threads, None: torch's choice
    progress: bool = True
    # built datasets; None: `paths.datasets_dir()`'s default (a command always resolves it)
    datasets_dir: Path | None = None
