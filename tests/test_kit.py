"""Methods share code only through public names of `editeval.methods.base`, `editeval.methods.kit` and
the layers below (never another method's module, never a private name), and every PyTorch hook is
registered through the one primitive, `editeval.runtime.nethooks.add_hook`."""

from __future__ import annotations

import ast
from pathlib import Path

import editeval

PACKAGE = Path(editeval.__file__).resolve().parent
METHODS = PACKAGE / "methods"
HOOK_PRIMITIVE = PACKAGE / "runtime" / "nethooks.py"
RAW_HOOKS = ("register_forward_hook", "register_forward_pre_hook")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(path: Path) -> list[str]:
    """`from m import _x`, and `alias._x` where alias names an imported module."""
    tree = ast.parse(path.read_text(), str(path))
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                modules.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"from {'.' * node.level}{node.module or ''} import {alias.name}")
                else:  # `from editeval.methods import ft`: ft may be a module
                    modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            found.append(f"{node.value.id}.{node.attr} (line {node.lineno})")
    return found


def test_no_method_uses_a_private_name_of_another_module():
    bad = {str(p.relative_to(PACKAGE)): uses for p in sorted(METHODS.rglob("*.py")) if (uses := private_uses(p))}
    assert not bad, f"private names used across modules (make them public in methods/kit/): {bad}"


def method_imports(path: Path) -> set[str]:
    """The `editeval.methods...` modules a file imports (`from editeval.methods import x`: x)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("editeval.methods.")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("editeval.methods"):
            if node.module == "editeval.methods":
                out |= {f"editeval.methods.{a.name}" for a in node.names}
            else:
                out.add(node.module)
    return out


def test_methods_import_no_other_method():
    shared = ("editeval.methods.base", "editeval.methods.kit")
    bad = {}
    for path in sorted(METHODS.rglob("*.py")):
        own = "editeval." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        others = {m for m in method_imports(path) if m != own and not m.startswith(shared)}
        if others and path.name != "__init__.py":
            bad[str(path.relative_to(PACKAGE))] = sorted(others)
    assert not bad, f"methods import other methods (move what they share to methods/kit/): {bad}"


def test_the_private_name_check_sees_both_forms(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from editeval.methods.ft import _encode\nfrom editeval.methods import ft\nft._UpperStack\n")
    assert len(private_uses(bad)) == 2


def test_every_hook_goes_through_nethooks():
    raw = [
        f"{p.relative_to(PACKAGE)}:{i}"
        for p in sorted(PACKAGE.rglob("*.py"))
        if p != HOOK_PRIMITIVE
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if any(h in line for h in RAW_HOOKS)
    ]
    assert not raw, f"register hooks with editeval.runtime.nethooks.add_hook, not directly: {raw}"
