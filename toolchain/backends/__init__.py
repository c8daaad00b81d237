"""Runtimes: one module per runtime behind one small interface.

    CACHE_MODE = "buffer" | "io"                        where decode's KV cache lives
    ENCODE_LENGTHS = False                              optional: True if it exports the recipe's
                                                        encode_lengths (shorter encode programs)
    available() -> (bool, why)                          can this machine export/run it
    check(recipe, target)                               raise InputError for what it cannot honour
    lower(parts, recipe, target, out_dir, calibration) -> Lowered
                                                        write model files into out_dir; calibration
                                                        = tokenized inputs (list of id lists) when
                                                        the recipe quantizes, else None
    open(artifact, threads) -> Session                  load them for run/verify/probe
    preload()                                           import the runtime (probe timing)

A Session is what `run`, `verify` and `probe` share:

    encode(*inputs) -> state        the encode program's inputs as numpy arrays, in the
                                    order the manifest's programs.encode.inputs lists them
                                    (or one dict name -> array); text families:
                                    (input_ids int64[1, S], attention_mask int64[1, S]),
                                    S = the recipe's max_input_len (the caller pads); Whisper:
                                    (input_features float32[1, n_mels, frames],)
    decode(token, position, state) -> logits float32[V]  (numpy)
    encode_length                   (ENCODE_LENGTHS backends) the length the last encode
                                    ran at (`choose_encode` picks the program)

Backends feed whatever the manifest declares (`encode_arrays`), so a new family with
other encode inputs needs no backend change. Backend modules import their heavy
runtime lazily so `edgeseq --help` stays fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import InputError


class Session(Protocol):
    def encode(self, *inputs: np.ndarray | dict[str, np.ndarray]) -> Any: ...

    def decode(self, token: int, position: int, state: Any) -> np.ndarray: ...


@dataclass
class Lowered:
    """What a backend wrote: its files, program signatures and per-program facts."""

    files: list[str]
    programs: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)
    tool_versions: dict[str, str] = field(default_factory=dict)


def encode_arrays(entries: list[dict[str, Any]], inputs: tuple) -> list[np.ndarray]:
    """Session.encode's arguments -> one contiguous array per declared encode input, in order.

    `entries` is the manifest's programs.encode.inputs ({name, shape, dtype}); `inputs` the
    positional arrays, or a single dict keyed by name. Each array is cast to the declared
    dtype; a missing input or a wrong shape is a one-line InputError."""
    if len(inputs) == 1 and isinstance(inputs[0], dict):
        given = inputs[0]
        missing = [e["name"] for e in entries if e["name"] not in given]
        if missing:
            raise InputError(f"encode needs {', '.join(e['name'] for e in entries)}; missing {', '.join(missing)}")
        inputs = tuple(given[e["name"]] for e in entries)
    if len(inputs) != len(entries):
        raise InputError(f"encode takes {len(entries)} inputs ({', '.join(e['name'] for e in entries)}), "
                         f"got {len(inputs)}")
    out = []
    for e, x in zip(entries, inputs):
        a = np.ascontiguousarray(x, dtype=np.dtype(e["dtype"]))
        if list(a.shape) != list(e["shape"]):
            raise InputError(f"encode input {e['name']} must have shape {list(e['shape'])}, got {list(a.shape)}")
        out.append(a)
    return out


def choose_encode(entries: list[dict[str, Any]], inputs: tuple, full: Any, shorter: dict[int, Any]):
    """Session.encode's arguments -> (program, length, arrays): the declared encode arrays
    (`encode_arrays`) and the program to run them. With shorter encode programs (recipe
    encode_lengths; `shorter` maps length -> program) that is the shortest that holds this
    text input, run on arrays[:, :length]; else `full` on the arrays as given. Text inputs
    are right-padded [1, S]: the real input ends at attention_mask's last 1."""
    arrays = encode_arrays(entries, inputs)
    if shorter:
        mask = arrays[[e["name"] for e in entries].index("attention_mask")][0]
        used = int(np.flatnonzero(mask)[-1]) + 1 if mask.any() else 1
        n = next((n for n in sorted(shorter) if used <= n), None)
        if n is not None:
            return shorter[n], n, [np.ascontiguousarray(a[:, :n]) for a in arrays]
    return full, arrays[0].shape[1], arrays


def check_schemes(recipe, target, supported: dict[str, str]) -> None:
    """One-line InputError for the first recipe scheme the target cannot honour.
    `supported` maps scheme name -> what the target does with it."""
    for comp, scheme in recipe.quantization.items():
        if scheme not in supported:
            can = ", ".join(f"{s} ({what})" for s, what in supported.items())
            raise InputError(f"recipe {recipe.name}: {comp}={scheme} is not supported by {target.name}; "
                             f"it supports: {can}")


def check(module, recipe, target) -> None:
    """Everything a backend must refuse before any work: what the interface knows
    (encode_lengths on a backend with one encode program), then the backend's own check()."""
    if recipe.encode_lengths and not getattr(module, "ENCODE_LENGTHS", False):
        able = [r for r in runtimes() if getattr(importlib.import_module(_RUNTIMES[r]), "ENCODE_LENGTHS", False)]
        raise InputError(f"recipe {recipe.name}: encode_lengths (several encode programs) is not supported by "
                         f"{target.name}; supported by runtime {', '.join(able)}; remove the key for this target")
    module.check(recipe, target)


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
# Vendor NPUs through LiteRT ahead-of-time compilation (one module, backend = vendor).
register("litert-qualcomm", "toolchain.backends.litert_aot")
register("litert-mediatek", "toolchain.backends.litert_aot")
register("executorch-ethos-u", "toolchain.backends.executorch_ethos")


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
