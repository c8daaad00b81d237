"""torch -> ONNX for the split's programs, and the artifact's files.

Why one shared weights file: the graphs are separate models, and the embedding is used by
several (the token gather in each; the tied lm_head in decode). Written naively, each file
carries its own copy of the largest tensor of the model (66 MB of a t5-small's 240). ONNX
external data names a file, an offset and a length per initializer, so every graph can
point at one deduplicated file: each distinct tensor is stored once. Small tensors (shape
constants, norms) stay inline.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..base import Lowered
from ..tied import TIED_TO

if TYPE_CHECKING:
    import onnx
    import torch

    from ...specs import Recipe
    from ...split import Seq2SeqParts

ENCODE, DECODE, WEIGHTS = "encode.onnx", "decode.onnx", "weights.data"
OPSET = 20
# Initializers at least this large go to the shared external file; smaller ones stay inline.
_EXTERNAL_MIN_BYTES = 1024
_ALIGN = 64


def export_program(module: torch.nn.Module, args: tuple[torch.Tensor, ...], input_names: list[str],
                   output_names: list[str]) -> onnx.ModelProto:
    """One program through the dynamo exporter (torch.export, then ONNX translation and
    onnxscript's optimizer: constant folding turns each Linear weight into a transposed
    initializer feeding a MatMul)."""
    import contextlib
    import io

    import torch

    # The exporter narrates every stage on stdout; `edgeseq run` prints only the generated text.
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, optimize=True,
                                    input_names=input_names, output_names=output_names, verbose=False)
    if program is None:  # dynamo=True returns the ONNXProgram; None only in the legacy exporter
        raise RuntimeError("torch.onnx.export returned no program")
    model = program.model_proto
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    if got_in != input_names or got_out != output_names:
        raise RuntimeError(f"ONNX export renamed the program's IO: {got_in} -> {got_out}")
    return model


def write_shared(models: dict[str, onnx.ModelProto], out_dir: Path) -> list[str]:
    """Save each model (file name -> ModelProto) with its large initializers in one
    deduplicated external file; returns the files written.

    Initializers are keyed by content (dtype, shape, bytes): the embedding that both
    programs read is written once and both graphs point at the same offset.
    """
    import onnx
    from onnx import numpy_helper

    seen: dict[bytes, tuple[int, int]] = {}
    offset = 0
    with (out_dir / WEIGHTS).open("wb") as f:
        for name, model in models.items():
            for init in model.graph.initializer:
                if init.data_location == onnx.TensorProto.EXTERNAL:
                    raise RuntimeError(f"{name}: initializer {init.name} is already external")
                arr = numpy_helper.to_array(init)
                if arr.nbytes < _EXTERNAL_MIN_BYTES:
                    continue
                raw = np.ascontiguousarray(arr).tobytes()
                key = hashlib.sha256(f"{arr.dtype}{arr.shape}".encode() + raw).digest()
                if key not in seen:
                    pad_to = -offset % _ALIGN
                    f.write(b"\0" * pad_to)
                    offset += pad_to
                    f.write(raw)
                    seen[key] = (offset, len(raw))
                    offset += len(raw)
                for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "raw_data"):
                    init.ClearField(field)
                del init.external_data[:]
                for k, v in (("location", WEIGHTS), ("offset", seen[key][0]), ("length", seen[key][1])):
                    entry = init.external_data.add()
                    entry.key, entry.value = k, str(v)
                init.data_location = onnx.TensorProto.EXTERNAL
    for name, model in models.items():
        for node in model.graph.node:  # the exporter's provenance: stack traces with source paths
            del node.metadata_props[:]
        onnx.save(model, out_dir / name)
    return [*models, WEIGHTS]


def lower(parts: Seq2SeqParts, recipe: Recipe, provider: str, out_dir: Path, calibration: list[Any] | None,
          tool_versions: dict[str, str], weight_bits: int) -> Lowered:
    """Export encode, the shorter encodes and decode; quantize them per the recipe, int8 weights
    on the `weight_bits` grid (a tied head pointed at the embedding's table, tied.py); write the
    graphs and weights.data into `out_dir`."""
    import onnx

    from ...schemes import Component, QuantScheme, requested
    from ...split import text_inputs
    from . import quantize, tied

    enc = export_program(parts.encode, parts.encode_inputs(), parts.encode_input_names(),
                         parts.encode_output_names())
    dec = export_program(parts.decode, parts.decode_inputs(), parts.decode_input_names(),
                         parts.decode_output_names())
    shorter = {n: export_program(m, tuple(t.example() for t in text_inputs(n)), parts.encode_input_names(),
                                 parts.encode_output_names()) for n, m in sorted(parts.encode_buckets.items())}
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".quant-") as tmp:
        graphs, quantized = quantize.quantize_programs(
            {"encode": enc, **{f"encode_{n}": m for n, m in shorter.items()}, "decode": dec},
            parts, recipe, calibration, Path(tmp), weight_bits)
    is_tied = getattr(parts.decode, "lm_head", None) is None
    not_shared = tied.share_table(graphs["decode"]) if is_tied else ""
    files = {"encode": ENCODE, **{f"encode_{n}": f"encode_{n}.onnx" for n in shorter}, "decode": DECODE}
    written = write_shared({files[p]: graphs[p] for p in files}, out_dir)
    for file in files.values():
        onnx.checker.check_model(str(out_dir / file), full_check=True)

    sig = parts.describe()
    if shorter:  # inputs [1, L] each; outputs as the full encode's
        sig["encode"]["lengths"] = [{"length": n, "file": f"encode_{n}.onnx"} for n in shorter]
    report: dict[str, Any] = {}
    if any(quantized[p] for p in files):
        report["weight_bits"] = weight_bits
    for prog, file in files.items():
        model = graphs[prog]
        report[prog] = {"nodes": len(model.graph.node),
                        "op_counts": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
                        "quantized_nodes": quantized[prog]}
        if prog in sig:
            opsets = {imp.domain or "ai.onnx": imp.version for imp in model.opset_import}
            sig[prog].update(file=file, data_file=WEIGHTS, provider=provider,
                             opset=opsets.get("ai.onnx"), opsets=opsets, ir_version=model.ir_version)
    if is_tied:  # graphs now point into weights.data: read back where the two tables are
        schemes = requested(recipe)
        emb, head = ("fp32" if schemes[c] == QuantScheme.NONE else schemes[c].value
                     for c in (Component.EMBEDDINGS, Component.LM_HEAD))
        pair = (emb, head)
        report["lm_head"] = {"tied_to": TIED_TO, "storage": tied.storage(graphs["decode"], pair, not_shared)}
    sig["decode"]["kv_cache"] = ("explicit IO: inputs cache_k_l [H, Dh, T], cache_v_l [H, T, Dh] after the "
                                 "cross K/V; outputs new_cache_* after the logits; zeros before position 0")
    return Lowered(files=written, programs=sig, report={"onnx": report}, tool_versions=tool_versions)
