"""The one registry type: named entries of one kind (methods, benchmarks, models, architectures,
method additions), filled by registration, read by name.

    METHODS: Registry[Method] = Registry("method", builtins=..., group="editeval.methods")
    METHODS.add("rome", method)            # or, as a decorator: @METHODS.register("rome")
    METHODS.get("rome")                    # unknown name: EditevalError "unknown method 'x': choose from ..."
    METHODS.names()                        # sorted (or in registration order: ordered=True)

Nothing is imported until the registry is first read: then `builtins()` runs once (it imports the
modules whose import registers the built-in entries). Third-party packages add entries through the
Python entry-point `group` (in their pyproject.toml: ``[project.entry-points."editeval.methods"]
toy = "toy_editeval.method"``). An entry point names either a module whose import registers the
entry (a method module with `@register_method("toy", ...)`) or the entry itself
(``"toy_editeval.data:BENCHMARK"``), registered under the entry point's name. A plugin is imported
when its name is asked for, or when all names are listed; a built-in name never imports a plugin.
"""

from __future__ import annotations

import importlib
import pkgutil
import types
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from editeval.errors import EditevalError

T = TypeVar("T")
_MISSING = object()


class Registry(Generic[T]):
    """Named entries of one kind; `builtins` imports the modules that register the built-in ones,
    `group` is the entry-point group of third-party ones (see the module docstring)."""

    def __init__(
        self,
        kind: str,
        *,
        builtins: Callable[[], object] | None = None,
        group: str | None = None,
        ordered: bool = False,
    ):
        self.kind = kind  # "method", "benchmark", ...: used in messages
        self.group = group  # entry-point group of third-party entries
        self.ordered = ordered  # names in registration order, not sorted
        self._builtins = builtins
        self._builtins_loaded = builtins is None
        self._entries: dict[str, T] = {}
        self._plugins: dict[str, EntryPoint] | None = None  # entry points not yet loaded, by name

    # -- registration

    def add(self, name: str, entry: T) -> T:
        """Register `entry` as `name`; a name is registered once (a plugin cannot replace a built-in)."""
        if name in self._entries:
            raise EditevalError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`: ``@ARCHITECTURES.register("x")`` above a class or function."""
        return lambda entry: self.add(name, entry)

    # -- lookup

    def get(self, name: str, default=_MISSING) -> T:
        """The entry registered as `name`; unknown: `default` if given, else a one-line EditevalError
        that lists the known names."""
        self._load_builtins()
        if name not in self._entries:
            self._load_plugin(name)
        if name in self._entries:
            return self._entries[name]
        if default is not _MISSING:
            return default
        raise EditevalError(f"unknown {self.kind} '{name}': choose from {', '.join(self.names())}")

    def names(self) -> list[str]:
        """Every registered name (built-ins and plugins): sorted, or in registration order."""
        self.load_all()
        return list(self._entries) if self.ordered else sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]

    def values(self) -> list[T]:
        return [self._entries[name] for name in self.names()]

    def load_all(self) -> None:
        """Import the built-in entries and every plugin of the group."""
        self._load_builtins()
        for name in list(self._plugin_points()):
            self._load_plugin(name)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name, None) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    # -- replacing an entry (tests wrap a method; `pytest.MonkeyPatch.setitem` works on a registry)

    def __setitem__(self, name: str, entry: T) -> None:
        self._load_builtins()
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    # -- loading

    def _load_builtins(self) -> None:
        if self._builtins_loaded:
            return
        self._builtins_loaded = True  # set first: a built-in module may read the registry while importing
        try:
            self._builtins()
        except BaseException:
            self._builtins_loaded = False
            raise

    def _plugin_points(self) -> dict[str, EntryPoint]:
        if self._plugins is None:
            found = entry_points(group=self.group) if self.group else ()
            self._plugins = {ep.name: ep for ep in found}
        return self._plugins

    def _load_plugin(self, name: str) -> None:
        ep = self._plugin_points().pop(name, None)  # popped: each entry point is loaded once
        if ep is None:
            return
        where = f"{self.kind} plugin '{name}' ({ep.value}, entry point group {self.group})"
        if name in self._entries:
            raise EditevalError(f"{where}: a {self.kind} named '{name}' is already registered")
        try:
            loaded = ep.load()
        except Exception as err:
            first_line = (str(err).splitlines() or [""])[0]
            raise EditevalError(f"{where} failed to load: {type(err).__name__}: {first_line}") from err
        if name in self._entries:  # its import registered it
            return
        if isinstance(loaded, types.ModuleType):
            raise EditevalError(f"{where}: importing the module registered no {self.kind} named '{name}'")
        self.add(name, loaded)


def import_modules(package: str, skip: tuple[str, ...] = ()) -> None:
    """Import every public module of `package` (names not starting with `_`, not in `skip`): the
    `builtins` of a registry whose entries register themselves when their module is imported."""
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if not info.name.startswith("_") and info.name not in skip:
            importlib.import_module(f"{package}.{info.name}")
