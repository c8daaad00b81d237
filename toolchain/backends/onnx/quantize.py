"""Quantization of the exported ONNX graphs, per recipe component, node by node.

Linears (encoder, decoder, lm_head) go through ``onnxruntime.quantization``: ``8da8w`` is
``quantize_dynamic`` (int8 per-channel weights, activations quantized per call),
``static-int8`` is ``quantize_static`` in QDQ format with activation ranges from the
calibration set; one of the two per artifact. The embedding takes ``int8-weight``: int8 rows
with a per-row scale (``quantize_embeddings``). Every int8 weight is on the target's
``weight_bits`` grid: 7 is ORT's ``reduce_range`` (-64..64, no int16 saturation in its u8s8
kernels on x86 without VNNI; the package docstring), 8 its full symmetric range (-127..127).
Only linear layers and the embedding are quantized: attention score/probability products,
the position-bias tables (buffers with -1e9 masks) and the caches stay fp32.

Which component a node belongs to comes from ``Seq2SeqParts.weight_components`` (the one map
every backend uses), matched on the parameter each node reads; static-int8 calibration
inputs come from ``toolchain.calibrate.trace`` (the fp32 torch modules run through the same
greedy loop as ``run``: the same activations as the fp32 graphs, to ~1e-6).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import InputError
from ...schemes import Component, QuantScheme, requested
from . import GRIDS

if TYPE_CHECKING:
    import onnx

    from ...specs import Recipe
    from ...split import Seq2SeqParts

Feeds = list[dict[str, np.ndarray]]


def _reads(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """(node name, aten op, parameter) for each MatMul/Gemm/Gather node that an ``aten.<op>``
    reading a module parameter became. The exporter records, per ONNX node, the FX node it
    came from; its arguments name the parameters it reads as ``%p_<qualified name, . -> _>``
    (``%p_layers_0_q_weight``; buffers are ``%b_...``)."""
    out = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Gather"):
            continue
        fx = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.fx_node"), "")
        target = re.search(r"target=torch\.ops\.aten\.(\w+)\.", fx)
        params = re.findall(r"%p_(\w+)", fx)
        if target and params:
            out.append((node.name, target.group(1), params[0]))
    return out


def node_components(model: onnx.ModelProto, weights: dict[str, Component]) -> dict[str, Component]:
    """Quantizable node name -> recipe component, for one program.

    `weights` is the program's map from ``parts.weight_components()`` (qualified parameter
    name -> component; buffers such as the position-bias tables are never in it, so never
    quantized). An ``aten.linear`` / ``aten.embedding`` node takes the component of the
    parameter it reads, except a linear on the embedding table: that is the tied lm_head.
    """
    by_param = {fqn.replace(".", "_"): comp for fqn, comp in weights.items()}
    out: dict[str, Component] = {}
    for node, op, param in _reads(model):
        comp = by_param.get(param)
        if comp is None:
            continue
        if op == "embedding" and comp == Component.EMBEDDINGS:
            out[node] = comp
        elif op == "linear":
            out[node] = Component.LM_HEAD if comp == Component.EMBEDDINGS else comp
    return out


def check_found(model: onnx.ModelProto, program: str, weights: dict[str, Component],
                quantized: set[Component]) -> None:
    """Every weight of a component the recipe quantizes is read by some node of the graph:
    an exporter that names parameters differently must fail here, not quantize nothing."""
    read = {param for _, _, param in _reads(model)}
    missing = sorted(w for w, c in weights.items() if c in quantized and w.replace(".", "_") not in read)
    if missing:
        raise RuntimeError(f"{program}: weights not found in the exported ONNX graph: {missing}")


def _gemm_to_matmul(model: onnx.ModelProto, names: set[str]) -> None:
    """Rewrite the named Gemm nodes as MatMul (+ Add for a bias), in place, keeping their names.

    ORT's dynamic quantizer handles MatMul, not Gemm; the 2D lm_head (``[1, D] @ W^T``)
    is exported as a Gemm. Its weight gets a transposed copy ``[D, V]`` (the original
    may still feed the embedding gather: a tied head).
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.name not in names or node.op_type != "Gemm":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 \
                or node.input[1] not in inits:
            raise RuntimeError(f"cannot rewrite Gemm {node.name} as MatMul: {attrs}")
        w = numpy_helper.to_array(inits[node.input[1]])
        w_name = f"{node.name}.weight"
        model.graph.initializer.append(numpy_helper.from_array(
            np.ascontiguousarray(w.T if attrs.get("transB", 0) else w), w_name))
        bias = node.input[2] if len(node.input) > 2 else ""
        mm_out = f"{node.output[0]}.matmul" if bias else node.output[0]
        mm = helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=node.name)
        mm.metadata_props.extend(node.metadata_props)
        nodes.append(mm)
        if bias:
            nodes.append(helper.make_node("Add", [mm_out, bias], [node.output[0]], name=f"{node.name}.bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unused_initializers(model)


class _Feeds:
    """A CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: Feeds):
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - only called by some calibrators
        raise NotImplementedError


def calibration_feeds(parts: Seq2SeqParts, calibration: list[Any]) -> dict[str, Feeds]:
    """Encode and decode feeds (graph input name -> array) for static ranges: the programs'
    inputs recorded over greedy runs of the fp32 split on the calibration inputs. Decode's
    (cross K/V, the caches at each position) exist only as encode/decode outputs, so they
    come from running the model."""
    from ...calibrate import trace

    samples = trace(parts, calibration)
    return {"encode": samples.feeds("encode", parts.encode_input_names()),
            "decode": samples.feeds("decode", parts.decode_input_names())}


def shorter_feeds(feeds: Feeds | None, n: int) -> Feeds | None:
    """Static-int8 calibration feeds of an n-token encode: the inputs that fit in n tokens
    (all of them cut to n when none does), as [1, n] arrays."""
    if feeds is None:
        return None
    fits = [f for f in feeds if not f["attention_mask"][0, n:].any()] or feeds
    return [{k: np.ascontiguousarray(v[:, :n]) for k, v in f.items()} for f in fits]


def quantize_embeddings(model: onnx.ModelProto, names: set[str], bits: int) -> int:
    """Int8 rows for the named embedding gathers, in place; returns how many were rewritten.

    Gather(table float[V, D], ids) becomes Cast(Gather(table_int8 int8[V, D], ids)) *
    Gather(scale float[V, 1], ids): symmetric, one scale per row (a token's vector), on
    ORT's grid for `bits` (``GRIDS``) with its arithmetic, so a tied head's int8 weights
    are the same numbers transposed (tied.py); the table stays int8 in memory (a
    DequantizeLinear in front of the Gather would be constant-folded back to fp32 when the
    session loads). The int8 table and scales get the same names and bytes in both
    programs, so the shared weights file holds them once.
    """
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes, done = [], 0
    for node in model.graph.node:
        if node.name not in names or node.op_type != "Gather" or node.input[0] not in inits:
            nodes.append(node)
            continue
        table = node.input[0]
        if f"{table}.int8" not in inits:
            w = numpy_helper.to_array(inits[table]).astype(np.float32)
            # ORT: scale = 2 * max|x| / (2 * top) in float64, stored as float32; x / scale
            # rounded half to even in float32.
            top = GRIDS[bits]
            scale = (2.0 * np.abs(w).max(axis=1, keepdims=True).astype(np.float64) / (2 * top)).astype(np.float32)
            scale[scale == 0] = 1.0
            q = np.clip((w / scale).round(), -top, top).astype(np.int8)
            for arr, name in ((q, f"{table}.int8"), (scale.astype(np.float32), f"{table}.scale")):
                inits[name] = numpy_helper.from_array(arr, name)
                model.graph.initializer.append(inits[name])
        out, base = node.output[0], node.name
        nodes += [helper.make_node("Gather", [f"{table}.int8", node.input[1]], [f"{out}.q"], name=base, axis=0),
                  helper.make_node("Cast", [f"{out}.q"], [f"{out}.f"], name=f"{base}.cast", to=TensorProto.FLOAT),
                  helper.make_node("Gather", [f"{table}.scale", node.input[1]], [f"{out}.s"], name=f"{base}.scale",
                                   axis=0),
                  helper.make_node("Mul", [f"{out}.f", f"{out}.s"], [out], name=f"{base}.mul")]
        done += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unused_initializers(model)
    return done


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def quantize_graph(model: onnx.ModelProto, name: str, components: dict[str, Component],
                   schemes: dict[Component, QuantScheme], feeds: Feeds | None,
                   tmp: Path, bits: int) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Quantize one program's nodes (`components`: node -> component) per `schemes`, int8 weights
    on the `bits` grid; returns (ModelProto, {component: nodes quantized})."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    chosen = {n: c for n, c in components.items() if schemes[c] != QuantScheme.NONE}
    counts = Counter(chosen.values())
    # Embeddings first (our own rewrite), so the linear quantizers never see the gathers.
    quantize_embeddings(model, {n for n, c in chosen.items() if c == Component.EMBEDDINGS}, bits)
    linears = sorted(n for n, c in chosen.items() if c != Component.EMBEDDINGS)
    if linears:
        scheme = schemes[chosen[linears[0]]]  # one linear scheme per artifact (OnnxBackend.check)
        src, dst = tmp / f"{name}-fp32.onnx", tmp / f"{name}-q.onnx"
        # Dynamic int8 covers MatMul, not Gemm, and a tied head's weight is also the gather's
        # table: give each chosen Gemm (the 2D lm_head) its own MatMul weight.
        _gemm_to_matmul(model, {n.name for n in model.graph.node if n.op_type == "Gemm" and n.name in chosen})
        onnx.save(model, src)
        if scheme == QuantScheme.W8A8_DYNAMIC:
            quantize_dynamic(src, dst, per_channel=True, reduce_range=bits == 7, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul"],
                             nodes_to_quantize=linears, extra_options={"MatMulConstBOnly": True})
        else:  # static-int8
            # Symmetric int8 activations and weights (QDQ), per-channel weights; only the chosen
            # linears get QDQ pairs, so softmax inputs and masks never see int8.
            quantize_static(src, dst, _Feeds(feeds or []), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=bits == 7,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["MatMul"], nodes_to_quantize=linears,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "MatMulConstBOnly": True})
        model = onnx.load(dst)
    return model, {str(c): counts[c] for c in sorted(counts)}


def quantize_programs(graphs: dict[str, onnx.ModelProto], parts: Seq2SeqParts, recipe: Recipe,
                      calibration: list[Any] | None, tmp: Path,
                      bits: int) -> tuple[dict[str, onnx.ModelProto], dict[str, dict[str, int]]]:
    """Quantize every program ("encode", "encode_<L>", "decode" -> ModelProto) per the recipe;
    returns the graphs and, per program, {component: nodes quantized}."""
    schemes = requested(recipe)
    feeds: dict[str, Feeds | None] = {"encode": None, "decode": None}
    if QuantScheme.STATIC_INT8 in schemes.values():
        if not calibration:
            raise InputError(f"recipe {recipe.name}: static-int8 needs calibration inputs; none were given")
        feeds.update(calibration_feeds(parts, calibration))
    weights = parts.weight_components(buckets=True)
    out, quantized = {}, {}
    for prog, model in graphs.items():
        check_found(model, prog, weights[prog], {c for c, s in schemes.items() if s != QuantScheme.NONE})
        comps = node_components(model, weights[prog])
        if prog.startswith("encode_"):
            prog_feeds = shorter_feeds(feeds["encode"], int(prog.removeprefix("encode_")))
        else:
            prog_feeds = feeds["encode" if prog == "encode" else "decode"]
        # Shorter encodes are quantized like the full one: same tensors, so weights.data holds them once.
        out[prog], quantized[prog] = quantize_graph(model, prog.split("_")[0], comps, schemes, prog_feeds, tmp,
                                                    bits)
    return out, quantized
