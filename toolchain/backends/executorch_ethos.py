"""ExecuTorch runtime, Arm Ethos-U NPU delegate (TOSA lowered by Arm's Vela compiler).

Flow per program (encode, decode), following ExecuTorch's Arm backend:

    torch.export -> .module(check_guards=False)    (torch 2.13: the guards submodule
                                                    otherwise breaks the Arm passes)
    -> prepare_pt2e(EthosUQuantizer: int8 per-channel weights, int8 per-tensor
       activations, symmetric) -> calibrate -> convert_pt2e -> torch.export
    -> to_edge_transform_and_lower(EthosUPartitioner) -> TOSA -> Vela -> command
       stream + NPU-encoded weights inside ``model.pte``

Everything on the Ethos-U is integer: there is no dynamic-activation or fp32 mode,
so every int8 scheme of a recipe (8da8w, int8-weight, static-int8) becomes full
static int8 here, with activation ranges from the recipe's calibration inputs.

The artifact holds two programs:

* ``model.pte``: encode and decode for the device (Ethos-U delegate; the CPU side is
  the Cortex-M host). It cannot execute here: the NPU needs the silicon or Arm's
  Corstone FVP.
* ``host_reference.pte``: the *same* quantized graphs (after convert_pt2e, before
  NPU delegation) for ExecuTorch's portable + quantized CPU kernels. ``run``,
  ``verify`` and ``probe --measure-host`` execute this one, and say so: it checks
  the int8 numerics (quantization ranges, rounding of weights and activations),
  not Vela's scheduling.

The decode cache is I/O (``CACHE_MODE = "io"``): the Ethos-U delegate has no
mutable state, so the caches go in as inputs and the updated caches come out,
quantized at the delegate boundary.

Performance here is Vela's estimate, never a measurement: per delegated subgraph,
cycles at the system configuration's clock plus SRAM/DRAM use, summed per program
(``estimated_ms``), and the ExecuTorch graph's operators on the NPU vs the CPU
(``npu_op_percent``, with the partitioner's reason for each CPU operator).
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from . import Lowered

PTE, HOST = "model.pte", "host_reference.pte"
CACHE_MODE = "io"
EXECUTES = "host reference (the int8 graph before NPU delegation, ExecuTorch CPU kernels)"
INT8_SCHEMES = ("8da8w", "int8-weight", "static-int8")
ACCELERATORS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u65-512",
                "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024", "ethos-u85-2048")
OPTIONS = {"accelerator": "Ethos-U configuration (Vela --accelerator-config)",
           "system_config": "system configuration in Vela's Arm/vela.ini (clocks, bus widths)",
           "memory_mode": "memory mode in Vela's Arm/vela.ini (where weights and tensors live)"}
_NON_COMPUTE = {"getitem"}
MASK_VALUE = -30.0  # additive attention mask in the int8 programs (see soften_masks)
_MASK_FLOOR = -1e8  # anything at or below this is a mask value of the split (NEG = -1e9)
# Why a node stays on the Cortex-M when the partitioner did not give a reason: these
# are the boundary conversions ExecuTorch's Arm flow leaves outside every partition.
_BOUNDARY = {
    "quantized_decomposed_quantize_per_tensor_default":
        "program boundary: a float input (or cache) is quantized to int8 before the NPU",
    "quantized_decomposed_dequantize_per_tensor_default":
        "program boundary: an int8 NPU output is dequantized to float for the caller",
    "dim_order_ops__to_dim_order_copy_default":
        "program boundary: int64 input cast to int32 (the NPU has no int64)",
}


def available() -> tuple[bool, str]:
    import importlib.util

    for mod, pkg in (("executorch", "executorch"), ("ethosu.vela", "ethos-u-vela"),
                     ("tosa_serializer", "tosa-tools")):
        try:
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return False, f"python package {pkg!r} not installed (make install adds it)"
    return True, ""


def can_execute() -> tuple[bool, str]:
    # The NPU program cannot run here; the host reference can, and Sessions run it.
    return True, ""


def check(recipe, target) -> None:
    from ..errors import InputError

    if target.backend != "ethos-u":
        raise InputError(f"target {target.name}: the Ethos-U backend needs backend: ethos-u, got {target.backend!r}")
    unknown = sorted(set(target.options) - set(OPTIONS))
    if unknown:
        raise InputError(f"target {target.name}: unknown option {unknown[0]!r}; allowed: {', '.join(OPTIONS)}")
    acc = target.options.get("accelerator")
    if acc not in ACCELERATORS:
        raise InputError(f"target {target.name}: option 'accelerator' must be one of {', '.join(ACCELERATORS)}, "
                         f"got {acc!r}")
    for comp in ("encoder", "decoder", "embeddings", "lm_head"):
        scheme = recipe.quantization.get(comp, "none")
        if scheme not in INT8_SCHEMES:
            raise InputError(f"recipe {recipe.name}: {comp}={scheme} is not supported by {target.name}; the "
                             f"Ethos-U runs integer programs only: every component must be one of "
                             f"{', '.join(INT8_SCHEMES)} (all become static int8), e.g. recipe int8")


def preload() -> None:
    from .executorch import runtime_lib

    runtime_lib()


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"executorch": version("executorch"), "ethos-u-vela": version("ethos-u-vela"),
            "tosa-tools": version("tosa-tools")}


def _compile_spec(target, intermediates: Path | None = None):
    from executorch.backends.arm.ethosu import EthosUCompileSpec

    o = target.options
    spec = EthosUCompileSpec(o["accelerator"], system_config=o.get("system_config"),
                             memory_mode=o.get("memory_mode"))
    if intermediates is not None:  # the TOSA flatbuffer of every delegated subgraph lands here
        spec.dump_intermediate_artifacts_to(str(intermediates))
    return spec


def _flag(spec, name: str) -> str | None:
    """A Vela flag's value from the compile spec (the spec fills in per-accelerator defaults)."""
    return next((f.split("=", 1)[1] for f in spec.compiler_flags if f.startswith(f"--{name}=")), None)


def _partitioner(spec):
    """EthosUPartitioner that keeps the partitioner's own reasons for rejecting nodes."""
    from executorch.backends.arm.ethosu import EthosUPartitioner

    class Reporting(EthosUPartitioner):
        rejected: dict[str, str] = {}

        def _tag_module(self, module, containing_program, reporter, *args, **kwargs):
            tags = super()._tag_module(module, containing_program, reporter, *args, **kwargs)
            for node, reason in getattr(reporter, "_rejected_nodes", {}).items():
                # Keep the sentence, not the op schema some reasons append.
                self.rejected[node.name] = reason.split(": schema =")[0][:200]
            return tags

    p = Reporting(spec)
    p.rejected = {}
    return p


@contextlib.contextmanager
def _stdout_to_stderr():
    """Vela prints its reports on fd 1; keep the CLI's stdout for our own output (JSON)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def calibration_steps(parts, calibration: list[list[int]], max_decode: int = 256):
    """Inputs for both programs from the fp32 split run greedily on the calibration set.

    encode gets the padded calibration inputs; decode's inputs (cross K/V, caches at
    each position) exist only as encode/decode outputs, so they come from the fp32
    modules (io cache mode: decode returns its updated caches)."""
    import torch

    from ..generate import pad

    enc, dec = [], []
    with torch.no_grad():
        for ids in calibration:
            input_ids, mask = pad(ids[: parts.max_input_len], parts.max_input_len, parts.pad_token_id)
            args = (torch.from_numpy(input_ids), torch.from_numpy(mask))
            enc.append(args)
            cross = tuple(parts.encode(*args))
            cache = parts.empty_cache()
            token = parts.decoder_start_token_id
            for position in range(parts.max_output_len):
                step = (torch.tensor([[token]]), torch.tensor([position]), *cross, *cache)
                dec.append(step)
                logits, *cache = parts.decode(*step)
                token = int(logits[0].argmax())
                if token == parts.eos_token_id:
                    break
    if len(dec) > max_decode:  # spread over positions, not the first sentences only
        dec = [dec[i] for i in np.linspace(0, len(dec) - 1, max_decode).round().astype(int)]
    return {"encode": enc, "decode": dec}


def soften_masks(gm, value: float = MASK_VALUE) -> int:
    """Replace the split's -1e9 attention masks by `value`, in constants and scalar arguments.

    Masks are additive (scores + bias, then softmax). With per-tensor int8, a tensor
    spanning [-1e9, 10] has a step of ~4e6: every real score rounds to zero and
    attention turns uniform (seen on the demo: accuracy 0.0). With -30 the step is
    ~0.2 and a masked key still gets exp(-30) ~ 1e-13 of the weight. Works on the
    exported graph, so every family's masks are covered without touching adapters.
    Returns how many constants and arguments changed."""
    import torch

    changed = 0
    for node in gm.graph.nodes:
        if node.op == "call_function":
            new = tuple(value if isinstance(a, float) and a <= _MASK_FLOOR else a for a in node.args)
            if new != tuple(node.args):
                node.args, changed = new, changed + 1
    for _, t in [*gm.named_buffers(), *((n, getattr(gm, n)) for n in dir(gm) if n.startswith("_tensor_constant"))]:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and float(t.min()) <= _MASK_FLOOR:
            t.clamp_(min=value)
            changed += 1
    gm.recompile()
    return changed


def _quantize(module, args, samples, spec):
    """PT2E static int8 with the Arm quantizer; returns the converted GraphModule."""
    import torch
    from executorch.backends.arm.quantizer import EthosUQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with torch.no_grad():
        gm = torch.export.export(module, args, strict=False).module(check_guards=False)
        soften_masks(gm)
        quantizer = EthosUQuantizer(spec)
        quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(gm, quantizer)
        for sample in samples:  # decode's cross_bias input carries encode's mask values: soften them too
            prepared(*(torch.where(t <= _MASK_FLOOR, MASK_VALUE, t) if t.is_floating_point() else t
                       for t in sample))
        return convert_pt2e(prepared)


def _vela_report(tosa_files: list[Path], spec, workdir: Path) -> dict[str, Any]:
    """Ask Vela (same flags as the lowering) for its performance report of each subgraph."""
    subgraphs = []
    flags = [f for f in spec.compiler_flags if not f.startswith("--output-dir")]
    for i, tosa in enumerate(sorted(tosa_files)):
        out = workdir / f"vela-{i}"
        proc = subprocess.run([sys.executable, "-m", "ethosu.vela", *flags, "--verbose-performance",
                               f"--output-dir={out}", str(tosa)], capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"Vela failed on {tosa.name}: {last[0]}")
        with next(out.glob("*_summary_*.csv")).open() as f:
            s = next(csv.DictReader(f))
        with next(out.glob("*_per-layer.csv")).open() as f:
            placement = Counter(row["Target"] for row in csv.DictReader(f))
        subgraphs.append({
            "npu_ops": placement.get("NPU", 0), "cpu_ops": sum(v for k, v in placement.items() if k != "NPU"),
            "cycles": int(float(s["cycles_total"])), "estimated_ms": round(float(s["inference_time"]) * 1000, 4),
            "sram_kib": round(float(s["sram_memory_used"]), 2), "dram_kib": round(float(s["dram_memory_used"]), 2),
            "macs": int(float(s["nn_macs"])), "clock_hz": float(s["core_clock"]),
        })
    return {
        "subgraphs": subgraphs,
        "vela_npu_ops": sum(g["npu_ops"] for g in subgraphs),
        "vela_cpu_ops": sum(g["cpu_ops"] for g in subgraphs),
        "cycles": sum(g["cycles"] for g in subgraphs),
        "estimated_ms": round(sum(g["estimated_ms"] for g in subgraphs), 4),
        # Subgraphs run one after the other, so peak use is the largest, not the sum.
        "sram_kib": max((g["sram_kib"] for g in subgraphs), default=0.0),
        "dram_kib": max((g["dram_kib"] for g in subgraphs), default=0.0),
        "macs": sum(g["macs"] for g in subgraphs),
    }


def _placement(graph_module, rejected: dict[str, str]) -> dict[str, Any]:
    """Operators of the lowered ExecuTorch graph on the NPU vs the CPU, with reasons."""
    from .executorch import count_delegation

    info, npu, cpu = count_delegation(graph_module)
    reasons: dict[str, set[str]] = {}
    for node_name, reason in rejected.items():  # op type = node name without its _N suffix, as ExecuTorch counts
        reasons.setdefault(re.sub(r"_\d+$", "", node_name), set()).add(reason)
    cpu_ops = {}
    for op, n in sorted(cpu.items()):
        why = "; ".join(sorted(reasons.get(op, ()))) or _BOUNDARY.get(
            op, "not claimed by the Ethos-U partitioner (no reason reported)")
        cpu_ops[op] = {"count": n, "why": why}
    total = npu + sum(cpu.values())
    return {"delegate": "EthosUBackend", "delegated_subgraphs": info.num_delegated_subgraphs,
            "npu_nodes": npu, "cpu_nodes": sum(cpu.values()),
            "npu_op_percent": round(100.0 * npu / total, 2) if total else 100.0, "cpu_ops": cpu_ops}


def lower(parts, recipe, target, out_dir: Path, calibration: list[list[int]] | None = None) -> Lowered:
    import torch
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    from ..errors import InputError

    check(recipe, target)
    if not calibration:
        raise InputError(f"recipe {recipe.name}: {target.name} quantizes activations statically and needs "
                         f"calibration inputs; none were found (set recipe calibration: to a JSONL file)")
    samples = calibration_steps(parts, calibration)
    args = {"encode": parts.encode_inputs(), "decode": parts.decode_inputs()}
    modules = {"encode": parts.encode, "decode": parts.decode}
    npu: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgeseq-ethos-") as tmp, _stdout_to_stderr():
        tmp = Path(tmp)
        quantized, specs, partitioners = {}, {}, {}
        for name in modules:
            specs[name] = _compile_spec(target, tmp / name)
            quantized[name] = torch.export.export(_quantize(modules[name], args[name], samples[name], specs[name]),
                                                  args[name], strict=False)
            partitioners[name] = _partitioner(specs[name])
        config = EdgeCompileConfig(_check_ir_validity=False)
        host = to_edge_transform_and_lower(dict(quantized), compile_config=config).to_executorch()
        device = to_edge_transform_and_lower(dict(quantized), compile_config=config,
                                             partitioner={n: [p] for n, p in partitioners.items()})
        for name in modules:
            placement = _placement(device.exported_program(name).graph_module, partitioners[name].rejected)
            vela = _vela_report(list((tmp / name).glob("output_tag*.tosa")), specs[name], tmp / f"{name}-report")
            npu[name] = {**placement, **vela}
        et = device.to_executorch()
    (out_dir / PTE).write_bytes(et.buffer)
    (out_dir / HOST).write_bytes(host.buffer)
    sig = parts.describe()
    clock = next((g["clock_hz"] for p in npu.values() for g in p["subgraphs"]), None)
    for name in sig:
        sig[name].update(file=PTE, method=name, host_reference=HOST, quantization={"all": "static-int8"},
                         npu_op_percent=npu[name]["npu_op_percent"], estimated_ms=npu[name]["estimated_ms"])
    sig["decode"]["kv_cache"] = "inputs/outputs (cache_k_*, cache_v_*), float at the boundary, int8 on the NPU"
    report = {"accelerator": target.options["accelerator"],
              "system_config": _flag(specs["encode"], "system-config"),
              "memory_mode": _flag(specs["encode"], "memory-mode"),
              "clock_mhz": clock / 1e6 if clock else None,
              "estimate": "Vela's compile-time estimate of NPU time (cycles / clock); the Cortex-M's "
                          "quantize/dequantize at the program boundary is not included",
              "programs": npu}
    return Lowered(files=[PTE, HOST], programs=sig, report={"npu": report}, tool_versions=versions())


def estimate(artifact, output_len: int) -> dict[str, Any]:
    """Probe figures from Vela's estimate (kind: estimate): NPU time only, fixed shapes.

    encode always runs at max_input_len (padded) and decode on the full static cache,
    so neither depends on the input length or the position."""
    npu = artifact.manifest["npu"]
    enc, dec = npu["programs"]["encode"]["estimated_ms"], npu["programs"]["decode"]["estimated_ms"]
    ttft = enc + dec
    return {
        "kind": "estimate", "source": npu["estimate"], "load_ms": None, "peak_rss_mb": None,
        "ttft_ms": {"p50": round(ttft, 4), "p90": round(ttft, 4)},
        "decode_ms_per_token": {"p50": dec, "p90": dec},
        "tokens_per_s": round(output_len * 1000.0 / (enc + output_len * dec), 2),
        "artifact_bytes": artifact.manifest["files"][PTE]["bytes"],
        "npu": {"accelerator": npu["accelerator"], "system_config": npu["system_config"],
                "clock_mhz": npu["clock_mhz"],
                **{f"{name}_{k}": p[k] for name, p in npu["programs"].items()
                   for k in ("npu_op_percent", "estimated_ms", "cycles", "sram_kib", "dram_kib")}},
    }


class EthosHostSession:
    """Runs host_reference.pte (the quantized graphs, undelegated) with the cache as I/O."""

    def __init__(self, artifact, threads: int | None = None):
        import torch

        from .executorch import load_program

        self._torch = torch
        progs = artifact.manifest["programs"]
        program = load_program(artifact.file(progs["encode"]["host_reference"]), threads=threads)
        self._encode = program.load_method("encode")
        self._decode = program.load_method("decode")
        self._encode_inputs = progs["encode"]["inputs"]
        self._cache_shapes = [tuple(c["shape"]) for c in progs["decode"]["cache"]]

    def encode(self, *inputs) -> dict:
        from . import encode_arrays

        t = self._torch
        cross = list(self._encode.execute([t.from_numpy(a) for a in encode_arrays(self._encode_inputs, inputs)]))
        return {"cross": cross, "cache": [t.zeros(s) for s in self._cache_shapes]}

    def decode(self, token: int, position: int, state: dict) -> np.ndarray:
        t = self._torch
        logits, *cache = self._decode.execute([t.tensor([[token]], dtype=t.long), t.tensor([position], dtype=t.long),
                                               *state["cross"], *state["cache"]])
        state["cache"] = list(cache)
        return logits.reshape(-1).float().numpy()


def open(artifact, threads: int | None = None) -> EthosHostSession:  # noqa: A001 (the interface's name)
    return EthosHostSession(artifact, threads)
