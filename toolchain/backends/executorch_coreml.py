"""ExecuTorch with the Core ML delegate: the split in one ``.pte`` whose methods are Core ML blobs.

Target ``executorch-coreml`` (runtime ``executorch``, backend ``coreml``). The same
two programs as every other target (``encode``, ``decode``; see toolchain/split.py)
go through ``to_edge_transform_and_lower`` with ExecuTorch's ``CoreMLPartitioner``:
each method becomes one Core ML delegate (an ML program, iOS 18, fp16 compute,
``CPU_AND_NE``) plus whatever ExecuTorch keeps on its portable kernels. The backend
puts both methods into one multifunction mlpackage, stored once in the .pte's
named data (see ``delegate_blobs``). With
``take_over_mutable_buffer=True`` the decode self-attention caches (buffers updated
in place) become Core ML *state* inside the delegate, as in the plain Core ML target.

Lowering works on any OS (coremltools converts on Linux). Running needs an
ExecuTorch runtime built with the Core ML backend (macOS/iOS): the pip wheel on
Linux registers no ``CoreMLBackend``, so ``open`` refuses with a one-line error.

This module is the ``backend == "coreml"`` branch of toolchain/backends/executorch.py
(check / lower / open); its weights live inside the delegate blobs, so there is no
``.ptd`` file.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any


from . import Lowered

PTE = "model.pte"
CACHE_MODE = "buffer"
DELEGATE = "CoreMLBackend"
# Core ML's own precision is the recipe here: weight compression for this delegate would go
# through coremltools' PT2E quantizer, which this target does not offer yet.
SCHEMES = {"none": "fp16 compute (Core ML)", "fp16": "fp16 compute (Core ML)"}


def available() -> tuple[bool, str]:
    import importlib.util

    for pkg, dist in (("executorch", "executorch"), ("coremltools", "coremltools")):
        if importlib.util.find_spec(pkg) is None:
            return False, f"python package {dist!r} not installed"
    return True, ""


def can_execute() -> tuple[bool, str]:
    """Whether this Python's ExecuTorch runtime has the Core ML backend; else why not, in one line."""
    from .executorch import runtime_lib

    registered = runtime_lib()._get_registered_backend_names()
    if DELEGATE in registered:
        return True, ""
    return False, (f"this ExecuTorch runtime has no {DELEGATE} (registered: {', '.join(registered)}); "
                   f"executorch-coreml artifacts run on macOS/iOS with ExecuTorch built with Core ML")


def check(recipe, target) -> None:
    from ..errors import InputError

    for comp, scheme in recipe.quantization.items():
        if scheme not in SCHEMES:
            raise InputError(f"recipe {recipe.name}: {comp}={scheme} is not supported by {target.name}; "
                             f"it supports: {', '.join(SCHEMES)}")


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"executorch": version("executorch"), "coremltools": version("coremltools")}


def _delegation(graph_module) -> dict[str, Any]:
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    portable, delegated = Counter(), 0
    for op, stats in info.delegation_by_operator.items():
        if op == "getitem":  # bookkeeping, never a kernel
            continue
        delegated += stats.delegated
        if stats.non_delegated:
            portable[op] += stats.non_delegated
    total = delegated + sum(portable.values())
    return {"delegate": DELEGATE, "delegated_subgraphs": info.num_delegated_subgraphs,
            "delegated_nodes": delegated, "portable_nodes": sum(portable.values()),
            "delegated_fraction": round(delegated / total, 4) if total else 1.0,
            "portable_ops": dict(sorted(portable.items()))}


def delegate_blobs(pte: bytes) -> dict[str, list[dict[str, Any]]]:
    """Per method: its delegates and the Core ML model bytes they point to, read back from the .pte.

    ExecuTorch's Core ML backend lowers all methods into one multifunction mlpackage
    stored once in the program's named data; each method's inline delegate blob is a
    small reference, b'CMJR' + JSON {"key": <named data key>, "functionName": <method>}.
    """
    import json

    from executorch.exir._serialize._program import deserialize_pte_binary

    f = deserialize_pte_binary(pte)
    prog, named = f.program, f.named_data
    out = {}
    for plan in prog.execution_plan:
        blobs = []
        for d in plan.delegates:
            inline = bytes(prog.backend_delegate_data[d.processed.index].data)
            entry = {"id": d.id, "inline_bytes": len(inline)}
            if inline.startswith(b"CMJR"):
                ref = json.loads(inline[4:])
                data = named.pte_data.get(ref["key"]) if named is not None else None
                entry.update(function=ref.get("functionName"), key=ref["key"],
                             model_bytes=len(named.buffers[data.buffer_index]) if data is not None else 0)
            blobs.append(entry)
        out[plan.name] = blobs
    return out


def lower(parts, recipe, target, out_dir: Path, calibration: list[list[int]] | None = None) -> Lowered:
    import coremltools as ct
    import torch
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    if parts.cache_mode != CACHE_MODE:
        raise ValueError(f"executorch-coreml needs cache_mode={CACHE_MODE!r}, got {parts.cache_mode!r}")
    check(recipe, target)
    from .coreml.convert import fp16_safe_masks

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
    report = {name: _delegation(edge.exported_program(name).graph_module) for name in programs}
    et = edge.to_executorch(ExecutorchBackendConfig())
    for plan in et.executorch_program.execution_plan:
        report[plan.name]["runtime_ops"] = sorted(o.name for o in plan.operators)
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
                   tool_versions=versions())


def verify_structure(artifact) -> dict[str, Any]:
    """What can be checked without the Core ML runtime: methods, delegates and their model blob."""
    progs = artifact.manifest["programs"]
    blobs = delegate_blobs(artifact.file(progs["encode"]["file"]).read_bytes())
    failures = []
    for name in ("encode", "decode"):
        entries = blobs.get(name)
        if not entries:
            failures.append(f"method {name} missing or not delegated")
        elif any(e["id"] != DELEGATE or not e.get("model_bytes") for e in entries):
            failures.append(f"method {name}: delegate is not a {DELEGATE} blob with a model: {entries}")
    t = artifact.manifest["target"]
    return {"runtime": f"{t['runtime']}/{t['backend']}",
            "checked": ["file hashes", "methods encode/decode present", f"each method is one {DELEGATE} delegate",
                        "the Core ML model blob is inside the .pte"],
            "numerics": "not run: needs an ExecuTorch runtime with CoreMLBackend (macOS/iOS)",
            "delegates": blobs, "passed": not failures, "failures": failures}


def open(artifact, threads: int | None = None):  # noqa: A001 (the interface's name)
    """The ExecuTorch session (same program layout, no .ptd), where the runtime has CoreMLBackend."""
    from ..errors import InputError
    from .executorch import ExecuTorchSession

    ok, why = can_execute()
    if not ok:
        raise InputError(why)
    return ExecuTorchSession(artifact, threads)
