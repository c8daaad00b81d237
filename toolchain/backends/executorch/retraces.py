"""Two retraces ExecuTorch makes that cannot change the program, skipped (export time).

**to_edge's last decomposition retrace, when it has nothing to decompose.**

to_edge_transform_and_lower retraces every program three times before the edge passes
(executorch/exir/program/_program.py, _gen_edge_manager_for_partitioners, on the path XNNPACK's
partitioner takes, EDGE_DO_NOT_DECOMP):

  1. ``run_decompositions({})``: functionalize;
  2. ``run_decompositions(table)``: the core ATen table minus the ops the partitioner wants
     whole (linear, ...), which stay as they are;
  3. ``_replace_aten_ops_with_transformed_ops`` renames, in place, the kept ops the partitioner
     really supports, then ``run_decompositions(full table)`` decomposes the kept ops it does not
     support, and the renamed ones go back to ATen.

Retrace 3 is a full re-export through fake tensors (~1/10 of a t5-small-sized lowering here),
and when no node's target is in the full table after the renaming (every kept op was
supported) it changes nothing. ExecuTorch's other path already skips its second retrace on
exactly that test (``contains_any_call_fn_target_op``); ``skipping()`` applies it to retrace 3.

**A delegate's original program, re-run to get its outputs' shapes.** Every ExportPass that
meets an ``executorch_call_delegate`` node (to_executorch runs several per method) asks fake
tensor mode for the call's outputs, and torch's fake rule for it (call_delegate_cpu) unlifts the
delegate's original ExportedProgram (``.module()``) and runs it whole on fake tensors: torchao's
dequantize ops in Python, node by node, ~85% of to_executorch on a t5-small-sized int8 export
(cProfile). The outputs' shapes, strides and dtypes are already in that program's output node
(``meta["val"]``), so while ``skipping()`` is active the fake call returns empty fake tensors of
exactly those; a program that mutates buffers, or an output without a recorded tensor, still runs.

Both leave the artifact the same bytes (tests/test_export_time.py).
"""

from __future__ import annotations

import weakref
from typing import Any

from .patching import ScopedPatch

_renamed: weakref.WeakSet[Any] = weakref.WeakSet()  # programs just renamed by step 3


def _replace(name: str, program: Any, partitioner: Any) -> Any:
    """_replace_aten_ops_with_transformed_ops, remembering the program it renamed."""
    preserved = skipping.original("_replace_aten_ops_with_transformed_ops")(name, program, partitioner)
    _renamed.add(program)
    return preserved


def _run_decompositions(self: Any, decomp_table: Any = None, *args: Any, **kwargs: Any) -> Any:
    """ExportedProgram.run_decompositions; the program itself when it is retrace 3 and no node
    is in the table."""
    from executorch.exir.graph_module import contains_any_call_fn_target_op

    if self in _renamed:
        _renamed.discard(self)
        if decomp_table is not None and not contains_any_call_fn_target_op(self.graph_module, decomp_table):
            return self
    return skipping.original("ExportedProgram.run_decompositions")(self, decomp_table, *args, **kwargs)


def _delegate_outputs(lowered_module: Any, *args: Any) -> Any:
    """call_delegate_cpu; on fake inputs, empty fake tensors shaped as the delegate's recorded outputs."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensor
    from torch.utils import _pytree as pytree

    ep = lowered_module.original_module
    like = next((a for a in pytree.tree_leaves(args) if isinstance(a, FakeTensor)), None)
    outputs = list(ep.graph.output_node().args[0])
    vals = [n.meta.get("val") if isinstance(n, torch.fx.Node) else None for n in outputs]
    tensors = [v for v in vals if isinstance(v, torch.Tensor)]
    if like is None or len(ep.graph_signature.user_outputs) != len(outputs) or len(tensors) != len(vals):
        return skipping.original("call_delegate_cpu")(lowered_module, *args)
    fresh = [like.new_empty_strided(v.shape, v.stride(), dtype=v.dtype) for v in tensors]
    return pytree.tree_unflatten(fresh, ep.call_spec.out_spec)


# Installed by `with skipping():` (patching.py); the replacements call the originals through it.
skipping = ScopedPatch(
    ("executorch.exir.program._program", "_replace_aten_ops_with_transformed_ops", _replace),
    ("torch.export.exported_program", "ExportedProgram.run_decompositions", _run_decompositions),
    ("torch._higher_order_ops.executorch_call_delegate", "call_delegate_cpu", _delegate_outputs),
)
