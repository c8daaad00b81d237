"""Runtimes: one package per runtime, each a `Backend` (backends/base.py) in an explicit registry.

The registry maps a runtime name ("onnx", or "runtime-backend" where a delegate needs other
code: "executorch-coreml") to "module:attribute", the attribute being the Backend instance.
Modules are imported on first use, so listing runtimes imports no runtime. A duplicate name
fails at import; an unknown one names the valid choices.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import InputError
from .base import Backend, CacheMode, Capabilities, Lowered, Session
from .inputs import choose_encode, encode_arrays

__all__ = ["Backend", "CacheMode", "Capabilities", "Lowered", "Session", "choose_encode", "encode_arrays",
           "for_target", "get", "register", "runtimes", "runtimes_with"]

_RUNTIMES: dict[str, str] = {}
_LOADED: dict[str, Backend] = {}


def register(runtime: str, where: str) -> None:
    """Register `runtime` as "package.module:ATTRIBUTE" (a Backend instance)."""
    if runtime in _RUNTIMES:
        raise RuntimeError(f"runtime {runtime!r} registered twice")
    if ":" not in where:
        raise RuntimeError(f"runtime {runtime!r}: register it as 'module:attribute', got {where!r}")
    _RUNTIMES[runtime] = where


register("executorch", "toolchain.backends.executorch:BACKEND")
register("executorch-coreml", "toolchain.backends.executorch_coreml:BACKEND")
register("executorch-ethos-u", "toolchain.backends.executorch_ethos:BACKEND")
register("onnx", "toolchain.backends.onnx:BACKEND")
register("litert", "toolchain.backends.litert:BACKEND")
# Vendor NPUs through LiteRT ahead-of-time compilation: one package, one Backend per vendor.
register("litert-qualcomm", "toolchain.backends.litert_aot:QUALCOMM")
register("litert-mediatek", "toolchain.backends.litert_aot:MEDIATEK")
register("coreml", "toolchain.backends.coreml:BACKEND")


def runtimes() -> list[str]:
    return sorted(_RUNTIMES)


def get(runtime: str) -> Backend:
    if runtime not in _RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; available: {', '.join(runtimes())}")
    if runtime not in _LOADED:
        module, attr = _RUNTIMES[runtime].split(":")
        mod = importlib.import_module(module)
        backend: Any = getattr(mod, attr, None)
        if not isinstance(backend, Backend):
            raise RuntimeError(f"{_RUNTIMES[runtime]} is not a Backend")
        _LOADED[runtime] = backend
    return _LOADED[runtime]


def for_target(target: Any) -> Backend:
    """The Backend for a Target: "runtime-backend" if registered, else "runtime"."""
    specific = f"{target.runtime}-{target.backend}"
    return get(specific if specific in _RUNTIMES else target.runtime)


def runtimes_with(capability: str) -> list[str]:
    """The registered runtimes whose Capabilities have `capability` set."""
    return [r for r in runtimes() if getattr(get(r).capabilities, capability)]

