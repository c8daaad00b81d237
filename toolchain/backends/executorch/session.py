"""The ExecuTorch runtime from Python: load a program, run its methods, and the Session over an
executorch-xnnpack (or executorch-coreml) artifact. Imports nothing of the exporter."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...logs import native_logs
from ..base import Session
from ..inputs import choose_encode
from . import kernels

if TYPE_CHECKING:
    from ...artifact import Artifact


def runtime_lib() -> Any:
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
    """One loaded method: `execute(inputs) -> outputs`, as executorch.runtime.Method, plus
    `bind(inputs)` / `run()`: inputs handed over once and read in place by every later run."""

    __slots__ = ("_method", "_bound")

    def __init__(self, method: Any) -> None:
        self._method = method
        self._bound: list | None = None  # the tensors bind() handed over, kept alive while bound

    def execute(self, inputs: list, clone: bool = True) -> Any:
        """The method's outputs; with clone=False they alias the method's memory-planned
        output buffers (valid until its next execute): no copy, and no torch copy kernel,
        whose OpenMP threads then spin against XNNPACK's for the two cores (measured: a
        512-token int8 t5-small encode returns 12.6 MB of cross K/V)."""
        self._bound = None
        return self._method(inputs, clone_outputs=clone)

    def reads_inputs_in_place(self) -> bool:
        """True when no input is memory-planned: the runtime then reads each input tensor where
        it is (a planned input is copied into the method's arena when it is set), so an input
        changed in place after bind() is what the next run() reads."""
        meta = self._method.method_meta()
        return not any(meta.input_tensor_meta(i).is_memory_planned() for i in range(meta.num_inputs()))

    def bind(self, inputs: list) -> None:
        """Hand `inputs` to the method for the runs that follow (see run)."""
        self._method.set_inputs(inputs)
        self._bound = inputs

    def run(self) -> Any:
        """Execute on the bound inputs; the outputs alias the method's buffers (execute's
        clone=False). Saves converting every input tensor on every call: for a t5-small decode
        step (16 inputs) 0.07 ms of ~1 ms (interleaved, AMD EPYC, 2 threads)."""
        if self._bound is None:
            raise RuntimeError("run() before bind()")
        self._method.execute()
        return self._method.get_outputs(clone_outputs=False)


class Program:
    """A loaded program: `load_method(name) -> Method`, as executorch.runtime.Program."""

    def __init__(self, program: Any) -> None:
        self._program = program

    def load_method(self, name: str) -> Method:
        with native_logs():  # XNNPACK's init logs cpuinfo lines here
            return Method(self._program.load_method(name))


def load_program(path: str | Path, data_path: str | Path | None = None, threads: int | None = None) -> Program:
    """An ExecuTorch program from disk (see runtime_lib), the shared threadpool sized to `threads`.
    The runtime's C++ log lines (cpuinfo_utils.cpp ...) go to stderr only with --verbose."""
    lib = runtime_lib()
    with native_logs():
        if threads and lib._threadpool_get_thread_count() != int(threads):
            lib._unsafe_reset_threadpool(int(threads))
        return Program(lib._load_program(str(path), program_verification=lib.Verification.InternalConsistency,
                                         data_path=str(data_path) if data_path is not None else None))


class ExecuTorchSession(Session):
    """encode/decode methods of one .pte; the decode cache lives in the program (mutable
    buffers, reset by the encode method). State: encode's outputs (cross_bias and the per-layer
    cross K/V, torch tensors as the runtime returns them), fed back to every decode step."""

    def __init__(self, artifact: Artifact, threads: int | None = None) -> None:
        import torch

        self._torch = torch
        progs = artifact.manifest["programs"]
        data = progs["encode"].get("data_file")  # None when all weights live in the .pte (Core ML delegate)
        # encoder_attention: fused programs call edgeseq's own kernel: it must be registered first
        self.kernel_isa = kernels.load() if artifact.manifest["recipe"].get("encoder_attention") == "fused" else None
        if self.kernel_isa in ("fp32-sse2", "fp32"):
            from ... import progress

            progress.note(f"note: {kernels.SLOW_PATH}")
        program = load_program(artifact.file(progs["encode"]["file"]), artifact.file(data) if data else None,
                               threads)
        self._encode = program.load_method(progs["encode"]["method"])
        self._decode = program.load_method(progs["decode"]["method"])
        # Shorter encode programs (recipe encode_lengths): length -> method, shortest first.
        self._lengths = {e["length"]: program.load_method(e["method"]) for e in progs["encode"].get("lengths", [])}
        self._state: dict[int, list[np.ndarray]] = {}  # encode method -> its outputs' copies
        self._token = torch.zeros(1, 1, dtype=torch.long)
        self._pos = torch.zeros(1, dtype=torch.long)
        # numpy views of the two: a step writes them through these (0.1 us, torch's setitem ~2 us).
        self._token_np, self._pos_np = self._token.numpy(), self._pos.numpy()
        self._encode_inputs = progs["encode"]["inputs"]
        outputs = [o["name"] for o in progs["decode"]["outputs"]]
        self.next_token = outputs[-1] == "next_token"  # decode takes token_bias last, returns the token last
        self.vocab_size = int(np.prod(progs["decode"]["outputs"][0]["shape"]))
        self._no_bias = [torch.zeros(1, self.vocab_size)] if self.next_token else []
        # Decode's inputs stay bound between steps while the state and token_bias are the same
        # objects (greedy's TokenBias rows are reused): token and position are written in place.
        self._in_place = self._decode.reads_inputs_in_place()
        self._bound_to: tuple[Any, Any] | None = None

    def executed(self) -> str | None:
        if self.kernel_isa is None:
            return None
        return f"XNNPACK + edgeseq::rel_attention ({self.kernel_isa} inner loops)"

    def encode(self, *inputs: np.ndarray | dict[str, np.ndarray]) -> list:
        method, self.encode_length, arrays = choose_encode(self._encode_inputs, inputs, self._encode, self._lengths)
        out = method.execute([self._torch.from_numpy(a) for a in arrays], clone=False)
        # The outputs alias planned memory that decode's execution reuses (the methods of one
        # program share it: measured), so they are copied, with numpy (one thread, no OpenMP),
        # into this session's buffers for that method: the state lives until the next encode
        # (Session.encode's contract), and decode reads it in place (its inputs are not planned).
        bufs = self._state.get(id(method))
        if bufs is None:
            bufs = self._state[id(method)] = [np.empty_like(t.numpy()) for t in out]
        for buf, t in zip(bufs, out, strict=True):
            np.copyto(buf, t.numpy())
        return [self._torch.from_numpy(buf) for buf in bufs]

    def decode(self, token: int, position: int, state: list) -> np.ndarray:
        # token [1, 1] and position [1] int64, written in place: decode's inputs are not
        # memory-planned, so the runtime reads these tensors (and the cross K/V) where they are.
        self._token_np[0, 0] = token
        self._pos_np[0] = position
        out = self._run_decode(state, None)
        return out[0].reshape(-1).float().numpy().copy()

    def step(self, token: int, position: int, state: list, token_bias: np.ndarray,
             want_logits: bool) -> tuple[int, np.ndarray | None]:
        # token_bias [1, V] float32 is read in place too (torch.from_numpy shares the array);
        # the logits stay in the runtime's output unless asked for.
        self._token_np[0, 0] = token
        self._pos_np[0] = position
        out = self._run_decode(state, token_bias)
        # The outputs alias decode's buffers: the token is read now, the logits copied if asked.
        return int(out[-1]), (out[0].reshape(-1).float().numpy().copy() if want_logits else None)

    def _run_decode(self, state: list, token_bias: np.ndarray | None) -> Any:
        """One decode execute on (token, position, *state, bias); the outputs alias decode's
        buffers. The bias is the caller's token_bias, or for decode() the program's zero row
        (if it takes one). Inputs are bound again only when the state or the bias row changed."""
        if self._in_place and self._bound_to is not None and self._bound_to[0] is state \
                and self._bound_to[1] is token_bias:
            return self._decode.run()
        bias = self._no_bias if token_bias is None else [self._torch.from_numpy(token_bias)]
        inputs = [self._token, self._pos, *state, *bias]
        if not self._in_place:  # a planned input is copied when set: hand all over every step
            return self._decode.execute(inputs, clone=False)
        self._decode.bind(inputs)
        self._bound_to = (state, token_bias)
        return self._decode.run()
