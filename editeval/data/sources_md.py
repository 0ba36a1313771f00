"""Reading a SOURCES.md (`parse_sources_md`: every file's format, size, sha256 and record count, as
`editeval.data.sources.FileSpec`), and printing the pinned `SOURCES` table for one (`main`, behind
`python -m editeval.data.sources SOURCES.md`)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from editeval.data.sources import _FORMATS, EXTENSION_FORMATS, FileSpec, _spec
from editeval.errors import EditevalError
from editeval.runtime.paths import raw_data_dir

_SECTION = re.compile(r"^### `([^`]+)`(.*)$", re.M)
# the format, without a layout note in brackets ("JSON list (indent 4)" is read as a JSON list)
_FORMAT = re.compile(r"^- format: (.+?)(?: \([^;]*\))?; records(?: \(rows\))?: \*\*(.+?)\*\*", re.M)
_SIZE = re.compile(r"^- size: ([\d,]+) bytes; sha256: `([0-9a-f]{64})`", re.M)
# a group section's files: table rows "| `name` | bytes | `sha256` | ..." (a `dir/` section) or list
# items "  - item: bytes, `sha256`, ..." (a `dir/{a,b}_x.json` section)
_TABLE_FILE = re.compile(r"^\| `([^`]+)` \| ([\d,]+) \| `([0-9a-f]{64})` \|", re.M)
_LIST_FILE = re.compile(r"^\s+- ([\w.-]+): ([\d,]+) bytes, `([0-9a-f]{64})`", re.M)
# a summary-table row: path, then a cell that starts with the record count ("37 relations")
_SUMMARY_ROW = re.compile(r"^\| `([^`]+)` \| (\d+)\b[^|]*\| [\d,]+ \|", re.M)


def parse_sources_md(path: str | os.PathLike) -> dict[str, FileSpec]:
    """Every `### \\`file\\`` section of a SOURCES.md: format, size, sha256 and record count."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise EditevalError(f"cannot read sources file {path}: {err.strerror or err}") from None
    heads = list(_SECTION.finditer(text))
    if not heads:
        raise EditevalError(f"{path}: no '### `file`' sections found; is this a SOURCES.md?")
    table: dict[str, FileSpec] = {}
    for i, head in enumerate(heads):
        name = head.group(1)
        block = text[head.end() : heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        if _is_group(name, head.group(2)):
            table.update(_group_specs(name, block, text, path))
            continue
        fmt, size = _FORMAT.search(block), _SIZE.search(block)
        if not fmt or not size:
            raise EditevalError(
                f"{path}: section for {name} lacks a '- format: ...; records: **N**' or '- size: N bytes; sha256: `...`' line"
            )
        if fmt.group(1) not in _FORMATS:
            raise EditevalError(f"{path}: section for {name} has unknown format {fmt.group(1)!r}")
        table[name] = _spec(
            name,
            _FORMATS[fmt.group(1)],
            int(size.group(1).replace(",", "")),
            size.group(2),
            _parse_count(fmt.group(2), path, name),
        )
    return table


def _group_specs(name: str, block: str, text: str, path: Path) -> dict[str, FileSpec]:
    """The files of a group section. `dir/{a,b}_x.json`: one format line, counts "N / M" in the
    order of the braces, and a "- a: bytes, `sha256`" item per file. `dir/`: a table of files (format
    from the extension), each file's record count from the summary table ("| `dir/f` | 37 relations |")."""
    specs = {}
    braces = re.fullmatch(r"(.*)\{([^}]+)\}(.*)", name)
    if braces:
        items = [item.strip() for item in braces.group(2).split(",")]
        fmt = _FORMAT.search(block)
        sizes = {m.group(1): m for m in _LIST_FILE.finditer(block)}
        if not fmt or any(item not in sizes for item in items):
            raise EditevalError(
                f"{path}: section for {name} lacks a '- format: ...; records: **N / M**' line or "
                "a '- item: N bytes, `sha256`' line per file"
            )
        if fmt.group(1) not in _FORMATS:
            raise EditevalError(f"{path}: section for {name} has unknown format {fmt.group(1)!r}")
        counts = [c.strip() for c in fmt.group(2).split("/")]
        if len(counts) != len(items) or not all(c.isdigit() for c in counts):
            raise EditevalError(f"{path}: section for {name} has an unreadable record count {fmt.group(2)!r}")
        for item, count in zip(items, counts):
            file = braces.group(1) + item + braces.group(3)
            m = sizes[item]
            specs[file] = _spec(file, _FORMATS[fmt.group(1)], int(m.group(2).replace(",", "")), m.group(3), int(count))
        return specs
    if not name.endswith("/"):
        raise EditevalError(f"{path}: section for {name} describes several files but names no folder or {{a,b}} list")
    summary = {m.group(1): int(m.group(2)) for m in _SUMMARY_ROW.finditer(text)}
    rows = list(_TABLE_FILE.finditer(block))
    if not rows:
        raise EditevalError(f"{path}: section for {name} has no '| `file` | bytes | `sha256` |' table rows")
    for m in rows:
        file = name + m.group(1)
        fmt = EXTENSION_FORMATS.get(Path(file).suffix)
        if fmt is None:
            raise EditevalError(f"{path}: section for {name} lists {m.group(1)}, a file type with no known format")
        if file not in summary:
            raise EditevalError(f"{path}: section for {name} lists {m.group(1)}, but no summary row gives its count")
        specs[file] = _spec(file, fmt, int(m.group(2).replace(",", "")), m.group(3), summary[file])
    return specs


def _is_group(name: str, rest: str) -> bool:
    """A section describing several files at once: `dir/` (N files) or `a/{x,y}.json`."""
    return name.endswith("/") or "{" in name or "files)" in rest


def _parse_count(text: str, path: Path, name: str) -> int | dict[str, int]:
    text = text.strip()
    if text.isdigit():
        return int(text)
    counts = {}
    for part in text.split("/"):
        key, _, num = part.partition(":")
        if not num.strip().isdigit():
            raise EditevalError(f"{path}: section for {name} has an unreadable record count {text!r}")
        counts[key.strip()] = int(num)
    return counts


def _emit(table: Mapping[str, FileSpec]) -> str:
    lines = []
    for s in table.values():
        records = dict(s.records) if isinstance(s.records, tuple) else s.records
        lines.append(f"        _spec({s.path!r}, {s.format!r}, {s.size}, {s.sha256!r}, {records!r}),")
    return "\n".join(lines).replace("'", '"')


def main() -> None:
    """Print the SOURCES entries for a SOURCES.md (the first argument, or the raw-data folder's)."""
    print(_emit(parse_sources_md(sys.argv[1] if len(sys.argv) > 1 else raw_data_dir() / "SOURCES.md")))
