"""litert-torch conversion: the split's two programs -> one flatbuffer with signatures
``encode`` and ``decode``, the signature tensors mapped onto our names, then the recipe's
quantization (quantize.py). Shared by litert-cpu and the NPU targets (litert_aot), which
compile exactly this flatbuffer."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...schemes import Component, QuantScheme, requested
from ..base import CacheMode, Lowered
from ..tied import TIED_TO
from . import SCHEMES, SIGNATURES, TFLITE

if TYPE_CHECKING:
    from ...specs import Recipe
    from ...split import Seq2SeqParts


@contextmanager
def _quiet_progress() -> Iterator[None]:
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


def convert(parts: Seq2SeqParts) -> bytes:
    """The fp32 flatbuffer: one signature per program, weights they share stored once.
    A position bias the encode program computes (T5 past 256 KiB) is computed here by row
    lookups instead (bias.py): TFLite runs the slices of t5.RelativeBias element by element
    on these shapes (a [8, 512, 1024] -> [8, 512, 512] slice: ~29 ms, the whole computed bias
    ~30 ms, against ~1 ms on ExecuTorch/XNNPACK; measured 2026-12-03)."""
    import litert_torch
    import torch

    from ...arch.programs import replace_computed_biases
    from .bias import gathered_or_constant

    replace_computed_biases(parts.encode, gathered_or_constant)
    with _quiet_progress(), torch.no_grad():
        model = (litert_torch.signature("encode", parts.encode, parts.encode_inputs())
                 .signature("decode", parts.decode, parts.decode_inputs())
                 .convert())
        return bytes(model.model_content())


def schema_names() -> tuple[dict[int, str], dict[int, str]]:
    """The flatbuffer schema's builtin operator codes -> names and tensor types -> dtype names."""
    from ai_edge_litert import schema_py_generated as fb

    ops = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    dtypes = {v: k.lower() for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    return ops, dtypes


def signature_tensors(model_bytes: bytes) -> dict[str, dict[str, Any]]:
    """Per signature: its input/output details as the interpreter reports them."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model_bytes)
    out = {}
    for name in it.get_signature_list():
        r = it.get_signature_runner(name)
        out[name] = {"inputs": r.get_input_details(), "outputs": r.get_output_details()}
    return out


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


def lower_cpu(parts: Seq2SeqParts, recipe: Recipe, out_dir: Path) -> Lowered:
    """Convert, quantize and write ``model.tflite``; the programs with their signature mapping
    and the ``litert`` report (op counts, stored weight dtypes per component; a tied head's
    ``lm_head: {tied_to, storage}``, tied.py). The caller has
    checked the recipe against its target; tool_versions is the caller's to fill."""
    from . import quantize, tied

    if parts.cache_mode != CacheMode.IO:
        raise ValueError(f"litert needs parts built with cache_mode={CacheMode.IO.value!r}, "
                         f"got {parts.cache_mode!r}")
    t0 = time.time()
    fp32 = convert(parts)
    schemes = requested(recipe)
    pair = (SCHEMES[schemes[Component.EMBEDDINGS]], SCHEMES[schemes[Component.LM_HEAD]])
    is_tied = parts.decode.lm_head is None
    not_shared = ""
    # The converter's second copy of the table goes (tied.py), unless the recipe encodes the
    # two differently (then the quantizer would copy the table back for the head anyway, and
    # for the embedding lookups too).
    if is_tied and pair[0] == pair[1]:
        fp32, not_shared = tied.share_table(fp32)
    convert_s = time.time() - t0
    sigs = signature_tensors(fp32)
    if sorted(sigs) != sorted(SIGNATURES):
        raise RuntimeError(f"converted model has signatures {sorted(sigs)}, expected {list(SIGNATURES)}")
    selectors = quantize.selectors(parts, sigs["decode"]["outputs"]["output_0"]["name"])
    t1 = time.time()
    data = tied.share_quantization(quantize.quantize(fp32, recipe.quantization, selectors, recipe.group_size))
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
    report: dict[str, Any] = {"litert": {
        "delegate": "XNNPACK (the interpreter's default CPU delegate)",
        "convert_seconds": round(convert_s, 1), "quantize_seconds": round(quantize_s, 2),
        "quantization": {c: SCHEMES[QuantScheme(s)] for c, s in recipe.quantization.items()},
        **quantize.op_summary(data, selectors)}}
    if is_tied:
        report["litert"]["lm_head"] = {"tied_to": TIED_TO, "storage": tied.storage(data, pair, not_shared)}
    return Lowered(files=[TFLITE], programs=programs, report=report)
