"""What a saved Core ML package contains, read back from its spec (any OS): functions, I/O,
states, ops, stored weights, hints about the Neural Engine; and the structure-only verify of
an artifact that cannot execute here (``MLModel.predict`` exists only on macOS)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base import cross_input_problem
from . import FUNCTIONS

if TYPE_CHECKING:
    from ...artifact import Artifact

# Spec data types -> (name, bits per element), for weight sizes.
_DTYPES = {"FLOAT16": ("float16", 16), "FLOAT32": ("float32", 32), "INT8": ("int8", 8), "UINT8": ("uint8", 8),
           "INT4": ("int4", 4), "UINT4": ("uint4", 4), "INT32": ("int32", 32), "INT16": ("int16", 16),
           "UINT16": ("uint16", 16), "BOOL": ("bool", 8)}


def _io(features: Any, state: bool = False) -> list[dict[str, Any]]:
    from coremltools.proto import FeatureTypes_pb2 as ft

    out = []
    for f in features:
        arr = f.type.stateType.arrayType if state else f.type.multiArrayType
        out.append({"name": f.name, "shape": [int(d) for d in arr.shape],
                    "dtype": ft.ArrayFeatureType.ArrayDataType.Name(arr.dataType).lower()})
    return out


def _numel(tensor_type: Any) -> int:
    n = 1
    for d in tensor_type.dimensions:
        n *= int(d.constant.size)
    return n


def _stored_values(ops: list[Any]) -> Iterator[Any]:
    """Every constant value of a function: `const` ops' values and the inline arguments of
    `constexpr_*` ops (a compressed weight's int8/int4 data, scales and offsets live there)."""
    for op in ops:
        if op.type == "const":
            yield from op.attributes.values()
        for arg in op.inputs.values():
            for a in arg.arguments:
                if a.HasField("value"):
                    yield a.value


def _ane_notes(fn_name: str, ops: list[Any], precision: str, ops_by_type: Counter) -> list[str]:
    """Heuristic hints, not a compute plan (on macOS, MLComputePlan gives the real device per op)."""
    from coremltools.proto import MIL_pb2

    notes = []
    names = MIL_pb2.DataType.Name
    fp32 = sorted({op.type for op in ops if op.type not in ("const", "cast") and op.outputs
                   and names(op.outputs[0].type.tensorType.dataType) == "FLOAT32"})
    if precision == "float16" and fp32:
        notes.append(f"{fn_name}: fp32 compute in an fp16 model ({', '.join(fp32)}): the Neural Engine "
                     f"computes fp16 only, these run on CPU/GPU")
    ints = sorted({op.type for op in ops if op.type not in ("const", "cast", "gather") and op.outputs
                   and names(op.outputs[0].type.tensorType.dataType).startswith(("INT", "UINT", "BOOL"))})
    if ints:
        notes.append(f"{fn_name}: integer/bool ops ({', '.join(ints)}) usually run on CPU")
    if ops_by_type.get("gather"):
        notes.append(f"{fn_name}: {ops_by_type['gather']} gather (embedding lookup) often runs on CPU")
    big = sorted({op.type for op in ops if op.type != "const" and op.outputs and any(
        int(d.constant.size) > 16384 for d in op.outputs[0].type.tensorType.dimensions)})
    if big:
        notes.append(f"{fn_name}: ops with a dimension > 16384 ({', '.join(big)}) exceed common Neural "
                     f"Engine limits (e.g. a large-vocabulary head)")
    layout = ops_by_type.get("reshape", 0) + ops_by_type.get("transpose", 0)
    if layout:
        notes.append(f"{fn_name}: {layout} reshape/transpose ops (the Neural Engine prefers a [B, C, 1, S] "
                     f"channels-first layout; each layout change costs a copy)")
    return notes


def structure(package: Path, precision: str) -> dict[str, Any]:
    """Reload the saved package's spec and describe it: functions, I/O, states, ops, weights."""
    import coremltools as ct
    from coremltools.proto import MIL_pb2

    spec = ct.utils.load_spec(str(package))
    funcs = {f.name: f for f in spec.description.functions}
    out: dict[str, Any] = {"spec_version": spec.specificationVersion,
                           "default_function": spec.description.defaultFunctionName, "functions": {}}
    blobs: dict[tuple[str, int], tuple[str, int]] = {}
    notes = []
    for name, fn in spec.mlProgram.functions.items():
        ops = list(fn.block_specializations[fn.opset].operations)
        by_type = Counter(op.type for op in ops)
        desc = funcs[name]
        for val in _stored_values(ops):
            if val.WhichOneof("value") == "blobFileValue":
                dtype, bits = _DTYPES.get(MIL_pb2.DataType.Name(val.type.tensorType.dataType), ("other", 32))
                key = (val.blobFileValue.fileName, int(val.blobFileValue.offset))
                blobs[key] = (dtype, _numel(val.type.tensorType) * bits // 8)
        out["functions"][name] = {
            "opset": fn.opset,
            "inputs": _io(desc.input), "outputs": _io(desc.output), "states": _io(desc.state, state=True),
            "ops": dict(sorted((k, v) for k, v in by_type.items() if k != "const")),
            "compute_ops": sum(v for k, v in by_type.items() if k != "const"), "consts": by_type.get("const", 0)}
        notes += _ane_notes(name, ops, precision, by_type)
    weights: Counter[str] = Counter()
    for dtype, nbytes in blobs.values():  # each blob entry once: shared weights are counted once
        weights[dtype] += nbytes
    out["weights_bytes"] = dict(sorted(weights.items()))
    out["weights_total_bytes"] = sum(weights.values())
    out["ane_notes"] = notes
    return out


def verify_structure(artifact: Artifact) -> dict[str, Any]:
    """What can be checked without executing (any OS): reload the package, compare with the manifest.

    The artifact was opened with its hashes checked, so every file is the one exported.
    Numerical parity needs macOS (`MLModel.predict`); this never claims it.
    """
    m = artifact.manifest
    precision = m.get("coreml", {}).get("compute_precision", "float16")
    progs = m["programs"]
    struct = structure(artifact.file(progs["encode"]["file"]), precision)
    failures = []
    for name in FUNCTIONS:
        fn = struct["functions"].get(name)
        if fn is None:
            failures.append(f"function {name} missing")
            continue
        for kind in ("inputs", "outputs"):
            want = [(e["name"], e["shape"], e.get("runtime_dtype")) for e in progs[name][kind]]
            got = [(e["name"], e["shape"], e["dtype"]) for e in fn[kind]]
            if sorted(want) != sorted(got):
                failures.append(f"{name} {kind} differ from the manifest")
    dec = struct["functions"].get("decode", {})
    cache = {c["name"]: c["shape"] for c in progs["decode"].get("cache", [])}
    if {s["name"]: s["shape"] for s in dec.get("states", [])} != cache:
        failures.append("decode states do not match the manifest's cache")
    cross_checked, cross_problem = cross_input_problem(m, dec.get("inputs", []))
    if cross_problem:
        failures.append(cross_problem)
    return {
        "runtime": f"{m['target']['runtime']}/{m['target']['backend']}",
        "checked": ["file hashes", "functions encode/decode present", "input/output names, shapes, dtypes",
                    "decode KV cache is Core ML state", cross_checked],
        "numerics": "not run: needs macOS",
        "functions": {n: {"inputs": len(f["inputs"]), "outputs": len(f["outputs"]), "states": len(f["states"]),
                          "compute_ops": f["compute_ops"]} for n, f in struct["functions"].items()},
        "weights_bytes": struct["weights_bytes"], "ane_notes": struct["ane_notes"],
        "passed": not failures, "failures": failures,
    }
