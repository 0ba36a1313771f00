"""The package reads bottom-up: each layer imports only from itself and the layers below it, so a
method never reaches into evaluation or a run, and evaluation never into the leaderboard."""

from __future__ import annotations

import ast
from pathlib import Path

import editeval

PACKAGE = Path(editeval.__file__).resolve().parent

# lowest first; a module belongs to the first (longest) prefix that names it
LAYERS = [
    ("editeval", "editeval.errors"),  # the version and the one error type
    ("editeval.runtime",),
    ("editeval.data",),
    ("editeval.methods",),
    ("editeval.evaluation",),
    ("editeval.run",),
    ("editeval.leaderboard",),
    ("editeval.commands", "editeval.cli", "editeval.__main__"),
]


def layer_of(module: str) -> int:
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (module.startswith(prefix + ".") and prefix != "editeval"):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), rank)
    if best is None:
        raise AssertionError(f"module {module} belongs to no layer: add it to LAYERS")
    return best[1]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, module: str) -> set[str]:
    """Every editeval module a file imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("editeval")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("editeval"):
            for alias in node.names:  # `from editeval.x import y`: y may be a module of its own
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in MODULES else node.module)
    return out


MODULES = modules()


def test_every_module_has_a_layer():
    for name in MODULES:
        layer_of(name)


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for name, path in sorted(MODULES.items()):
        own = layer_of(name)
        for target in sorted(imports(path, name)):
            if target == "editeval" or layer_of(target) <= own:
                continue
            upward.append(f"{name} -> {target}")
    assert not upward, "imports from a layer above:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from editeval.run.scoring import load_requests\n")
    assert any(layer_of(t) > layer_of("editeval.methods.ike") for t in imports(bad, "editeval.methods.ike"))


# the only places that read the environment: the entry points (commands/), the documented cache and
# raw-data locations, the launcher's process-group variables, huggingface_hub's own offline switch
ENVIRONMENT_READERS = {
    "editeval.commands.options": {"EDITEVAL_DATASETS"},
    "editeval.runtime.paths": {"EDITEVAL_RAW_DATA", "EDITEVAL_CACHE"},
    "editeval.runtime.distributed": None,  # RANK, WORLD_SIZE, ... as the launcher sets them
    "editeval.leaderboard.checks": {"HF_HUB_OFFLINE"},
}


def environment_reads(path: Path) -> set[str]:
    """The names a file reads from os.environ / os.getenv (`?` for a name that is not a literal)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            reading = node.func.attr == "getenv" or (
                node.func.attr == "get" and isinstance(owner, ast.Attribute) and owner.attr == "environ"
            )
            target = node.args[0] if node.args else None
        else:
            reading = isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
            reading = reading and node.value.attr == "environ"
            target = getattr(node, "slice", None)
        if reading:
            names.add(target.value if isinstance(target, ast.Constant) else "?")
    return names


def test_only_the_entry_points_and_documented_locations_read_the_environment():
    for module, path in MODULES.items():
        reads = environment_reads(path)
        if not reads:
            continue
        assert module in ENVIRONMENT_READERS, f"{module} reads {sorted(reads)} from the environment"
        allowed = ENVIRONMENT_READERS[module]
        assert allowed is None or reads <= allowed, f"{module} reads {sorted(reads - allowed)}"


def test_the_environment_check_sees_every_form_of_reading(tmp_path):
    code = "import os\na = os.environ.get('A')\nb = os.environ['B']\nc = os.getenv('C')\nd = os.environ.get(name)\n"
    (tmp_path / "m.py").write_text(code)
    assert environment_reads(tmp_path / "m.py") == {"A", "B", "C", "?"}
