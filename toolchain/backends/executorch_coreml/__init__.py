"""ExecuTorch with the Core ML delegate: the split in one ``.pte`` whose methods are Core ML blobs.

Target ``executorch-coreml`` (runtime ``executorch``, backend ``coreml``). The same two
programs as every other target (``encode``, ``decode``; see toolchain/split.py) go through
``to_edge_transform_and_lower`` with ExecuTorch's ``CoreMLPartitioner`` (export.py): each
method becomes one Core ML delegate (an ML program, iOS 18, fp16 compute, ``CPU_AND_NE``),
both in one multifunction mlpackage stored once in the .pte's named data (structure.py).
The decode self-attention caches (buffers updated in place) become Core ML *state* inside
the delegate, as in the plain Core ML target.

Lowering works on any OS (coremltools converts on Linux). Running needs an ExecuTorch
runtime built with the Core ML backend (macOS/iOS): the pip wheel on Linux registers no
``CoreMLBackend``, so opening a session refuses with a one-line error and verify checks
the structure only. The session is the executorch-xnnpack one (same program layout, no .ptd).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import InputError
from ...schemes import QuantScheme, same_for_all
from ..base import Backend, CacheMode, Capabilities, Lowered
from ..executorch import has_modules

if TYPE_CHECKING:
    from ...artifact import Artifact
    from ...specs import Recipe, Target
    from ...split import Seq2SeqParts
    from ..executorch.session import ExecuTorchSession

PTE = "model.pte"
DELEGATE = "CoreMLBackend"
# Core ML's own precision is the recipe here: weight compression for this delegate would go
# through coremltools' PT2E quantizer, which this target does not offer yet.
SCHEMES = {QuantScheme.NONE: "fp16 compute (Core ML)", QuantScheme.FP16: "fp16 compute (Core ML)"}


class ExecuTorchCoreMLBackend(Backend):
    capabilities = Capabilities(cache_mode=CacheMode.BUFFER, schemes=same_for_all(SCHEMES))
    distributions = ("executorch", "coremltools")

    def available(self) -> tuple[bool, str]:
        return has_modules(("executorch", "executorch"), ("coremltools", "coremltools"))

    def can_execute(self) -> tuple[bool, str]:
        """Whether this Python's ExecuTorch runtime has the Core ML backend; else why not, in one line."""
        from ..executorch.session import runtime_lib

        registered = runtime_lib()._get_registered_backend_names()
        if DELEGATE in registered:
            return True, ""
        return False, (f"this ExecuTorch runtime has no {DELEGATE} (registered: {', '.join(registered)}); "
                       f"executorch-coreml artifacts run on macOS/iOS with ExecuTorch built with Core ML")

    def lower(self, parts: Seq2SeqParts, recipe: Recipe, target: Target, out: Path,
              calibration: list[Any] | None = None) -> Lowered:
        from .export import lower

        self.check_parts(parts)
        self.check(recipe, target)
        return lower(parts, out, self.versions())

    def open_session(self, artifact: Artifact, threads: int | None = None) -> ExecuTorchSession:
        from ..executorch.session import ExecuTorchSession

        ok, why = self.can_execute()
        if not ok:
            raise InputError(why)
        return ExecuTorchSession(artifact, threads)

    def preload(self) -> None:
        from ..executorch.session import runtime_lib

        runtime_lib()

    def verify_structure(self, artifact: Artifact) -> dict[str, Any]:
        from .structure import verify_structure

        return verify_structure(artifact)


BACKEND = ExecuTorchCoreMLBackend()
# The registry (backends/__init__.py) finds this package by these names.
RUNTIMES = {"executorch-coreml": BACKEND}
