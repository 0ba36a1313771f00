"""The raw benchmark files: what SOURCES.md says about them, and a checked loader.

`SOURCES` is the pinned table (path -> format, size, sha256, record count) derived from
`../shared/data/raw/SOURCES.md`; `sources_md.parse_sources_md` reads the same facts out of any SOURCES.md
(a test keeps the two equal; `editeval datasets build --sources FILE` checks against another
SOURCES.md, e.g. for a new raw-data release). `RawData` opens files for the builders: each
file must exist, have the listed sha256, parse in the listed format and hold the listed number
of records, or an `EditevalError` names the file and what is wrong. `check_records` and `field`
validate the records themselves (required keys and their types), independently of the sha check.
A file SOURCES.md lists only by its git blob id (a full set that could not be collected) is checked
by that id instead (`git_blob_id`, what `git hash-object FILE` prints).

Regenerate the table after SOURCES.md changes: `python -m editeval.data.sources SOURCES.md`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editeval.errors import EditevalError


@dataclass(frozen=True)
class FileSpec:
    """One raw file as SOURCES.md describes it."""

    path: str  # relative to the raw data folder, with "/"
    # "json_list" | "json_dict" | "jsonl" | "lines"; "json_object" (records = its keys);
    # "pandas_json" (DataFrame.to_json: column -> {row -> value}; records = rows); "text" (a prompt
    # file: the builder counts its records, e.g. demonstrations)
    format: str
    size: int | None  # None where SOURCES.md does not state it
    sha256: str  # "" for a file known only by its git blob id
    # a count, or (key, count) pairs for a JSON dict; None where SOURCES.md states no count (the blob
    # id pins the content anyway)
    records: int | tuple[tuple[str, int], ...] | None
    blob: str = ""  # the git blob id at the origin, checked when there is no sha256


_FORMATS = {
    "JSON list": "json_list",
    "JSON dict": "json_dict",
    "JSON Lines": "jsonl",
    "text, one label per line": "lines",
    "pandas `DataFrame.to_json()`": "pandas_json",
}
# the format of a file listed in a table of files (a `dir/` section), by its extension
EXTENSION_FORMATS = {".txt": "text", ".json": "json_object"}


def _spec(path, fmt, size, sha256, records) -> FileSpec:
    if isinstance(records, dict):
        records = tuple(records.items())
    return FileSpec(path, fmt, size, sha256, records)


# Derived from ../shared/data/raw/SOURCES.md (kept equal to it by tests/test_datasets.py).
SOURCES: dict[str, FileSpec] = {
    s.path: s
    for s in [
        _spec(
            "counterfact/counterfact-edit.json",
            "json_list",
            3850773,
            "20c225e6299b3c5b2c569bd9103aa212806e0d1e6e0c307de5c379773979b967",
            10000,
        ),
        _spec(
            "counterfact/counterfact-train.json",
            "json_list",
            3849872,
            "bb40e12c7b740d6859e521674cf438f063c7c3e444bc1b449e74cdd0900772d0",
            10000,
        ),
        _spec(
            "counterfact/counterfact-val.json",
            "json_list",
            741112,
            "4feb68cc1f85dcf3b285252a28f2b2193ff69971947619356236953be60ecd1f",
            1919,
        ),
        _spec(
            "knowedit/Convsent/blender_test.json",
            "json_list",
            1327531,
            "bfdab01a2655f5b136e593bc0d1d440cea963a1883510da7b31178855db00804",
            800,
        ),
        _spec(
            "knowedit/Convsent/blender_val.json",
            "json_list",
            1325161,
            "4c21b2d802ac70877c9356439f676ead4bd9eb767c2f34d582df4b5b200e3882",
            799,
        ),
        _spec(
            "knowedit/Sanitation/trivia_qa_test.json",
            "json_dict",
            95119,
            "515f5e08e8ebc1a6274938a67dee34489d17f6177f2726ecb937064f1e9a79f7",
            {"success": 80, "locality": 453},
        ),
        _spec(
            "knowedit/Sanitation/trivia_qa_train.json",
            "json_dict",
            87025,
            "30ddde2c3410f93cf5a7f34fe6fcb0fd9f1d4fdfde3974c563c76c763ae109d3",
            {"K_F": 80, "K_R": 453},
        ),
        _spec(
            "knowedit/WikiBio/wikibio-test-all.json",
            "json_list",
            309858,
            "00933f69b47d8281d01f1f4b84f3f266b7482a65a7d74022e660a8a9ca2264a4",
            306,
        ),
        _spec(
            "knowedit/WikiBio/wikibio-train-all.json",
            "json_list",
            454217,
            "6ee88049c1c6c00d6f81d2d942350b6ec78b45917d2ec8a3eec3eafa89c2e209",
            464,
        ),
        _spec(
            "knowedit/ZsRE/ZsRE-test-all.json",
            "json_list",
            1523064,
            "d70ff1f69ddcac101bbe9c6f1d6ee3918bdac96f145d937e90fbbb02fcf85fab",
            1304,
        ),
        _spec(
            "knowedit/wiki_counterfact/test_cf-generate-10.jsonl",
            "jsonl",
            3469788,
            "ab0dd49dd0efc3ca12beb795b3b4af9e71536aefa19f00edeb90dca9e5bcdac7",
            885,
        ),
        _spec(
            "knowedit/wiki_counterfact/train_cf.json",
            "json_list",
            1388264,
            "acdc01922afab1d4122249a2c22ad8c1e0e86506dd7a28eec698f22d175ebf9d",
            1428,
        ),
        _spec(
            "knowedit/wiki_recent/recent_train.json",
            "json_list",
            1837416,
            "5856107412ddeeae2ceea2a15ebd125fd7c86ac8d62b933b095514304a77c73a",
            570,
        ),
        _spec(
            "locality/commonsense_task/piqa_valid-labels.lst",
            "lines",
            3676,
            "b4192dc3a2a0363d9d60ccf79800cbbe2f32ebb17726efdde6970e0b8131bceb",
            1838,
        ),
        _spec(
            "locality/commonsense_task/piqa_valid.jsonl",
            "jsonl",
            495929,
            "93503cc97c679e459b065c3d13e848282e44b2a25213985bed3e5d458abef72d",
            1838,
        ),
        _spec(
            "locality/counterfact_distracting_neighbor.json",
            "json_list",
            3050394,
            "b3a6ed985620f3db707bf655e3d016a136635999f318e839be8f3b5795a016aa",
            804,
        ),
        _spec(
            "locality/counterfact_other_attribution.json",
            "json_list",
            3050394,
            "b3a6ed985620f3db707bf655e3d016a136635999f318e839be8f3b5795a016aa",
            804,
        ),
        _spec(
            "mquake/MQuAKE-hard.json",
            "json_list",
            1943567,
            "fc78dc7bec4625d3ce6e2923acae7f1920691b0b23e663182bf799f2856f2a11",
            429,
        ),
        _spec(
            "mquake/prompts/MeLLo-prompt.txt",
            "text",
            3536,
            "022f97a82c8d889a7fa2e945d636f58a124de57160866e7958170aba8b17e937",
            4,
        ),
        _spec(
            "mquake/prompts/multihop-cot-prompts.txt",
            "text",
            1160,
            "f74ad1cca21841d83a63b868d2e694c164aaaf8636a659e193fc99f41005cafa",
            5,
        ),
        _spec(
            "mquake/prompts/multihop-prompts.txt",
            "text",
            1135,
            "1d6f48038599dec1ea63080c07f946f47f57c3227a3428b0efdca88cf566de17",
            16,
        ),
        _spec(
            "mquake/prompts/rel-prompts.json",
            "json_object",
            20038,
            "5186c6bd07a60d3f561b17200c1e86c5f21215bbc3883d9a9c99d57da7871910",
            37,
        ),
        _spec(
            "mquake/prompts/templates/cloze_templates.json",
            "json_object",
            1927,
            "2b06da99237d67e40844e727efb24795d8990d99a00868d95c4276ff7e1c7d84",
            44,
        ),
        _spec(
            "mquake/prompts/templates/question_templates.json",
            "json_object",
            2058,
            "d3a5421ce3cbd6d51e77e3b854d7fd13b98f161c0d54daa597456d804a170d96",
            44,
        ),
        _spec(
            "portability/counterfact_portability_gpt4.json",
            "json_list",
            2725930,
            "fac215b31d9481a33e055ac85145d1d711217dfd20ad3c45e61fc2d6b540c5ed",
            1031,
        ),
        _spec(
            "portability/counterfact_subject_replace.json",
            "json_list",
            517115,
            "36a81b8dd513680743347d94acd00fd5f3e25baafbe6ebe951e16ff0f36f9b9d",
            213,
        ),
        _spec(
            "portability/zsre_inverse_relation.json",
            "json_list",
            193283,
            "34d07e57e0b8273f9418eb1925c38ba0294d94b986f5b291df41d968b0fe06e3",
            385,
        ),
        _spec(
            "portability/zsre_mend_eval_portability_gpt4.json",
            "json_list",
            842861,
            "0cf155da229b2eccae19fcfe5f7a09523363d357f5f15508d1521f495ad5ecd9",
            1037,
        ),
        _spec(
            "portability/zsre_subject_replace.json",
            "json_list",
            152608,
            "bcb6d394b390329828898799220916ebc0ae95617c8c94fc60bf527692e41740",
            293,
        ),
        _spec(
            "qaedit/QAEdit_inter_1k.json",
            "json_list",
            1117792,
            "640e1d279759263fdaae543a385680d21a55aa3597ca8b597ffd7937fef07c42",
            1000,
        ),
        _spec(
            "rippleedits/gpt-j-popular.json",
            "json_list",
            2829223,
            "47770e99b9f52e5773c61406ea9c81b9d0e1b147a2423a95fd0f1bd8ddab664c",
            710,
        ),
        _spec(
            "rippleedits/stats/popular_stats.json",
            "pandas_json",
            154957,
            "03e123d50d7a1acc5b581028edcc77a364b630b8cc87942bdbf4af4c65a10cd1",
            885,
        ),
        _spec(
            "rippleedits/stats/random_stats.json",
            "pandas_json",
            339723,
            "c59b3456ae228bce3fd02d35ce846f7708bf4f7c95091a5968aaef713ca81c6f",
            1922,
        ),
        _spec(
            "rippleedits/stats/recent_stats.json",
            "pandas_json",
            347795,
            "45a6ee11d87c2f79b8876ae1aeda75ab30482675ca4c1bd2058b449fd958f222",
            1948,
        ),
        _spec(
            "rome_aux/known_1000.json",
            "json_list",
            343229,
            "61daca55318bb5260c1e62e133debef9102c7b278bbc7b19dd2ac655543f333a",
            1209,
        ),
        _spec(
            "zsre/zsre_mend_train-1k.json",
            "json_list",
            537970,
            "e62596101d8ed551889c26c0d2a5277f92eaef3b14416d8eaee39b04a244ab60",
            1000,
        ),
    ]
}


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_blob_id(path: str | os.PathLike) -> str:
    """The file's git blob id (`git hash-object FILE`): sha1 of "blob <size>\\0" + the bytes."""
    digest = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RawData:
    """Opens raw files for the builders, checking each against its FileSpec once."""

    def __init__(self, root: str | os.PathLike, sources: Mapping[str, FileSpec] | None = None):
        self.root = Path(root)
        self.sources = dict(SOURCES if sources is None else sources)  # a copy: `add` must not touch SOURCES
        self._cache: dict[str, Any] = {}
        self._checked: dict[str, Path] = {}

    def add(self, spec: FileSpec) -> None:
        """Describe one more file (a full set found in the raw folder, known by its git blob id)."""
        self.sources[spec.path] = spec

    def spec(self, relpath: str) -> FileSpec:
        try:
            return self.sources[relpath]
        except KeyError:
            raise EditevalError(f"raw file {relpath} has no entry in SOURCES.md, so it cannot be checked") from None

    def check(self, relpath: str) -> Path:
        """The file's path after the existence and sha256 (or git blob id) checks."""
        if relpath in self._checked:
            return self._checked[relpath]
        spec = self.spec(relpath)
        path = self.root / relpath
        if not path.is_file():
            raise EditevalError(
                f"raw file missing: {path} (give the raw data folder with --raw-dir or $EDITEVAL_RAW_DATA)"
            )
        if spec.sha256:
            digest = sha256_of(path)
            if digest != spec.sha256:
                raise EditevalError(
                    f"raw file {path}: sha256 {digest} does not match SOURCES.md ({spec.sha256}); "
                    f"the file is not the published one"
                )
        else:
            blob = git_blob_id(path)
            if blob != spec.blob:
                raise EditevalError(
                    f"raw file {path}: git blob id {blob} does not match the published file's ({spec.blob}); "
                    f"the file is not the published one"
                )
        self._checked[relpath] = path
        return path

    def load(self, relpath: str):
        """Parsed records: a list (json_list / jsonl / lines; pandas_json as row dicts), a dict of
        lists (json_dict), a JSON object (json_object) or the text itself (text)."""
        if relpath in self._cache:
            return self._cache[relpath]
        spec = self.spec(relpath)
        path = self.check(relpath)
        data = _parse(path, spec.format)
        if spec.format == "text" or spec.records is None:
            pass  # a prompt file's records are the builder's to count; no count stated: the blob id pins it
        elif spec.format == "json_object":
            if not isinstance(data, dict):
                raise EditevalError(f"raw file {path}: expected a JSON object, got {type(data).__name__}")
            if len(data) != spec.records:
                raise EditevalError(f"raw file {path}: {len(data)} keys, SOURCES.md says {spec.records}")
        elif isinstance(spec.records, tuple):
            if not isinstance(data, dict):
                raise EditevalError(
                    f"raw file {path}: expected a JSON object of record lists, got {type(data).__name__}"
                )
            found = {k: len(v) if isinstance(v, list) else -1 for k, v in data.items()}
            if found != dict(spec.records):
                raise EditevalError(
                    f"raw file {path}: record counts {found} do not match SOURCES.md {dict(spec.records)}"
                )
        else:
            if not isinstance(data, list):
                raise EditevalError(f"raw file {path}: expected a JSON list of records, got {type(data).__name__}")
            if len(data) != spec.records:
                raise EditevalError(f"raw file {path}: {len(data)} records, SOURCES.md says {spec.records}")
        self._cache[relpath] = data
        return data


def _parse(path: Path, fmt: str):
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise EditevalError(f"raw file {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if fmt == "text":
        return text
    if fmt == "lines":
        return text.splitlines()
    if fmt == "jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise EditevalError(f"raw file {path} line {n}: invalid JSON ({err.msg})") from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise EditevalError(
            f"raw file {path}: invalid JSON at line {err.lineno} column {err.colno} ({err.msg})"
        ) from None
    return _pandas_rows(data, path) if fmt == "pandas_json" else data


def _pandas_rows(data: Any, path: Path) -> list[dict]:
    """`DataFrame.to_json()` ({column: {row index: value}}) as a list of row dicts, in row order."""
    if not isinstance(data, dict) or not all(isinstance(col, dict) for col in data.values()):
        raise EditevalError(f"raw file {path}: expected pandas JSON (an object of column objects)")
    index = list(next(iter(data.values()), {}))
    for name, col in data.items():
        if list(col) != index:
            raise EditevalError(f"raw file {path}: column '{name}' has other row indices than the first column")
    if not all(i.isdigit() for i in index):
        raise EditevalError(f"raw file {path}: row indices must be integers")
    order = sorted(index, key=int)
    return [{name: col[i] for name, col in data.items()} for i in order]


# --------------------------------------------------------------------------- record checks

_TYPE_NAMES = {str: "a string", list: "a list", dict: "an object", int: "an integer"}


def field(record: Any, key: str, where: str, index: int, kind: type | tuple[type, ...] = str, nonempty: bool = False):
    """record[key] (dotted for nested objects), checked; else an error naming file, record and key."""
    value = record
    for part in key.split("."):
        if not isinstance(value, dict):
            raise EditevalError(
                f"{where} record {index}: '{key}' is not reachable ('{part}' sits in {type(value).__name__}, not an object)"
            )
        if part not in value:
            raise EditevalError(f"{where} record {index}: missing required key '{key}'")
        value = value[part]
    if not isinstance(value, kind) or isinstance(value, bool):
        want = (
            _TYPE_NAMES.get(kind, getattr(kind, "__name__", str(kind)))
            if isinstance(kind, type)
            else " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kind)
        )
        raise EditevalError(f"{where} record {index}: key '{key}' must be {want}, got {type(value).__name__}")
    if nonempty and not value:
        raise EditevalError(f"{where} record {index}: key '{key}' is empty")
    return value


def check_records(records: Iterable[Any], required: Mapping[str, type | tuple[type, ...]], where: str) -> None:
    """Every record is an object holding each required (dotted) key with the given type."""
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise EditevalError(f"{where} record {index}: expected an object, got {type(record).__name__}")
        for key, kind in required.items():
            field(record, key, where, index, kind)


if __name__ == "__main__":  # print the SOURCES entries for a SOURCES.md
    from editeval.data.sources_md import main

    main()
