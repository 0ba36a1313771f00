"""The one registry type: lazy built-ins, one-line errors on unknown names, and third-party entries
through entry points: a temporary package (a toy method and a toy benchmark, declared in an
`entry_points.txt` of a `*.dist-info` folder on PYTHONPATH) used from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from editeval.data.schema import EDIT_REQUEST_FEATURES, empty_request
from editeval.errors import EditevalError
from editeval.evaluation.results import read_record, read_rows
from editeval.runtime.registry import Registry

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds for one `python -m editeval` (imports torch; two busy cores)

# The toy method: adds a constant to one weight (the MLP output projection of one layer), backed up.
TOY_METHOD = '''
from dataclasses import dataclass

import torch

from editeval.methods.base import Backup, HParams, backup_parameters, register_method
from editeval.runtime.architectures import mlp_out_weight


@dataclass
class ToyHParams(HParams):
    layer: int = 0
    delta: float = 0.01


@register_method("toy", hparams=ToyHParams, batch=True)
def apply_toy(model, tokenizer, requests, hparams: ToyHParams) -> Backup:
    name, weight = mlp_out_weight(model, hparams.layer)
    backup = backup_parameters(model, [name])
    with torch.no_grad():
        weight.add_(hparams.delta * len(requests))
    return backup
'''

TOY_BENCHMARK = '''
from editeval.data.common import Benchmark, ConfigSpec, SplitSpec
from editeval.data.schema import EDIT_REQUEST_FEATURES

BENCHMARK = Benchmark(
    name="toybench", pretty_name="Toy benchmark", license="mit",
    configs=(ConfigSpec("default", (SplitSpec("edit", 2, "toy/edit.json"),), EDIT_REQUEST_FEATURES,
                        "two toy edits", default=True),),
    raw_files=("toy/edit.json",), build=lambda ctx: {}, card="{{ counts_table }}",
)
'''


def _plugin(root: Path, entry_points: str, modules: dict[str, str]) -> Path:
    """An installed-looking package under `root`: its modules and a dist-info folder with METADATA and
    `entry_points.txt` (what pip writes for a pyproject's [project.entry-points] table)."""
    for name, text in modules.items():
        path = root / "toy_editeval" / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "toy_editeval" / "__init__.py").touch()
    info = root / "toy_editeval-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-editeval\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return root


def _requests(n: int) -> list[dict]:
    return [empty_request(case_id=i, subject="France", prompt=f"Question {i}: the capital of France is",
                          target_new="Lyon", ground_truth="Paris", rephrase_prompts=["France's capital is"],
                          locality=[{"kind": "nq", "prompt": "who wrote hamlet?", "answer": "Shakespeare"}])
            for i in range(n)]


def _write_benchmark(root: Path, name: str, split: str, records: list[dict]) -> None:
    import datasets

    (root / name / "data").mkdir(parents=True)
    datasets.Dataset.from_list(records, features=EDIT_REQUEST_FEATURES).to_parquet(root / name / "data" / f"{split}.parquet")
    (root / name / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: {split}\n"
                                           f"    path: data/{split}.parquet\n---\n# {name}\n")


def _editeval(args: list[str], plugin: Path, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), str(REPO)]),
           "EDITEVAL_DATASETS": str(tmp / "datasets"), "EDITEVAL_CACHE": str(tmp / "cache"),
           "HF_DATASETS_CACHE": str(tmp / "hf-datasets"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "editeval", *args], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)


# --------------------------------------------------------------------------- the registry type


def test_builtins_are_imported_on_first_read_only():
    calls = []
    things: Registry[int] = Registry("thing", builtins=lambda: (calls.append(1), things.add("two", 2)))
    things.add("one", 1)
    assert calls == []
    assert things.get("two") == 2 and things["one"] == 1 and "two" in things and "three" not in things
    assert things.names() == ["one", "two"] and calls == [1]


def test_an_unknown_name_is_one_line_listing_the_known_names():
    things: Registry[int] = Registry("thing")
    things.register("beta")(2)
    things.add("alpha", 1)
    with pytest.raises(EditevalError) as err:
        things.get("gamma")
    assert str(err.value) == "unknown thing 'gamma': choose from alpha, beta"
    assert things.get("gamma", None) is None
    ordered: Registry[int] = Registry("thing", ordered=True)
    ordered.add("beta", 2)
    ordered.add("alpha", 1)
    assert ordered.names() == ["beta", "alpha"]


def test_a_name_is_registered_once():
    things: Registry[int] = Registry("thing")
    things.add("one", 1)
    with pytest.raises(EditevalError, match="^thing 'one' is registered twice$"):
        things.add("one", 11)


@pytest.mark.parametrize(("kind", "lookup"), [
    ("method", lambda: __import__("editeval.methods.base", fromlist=["x"]).get_method("no-such")),
    ("benchmark", lambda: __import__("editeval.data.registry", fromlist=["x"]).get("no-such")),
    ("addition kind", lambda: __import__("editeval.methods.kit.artifacts", fromlist=["x"]).ADDITIONS.get("no-such")),
    ("model", lambda: __import__("editeval.runtime.models", fromlist=["x"]).MODELS.get("no-such")),
    ("architecture", lambda: __import__("editeval.runtime.architectures", fromlist=["x"]).ARCHITECTURES.get("no-such")),
])
def test_every_registry_names_an_unknown_entry_in_one_line(kind, lookup):
    with pytest.raises(EditevalError) as err:
        lookup()
    message = str(err.value)
    assert message.startswith(f"unknown {kind} 'no-such': choose from ") and "\n" not in message


def test_an_unknown_method_on_the_command_line_is_one_error_line(capsys):
    from editeval.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["edit", "--method", "no-such-method", "--model", "nowhere"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown method 'no-such-method': choose from calinet, ft-l")


def test_learned_methods_register_their_training():
    from editeval.methods import ke, mend, serac
    from editeval.methods.base import get_method, trainable_methods

    assert trainable_methods() == ["ke", "mend", "serac"]
    assert [get_method(m).train for m in trainable_methods()] == [ke.train, mend.train, serac.train]


def test_a_new_architecture_is_one_entry_and_picks_its_presets(tiny_llama):
    from editeval.methods.base import preset_path
    from editeval.runtime.architectures import ARCHITECTURES, architecture, mlp_out_weight

    llama = ARCHITECTURES.get("llama")
    model = tiny_llama.model
    model.config.model_type = "my-llama"  # a model type nothing knows yet
    try:
        with pytest.raises(EditevalError, match="model type 'my-llama' has no entry"):
            architecture(model)
        ARCHITECTURES.add("my-llama", llama)
        assert mlp_out_weight(model, 1)[0] == "model.layers.1.mlp.down_proj.weight"
        assert preset_path("rome", model).name == "llama.yaml"
    finally:
        model.config.model_type = "llama"
        del ARCHITECTURES["my-llama"]


# --------------------------------------------------------------------------- entry points


def test_entry_points_register_modules_and_objects_on_demand(tmp_path, monkeypatch):
    group = "editeval.test-things"
    plugin = _plugin(tmp_path, f"""
        [{group}]
        seven = toy_editeval.numbers:SEVEN
        eight = toy_editeval.registers
        broken = toy_editeval.broken
        silent = toy_editeval.numbers
    """, {"numbers": "SEVEN = 7\n",
          "registers": "from toy_editeval_registry import THINGS\nTHINGS.add('eight', 8)\n",
          "broken": "raise RuntimeError('no luck\\nsecond line')\n"})
    monkeypatch.syspath_prepend(str(plugin))
    things: Registry[int] = Registry("thing", group=group)
    monkeypatch.setitem(sys.modules, "toy_editeval_registry", types.ModuleType("toy_editeval_registry"))
    sys.modules["toy_editeval_registry"].THINGS = things  # what the `eight` module registers in
    things.add("one", 1)
    try:
        assert things.get("one") == 1 and "toy_editeval.numbers" not in sys.modules  # a built-in loads no plugin
        assert things.get("seven") == 7 and things.get("eight") == 8
        with pytest.raises(EditevalError) as err:
            things.get("broken")
        assert str(err.value) == ("thing plugin 'broken' (toy_editeval.broken, entry point group editeval.test-things) "
                                  "failed to load: RuntimeError: no luck")
        with pytest.raises(EditevalError, match="importing the module registered no thing named 'silent'"):
            things.get("silent")
        assert things.names() == ["eight", "one", "seven"]
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "toy_editeval"]:
            del sys.modules[name]


def test_a_plugin_method_runs_from_the_command_line(tmp_path, tiny_llama_dir):
    """`python -m editeval edit --method toy` with the toy method of a package found only through its
    entry point: exit 0, a results record of the toy edits; the plugin is listed with the built-ins,
    and its benchmark with theirs."""
    plugin = _plugin(tmp_path / "site", """
        [editeval.methods]
        toy = toy_editeval.method

        [editeval.benchmarks]
        toybench = toy_editeval.bench:BENCHMARK
    """, {"method": TOY_METHOD, "bench": TOY_BENCHMARK})
    _write_benchmark(tmp_path / "datasets", "toy", "edit", _requests(3))
    hparams = tmp_path / "toy.yaml"
    hparams.write_text("layer: 1\ndelta: 0.05\n")
    out = tmp_path / "results" / "toy.json"
    done = _editeval(["edit", "--method", "toy", "--model", str(tiny_llama_dir), "--benchmark", "toy", "--split", "edit",
                      "--mode", "batch", "--hparams", str(hparams), "--device", "cpu", "--no-generation",
                      "--no-progress", "--out", str(out)], plugin, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote {out}" in done.stdout
    record = read_record(out)
    assert json.loads(out.read_text())["meta"]["method"] == "toy" and record.meta.n_edits == 3
    assert len(read_rows(out)) == 3

    done = _editeval(["edit", "--method", "nope", "--model", str(tiny_llama_dir)], plugin, tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: unknown method 'nope': choose from calinet, ft-l, ft-m, grace, ike, ke, "
                                        "kn, lora, memit, mend, rome, serac, t-patcher, toy"]
    done = _editeval(["datasets", "list"], plugin, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line.split()[:3] for line in done.stdout.splitlines() if line.startswith("toybench")] == [
        ["toybench", "default", "edit"]]
