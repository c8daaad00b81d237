"""Core ML runtime: one stateful multifunction ``.mlpackage`` (iOS 18 / macOS 15+).

``model.mlpackage`` holds two functions of one ML program, ``encode`` and ``decode``, built
with ``coremltools.convert`` from the two ``torch.export`` programs and joined with
``ct.utils.save_multifunction``, which deduplicates constants across functions: the token
embedding both functions read is stored once (``convert``). The self-attention cache is
Core ML *state* (CacheMode.BUFFER: the split's caches are buffers updated in place, which
the converter turns into ``read_state`` / ``coreml_update_state`` ops).

Weights are compressed per component after conversion (``compress``); the saved package is
reloaded and described (``structure``, also what ``verify`` checks off macOS, where
``MLModel.predict`` does not exist); ``session`` runs it on macOS 15+.
This module imports none of them, nor coremltools/torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import InputError
from ...schemes import QuantScheme, SchemeTable, check_schemes, same_for_all
from ..base import Backend, CacheMode, Capabilities, Lowered, Session

if TYPE_CHECKING:
    from ...artifact import Artifact
    from ...specs import Recipe, Target
    from ...split import Seq2SeqParts

MLPACKAGE = "model.mlpackage"
FUNCTIONS = ("encode", "decode")
DEPLOYMENT_TARGET = "iOS18"  # states and multifunction models need iOS 18 / macOS 15

# target.backend -> (MLModel compute_units, compute precision)
BACKENDS = {
    "ane": ("CPU_AND_NE", "float16"),
    "gpu": ("CPU_AND_GPU", "float16"),
    "all": ("ALL", "float16"),
    "cpu": ("CPU_ONLY", "float32"),
}
# Recipe scheme -> stored weight format. "none" keeps the compute precision. Core ML has no
# dynamic activation quantization, so 8da8w means int8 weights (per channel) and 8da4w int4
# weights (blocks of recipe.group_size along the input axis).
SCHEMES: dict[QuantScheme, str] = {
    QuantScheme.NONE: "compute precision", QuantScheme.FP16: "fp16", QuantScheme.W8A8_DYNAMIC: "int8",
    QuantScheme.INT8_WEIGHT: "int8", QuantScheme.W4A8_DYNAMIC: "int4", QuantScheme.INT4_WEIGHT: "int4"}
NEEDS_MAC = "Core ML artifacts execute only on macOS 15+; on Linux `edgeseq verify` checks structure only"


def schemes_for(target: Target) -> SchemeTable:
    """What `target` honours, the same for every component. fp16 weights are what an
    fp16-compute target stores anyway; on cpu (fp32 compute) Core ML has no
    fp16-weights-fp32-compute mode, so the scheme is not offered there."""
    fp16 = BACKENDS[target.backend][1] == "float16"
    return same_for_all({s: k for s, k in SCHEMES.items() if fp16 or s != QuantScheme.FP16})


class CoreMLBackend(Backend):
    # Every scheme some Core ML target honours; check_target narrows it to the target's.
    capabilities = Capabilities(cache_mode=CacheMode.BUFFER, schemes=same_for_all(SCHEMES))
    distributions = ("coremltools",)

    def available(self) -> tuple[bool, str]:
        import importlib.util

        ok = importlib.util.find_spec("coremltools") is not None
        return ok, "" if ok else "python package 'coremltools' not installed"

    def can_execute(self) -> tuple[bool, str]:
        """Whether this machine can run Core ML models (verify/probe); else why not, in one line."""
        import platform

        if sys.platform != "darwin":
            return False, NEEDS_MAC
        release = platform.mac_ver()[0]
        if tuple(int(x) for x in release.split(".")[:1] or [0]) < (15,):
            return False, f"Core ML states and multifunction models need macOS 15+; this is macOS {release}"
        return True, ""

    def check_target(self, recipe: Recipe, target: Target) -> None:
        if target.backend not in BACKENDS:
            raise InputError(f"target {target.name}: coreml backend {target.backend!r} is not available; "
                             f"available: {', '.join(BACKENDS)}")
        check_schemes(recipe, target, schemes_for(target))

    def lower(self, parts: Seq2SeqParts, recipe: Recipe, target: Target, out: Path,
              calibration: list[Any] | None = None) -> Lowered:
        from .convert import lower

        self.check_parts(parts)
        self.check(recipe, target)
        return lower(parts, recipe, target, out, self.versions())

    def open_session(self, artifact: Artifact, threads: int | None = None) -> Session:
        from .session import CoreMLSession

        return CoreMLSession(artifact, threads)

    def preload(self) -> None:
        import coremltools  # noqa: F401

    def verify_structure(self, artifact: Artifact) -> dict[str, Any]:
        from .structure import verify_structure

        return verify_structure(artifact)


BACKEND = CoreMLBackend()
# The registry (backends/__init__.py) finds this package by these names.
RUNTIMES = {"coreml": BACKEND}
