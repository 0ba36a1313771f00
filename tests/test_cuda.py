"""CUDA (`pytest -m cuda`; skipped with a reason where `torch.cuda.is_available()` is false, so the
normal suite and CI skip them): every registered method on the tiny LLaMA gives the same per-edit
rows and weight updates on CUDA as on the CPU in float32, every method runs in bfloat16 on CUDA
through the `editeval edit` pipeline, and `--device-map auto` on one GPU places the whole model on
it and scores and edits as a plain CUDA load does.

Tolerance (float32, TF32 off: torch's default for matrix products, reported on failure): CUDA
orders its reductions differently from the CPU, so after an edit's optimisation (Adam steps over a
few prompts) weights agree to about 1e-5 of their size, not bit for bit. A weight update must
agree within `DELTA_RTOL` = 1e-3 of its norm: rounding passes, while a device path that differs
(TF32, another dtype, other prompts) moves it by 1e-2 or more. Row values (token accuracies,
steps of 1/len, and probabilities) must agree within `ROW_ATOL` = 1e-4: rounding, not one
flipped token.

Each device run gets its own cache folder: key statistics, MEMIT's value vectors and pre-edit
predictions are computed on the device under test, never read from the other run's files. The
learned methods (MEND, KE, SERAC) use an editor / classifier trained here on the CPU for a few
steps, as tests/test_method_contract.py does; IKE and SERAC need the sentence-encoder wheel and
skip without it (it does not travel to a lent GPU machine).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import yaml
from _zsre_train import train_requests
from test_method_contract import LEARNED, REQUESTS, TINY, _environment, environment  # noqa: F401 (fixtures)

from editeval.evaluation.evaluator import Evaluator
from editeval.evaluation.results import read_rows
from editeval.methods.base import available_methods, get_method, restore
from editeval.run.modes import seed_everything
from editeval.runtime.models import load

DEVICE = "cuda"  # compared with the CPU
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine"),
]
ROW_ATOL = 1e-4
DELTA_RTOL = 1e-3
NEEDS_ENCODER = {"ike", "serac"}


@pytest.fixture(scope="module")
def trained(tiny_llama_dir, tmp_path_factory):
    """method -> the folder of its editor / classifier, trained lazily on the CPU float32 tiny LLaMA."""
    folders = {}

    def get(name: str, hparams) -> str:
        if name not in folders:
            records = train_requests()
            module = importlib.import_module(f"editeval.methods.{name.replace('-', '_')}")
            folder = tmp_path_factory.mktemp(f"{name}-cuda")
            module.train(load(tiny_llama_dir, device="cpu"), records, hparams, "zsre", out_dir=folder, progress=False)
            folders[name] = str(folder)
        return folders[name]

    return get


def tiny_hparams(name: str, model, trained):
    """The method's preset for the tiny LLaMA with the contract test's tiny budgets."""
    method = get_method(name)
    if name in NEEDS_ENCODER:
        from editeval.methods.kit.sentence_encoder import ENCODER_PACKAGE

        if importlib.util.find_spec(ENCODER_PACKAGE) is None:
            pytest.skip(f"{name} needs the sentence-encoder wheel ({ENCODER_PACKAGE})")
    hparams = method.load_hparams(model).replace(reference_num_layers=None, **TINY[name])
    if name in LEARNED:
        hparams = hparams.replace(train_benchmark="zsre", **{LEARNED[name]: trained(name, hparams)})
    return hparams


def edit_rows(name: str, directory, device: str, hparams, cache: Path, monkeypatch):
    """Single mode as `editeval edit` runs it (seeded per edit, evaluated, undone), on a fresh load on
    `device` with its own cache: (per-edit rows, per-edit {parameter: weight update on the CPU})."""
    monkeypatch.setenv("EDITEVAL_CACHE", str(cache))
    loaded = load(directory, device=device, dtype="float32")
    evaluator = Evaluator(loaded, REQUESTS, progress=False, use_cache=False)
    method = get_method(name)
    rows, deltas = [], []
    for i, request in enumerate(REQUESTS):
        seed_everything(i)
        backup = method.edit(loaded.model, loaded.tokenizer, [request], hparams)
        try:
            rows += evaluator.evaluate(loaded.model, [i])
            deltas.append(
                {n: (loaded.model.get_parameter(n).detach() - old).float().cpu() for n, old in backup.items()}
            )
        finally:
            restore(loaded.model, backup)
    return rows, deltas


def row_differences(rows_a: list[dict], rows_b: list[dict], atol: float) -> list[str]:
    """Where two runs' per-edit rows differ by more than `atol` (NaN equals NaN: a metric that
    does not apply)."""
    assert len(rows_a) == len(rows_b)
    far = []
    for i, (a_row, b_row) in enumerate(zip(rows_a, rows_b)):
        assert list(a_row) == list(b_row), f"edit {i}: other columns"
        for column, a in a_row.items():
            b = b_row[column]
            if isinstance(a, str) or isinstance(b, str):
                same = a == b
            elif math.isnan(float(a)) or math.isnan(float(b)):
                same = math.isnan(float(a)) and math.isnan(float(b))
            else:
                same = abs(float(a) - float(b)) <= atol
            if not same:
                far.append(f"edit {i} {column}: {a} vs {b}")
    return far


def _tf32() -> str:
    return (
        f"matmul allow_tf32={torch.backends.cuda.matmul.allow_tf32}, precision={torch.get_float32_matmul_precision()}"
    )


@pytest.mark.parametrize("name", available_methods())
def test_rows_on_cuda_equal_rows_on_cpu(name, tiny_llama_dir, trained, tmp_path, monkeypatch):
    hparams = tiny_hparams(name, load(tiny_llama_dir, device="cpu").model, trained)
    cpu_rows, cpu_deltas = edit_rows(name, tiny_llama_dir, "cpu", hparams, tmp_path / "cpu", monkeypatch)
    dev_rows, dev_deltas = edit_rows(name, tiny_llama_dir, DEVICE, hparams, tmp_path / "device", monkeypatch)

    for i, (cpu, dev) in enumerate(zip(cpu_deltas, dev_deltas)):
        assert set(cpu) == set(dev), f"edit {i}: {name} changed other tensors on {DEVICE}"
        for param in cpu:
            scale = float(cpu[param].norm())
            diff = float((dev[param] - cpu[param]).norm())
            assert diff <= DELTA_RTOL * scale + 1e-7, (
                f"edit {i}: {name}'s update of {param} differs on {DEVICE} by {diff:.3g} "
                f"(‖ΔW‖ {scale:.3g}, {diff / max(scale, 1e-30):.2%}; {_tf32()})"
            )
    far = row_differences(cpu_rows, dev_rows, ROW_ATOL)
    assert not far, f"{name}: rows differ beyond {ROW_ATOL} ({_tf32()}):\n" + "\n".join(far)


@pytest.mark.parametrize("name", available_methods())
def test_every_method_runs_in_bfloat16_on_cuda(name, tiny_llama_dir, trained, tmp_path):
    """The whole `editeval edit` pipeline (single mode) on CUDA in bfloat16: a record on that
    device and dtype, every edit evaluated, finite reliability."""
    from editeval.run.config import EditConfig
    from editeval.run.editing import run_edits
    from editeval.runtime.settings import Runtime

    hparams = tiny_hparams(name, load(tiny_llama_dir, device="cpu").model, trained)
    hp_file = tmp_path / "hparams.yaml"
    hp_file.write_text(yaml.safe_dump(hparams.to_dict()))
    opts = EditConfig(method=name, model=str(tiny_llama_dir), hparams_path=str(hp_file), out=str(tmp_path / "r.json"))
    summary = run_edits(opts, Runtime(device=DEVICE, dtype="bfloat16", progress=False), requests=REQUESTS)

    meta = summary.record.meta
    assert summary.n_edited == len(REQUESTS), summary.skipped
    assert meta.device.startswith(DEVICE) and meta.dtype == "bfloat16"
    reliability = summary.record.metrics["reliability.teacher_forced"].mean
    assert reliability is not None and math.isfinite(reliability)


def _placed(loaded) -> set[str]:
    """The devices the model's weights and buffers are on (a map onto one device may set no
    `hf_device_map`: transformers then places the model whole)."""
    return {str(t.device) for t in [*loaded.model.parameters(), *loaded.model.buffers()]}


def test_device_map_auto_on_one_gpu_is_a_plain_load(tiny_llama_dir, tmp_path, monkeypatch):
    """`--device-map auto` with one GPU: every module on it, the same logits and fingerprint, and
    `editeval score` / `editeval edit` (ROME, key statistics included) give the rows a plain load gives."""
    from editeval.run.config import EditConfig
    from editeval.run.editing import run_edits
    from editeval.run.scoring import score_checkpoint
    from editeval.runtime.settings import Runtime

    plain = load(tiny_llama_dir, device=DEVICE)
    spread = load(tiny_llama_dir, device_map="auto", offload_folder=tmp_path / "offload")
    assert _placed(spread) == {str(plain.device)}
    assert spread.device == plain.device
    assert spread.fingerprint() == plain.fingerprint()
    ids = plain.tokenizer(REQUESTS[0]["prompt"], return_tensors="pt")["input_ids"].to(plain.device)
    with torch.no_grad():
        assert torch.equal(spread.model(ids).logits, plain.model(ids).logits)

    runtimes = {"plain": Runtime(device=DEVICE, progress=False), "auto": Runtime(device_map="auto", progress=False)}
    scored = {}
    for label, runtime in runtimes.items():
        monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path / f"cache-{label}"))
        _, rows, _ = score_checkpoint(
            tiny_llama_dir,
            base=tiny_llama_dir,
            requests=REQUESTS,
            benchmark="toy",
            piqa_items=0,
            out=tmp_path / f"score-{label}.json",
            runtime=runtime,
        )
        scored[label] = rows
    assert not row_differences(scored["plain"], scored["auto"], 0.0)

    hp_file = tmp_path / "rome.yaml"
    rome = get_method("rome")
    hp_file.write_text(
        yaml.safe_dump(rome.load_hparams(plain.model).replace(reference_num_layers=None, **TINY["rome"]).to_dict())
    )
    edited = {}
    for label, runtime in runtimes.items():
        monkeypatch.setenv("EDITEVAL_CACHE", str(tmp_path / f"cache-{label}"))
        opts = EditConfig(
            method="rome",
            model=str(tiny_llama_dir),
            hparams_path=str(hp_file),
            out=str(tmp_path / f"edit-{label}.json"),
        )
        summary = run_edits(opts, runtime, requests=REQUESTS)
        assert summary.n_edited == len(REQUESTS)
        edited[label] = read_rows(summary.out, timings=False).to_dict("records")
    assert not row_differences(edited["plain"], edited["auto"], 0.0)
