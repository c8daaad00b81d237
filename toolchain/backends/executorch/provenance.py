"""Share torch.fx node provenance between passes instead of deep-copying it (export time).

Every node an ExecuTorch pass re-creates gets ``meta["from_node"] = [NodeSource(old_node)]``
(torch/fx/traceback.py, set_current_meta), and NodeSource's constructor *deep-copies* the old
node's own ``from_node`` list: the whole provenance tree back to the first export. Lowering
retraces the graph once per pass (to_edge's decompositions and ~20 passes, XNNPACK's 17 passes,
to_executorch's), so the tree gets one level deeper each time and every level is copied again
for every node: on a t5-small-sized int8 export, 62k NodeSource constructions spent ~16% of the
export's CPU time in copy.deepcopy (cProfile; `benchmarks/export_time.py --profile`).

A NodeSource is never changed after it is built (torch, torchao and ExecuTorch only read it:
ExecuTorch walks ``from_node[-1]`` to the oldest ancestor to give nodes of one source op the
same debug handle), so a copy and the original are interchangeable. While ``shared()`` is
active, deepcopy returns the NodeSource itself: the lists holding them are still new lists
(appending to one node's ``from_node`` does not touch another's), only the immutable records
are shared. The tree, the debug handles and so the serialized program are the same bytes
(checked: model.pte and weights.ptd sha256 equal with and without it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_lock = threading.Lock()
_depth = 0  # nested or concurrent shared() blocks: the hook goes when the last one ends


def _same(self: Any, memo: dict[int, Any]) -> Any:
    """NodeSource.__deepcopy__ while shared(): the record is immutable, so it is its own copy."""
    return self


@contextmanager
def shared() -> Iterator[None]:
    """NodeSource deep copies return the same object for the duration of the block."""
    global _depth
    from torch.fx.traceback import NodeSource

    with _lock:
        if _depth == 0 and "__deepcopy__" in vars(NodeSource):
            hook = False  # a torch that defines its own copy: leave it alone
        else:
            hook = True
            if _depth == 0:
                NodeSource.__deepcopy__ = _same  # type: ignore[attr-defined]
            _depth += 1
    try:
        yield
    finally:
        if hook:
            with _lock:
                _depth -= 1
                if _depth == 0:
                    del NodeSource.__deepcopy__  # type: ignore[attr-defined]
