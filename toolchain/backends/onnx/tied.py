"""A tied table stored once in ``weights.data``, and the manifest's word on it.

What quantization leaves for a tied head (int8 recipes): the token embedding is our
``quantize.quantize_embeddings`` rewrite, a Gather on ``<table>.int8 int8[V, D]`` (symmetric,
one scale per row: ``max|row| / qmax``, round half to even, clip to +-qmax; qmax is 64 on the
target's default 7-bit grid, 127 on the 8-bit one) times a Gather on
``<table>.scale float[V, 1]``. The head is the exported ``x [1, D] @ E^T`` as a MatMul on a
``[D, V]`` copy of the table (``quantize._gemm_to_matmul``), which ``onnxruntime.quantization``
turns into int8 ``[D, V]`` weights per output channel, symmetric (zero points all 0), scale
``2 * max|column| / (2 * qmax)`` (``reduce_range`` on the 7-bit grid): the same numbers as the
embedding's, transposed (T5's ``d_model**-0.5`` is a Mul on the head's *input*, not folded into
the weights). Content-keyed ``write_shared`` cannot see it: [D, V] and [V, D] are different
bytes, so the table was stored twice (t5-small int8: 77.7 MB, of which 16.4 MB the second copy).

`share_table` makes the head read the embedding's own tensors when they are bit-equal: its
weights become ``Transpose(<table>.int8)`` and its scales ``Reshape(<table>.scale, [-1])``.
Both are constant-folded when ONNX Runtime loads the graph (before its int8 MatMul fusions
and weight prepacking), so the kernels, the numbers and the speed are the ones of the
two-copy graph; only the file holds the table once. The same holds for static-int8 (QDQ:
the head's DequantizeLinear reads the transposed table). When the bytes are not equal (another
quantizer's rounding), nothing is changed and `storage` says why.

`storage` reads the result back from the written graphs: the table is stored once when the
head's weights (through Transpose / DequantizeLinear / Reshape) and decode's embedding
gather read the same bytes of ``weights.data``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..tied import storage as tied_storage

if TYPE_CHECKING:
    import onnx

HEADS = ("MatMul", "MatMulInteger", "Gemm")
# Ops between the head and the logits output (dequantize, static-int8's output Q/DQ pair, bias,
# softcapping, reshape).
_AFTER_HEAD = ("Mul", "Cast", "Add", "Div", "Tanh", "Reshape", "Squeeze", "Unsqueeze", "QuantizeLinear",
               "DequantizeLinear")
# Ops between a weight initializer and the op that reads it.
_WEIGHT_PATH = ("Transpose", "DequantizeLinear", "Reshape", "Cast")


def _producers(model: onnx.ModelProto) -> dict[str, Any]:
    return {o: n for n in model.graph.node for o in n.output}


def head_node(model: onnx.ModelProto) -> Any | None:
    """The op that computes the logits (graph output 0): the nearest MatMul-like op behind it."""
    prod = _producers(model)
    frontier = [model.graph.output[0].name]
    for _ in range(8):
        nodes = [prod[t] for t in frontier if t in prod]
        head = next((n for n in nodes if n.op_type in HEADS), None)
        if head is not None:
            return head
        frontier = [i for n in nodes if n.op_type in _AFTER_HEAD for i in n.input]
    return None


def _source(model: onnx.ModelProto, tensor: str) -> str:
    """The initializer a tensor is computed from through Transpose/DequantizeLinear/Reshape/Cast
    (their data input), or "" when it is not a constant."""
    prod, inits = _producers(model), {i.name for i in model.graph.initializer}
    while tensor not in inits:
        node = prod.get(tensor)
        if node is None or node.op_type not in _WEIGHT_PATH:
            return ""
        tensor = node.input[0]
    return tensor


def _table_gather(model: onnx.ModelProto, vocab: int) -> str:
    """The table initializer of decode's token-embedding Gather: 2-D, V rows, more than one column."""
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        src = _source(model, node.input[0]) if node.op_type == "Gather" else ""
        dims = list(inits[src].dims) if src else []
        if len(dims) == 2 and dims[0] == vocab and dims[1] > 1:
            return src
    return ""


def _vocab(model: onnx.ModelProto) -> int:
    return int(model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value)


def share_table(model: onnx.ModelProto) -> str:
    """Point a tied head's int8 weights and scales at the embedding's ``<table>.int8`` and
    ``<table>.scale`` (module docstring), in place; returns "" or why they stay apart.
    Nothing to do when the head reads the table itself (fp32) or the two are different dtypes."""
    from onnx import TensorProto, helper, numpy_helper

    head = head_node(model)
    table = _table_gather(model, _vocab(model))
    w_name = _source(model, head.input[1]) if head is not None else ""
    if not (table and w_name) or w_name == table:
        return ""
    inits = {i.name: i for i in model.graph.initializer}
    scale_name = table.removesuffix(".int8") + ".scale"
    if inits[table].data_type != TensorProto.INT8 or inits[w_name].data_type != TensorProto.INT8 \
            or scale_name not in inits:
        return ""
    t, w = numpy_helper.to_array(inits[table]), numpy_helper.to_array(inits[w_name])
    if w.shape != t.shape[::-1] or not np.array_equal(w, t.T):
        return "the head's int8 weights are not the embedding's int8 rows transposed (different rounding or scales)"
    scale = numpy_helper.to_array(inits[scale_name]).reshape(-1)
    head_scales = [n for n, i in inits.items() if n != scale_name and list(i.dims) == [scale.size]
                   and i.data_type == TensorProto.FLOAT and np.array_equal(numpy_helper.to_array(i), scale)]
    rename = {w_name: f"{table}.T", **dict.fromkeys(head_scales, f"{scale_name}.flat")}
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]
    # [V, D] -> [D, V]: the layout the head's MatMul reads (x [1, D] @ W [D, V]).
    new = [helper.make_node("Transpose", [table], [f"{table}.T"], name=f"{table}.transpose", perm=[1, 0])]
    if head_scales:  # [V, 1] -> [V]: one scale per output column of the head
        model.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), f"{scale_name}.flat_shape"))
        new.append(helper.make_node("Reshape", [scale_name, f"{scale_name}.flat_shape"], [f"{scale_name}.flat"],
                                    name=f"{scale_name}.reshape"))
    nodes = [*new, *model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return ""


def _location(init: Any) -> tuple[str, ...]:
    """Where an initializer's bytes are: (file, offset) in external data, else its own name."""
    ext = {e.key: e.value for e in init.external_data}
    return (ext["location"], ext.get("offset", "0")) if ext else ("inline", init.name)


def storage(model: onnx.ModelProto, schemes: tuple[str, str], not_shared: str = "") -> dict[str, Any]:
    """The manifest's ``storage`` of a tied head, read from the written decode graph: once when
    the head's weights and the embedding gather's table are the same bytes of the weights file.
    `schemes` are the (embeddings, lm_head) encodings; `not_shared`, why `share_table` did not."""
    head = head_node(model)
    table = _table_gather(model, _vocab(model))
    w_name = _source(model, head.input[1]) if head is not None else ""
    if not (table and w_name):
        return tied_storage(None, why="no [V, D] embedding gather and logits MatMul on a constant in decode.onnx")
    inits = {i.name: i for i in model.graph.initializer}
    if _location(inits[table]) == _location(inits[w_name]):
        ext = {e.key: e.value for e in inits[table].external_data}
        return tied_storage(True, int(ext.get("length", 0)) or len(inits[table].raw_data))
    return tied_storage(False, why=not_shared, schemes=schemes)
