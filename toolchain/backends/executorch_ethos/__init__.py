"""ExecuTorch runtime, Arm Ethos-U NPU delegate (TOSA lowered by Arm's Vela compiler).

Flow per program (encode, decode), following ExecuTorch's Arm backend (export.py):

    torch.export -> .module(check_guards=False)    (torch 2.13: the guards submodule
                                                    otherwise breaks the Arm passes)
    -> prepare_pt2e(EthosUQuantizer: int8 per-channel weights, int8 per-tensor
       activations, symmetric) -> calibrate -> convert_pt2e -> torch.export   (quantize.py)
    -> to_edge_transform_and_lower(EthosUPartitioner) -> TOSA -> Vela -> command
       stream + NPU-encoded weights inside ``model.pte``

Everything on the Ethos-U is integer: there is no dynamic-activation or fp32 mode,
so every int8 scheme of a recipe (8da8w, int8-weight, static-int8) becomes full
static int8 here, with activation ranges from the recipe's calibration inputs, traced
through the same greedy loop as run and verify (toolchain.calibrate: text or audio
inputs, the family's forced decoder prompt).

The artifact holds two programs:

* ``model.pte``: encode and decode for the device (Ethos-U delegate; the CPU side is
  the Cortex-M host). It cannot execute here: the NPU needs the silicon or Arm's
  Corstone FVP.
* ``host_reference.pte``: the *same* quantized graphs (after convert_pt2e, before
  NPU delegation) for ExecuTorch's portable + quantized CPU kernels (session.py): the
  int8 numerics as the quantizer meant them.
* ``tosa/``: each delegated subgraph's TOSA flatbuffer (what Vela compiles) and the
  partitioned program that calls them (subgraphs.py). ``run`` and ``verify`` execute
  these (reference.py): the CPU operators in PyTorch, every delegate call on the TOSA
  reference model, each delegate's int8 outputs checked against its host-reference
  graph on the same inputs. That checks the NPU's integer program (lowering,
  partitioning, TOSA rescales and tables), not Vela's scheduling.

The decode cache is I/O: the Ethos-U delegate has no mutable state, so the caches go in
as inputs and the updated caches come out. In ``model.pte`` they are int8 at the program
boundary, and so are encode's cross K/V and cross_bias (export._int8_boundary: one int8
grid per tensor shared by the program that writes it and the one that reads it, then
ExecuTorch's quantize_io pass drops the boundary quantize/dequantize), and the position
one-hot is a SELECT on the NPU (quantize.select_onehots): no float tensor crosses the
NPU/CPU boundary per step except the logits, and decode is one NPU subgraph. The manifest's
tensors carry their dtype, scale and zero point (a zeroed cache is its zero point).
``host_reference.pte`` keeps float I/O on the same grids (its logits equal the TOSA run's).

Performance here is Vela's estimate, never a measurement (vela.py): per delegated
subgraph, cycles at the system configuration's clock plus SRAM/DRAM use, summed per
program (``estimated_ms``), and the ExecuTorch graph's operators on the NPU vs the CPU
(``npu_op_percent``, with the partitioner's reason for each CPU operator).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import InputError
from ...schemes import QuantScheme, same_for_all
from ..base import Backend, CacheMode, Capabilities, Lowered, Session, check_options
from ..executorch import has_modules

if TYPE_CHECKING:
    from ...artifact import Artifact
    from ...specs import Recipe, Target
    from ...split import Seq2SeqParts

PTE, HOST = "model.pte", "host_reference.pte"
EXECUTES = ("the delegated TOSA subgraphs on the TOSA reference model + CPU for the rest (artifacts "
            "without them: the host reference, the int8 graph before NPU delegation on ExecuTorch CPU kernels)")
STATIC = "static int8"  # per-channel int8 weights, per-tensor int8 activations, ranges calibrated
INT8_SCHEMES = {QuantScheme.W8A8_DYNAMIC: STATIC, QuantScheme.INT8_WEIGHT: STATIC, QuantScheme.STATIC_INT8: STATIC}
ACCELERATORS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u65-512",
                "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024", "ethos-u85-2048")
OPTIONS = {"accelerator": "Ethos-U configuration (Vela --accelerator-config)",
           "system_config": "system configuration in Vela's Arm/vela.ini (clocks, bus widths)",
           "memory_mode": "memory mode in Vela's Arm/vela.ini (where weights and tensors live)"}


class EthosUBackend(Backend):
    capabilities = Capabilities(
        cache_mode=CacheMode.IO,
        schemes=same_for_all(INT8_SCHEMES),
        scheme_note=(f"the Ethos-U runs integer programs only: every component must be one of "
                     f"{', '.join(INT8_SCHEMES)} (all become static int8), e.g. recipe int8"),
        estimates=True,
        executes=EXECUTES)
    distributions = ("executorch", "ethos-u-vela", "tosa-tools")

    def available(self) -> tuple[bool, str]:
        ok, why = has_modules(("executorch", "executorch"), ("ethosu.vela", "ethos-u-vela"),
                              ("tosa_serializer", "tosa-tools"))
        return ok, why + (" (make install adds it)" if why else "")

    def can_execute(self) -> tuple[bool, str]:
        # The NPU program cannot run here; its TOSA subgraphs (reference model) and the host reference can.
        return True, ""

    def check_target(self, recipe: Recipe, target: Target) -> None:
        if target.backend != "ethos-u":
            raise InputError(f"target {target.name}: the Ethos-U backend needs backend: ethos-u, "
                             f"got {target.backend!r}")
        check_options(target, OPTIONS, {"accelerator": ACCELERATORS})

    def lower(self, parts: Seq2SeqParts, recipe: Recipe, target: Target, out: Path,
              calibration: list[Any] | None = None) -> Lowered:
        from .export import lower

        self.check(recipe, target)
        if not calibration:
            raise InputError(f"recipe {recipe.name}: {target.name} quantizes activations statically and needs "
                             f"calibration inputs; none were found (set recipe calibration: to a JSONL file)")
        return lower(parts, target, out, calibration, self.versions())

    def open_session(self, artifact: Artifact, threads: int | None = None) -> Session:
        """The delegated TOSA subgraphs on the TOSA reference model (reference.py); artifacts
        exported before they were kept in the artifact: the host reference (session.py)."""
        if "tosa" in artifact.manifest["programs"]["encode"]:
            from .reference import TosaReferenceSession

            return TosaReferenceSession(artifact, threads)
        from .session import EthosHostSession

        return EthosHostSession(artifact, threads)

    def preload(self) -> None:
        from ..executorch.session import runtime_lib

        runtime_lib()

    def estimate(self, artifact: Artifact, output_len: int) -> dict[str, Any]:
        from .vela import estimate

        return estimate(artifact, output_len)


BACKEND = EthosUBackend()
# The registry (backends/__init__.py) finds this package by these names.
RUNTIMES = {"executorch-ethos-u": BACKEND}
