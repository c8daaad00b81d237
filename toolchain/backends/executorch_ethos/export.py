"""Ethos-U lowering: quantize both programs (quantize.py), lower them once for the host
reference and once through the Ethos-U partitioner (TOSA -> Vela), and report where each
operator runs and what Vela estimates (vela.py)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base import Lowered
from ..executorch import provenance, retraces
from . import HOST, PTE, quantize, subgraphs, vela

if TYPE_CHECKING:
    from ...specs import Target
    from ...split import Seq2SeqParts

# Why a node stays on the Cortex-M when the partitioner did not give a reason: these
# are the boundary conversions ExecuTorch's Arm flow leaves outside every partition.
_BOUNDARY = {
    "quantized_decomposed_quantize_per_tensor_default":
        "program boundary: a float input (or cache) is quantized to int8 before the NPU",
    "quantized_decomposed_dequantize_per_tensor_default":
        "program boundary: an int8 NPU output is dequantized to float for the caller",
    "dim_order_ops__to_dim_order_copy_default":
        "program boundary: int64 input cast to int32 (the NPU has no int64)",
}


def _compile_spec(target: Target, intermediates: Path | None = None) -> Any:
    from executorch.backends.arm.ethosu import EthosUCompileSpec

    o = target.options
    spec = EthosUCompileSpec(o["accelerator"], system_config=o.get("system_config"),
                             memory_mode=o.get("memory_mode"))
    if intermediates is not None:  # the TOSA flatbuffer of every delegated subgraph lands here
        spec.dump_intermediate_artifacts_to(str(intermediates))
    return spec


def _flag(spec: Any, name: str) -> str | None:
    """A Vela flag's value from the compile spec (the spec fills in per-accelerator defaults)."""
    return next((f.split("=", 1)[1] for f in spec.compiler_flags if f.startswith(f"--{name}=")), None)


def _partitioner(spec: Any) -> Any:
    """EthosUPartitioner that keeps the partitioner's own reasons for rejecting nodes."""
    from executorch.backends.arm.ethosu import EthosUPartitioner

    class Reporting(EthosUPartitioner):
        rejected: dict[str, str] = {}

        def _tag_module(self, module, containing_program, reporter, *args, **kwargs):
            tags = super()._tag_module(module, containing_program, reporter, *args, **kwargs)
            for node, reason in getattr(reporter, "_rejected_nodes", {}).items():
                # Keep the sentence, not the op schema some reasons append.
                self.rejected[node.name] = reason.split(": schema =")[0][:200]
            return tags

    p = Reporting(spec)
    p.rejected = {}
    return p


def _placement(graph_module: Any, rejected: dict[str, str]) -> dict[str, Any]:
    """Operators of the lowered ExecuTorch graph on the NPU vs the CPU, with reasons."""
    from ..executorch.export import count_delegation

    info, npu, cpu = count_delegation(graph_module)
    reasons: dict[str, set[str]] = {}
    for node_name, reason in rejected.items():  # op type = node name without its _N suffix, as ExecuTorch counts
        reasons.setdefault(re.sub(r"_\d+$", "", node_name), set()).add(reason)
    cpu_ops = {}
    for op, n in sorted(cpu.items()):
        why = "; ".join(sorted(reasons.get(op, ()))) or _BOUNDARY.get(
            op, "not claimed by the Ethos-U partitioner (no reason reported)")
        cpu_ops[op] = {"count": n, "why": why}
    total = npu + sum(cpu.values())
    return {"delegate": "EthosUBackend", "delegated_subgraphs": info.num_delegated_subgraphs,
            "npu_nodes": npu, "cpu_nodes": sum(cpu.values()),
            "npu_op_percent": round(100.0 * npu / total, 2) if total else 100.0, "cpu_ops": cpu_ops}


def _int8_boundary(gms: dict[str, Any], parts: Seq2SeqParts) -> dict[str, dict[str, dict[str, tuple]]]:
    """Choose one int8 grid per tensor that passes between programs, on the converted graphs:
    encode's outputs (cross_bias, cross K/V) = decode's inputs of the same name, and decode's
    cache_* inputs = its new_cache_* outputs (the next step's inputs). Returns, per program and
    side, name -> (scale, zero_point) of the tensors that cross the boundary as int8."""
    enc_out, dec_in, dec_out = (parts.encode_output_names(), parts.decode_input_names(),
                                parts.decode_output_names())
    io: dict[str, dict[str, dict[str, tuple]]] = {"encode": {"outputs": {}}, "decode": {"inputs": {}, "outputs": {}}}
    pairs = [(("encode", "outputs", n, quantize.output_quantize(gms["encode"], enc_out.index(n))),
              ("decode", "inputs", n, quantize.input_quantize(gms["decode"], dec_in.index(n))))
             for n in enc_out if n in dec_in]
    pairs += [(("decode", "inputs", c, quantize.input_quantize(gms["decode"], dec_in.index(c))),
               ("decode", "outputs", f"new_{c}", quantize.output_quantize(gms["decode"], dec_out.index(f"new_{c}"))))
              for c in parts.cache_names()]
    for pair in pairs:
        if any(node is None for *_, node in pair):  # not quantized at the boundary: stays float there
            continue
        qparams = quantize.share_qparams([node for *_, node in pair])
        for program, side, name, _ in pair:
            io[program][side][name] = qparams
    return io


def _keep_int8_io(program: Any, name: str, io: dict[str, dict[str, tuple]], parts: Seq2SeqParts) -> None:
    """Drop the boundary quantize/dequantize of the `io` tensors from the partitioned program
    `name` (ExecuTorch's quantize_io pass): they enter and leave as int8, straight into the delegate."""
    from executorch.exir.passes.quantize_io_pass import quantize_input, quantize_output

    inputs = parts.encode_input_names() if name == "encode" else parts.decode_input_names()
    outputs = parts.encode_output_names() if name == "encode" else parts.decode_output_names()
    for tensor in io.get("inputs", {}):
        quantize_input(program, inputs.index(tensor))
    for tensor in io.get("outputs", {}):
        quantize_output(program, outputs.index(tensor))


def lower(parts: Seq2SeqParts, target: Target, out_dir: Path, calibration: list[Any],
          tool_versions: dict[str, str]) -> Lowered:
    """`calibration`: the recipe's calibration inputs (token id lists, or encode arrays for
    audio); both programs' activation ranges come from the fp32 split run greedily on them."""
    import torch
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    from ...calibrate import trace

    samples = trace(parts, calibration)
    args = {"encode": parts.encode_inputs(), "decode": parts.decode_inputs()}
    modules = {"encode": parts.encode, "decode": parts.decode}
    npu: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgeseq-ethos-") as tmp_name, vela.stdout_to_stderr():
        tmp = Path(tmp_name)
        quantized, specs, partitioners, gms = {}, {}, {}, {}
        for name in modules:
            specs[name] = _compile_spec(target, tmp / name)
            gms[name] = quantize.quantize(modules[name], args[name], getattr(samples, name), specs[name])
        io = _int8_boundary(gms, parts)
        for name in modules:
            quantized[name] = torch.export.export(gms[name], args[name], strict=False)
            partitioners[name] = _partitioner(specs[name])
        config = EdgeCompileConfig(_check_ir_validity=False)
        # ExecuTorch's export-time cuts that leave the program the same bytes (executorch/provenance.py,
        # retraces.py): the host reference and the partitioned program retrace ~40 passes each.
        with provenance.shared(), retraces.skipping():
            host = to_edge_transform_and_lower(dict(quantized), compile_config=config).to_executorch()
            device = to_edge_transform_and_lower(dict(quantized), compile_config=config,
                                                 partitioner={n: [p] for n, p in partitioners.items()})
            kept = {}
            for name in modules:
                program = device.exported_program(name)
                _keep_int8_io(program, name, io[name], parts)
                placement = _placement(program.graph_module, partitioners[name].rejected)
                # The TOSA flatbuffers Vela compiles, kept in the artifact with the partitioned program
                # (verify runs them on the TOSA reference model); the Vela report follows the same
                # delegate order, so its subgraph n is delegate call n.
                kept[name] = subgraphs.keep(program, name, tmp / name, out_dir)
                report = vela.report([out_dir / s["file"] for s in kept[name]["subgraphs"]], specs[name],
                                     tmp / f"{name}-report")
                npu[name] = {**placement, **report}
            et = device.to_executorch()
    (out_dir / PTE).write_bytes(et.buffer)
    (out_dir / HOST).write_bytes(host.buffer)
    sig = parts.describe()
    clock = next((g["clock_hz"] for p in npu.values() for g in p["subgraphs"]), None)
    for name in sig:
        sig[name].update(file=PTE, method=name, host_reference=HOST, quantization={"all": "static-int8"},
                         npu_op_percent=npu[name]["npu_op_percent"], estimated_ms=npu[name]["estimated_ms"],
                         tosa=kept[name])
    for name, sides in io.items():
        for side, tensors in sides.items():
            for t in sig[name][side]:
                if t["name"] in tensors:
                    t.update(dtype="int8", scale=tensors[t["name"]][0], zero_point=tensors[t["name"]][1])
    for c in sig["decode"]["cache"]:  # a zeroed cache is its zero point
        c.update(dtype="int8", scale=io["decode"]["inputs"][c["name"]][0],
                 zero_point=io["decode"]["inputs"][c["name"]][1])
    sig["decode"]["kv_cache"] = ("inputs/outputs (cache_k_*, cache_v_*), int8 at the program boundary (the "
                                 "cache's scale and zero point on the tensors); cross K/V int8 from encode")
    summary = {"accelerator": target.options["accelerator"],
               "system_config": _flag(specs["encode"], "system-config"),
               "memory_mode": _flag(specs["encode"], "memory-mode"),
               "clock_mhz": clock / 1e6 if clock else None,
               "estimate": "Vela's compile-time estimate of NPU time (cycles / clock); the Cortex-M's "
                           "quantize/dequantize at the program boundary is not included",
               "programs": npu}
    return Lowered(files=[PTE], programs=sig, report={"npu": summary}, tool_versions=tool_versions,
                   verification_files=[HOST, *subgraphs.files(kept)])
