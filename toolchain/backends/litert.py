"""LiteRT (TFLite) runtime, XNNPACK delegate on CPU.

One flatbuffer, ``model.tflite``, with two signatures, ``encode`` and ``decode``
(``litert_torch.signature(...).signature(...).convert()``), which share one copy of
the weights they have in common.

TFLite programs have no mutable state, so the split is built with
``cache_mode="io"``: the decode signature takes, after token/position/cross_bias
and the per-layer cross-attention K/V, the self-attention caches

    cache_k_l  float32[H, Dh, T]   keys, pre-transposed (q @ K is a plain bmm)
    cache_v_l  float32[H, T, Dh]

and returns ``(logits float32[1, V], new_cache_k_0, new_cache_v_0, ...)`` with the
same shapes. The update inside the graph is the one-slot masked blend of
``split.update_cache`` (no scatter); outside it, the Session hands each step's
output arrays straight back as the next step's inputs (no copies, no dtype
conversions, the cross K/V arrays are built once per input and reused by reference).

Signature tensors are not named after our arguments: the converter calls them
``args_0 ...`` (the i-th positional input) and ``output_0 ...`` (the i-th output).
The manifest records, for every input/output, our name, the signature tensor name,
the shape and the dtype the runtime expects: int64 inputs (ids, mask, token,
position) become int32 in the flatbuffer (the converter's default without x64).

Quantization is done on the fp32 flatbuffer with ai-edge-quantizer, per component:
  encoder     every nn.Linear of the encode program (this includes the decoder's
              cross-attention K/V projections: they run once per input, in encode)
  decoder     every nn.Linear of the decode program except the output head
  lm_head     the FULLY_CONNECTED op that produces decode's logits (tied or not)
  embeddings  the EMBEDDING_LOOKUP ops (token embedding, both programs)
Position-bias tables are never quantized: they hold -1e9 causal-mask entries,
which would flatten every bias to 0 in int8 and become -inf (then NaN) in fp16.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..logs import native_logs
from . import Lowered

TFLITE = "model.tflite"
CACHE_MODE = "io"  # the self-attention cache is explicit signature input/output
SIGNATURES = ("encode", "decode")

# Recipe scheme -> what LiteRT does with it.
#   int8: dynamic-range quantization (int8 per-channel symmetric weights; FULLY_CONNECTED
#         activations quantized per row at runtime; embeddings stored as int8 rows)
#   fp16: fp16 weights, dequantized to fp32 once at load, fp32 compute
SCHEMES = {"none": "fp32", "8da8w": "int8", "int8-weight": "int8", "fp16": "fp16"}
_LINEAR = r"torch\.nn\.modules\.linear\.Linear"


def available() -> tuple[bool, str]:
    import importlib.util

    for pkg, dist in (("ai_edge_litert", "ai-edge-litert"), ("litert_torch", "litert-torch")):
        if importlib.util.find_spec(pkg) is None:
            return False, f"python package {dist!r} not installed"
    return True, ""


def check(recipe, target) -> None:
    from ..errors import InputError

    if target.backend != "xnnpack":
        raise InputError(f"target {target.name}: litert backend {target.backend!r} is not available; "
                         f"available: xnnpack")
    from . import check_schemes

    check_schemes(recipe, target, SCHEMES)


def preload() -> None:
    """Import the runtime, so a probe's load time measures loading the model, not Python imports."""
    from ai_edge_litert import interpreter  # noqa: F401


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("ai-edge-litert", "litert-torch", "ai-edge-quantizer"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------- conversion


@contextmanager
def _quiet_progress():
    """litert-torch prints a progress tree unless told not to (via its config's env var)."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    old = os.environ.get(key)
    os.environ[key] = "n"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _convert(parts) -> bytes:
    import litert_torch
    import torch

    with _quiet_progress(), torch.no_grad():
        model = (litert_torch.signature("encode", parts.encode, parts.encode_inputs())
                 .signature("decode", parts.decode, parts.decode_inputs())
                 .convert())
        return bytes(model.model_content())


def _root_scope(module) -> str:
    """Op names in the flatbuffer start with the root module's qualified class name."""
    cls = type(module)
    return re.escape(f"{cls.__module__}.{cls.__qualname__}")


def _signature_tensors(model_bytes: bytes) -> dict[str, dict[str, Any]]:
    """Per signature: its input/output details as the interpreter reports them."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model_bytes)
    out = {}
    for name in it.get_signature_list():
        r = it.get_signature_runner(name)
        out[name] = {"inputs": r.get_input_details(), "outputs": r.get_output_details()}
    return out


def _selectors(parts, sigs) -> dict[str, tuple[str, str]]:
    """Component -> (scope regex, TFLite op). Disjoint, so their order does not matter.

    The quantizer matches a regex against an op's scope: its output tensor names, each
    followed by ';' (ops are named by the module path torch.export recorded).
    """
    logits = re.escape(sigs["decode"]["outputs"]["output_0"]["name"])
    return {
        "encoder": (f"^{_root_scope(parts.encode)}/.*{_LINEAR}", "FULLY_CONNECTED"),
        "decoder": (f"^{_root_scope(parts.decode)}/.*{_LINEAR}", "FULLY_CONNECTED"),
        "lm_head": (f"^{logits};", "FULLY_CONNECTED"),
        "embeddings": (".*", "EMBEDDING_LOOKUP"),
    }


def _quantize(model_bytes: bytes, quantization: dict[str, str], selectors) -> bytes:
    import contextlib
    import io

    from ai_edge_quantizer import qtyping, quantizer, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    rm = recipe_manager.RecipeManager()
    for comp, scheme in quantization.items():
        kind = SCHEMES[scheme]
        if kind == "fp32":
            continue
        regex, op = selectors[comp]
        op = qtyping.TFLOperationName(op)
        if kind == "int8":
            rm.add_dynamic_config(regex=regex, operation_name=op, num_bits=8)
        else:  # fp16: weight-only float casting
            rm.add_weight_only_config(regex=regex, operation_name=op, num_bits=16,
                                      algorithm_key=AlgorithmName.FLOAT_CASTING)
    recipe = rm.get_quantization_recipe()
    if not recipe:
        return model_bytes
    # The quantizer prints a size summary on stdout; export's stdout is not the place for it.
    with contextlib.redirect_stdout(io.StringIO()):
        result = quantizer.Quantizer(bytearray(model_bytes), recipe).quantize()
    return bytes(result.quantized_model)


def _op_summary(model_bytes: bytes, selectors) -> dict[str, Any]:
    """Op counts per signature and the stored weight dtype of every quantizable op, per component."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(model_bytes, 0))
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    dtypes = {v: k.lower() for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    sig_of = {s.subgraphIndex: s.signatureKey.decode() for s in (model.signatureDefs or [])}
    ops: dict[str, dict[str, int]] = {}
    weights: dict[str, Counter] = {c: Counter() for c in selectors}
    for i, sg in enumerate(model.subgraphs):
        count = Counter()
        for op in sg.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
            count[name] += 1
            if name not in ("FULLY_CONNECTED", "EMBEDDING_LOOKUP"):
                continue
            scope = "".join(sg.tensors[t].name.decode() + ";" for t in op.outputs if t >= 0)
            w = sg.tensors[op.inputs[1]]  # FC: (input, weights, bias); lookup: (ids, table)
            stored = dtypes.get(w.type, str(w.type))
            # A fp16 weight reaches the op through a DEQUANTIZE: follow it back to its source.
            producer = next((p for p in sg.operators if op.inputs[1] in list(p.outputs)), None)
            dequant = fb.BuiltinOperator.DEQUANTIZE
            if producer is not None and model.operatorCodes[producer.opcodeIndex].builtinCode == dequant:
                stored = dtypes.get(sg.tensors[producer.inputs[0]].type, stored)
            for comp, (regex, op_name) in selectors.items():
                if op_name == name and re.search(regex, scope):
                    weights[comp][stored] += 1
        ops[sig_of.get(i, f"subgraph_{i}")] = dict(sorted(count.items()))
    return {"ops": ops, "weights": {c: dict(w) for c, w in weights.items()}}


def _program_sig(desc: dict[str, Any], details: dict[str, Any]) -> None:
    """Add the signature tensor name and runtime dtype to each of our inputs/outputs, in place.

    args_i is the i-th positional argument and output_i the i-th returned tensor; the
    shapes are checked against ours so a converter that renames differently fails here.
    """
    for kind, prefix in (("inputs", "args"), ("outputs", "output")):
        if len(details[kind]) != len(desc[kind]):
            raise RuntimeError(f"signature has {len(details[kind])} {kind}, the program {len(desc[kind])}")
        for i, entry in enumerate(desc[kind]):
            tensor = f"{prefix}_{i}"
            d = details[kind][tensor]
            if list(d["shape"]) != entry["shape"]:
                raise RuntimeError(f"signature tensor {tensor} has shape {list(d['shape'])}, "
                                   f"{entry['name']} has {entry['shape']}")
            entry["tensor"] = tensor
            entry["runtime_dtype"] = np.dtype(d["dtype"]).name


def lower(parts, recipe, target, out_dir: Path, calibration: list[list[int]] | None = None) -> Lowered:
    if parts.cache_mode != CACHE_MODE:
        raise ValueError(f"litert needs parts built with cache_mode={CACHE_MODE!r}, got {parts.cache_mode!r}")
    check(recipe, target)
    t0 = time.time()
    fp32 = _convert(parts)
    convert_s = time.time() - t0
    sigs = _signature_tensors(fp32)
    if sorted(sigs) != sorted(SIGNATURES):
        raise RuntimeError(f"converted model has signatures {sorted(sigs)}, expected {list(SIGNATURES)}")
    selectors = _selectors(parts, sigs)
    t1 = time.time()
    data = _quantize(fp32, recipe.quantization, selectors)
    quantize_s = time.time() - t1
    (out_dir / TFLITE).write_bytes(data)

    programs = parts.describe()
    for name in SIGNATURES:
        _program_sig(programs[name], sigs[name])
        programs[name].update(file=TFLITE, signature=name)
    n = len(parts.cache_names())
    dec_in = programs["decode"]["inputs"]
    programs["decode"]["kv_cache"] = (
        f"explicit signature I/O: inputs {dec_in[-n]['tensor']}..{dec_in[-1]['tensor']} "
        f"({parts.cache_names()[0]}..{parts.cache_names()[-1]}), outputs output_1..output_{n} (new_*); "
        f"zeros before the first step, then each step's outputs are the next step's inputs")
    summary = _op_summary(data, selectors)
    report = {"litert": {
        "delegate": "XNNPACK (the interpreter's default CPU delegate)",
        "convert_seconds": round(convert_s, 1), "quantize_seconds": round(quantize_s, 2),
        "quantization": {c: SCHEMES[s] for c, s in recipe.quantization.items()},
        **summary}}
    return Lowered(files=[TFLITE], programs=programs, report=report, tool_versions=versions())


# --------------------------------------------------------------------------- runtime


class LiteRTState:
    """One input's decode feeds, keyed by signature tensor name.

    Holds the cross-attention K/V (set once by encode) and the current self-attention
    caches; `decode` swaps each cache for the array the previous step returned.
    """

    def __init__(self, feeds: dict[str, np.ndarray], cache_tensors: list[str]):
        self.feeds = feeds
        self._cache_tensors = cache_tensors

    @property
    def cache(self) -> list[np.ndarray]:
        return [self.feeds[t] for t in self._cache_tensors]


class LiteRTSession:
    def __init__(self, artifact, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        progs = artifact.manifest["programs"]
        # The default op resolver applies the XNNPACK delegate with this thread count.
        with native_logs():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on fd 2
            self._it = Interpreter(model_path=str(artifact.file(progs["encode"]["file"])),
                                   num_threads=int(threads or artifact.target.threads or 1))
            # The delegate is applied (and announced) at the first allocation: do it now, not
            # at the first encode, so load time includes it and the line is caught here.
            self._it.allocate_tensors()
        self._enc = self._it.get_signature_runner(progs["encode"]["signature"])
        self._dec = self._it.get_signature_runner(progs["decode"]["signature"])
        enc, dec = progs["encode"], progs["decode"]

        def tensors(entries):
            return {e["name"]: (e["tensor"], np.dtype(e["runtime_dtype"])) for e in entries}

        self._enc_in = tensors(enc["inputs"])
        self._enc_spec = enc["inputs"]
        self._enc_out = [e["tensor"] for e in enc["outputs"]]
        dec_in = tensors(dec["inputs"])
        self._token, self._token_dtype = dec_in["token"]
        self._position, self._position_dtype = dec_in["position"]
        # encode output i -> the decode input of the same name (cross_bias, cross_k_l, cross_v_l)
        self._cross = [(t, dec_in[e["name"]][0]) for e, t in zip(enc["outputs"], self._enc_out)]
        self._caches = [(dec_in[c["name"]][0], np.zeros(c["shape"], dtype=np.float32)) for c in dec["cache"]]
        outs = {e["name"]: e["tensor"] for e in dec["outputs"]}
        self._logits = outs["logits"]
        # decode output tensor -> the decode input it feeds at the next step
        self._feedback = [(outs[f"new_{c['name']}"], dec_in[c["name"]][0]) for c in dec["cache"]]

    def encode(self, *inputs) -> LiteRTState:
        from . import encode_arrays

        # Our dtypes first (shape checks), then the flatbuffer's (int64 ids are int32 there).
        arrays = encode_arrays(self._enc_spec, inputs)
        out = self._enc(**{self._enc_in[e["name"]][0]: np.ascontiguousarray(a, dtype=self._enc_in[e["name"]][1])
                           for e, a in zip(self._enc_spec, arrays)})
        feeds = {dec_t: out[enc_t] for enc_t, dec_t in self._cross}
        # Zero caches are shared read-only templates: decode never writes into an input array.
        feeds.update(self._caches)
        return LiteRTState(feeds, [t for t, _ in self._caches])

    def decode(self, token: int, position: int, state: LiteRTState) -> np.ndarray:
        feeds = state.feeds
        feeds[self._token] = np.array([[token]], dtype=self._token_dtype)
        feeds[self._position] = np.array([position], dtype=self._position_dtype)
        out = self._dec(**feeds)
        for new, old in self._feedback:
            feeds[old] = out[new]
        return out[self._logits].reshape(-1)


def open(artifact, threads: int | None = None) -> LiteRTSession:  # noqa: A001 (the interface's name)
    return LiteRTSession(artifact, threads)
