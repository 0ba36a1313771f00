"""The one hook primitive, and what is built on it.

`add_hook` is the only place editeval registers a PyTorch forward (or forward-pre) hook; a test
(tests/test_kit.py) keeps it that way, so every hook is found, and removed, the same way. `hooked`
holds hooks for a block, `Trace` captures (and optionally edits) the inputs/outputs of named
modules during a forward pass, always removed on exit, optionally stopping the pass once the last
one has run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch


def add_hook(module: torch.nn.Module, hook: Callable, *, before: bool = False, with_kwargs: bool = False):
    """Register `hook` on `module`: after its forward (``hook(module, args, output)``), or with
    before=True before it (``hook(module, args)``); with_kwargs=True passes the keyword arguments
    too (PyTorch's signatures). Returns the handle whose `remove()` takes the hook away."""
    if before:
        return module.register_forward_pre_hook(hook, with_kwargs=with_kwargs)
    return module.register_forward_hook(hook, with_kwargs=with_kwargs)


@contextmanager
def hooked(hooks: Iterable[tuple[torch.nn.Module, Callable]], *, before: bool = False, with_kwargs: bool = False):
    """`add_hook` for each (module, hook) pair inside the block; all removed on exit."""
    handles = []
    try:
        for module, hook in hooks:
            handles.append(add_hook(module, hook, before=before, with_kwargs=with_kwargs))
        yield
    finally:
        for handle in handles:
            handle.remove()


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early (nothing past the last traced module runs)."""


class Trace:
    """Records `inputs[name]` (first positional input) and `outputs[name]` of each traced module.

    edit_output(name, output) -> new_output may replace a module's output (e.g. to insert a vector).
    With stop=True the forward pass ends after the last module in `names` has run: wrap the call in
    `with Trace(...) as tr:` and the StopForward it raises is swallowed there.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        names: Iterable[str],
        *,
        retain_input: bool = False,
        retain_output: bool = True,
        edit_output: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
        stop: bool = False,
        detach: bool = True,
    ):
        self.model = model
        self.names = list(names)
        self.retain_input, self.retain_output = retain_input, retain_output
        self.edit_output, self.stop, self.detach = edit_output, stop, detach
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []

    def _hook(self, name: str):
        def hook(module, args, output):
            if self.retain_input:
                x = args[0]
                self.inputs[name] = x.detach() if self.detach else x
            if self.edit_output is not None:
                output = self.edit_output(name, output)
            if self.retain_output:
                y = output[0] if isinstance(output, tuple) else output
                self.outputs[name] = y.detach() if self.detach else y
            if self.stop and name == self.names[-1]:
                raise StopForward
            return output

        return hook

    def __enter__(self) -> Trace:
        for name in self.names:
            self._handles.append(add_hook(self.model.get_submodule(name), self._hook(name)))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return exc_type is StopForward


@contextmanager
def no_grad_eval(model: torch.nn.Module):
    """Eval mode + no grad for the block, restoring the training flag after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
