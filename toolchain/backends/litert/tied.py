"""A tied table stored once in ``model.tflite``, and the manifest's word on it.

What the converter writes for a tied head: the token embedding is an EMBEDDING_LOOKUP on a
constant table ``E float32[V, D]`` (one buffer, shared by the encode and decode subgraphs),
and the head a FULLY_CONNECTED whose weights ``W float32[V, D]`` (``[out, in]``, the same
layout) are a *second* buffer: T5 scales the decoder output by ``d_model**-0.5`` before a
tied head, and the converter folds that constant into the weights, ``W = E * s`` (exactly,
in fp32). Same bytes or not, the table is stored twice (1.27x the parameters at t5-small size).

`share_table` undoes that on the fp32 flatbuffer, before quantization: when ``W = E * c``
for a scalar or per-input-column factor ``c [D]``, the head reads the decode lookup's own
table tensor and the factor moves to a MUL on its input (``x [1, D] * c``, D multiplies per
token instead of V * D weights stored). Because it is the same *tensor*, ai-edge-quantizer
quantizes it once (dynamic-range int8 of an EMBEDDING_LOOKUP and of a FULLY_CONNECTED are
both symmetric int8 per row, quantized dimension 0; fp16 is a cast): one buffer and, in decode,
one set of row scales. Only done when the recipe encodes embeddings and head alike: otherwise
(int4 head, int8 embedding) the quantizer must copy the tensor apart again, and then copies the
lookups' table too; the table is stored twice and `storage` says why.
`share_quantization` then writes each distinct scale/zero-point vector once (across signatures).

`storage` reads the result back from the final flatbuffer: the head's weights are stored
once exactly when they sit in the buffer of the decode lookup's table.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tied import storage as tied_storage

FC, LOOKUP, DEQUANTIZE, MUL = "FULLY_CONNECTED", "EMBEDDING_LOOKUP", "DEQUANTIZE", "MUL"


_ALIGN = 16  # buffer data alignment the schema asks for (force_align: 16)
_EXTERNAL_MIN_BYTES = 1024  # smaller buffers stay inside the flatbuffer table


def _read(model_bytes: bytes) -> Any:
    """The flatbuffer as the schema's object API (ModelT); every buffer's data a uint8 array."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    for b in model.buffers:
        if b.data is not None and not isinstance(b.data, np.ndarray):
            b.data = np.frombuffer(b.data, np.uint8)
    return model


def _write(model: Any) -> bytes:
    """ModelT -> flatbuffer, laid out as the converter and the quantizer write large models:
    the tables first, then each buffer of at least 1 KB at a 16-byte-aligned offset after
    them (Buffer.offset/size), so weights are aligned and the tables stay small."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    external = {i: b.data for i, b in enumerate(model.buffers)
                if b.data is not None and len(b.data) >= _EXTERNAL_MIN_BYTES}
    for i in external:  # non-zero placeholders, so the packed tables reserve the two fields
        model.buffers[i].data, model.buffers[i].offset, model.buffers[i].size = None, 1, 1
    tables = flatbuffer_utils.convert_object_to_bytearray(model)
    out = bytearray(tables)
    packed = fb.Model.GetRootAs(out, 0)
    for i, data in external.items():
        out += bytes(-len(out) % _ALIGN)
        flatbuffer_utils.update_packed_buffer(packed.Buffers(i), offset=len(out), size=len(data))
        out += data.tobytes()
    return bytes(out)


def _op_names(model: Any) -> list[str]:
    """Operator code index -> builtin op name."""
    from .export import schema_names

    names, _ = schema_names()
    return [names.get(max(c.builtinCode, c.deprecatedBuiltinCode), "CUSTOM") for c in model.operatorCodes]


def _decode_subgraph(model: Any) -> Any:
    for sig in model.signatureDefs or []:
        if sig.signatureKey.decode() == "decode":
            return model.subgraphs[sig.subgraphIndex]
    raise RuntimeError("the flatbuffer has no decode signature")


def _factor(table: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
    """c [D] (or [1] when all columns agree) with ``weights == table * c``, else None.

    Each column's factor is read where that column of the table is largest in magnitude,
    then the whole product is checked: equal in fp32, or within 2 ulp (a factor the converter
    folded in two steps)."""
    rows = np.abs(table).argmax(axis=0)
    cols = np.arange(table.shape[1])
    pivot = table[rows, cols]
    if not np.all(pivot):
        return None
    c = (weights[rows, cols] / pivot).astype(np.float32)
    if np.all(c == c[0]):
        c = c[:1]
    product = table * c
    if np.array_equal(product, weights):
        return c
    tol = 2 * np.finfo(np.float32).eps * np.abs(weights).max()
    return c if np.abs(product - weights).max() <= tol else None


def _mul_opcode(model: Any, names: list[str]) -> int:
    """The index of a MUL operator code, added when the model has none."""
    from ai_edge_litert import schema_py_generated as fb

    if MUL in names:
        return names.index(MUL)
    code = fb.OperatorCodeT()
    code.builtinCode = fb.BuiltinOperator.MUL
    code.deprecatedBuiltinCode = fb.BuiltinOperator.MUL  # < 127: the old field holds it too
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def share_table(model_bytes: bytes) -> tuple[bytes, str]:
    """The fp32 flatbuffer with decode's head reading the lookup's table (module docstring);
    returns (flatbuffer, "" or why the head could not be pointed at the table). Unchanged when
    nothing reads a table of the head's shape (an untied head has its own values)."""
    from ai_edge_litert import schema_py_generated as fb

    model = _read(model_bytes)
    names = _op_names(model)
    sg = _decode_subgraph(model)
    tables: dict[tuple[int, ...], int] = {}  # (V, D) -> the decode lookup's table tensor index
    for op in sg.operators:
        t = sg.tensors[op.inputs[1]] if names[op.opcodeIndex] == LOOKUP else None  # (ids, table)
        if t is not None and t.type == fb.TensorType.FLOAT32 and len(t.shape) == 2:
            tables[tuple(t.shape)] = op.inputs[1]
    for i, op in enumerate(sg.operators):
        w = sg.tensors[op.inputs[1]] if names[op.opcodeIndex] == FC else None  # (input, weights, bias)
        if w is None or model.buffers[w.buffer].data is None \
                or tables.get(tuple(w.shape), op.inputs[1]) == op.inputs[1]:
            continue
        t_idx = tables[tuple(w.shape)]
        table = np.frombuffer(model.buffers[sg.tensors[t_idx].buffer].data, np.float32).reshape(w.shape)
        weights = np.frombuffer(model.buffers[w.buffer].data, np.float32).reshape(w.shape)
        if weights.shape[0] < 2 or np.array_equal(table, weights):
            c = None  # the same values: no factor to move
        else:
            c = _factor(table, weights)
            if c is None:
                return model_bytes, "the head's weights are not the table times a per-column factor"
        model.buffers[w.buffer].data = None  # the head's copy: now empty, its tensor unused
        op.inputs[1] = t_idx
        if c is not None:
            x = sg.tensors[op.inputs[0]]
            model.buffers.append(fb.BufferT(data=np.frombuffer(c.tobytes(), np.uint8)))
            sg.tensors.append(fb.TensorT(shape=list(c.shape), type=fb.TensorType.FLOAT32,
                                         buffer=len(model.buffers) - 1, name=b"tied_head_input_scale"))
            sg.tensors.append(fb.TensorT(shape=list(x.shape), type=x.type, buffer=0,
                                         name=x.name + b";tied_head_input", shapeSignature=x.shapeSignature))
            mul = fb.OperatorT()
            mul.opcodeIndex = _mul_opcode(model, names)
            mul.inputs, mul.outputs = [op.inputs[0], len(sg.tensors) - 2], [len(sg.tensors) - 1]
            mul.builtinOptionsType, mul.builtinOptions = fb.BuiltinOptions.MulOptions, fb.MulOptionsT()
            op.inputs[0] = len(sg.tensors) - 1
            sg.operators.insert(i, mul)  # ops run in list order: the MUL right before the head
        return _write(model), ""
    return model_bytes, ""


class _SharedVectors:
    """Packs each distinct quantization vector once per flatbuffer (tables point at it)."""

    def __init__(self, builder: Any):
        self.builder = builder
        self.offsets: dict[tuple[str, bytes], int] = {}

    def vector(self, values: Any, dtype: type) -> int | None:
        if values is None:
            return None
        arr: np.ndarray = np.ascontiguousarray(values, dtype=dtype)
        key = (arr.dtype.str, arr.tobytes())
        if key not in self.offsets:
            self.offsets[key] = self.builder.CreateNumpyVector(arr)
        return int(self.offsets[key])


def _quantization_type() -> type:
    """QuantizationParametersT whose Pack shares equal scale/zero-point/min/max vectors."""
    from ai_edge_litert import schema_py_generated as fb

    class Shared(fb.QuantizationParametersT):
        shared: _SharedVectors | None = None

        def Pack(self, builder: Any) -> int:  # noqa: N802 - the generated API's name
            vec = Shared.shared
            if vec is None or vec.builder is not builder:
                vec = Shared.shared = _SharedVectors(builder)
            fields = {"Min": vec.vector(self.min, np.float32), "Max": vec.vector(self.max, np.float32),
                      "Scale": vec.vector(self.scale, np.float32),
                      "ZeroPoint": vec.vector(self.zeroPoint, np.int64)}
            details = self.details.Pack(builder) if self.details is not None else None
            fb.QuantizationParametersStart(builder)
            for field, offset in fields.items():
                if offset is not None:
                    getattr(fb, f"QuantizationParametersAdd{field}")(builder, offset)
            fb.QuantizationParametersAddDetailsType(builder, self.detailsType)
            if details is not None:
                fb.QuantizationParametersAddDetails(builder, details)
            fb.QuantizationParametersAddQuantizedDimension(builder, self.quantizedDimension)
            return int(fb.QuantizationParametersEnd(builder))

    return Shared


def share_quantization(model_bytes: bytes) -> bytes:
    """The flatbuffer with every distinct quantization vector stored once.

    TFLite keeps scales and zero points on each tensor, not with its buffer: the int8 table's
    row scales (V floats) and zero points (V int64, all 0: symmetric) are written again for
    every tensor that reads the table (encode's lookup, decode's), and every per-channel
    linear carries its own vector of zeros. A flatbuffer may point many tables at one vector;
    this writes each distinct vector once (t5-small int8: 1.6 MB of parameters -> ~0.5 MB)."""
    model = _read(model_bytes)
    shared = _quantization_type()
    found = False
    for sg in model.subgraphs:
        for t in sg.tensors:
            if t.quantization is not None:
                q = shared()
                q.__dict__.update(t.quantization.__dict__)
                t.quantization = q
                found = found or t.quantization.scale is not None
    return _write(model) if found else model_bytes


def _constant(sg: Any, names: list[str], tensor: int) -> int:
    """The constant tensor an op input reads: through a DEQUANTIZE (fp16 weights), or itself."""
    for op in sg.operators:
        if names[op.opcodeIndex] == DEQUANTIZE and op.outputs[0] == tensor:
            return int(op.inputs[0])
    return tensor


def storage(model_bytes: bytes, schemes: tuple[str, str], not_shared: str = "") -> dict[str, Any]:
    """The manifest's ``storage`` of a tied head, read from the final flatbuffer: the table is
    stored once when decode's head reads the buffer of decode's lookup table. `schemes` are the
    (embeddings, lm_head) encodings; `not_shared`, why `share_table` left the head alone."""
    model = _read(model_bytes)
    names = _op_names(model)
    sg = _decode_subgraph(model)
    tables: dict[tuple[int, ...], int] = {}  # (V, D) -> tensor index, of a lookup's table
    heads: dict[tuple[int, ...], int] = {}  # and of a fully-connected op's weights
    for op in sg.operators:
        kind = names[op.opcodeIndex]
        if kind in (LOOKUP, FC):
            t = _constant(sg, names, op.inputs[1])
            (tables if kind == LOOKUP else heads)[tuple(sg.tensors[t].shape)] = t
    shape = next((s for s in tables if s in heads), None)
    if shape is None:
        return tied_storage(None, why="no fully-connected op of decode reads a [V, D] weight like the lookup's table")
    table, head = sg.tensors[tables[shape]], sg.tensors[heads[shape]]
    if table.buffer == head.buffer:
        return tied_storage(True, len(model.buffers[table.buffer].data))
    return tied_storage(False, why=not_shared, schemes=schemes)
