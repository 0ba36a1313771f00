"""Dataset cards: the Hub YAML header (configs / data_files / dataset_info) and the prose body.

Each builder module holds its card body as a plain template with two placeholders,
`{{ counts_table }}` and `{{ notes }}`, filled here."""

from __future__ import annotations

import yaml

from editeval.data.common import Benchmark


def data_file(config: str, split: str) -> str:
    """Where a split's Parquet file lives inside `datasets/<name>/` (Hub layout)."""
    return f"data/{config}/{split}-00000-of-00001.parquet"


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "n>1M"


def header(bench: Benchmark, split_bytes: dict[tuple[str, str], int]) -> dict:
    """The YAML metadata. `split_bytes[(config, split)]` is the split's Arrow size in bytes."""
    total = sum(s.count for c in bench.configs for s in c.splits)
    configs, infos = [], []
    for c in bench.configs:
        entry = {
            "config_name": c.name,
            "data_files": [{"split": s.name, "path": f"data/{c.name}/{s.name}-*.parquet"} for s in c.splits],
        }
        if c.default:
            entry["default"] = True
        configs.append(entry)
        splits = [
            {"name": s.name, "num_bytes": split_bytes[(c.name, s.name)], "num_examples": s.count} for s in c.splits
        ]
        infos.append(
            {
                "config_name": c.name,
                "features": c.features._to_yaml_list(),
                "splits": splits,
                "dataset_size": sum(x["num_bytes"] for x in splits),
            }
        )
    return {
        "pretty_name": bench.pretty_name,
        "license": bench.license,
        "language": ["en"],
        "task_categories": ["question-answering", "text-generation"],
        "tags": ["knowledge-editing", "model-editing", *bench.tags],
        "size_categories": [_size_category(total)],
        "configs": configs,
        "dataset_info": infos,
    }


def counts_table(bench: Benchmark) -> str:
    lines = ["| config | split | rows | built from (raw file) |", "|---|---|---:|---|"]
    for c in bench.configs:
        for s in c.splits:
            lines.append(f"| `{c.name}`{' (default)' if c.default else ''} | `{s.name}` | {s.count:,} | `{s.source}` |")
    return "\n".join(lines)


def render(bench: Benchmark, split_bytes: dict[tuple[str, str], int], notes: list[str]) -> str:
    meta = yaml.safe_dump(header(bench, split_bytes), sort_keys=False, allow_unicode=True, width=1000)
    notes_md = ("## Build notes\n\n" + "\n".join(f"- {n}" for n in notes) + "\n") if notes else ""
    loading = _loading(bench)
    body = bench.card
    for key, value in (("counts_table", counts_table(bench) + "\n\n" + loading), ("notes", notes_md)):
        placeholder = "{{ " + key + " }}"
        if placeholder not in body:
            raise ValueError(f"card template of {bench.name} lacks {placeholder}")
        body = body.replace(placeholder, value)
    return f"---\n{meta}---\n\n# {bench.pretty_name}\n\n{body}"


def _loading(bench: Benchmark) -> str:
    c = next((c for c in bench.configs if c.default), bench.configs[0])
    cfg = "" if c.default or len(bench.configs) == 1 else f', "{c.name}"'
    return (
        "Load a split (from this folder, or from the Hub by repo id):\n\n```python\nimport datasets\n"
        f'ds = datasets.load_dataset("datasets/{bench.name}"{cfg}, split="{c.splits[0].name}")\n```\n\n'
        f"Built by `editeval datasets build {bench.name}` from the raw files listed in `SOURCES.md` "
        "(each checked by sha256 and record count); the build is deterministic."
    )
