"""The one registry type: lazy built-ins, one-line errors on unknown names, and third-party entries
through entry points: the examples of docs/extending.md (a method, a benchmark, an architecture) put
in a temporary package, declared in an `entry_points.txt` of a `*.dist-info` folder on PYTHONPATH,
and used from the command line."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

from editeval.errors import EditevalError
from editeval.evaluation.results import read_record, read_rows
from editeval.runtime.registry import Registry

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds for one `python -m editeval` (imports torch; two busy cores)
# the blocks of docs/extending.md marked `<!-- tested: NAME -->`
DOC = {
    name: text
    for name, text in re.findall(
        r"<!-- tested: (\w+) -->\n```\w*\n(.*?)```", (REPO / "docs" / "extending.md").read_text(), re.S
    )
}
CAPITALS = [
    {"country": "France", "capital": "Paris", "new_capital": "Lyon"},
    {"country": "Italy", "capital": "Rome", "new_capital": "Berlin"},
    {"country": "Germany", "capital": "Berlin", "new_capital": "Paris"},
]


def _plugin(root: Path, entry_points: str, modules: dict[str, str]) -> Path:
    """An installed-looking package under `root`: its modules and a dist-info folder with METADATA and
    `entry_points.txt` (what pip writes for a pyproject's [project.entry-points] tables)."""
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


def _raw_capitals(raw: Path) -> Path:
    """The capitals example's raw file and a SOURCES.md with its section (from the docs)."""
    path = raw / "capitals" / "capitals.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(CAPITALS, indent=1))
    data = path.read_bytes()
    section = DOC["sources"].replace("{size}", f"{len(data):,}").replace("{sha256}", hashlib.sha256(data).hexdigest())
    (raw / "SOURCES.md").write_text("# Sources\n\n" + section)
    return raw / "SOURCES.md"


# several `editeval` commands in one fresh process (one Python start-up instead of one each): each
# command's exit code, stdout and stderr come back as one JSON line
_DRIVER = """
import contextlib, io, json, sys
from editeval.cli import main
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as done:
            code = done.code or 0
    print(json.dumps([code, out.getvalue(), err.getvalue()]), file=sys.__stdout__, flush=True)
"""


def _editeval(commands: list[list[str]], plugin: Path, tmp: Path) -> list[subprocess.CompletedProcess]:
    """Run `editeval ARGS` for each ARGS in one new process that sees the plugin only through its entry points."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(plugin), str(REPO)]),
        "EDITEVAL_DATASETS": str(tmp / "datasets"),
        "EDITEVAL_CACHE": str(tmp / "cache"),
        "HF_DATASETS_CACHE": str(tmp / "hf-datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(commands)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]
    assert len(results) == len(commands), done.stderr[-3000:]
    return [subprocess.CompletedProcess(args, code, out, err) for args, (code, out, err) in zip(commands, results)]


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


@pytest.mark.parametrize(
    ("kind", "module", "registry"),
    [
        ("method", "editeval.methods.base", "METHODS"),
        ("benchmark", "editeval.data.registry", "BENCHMARKS"),
        ("addition kind", "editeval.methods.kit.artifacts", "ADDITIONS"),
        ("model", "editeval.runtime.models", "MODELS"),
        ("architecture", "editeval.runtime.architectures", "ARCHITECTURES"),
        ("metric family", "editeval.evaluation.specs", "METRICS"),
    ],
)
def test_every_registry_names_an_unknown_entry_in_one_line(kind, module, registry):
    with pytest.raises(EditevalError) as err:
        getattr(importlib.import_module(module), registry).get("no-such")
    message = str(err.value)
    assert message.startswith(f"unknown {kind} 'no-such': choose from ") and "\n" not in message


def test_a_registered_metric_family_names_columns_and_is_registered_once(monkeypatch):
    from editeval.evaluation import specs

    assert isinstance(specs.METRICS, Registry) and specs.METRICS.names()[:2] == ["reliability", "generalization"]
    assert specs.MetricName.try_parse("wild.generation") is None
    spec = specs.MetricSpec("wild", ("generation", "judge"), percent=("generation",))
    monkeypatch.setitem(specs.METRICS, "wild", spec)
    name = specs.MetricName.parse("wild.judge")
    assert name == specs.MetricName("wild", "judge") and name.spec is spec and not name.percent
    with pytest.raises(EditevalError, match="^metric family 'reliability' is registered twice$"):
        specs.register_metric(specs.MetricSpec("reliability", ("teacher_forced",)))


def test_an_unknown_method_on_the_command_line_is_one_error_line(capsys):
    from editeval.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["edit", "--method", "no-such-method", "--model", "nowhere"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: unknown method 'no-such-method': choose from alphaedit, calinet, emmet, ft-l"
    )


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
    plugin = _plugin(
        tmp_path,
        f"""
        [{group}]
        seven = toy_editeval.numbers:SEVEN
        eight = toy_editeval.registers
        broken = toy_editeval.broken
        silent = toy_editeval.numbers
        one = toy_editeval.numbers:SEVEN
    """,
        {
            "numbers": "SEVEN = 7\n",
            "registers": "from toy_editeval_registry import THINGS\nTHINGS.add('eight', 8)\n",
            "broken": "raise RuntimeError('no luck\\nsecond line')\n",
        },
    )
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
        assert str(err.value) == (
            "thing plugin 'broken' (toy_editeval.broken, entry point group editeval.test-things) "
            "failed to load: RuntimeError: no luck"
        )
        with pytest.raises(EditevalError, match="importing the module registered no thing named 'silent'"):
            things.get("silent")
        with pytest.raises(EditevalError, match="^thing plugin 'one' .*: a thing named 'one' is already registered$"):
            things.names()  # listing loads every plugin: one that would replace a built-in is refused
        assert things.names() == ["eight", "one", "seven"] and things.get("one") == 1
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "toy_editeval"]:
            del sys.modules[name]


def test_the_docs_architecture_entry_lets_a_builtin_method_edit_a_new_model_type(tokenizer, monkeypatch):
    """docs/extending.md's OLMo entry: FT-M finds its preset through the entry's family, edits a tiny
    random OLMo, and restore puts every weight back bit for bit."""
    from transformers import OlmoConfig, OlmoForCausalLM

    from editeval.data.schema import empty_request
    from editeval.methods.base import get_method, restore
    from editeval.runtime.architectures import ARCHITECTURES

    namespace = {}
    exec(DOC["architecture"], namespace)
    monkeypatch.setitem(ARCHITECTURES, "olmo", namespace["OLMO"])
    model = OlmoForCausalLM(
        OlmoConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    ).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = get_method("ft-m")
    hparams = method.load_hparams(model)  # hparams/ft-m/llama.yaml: layer 21 of 32 -> 1 of 2
    request = empty_request(subject="France", prompt="The capital of France is", target_new="Lyon")
    backup = method.apply(model, tokenizer, [request], hparams)
    assert list(backup) == ["model.layers.1.mlp.down_proj.weight"]
    assert not torch.equal(model.get_parameter(list(backup)[0]), before[list(backup)[0]])
    restore(model, backup)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_plugin_method_and_benchmark_run_from_the_command_line(tmp_path, tiny_llama_dir):
    """docs/extending.md's method and benchmark in a package found only through its entry points:
    `editeval datasets build capitals` builds the benchmark from its raw file, `editeval edit --method
    toy-ft --benchmark capitals` edits the tiny LLaMA with the docs' preset (exit 0, a results record of
    the three edits), and the plugin method is listed with the built-ins."""
    plugin = _plugin(
        tmp_path / "site",
        """
        [editeval.methods]
        toy-ft = toy_editeval.method

        [editeval.benchmarks]
        capitals = toy_editeval.bench:BENCHMARK
    """,
        {"method": DOC["method"], "bench": DOC["benchmark"]},
    )
    sources = _raw_capitals(tmp_path / "raw")
    preset = tmp_path / "toy-ft.yaml"
    preset.write_text(DOC["preset"])
    out = tmp_path / "results" / "toy-ft.json"
    built, edited, done = _editeval(
        [
            [
                "datasets",
                "build",
                "capitals",
                "--raw-dir",
                str(tmp_path / "raw"),
                "--sources",
                str(sources),
                "--out-dir",
                str(tmp_path / "datasets"),
                "--no-progress",
            ],
            [
                "edit",
                "--method",
                "toy-ft",
                "--model",
                str(tiny_llama_dir),
                "--benchmark",
                "capitals",
                "--split",
                "edit",
                "--mode",
                "batch",
                "--hparams",
                str(preset),
                "--device",
                "cpu",
                "--no-generation",
                "--no-progress",
                "--out",
                str(out),
            ],
            ["edit", "--method", "nope", "--model", str(tiny_llama_dir)],
        ],
        plugin,
        tmp_path,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert "built capitals: 3 rows" in built.stdout
    assert edited.returncode == 0, edited.stderr[-3000:]
    assert f"wrote {out}" in edited.stdout
    record = read_record(out)
    meta = json.loads(out.read_text())["meta"]
    assert meta["method"] == "toy-ft" and meta["benchmark"] == "capitals" and record.meta.n_edits == 3
    assert record.meta.edited_fingerprint != record.meta.base_fingerprint  # the edit changed the weights
    assert len(read_rows(out)) == 3

    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: unknown method 'nope': choose from alphaedit, calinet, emmet, ft-l, ft-m, grace, ike, "
        "ke, kn, lora, memit, mend, r-rome, rome, serac, t-patcher, toy-ft, ultraedit, wise"
    ]
