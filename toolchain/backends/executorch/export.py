"""executorch-xnnpack lowering: the split's programs -> ``model.pte`` + ``weights.ptd``.

Why the split into .pte + .ptd: the embedding is used by a portable kernel (the gather
in both methods) *and* by the XNNPACK lm_head (tied weights). In a single .pte the
portable copy lives in the program's constant buffer and the delegate's copy in the
delegate's named data, so the largest tensor of the model is stored twice (seen: +27% on
a t5-small-sized model). Tagging every constant, delegated or not, for one external file
puts them all in one NamedDataStore, which deduplicates by content: each tensor once.

Quantized, the same holds only if two things are true. XNNPACK reads the external tag of a
quantized weight (and of its scales) from the dequantize node, not from the constant, so the
partitioner tags those nodes too (without it every 8da8w/8da4w weight went inline into
model.pte: Whisper tiny.en int8 was 37.0 MB .pte + 24.9 MB .ptd, now 0.17 + 41.5 MB). And a
tied table's two quantized copies must be the same bytes: torchao's int8-weight embedding and
8da8w lm_head are both symmetric int8 per row with fp32 row scales, so they are, and the
manifest's lm_head `storage` (read back from weights.ptd) says the table is stored once.

The self-attention cache is mutable buffers inside ``decode`` (initialised to zeros with
InitializedMutableBufferPass: an uninitialised buffer can hold NaN, and NaN * 0 attention
weight is still NaN).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import progress
from .. import tied
from ..base import Lowered
from . import PTD, PTE, parallel, provenance, quantize, retraces, xnnpack_passes

if TYPE_CHECKING:
    from ...specs import Recipe
    from ...split import Seq2SeqParts

_DATA_TAG = "weights"
# Why a tied table is stored twice although both sides use the same bits (any other pair of
# schemes is two different encodings of the table). fp32/fp32 and int8-weight/8da8w are the
# same bytes (torchao's symmetric int8 per row: same values, same fp32 scales) and dedup.
_NOT_SHARED = {("int4-weight", "8da4w"): "XNNPACK stores 8da4w group scales as bf16 in its own int4 packing; "
                                         "ExecuTorch's embedding_4bit kernel reads fp32 scales"}
# Nodes that are bookkeeping, not compute: they never reach a kernel.
_NON_COMPUTE = {"getitem"}


def _export(name: str, module: Any, args: tuple) -> Any:
    """torch.export under the program's own prefix.

    Constants are keyed by their fully qualified name in the weights file, so the two
    programs must not share names for different tensors (encode's `layers.0.q.weight`
    is not decode's): each program is exported under its own prefix. A tensor that
    really is shared (the embedding) gets two names and one stored copy, because the
    data store deduplicates by content.

    One trace per program. The external-weights tags are set later, on the edge program the
    partitioner is handed (_tag_dequantized_weights: every constant placeholder and every
    dequantize reading one) and by to_executorch's `external_constants` for the constants
    left outside the delegate. Tagging here as well (unlift, tag the get_attrs, export the
    unlifted module again) gave the same weights.ptd and model.pte and cost a second
    torch.export per program, and a longer `from_node` provenance chain on every node, which
    each later ExecuTorch pass deep-copies (see _shared_provenance).
    """
    import torch

    class Prefixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.add_module(name, module)  # parameters and buffers now live under `name.`

        def forward(self, *inputs):
            return getattr(self, name)(*inputs)

    with torch.no_grad():
        return torch.export.export(Prefixed(), args, strict=False)


def _tag_dequantized_weights(ep: Any) -> None:
    """Tag the dequantize nodes of quantized constants for the external file too.

    XNNPACK serializes a quantized weight from its dequantize node (the int8 data and the
    scales are that node's inputs) and reads the external tag from that node's metadata,
    not from the constant's: without this, every 8da8w/8da4w weight and its scales go
    into model.pte's own named data, and the tied table is stored twice (the lm_head's
    int8 copy inline in the .pte, the int8 embedding in weights.ptd).
    """
    sig = ep.graph_signature
    constants = {*sig.inputs_to_parameters, *sig.inputs_to_buffers, *sig.inputs_to_lifted_tensor_constants}
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in constants:
            node.meta.setdefault("custom", {}).setdefault("delegate_constant_tag", _DATA_TAG)
        elif node.op == "call_function" and "dequantize" in str(node.target) and any(
                a.op == "placeholder" and a.name in constants for a in node.all_input_nodes):
            node.meta.setdefault("custom", {})["delegate_constant_tag"] = _DATA_TAG


def _external_weights_partitioner() -> Any:
    """XnnpackPartitioner that first tags, in the edge program it is handed, every constant and
    every dequantize node reading one for the external weights file (see _tag_dequantized_weights)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    class Partitioner(XnnpackPartitioner):
        def partition(self, exported_program: Any) -> Any:
            _tag_dequantized_weights(exported_program)
            return super().partition(exported_program)

    return Partitioner()


def count_delegation(graph_module: Any) -> tuple[Any, int, Counter]:
    """ExecuTorch's delegation info for a lowered graph: (info, delegated compute nodes, Counter of
    the compute nodes left outside every delegate, by op type as get_delegation_info names them)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    outside: Counter = Counter()
    delegated = 0
    for op, stats in info.delegation_by_operator.items():
        if op in _NON_COMPUTE:
            continue
        delegated += stats.delegated
        if stats.non_delegated:
            outside[op] += stats.non_delegated
    return info, delegated, outside


def delegation(graph_module: Any, delegate: str) -> dict[str, Any]:
    """The manifest's per-program delegation summary (ExecuTorch delegates: XNNPACK, Core ML)."""
    from .ops import delegate_ops

    info, delegated, portable = count_delegation(graph_module)
    total = delegated + sum(portable.values())
    return {
        "delegate": delegate,
        "delegated_subgraphs": info.num_delegated_subgraphs,
        "delegated_nodes": delegated,
        "portable_nodes": sum(portable.values()),
        "delegated_fraction": round(delegated / total, 4) if total else 1.0,
        "portable_ops": dict(sorted(portable.items())),
        **delegate_ops(graph_module),  # operators per call, as the delegate compiled them
    }


def runtime_ops(et: Any, report: dict[str, Any]) -> None:
    """Kernels the runtime calls outside the delegate, per method, after ExecuTorch's own
    fusions (e.g. dequantize+embedding -> quantized_decomposed::embedding_byte)."""
    for plan in et.executorch_program.execution_plan:
        report[plan.name]["runtime_ops"] = sorted(o.name for o in plan.operators)


def lower(parts: Seq2SeqParts, recipe: Recipe, out_dir: Path, tool_versions: dict[str, str]) -> Lowered:
    from executorch.exir import to_edge_transform_and_lower

    from ...split import text_inputs

    # The manifest's shapes and dtypes, from one eager run of each program: before quantizing,
    # because quantization changes neither, and torchao's eager int8 linears (weights dequantized
    # and activations re-quantized in Python on every call) made this run ~3 s of a t5-small export.
    sig = parts.describe()
    with progress.stage("  quantize (torchao)") if recipe.quantization else nullcontext():
        quant = quantize.apply(parts, recipe)
    # Export-time cuts, each leaving the artifact byte-identical: node provenance shared instead of
    # deep-copied by every pass (provenance.py); XNNPACK passes and to_edge's last decomposition
    # retrace skipped when they have nothing to rewrite (xnnpack_passes.py, retraces.py); the
    # programs traced and lowered on two processes (parallel.py).
    traces: dict[str, Callable[[], Any]] = {
        "encode": partial(_export, "encode", parts.encode, parts.encode_inputs()),
        "decode": partial(_export, "decode", parts.decode, parts.decode_inputs())}
    for n, module in sorted(parts.encode_buckets.items()):
        traces[f"encode_{n}"] = partial(_export, f"encode_{n}", module, tuple(t.example() for t in text_inputs(n)))

    def export_and_lower(group: dict[str, Callable[[], Any]]) -> Any:
        return to_edge_transform_and_lower({name: trace() for name, trace in group.items()},
                                           partitioner=[_external_weights_partitioner()])

    with provenance.shared(), xnnpack_passes.skipping(), retraces.skipping():
        jobs = parallel.jobs()
        with progress.stage(f"  torch.export, partition and lower to XNNPACK ({jobs} process{'es' * (jobs > 1)})"):
            edge = parallel.lower(traces, export_and_lower, jobs)
        report = {name: delegation(edge.exported_program(name).graph_module, "XnnpackBackend") for name in traces}
        with progress.stage("  serialize model.pte + weights.ptd"):
            et = _to_executorch(edge, list(traces), quant)
            (out_dir / PTE).write_bytes(et.buffer)
            et.write_tensor_data_to_file(str(out_dir))
    runtime_ops(et, report)
    written = out_dir / f"{_DATA_TAG}.ptd"
    if written.name != PTD:
        written.rename(out_dir / PTD)
    if quant["lm_head"].get("tied_to"):
        quant["lm_head"]["storage"] = tied_storage(out_dir / PTD, quant)
    sig["encode"].update(file=PTE, method="encode")
    if parts.encode_buckets:  # inputs [1, L] each; outputs as the full encode's
        sig["encode"]["lengths"] = [{"length": n, "method": f"encode_{n}"} for n in sorted(parts.encode_buckets)]
    sig["decode"].update(file=PTE, method="decode",
                         kv_cache="in-program mutable buffers (cache_k_*, cache_v_*), zero-initialised; "
                         "a step attends over them and then writes its slot in place (index_put_)")
    schemes = quantize.program_schemes(quant)
    for name in sig:
        sig[name]["data_file"] = PTD
        sig[name]["quantization"] = schemes[name]
    return Lowered(files=[PTE, PTD], programs=sig, report={"delegation": report, "quantization": quant},
                   tool_versions=tool_versions)


def tied_storage(ptd: Path, quant: dict[str, Any]) -> dict[str, Any]:
    """How the tied table is stored in weights.ptd, read back from the file.

    The embedding's tensors are named by their path (`decode.embed.weight`, or its int8 data
    and scales `decode.embed.parametrizations.weight.original0/1`); XNNPACK names the lm_head's
    weight and scales by content (`<sha256>`, `scale_<sha256>`). The store keeps one buffer
    per distinct content, so the table is stored once exactly when the embedding's largest
    buffer (its values) is also one of XNNPACK's.
    """
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    payload = FlatTensorSerializer().deserialize(ptd.read_bytes())
    index = {key: entry.buffer_index for key, entry in payload.named_data.items()}
    embed = {i for key, i in index.items() if key.startswith("decode.embed.")}
    xnnpack = {i for key, i in index.items() if "." not in key}  # content-hash keys
    if not embed:  # an adapter whose decode embedding is not `decode.embed`
        return tied.storage(None, why="no decode.embed.* tensor in weights.ptd")
    size = {i: len(payload.buffers[i]) for i in embed}
    shared = embed & xnnpack
    return tied.storage(max(embed, key=size.__getitem__) in shared, sum(size[i] for i in shared),
                        schemes=(quant["embeddings"]["scheme"], quant["lm_head"]["scheme"]), known=_NOT_SHARED)


def _to_executorch(edge: Any, programs: list[str], quant: dict) -> Any:
    """The edge programs as one ExecuTorch program, every constant tagged for weights.ptd."""
    from executorch.exir import ExecutorchBackendConfig
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    return edge.to_executorch(ExecutorchBackendConfig(
        external_constants=lambda _node: _DATA_TAG,
        passes=[InitializedMutableBufferPass(["cache_"])],
        # CacheMode.SLOT: decode's index_put into each cache buffer becomes index_put_, so the
        # step writes its one slot in place (without it, a whole-cache copy per layer and step).
        run_reinplace_pass=True,
        # decode's inputs are not memory-planned: the runtime reads the caller's tensors in
        # place instead of copying them into its arena on every step (the cross K/V are
        # 2 x layers x [H, Dh, S] floats: 1.5 MB per token on a t5-small-sized model).
        # encode keeps planned inputs (a few KB, and callers may hand it temporaries).
        memory_planning_pass={name: MemoryPlanningPass(alloc_graph_input=name != "decode") for name in programs},
        # Fuses torchao's dequantize->embedding into quantized_decomposed::embedding_byte/4bit.
        do_quant_fusion_and_const_prop=quant["embeddings"]["scheme"] != "none"))
