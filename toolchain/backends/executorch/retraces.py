"""Skip to_edge's last decomposition retrace when it has nothing to decompose (export time).

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
The artifact is the same bytes either way (tests/test_export_time.py).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_lock = threading.Lock()
_depth = 0
_originals: dict[str, Callable[..., Any]] = {}
_renamed: weakref.WeakSet[Any] = weakref.WeakSet()  # programs just renamed by step 3


def _replace(name: str, program: Any, partitioner: Any) -> Any:
    """_replace_aten_ops_with_transformed_ops, remembering the program it renamed."""
    preserved = _originals["replace"](name, program, partitioner)
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
    return _originals["run"](self, decomp_table, *args, **kwargs)


@contextmanager
def skipping() -> Iterator[None]:
    """to_edge skips its no-op third decomposition retrace, for the duration of the block."""
    global _depth
    from executorch.exir.program import _program
    from torch.export import ExportedProgram

    with _lock:
        if _depth == 0:
            _originals.update(replace=_program._replace_aten_ops_with_transformed_ops,
                              run=ExportedProgram.run_decompositions)
            _program._replace_aten_ops_with_transformed_ops = _replace
            ExportedProgram.run_decompositions = _run_decompositions  # type: ignore[method-assign]
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _program._replace_aten_ops_with_transformed_ops = _originals["replace"]
                ExportedProgram.run_decompositions = _originals["run"]  # type: ignore[method-assign]
                _originals.clear()
