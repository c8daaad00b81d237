"""Keep what the NPU will execute: each delegated subgraph's TOSA flatbuffer (the exact integer
program Vela compiles) and the partitioned program that calls them, so that verify can run
the delegates on the TOSA reference model (reference.py) instead of trusting the host reference.

Artifact layout (all listed and hashed in the manifest):

    tosa/<program>.ept        the partitioned edge program (ExecuTorch serde): CPU operators
                              plus one executorch_call_delegate per NPU subgraph; each delegate
                              keeps its pre-TOSA int8 graph (`original_module`), which is the
                              host reference for that subgraph's outputs
    tosa/<program>_<n>.tosa   the TOSA flatbuffer of delegate call n (in graph order), as the
                              Arm backend handed it to Vela

Manifest, programs.<program>.tosa: {"graph": file, "subgraphs": [{"index", "delegate" (the
lowered module's attribute name), "file", "inputs", "outputs" (dtype and shape of each
boundary tensor)}]}.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

TOSA_DIR = "tosa"


def delegate_calls(graph_module: Any) -> list[Any]:
    """The executorch_call_delegate nodes of a partitioned graph, in execution (graph) order."""
    import torch

    return [n for n in graph_module.graph.nodes
            if n.op == "call_function" and n.target is torch.ops.higher_order.executorch_call_delegate]


def _tensor(value: Any) -> dict[str, Any]:
    return {"dtype": str(value.dtype).removeprefix("torch."), "shape": [int(d) for d in value.shape]}


def keep(program: Any, name: str, dumped: Path, out_dir: Path) -> dict[str, Any]:
    """Copy program `name`'s TOSA flatbuffers from the lowering's intermediates dir `dumped` into
    `out_dir/tosa/`, save the partitioned program beside them; returns the manifest entry.

    The Arm backend names each dump after its partition tag (output_<tag>_<TOSA spec>.tosa); the
    tag is read back from the delegate's own graph, so the map call -> file is exact."""
    from executorch.backends.arm.tosa.backend import arm_get_first_delegation_tag
    from executorch.exir.serde.serialize import save

    (out_dir / TOSA_DIR).mkdir(exist_ok=True)
    gm = program.graph_module
    subgraphs = []
    for i, node in enumerate(delegate_calls(gm)):
        attr = node.args[0].target
        lowered = getattr(gm, attr)
        tag = arm_get_first_delegation_tag(lowered.original_module.graph_module)
        found = sorted(dumped.glob(f"output_{tag}_*.tosa"))
        if len(found) != 1:
            raise RuntimeError(f"{name}: expected one TOSA dump for delegate {attr} (tag {tag!r}) in the "
                               f"lowering's intermediates, found {len(found)}")
        rel = f"{TOSA_DIR}/{name}_{i}.tosa"
        shutil.copyfile(found[0], out_dir / rel)
        outs = lowered.original_module.graph_module.graph.output_node().args[0]
        subgraphs.append({"index": i, "delegate": attr, "file": rel,
                          "inputs": [_tensor(a.meta["val"]) for a in node.args[1:]],
                          "outputs": [_tensor(o.meta["val"]) for o in outs]})
    graph = f"{TOSA_DIR}/{name}.ept"
    with (out_dir / graph).open("wb") as f:
        save(program, f)
    return {"graph": graph, "subgraphs": subgraphs}


def files(entries: dict[str, dict[str, Any]]) -> list[str]:
    """Every artifact file `keep` wrote, for the manifest's file list."""
    return [f for e in entries.values() for f in (e["graph"], *(s["file"] for s in e["subgraphs"]))]
