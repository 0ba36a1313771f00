"""`editeval datasets ...`: build, list, show and publish the benchmark datasets."""

from __future__ import annotations

from pathlib import Path

import typer

from editeval.commands.options import DatasetsDir, Progress, datasets_folder
from editeval.errors import EditevalError
from editeval.runtime.hub import authenticated_api, check_repo_id, upload_errors

app = typer.Typer(help="The benchmarks as Hugging Face datasets: build, list, show, publish.", no_args_is_help=True)

RAW_DIR = typer.Option(None, "--raw-dir", help="Raw data folder (default: $EDITEVAL_RAW_DATA or ../shared/data/raw).")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _table(rows: list[list[str]], right: set[int] = frozenset()) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


@app.command()
def build(
    names: list[str] | None = typer.Argument(None, help="Benchmarks to build (default: all)."),
    raw_dir: Path | None = RAW_DIR,
    out_dir: Path | None = typer.Option(None, "--out-dir", help="Where to write <name>/ (default: ./datasets)."),
    sources: Path | None = typer.Option(
        None, "--sources", help="Check raw files against this SOURCES.md instead of the pinned table."
    ),
    progress: Progress = True,
) -> None:
    """Build datasets/<name>/ (card + Parquet) from the raw files, checking sha256 and record counts."""
    from editeval.data.build import build_benchmarks
    from editeval.data.sources_md import parse_sources_md
    from editeval.runtime.paths import raw_data_dir

    table = parse_sources_md(sources) if sources else None
    reports = build_benchmarks(
        names, raw_dir=raw_data_dir(raw_dir), out_dir=datasets_folder(out_dir), sources=table, progress=progress
    )
    rows = [["benchmark", "config", "split", "rows"]]
    for r in reports:
        rows += [[r.name, c, s, f"{n:,}"] for (c, s), n in r.rows.items()]
    typer.echo(_table(rows, right={3}))
    typer.echo("")
    for r in reports:
        typer.echo(f"built {r.name}: {sum(r.rows.values()):,} rows, {_mb(r.bytes)}, {r.seconds:.2f} s -> {r.path}")


@app.command("list")
def list_(datasets_dir: DatasetsDir = None) -> None:
    """Every benchmark, config and split with its row count, and whether it is built."""
    import pyarrow.parquet as pq

    from editeval.data.card import data_file
    from editeval.data.registry import BENCHMARKS

    root = datasets_folder(datasets_dir)
    rows = [["benchmark", "config", "split", "rows", "built"]]
    for bench in BENCHMARKS.values():
        for config in bench.configs:
            for split in config.splits:
                path = root / bench.name / data_file(config.name, split.name)
                built = f"{pq.read_metadata(path).num_rows:,}" if path.is_file() else "no"
                name = f"{config.name} (default)" if config.default and config.name != "default" else config.name
                rows.append([bench.name, name, split.name, f"{split.count:,}", built])
    typer.echo(_table(rows, right={3, 4}))
    typer.echo(f"\n(built rows read from {root}; build with `editeval datasets build [NAME ...]`)")


@app.command()
def show(
    name: str = typer.Argument(..., help="Benchmark name, e.g. zsre."),
    config: str | None = typer.Option(None, "--config", "-c", help="Config (default: the benchmark's default)."),
    split: str | None = typer.Option(None, "--split", "-s", help="Split (default: the config's first)."),
    n: int = typer.Option(3, "-n", help="How many records to print."),
    datasets_dir: DatasetsDir = None,
) -> None:
    """Print the first N records of a built split as JSON."""
    import json

    from editeval.data import load_benchmark
    from editeval.data.registry import get

    bench = get(name)
    spec = bench.config(config)
    names = [s.name for s in spec.splits]
    if split is None:
        split = names[0]
    elif split not in names:
        raise EditevalError(
            f"benchmark '{name}' config '{spec.name}' has no split '{split}': choose from {', '.join(names)}"
        )
    ds = load_benchmark(name, split, spec.name, root=datasets_folder(datasets_dir))
    typer.echo(f"# {name} / {spec.name} / {split}: {len(ds):,} rows; showing {min(n, len(ds))}")
    for record in ds.select(range(min(max(n, 0), len(ds)))):
        typer.echo(json.dumps(record, ensure_ascii=False, indent=1))


@app.command()
def publish(
    name: str = typer.Argument(..., help="Benchmark name, e.g. zsre."),
    repo_id: str = typer.Option(..., "--repo-id", help="Target dataset repo on the Hub, ORG/NAME."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be uploaded, with sizes; upload nothing."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private."),
    datasets_dir: DatasetsDir = None,
) -> None:
    """Upload datasets/<name>/ (card + Parquet) as a Hugging Face dataset repo."""
    from editeval.data.build import built_files
    from editeval.data.card import data_file
    from editeval.data.registry import get

    bench = get(name)
    check_repo_id(repo_id)
    folder = datasets_folder(datasets_dir) / name
    expected = ["README.md"] + [data_file(c.name, s.name) for c in bench.configs for s in c.splits]
    missing = [p for p in expected if not (folder / p).is_file()]
    if missing:
        raise EditevalError(
            f"{folder} is not fully built (missing {missing[0]}): run `editeval datasets build {name}` first"
        )
    files = built_files(folder)
    if dry_run:
        rows = [["file", "bytes"]] + [[str(p.relative_to(folder)), f"{p.stat().st_size:,}"] for p in files]
        total = sum(p.stat().st_size for p in files)
        typer.echo(f"dry run: would upload {folder} to https://huggingface.co/datasets/{repo_id}")
        typer.echo(_table(rows, right={1}))
        typer.echo(f"total: {len(files)} files, {total:,} bytes ({_mb(total)})")
        return

    api = authenticated_api()
    with upload_errors(f"{folder} to {repo_id}"):
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="dataset",
            allow_patterns=["README.md", "data/**"],
            commit_message=f"editeval datasets publish {name}",
        )
    typer.echo(f"published {name}: {len(files)} files -> {getattr(commit, 'commit_url', repo_id)}")
