"""Reading a LiteRT flatbuffer back without an interpreter (one with DISPATCH_OP needs the
vendor's dispatch library to load): signatures, op counts, build stamp; the signature checks
export runs after compiling and `verify` runs on an artifact that cannot execute here."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from ..base import cross_input_problem
from ..litert import SIGNATURES

if TYPE_CHECKING:
    from ...artifact import Artifact

DISPATCH_OP = "DISPATCH_OP"  # LiteRT's custom op for a compiled NPU partition


def read_structure(data: bytes) -> dict[str, Any]:
    """A flatbuffer's signatures (tensor name, shape, dtype per input/output), op counts per
    signature (custom ops by their custom code) and LiteRT's build stamp."""
    from ai_edge_litert import schema_py_generated as fb

    from ..litert.export import schema_names

    model = fb.Model.GetRootAsModel(data, 0)
    op_names, dtypes = schema_names()
    sigs: dict[str, Any] = {}
    for i in range(model.SignatureDefsLength()):
        s = model.SignatureDefs(i)
        sg = model.Subgraphs(s.SubgraphIndex())

        def io_list(n: int, get: Any, sg: Any = sg) -> list[dict[str, Any]]:
            out = []
            for j in range(n):
                t = sg.Tensors(get(j).TensorIndex())
                shape = t.ShapeAsNumpy()  # 0, not an array, for a scalar
                out.append({"tensor": get(j).Name().decode(),
                            "shape": [] if isinstance(shape, int) else [int(d) for d in shape],
                            "dtype": dtypes.get(t.Type(), str(t.Type()))})
            return out

        ops: Counter = Counter()
        for o in range(sg.OperatorsLength()):
            code = model.OperatorCodes(sg.Operators(o).OpcodeIndex())
            name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")
            if name == "CUSTOM" and code.CustomCode():
                name = code.CustomCode().decode()
            ops[name] += 1
        sigs[s.SignatureKey().decode()] = {"subgraph": s.SubgraphIndex(), "inputs": io_list(s.InputsLength(), s.Inputs),
                                           "outputs": io_list(s.OutputsLength(), s.Outputs),
                                           "ops": dict(sorted(ops.items()))}
    stamp = None
    for i in range(model.MetadataLength()):
        md = model.Metadata(i)
        if md.Name() == b"LiteRtStamp":
            raw = model.Buffers(md.Buffer()).DataAsNumpy()
            raw = bytes(raw) if not isinstance(raw, int) else b""
            stamp = [p.decode(errors="replace") for p in raw.split(b"\0") if p.strip(b"\0")]
    return {"signatures": sigs, "build_stamp": stamp}


def _io_mismatch(prog: dict[str, Any], sig: dict[str, Any]) -> str | None:
    """None if the signature has exactly the program's tensors (name, shape, runtime dtype)."""
    for kind in ("inputs", "outputs"):
        want = sorted((e["tensor"], e["shape"], e["runtime_dtype"]) for e in prog[kind])
        got = sorted((e["tensor"], e["shape"], e["dtype"]) for e in sig[kind])
        if want != got:
            return f"{kind} differ from the manifest"
    return None


def signature_problems(struct: dict[str, Any], programs: dict[str, Any]) -> list[str]:
    """"signature <program> <what>" for each program whose signature is missing or differs
    from the manifest's: the compiler must keep the signatures the Session contract relies on."""
    out = []
    for prog in SIGNATURES:
        sig = struct["signatures"].get(prog)
        bad = "missing" if sig is None else _io_mismatch(programs[prog], sig)
        if bad:
            out.append(f"signature {prog} {bad}")
    return out


def _ops(struct: dict[str, Any], prog: str) -> dict[str, int]:
    return struct["signatures"].get(prog, {}).get("ops", {})


def verify_structure(artifact: Artifact) -> dict[str, Any]:
    """What can be checked without the NPU: both flatbuffers read back and compared with the manifest.

    The artifact was opened with its hashes checked, so every file is the one exported.
    """
    m = artifact.manifest
    npu, progs = m["litert_aot"], m["programs"]
    compiled = read_structure(artifact.file(npu["file"]).read_bytes())
    fallback = read_structure(artifact.file(npu["cpu_fallback_file"]).read_bytes())
    failures = []
    for label, struct in (("compiled", compiled), ("cpu fallback", fallback)):
        failures += [f"{label} model: {p}" for p in signature_problems(struct, progs)]
    for prog, n in npu["dispatch_ops"].items():
        got = _ops(compiled, prog).get(DISPATCH_OP, 0)
        if got != n:
            failures.append(f"{prog}: {got} {DISPATCH_OP} ops, the manifest says {n}")
    if any(DISPATCH_OP in _ops(fallback, p) for p in SIGNATURES):
        failures.append(f"the cpu fallback model has {DISPATCH_OP} ops")
    dec = compiled["signatures"].get("decode", {})
    cross_checked, cross_problem = cross_input_problem(m, dec.get("inputs", []))
    if cross_problem:
        failures.append(cross_problem)
    t = m["target"]
    return {
        "runtime": f"{t['runtime']}/{t['backend']}",
        "checked": ["file hashes", "signatures encode/decode in the compiled and the cpu fallback model",
                    "input/output tensor names, shapes, dtypes", f"{DISPATCH_OP} counts as exported",
                    cross_checked],
        "numerics": f"not run: needs the {npu['soc_manufacturer']} {npu['soc_model']} NPU",
        "npu_ops": {p: {"dispatch_ops": _ops(compiled, p).get(DISPATCH_OP, 0),
                        "cpu_ops": sum(n for op, n in _ops(compiled, p).items() if op != DISPATCH_OP)}
                    for p in SIGNATURES},
        "build_stamp": compiled["build_stamp"],
        "passed": not failures, "failures": failures,
    }
