"""The recipe's quantization, applied to the fp32 flatbuffer with ai-edge-quantizer, per component:

  encoder     every nn.Linear of the encode program (this includes the decoder's
              cross-attention K/V projections: they run once per input, in encode)
  decoder     every nn.Linear of the decode program except the output head
  lm_head     the FULLY_CONNECTED op that produces decode's logits (tied or not)
  embeddings  the EMBEDDING_LOOKUP ops of the token embeddings (both programs)

Which weight is which component comes from the one map every backend reads,
``Seq2SeqParts.weight_components()``. ai-edge-quantizer cannot take that map as it is:
it selects ops, not weights. A recipe entry is (regex, TFLite op), the regex searched in
the op's *scope*, its output tensor names each followed by ';'. litert-torch names an
op's output after the module stack torch.export recorded for it (``nn_module_stack``):
the root module's qualified class name, then ``<qualified class>_<last path segment>``
for every module whose forward was running, joined by '/', e.g.
``toolchain.arch.t5.T5Encode/toolchain.arch.t5._EncoderLayer_0/torch.nn.modules.linear.Linear_q;2``.

So each weight of the map selects by its program's root class and its owner module's own
entry (`owner_pattern`), and each component is the alternation of its weights' patterns
(`selectors`). Not the owner's full path: the stack lists only modules whose forward ran
(T5Gemma's layers call ``self.attn.q`` themselves, so ``layers.0.attn`` never appears), and
the converter fuses locations, so a fully-connected op's scope may start with another
module's (T5Gemma: ``..._EncoderLayer_0/toolchain.split.RMSNorm_post_ff;;..._EncoderLayer_0/
..._GatedMLP_mlp/torch.nn.modules.linear.Linear_down;1``). On T5 (tied and untied), BART,
mBART, Marian, Whisper and T5Gemma this selects exactly the ops the earlier per-program
``root/.*Linear`` regexes and the any-EMBEDDING_LOOKUP rule did.
A weight no op is named after stays fp32; `unselected` lists them (T5Gemma's encoder
attention output projection, whose op carries only the following norm's name).

The head is the other exception: the op that produces decode's logits is named after the
signature output (``decode_output_0_output``), not after a module, and a tied head is no
module at all (``F.linear`` on the embedding table: the map lists it under embeddings). So
lm_head is selected by that output tensor's name, tied or not (T5Gemma soft-caps its logits
after the head, so there no FULLY_CONNECTED produces them and lm_head selects nothing).

Position-bias tables are never quantized (the map lists no buffers): they hold -1e9
causal-mask entries, which would flatten every bias to 0 in int8 and become -inf (then
NaN) in fp16.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ...schemes import Component, QuantScheme
from . import SCHEMES

if TYPE_CHECKING:
    from torch import nn

    from ...split import Seq2SeqParts

FC, LOOKUP = "FULLY_CONNECTED", "EMBEDDING_LOOKUP"
# Component -> [(scope regex, TFLite op)]. Disjoint, so their order does not matter; the
# report lists components in this order.
Selectors = dict[Component, list[tuple[str, str]]]
_ORDER = (Component.ENCODER, Component.DECODER, Component.LM_HEAD, Component.EMBEDDINGS)


def _class_name(module: nn.Module) -> str:
    """A module's class as litert-torch spells it in op names (builtins without the module)."""
    cls = type(module)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def owner_pattern(root: nn.Module, weight: str) -> tuple[str, str]:
    """A weight's qualified name -> (the scope regex of the ops that read it, their TFLite op).

    The program's root class, then anything, then the owner module's own entry
    (``torch\\.nn\\.modules\\.linear\\.Linear_q``) and the ';' that ends a tensor name."""
    from torch import nn

    owner = weight.rsplit(".", 1)[0]
    module = root.get_submodule(owner)
    own = re.escape(f"{_class_name(module)}_{owner.rsplit('.', 1)[-1]}")
    return f"^{re.escape(_class_name(root))}/(?:.*/)?{own};", (LOOKUP if isinstance(module, nn.Embedding) else FC)


def _weights(parts: Seq2SeqParts) -> list[tuple[Component, str, str, str]]:
    """(component, weight, scope regex, op) for every weight of the map (both programs)."""
    programs = {"encode": parts.encode, "decode": parts.decode}
    return [(comp, weight, *owner_pattern(programs[prog], weight))
            for prog, names in parts.weight_components().items() for weight, comp in names.items()]


def selectors(parts: Seq2SeqParts, logits_tensor: str) -> Selectors:
    """Component -> the regexes that select its ops (module docstring)."""
    patterns: dict[tuple[Component, str], set[str]] = {}
    for comp, _, pattern, op in _weights(parts):
        if comp != Component.LM_HEAD:  # selected by its output tensor (module docstring)
            patterns.setdefault((comp, op), set()).add(pattern)
    out: Selectors = {c: [] for c in _ORDER}
    for (comp, op), alternatives in patterns.items():
        out[comp].append((f"(?:{'|'.join(sorted(alternatives))})", op))
    out[Component.LM_HEAD].append((f"^{re.escape(logits_tensor)};", FC))
    return out


def _walk(model_bytes: bytes) -> Iterator[tuple[str, str, str, str]]:
    """(signature, op name, scope, stored weight dtype) of every op of a flatbuffer; scope (as the
    quantizer builds it) and weight dtype only for the quantizable ops, else ""."""
    from ai_edge_litert import schema_py_generated as fb

    from .export import schema_names

    model = fb.Model.GetRootAsModel(model_bytes, 0)
    names, dtypes = schema_names()
    sig_of = {model.SignatureDefs(i).SubgraphIndex(): model.SignatureDefs(i).SignatureKey().decode()
              for i in range(model.SignatureDefsLength())}
    for i in range(model.SubgraphsLength()):
        sg = model.Subgraphs(i)
        sig = sig_of.get(i, f"subgraph_{i}")
        ops = [sg.Operators(j) for j in range(sg.OperatorsLength())]
        kinds = []
        for op in ops:
            code = model.OperatorCodes(op.OpcodeIndex())
            kinds.append(names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM"))
        # A fp16 weight reaches its op through a DEQUANTIZE: tensor -> the DEQUANTIZE input it comes from.
        dequantized = {op.Outputs(0): op.Inputs(0) for op, kind in zip(ops, kinds, strict=True)
                       if kind == "DEQUANTIZE"}
        for op, kind in zip(ops, kinds, strict=True):
            if kind not in (FC, LOOKUP):
                yield sig, kind, "", ""
                continue
            scope = "".join(sg.Tensors(op.Outputs(k)).Name().decode() + ";"
                            for k in range(op.OutputsLength()) if op.Outputs(k) >= 0)
            w = op.Inputs(1)  # FC: (input, weights, bias); lookup: (ids, table)
            t = sg.Tensors(dequantized.get(w, w)).Type()
            yield sig, kind, scope, dtypes.get(t, str(t))


def unselected(model_bytes: bytes, parts: Seq2SeqParts, sel: Selectors) -> dict[str, list[str]]:
    """Per component, the map's weights (lm_head: the logits tensor) that select no op of the
    flatbuffer, so would stay fp32 whatever the recipe says (module docstring: T5Gemma)."""
    ops = {(kind, scope) for _, kind, scope, _ in _walk(model_bytes) if scope}
    out: dict[str, list[str]] = {}
    for comp, weight, pattern, op in _weights(parts):
        if comp != Component.LM_HEAD and not any(kind == op and re.search(pattern, s) for kind, s in ops):
            out.setdefault(comp.value, []).append(weight)
    if not any(kind == op and re.search(regex, s) for regex, op in sel[Component.LM_HEAD] for kind, s in ops):
        out.setdefault(Component.LM_HEAD.value, []).extend(r for r, _ in sel[Component.LM_HEAD])
    return out


def quantize(model_bytes: bytes, quantization: dict[str, str], sel: Selectors, group_size: int = 32) -> bytes:
    """The recipe's schemes on the fp32 flatbuffer (unchanged when every scheme is fp32)."""
    import contextlib
    import io

    from ai_edge_quantizer import qtyping, quantizer, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    rm = recipe_manager.RecipeManager()
    for comp, scheme in quantization.items():
        kind = SCHEMES[QuantScheme(scheme)]
        if kind == "fp32":
            continue
        for regex, op in sel[Component(comp)]:
            name = qtyping.TFLOperationName(op)
            if kind == "int8":
                rm.add_dynamic_config(regex=regex, operation_name=name, num_bits=8)
            elif kind == "int4":  # blockwise along the input dim, as the recipe's group_size
                rm.add_dynamic_config(regex=regex, operation_name=name, num_bits=4,
                                      granularity=qtyping.QuantGranularity(f"BLOCKWISE_{group_size}"))
            else:  # fp16: weight-only float casting
                rm.add_weight_only_config(regex=regex, operation_name=name, num_bits=16,
                                          algorithm_key=AlgorithmName.FLOAT_CASTING)
    recipe = rm.get_quantization_recipe()
    if not recipe:
        return model_bytes
    # The quantizer prints a size summary on stdout; export's stdout is not the place for it.
    with contextlib.redirect_stdout(io.StringIO()):
        result = quantizer.Quantizer(bytearray(model_bytes), recipe).quantize()
    return bytes(result.quantized_model)


def op_summary(model_bytes: bytes, sel: Selectors) -> dict[str, Any]:
    """Op counts per signature and the stored weight dtype of every quantizable op, per component."""
    ops: dict[str, Counter] = {}
    weights: dict[Component, Counter] = {c: Counter() for c in sel}
    for sig, kind, scope, stored in _walk(model_bytes):
        ops.setdefault(sig, Counter())[kind] += 1
        for comp, entries in sel.items():
            if any(op == kind and re.search(regex, scope) for regex, op in entries):
                weights[comp][stored] += 1
    return {"ops": {sig: dict(sorted(c.items())) for sig, c in ops.items()},
            "weights": {c.value: dict(w) for c, w in weights.items()}}
