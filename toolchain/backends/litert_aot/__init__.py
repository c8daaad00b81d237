"""LiteRT on vendor NPUs, compiled ahead of time: Qualcomm (QNN HTP) and MediaTek (NeuroPilot APU).

Targets ``litert-qualcomm`` and ``litert-mediatek``: runtime ``litert``, backend
``qualcomm`` or ``mediatek``, and ``options: {soc_model: ...}``, one of the SoC names
of ``ai_edge_litert.aot.vendors.<vendor>.target.SocModel`` (e.g. SM8650, MT6989).
Experimental: nothing here has run on an NPU.

One Backend class, `LiteRTAotBackend`, parametrised by its `Vendor` (vendors.py): the
registry's ``QUALCOMM`` and ``MEDIATEK``. Flow:

    litert.export.lower_cpu                     the litert-cpu flatbuffer, unchanged: signatures
                                                encode/decode, KV cache as explicit signature I/O,
                                                the recipe's quantization (litert.quantize)
    -> compile.lower_npu                        LiteRT's AOT pipeline with the vendor's compiler
                                                plugin; the compiled model and the CPU fallback
                                                in the artifact, the compiler's report in the
                                                manifest's ``litert_aot`` section

``check`` finds, before any model work, whether the compiler can reach the vendor SDK
(vendors.py says where it looks).

Recipes: the litert-cpu schemes (fp32, fp16 weights, dynamic-range int8). NPUs compute
in integers or fp16; dynamic-range int8 keeps float activations around int8 weights,
which a vendor compiler may not take: what it took and what it left on the CPU is in
the manifest (``litert_aot.partitions``, ``litert_aot.cpu_ops``), never assumed.

NPU programs cannot execute here: ``can_execute`` says so and ``verify_structure``
(structure.py) reads the compiled flatbuffer back (signatures, tensor shapes and dtypes,
DISPATCH_OP counts).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import InputError
from ..base import Backend, Lowered, Session, check_options
from ..litert import BACKEND as LITERT
from ..litert import CAPABILITIES, DISTRIBUTIONS, preload_interpreter, tools_available
from .vendors import VENDORS, Vendor, installed_version, resource

if TYPE_CHECKING:
    from ...artifact import Artifact
    from ...specs import Recipe, Target
    from ...split import Seq2SeqParts

__all__ = ["MEDIATEK", "OPTIONS", "QUALCOMM", "VENDORS", "LiteRTAotBackend", "Vendor"]

OPTIONS = {"soc_model": "the SoC to compile for (ai_edge_litert.aot.vendors.<vendor>.target.SocModel)"}
_APPLY_PLUGIN = "tools/apply_plugin_main"
_NO_NPU_HERE = ("LiteRT NPU artifacts execute only on a device with the target SoC and LiteRT's vendor "
                "dispatch library; here `edgeseq verify` checks structure only")


def _tools() -> tuple[bool, str]:
    """LiteRT, its converter and the AOT tool."""
    ok, why = tools_available()
    if not ok:
        return ok, why
    if resource(_APPLY_PLUGIN) is None:
        return False, (f"this ai-edge-litert ({sys.platform}) has no {_APPLY_PLUGIN}: LiteRT AOT compilation "
                       f"runs on Linux x86-64")
    return True, ""


class LiteRTAotBackend(Backend):
    """litert-<vendor>: the litert-cpu flatbuffer, compiled ahead of time for one of the vendor's SoCs."""

    # The same flatbuffer as litert-cpu: the cache as explicit I/O, the same schemes.
    capabilities = CAPABILITIES
    distributions = DISTRIBUTIONS

    def __init__(self, vendor: Vendor) -> None:
        self.vendor = vendor

    def available(self) -> tuple[bool, str]:
        """The AOT tools and at least one vendor SDK (as before the backends became one per vendor:
        a missing SDK of this vendor when another's is present shows up in `check`)."""
        ok, why = _tools()
        if not ok:
            return ok, why
        if all(v.sdk_problem(f"litert-{v.name}", v.soc_models()[0]) for v in VENDORS.values()):
            install = " or ".join(f"pip install {v.package}" for v in VENDORS.values())
            return False, f"no NPU vendor SDK installed: {install} (each downloads its SDK at install time)"
        return True, ""

    def can_execute(self) -> tuple[bool, str]:
        return False, _NO_NPU_HERE

    def check(self, recipe: Recipe, target: Target) -> None:
        """Everything this target needs, before any model work: vendor, options, AOT tool, SoC
        (check_target), the recipe's schemes, then the vendor SDK (the slowest to find out)."""
        super().check(recipe, target)
        problem = self.vendor.sdk_problem(target.name, str(target.options["soc_model"]))
        if problem:
            raise InputError(problem)

    def check_target(self, recipe: Recipe, target: Target) -> None:
        if target.backend != self.vendor.name:
            raise InputError(f"target {target.name}: litert NPU backend {target.backend!r} is not available; "
                             f"available: {', '.join(VENDORS)}")
        check_options(target, OPTIONS, {})
        ok, why = _tools()
        if not ok:
            raise InputError(f"target {target.name}: {why}")
        check_options(target, OPTIONS, {"soc_model": self.vendor.soc_models()})

    def lower(self, parts: Seq2SeqParts, recipe: Recipe, target: Target, out: Path,
              calibration: list[Any] | None = None) -> Lowered:
        from ..litert import export
        from .compile import lower_npu

        self.check(recipe, target)
        # The CPU flatbuffer exactly as litert-cpu writes it, then compiled from the file.
        cpu = export.lower_cpu(parts, recipe, out)
        lowered = lower_npu(cpu, self.vendor, str(target.options["soc_model"]), target.name, out)
        lowered.tool_versions = self.versions()
        return lowered

    def open_session(self, artifact: Artifact, threads: int | None = None) -> Session:
        raise InputError(f"{artifact.path}: {_NO_NPU_HERE}")

    def preload(self) -> None:
        preload_interpreter()

    def verify_structure(self, artifact: Artifact) -> dict[str, Any]:
        from .structure import verify_structure

        return verify_structure(artifact)

    def versions(self) -> dict[str, str]:
        """litert-cpu's, and this vendor's SDK package when it is installed."""
        out = LITERT.versions()
        if (ver := installed_version(self.vendor.package)) is not None:
            out[self.vendor.package] = ver
        return out


QUALCOMM = LiteRTAotBackend(VENDORS["qualcomm"])
MEDIATEK = LiteRTAotBackend(VENDORS["mediatek"])
# The registry (backends/__init__.py) finds this package by these names.
RUNTIMES = {"litert-qualcomm": QUALCOMM, "litert-mediatek": MEDIATEK}
