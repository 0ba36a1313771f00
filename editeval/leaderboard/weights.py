"""The weights of a submitted checkpoint, checked from their safetensors headers alone (no tensor is
read): each file is a well-formed safetensors file (a header that fits, tensors that exactly
cover the data), and its tensors fit the base model (names it has, the same shapes, floating-point
dtypes). A bad file is refused with one line naming it and the first problem, before anything is
loaded.

The format (https://huggingface.co/docs/safetensors): 8 bytes, the little-endian length N of a
UTF-8 JSON header; the header maps each tensor name to ``{"dtype", "shape", "data_offsets":
[begin, end]}`` (offsets into the data after the header) and may hold ``"__metadata__"`` (text to
text); the data is the tensors, contiguous, and nothing after them.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path

from editeval.errors import EditevalError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
ITEM_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}  # what an edited model's weights may be stored as


class WeightsError(EditevalError):
    """A weights file that cannot be used, with the one problem found first."""


def read_header(path: str | Path) -> dict[str, dict]:
    """The tensors a safetensors file declares (name -> dtype, shape, data_offsets), checked against
    the file's size and the format; `WeightsError` (one line) when anything does not hold."""
    path = Path(path)
    size = path.stat().st_size

    def bad(problem: str) -> WeightsError:
        return WeightsError(f"{path.name}: {problem}")

    if size < 8:
        raise bad(f"{size} bytes: too short for a safetensors file (truncated?)")
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER_BYTES:
            raise bad(f"declares a {n:,}-byte header, over the {MAX_HEADER_BYTES:,}-byte limit")
        if 8 + n > size:
            raise bad(f"declares a {n:,}-byte header but holds {size - 8:,} bytes after its length (truncated?)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad("header is not UTF-8") from None
    except json.JSONDecodeError as err:
        raise bad(f"header is not valid JSON ({err.msg})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("__metadata__ must map text to text")
    if not header:
        raise bad("declares no tensors")
    spans = []
    for name, info in header.items():
        _check_entry(name, info, bad)
        spans.append((*info["data_offsets"], name))
    spans.sort()
    at = 0
    for begin, end, name in spans:
        if begin != at:
            raise bad(f"tensor {name!r} starts at byte {begin} of the data, expected {at} (gap or overlap)")
        at = end
    if 8 + n + at != size:
        raise bad(f"the tensors cover {at:,} bytes of data, the file holds {size - 8 - n:,} (truncated or padded)")
    return header


def _check_entry(name: str, info, bad) -> None:
    if not name or not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise bad(f"tensor {name!r}: expected exactly dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in ITEM_BYTES:
        raise bad(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise bad(f"tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)):
        raise bad(f"tensor {name!r}: data_offsets must be two non-negative integers, got {offsets!r}")
    begin, end = offsets
    want = math.prod(shape) * ITEM_BYTES[dtype]
    if end - begin != want:
        raise bad(f"tensor {name!r}: {dtype} {shape} needs {want:,} bytes, data_offsets give {end - begin:,}")


def declared_tensors(files: Iterable[str | Path]) -> dict[str, dict]:
    """Every tensor the files declare (checked with `read_header`); a name declared twice is refused."""
    tensors: dict[str, dict] = {}
    for path in files:
        for name, info in read_header(path).items():
            if name in tensors:
                raise WeightsError(f"{Path(path).name}: tensor {name!r} is also in another weights file")
            tensors[name] = info
    return tensors


def check_fits_base(files: Iterable[str | Path], base_files: Iterable[str | Path]) -> None:
    """The checkpoint's tensors are the base model's: names it has, the same shapes, floating-point
    dtypes (the edited model may be stored in another float precision). Tensors the base ties
    (an output layer saved once) may be left out; nothing else may."""
    mine, base = declared_tensors(files), declared_tensors(base_files)
    embedding = next((n for n in base if n.endswith(("embed_tokens.weight", "wte.weight"))), None)
    for name, info in mine.items():
        if name not in base and name.endswith("lm_head.weight") and embedding is not None:
            base = {**base, name: base[embedding]}  # an output layer the base ties to its embedding
        if name not in base:
            raise WeightsError(f"tensor {name!r} is not a weight of the base model")
        if info["shape"] != base[name]["shape"]:
            raise WeightsError(f"tensor {name!r}: shape {info['shape']}, the base model's is {base[name]['shape']}")
        if info["dtype"] not in FLOAT_DTYPES:
            raise WeightsError(f"tensor {name!r}: dtype {info['dtype']} (weights must be F16, BF16, F32 or F64)")
    missing = sorted(set(base) - set(mine))
    if len(missing) > 1 or (missing and not missing[0].endswith("lm_head.weight")):
        raise WeightsError(f"{len(missing)} weight(s) of the base model missing, first {missing[0]!r}")
