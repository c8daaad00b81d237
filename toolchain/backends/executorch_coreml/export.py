"""executorch-coreml lowering: both programs through ExecuTorch's CoreMLPartitioner into one .pte.

With ``take_over_mutable_buffer=True`` the decode self-attention caches (buffers updated in
place) become Core ML state inside the delegate. Its weights live inside the delegate blobs,
so there is no ``.ptd`` file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..base import Lowered
from ..executorch.export import delegation, runtime_ops
from . import DELEGATE, PTE
from .structure import delegate_blobs

if TYPE_CHECKING:
    from ...split import Seq2SeqParts


def lower(parts: Seq2SeqParts, out_dir: Path, tool_versions: dict[str, str]) -> Lowered:
    import coremltools as ct
    import torch
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    from ..coreml.convert import fp16_safe_masks

    clamped = fp16_safe_masks(parts)  # fp16 compute: -1e9 masks would keep ops in fp32 (off the ANE)
    t0 = time.time()
    with torch.no_grad():
        programs = {"encode": torch.export.export(parts.encode, parts.encode_inputs(), strict=False),
                    "decode": torch.export.export(parts.decode, parts.decode_inputs(), strict=False)}
    specs = CoreMLBackend.generate_compile_specs(minimum_deployment_target=ct.target.iOS18,
                                                 compute_precision=ct.precision.FLOAT16,
                                                 compute_unit=ct.ComputeUnit.CPU_AND_NE)
    edge = to_edge_transform_and_lower(
        programs, partitioner=[CoreMLPartitioner(compile_specs=specs, take_over_mutable_buffer=True)])
    report = {name: delegation(edge.exported_program(name).graph_module, DELEGATE) for name in programs}
    et = edge.to_executorch(ExecutorchBackendConfig())
    runtime_ops(et, report)
    data = et.buffer
    (out_dir / PTE).write_bytes(data)
    blobs = delegate_blobs(data)
    for name in report:
        report[name]["delegate_blobs"] = blobs.get(name, [])
    sig = parts.describe()
    sig["encode"].update(file=PTE, method="encode")
    sig["decode"].update(file=PTE, method="decode",
                         kv_cache="Core ML state inside the decode delegate (cache_k_*, cache_v_*)")
    return Lowered(files=[PTE], programs=sig,
                   report={"delegation": report, "lower_seconds": round(time.time() - t0, 1),
                           "coreml": {"minimum_deployment_target": "iOS18", "compute_units": "CPU_AND_NE",
                                      "compute_precision": "float16",
                                      "fp16_clamped_buffers": clamped}},
                   tool_versions=tool_versions)
