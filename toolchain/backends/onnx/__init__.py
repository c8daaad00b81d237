"""ONNX Runtime, CPU execution provider.

Two ONNX files, ``encode.onnx`` and ``decode.onnx`` (plus ``encode_<L>.onnx`` per recipe
encode length), exported with ``torch.onnx.export(dynamo=True)``, and one shared external
weights file, ``weights.data``: each distinct tensor is stored once, however many graphs
read it (see ``export.write_shared``).

ONNX Runtime has no mutable state between runs, so the self-attention cache is explicit
(CacheMode.IO): decode takes ``cache_k_l [H, Dh, T]`` and ``cache_v_l [H, T, Dh]`` after
the cross K/V and returns ``new_cache_*`` after the logits (``session.OnnxSession``).

Quantization works on the fp32 graphs node by node, so each recipe component is honoured
separately (``quantize``): linears take ``8da8w`` (ORT dynamic int8) or ``static-int8``
(QDQ, activation ranges calibrated), one of the two per artifact; the embedding takes
``int8-weight`` (int8 rows, per-row scale). All int8 weights sit on one grid, the target's
``weight_bits`` option: 7 (the default, values -64..64) or 8 (-127..127). ORT multiplies u8
activations by s8 weights; on x86 without VNNI (AVX2, AVX-512 without VNNI) its kernels add
pairs of those products in int16 (``vpmaddubsw``), which saturates with 8-bit weights (seen:
logits ~25% off on tiny models, a demo row lost) and cannot with 7-bit ones
(2 * 255 * 64 = 32640). 8 is for deployments known to have VNNI or Arm dot products.

Modules: ``export`` (torch -> ONNX, shared weights file, the artifact's signatures),
``quantize`` (onnxruntime.quantization and the embedding rewrite), ``tied`` (a tied head
reading the embedding's int8 table; the manifest's ``onnx.lm_head``), ``session`` (the
runtime). This module imports none of them, nor onnx/onnxruntime/torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import InputError
from ...schemes import Component, QuantScheme
from ..base import Backend, CacheMode, Capabilities, Lowered, Session, check_options

if TYPE_CHECKING:
    from ...artifact import Artifact
    from ...specs import Recipe, Target
    from ...split import Seq2SeqParts

# target.backend -> ONNX Runtime execution provider
PROVIDERS = {"cpu": "CPUExecutionProvider"}
# Per component: scheme -> what it becomes here (said when a recipe asks for another one).
LINEAR_SCHEMES = {QuantScheme.NONE: "fp32",
                  QuantScheme.W8A8_DYNAMIC: "int8 per-channel weights, activations quantized per call",
                  QuantScheme.STATIC_INT8: "int8 weights and activations (QDQ), ranges calibrated"}
EMBEDDING_SCHEMES = {QuantScheme.NONE: "fp32", QuantScheme.INT8_WEIGHT: "int8 rows, one scale per row"}
# target.options: name -> what it sets (said when a target names another one).
OPTIONS = {"weight_bits": "int8 weight grid: 7 (-64..64, exact on every x86) or 8 (-127..127, VNNI/Arm only)"}
# weight_bits -> the largest int8 weight magnitude, as onnxruntime.quantization sets it for
# symmetric int8: 64 with reduce_range (7 bits), 127 without.
GRIDS = {7: 64, 8: 127}
DEFAULT_WEIGHT_BITS = 7


def weight_bits(target: Target) -> int:
    """The target's int8 weight grid (module docstring); 7 when it does not say."""
    return int(target.options.get("weight_bits", DEFAULT_WEIGHT_BITS))


class OnnxBackend(Backend):
    capabilities = Capabilities(
        cache_mode=CacheMode.IO,
        schemes={Component.ENCODER: LINEAR_SCHEMES, Component.DECODER: LINEAR_SCHEMES,
                 Component.LM_HEAD: LINEAR_SCHEMES, Component.EMBEDDINGS: EMBEDDING_SCHEMES},
        # The recipe's encode_lengths become more graphs (encode_64.onnx, ...) pointing into the
        # same deduplicated weights.data: their linears are the full encode's tensors.
        encode_lengths=True)
    # onnxscript's optimizer shapes the exported graphs, so its version is part of the artifact.
    distributions = ("onnx", "onnxruntime", "onnxscript")

    def available(self) -> tuple[bool, str]:
        import importlib.util

        missing = [p for p in self.distributions if importlib.util.find_spec(p) is None]
        return not missing, "" if not missing else f"python package(s) not installed: {', '.join(missing)}"

    def check_target(self, recipe: Recipe, target: Target) -> None:
        if target.backend not in PROVIDERS:
            raise InputError(f"target {target.name}: onnx backend {target.backend!r} is not available; "
                             f"available: {', '.join(sorted(PROVIDERS))}")
        check_options(target, OPTIONS, {})  # unknown keys; weight_bits may be left out (the default)
        bits = target.options.get("weight_bits", DEFAULT_WEIGHT_BITS)
        if bits not in GRIDS:
            raise InputError(f"target {target.name}: option 'weight_bits' must be 7 or 8, got {bits!r}")

    def check(self, recipe: Recipe, target: Target) -> None:
        super().check(recipe, target)
        # After the per-component check, so an unknown scheme is named as such first.
        used = sorted({s for c, s in recipe.quantization.items()
                       if c != Component.EMBEDDINGS and s != QuantScheme.NONE})
        if len(used) > 1:
            raise InputError(f"recipe {recipe.name}: mixes {' and '.join(used)} on linears; {target.name} applies "
                             f"one linear scheme per artifact (other components may be 'none')")

    def lower(self, parts: Seq2SeqParts, recipe: Recipe, target: Target, out: Path,
              calibration: list[Any] | None = None) -> Lowered:
        from .export import lower

        self.check(recipe, target)
        self.check_parts(parts)
        return lower(parts, recipe, PROVIDERS[target.backend], out, calibration, self.versions(),
                     weight_bits(target))

    def open_session(self, artifact: Artifact, threads: int | None = None) -> Session:
        from .session import OnnxSession

        return OnnxSession(artifact, threads)

    def preload(self) -> None:
        import onnxruntime

        onnxruntime.get_available_providers()


BACKEND = OnnxBackend()
# The registry (backends/__init__.py) finds this package by these names.
RUNTIMES = {"onnx": BACKEND}
