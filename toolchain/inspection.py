"""`edgeseq inspect`: a checkpoint (what it is, which targets fit) or an artifact (what is in it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .artifact import MANIFEST, open_artifact
from .backends import tied


def _param_count(weights) -> int:
    from safetensors import safe_open

    seen, total = set(), 0
    for f in weights:
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                if k not in seen:
                    seen.add(k)
                    shape = st.get_slice(k).get_shape()
                    n = 1
                    for d in shape:
                        n *= d
                    total += n
    return total


def _targets_fit(source: Any) -> list[dict[str, Any]]:
    """Each shipped target, and whether export would accept this checkpoint there: its backend is
    installed here and at least one shipped recipe passes every check export makes before any
    work (export.check_fits, the same function). `recipes`: the shipped recipes that pass; `why`:
    what stops it (the backend missing, else the first refusal)."""
    from . import backends
    from .errors import InputError
    from .export import check_fits
    from .specs import RECIPE_DIR, TARGET_DIR, available, load_recipe, load_target

    recipes = [load_recipe(name) for name in available(RECIPE_DIR)]
    out = []
    for name in available(TARGET_DIR):
        t = load_target(name)
        ok, why = backends.for_target(t).available()
        fits, refusals = [], []
        for recipe in recipes if ok else []:
            try:
                check_fits(source, recipe, t)
                fits.append(recipe.name)
            except InputError as e:
                refusals.append(str(e))
        out.append({"target": t.name, "runtime": t.runtime, "available": ok, "fits": bool(fits),
                    "recipes": fits, "why": why or ("" if fits else f"no shipped recipe fits: {refusals[0]}")})
    return out


def _fit_line(t: dict[str, Any]) -> str:
    if t["fits"]:
        return f"  target {t['target']:<22} ok (recipes {', '.join(t['recipes'])})"
    return f"  target {t['target']:<22} {'does not fit' if t['available'] else 'unavailable'}: {t['why']}"


def inspect_checkpoint(path: Path, allow_pickle: bool) -> tuple[dict, str]:
    from .checkpoint import load_checkpoint  # imports the adapters, hence torch: not for artifacts

    src = load_checkpoint(path, allow_pickle)
    d = src.describe()
    if not allow_pickle or all(w.suffix == ".safetensors" for w in src.weights):
        d["params"] = _param_count(src.weights)
    d["targets"] = _targets_fit(src)
    lines = [f"{src.name}: {d['family']} {d['variant']}, {d.get('params', 0):,} params, "
             f"{d['weights_bytes'] / 1e6:.2f} MB weights",
             f"  encoder {d['encoder_layers']} layers, decoder {d['decoder_layers']} layers, {d['heads']} heads, "
             f"d_model {d['d_model']}, d_ff {d['d_ff']}, head_dim {d['head_dim']}, vocab {d['vocab_size']}, "
             f"{d['activation']}"]
    lines += [_fit_line(t) for t in d["targets"]]
    return d, "\n".join(lines)


def npu_lines(npu: dict | None) -> list[str]:
    """The NPU report: operator placement with reasons, memory, and the compiler's time estimate."""
    if not npu:
        return []
    out = [f"  NPU {npu['accelerator']} ({npu['system_config']}, {npu['memory_mode']}, {npu['clock_mhz']} MHz); "
           f"times are ESTIMATES: {npu['estimate']}"]
    for name, p in npu["programs"].items():
        out.append(f"  {name}: {p['npu_op_percent']:.1f}% of operators on the NPU ({p['npu_nodes']} NPU, "
                   f"{p['cpu_nodes']} CPU; Vela: {p['vela_npu_ops']} NPU / {p['vela_cpu_ops']} CPU ops in "
                   f"{p['delegated_subgraphs']} subgraphs), est. {p['estimated_ms']:.3f} ms "
                   f"({p['cycles']:,} cycles), SRAM {p['sram_kib']:.1f} KiB, DRAM {p['dram_kib']:.1f} KiB, "
                   f"{p['macs']:,} MACs")
        for op, c in p["cpu_ops"].items():
            out.append(f"    on CPU: {op} x{c['count']}: {c['why']}")
    return out


def inspect_artifact(path: Path) -> tuple[dict, str]:
    art = open_artifact(path)
    m = art.manifest
    lines = [f"artifact {path}: {m['checkpoint']['name']} -> {m['target']['name']} / {m['recipe']['name']}",
             f"  model bytes {m['sizes']['model_bytes']:,} ({m['sizes']['ratio_to_fp32_params']}x params*4)"]
    said = art.meta.input.codec.describe(art.meta.input.as_dict())  # e.g. Whisper's log-mel input
    if said:
        lines.append(f"  input: {said}")
    prompt = (m.get("tokens") or {}).get("decoder_prompt")
    if prompt:
        lines.append("  decoder prompt: " + ", ".join("detected language" if t is None else str(t) for t in prompt))
    choices = art.meta.tokens.task_prompt  # Whisper: what run/verify --language/--task may pick
    if choices is not None:
        lines.append("  languages: English only" if choices.english_only else
                     f"  languages ({len(choices.codes())}, --language): {', '.join(choices.codes()[:20])}"
                     f"{' ...' if len(choices.codes()) > 20 else ''}; tasks (--task): {', '.join(choices.task_to_id)}")
    for name, e in m["files"].items():
        lines.append(f"  file {name:<16} {e['bytes']:>12,d} B")
    for name, p in m["programs"].items():
        ins = ", ".join(f"{i['name']}{i['shape']}" for i in p["inputs"][:4])
        more = f" +{len(p['inputs']) - 4} more" if len(p["inputs"]) > 4 else ""
        lines.append(f"  program {name}: {p['file']}:{p.get('method') or p.get('signature') or name}({ins}{more})")
        for e in p.get("lengths", []):  # shorter encodes (recipe encode_lengths), outputs padded to S
            lines.append(f"  program {name} for inputs up to {e['length']} tokens: "
                         f"{e.get('file') or p['file']}:{e.get('method') or name}")
    for comp, q in (m.get("quantization") or {}).items():
        if q["tensors"]:
            lines.append(f"  component {comp:<10} {q['scheme']:<12} {q['tensors']:>3} tensors  "
                         f"{q['fp32_bytes'] / 1e6:8.3f} MB fp32 -> ~{q['estimated_bytes'] / 1e6:.3f} MB")
        if q.get("storage"):  # a tied lm_head: the table stored once or twice, and why
            lines.append(f"  component {comp:<10} {tied.describe(q)}")
    for section in ("litert", "onnx"):  # backends without a per-component quantization report
        head = (m.get(section) or {}).get("lm_head")
        if isinstance(head, dict) and head.get("storage"):
            lines.append(f"  component {'lm_head':<10} {tied.describe(head)}")
    bits = (m.get("onnx") or {}).get("weight_bits")
    if bits:  # onnx-cpu's int8 grid (target option weight_bits)
        from .backends.onnx import DEFAULT_WEIGHT_BITS, GRIDS

        top = GRIDS.get(bits) if isinstance(bits, int) else None  # a hand-edited manifest may say anything
        lines.append(f"  int8 weights on a {bits}-bit grid (-{top}..{top})" if top else
                     f"  int8 weights on an unknown grid (weight_bits {bits!r})")
        if top and bits != DEFAULT_WEIGHT_BITS:
            lines[-1] += ": ONNX Runtime's u8s8 kernels can saturate on x86 without VNNI"
    for name, p in m["programs"].items():
        if p.get("quantization"):
            lines.append(f"  program {name} weights: " + ", ".join(f"{k} {v}" for k, v in p["quantization"].items()))
    for name, d in (m.get("delegation") or {}).items():
        lines.append(f"  {name}: {d['delegated_fraction']:.1%} of compute nodes in {d['delegate']} "
                     f"({d['delegated_nodes']} delegated, {d['portable_nodes']} portable: {d['portable_ops']})")
        if "delegate_ops" in d:  # what the delegate runs (and sets up) on every call: the per-step cost driver
            lines.append(f"  {name}: {d['delegate_ops']} delegate operators per call in {d['delegate_calls']} "
                         f"delegate call(s)")
    lines += npu_lines(m.get("npu"))
    v = m.get("verify")
    if not v:
        lines.append("  verify: never run")
    elif "numerics" in v:
        lines.append(f"  verify: structure only ({v['numerics']}), {'PASS' if v['passed'] else 'FAIL'}")
    else:
        lines.append(f"  verify: sequence_match {v['sequence_match']:.4f}, max_abs_logit_diff "
                     f"{v['max_abs_logit_diff']:.3g}, {'PASS' if v['passed'] else 'FAIL'}")
    return m, "\n".join(lines)


def inspect_path(path: Path, allow_pickle: bool) -> tuple[dict, str]:
    if (path / MANIFEST).is_file():
        return inspect_artifact(path)
    return inspect_checkpoint(path, allow_pickle)
