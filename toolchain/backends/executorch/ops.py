"""Operators per call of a lowered ExecuTorch program, read from what the delegates compiled.

The edge graph's node count is not what runs: a dynamically quantized linear is five edge
nodes (choose_qparams, quantize, dequantize of the activations, dequantize of the weight,
linear) and two XNNPACK operators (a convert to int8, then the fully-connected GEMM); weight
dequantizes fold into the GEMM. So the count comes from the XNNPACK payload itself: its
header (XNNHeader, `XH00`) locates a flatbuffer of the schema shipped with ExecuTorch's
XNNPACK backend, whose `xnodes` are exactly the operators XNNPACK creates and runs (and sets
up, every call) per delegate call. Counting it once at export puts "operators per decode
step" in the manifest, where the decode program's shape (fused projections, shared masks)
shows up as a number.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any


def _xnnpack_nodes(payload: bytes) -> Counter[str]:
    """XNNPACK operator kinds of one delegate payload -> count."""
    from importlib import resources

    from executorch.backends.xnnpack import serialization
    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
    from executorch.exir._serialize._flatbuffer import _flatc_decompile

    header = XNNHeader.from_bytes(payload[: XNNHeader.EXPECTED_LENGTH])
    flat = payload[header.flatbuffer_offset: header.flatbuffer_offset + header.flatbuffer_size]
    with tempfile.TemporaryDirectory() as d:
        schema, binary = Path(d) / "schema.fbs", Path(d) / "graph.bin"
        schema.write_bytes(resources.files(serialization).joinpath("schema.fbs").read_bytes())
        binary.write_bytes(flat)
        _flatc_decompile(d, str(schema), str(binary), ["--raw-binary"])
        # flatc writes non-finite floats (a ReLU's output_max) as bare inf/nan: not JSON.
        text = re.sub(r"(?<![\w\"])(-?)inf\b", r"\1Infinity", (Path(d) / "graph.json").read_text())
        graph = json.loads(re.sub(r"(?<![\w\"])nan\b", "NaN", text))
    return Counter(str(n.get("xnode_union_type", "?")).removeprefix("XNN") for n in graph.get("xnodes", []))


def delegate_ops(graph_module: Any) -> dict[str, Any]:
    """Per program: the operators its delegate calls run (XNNPACK payloads decoded; other
    delegates are counted as one call each) and the kinds, most frequent first."""
    kinds: Counter[str] = Counter()
    calls = 0
    counted = True
    for name, module in graph_module.named_children():
        backend = getattr(module, "backend_id", None)
        if backend is None or not name.startswith("lowered_module"):
            continue
        calls += 1
        if backend == "XnnpackBackend":
            kinds += _xnnpack_nodes(bytes(module.processed_bytes))
        else:
            counted = False
    out: dict[str, Any] = {"delegate_calls": calls}
    if counted:
        out["delegate_ops"] = sum(kinds.values())
        out["delegate_op_kinds"] = dict(kinds.most_common())
    return out
