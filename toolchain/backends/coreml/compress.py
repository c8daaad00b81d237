"""Weight compression of the converted functions, per recipe component.

``coremltools.optimize.coreml.linear_quantize_weights`` on the weight constants that
linear/gather ops read: int8 per channel (8da8w, int8-weight) or int4 per block of
recipe.group_size along the input axis (8da4w, int4-weight); activations stay at the compute
precision. Which component a constant belongs to comes from ``Seq2SeqParts.weight_components``
(the one map every backend uses); position-bias tables are buffers, never in it, so never
compressed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import InputError
from ...schemes import Component, QuantScheme
from . import FUNCTIONS, SCHEMES
from .convert import quiet

if TYPE_CHECKING:
    from ...split import Seq2SeqParts

# Component -> [(const op name, shape)] of one function's weights.
Selected = dict[Component, list[tuple[str, tuple[int, ...]]]]


def const_name(fqn: str) -> str:
    """The converter names a parameter's constant `p_<fqn with _>` (plus a `_to_fp16` suffix)."""
    return "p_" + fqn.replace(".", "_")


def weight_consts(parts: Seq2SeqParts) -> dict[str, dict[str, Component]]:
    """Per function: constant base name -> component, from parts.weight_components()."""
    comps = parts.weight_components()
    return {fn: {const_name(fqn): c for fqn, c in comps[fn].items()} for fn in FUNCTIONS}


def select_consts(mlmodel: Any, names: dict[str, Component]) -> Selected:
    """Component -> [(const op name, shape)] of the weights linear/gather ops read in one function."""
    fn = mlmodel._mil_program.functions["main"]
    found: Selected = {}
    seen = set()
    for op in fn.operations:
        key = {"linear": "weight", "gather": "x"}.get(op.op_type)
        if key is None or op.inputs[key].op is None or op.inputs[key].op.op_type != "const":
            continue
        const = op.inputs[key].op
        base = const.name.removesuffix("_to_fp16")
        comp = names.get(base)
        if comp is None or const.name in seen:  # e.g. a position-bias table (buffer `b_...`)
            continue
        seen.add(const.name)
        found.setdefault(comp, []).append((const.name, tuple(const.val.val.shape)))
    missing = set(names) - {n.removesuffix("_to_fp16") for n in seen}
    if missing:  # a converter that names constants differently must fail here, not compress nothing
        raise RuntimeError(f"weights not found in the converted program: {sorted(missing)}")
    return found


def compress(mlmodel: Any, selected: Selected, schemes: dict[Component, QuantScheme], group_size: int) -> Any:
    """int8 per-channel or int4 per-block weights for the components the recipe names."""
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    configs = {}
    for comp, consts in selected.items():
        kind = SCHEMES[schemes[comp]]
        if kind == "int8":
            cfg = OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                          weight_threshold=0)
        elif kind == "int4":
            for name, shape in consts:
                if shape[-1] % group_size:
                    raise InputError(f"group_size {group_size} does not divide the input dim {shape[-1]} of "
                                     f"{name} (int4 blocks); choose a group_size that divides it")
            cfg = OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                          block_size=group_size, weight_threshold=0)
        else:  # none / fp16: stored at the compute precision
            continue
        configs.update({name: cfg for name, _ in consts})
    if not configs:
        return mlmodel
    with quiet():
        return linear_quantize_weights(mlmodel, OptimizationConfig(op_name_configs=configs))


def quant_report(selected: dict[str, Selected], schemes: dict[Component, QuantScheme], group_size: int,
                 precision: str) -> dict[str, dict[str, Any]]:
    """Per component: scheme, tensors, fp32 bytes and stored bytes (values + fp16 scales; unquantized
    weights are stored at the compute precision)."""
    report = {}
    for comp in Component:
        consts = {n: s for fn in selected.values() for n, s in fn.get(comp, [])}
        scheme = schemes[comp]
        kind = SCHEMES[scheme]
        fp32 = est = 0
        for shape in consts.values():
            rows, cols = shape[0], int(np.prod(shape[1:]))
            fp32 += rows * cols * 4
            bits = {"int8": 8, "int4": 4}.get(kind)
            scales = rows * (cols // group_size if kind == "int4" else 1) * 2
            plain = 2 if kind == "fp16" or precision == "float16" else 4
            est += rows * cols * bits // 8 + scales if bits else rows * cols * plain
        report[comp.value] = {"scheme": scheme.value, "coreml": kind, "tensors": len(consts), "fp32_bytes": fp32,
                              "estimated_bytes": est}
    return report
