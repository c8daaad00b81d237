"""torch -> Core ML: the two programs converted, compressed and saved as one multifunction package.

Tensors (S = recipe.max_input_len, T = max_output_len, H heads, Dh head dim):

    encode(input_ids int32[1, S], attention_mask int32[1, S])
        -> cross_bias [1, 1, S], cross_k_l [H, Dh, S], cross_v_l [H, S, Dh]
    decode(token int32[1, 1], position int32[1], cross_bias, cross_k_l, cross_v_l ...)
        -> logits [1, V]
       states cache_k_l [H, Dh, T], cache_v_l [H, T, Dh]

Core ML has no int64 tensors: ids, mask, token and position are int32 in the model (the
manifest records ``runtime_dtype``). Float I/O is fp16 on the fp16-compute targets (ane,
gpu; the Neural Engine computes in fp16 only) and fp32 on ``cpu``; encode's outputs have
exactly the dtype decode's inputs expect, so the cross K/V pass between the functions
without a cast. States are fp16 on every target (Core ML has fp16 states only; on ``cpu``
the converter casts around each read and update, so the fp32 build's cache holds
fp16-rounded K/V). Decode never sees the encoder hidden states: its only per-input tensors
are the cross K/V encode returns.

An .mlpackage is a directory; the manifest's ``files`` lists every regular file inside it
(``model.mlpackage/Data/com.apple.CoreML/model.mlmodel``, its weights blob,
``Manifest.json``) so the artifact's hashes cover all of them.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...schemes import Component, QuantScheme, requested
from ..base import Lowered
from . import BACKENDS, DEPLOYMENT_TARGET, FUNCTIONS, MLPACKAGE, SCHEMES

if TYPE_CHECKING:
    import torch

    from ...specs import Recipe, Target
    from ...split import Seq2SeqParts

# A finite fp16 stand-in for the split's -1e9 masks (fp16 max is 65504), see fp16_safe_masks.
FP16_NEG = -3.0e4


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """coremltools draws tqdm progress bars on stderr for every pass pipeline (tqdm reads its
    TQDM_DISABLE variable at import time, too early to set here): send them elsewhere."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def fp16_safe_masks(parts: Seq2SeqParts) -> list[str]:
    """Clamp -1e9 mask entries of constant buffers to -3e4, in place; returns the buffers changed.

    The converter keeps any op with a constant beyond fp16 range in fp32 (e.g. T5's
    `F.linear(onehot(position), self_bias_full)` whose table holds the -1e9 causal mask),
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
                    buf.clamp_(min=FP16_NEG)
                changed.append(f"{prog}.{name}")
    return changed


def untie_if_needed(parts: Seq2SeqParts, schemes: dict[Component, QuantScheme]) -> bool:
    """A tied head reads the embedding table itself (one constant, two consumers); Core ML
    compresses a constant one way, so differing embeddings/lm_head schemes need two tables.
    Returns whether it untied (then decode must be converted without const deduplication)."""
    from torch import nn

    dec = parts.decode
    emb_kind, head_kind = SCHEMES[schemes[Component.EMBEDDINGS]], SCHEMES[schemes[Component.LM_HEAD]]
    if dec.lm_head is None and emb_kind != head_kind:  # int8-weight and 8da8w are both int8 per row here
        emb = dec.embed
        head = nn.Linear(emb.embedding_dim, emb.num_embeddings, bias=False)
        head.weight = nn.Parameter(emb.weight.detach().clone().float(), requires_grad=False)
        dec.lm_head = head
        return True
    return False


def _tensor_types(specs: list[dict[str, Any]], float_dtype: type) -> list[Any]:
    import coremltools as ct

    return [ct.TensorType(name=s["name"], shape=tuple(s["shape"]),
                          dtype=np.int32 if s["dtype"].startswith("int") else float_dtype) for s in specs]


def convert_program(module: torch.nn.Module, args: tuple[torch.Tensor, ...], desc: dict[str, Any],
                    precision: str, dedup: bool = True) -> Any:
    """torch.export one program and convert it to an ML program (an MLModel) with our I/O names.

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
    with quiet():
        return ct.convert(
            ep, inputs=_tensor_types(desc["inputs"], float_dtype),
            outputs=[ct.TensorType(name=o["name"], dtype=float_dtype) for o in desc["outputs"]],
            minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
            compute_precision=ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32,
            pass_pipeline=pipeline, convert_to="mlprogram")


def save_multifunction(models: dict[str, Any], out: Path) -> None:
    import coremltools as ct

    with tempfile.TemporaryDirectory(prefix="coreml-", dir=out.parent) as tmp:
        desc = ct.utils.MultiFunctionDescriptor()
        for name, model in models.items():
            single = Path(tmp) / f"{name}.mlpackage"
            model.save(str(single))
            desc.add_function(str(single), src_function_name="main", target_function_name=name)
        desc.default_function_name = "decode"
        with quiet():
            ct.utils.save_multifunction(desc, str(out))


def package_files(out_dir: Path, package: str = MLPACKAGE) -> list[str]:
    """Every regular file inside the package, relative to the artifact directory, sorted."""
    root = out_dir / package
    return sorted(str(p.relative_to(out_dir)) for p in root.rglob("*") if p.is_file())


def program_entries(parts: Seq2SeqParts, struct: dict[str, Any]) -> dict[str, Any]:
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


def lower(parts: Seq2SeqParts, recipe: Recipe, target: Target, out_dir: Path,
          tool_versions: dict[str, str]) -> Lowered:
    from . import compress
    from .structure import structure

    units, precision = BACKENDS[target.backend]
    schemes = requested(recipe)
    untied = untie_if_needed(parts, schemes)
    clamped = fp16_safe_masks(parts) if precision == "float16" else []
    desc = parts.describe()
    t0 = time.time()
    models = {"encode": convert_program(parts.encode, parts.encode_inputs(), desc["encode"], precision),
              "decode": convert_program(parts.decode, parts.decode_inputs(), desc["decode"], precision,
                                        dedup=not untied)}
    convert_s = time.time() - t0
    names = compress.weight_consts(parts)  # after untie_if_needed: an untied head is lm_head
    selected = {fn: compress.select_consts(models[fn], names[fn]) for fn in FUNCTIONS}
    t1 = time.time()
    models = {fn: compress.compress(m, selected[fn], schemes, recipe.group_size) for fn, m in models.items()}
    quantize_s = time.time() - t1
    save_multifunction(models, out_dir / MLPACKAGE)
    struct = structure(out_dir / MLPACKAGE, precision)
    programs = program_entries(parts, struct)
    report = {"coreml": {
        "packaging": f"one multifunction {MLPACKAGE} (functions encode, decode; constants shared across "
                     f"functions stored once)",
        "minimum_deployment_target": DEPLOYMENT_TARGET, "compute_units": units, "compute_precision": precision,
        "convert_seconds": round(convert_s, 1), "quantize_seconds": round(quantize_s, 2),
        "fp16_clamped_buffers": clamped, **struct},
        "quantization": compress.quant_report(selected, schemes, recipe.group_size, precision)}
    return Lowered(files=package_files(out_dir), programs=programs, report=report, tool_versions=tool_versions)
