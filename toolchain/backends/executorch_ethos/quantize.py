"""PT2E static int8 for the Ethos-U (Arm's EthosUQuantizer), with the split's attention masks
softened first so that per-tensor int8 can represent the scores they are added to."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MASK_VALUE = -30.0  # additive attention mask in the int8 programs (see soften_masks)
_MASK_FLOOR = -1e8  # anything at or below this is a mask value of the split (NEG = -1e9)


def soften_masks(gm: Any, value: float = MASK_VALUE) -> int:
    """Replace the split's -1e9 attention masks by `value`, in constants and scalar arguments.

    Masks are additive (scores + bias, then softmax). With per-tensor int8, a tensor
    spanning [-1e9, 10] has a step of ~4e6: every real score rounds to zero and
    attention turns uniform (seen on the demo: accuracy 0.0). With -30 the step is
    ~0.2 and a masked key still gets exp(-30) ~ 1e-13 of the weight. Works on the
    exported graph, so every family's masks are covered without touching adapters.
    Returns how many constants and arguments changed."""
    import torch

    changed = 0
    for node in gm.graph.nodes:
        if node.op == "call_function":
            new = tuple(value if isinstance(a, float) and a <= _MASK_FLOOR else a for a in node.args)
            if new != tuple(node.args):
                node.args, changed = new, changed + 1
    for _, t in [*gm.named_buffers(), *((n, getattr(gm, n)) for n in dir(gm) if n.startswith("_tensor_constant"))]:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and float(t.min()) <= _MASK_FLOOR:
            t.clamp_(min=value)
            changed += 1
    gm.recompile()
    return changed


def select_onehots(gm: Any) -> int:
    """Rewrite every bool -> float cast (the split's position one-hot, ``(arange == position)
    .to(float32)``) as ``where(mask, 1.0, 0.0)``.

    The Arm partitioner takes the compare and a SELECT between two quantized constants, but not a
    bool -> float cast: left as is, the cast runs on the Cortex-M and cuts decode into two NPU
    subgraphs with a float tensor crossing between them. Returns how many casts changed."""
    import torch

    changed = 0
    for node in list(gm.graph.nodes):
        if (node.op != "call_function" or node.target not in (torch.ops.aten.to.dtype, torch.ops.aten._to_copy.default)
                or not node.args or getattr(node.args[0], "meta", {}).get("val") is None):
            continue
        src, out = node.args[0].meta["val"], node.meta.get("val")
        if src.dtype != torch.bool or out is None or not out.is_floating_point():
            continue
        for value in (1.0, 0.0):
            name = f"_edgeseq_select_{int(value)}"
            if not hasattr(gm, name):
                gm.register_buffer(name, torch.tensor(value, dtype=out.dtype))
        with gm.graph.inserting_before(node):
            one, zero = gm.graph.get_attr("_edgeseq_select_1"), gm.graph.get_attr("_edgeseq_select_0")
            select = gm.graph.call_function(torch.ops.aten.where.self, (node.args[0], one, zero))
        select.meta["val"] = out
        node.replace_all_uses_with(select)
        gm.graph.erase_node(node)
        changed += 1
    gm.recompile()
    return changed


def quantize(module: Any, args: tuple, samples: Iterable[tuple], spec: Any) -> Any:
    """PT2E static int8 with the Arm quantizer, calibrated on `samples` (the program's input
    tuples, toolchain.calibrate.trace); returns the converted GraphModule."""
    import torch
    from executorch.backends.arm.quantizer import EthosUQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with torch.no_grad():
        gm = torch.export.export(module, args, strict=False).module(check_guards=False)
        soften_masks(gm)
        select_onehots(gm)
        quantizer = EthosUQuantizer(spec)
        quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(gm, quantizer)
        for sample in samples:  # decode's cross_bias input carries encode's mask values: soften them too
            prepared(*(torch.where(t <= _MASK_FLOOR, MASK_VALUE, t) if t.is_floating_point() else t
                       for t in sample))
        return convert_pt2e(prepared)


def _q_ops() -> tuple[Any, Any]:
    import torch

    qd = torch.ops.quantized_decomposed
    return qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default


def input_quantize(gm: Any, index: int) -> Any:
    """The quantize node that is user input `index`'s only consumer (None: not quantized there)."""
    q_op, _ = _q_ops()
    ph = [n for n in gm.graph.nodes if n.op == "placeholder"][index]
    users = list(ph.users)
    return users[0] if len(users) == 1 and users[0].target == q_op else None


def output_quantize(gm: Any, index: int) -> Any:
    """The quantize node whose dequantize is output `index` (None: not quantized there)."""
    q_op, dq_op = _q_ops()
    out = gm.graph.output_node().args[0][index]
    return out.args[0] if out.target == dq_op and getattr(out.args[0], "target", None) == q_op else None


def share_qparams(nodes: list[Any]) -> tuple[float, int]:
    """Give these quantize nodes (and their dequantize users) one (scale, zero_point): the int8
    grid covering the union of their ranges. For a tensor that leaves one program as int8 and
    enters another (encode's cross K/V into decode; decode's updated cache into the next step),
    so that the int8 values pass as they are: nothing is dequantized and requantized between
    them, and no float tensor crosses the NPU/CPU boundary."""
    lo = min((n.args[3] - n.args[2]) * n.args[1] for n in nodes)
    hi = max((n.args[4] - n.args[2]) * n.args[1] for n in nodes)
    qmin, qmax = nodes[0].args[3], nodes[0].args[4]
    lo, hi = min(lo, 0.0), max(hi, 0.0)  # zero stays exactly representable (a zeroed cache)
    scale = max((hi - lo) / (qmax - qmin), 1e-8)
    zp = int(min(max(round(qmin - lo / scale), qmin), qmax))
    _, dq_op = _q_ops()
    for q in nodes:
        q.args = (q.args[0], scale, zp, *q.args[3:])
        for u in list(q.users):  # rewriting args edits q.users
            if u.target == dq_op:
                u.args = (u.args[0], scale, zp, *u.args[3:])
    for gm in {id(n.graph.owning_module): n.graph.owning_module for n in nodes}.values():
        gm.recompile()
    return scale, zp
