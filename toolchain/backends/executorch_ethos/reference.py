"""The NPU's integer program, executed offline: an Ethos-U artifact's partitioned program run on
the host with every delegate call replaced by a TOSA reference-model run of that subgraph.

What runs (per program, encode and decode):

* ``tosa/<program>.ept`` (subgraphs.py), the partitioned edge program, walked by PyTorch: the
  operators the partitioner left on the Cortex-M (boundary quantize/dequantize, int64 casts)
  run as ExecuTorch edge operators in PyTorch on the CPU;
* each ``executorch_call_delegate`` runs ``tosa/<program>_<n>.tosa``, the flatbuffer Vela
  compiles, on the TOSA reference model (``tosa_reference_model``, the spec's integer
  semantics) with the exact int8 (int32, bool) boundary tensors of this run. Its outputs are
  what the rest of the program consumes: tokens and logits come from the NPU's numerics.

The check per delegate call: the same subgraph's int8 graph before TOSA lowering (the
delegate's ``original_module``: dequantize -> float operator -> quantize, the graph that
``host_reference.pte`` runs on ExecuTorch's CPU kernels, here in PyTorch) runs on the same
boundary tensors, and every output value is compared in integer steps of its quantized type.
The two compute the same quantized model by different arithmetic (TOSA: int32 accumulators,
fixed-point RESCALE with round-half-up, table lookups for exp/rsqrt; the host graph: float32
between each quantize and dequantize), so every requantization inside a subgraph may round a
value one step apart, and a layer later that difference can grow by a step or two. Measured
(verify --limit 100 on the demo, U85, 2 encoder + 2 decoder layers): encode 98.0% of output
values bit-equal, max 4 steps; decode 99.9996% bit-equal, max 2 steps; tiny random T5 and
Whisper: bit-equal. A lowering defect is not like that: one weight negated in the decode
flatbuffer (tests/test_ethos.py) put 11% of the values off, by up to 226 steps. The bounds:
no value more than MAX_STEPS apart, at most MAX_OFF_FRACTION of values apart at all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.overrides import TorchFunctionMode

from ...logs import native_logs
from ..base import Session
from ..inputs import encode_arrays
from .vela import stdout_to_stderr

if TYPE_CHECKING:
    from ...artifact import Artifact

MAX_STEPS = 8  # the largest allowed |TOSA - host| of one value, in quantization steps (measured: 4)
MAX_OFF_FRACTION = 0.05  # the largest allowed share of values that differ at all (measured: 2.0%)


@dataclass
class SubgraphCheck:
    """Agreement of one delegated subgraph with the host reference, over all its calls."""

    program: str
    index: int
    file: str
    calls: int = 0
    values: int = 0  # output values compared (all outputs, all calls)
    exact: int = 0  # of which bit-equal
    off_by_one: int = 0  # of which exactly one step apart (rounding)
    max_steps: int = 0  # the largest |TOSA - host| of one value, in steps of its integer type

    def failure(self) -> str | None:
        off = self.values - self.exact
        if self.max_steps <= MAX_STEPS and off <= MAX_OFF_FRACTION * self.values:
            return None
        return (f"{self.program} subgraph {self.index} ({self.file}): TOSA reference model vs host reference: "
                f"{off} of {self.values} output values differ (max {self.max_steps} steps; allowed: "
                f"<= {MAX_STEPS} steps on <= {MAX_OFF_FRACTION:.0%} of values)")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exact_fraction"] = round(self.exact / self.values, 6) if self.values else None
        return d


def _to_numpy(t: Any) -> np.ndarray:
    """A boundary tensor as the reference model reads it: its memory order (dim_order), which is
    what the TOSA graph was built for (contiguous for every tensor of the split's programs)."""
    order = tuple(t.dim_order())
    if order != tuple(range(t.dim())):
        t = t.permute(order)
    return t.detach().contiguous().numpy()


def _to_torch(a: np.ndarray, like: Any) -> Any:
    """A reference-model output back in the layout and dtype of the host reference's `like`."""
    import torch

    order = tuple(like.dim_order())
    t = torch.from_numpy(np.ascontiguousarray(a)).to(like.dtype)
    if order != tuple(range(like.dim())):
        t = t.reshape([like.shape[i] for i in order]).permute([order.index(i) for i in range(like.dim())])
        return t.contiguous()
    return t.reshape(like.shape)


class _Delegate:
    """One delegated subgraph: its TOSA flatbuffer and its pre-TOSA int8 graph."""

    def __init__(self, flatbuffer: bytes, lowered: Any, check: SubgraphCheck) -> None:
        self.flatbuffer, self.check = flatbuffer, check
        self.host = lowered.original_module.module()

    def __call__(self, inputs: tuple) -> tuple:
        import tosa_reference_model as trm

        host = self.host(*inputs)
        host = tuple(host) if isinstance(host, list | tuple) else (host,)
        # It prints a spec-version notice on fd 1 at every run: to stderr, where it is a native log
        # line like any other (shown with --verbose); stdout stays the CLI's (JSON).
        with stdout_to_stderr(), native_logs():
            outs, status = trm.run(self.flatbuffer, [_to_numpy(t) for t in inputs], verbosity="NONE",
                                   initialize_variable_tensor_from_numpy=True)
        c = self.check
        if status != trm.GraphStatus.TOSA_VALID:
            raise RuntimeError(f"{c.program} subgraph {c.index} ({c.file}): the TOSA reference model "
                               f"returned {status.name}")
        got = tuple(_to_torch(a, ref) for a, ref in zip(outs, host, strict=True))
        c.calls += 1
        for g, ref in zip(got, host, strict=True):
            diff = np.abs(g.numpy().astype(np.int64) - ref.numpy().astype(np.int64))
            c.values += diff.size
            c.exact += int((diff == 0).sum())
            c.off_by_one += int((diff == 1).sum())
            c.max_steps = max(c.max_steps, int(diff.max(initial=0)))
        return got


class TosaReferenceSession(Session):
    """State as the host Session's: {"cross": encode's outputs, "cache": the per-layer caches
    (cache_k [H, Dh, T], cache_v [H, T, Dh]) in the program's boundary dtype}."""

    def __init__(self, artifact: Artifact, threads: int | None = None) -> None:
        import torch
        from executorch.exir.serde.serialize import load

        self._torch = torch
        progs = artifact.manifest["programs"]
        self.checks: list[SubgraphCheck] = []
        self._modules: dict[str, Any] = {}
        self._delegates: dict[int, _Delegate] = {}
        for name in ("encode", "decode"):
            entry = progs[name]["tosa"]
            with artifact.file(entry["graph"]).open("rb") as f:
                program = load(f)
            module = program.module()
            for s in entry["subgraphs"]:
                check = SubgraphCheck(name, s["index"], s["file"])
                lowered = getattr(module, s["delegate"])  # the object executorch_call_delegate receives
                self._delegates[id(lowered)] = _Delegate(artifact.file(s["file"]).read_bytes(), lowered, check)
                self.checks.append(check)
            self._modules[name] = module
        self._encode_inputs = progs["encode"]["inputs"]
        # A zeroed cache: 0.0 in float, its zero point where it crosses the boundary as int8.
        self._cache = [(tuple(c["shape"]), getattr(torch, c["dtype"]), c.get("zero_point", 0))
                       for c in progs["decode"]["cache"]]

    def executed(self) -> str:
        per = ", ".join(f"{p} {sum(c.program == p for c in self.checks)}" for p in self._modules)
        return (f"TOSA reference model for {len(self.checks)} delegated subgraphs ({per}) + CPU for the rest "
                f"(the partitioned program's other operators, ExecuTorch edge ops in PyTorch)")

    def _run(self, name: str, inputs: list) -> list:
        with _Dispatch(self._delegates):
            out = self._modules[name](*inputs)
        return list(out) if isinstance(out, list | tuple) else [out]

    def encode(self, *inputs: np.ndarray | dict[str, np.ndarray]) -> dict[str, Any]:
        t = self._torch
        cross = self._run("encode", [t.from_numpy(a) for a in encode_arrays(self._encode_inputs, inputs)])
        return {"cross": cross, "cache": [t.full(s, zp, dtype=d) for s, d, zp in self._cache]}

    def decode(self, token: int, position: int, state: dict[str, Any]) -> np.ndarray:
        t = self._torch
        logits, *cache = self._run("decode", [t.tensor([[token]], dtype=t.long), t.tensor([position], dtype=t.long),
                                              *state["cross"], *state["cache"]])
        state["cache"] = cache
        return logits.reshape(-1).float().numpy()

    def execution_report(self) -> dict[str, Any]:
        """Per delegated subgraph: calls and integer agreement with the host reference; and the
        failures (a subgraph beyond the tolerance, named)."""
        return {"subgraphs": [c.as_dict() for c in self.checks],
                "tolerance": {"max_steps": MAX_STEPS, "max_off_fraction": MAX_OFF_FRACTION},
                "failures": [f for c in self.checks if (f := c.failure())]}


class _Dispatch(TorchFunctionMode):
    """Every executorch_call_delegate of the walked program goes to its _Delegate (the mode is
    off inside the handler, so the host reference's own operators run normally)."""

    def __init__(self, delegates: dict[int, _Delegate]) -> None:
        super().__init__()
        self.delegates = delegates

    def __torch_function__(self, func, types, args=(), kwargs=None):
        import torch

        if func is torch._higher_order_ops.executorch_call_delegate:
            return self.delegates[id(args[0])](tuple(args[1:]))
        return func(*args, **(kwargs or {}))
