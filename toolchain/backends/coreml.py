"""Core ML runtime: one stateful multifunction ``.mlpackage`` (iOS 18 / macOS 15+).

``model.mlpackage`` holds two functions of one ML program, ``encode`` and
``decode``, built with ``coremltools.convert`` from the two ``torch.export``
programs and joined with ``ct.utils.save_multifunction``, which deduplicates
constants across functions: the token embedding both functions read is stored
once. An .mlpackage is a directory; the manifest's ``files`` lists every regular
file inside it (``model.mlpackage/Data/com.apple.CoreML/model.mlmodel``, its
weights blob, ``Manifest.json``) so the artifact's hashes cover all of them.

Tensors (S = recipe.max_input_len, T = max_output_len, H heads, Dh head dim):

    encode(input_ids int32[1, S], attention_mask int32[1, S])
        -> cross_bias [1, 1, S], cross_k_l [1, H, Dh, S], cross_v_l [1, H, S, Dh]
    decode(token int32[1, 1], position int32[1], cross_bias, cross_k_l, cross_v_l ...)
        -> logits [1, V]
       states cache_k_l [H, Dh, T], cache_v_l [H, T, Dh]

Core ML has no int64 tensors: ids, mask, token and position are int32 in the
model (the manifest records ``runtime_dtype``). Float I/O is fp16 on the
fp16-compute targets (ane, gpu; the Neural Engine computes in fp16 only) and
fp32 on ``cpu``; encode's outputs have exactly the dtype decode's inputs expect,
so the cross K/V pass between the functions without a cast. States are fp16 on
every target (Core ML has fp16 states only; on ``cpu`` the converter casts around
each read and update, so the fp32 build's cache holds fp16-rounded K/V).

The self-attention cache is Core ML *state*: the split's ``cache_mode="buffer"``
registers the caches as buffers updated in place, and the converter turns them
into ``read_state`` / ``coreml_update_state`` ops. Decode never sees the encoder
hidden states: its only per-input tensors are the cross K/V encode returns.

Weight compression is ``coremltools.optimize.coreml.linear_quantize_weights`` on
the converted functions, per component (same selection as toolchain/quantize.py:
encoder = every nn.Linear of encode, decoder = decode's except the head, lm_head,
embeddings = the gather table). Core ML has no dynamic activation quantization,
so 8da8w means int8 weights (per channel) and 8da4w int4 weights (blocks of
recipe.group_size along the input axis); activations stay at the compute
precision. Position-bias tables are never compressed.

``MLModel.predict`` exists only on macOS: on other systems ``open`` raises an
InputError and ``verify_structure`` checks what can be checked without running.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from . import Lowered

MLPACKAGE = "model.mlpackage"
FUNCTIONS = ("encode", "decode")
CACHE_MODE = "buffer"  # the self-attention cache becomes Core ML state
DEPLOYMENT_TARGET = "iOS18"  # states and multifunction models need iOS 18 / macOS 15

# target.backend -> (MLModel compute_units, compute precision)
BACKENDS = {
    "ane": ("CPU_AND_NE", "float16"),
    "gpu": ("CPU_AND_GPU", "float16"),
    "all": ("ALL", "float16"),
    "cpu": ("CPU_ONLY", "float32"),
}
# Recipe scheme -> stored weight format. "none" keeps the compute precision.
SCHEMES = {"none": "compute precision", "fp16": "fp16", "8da8w": "int8", "int8-weight": "int8",
           "8da4w": "int4", "int4-weight": "int4"}
# A finite fp16 stand-in for the split's -1e9 masks (fp16 max is 65504), see _fp16_safe_masks.
_FP16_NEG = -3.0e4
# Spec data types -> (name, bits per element), for weight sizes.
_DTYPES = {"FLOAT16": ("float16", 16), "FLOAT32": ("float32", 32), "INT8": ("int8", 8), "UINT8": ("uint8", 8),
           "INT4": ("int4", 4), "UINT4": ("uint4", 4), "INT32": ("int32", 32), "INT16": ("int16", 16),
           "UINT16": ("uint16", 16), "BOOL": ("bool", 8)}
_NEEDS_MAC = "Core ML artifacts execute only on macOS 15+; on Linux `edgeseq verify` checks structure only"


def available() -> tuple[bool, str]:
    import importlib.util

    ok = importlib.util.find_spec("coremltools") is not None
    return ok, "" if ok else "python package 'coremltools' not installed"


def can_execute() -> tuple[bool, str]:
    """Whether this machine can run Core ML models (verify/probe); else why not, in one line."""
    import platform

    if sys.platform != "darwin":
        return False, _NEEDS_MAC
    release = platform.mac_ver()[0]
    if tuple(int(x) for x in release.split(".")[:1] or [0]) < (15,):
        return False, f"Core ML states and multifunction models need macOS 15+; this is macOS {release}"
    return True, ""


def _supported(target) -> list[str]:
    # fp16 weights are what an fp16-compute target stores anyway; on cpu (fp32 compute)
    # Core ML has no fp16-weights-fp32-compute mode, so the scheme is not offered.
    fp16 = BACKENDS[target.backend][1] == "float16"
    return [s for s in SCHEMES if fp16 or s != "fp16"]


def check(recipe, target) -> None:
    from ..errors import InputError

    if target.backend not in BACKENDS:
        raise InputError(f"target {target.name}: coreml backend {target.backend!r} is not available; "
                         f"available: {', '.join(BACKENDS)}")
    from . import check_schemes

    check_schemes(recipe, target, {s: SCHEMES[s] for s in _supported(target)})


def preload() -> None:
    """Import the runtime, so a probe's load time measures loading the model, not Python imports."""
    import coremltools  # noqa: F401


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"coremltools": version("coremltools")}


# --------------------------------------------------------------------------- conversion


@contextmanager
def _quiet():
    """coremltools draws tqdm progress bars on stderr for every pass pipeline (tqdm reads its
    TQDM_DISABLE variable at import time, too early to set here): send them elsewhere."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def _fp16_safe_masks(parts) -> list[str]:
    """Clamp -1e9 mask entries of constant buffers to -3e4, in place; returns the buffers changed.

    The converter keeps any op with a constant beyond fp16 range in fp32 (e.g. T5's
    `F.linear(onehot(position), step_bias_table)` whose table holds the -1e9 causal mask),
    and an fp32 op cannot run on the Neural Engine: each decode step would bounce to the
    CPU and back. -3e4 is finite in fp16 and still gives exp() == 0 after softmax, so the
    attention is unchanged; 0 * -3e4 stays 0 (0 * -inf would be NaN). Caches are skipped.
    """
    import torch

    changed = []
    for prog, module in (("encode", parts.encode), ("decode", parts.decode)):
        for name, buf in module.named_buffers():
            if buf.is_floating_point() and not name.startswith("cache_") and bool((buf < -65504).any()):
                with torch.no_grad():
                    buf.clamp_(min=_FP16_NEG)
                changed.append(f"{prog}.{name}")
    return changed


def _untie_if_needed(parts, quantization: dict[str, str]) -> bool:
    """A tied head reads the embedding table itself (one constant, two consumers); Core ML
    compresses a constant one way, so differing embeddings/lm_head schemes need two tables.
    Returns whether it untied (then decode must be converted without const deduplication)."""
    from torch import nn

    dec = parts.decode
    emb_kind, head_kind = (SCHEMES[quantization.get(c, "none")] for c in ("embeddings", "lm_head"))
    if dec.lm_head is None and emb_kind != head_kind:  # int8-weight and 8da8w are both int8 per row here
        emb = dec.embed
        head = nn.Linear(emb.embedding_dim, emb.num_embeddings, bias=False)
        head.weight = nn.Parameter(emb.weight.detach().clone().float(), requires_grad=False)
        dec.lm_head = head
        return True
    return False


def _tensor_types(specs: list[dict[str, Any]], float_dtype):
    import coremltools as ct

    return [ct.TensorType(name=s["name"], shape=tuple(s["shape"]),
                          dtype=np.int32 if s["dtype"].startswith("int") else float_dtype) for s in specs]


def _convert(module, args, desc: dict[str, Any], precision: str, dedup: bool = True):
    """torch.export one program and convert it to an ML program with our I/O names.

    dedup=False keeps equal constants apart: an untied copy of a tied head has the
    embedding's values, and the converter's const_deduplication would merge the two
    back into one tensor that can then be compressed only one way.
    """
    import coremltools as ct
    import torch

    float_dtype = np.float16 if precision == "float16" else np.float32
    pipeline = ct.PassPipeline.DEFAULT
    if not dedup:
        pipeline.remove_passes({"common::const_deduplication"})
    with torch.no_grad():
        ep = torch.export.export(module, args, strict=False).run_decompositions({})
    with _quiet():
        return ct.convert(
            ep, inputs=_tensor_types(desc["inputs"], float_dtype),
            outputs=[ct.TensorType(name=o["name"], dtype=float_dtype) for o in desc["outputs"]],
            minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
            compute_precision=ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32,
            pass_pipeline=pipeline, convert_to="mlprogram")


def _const_name(fqn: str) -> str:
    """The converter names a parameter's constant `p_<fqn with _>` (plus a `_to_fp16` suffix)."""
    return "p_" + fqn.replace(".", "_")


def _weight_components(parts) -> dict[str, dict[str, str]]:
    """Per function: constant base name -> component, from the torch side's module names."""
    from torch import nn

    from ..quantize import components

    out: dict[str, dict[str, str]] = {"encode": {}, "decode": {}}
    for comp, mods in components(parts).items():
        for name, _module in mods:
            if comp == "embeddings":  # one table, read by both functions (encode has none for audio input)
                for fn, module in (("encode", parts.encode), ("decode", parts.decode)):
                    if isinstance(getattr(module, "embed", None), nn.Embedding):
                        out[fn][_const_name("embed.weight")] = comp
                continue
            fn, fqn = name.split(".", 1)
            out[fn][_const_name(f"{fqn}.weight")] = comp
    return out


def _select_consts(mlmodel, names: dict[str, str]) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Component -> [(const op name, shape)] of the weights linear/gather ops read in one function."""
    fn = mlmodel._mil_program.functions["main"]
    found: dict[str, list] = {}
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


def _compress(mlmodel, selected, quantization: dict[str, str], group_size: int):
    """int8 per-channel or int4 per-block weights for the components the recipe names."""
    from coremltools.optimize.coreml import (OpLinearQuantizerConfig, OptimizationConfig,
                                             linear_quantize_weights)

    from ..errors import InputError

    configs = {}
    for comp, consts in selected.items():
        kind = SCHEMES[quantization.get(comp, "none")]
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
    with _quiet():
        return linear_quantize_weights(mlmodel, OptimizationConfig(op_name_configs=configs))


def _save_multifunction(models: dict[str, Any], out: Path) -> None:
    import coremltools as ct

    with tempfile.TemporaryDirectory(prefix="coreml-", dir=out.parent) as tmp:
        desc = ct.utils.MultiFunctionDescriptor()
        for name, model in models.items():
            single = Path(tmp) / f"{name}.mlpackage"
            model.save(str(single))
            desc.add_function(str(single), src_function_name="main", target_function_name=name)
        desc.default_function_name = "decode"
        with _quiet():
            ct.utils.save_multifunction(desc, str(out))


def package_files(out_dir: Path, package: str = MLPACKAGE) -> list[str]:
    """Every regular file inside the package, relative to the artifact directory, sorted."""
    root = out_dir / package
    return sorted(str(p.relative_to(out_dir)) for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- structure


def _io(features, state: bool = False) -> list[dict[str, Any]]:
    from coremltools.proto import FeatureTypes_pb2 as ft

    out = []
    for f in features:
        arr = f.type.stateType.arrayType if state else f.type.multiArrayType
        out.append({"name": f.name, "shape": [int(d) for d in arr.shape],
                    "dtype": ft.ArrayFeatureType.ArrayDataType.Name(arr.dataType).lower()})
    return out


def _numel(tensor_type) -> int:
    n = 1
    for d in tensor_type.dimensions:
        n *= int(d.constant.size)
    return n


def _stored_values(ops):
    """Every constant value of a function: `const` ops' values and the inline arguments of
    `constexpr_*` ops (a compressed weight's int8/int4 data, scales and offsets live there)."""
    for op in ops:
        if op.type == "const":
            yield from op.attributes.values()
        for arg in op.inputs.values():
            for a in arg.arguments:
                if a.HasField("value"):
                    yield a.value


def _ane_notes(fn_name: str, ops, precision: str, ops_by_type: Counter) -> list[str]:
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
    weights = Counter()
    for dtype, nbytes in blobs.values():  # each blob entry once: shared weights are counted once
        weights[dtype] += nbytes
    out["weights_bytes"] = dict(sorted(weights.items()))
    out["weights_total_bytes"] = sum(weights.values())
    out["ane_notes"] = notes
    return out


def _program_entries(parts, struct: dict[str, Any]) -> dict[str, Any]:
    """parts.describe() plus, per tensor, the model's runtime dtype; checks names and shapes agree."""
    programs = parts.describe()
    for name in FUNCTIONS:
        fn, prog = struct["functions"][name], programs[name]
        for kind in ("inputs", "outputs"):
            got = {e["name"]: e for e in fn[kind]}
            for entry in prog[kind]:
                e = got.get(entry["name"])
                if e is None or e["shape"] != entry["shape"]:
                    raise RuntimeError(f"Core ML {name} {kind[:-1]} {entry['name']}{entry['shape']} "
                                       f"not found as converted: {fn[kind]}")
                entry["runtime_dtype"] = e["dtype"]
        prog.update(file=MLPACKAGE, function=name, method=name)
    states = struct["functions"]["decode"]["states"]
    programs["decode"]["states"] = states
    programs["decode"]["kv_cache"] = (
        f"Core ML state of the decode function ({states[0]['name']}..{states[-1]['name']}, "
        f"{states[0]['dtype']}); make_state() per input, zeroed before the first step")
    return programs


def _quant_report(selected: dict[str, dict], quantization: dict[str, str], group_size: int, precision: str):
    """Per component: scheme, tensors, fp32 bytes and stored bytes (values + fp16 scales; unquantized
    weights are stored at the compute precision)."""
    report = {}
    for comp in ("encoder", "decoder", "embeddings", "lm_head"):
        consts = {n: s for fn in selected.values() for n, s in fn.get(comp, [])}
        scheme = quantization.get(comp, "none")
        kind = SCHEMES[scheme]
        fp32 = est = 0
        for shape in consts.values():
            rows, cols = shape[0], int(np.prod(shape[1:]))
            fp32 += rows * cols * 4
            bits = {"int8": 8, "int4": 4}.get(kind)
            scales = rows * (cols // group_size if kind == "int4" else 1) * 2
            plain = 2 if kind == "fp16" or precision == "float16" else 4
            est += rows * cols * bits // 8 + scales if bits else rows * cols * plain
        report[comp] = {"scheme": scheme, "coreml": kind, "tensors": len(consts), "fp32_bytes": fp32,
                        "estimated_bytes": est}
    return report


def lower(parts, recipe, target, out_dir: Path, calibration: list[list[int]] | None = None) -> Lowered:
    if parts.cache_mode != CACHE_MODE:
        raise ValueError(f"coreml needs parts built with cache_mode={CACHE_MODE!r}, got {parts.cache_mode!r}")
    check(recipe, target)
    units, precision = BACKENDS[target.backend]
    quant = {c: s for c, s in recipe.quantization.items() if s != "none"}
    untied = _untie_if_needed(parts, quant)
    clamped = _fp16_safe_masks(parts) if precision == "float16" else []
    desc = parts.describe()
    t0 = time.time()
    models = {"encode": _convert(parts.encode, parts.encode_inputs(), desc["encode"], precision),
              "decode": _convert(parts.decode, parts.decode_inputs(), desc["decode"], precision, dedup=not untied)}
    convert_s = time.time() - t0
    names = _weight_components(parts)
    selected = {fn: _select_consts(models[fn], names[fn]) for fn in FUNCTIONS}
    t1 = time.time()
    models = {fn: _compress(m, selected[fn], quant, recipe.group_size) for fn, m in models.items()}
    quantize_s = time.time() - t1
    _save_multifunction(models, out_dir / MLPACKAGE)
    struct = structure(out_dir / MLPACKAGE, precision)
    programs = _program_entries(parts, struct)
    report = {"coreml": {
        "packaging": f"one multifunction {MLPACKAGE} (functions encode, decode; constants shared across "
                     f"functions stored once)",
        "minimum_deployment_target": DEPLOYMENT_TARGET, "compute_units": units, "compute_precision": precision,
        "convert_seconds": round(convert_s, 1), "quantize_seconds": round(quantize_s, 2),
        "fp16_clamped_buffers": clamped, **struct},
        "quantization": _quant_report(selected, recipe.quantization, recipe.group_size, precision)}
    return Lowered(files=package_files(out_dir), programs=programs, report=report, tool_versions=versions())


def verify_structure(artifact) -> dict[str, Any]:
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
    s = m["recipe"]["max_input_len"]
    if any(len(i["shape"]) == 3 and i["shape"][:2] == [1, s] for i in dec.get("inputs", [])):
        failures.append("decode has an encoder-hidden-states-shaped input [1, S, d_model]")
    return {
        "runtime": f"{m['target']['runtime']}/{m['target']['backend']}",
        "checked": ["file hashes", "functions encode/decode present", "input/output names, shapes, dtypes",
                    "decode KV cache is Core ML state", "decode has no encoder hidden-states input"],
        "numerics": "not run: needs macOS",
        "functions": {n: {"inputs": len(f["inputs"]), "outputs": len(f["outputs"]), "states": len(f["states"]),
                          "compute_ops": f["compute_ops"]} for n, f in struct["functions"].items()},
        "weights_bytes": struct["weights_bytes"], "ane_notes": struct["ane_notes"],
        "passed": not failures, "failures": failures,
    }


# --------------------------------------------------------------------------- runtime (macOS)


class CoreMLState:
    """One input's decode feeds (cross_bias and cross K/V from encode) and its Core ML state."""

    def __init__(self, feeds: dict[str, np.ndarray], state):
        self.feeds = feeds
        self.state = state


class CoreMLSession:
    def __init__(self, artifact, threads: int | None = None):
        import coremltools as ct

        from ..errors import InputError

        ok, why = can_execute()
        if not ok:
            raise InputError(why)
        progs = artifact.manifest["programs"]
        units = getattr(ct.ComputeUnit, BACKENDS[artifact.target.backend][0])
        path = str(artifact.file(progs["encode"]["file"]))
        # threads: Core ML schedules its own work; there is no thread-count knob.
        self._enc = ct.models.MLModel(path, compute_units=units, function_name=progs["encode"]["function"])
        self._dec = ct.models.MLModel(path, compute_units=units, function_name=progs["decode"]["function"])
        self._dtypes = {e["name"]: np.dtype(e["runtime_dtype"])
                        for p in progs.values() for e in p["inputs"]}
        self._cross = [e["name"] for e in progs["encode"]["outputs"]]
        self._enc_spec = progs["encode"]["inputs"]
        self._zeros = {s["name"]: np.zeros(s["shape"], dtype=np.dtype(s["dtype"])) for s in progs["decode"]["states"]}

    def encode(self, *inputs) -> CoreMLState:
        from . import encode_arrays

        d = self._dtypes
        out = self._enc.predict({e["name"]: np.ascontiguousarray(a, dtype=d[e["name"]])
                                 for e, a in zip(self._enc_spec, encode_arrays(self._enc_spec, inputs))})
        feeds = {n: np.asarray(out[n], dtype=d[n]) for n in self._cross}
        state = self._dec.make_state()
        # A new state's contents are not specified; the masked cache update needs zeros (NaN * 0 = NaN).
        for name, zeros in self._zeros.items():
            state.write_state(name, zeros)
        return CoreMLState(feeds, state)

    def decode(self, token: int, position: int, state: CoreMLState) -> np.ndarray:
        feeds = dict(state.feeds)
        feeds["token"] = np.array([[token]], dtype=self._dtypes["token"])
        feeds["position"] = np.array([position], dtype=self._dtypes["position"])
        out = self._dec.predict(feeds, state=state.state)
        return np.asarray(out["logits"], dtype=np.float32).reshape(-1)


def open(artifact, threads: int | None = None) -> CoreMLSession:  # noqa: A001 (the interface's name)
    return CoreMLSession(artifact, threads)
