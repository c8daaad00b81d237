"""Ahead-of-time compilation of the litert-cpu flatbuffer for one SoC, and the artifact it makes.

``ai_edge_litert.aot.aot_compile(model, target=<vendor Target(SoC)>)`` is LiteRT's AOT
pipeline: its MLIR transforms, then tools/apply_plugin_main with the vendor's compiler
plugin (shipped in the ai-edge-litert wheel). The plugin partitions every subgraph and
compiles what the NPU takes into vendor bytecode behind DISPATCH_OP custom ops; the rest
stays builtin ops for the CPU.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import InputError
from ..base import Lowered
from ..litert import SIGNATURES, TFLITE
from .structure import DISPATCH_OP, read_structure, signature_problems
from .vendors import installed_version

if TYPE_CHECKING:
    from .vendors import Vendor


def _log_summary(message: str) -> str:
    """apply_plugin's error names a log file; its error lines say what went wrong."""
    m = re.search(r"See (\S+) for details", message)
    lines: list[str] = []
    if m and Path(m.group(1)).is_file():
        for line in Path(m.group(1)).read_text(errors="replace").splitlines():
            line = line.strip(" \t└")
            if re.search(r"ERROR|Failed|cannot open|Could not", line) and line not in lines:
                lines.append(line)
    detail = " | ".join(lines[:3])
    return f"{detail} (full log: {m.group(1)})" if m and detail else message


def compile_model(cpu_file: Path, vendor: Vendor, soc: str, out_dir: Path,
                  target_name: str) -> tuple[str, str, Any, float]:
    """aot_compile the CPU model for one SoC; write the compiled model into out_dir.

    Returns (file name, backend target id, partition stats or None, seconds)."""
    from ai_edge_litert.aot import aot_compile as aot

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix=".aot-", dir=out_dir) as work:
        try:  # tqdm bars (stderr) and "Skipping failed compilation" (stdout) are not for users
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                result = aot.aot_compile(str(cpu_file), output_dir=work, target=vendor.aot_target(soc),
                                         keep_going=False)
        except ValueError as e:
            raise InputError(f"target {target_name}: {vendor.manufacturer} AOT compilation for {soc} failed: "
                             f"{_log_summary(str(e))}") from None
        if len(result.models_with_backend) != 1:
            raise RuntimeError(f"aot_compile returned {len(result.models_with_backend)} models for one SoC")
        backend, model = result.models_with_backend[0]
        name = f"model_{backend.target_id or vendor.name}.tflite"
        model.save(out_dir / name, export_only=True)
    return name, backend.target_id, model.partition_stats, time.time() - t0


def lower_npu(cpu: Lowered, vendor: Vendor, soc: str, target_name: str, out_dir: Path) -> Lowered:
    """Compile the CPU model litert wrote into out_dir (`cpu`: what it returned) for `soc`.

    The artifact keeps both models: the compiled one, which the programs point to, and
    ``model.tflite``, the fallback a device without that NPU loads (as LiteRT's AI Pack
    export does). The ``litert_aot`` report section records vendor, SoC, the compiler's
    partition statistics per signature, the op counts of the compiled model (DISPATCH_OP vs
    ops left on the CPU) and the SDK package version; ``delegation`` the same per program."""
    from ...hashing import sha256_file

    cpu_file = out_dir / TFLITE
    cpu_struct = read_structure(cpu_file.read_bytes())
    name, target_id, stats, seconds = compile_model(cpu_file, vendor, soc, out_dir, target_name)
    struct = read_structure((out_dir / name).read_bytes())

    programs = cpu.programs
    problems = signature_problems(struct, programs)
    if problems:
        raise RuntimeError(f"{name}: {problems[0]} after AOT compilation")
    for prog in SIGNATURES:
        programs[prog].update(file=name, method=prog, cpu_fallback_file=TFLITE)

    sig_of = {s["subgraph"]: k for k, s in cpu_struct["signatures"].items()}
    partitions = None if stats is None else [
        {"signature": sig_of.get(p.subgraph_index, f"subgraph_{p.subgraph_index}"), "subgraph": p.subgraph_index,
         "ops_on_npu": p.num_ops_offloaded, "ops_total": p.num_total_ops,
         "npu_partitions": p.num_partitions_offloaded} for p in stats.subgraph_stats]
    compiled_ops = {k: s["ops"] for k, s in struct["signatures"].items()}
    npu = {
        "vendor": vendor.name, "soc_manufacturer": vendor.manufacturer, "soc_model": soc, "aot_target": target_id,
        "file": name, "cpu_fallback_file": TFLITE,
        "compiler_plugin": Path(vendor.plugin).name, "sdk_package": vendor.package,
        "sdk_package_version": installed_version(vendor.package),
        "compile_seconds": round(seconds, 2),
        # What the compiler reported; None when it reports nothing (a no-op plugin).
        "partitions": partitions,
        "dispatch_ops": {k: ops.get(DISPATCH_OP, 0) for k, ops in compiled_ops.items()},
        "cpu_ops": {k: {op: n for op, n in ops.items() if op != DISPATCH_OP} for k, ops in compiled_ops.items()},
        "build_stamp": struct["build_stamp"],
        "cpu_model_sha256": sha256_file(cpu_file),
    }
    report = {**cpu.report, "litert_aot": npu}
    if isinstance(report.get("litert"), dict):
        report["litert"] = {**report["litert"], "delegate": (
            f"{vendor.manufacturer} {soc} NPU through DISPATCH_OP (compiled ahead of time); ops it did not take "
            f"run on the CPU; {TFLITE} is the CPU-only fallback")}
    if partitions is not None:
        report["delegation"] = {p["signature"]: {
            "delegate": f"{vendor.manufacturer} {soc} NPU", "delegated_subgraphs": p["npu_partitions"],
            "delegated_nodes": p["ops_on_npu"], "portable_nodes": p["ops_total"] - p["ops_on_npu"],
            "delegated_fraction": round(p["ops_on_npu"] / p["ops_total"], 4) if p["ops_total"] else 1.0,
            "portable_ops": npu["cpu_ops"].get(p["signature"], {})} for p in partitions}
    return Lowered(files=[name, TFLITE], programs=programs, report=report)
