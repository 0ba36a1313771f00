"""Refusals shared by the edit pipeline (`editing`) and checkpoint scoring (`scoring`)."""

from __future__ import annotations

from pathlib import Path

from editeval.errors import EditevalError


def check_device_map_alone(group, device_map: str | None) -> None:
    """A model spread over the devices (--device-map) is one replica: it does not combine with
    data-parallel processes (`group`, from `distributed.setup`), which each hold their own."""
    if group is not None and device_map not in (None, "none"):
        raise EditevalError("--device-map spreads one model over the devices; it does not combine with several processes "
                            "(each process holds its own replica): launch one process, or leave out --device-map")


def check_record_path(out: Path) -> None:
    """A results record is written as ``<name>.json`` (its rows go next to it)."""
    if out.suffix != ".json":
        raise EditevalError(f"--out {out}: the results record must be a .json path")
