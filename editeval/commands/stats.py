"""`editeval stats ...`: build, list, publish and pull the ROME/MEMIT key statistics (E[k kᵀ])."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from editeval.commands.options import Device, Dtype, Progress, resolve_runtime
from editeval.errors import EditevalError
from editeval.runtime.hub import authenticated_api, check_repo_id, upload_errors

app = typer.Typer(
    help="Key statistics for ROME / MEMIT (E[k k^T] over Wikipedia): build, list, publish, pull.", no_args_is_help=True
)

MODEL = typer.Option("smollm2-135m", "--model", help="Registered model name or a local HF model folder.")
HUB_FOLDER = "stats"  # where the files go in the Hub dataset repo


def _table(rows: list[list[str]], right: set[int] = frozenset()) -> str:
    from editeval.commands.datasets import _table as table

    return table(rows, right)


def parse_layers(text: str) -> list[int]:
    """'7', '5,6,7' or '3-8' (ranges inclusive, combinable: '2,4-6')."""
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        m = re.fullmatch(r"(-?\d+)(?:-(\d+))?", part)
        if not m:
            raise EditevalError(f"--layers {text}: give layer indices like 7, 5,6,7 or 3-8")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise EditevalError(f"--layers {text}: empty range {part}")
        out += range(lo, hi + 1)
    return out


def _load_model(model: str, device: str = "cpu", dtype: str = "float32"):
    from editeval.runtime.models import load

    return load(model, device=device, dtype=dtype)


@app.command()
def build(
    model: str = MODEL,
    layers: str = typer.Option(..., "--layers", help="Layers: 7, 5,6,7 or 3-8 (all in one pass)."),
    tokens: int = typer.Option(100_000, "--tokens", min=1, help="Token positions to average over."),
    max_len: int = typer.Option(1024, "--max-len", min=1, help="Window length (tokens) the text is cut into."),
    batch_tokens: int = typer.Option(2048, "--batch-tokens", min=1, help="Tokens per forward pass."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Wikipedia JSONL (default: the raw data's)."),
    device: Device = "auto",
    dtype: Dtype = "float32",
    force: bool = typer.Option(False, "--force", help="Recompute and rewrite layers already cached."),
    progress: Progress = True,
) -> None:
    """Compute and cache E[k kᵀ] at LAYERS' MLP output projection (sharded under accelerate launch / torchrun)."""
    import time

    from editeval.methods.kit import key_stats as S
    from editeval.methods.kit import key_stats_files as F
    from editeval.runtime import distributed

    runtime = resolve_runtime(device=device, dtype=dtype, progress=progress)
    wanted = parse_layers(layers)
    group = distributed.setup(runtime.device)
    lm = _load_model(model, distributed.process_device(group, runtime.device), runtime.dtype)
    paths = S.cache_paths(lm.model, wanted, tokens=tokens, max_len=max_len, corpus=corpus)
    cached = set()
    for layer, path in paths.items():
        try:
            if path.exists() and not force and F.check_file(path):
                cached.add(layer)
        except EditevalError:
            pass  # recomputed (second_moments says why)
    start = time.perf_counter()
    S.second_moments(
        lm.model,
        lm.tokenizer,
        wanted,
        tokens=tokens,
        max_len=max_len,
        batch_tokens=batch_tokens,
        corpus=corpus,
        progress=runtime.progress,
        shard=True,
        refresh=force,
    )
    seconds = time.perf_counter() - start
    if group is not None and not group.is_main:
        return
    processes = 1 if group is None else group.world
    for layer, path in paths.items():
        how = "cached" if layer in cached else f"built ({processes} process{'es' if processes > 1 else ''})"
        typer.echo(f"layer {layer}: {how}, {tokens:,} tokens -> {path}")
    typer.echo(f"{len(paths)} layer(s) of {model} in {seconds:.1f} s")


def _row(path: Path, meta: dict | None) -> list[str]:
    size = f"{path.stat().st_size / 1e6:.1f}"
    if meta is None:
        return [path.name[:40], "unreadable", "", "", "", "", "", "", size]
    return [
        meta.get("model_fingerprint", "?"),
        meta.get("model_name", ""),
        meta.get("layer", "?"),
        meta.get("module", "?"),
        f"{int(meta['tokens']):,}" if meta.get("tokens", "").isdigit() else "?",
        meta.get("max_len", "?"),
        meta.get("corpus_sha256", "?")[:12],
        meta.get("editeval_version", "-"),
        size,
    ]


def _selected(model: str | None):
    """The cached files (with metadata), of one model's weights if `model` is given."""
    from editeval.methods.kit import key_stats_files as F

    files = F.cached_files()
    if model is not None:
        fingerprint = _load_model(model).fingerprint()
        files = [(p, m) for p, m in files if m and m.get("model_fingerprint") == fingerprint]
    return files


@app.command("list")
def list_(
    model: str | None = typer.Option(None, "--model", help="Only the statistics of this model's weights."),
) -> None:
    """The cached statistics files with their metadata."""
    from editeval.runtime.paths import cache_dir

    folder = cache_dir() / "stats"
    files = _selected(model)
    if not files:
        typer.echo(
            f"no key statistics cached in {folder}"
            + (f" for {model}" if model else "")
            + " (build them with `editeval stats build --layers N`)"
        )
        return
    rows = [["model", "name", "layer", "module", "tokens", "max_len", "corpus", "version", "MB"]]
    rows += [_row(p, m) for p, m in files]
    typer.echo(_table(rows, right={2, 4, 5, 8}))
    typer.echo(f"\n{len(files)} file(s) in {folder}")


@app.command()
def publish(
    repo_id: str = typer.Option(..., "--repo-id", help="Target dataset repo on the Hub, ORG/NAME."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be uploaded, with sizes; upload nothing."),
    model: str | None = typer.Option(None, "--model", help="Only the statistics of this model's weights."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private."),
) -> None:
    """Upload the cached statistics files to a Hugging Face dataset repo (under stats/)."""
    from editeval.methods.kit import key_stats_files as F
    from editeval.runtime.paths import cache_dir

    check_repo_id(repo_id)
    files = []
    for path, _meta in _selected(model):
        try:
            files.append((path, F.check_file(path)[0]))
        except EditevalError as err:
            typer.echo(f"skipped {path.name}: {err}")
    if not files:
        raise EditevalError(
            f"no valid key statistics in {cache_dir() / 'stats'} to publish"
            + (f" for {model}" if model else "")
            + ": run `editeval stats build` first"
        )
    total = sum(p.stat().st_size for p, _ in files)
    if dry_run:
        typer.echo(f"dry run: would upload {len(files)} files to https://huggingface.co/datasets/{repo_id}")
        rows = [["file", "layer", "tokens", "bytes"]]
        rows += [
            [f"{HUB_FOLDER}/{p.name}", m["layer"], f"{int(m['tokens']):,}", f"{p.stat().st_size:,}"] for p, m in files
        ]
        typer.echo(_table(rows, right={1, 2, 3}))
        typer.echo(f"total: {len(files)} files, {total:,} bytes ({total / 1e6:.2f} MB)")
        return

    import huggingface_hub

    api = authenticated_api()
    operations = [
        huggingface_hub.CommitOperationAdd(path_in_repo=f"{HUB_FOLDER}/{p.name}", path_or_fileobj=str(p))
        for p, _ in files
    ]
    with upload_errors(f"{len(files)} statistics files to {repo_id}"):
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.create_commit(
            repo_id,
            operations,
            repo_type="dataset",
            commit_message=f"editeval stats publish: {len(files)} key statistics files",
        )
    typer.echo(f"published {len(files)} files ({total / 1e6:.2f} MB) -> {getattr(commit, 'commit_url', repo_id)}")


@app.command()
def pull(
    repo_id: str | None = typer.Option(None, "--repo-id", help="Hub dataset repo to download from, ORG/NAME."),
    from_dir: Path | None = typer.Option(None, "--from-dir", help="Take the files from this local folder instead."),
    model: str = MODEL,
    revision: str | None = typer.Option(None, "--revision", help="Branch, tag or commit of the repo."),
) -> None:
    """Download statistics into the cache: only files of MODEL's weights (metadata checked), others skipped."""
    from editeval.methods.kit import key_stats_files as F

    if (repo_id is None) == (from_dir is None):
        raise EditevalError("give exactly one of --repo-id ORG/NAME or --from-dir FOLDER")
    lm = _load_model(model)
    fingerprint = F.model_fingerprint(lm.model)
    if from_dir is not None:
        if not from_dir.is_dir():
            raise EditevalError(f"--from-dir {from_dir}: not a folder")
        source, folder = str(from_dir), from_dir
    else:
        check_repo_id(repo_id)
        import huggingface_hub

        source = repo_id
        try:  # only this model's files (their names start with its fingerprint); contents checked below
            folder = Path(
                huggingface_hub.snapshot_download(
                    repo_id=repo_id,
                    repo_type="dataset",
                    revision=revision,
                    allow_patterns=[f"*{fingerprint}__*.safetensors"],
                )
            )
        except Exception as err:  # network, offline mode, missing repo: one line
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise EditevalError(f"download of statistics from {repo_id} failed: {first}") from None
    pulled = present = skipped = 0
    for path in sorted(folder.rglob("*.safetensors")):
        try:
            copied, dest = F.import_file(path, lm.model)
        except EditevalError as err:
            skipped += 1
            typer.echo(f"skipped {path.name}: {str(err).replace(str(path) + ': ', '')}")
            continue
        pulled += copied
        present += not copied
        typer.echo(f"{'pulled' if copied else 'already cached'} {dest.name}")
    if pulled + present == 0:
        raise EditevalError(
            f"no key statistics for {model} (weights {fingerprint}) in {source}"
            + (f": {skipped} file(s) skipped" if skipped else "")
        )
    typer.echo(f"{pulled} pulled, {present} already cached, {skipped} skipped")
