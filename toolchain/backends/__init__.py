"""Runtimes: one package per runtime, each a `Backend` (backends/base.py), found by one registry.

Every package under backends/ declares the runtime names it serves in `RUNTIMES` (name ->
its Backend instance): "onnx", or "runtime-backend" where a delegate needs other code
("executorch-coreml", "litert-qualcomm"); `for_target` prefers the specific name. Adding a
runtime is adding its package: the registry imports each package's light `__init__` (no
runtime library is imported there) the first time a name is looked up. A name declared twice
fails loudly; an unknown one names the valid choices.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from ..errors import InputError
from .base import Backend, CacheMode, Capabilities, Lowered, Session
from .inputs import choose_encode, encode_arrays

__all__ = ["Backend", "CacheMode", "Capabilities", "Lowered", "Session", "choose_encode", "encode_arrays",
           "for_target", "get", "register", "runtimes", "runtimes_with"]

# Runtime name -> its Backend, or "package.module:ATTRIBUTE" resolved on first use.
_RUNTIMES: dict[str, Backend | str] = {}
_LOADED: dict[str, Backend] = {}
_FOUND = False


def register(runtime: str, backend: Backend | str) -> None:
    """Register `runtime`; a name registered twice is a bug in the packages, so it raises."""
    if runtime in _RUNTIMES:
        raise RuntimeError(f"runtime {runtime!r} registered twice")
    if isinstance(backend, str) and ":" not in backend:
        raise RuntimeError(f"runtime {runtime!r}: register it as 'module:attribute', got {backend!r}")
    _RUNTIMES[runtime] = backend


def _discover() -> None:
    """Register what every package under backends/ declares in RUNTIMES (once)."""
    global _FOUND
    if _FOUND:
        return
    _FOUND = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.ispkg:
            module = importlib.import_module(f"{__name__}.{info.name}")
            for name, backend in getattr(module, "RUNTIMES", {}).items():
                register(name, backend)


def runtimes() -> list[str]:
    _discover()
    return sorted(_RUNTIMES)


def get(runtime: str) -> Backend:
    _discover()
    if runtime not in _RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; available: {', '.join(runtimes())}")
    if runtime not in _LOADED:
        backend: Any = _RUNTIMES[runtime]
        if isinstance(backend, str):
            module, attr = backend.split(":")
            backend = getattr(importlib.import_module(module), attr, None)
        if not isinstance(backend, Backend):
            raise RuntimeError(f"runtime {runtime!r}: {_RUNTIMES[runtime]!r} is not a Backend")
        _LOADED[runtime] = backend
    return _LOADED[runtime]


def for_target(target: Any) -> Backend:
    """The Backend for a Target: "runtime-backend" if registered, else "runtime"."""
    specific = f"{target.runtime}-{target.backend}"
    _discover()
    return get(specific if specific in _RUNTIMES else target.runtime)


def runtimes_with(capability: str) -> list[str]:
    """The registered runtimes whose Capabilities have `capability` set."""
    return [r for r in runtimes() if getattr(get(r).capabilities, capability)]

