"""ExecuTorch runtime, XNNPACK delegate.

One program file, ``model.pte``, with two methods, ``encode`` and ``decode``, and
one weights file, ``weights.ptd``. Why the split into .pte + .ptd: the embedding
is used by a portable kernel (the gather in both methods) *and* by the XNNPACK
lm_head (tied weights). In a single .pte the portable copy lives in the program's
constant buffer and the delegate's copy in the delegate's named data, so the
largest tensor of the model is stored twice (seen: +27% on a t5-small-sized
model). Tagging every constant, delegated or not, for one external file puts them
all in one NamedDataStore, which deduplicates by content: each tensor once.

The self-attention cache is mutable buffers inside ``decode`` (initialised to
zeros with InitializedMutableBufferPass: an uninitialised buffer can hold NaN,
and NaN * 0 attention weight is still NaN).
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from ..logs import native_logs
from . import Lowered

PTE, PTD = "model.pte", "weights.ptd"
CACHE_MODE = "buffer"  # the self-attention cache lives in the program as mutable buffers
# The recipe's encode_lengths become more methods of the same program (encode_16, ...),
# their weights deduplicated into the one .ptd with the full encode's.
ENCODE_LENGTHS = True
_DATA_TAG = "weights"
# Nodes that are bookkeeping, not compute: they never reach a kernel.
_NON_COMPUTE = {"getitem"}


def available() -> tuple[bool, str]:
    import importlib.util

    ok = importlib.util.find_spec("executorch") is not None
    return ok, "" if ok else "python package 'executorch' not installed"


def check(recipe, target) -> None:
    from ..errors import InputError
    from ..quantize import EMBEDDING_SCHEMES, LINEAR_SCHEMES

    if target.backend != "xnnpack":
        raise InputError(f"target {target.name}: executorch backend {target.backend!r} is not available; "
                         f"available: xnnpack")
    if "8da4w" in recipe.quantization.values() and recipe.group_size % 32:
        raise InputError(f"recipe {recipe.name}: XNNPACK runs 8da4w only with group_size a multiple of 32, "
                         f"got {recipe.group_size}")
    for comp, scheme in recipe.quantization.items():
        allowed = ["none", *(EMBEDDING_SCHEMES if comp == "embeddings" else LINEAR_SCHEMES)]
        if scheme not in allowed:
            raise InputError(f"recipe {recipe.name}: {comp}={scheme} is not supported by {target.name}; "
                             f"it supports for {comp}: {', '.join(allowed)}")


def preload() -> None:
    """Import the runtime, so a probe's load time measures loading the model, not Python imports."""
    runtime_lib()


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"executorch": version("executorch")}


def _export(name: str, module, args):
    """torch.export, then tag every constant for the shared external weights file.

    Constants are keyed by their fully qualified name in the weights file, so the two
    programs must not share names for different tensors (encode's `layers.0.q.weight`
    is not decode's): each program is exported under its own prefix. A tensor that
    really is shared (the embedding) gets two names and one stored copy, because the
    data store deduplicates by content.
    """
    import torch
    from executorch.exir.passes.external_constants_pass import delegate_external_constants_pass_unlifted

    class Prefixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.add_module(name, module)  # parameters and buffers now live under `name.`

        def forward(self, *inputs):
            return getattr(self, name)(*inputs)

    with torch.no_grad():
        ep = torch.export.export(Prefixed(), args, strict=False)
        gm = ep.module()
        delegate_external_constants_pass_unlifted(gm, lambda _node: _DATA_TAG)
        return torch.export.export(gm, args, strict=False)


def count_delegation(graph_module) -> tuple[Any, int, Counter]:
    """ExecuTorch's delegation info for a lowered graph: (info, delegated compute nodes, Counter of
    the compute nodes left outside every delegate, by op type as get_delegation_info names them)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    outside: Counter = Counter()
    delegated = 0
    for op, stats in info.delegation_by_operator.items():
        if op in _NON_COMPUTE:
            continue
        delegated += stats.delegated
        if stats.non_delegated:
            outside[op] += stats.non_delegated
    return info, delegated, outside


def _delegation(graph_module) -> dict[str, Any]:
    info, delegated, portable = count_delegation(graph_module)
    total = delegated + sum(portable.values())
    return {
        "delegate": "XnnpackBackend",
        "delegated_subgraphs": info.num_delegated_subgraphs,
        "delegated_nodes": delegated,
        "portable_nodes": sum(portable.values()),
        "delegated_fraction": round(delegated / total, 4) if total else 1.0,
        "portable_ops": dict(sorted(portable.items())),
    }


def lower(parts, recipe, target, out_dir: Path, calibration: list[list[int]] | None = None) -> Lowered:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from .. import progress, quantize

    check(recipe, target)
    with progress.stage("  quantize (torchao)") if recipe.quantization else nullcontext():
        quant = quantize.apply(parts, recipe)
    from ..split import text_inputs

    with progress.stage("  torch.export"):
        programs = {"encode": _export("encode", parts.encode, parts.encode_inputs()),
                    "decode": _export("decode", parts.decode, parts.decode_inputs())}
        for n, module in sorted(parts.encode_buckets.items()):
            programs[f"encode_{n}"] = _export(f"encode_{n}", module, tuple(t.example() for t in text_inputs(n)))
    with progress.stage("  partition and lower to XNNPACK"):
        edge = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()])
    report = {name: _delegation(edge.exported_program(name).graph_module) for name in programs}
    with progress.stage("  serialize model.pte + weights.ptd"):
        et = _to_executorch(edge, programs, quant)
        (out_dir / PTE).write_bytes(et.buffer)
        et.write_tensor_data_to_file(str(out_dir))
    for plan in et.executorch_program.execution_plan:
        # Kernels the runtime calls outside the delegate, after ExecuTorch's own fusions
        # (e.g. dequantize+embedding -> quantized_decomposed::embedding_byte).
        report[plan.name]["runtime_ops"] = sorted(o.name for o in plan.operators)
    written = out_dir / f"{_DATA_TAG}.ptd"
    if written.name != PTD:
        written.rename(out_dir / PTD)
    sig = parts.describe()
    sig["encode"].update(file=PTE, method="encode")
    if parts.encode_buckets:  # inputs [1, L] each; outputs as the full encode's
        sig["encode"]["lengths"] = [{"length": n, "method": f"encode_{n}"} for n in sorted(parts.encode_buckets)]
    sig["decode"].update(file=PTE, method="decode",
                         kv_cache="in-program mutable buffers (cache_k_*, cache_v_*), zero-initialised")
    schemes = quantize.program_schemes(quant)
    for name in sig:
        sig[name]["data_file"] = PTD
        sig[name]["quantization"] = schemes[name]
    return Lowered(files=[PTE, PTD], programs=sig, report={"delegation": report, "quantization": quant},
                   tool_versions=versions())


def _to_executorch(edge, programs: dict, quant: dict):
    """The edge programs as one ExecuTorch program, every constant tagged for weights.ptd."""
    from executorch.exir import ExecutorchBackendConfig
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    return edge.to_executorch(ExecutorchBackendConfig(
        external_constants=lambda _node: _DATA_TAG,
        passes=[InitializedMutableBufferPass(["cache_"])],
        # decode's inputs are not memory-planned: the runtime reads the caller's tensors in
        # place instead of copying them into its arena on every step (the cross K/V are
        # 2 x layers x [1, H, Dh, S] floats: 1.5 MB per token on a t5-small-sized model).
        # encode keeps planned inputs (a few KB, and callers may hand it temporaries).
        memory_planning_pass={name: MemoryPlanningPass(alloc_graph_input=name != "decode") for name in programs},
        # Fuses torchao's dequantize->embedding into quantized_decomposed::embedding_byte/4bit.
        do_quant_fusion_and_const_prop=quant["embeddings"]["scheme"] != "none"))


def runtime_lib():
    """ExecuTorch's runtime extension module, with the quantized kernels registered
    (embedding_byte/4bit, quantize/dequantize_per_tensor), and nothing of the exporter.

    Why not `executorch.runtime` / `portable_lib`: portable_lib, which both import, is a
    re-export of this `_C` extension, but first imports `executorch.exir._warnings` for a
    warning class, and that loads all of `executorch.exir` (torch._dynamo, torch._inductor,
    torchao, networkx): `edgeseq run` of the demo took 6.9 s with it, 1.8 s without (median of
    5, AMD EPYC, 2 cores); what is left is mostly `import torch` (~1.2 s), the one part of its
    prelude the extension needs (it links libtorch_python, takes and returns torch tensors).
    `executorch.kernels.quantized` loads the quantized kernels library (a torch.ops.load_library;
    its static initialisers register the ExecuTorch kernels too) and imports only torch."""
    import executorch.kernels.quantized  # noqa: F401
    import torch  # noqa: F401  (before the extension: it links libtorch_python, returns torch tensors)
    from executorch.extension.pybindings import _C

    return _C


class Method:
    """One loaded method: `execute(inputs) -> outputs`, as executorch.runtime.Method."""

    __slots__ = ("_method",)

    def __init__(self, method) -> None:
        self._method = method

    def execute(self, inputs):
        return self._method(inputs)


class Program:
    """A loaded program: `load_method(name) -> Method`, as executorch.runtime.Program."""

    def __init__(self, program) -> None:
        self._program = program

    def load_method(self, name: str) -> Method:
        with native_logs():  # XNNPACK's init logs cpuinfo lines here
            return Method(self._program.load_method(name))


def load_program(path, data_path=None, threads: int | None = None) -> Program:
    """An ExecuTorch program from disk (see runtime_lib), the shared threadpool sized to `threads`.
    The runtime's C++ log lines (cpuinfo_utils.cpp ...) go to stderr only with --verbose."""
    lib = runtime_lib()
    with native_logs():
        if threads and lib._threadpool_get_thread_count() != int(threads):
            lib._unsafe_reset_threadpool(int(threads))
        return Program(lib._load_program(str(path), program_verification=lib.Verification.InternalConsistency,
                                         data_path=str(data_path) if data_path is not None else None))


class ExecuTorchSession:
    def __init__(self, artifact, threads: int | None = None):
        import torch

        self._torch = torch
        progs = artifact.manifest["programs"]
        data = progs["encode"].get("data_file")  # None when all weights live in the .pte (Core ML delegate)
        program = load_program(artifact.file(progs["encode"]["file"]), artifact.file(data) if data else None,
                               threads)
        self._encode = program.load_method(progs["encode"]["method"])
        self._decode = program.load_method(progs["decode"]["method"])
        # Shorter encode programs (recipe encode_lengths): length -> method, shortest first.
        self._lengths = {e["length"]: program.load_method(e["method"]) for e in progs["encode"].get("lengths", [])}
        self._token = torch.zeros(1, 1, dtype=torch.long)
        self._pos = torch.zeros(1, dtype=torch.long)
        self._encode_inputs = progs["encode"]["inputs"]
        self.encode_length = None  # the input length the last encode ran at

    def encode(self, *inputs) -> list:
        from . import choose_encode

        method, self.encode_length, arrays = choose_encode(self._encode_inputs, inputs, self._encode, self._lengths)
        return list(method.execute([self._torch.from_numpy(a) for a in arrays]))

    def decode(self, token: int, position: int, state: list) -> np.ndarray:
        self._token[0, 0] = token
        self._pos[0] = position
        return self._decode.execute([self._token, self._pos, *state])[0].reshape(-1).float().numpy()


def open(artifact, threads: int | None = None) -> ExecuTorchSession:  # noqa: A001 (the interface's name)
    return ExecuTorchSession(artifact, threads)
