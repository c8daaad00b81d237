"""ExecuTorch runtime, XNNPACK delegate (target executorch-xnnpack).

One program file, ``model.pte``, with two methods, ``encode`` and ``decode`` (plus
``encode_<L>`` for the recipe's encode_lengths), and one weights file, ``weights.ptd``
(see export.py for why the split into .pte + .ptd). The self-attention cache is mutable
buffers inside ``decode``.

This module is light: the exporter (export.py, quantize.py: torch, torchao, executorch.exir)
and the runtime (session.py: the ExecuTorch extension) are imported inside the methods.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import InputError
from ...schemes import Component, QuantScheme
from ..base import Backend, CacheMode, Capabilities, Lowered

if TYPE_CHECKING:
    from ...artifact import Artifact
    from ...specs import Recipe, Target
    from ...split import Seq2SeqParts
    from .session import ExecuTorchSession

PTE, PTD = "model.pte", "weights.ptd"

# What torchao + XNNPACK make of each scheme. Weight-only linears are not offered: XNNPACK runs
# them on portable kernels, i.e. slower than fp32. Embeddings are ExecuTorch's quantized
# embedding kernels (embedding_byte / embedding_4bit).
LINEARS = {QuantScheme.NONE: "fp32",
           QuantScheme.W8A8_DYNAMIC: "int8 per-channel weights, int8 dynamic per-token activations",
           QuantScheme.W4A8_DYNAMIC: "int4 weights in groups of group_size, int8 dynamic activations"}
EMBEDDINGS = {QuantScheme.NONE: "fp32",
              QuantScheme.INT8_WEIGHT: "int8 rows, per-row scale (embedding_byte)",
              QuantScheme.INT4_WEIGHT: "int4 rows in groups (embedding_4bit)"}
# Bits per weight of each scheme (the manifest's estimated sizes).
BITS = {QuantScheme.W8A8_DYNAMIC: 8, QuantScheme.W4A8_DYNAMIC: 4, QuantScheme.INT8_WEIGHT: 8,
        QuantScheme.INT4_WEIGHT: 4}


def has_modules(*found: tuple[str, str]) -> tuple[bool, str]:
    """available() for a runtime made of python packages: (module, distribution) pairs."""
    for mod, dist in found:
        try:
            ok = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:  # a dotted module whose parent package is missing
            ok = False
        if not ok:
            return False, f"python package {dist!r} not installed"
    return True, ""


class ExecuTorchBackend(Backend):
    capabilities = Capabilities(
        cache_mode=CacheMode.SLOT,
        schemes={Component.ENCODER: LINEARS, Component.DECODER: LINEARS, Component.LM_HEAD: LINEARS,
                 Component.EMBEDDINGS: EMBEDDINGS},
        # The recipe's encode_lengths become more methods of the same program (encode_16, ...),
        # their weights deduplicated into the one .ptd with the full encode's.
        encode_lengths=True,
        # encoder_attention: fused, edgeseq's rel_attention kernel (kernels.py) beside the delegate.
        fused_attention=True,
        # decode returns greedy's token too (argmax is a portable kernel after the delegate).
        next_token=True)
    distributions = ("executorch", "torchao")

    def available(self) -> tuple[bool, str]:
        return has_modules(("executorch", "executorch"))

    def check_target(self, recipe: Recipe, target: Target) -> None:
        if target.backend != "xnnpack":
            raise InputError(f"target {target.name}: executorch backend {target.backend!r} is not available; "
                             f"available: xnnpack")
        if QuantScheme.W4A8_DYNAMIC in recipe.quantization.values() and recipe.group_size % 32:
            raise InputError(f"recipe {recipe.name}: XNNPACK runs 8da4w only with group_size a multiple of 32, "
                             f"got {recipe.group_size}")

    def lower(self, parts: Seq2SeqParts, recipe: Recipe, target: Target, out: Path,
              calibration: list[Any] | None = None) -> Lowered:
        from .export import lower

        self.check(recipe, target)
        return lower(parts, recipe, out, self.versions())

    def open_session(self, artifact: Artifact, threads: int | None = None) -> ExecuTorchSession:
        from .session import ExecuTorchSession

        return ExecuTorchSession(artifact, threads)

    def preload(self) -> None:
        from .session import runtime_lib

        runtime_lib()


BACKEND = ExecuTorchBackend()
# The registry (backends/__init__.py) finds this package by these names.
RUNTIMES = {"executorch": BACKEND}
