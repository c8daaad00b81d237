"""Attributes of torch / ExecuTorch replaced for the length of a block (the export-time cuts).

A cut replaces a function or method of another package (xnnpack_passes.py, retraces.py) only
while an export runs: ``with cut():`` puts the replacements in, and the originals come back
when the last block ends (blocks nest, and two threads may hold one each), so nothing outside
an export sees them and a test can compare with and without.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def _owner(module: str, attribute: str) -> tuple[Any, str]:
    """The object holding ``attribute`` ("Class.method" or "function") in ``module``, and its name.

    importlib, not ``import a.b as m``: a package may export an object under the name of its
    submodule (torch._higher_order_ops.executorch_call_delegate is both)."""
    owner: Any = importlib.import_module(module)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name


class ScopedPatch:
    """``(module, attribute, replacement)`` triples, applied while a ``with patch():`` block runs."""

    def __init__(self, *patches: tuple[str, str, Callable[..., Any]]):
        self._patches = patches
        self._lock = threading.Lock()
        self._depth = 0
        self._originals: dict[str, Any] = {}

    def original(self, attribute: str) -> Any:
        """What ``attribute`` was before the block (for a replacement that calls through)."""
        return self._originals[attribute]

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                for module, attribute, replacement in self._patches:
                    owner, name = _owner(module, attribute)
                    self._originals[attribute] = getattr(owner, name)
                    setattr(owner, name, replacement)
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    for module, attribute, _ in self._patches:
                        owner, name = _owner(module, attribute)
                        setattr(owner, name, self._originals.pop(attribute))
