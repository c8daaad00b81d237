"""The floor XNNPACK's GEMM kernels put under each recipe's decode step and encode, on this CPU.

A decode step of a t5-small-sized T5 multiplies one [1, d] activation by every decoder linear
(self q/k/v/o, cross q/o, FF in/out: 8 per layer) and by the lm head; its encode multiplies
[L, d] by every encoder linear and by each decoder layer's cross k/v projection. This script
lowers exactly those linears, quantized as the recipe quantizes them (the toolchain's own
torchao configs), with nothing else in the program (no attention, norms, caches or
embedding), runs them under ExecuTorch + XNNPACK with the Session's thread count, and sets
the time beside the memory roofline of the same weights. The whole step cannot be faster than
its linears alone, so where they alone are above a target multiple of the roofline, no change
to our graphs can bring the step under it: the bound is the kernels'.

    .venv/bin/python benchmarks/kernel_floor.py [--recipes fp32 int8 int4 mixed] [--rounds 5]

`make bench` runs it after native.py; the result replaces the kernels block of RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import roofline  # noqa: E402
from common import ROOT, T5_SMALL, machine, publish  # noqa: E402

from toolchain.backends.executorch.quantize import stored_bytes, torchao_config  # noqa: E402
from toolchain.errors import InputError  # noqa: E402
from toolchain.schemes import Component, QuantScheme, requested  # noqa: E402
from toolchain.specs import load_recipe  # noqa: E402

MARKS = ("<!-- kernels:begin -->", "<!-- kernels:end -->")
# The linear schemes measured here: XNNPACK takes all three.
MEASURED = (QuantScheme.NONE, QuantScheme.W8A8_DYNAMIC, QuantScheme.W4A8_DYNAMIC)


def decode_shapes(cfg: dict) -> list[tuple[int, int, Component]]:
    """(out, in, component) of every linear one decode step multiplies by, in program order."""
    d, inner, dff = cfg["d_model"], cfg["num_heads"] * cfg["d_kv"], cfg["d_ff"]
    layer = [(inner, d)] * 3 + [(d, inner), (inner, d), (d, inner), (dff, d), (d, dff)]
    dec = [(o, i, Component.DECODER) for _ in range(cfg["num_decoder_layers"]) for o, i in layer]
    return dec + [(cfg["vocab_size"], d, Component.LM_HEAD)]


def encode_shapes(cfg: dict) -> list[tuple[int, int, Component]]:
    """(out, in, component) of every linear the encode multiplies by: the encoder layers' q/k/v/o
    and FF, then each decoder layer's cross k/v (computed once per input, in encode)."""
    d, inner, dff = cfg["d_model"], cfg["num_heads"] * cfg["d_kv"], cfg["d_ff"]
    layer = [(inner, d)] * 3 + [(d, inner), (dff, d), (d, dff)]
    enc = [(o, i) for _ in range(cfg["num_layers"]) for o, i in layer]
    return [(o, i, Component.ENCODER) for o, i in enc + [(inner, d)] * (2 * cfg["num_decoder_layers"])]


class Linears(nn.Module):
    """The linears in program order, each fed the previous one's output where the widths chain
    (t5-small: inner = d_model), else the input of its width; only the last output is returned,
    so the timing holds no output copies. Weights ~ N(0, 1/in): activations keep their scale."""

    def __init__(self, shapes: list[tuple[int, int, Component]]):
        super().__init__()
        self.shapes = shapes
        self.linears = nn.ModuleList(nn.Linear(i, o, bias=False) for o, i, _ in shapes)
        for lin, (_, i, _) in zip(self.linears, shapes, strict=True):
            nn.init.normal_(lin.weight, std=i**-0.5)
        self.widths = sorted({i for _, i, _ in shapes})

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        by_width = dict(zip(self.widths, xs, strict=True))
        h = xs[0]
        for lin, (_, i, _) in zip(self.linears, self.shapes, strict=True):
            h = lin(h if h.shape[-1] == i else by_width[i])
        return h


@dataclass
class Program:
    module: Any
    inputs: tuple[torch.Tensor, ...]
    buffer: bytes  # the loaded program reads it in place: it must live as long as `module`

    def time_calls(self, calls: int) -> list[float]:
        out = []
        for _ in range(calls):
            t = time.perf_counter()
            self.module.forward(self.inputs)
            out.append(time.perf_counter() - t)
        return out


def lowered(shapes: list[tuple[int, int, Component]], schemes: dict[Component, QuantScheme], group: int,
            rows: int) -> Program:
    """The linears quantized per component, lowered to XNNPACK, loaded by the pybindings."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.extension.pybindings import portable_lib
    from torchao.quantization import quantize_

    torch.manual_seed(0)
    m = Linears(shapes).eval()
    for lin, (_, _, comp) in zip(m.linears, shapes, strict=True):
        if schemes[comp] != QuantScheme.NONE:
            quantize_(lin, torchao_config(schemes[comp], group), filter_fn=lambda x, fqn, mod=lin: x is mod)
    xs = tuple(torch.randn(rows, w) for w in m.widths)
    edge = to_edge_transform_and_lower(torch.export.export(m, xs), partitioner=[XnnpackPartitioner()])
    outside = [n.target for n in edge.exported_program().graph.nodes if n.op == "call_function"
               and "call_delegate" not in str(n.target) and "getitem" not in str(n.target)]
    if outside:  # a linear XNNPACK did not take would be timed on the portable kernels instead
        raise SystemExit(f"kernels bench: not all delegated to XNNPACK: {sorted(set(map(str, outside)))[:4]}")
    buffer = edge.to_executorch().buffer
    return Program(portable_lib._load_for_executorch_from_buffer(buffer), xs, buffer)


@dataclass
class Measured:
    """One recipe's two programs and their call times."""

    schemes: dict[Component, QuantScheme]
    group: int
    decode: Program
    encode: Program
    decode_s: list[float]
    encode_s: list[float]

    def decode_mb(self, shapes: list[tuple[int, int, Component]]) -> float:
        """The decode linears' weights as stored (scales included), as roofline.py counts them."""
        return sum(stored_bytes(o, i, self.schemes[c], self.group) for o, i, c in shapes) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["fp32", "int8", "int4", "mixed"],
                    help="recipes whose decode/encode linears to lower (names or YAML paths)")
    ap.add_argument("--input-len", type=int, default=64, help="encode rows (input tokens)")
    ap.add_argument("--threads", type=int, default=2, help="XNNPACK threads (the probes' default)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds over the recipes")
    ap.add_argument("--calls", type=int, default=40, help="calls per program per round")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md",
                    help="RESULTS.md whose kernels block to replace")
    a = ap.parse_args()

    recipes = {}
    for name in a.recipes:  # all checked before minutes of lowering: a bad one is one line, at once
        try:
            recipes[name] = load_recipe(name)
        except InputError as e:
            raise SystemExit(f"kernels bench: {e}") from None
        if any(requested(recipes[name])[c] not in MEASURED
               for c in (Component.ENCODER, Component.DECODER, Component.LM_HEAD)):
            raise SystemExit(f"kernels bench: {name}: only none/8da8w/8da4w linears are measured here")

    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(a.threads)
    t0 = time.time()
    load0 = os.getloadavg()[0]
    bws = [roofline.measure_bandwidth(a.threads)["read_gbs"]]
    dec, enc = decode_shapes(T5_SMALL), encode_shapes(T5_SMALL)
    rows: dict[str, Measured] = {}
    for name, recipe in recipes.items():
        schemes = requested(recipe)
        print(f"kernels bench: lowering {name} ...", file=sys.stderr, flush=True)
        rows[name] = Measured(schemes, recipe.group_size, lowered(dec, schemes, recipe.group_size, 1),
                              lowered(enc, schemes, recipe.group_size, a.input_len), [], [])
    for _ in range(a.rounds):  # interleaved: a slow moment of the VM lands on every recipe alike
        for r in rows.values():
            r.decode.time_calls(5)
            r.decode_s.extend(r.decode.time_calls(a.calls))
            r.encode.time_calls(2)
            r.encode_s.extend(r.encode.time_calls(max(4, a.calls // 4)))
    bws.append(roofline.measure_bandwidth(a.threads)["read_gbs"])
    bw = max(bws)
    kv_mb = roofline.t5_kv_bytes(T5_SMALL, a.input_len, 32) / 1e6
    flops = 2 * a.input_len * sum(o * i for o, i, _ in enc)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = ["## What XNNPACK's kernels alone cost (`benchmarks/kernel_floor.py`)", "",
             f"{date}; {machine()}; read bandwidth {bw:.1f} GB/s (best of {len(bws)}: "
             f"{min(bws):.1f}-{bw:.1f}); {a.threads} threads; load average (1 min) at start / end: "
             f"{load0:.1f} / {os.getloadavg()[0]:.1f}; {a.rounds} interleaved rounds, medians; "
             f"{(time.time() - t0) / 60:.0f} min.", "",
             "Only the linears of a t5-small-sized step, quantized as each recipe quantizes them, in one "
             "XNNPACK program (no attention, norms, caches). The step's roofline = those weights plus "
             f"the K/V it reads ({kv_mb:.1f} MB at {a.input_len} input tokens) / read bandwidth, as in "
             "compare.py's column; a step cannot beat its linears alone, so `floor / roofline` is the "
             "least the whole step's ratio can be with these kernels.", "",
             "| recipe | decode linears (schemes) | weights MB | ms per step p50 | weights read at | "
             "floor / step roofline | encode linears, "
             f"{a.input_len} rows: ms p50 | GFLOP/s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        d_ms = statistics.median(r.decode_s) * 1e3
        e_ms = statistics.median(r.encode_s) * 1e3
        mb = r.decode_mb(dec)
        roof_ms = (mb + kv_mb) / bw  # MB / (GB/s) = ms
        scheme = f"decoder {r.schemes[Component.DECODER]}, lm head {r.schemes[Component.LM_HEAD]}"
        if QuantScheme.W4A8_DYNAMIC in r.schemes.values():
            scheme += f", groups of {r.group}"
        lines.append(f"| {name} | {scheme} | {mb:.1f} | {d_ms:.3f} | {mb / d_ms:.1f} GB/s | "
                     f"{d_ms / roof_ms:.2f}x ({roof_ms:.2f} ms) | {e_ms:.2f} | {flops / e_ms / 1e6:.0f} |")
    return publish(a.results, MARKS, lines)


if __name__ == "__main__":
    sys.exit(main())
