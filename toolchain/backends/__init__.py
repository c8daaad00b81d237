"""Runtimes: one module per runtime behind one small interface.

    CACHE_MODE = "buffer" | "io"                        where decode's KV cache lives
    available() -> (bool, why)                          can this machine export/run it
    check(recipe, target)                               raise InputError for what it cannot honour
    lower(parts, recipe, target, out_dir, calibration) -> Lowered
                                                        write model files into out_dir; calibration
                                                        = tokenized inputs (list of id lists) when
                                                        the recipe quantizes, else None
    open(artifact, threads) -> Session                  load them for run/verify/probe
    preload()                                           import the runtime (probe timing)

A Session is what `run`, `verify` and `probe` share:

    encode(input_ids int64[1, S], attention_mask int64[1, S]) -> state
    decode(token, position, state) -> logits float32[V]  (numpy)

S is the recipe's max_input_len (the caller pads). Backend modules import their
heavy runtime lazily so `edgeseq --help` stays fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import InputError


class Session(Protocol):
    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> Any: ...

    def decode(self, token: int, position: int, state: Any) -> np.ndarray: ...


@dataclass
class Lowered:
    """What a backend wrote: its files, program signatures and per-program facts."""

    files: list[str]
    programs: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)
    tool_versions: dict[str, str] = field(default_factory=dict)


def check_schemes(recipe, target, supported: dict[str, str]) -> None:
    """One-line InputError for the first recipe scheme the target cannot honour.
    `supported` maps scheme name -> what the target does with it."""
    for comp, scheme in recipe.quantization.items():
        if scheme not in supported:
            can = ", ".join(f"{s} ({what})" for s, what in supported.items())
            raise InputError(f"recipe {recipe.name}: {comp}={scheme} is not supported by {target.name}; "
                             f"it supports: {can}")


# "runtime" or "runtime-backend" -> module path. Explicit, so a typo or duplicate fails
# loudly. A runtime whose delegates need different code registers "runtime-backend"
# (ExecuTorch + Core ML delegate); for_target() prefers it over the plain runtime.
_RUNTIMES: dict[str, str] = {}


def register(runtime: str, module: str) -> None:
    if runtime in _RUNTIMES:
        raise RuntimeError(f"runtime {runtime!r} registered twice")
    _RUNTIMES[runtime] = module


register("executorch", "toolchain.backends.executorch")
register("onnx", "toolchain.backends.onnx")
register("litert", "toolchain.backends.litert")
register("coreml", "toolchain.backends.coreml")
register("executorch-coreml", "toolchain.backends.executorch_coreml")


def runtimes() -> list[str]:
    return sorted(_RUNTIMES)


def for_target(target):
    """The backend module for a Target: "runtime-backend" if registered, else "runtime"."""
    specific = f"{target.runtime}-{target.backend}"
    return get(specific if specific in _RUNTIMES else target.runtime)


def can_execute(module) -> tuple[bool, str]:
    """Whether this machine can *run* the backend's artifacts (Core ML needs macOS)."""
    fn = getattr(module, "can_execute", None)
    return fn() if fn else (True, "")


def get(runtime: str):
    if runtime not in _RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; available: {', '.join(runtimes())}")
    return importlib.import_module(_RUNTIMES[runtime])
