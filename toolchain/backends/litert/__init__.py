"""LiteRT (TFLite) runtime, XNNPACK delegate on CPU.

One flatbuffer, ``model.tflite``, with two signatures, ``encode`` and ``decode``
(``litert_torch.signature(...).signature(...).convert()``), which share one copy of
the weights they have in common.

TFLite programs have no mutable state, so the split is built with
``cache_mode="io"``: the decode signature takes, after token/position/cross_bias
and the per-layer cross-attention K/V, the self-attention caches

    cache_k_l  float32[H, Dh, T]   keys, pre-transposed (q @ K is a plain bmm)
    cache_v_l  float32[H, T, Dh]

and returns ``(logits float32[1, V], new_cache_k_0, new_cache_v_0, ...)`` with the
same shapes. The update inside the graph is the one-slot masked blend of
``split.update_cache`` (no scatter); outside it, the Session hands each step's
output arrays straight back as the next step's inputs (no copies, no dtype
conversions, the cross K/V arrays are built once per input and reused by reference).

Signature tensors are not named after our arguments: the converter calls them
``args_0 ...`` (the i-th positional input) and ``output_0 ...`` (the i-th output).
The manifest records, for every input/output, our name, the signature tensor name,
the shape and the dtype the runtime expects: int64 inputs (ids, mask, token,
position) become int32 in the flatbuffer (the converter's default without x64).

Modules: ``export`` (conversion, signature mapping, the program descriptions),
``quantize`` (ai-edge-quantizer on the fp32 flatbuffer, per component: see there),
``session`` (the interpreter as a Session). This module imports none of them (nor
LiteRT) until a method needs it. ``litert_aot`` compiles the same flatbuffer for NPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import InputError
from ...schemes import Component, QuantScheme, same_for_all
from ..base import Backend, CacheMode, Capabilities, Lowered, Session

if TYPE_CHECKING:
    from ...artifact import Artifact
    from ...specs import Recipe, Target
    from ...split import Seq2SeqParts

TFLITE = "model.tflite"
SIGNATURES = ("encode", "decode")
DISTRIBUTIONS = ("ai-edge-litert", "litert-torch", "ai-edge-quantizer")

# Recipe scheme -> what LiteRT does with it (every component alike; quantize.py applies it).
#   int8: dynamic-range quantization (int8 per-channel symmetric weights; FULLY_CONNECTED
#         activations quantized per row at runtime; embeddings stored as int8 rows)
#   fp16: fp16 weights, dequantized to fp32 once at load, fp32 compute
#   int4: 8da4w on FULLY_CONNECTED ops: int4 symmetric weights in blocks of group_size along the
#         input dim, activations quantized to int8 per row at runtime (XNNPACK's blockwise qb4w
#         kernels); linears only (no int4 EMBEDDING_LOOKUP kernel)
SCHEMES: dict[QuantScheme, str] = {QuantScheme.NONE: "fp32", QuantScheme.W8A8_DYNAMIC: "int8",
                                   QuantScheme.INT8_WEIGHT: "int8", QuantScheme.FP16: "fp16",
                                   QuantScheme.W4A8_DYNAMIC: "int4"}
_NOT_4BIT: dict[QuantScheme, str] = {k: v for k, v in SCHEMES.items() if k != QuantScheme.W4A8_DYNAMIC}
CAPABILITIES = Capabilities(cache_mode=CacheMode.IO,
                            schemes={**same_for_all(SCHEMES), Component.EMBEDDINGS: _NOT_4BIT})


def tools_available() -> tuple[bool, str]:
    """The interpreter and the converter are installed (litert and litert_aot both need them)."""
    import importlib.util

    for pkg, dist in (("ai_edge_litert", "ai-edge-litert"), ("litert_torch", "litert-torch")):
        if importlib.util.find_spec(pkg) is None:
            return False, f"python package {dist!r} not installed"
    return True, ""


def preload_interpreter() -> None:
    """Import the runtime, so a probe's load time measures loading the model, not Python imports."""
    from ai_edge_litert import interpreter  # noqa: F401


class LiteRTBackend(Backend):
    capabilities = CAPABILITIES
    distributions = DISTRIBUTIONS

    def available(self) -> tuple[bool, str]:
        return tools_available()

    def check_target(self, recipe: Recipe, target: Target) -> None:
        if target.backend != "xnnpack":
            raise InputError(f"target {target.name}: litert backend {target.backend!r} is not available; "
                             f"available: xnnpack")
        if QuantScheme.W4A8_DYNAMIC in recipe.quantization.values() and recipe.group_size < 32:
            raise InputError(f"recipe {recipe.name}: LiteRT quantizes 8da4w in blocks of 32, 64, 128 or 256, "
                             f"got group_size {recipe.group_size}")

    def lower(self, parts: Seq2SeqParts, recipe: Recipe, target: Target, out: Path,
              calibration: list[Any] | None = None) -> Lowered:
        from . import export

        self.check(recipe, target)
        lowered = export.lower_cpu(parts, recipe, out)
        lowered.tool_versions = self.versions()
        return lowered

    def open_session(self, artifact: Artifact, threads: int | None = None) -> Session:
        from .session import LiteRTSession

        return LiteRTSession(artifact, threads)

    def preload(self) -> None:
        preload_interpreter()

    def versions(self) -> dict[str, str]:
        # Only what is installed, as the manifests written so far record it (no "missing" entries).
        return {k: v for k, v in super().versions().items() if v != "missing"}


BACKEND = LiteRTBackend()
# The registry (backends/__init__.py) finds this package by these names.
RUNTIMES = {"litert": BACKEND}
