"""What can be read back from an executorch-coreml ``.pte`` without a Core ML runtime: its
methods, their delegates and the Core ML model bytes they point to (verify's structure check)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import DELEGATE

if TYPE_CHECKING:
    from ...artifact import Artifact


def delegate_blobs(pte: bytes) -> dict[str, list[dict[str, Any]]]:
    """Per method: its delegates and the Core ML model bytes they point to, read back from the .pte.

    ExecuTorch's Core ML backend lowers all methods into one multifunction mlpackage
    stored once in the program's named data; each method's inline delegate blob is a
    small reference, b'CMJR' + JSON {"key": <named data key>, "functionName": <method>}.
    """
    from executorch.exir._serialize._program import deserialize_pte_binary

    f = deserialize_pte_binary(pte)
    prog, named = f.program, f.named_data
    out = {}
    for plan in prog.execution_plan:
        blobs = []
        for d in plan.delegates:
            inline = bytes(prog.backend_delegate_data[d.processed.index].data)
            entry: dict[str, Any] = {"id": d.id, "inline_bytes": len(inline)}
            if inline.startswith(b"CMJR"):
                ref = json.loads(inline[4:])
                data = named.pte_data.get(ref["key"]) if named is not None else None
                entry.update(function=ref.get("functionName"), key=ref["key"],
                             model_bytes=len(named.buffers[data.buffer_index]) if data is not None else 0)
            blobs.append(entry)
        out[plan.name] = blobs
    return out


def verify_structure(artifact: Artifact) -> dict[str, Any]:
    """What can be checked without the Core ML runtime: methods, delegates and their model blob."""
    progs = artifact.manifest["programs"]
    blobs = delegate_blobs(artifact.file(progs["encode"]["file"]).read_bytes())
    failures = []
    for name in ("encode", "decode"):
        entries = blobs.get(name)
        if not entries:
            failures.append(f"method {name} missing or not delegated")
        elif any(e["id"] != DELEGATE or not e.get("model_bytes") for e in entries):
            failures.append(f"method {name}: delegate is not a {DELEGATE} blob with a model: {entries}")
    t = artifact.manifest["target"]
    return {"runtime": f"{t['runtime']}/{t['backend']}",
            "checked": ["file hashes", "methods encode/decode present", f"each method is one {DELEGATE} delegate",
                        "the Core ML model blob is inside the .pte"],
            "numerics": "not run: needs an ExecuTorch runtime with CoreMLBackend (macOS/iOS)",
            "delegates": blobs, "passed": not failures, "failures": failures}
