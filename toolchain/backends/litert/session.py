"""The LiteRT interpreter (XNNPACK delegate) as a Session: what a device needs of litert-cpu."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ...logs import native_logs
from ..base import Session
from ..inputs import encode_arrays

if TYPE_CHECKING:
    from ...artifact import Artifact


class LiteRTState:
    """One input's decode inputs: what encode returned for decode (cross_bias and the cross K/V
    or encoder states, by decode input tensor index) and, while another input's state holds the
    interpreter, this input's own self-attention caches (None: not started, zeros)."""

    def __init__(self, cross: list[tuple[int, np.ndarray]]):
        self.cross = cross
        self.caches: list[np.ndarray] | None = None


class LiteRTSession(Session):
    def __init__(self, artifact: Artifact, threads: int | None = None):
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

        def tensors(entries: list[dict[str, Any]]) -> dict[str, tuple[str, np.dtype]]:
            return {e["name"]: (e["tensor"], np.dtype(e["runtime_dtype"])) for e in entries}

        self._enc_in = tensors(enc["inputs"])
        self._enc_spec = enc["inputs"]
        self._enc_out = [e["tensor"] for e in enc["outputs"]]
        dec_in = tensors(dec["inputs"])
        self._token, self._position = dec_in["token"][0], dec_in["position"][0]
        # encode output i -> the decode input of the same name (cross_bias, cross_k_l, cross_v_l)
        self._cross = [(t, dec_in[e["name"]][0]) for e, t in zip(enc["outputs"], self._enc_out, strict=True)]
        outs = {e["name"]: e["tensor"] for e in dec["outputs"]}
        self._logits = outs["logits"]
        # decode output tensor -> the decode input it feeds at the next step
        self._feedback = [(outs[f"new_{c['name']}"], dec_in[c["name"]][0]) for c in dec["cache"]]
        # Decode runs on the interpreter's own tensors, not through the signature runner, which
        # resizes, re-allocates and copies in all 27 inputs and copies out all 13 outputs on every
        # call: the encode outputs are set once per input (_bind), the caches are copied from
        # output to input in place, and only the logits are copied out. The runner's index maps
        # (signature name -> tensor index, subgraph) are what its own __call__ uses.
        self._w, self._sub = self._dec._interpreter_wrapper, self._dec._subgraph_index
        self._dec_index = dict(self._dec._inputs)
        self._out_index = dict(self._dec._outputs)
        self._bound: LiteRTState | None = None
        self._views: dict[str, np.ndarray] | None = None  # decode's token/position/cache tensors

    def encode(self, *inputs: np.ndarray | dict[str, np.ndarray]) -> LiteRTState:
        # Our dtypes first (shape checks), then the flatbuffer's (int64 ids are int32 there).
        arrays = encode_arrays(self._enc_spec, inputs)
        out = self._enc(**{self._enc_in[e["name"]][0]: np.ascontiguousarray(a, dtype=self._enc_in[e["name"]][1])
                           for e, a in zip(self._enc_spec, arrays, strict=True)})
        self._views = None  # the runner re-allocated: views into the interpreter are fetched again
        return LiteRTState([(self._dec_index[dec_t], out[enc_t]) for enc_t, dec_t in self._cross])

    def _view(self, name: str, output: bool = False) -> np.ndarray:
        """A numpy view of one of decode's tensors, in the interpreter's memory (valid until the
        interpreter re-allocates: refetched after every encode)."""
        return self._w.tensor(self._w, (self._out_index if output else self._dec_index)[name], self._sub)

    def _bind(self, state: LiteRTState) -> dict[str, np.ndarray]:
        """Make `state` the input decode's tensors hold: its encode outputs set, its caches (or
        zeros) in place; the state that held them before keeps a copy of its caches."""
        if self._views is None:
            self._w.AllocateTensors(self._sub)  # a no-op once allocated; decode's shapes never change
            self._views = {n: self._view(n) for n in (self._token, self._position, *(i for _, i in self._feedback))}
            self._views.update({n: self._view(n, output=True) for n, _ in self._feedback})
        views = self._views
        if state is not self._bound:
            if self._bound is not None:
                self._bound.caches = [views[i].copy() for _, i in self._feedback]
            for index, array in state.cross:
                self._w.SetTensor(index, array, self._sub)
            for k, (_, i) in enumerate(self._feedback):
                if state.caches is None:
                    views[i].fill(0.0)
                else:
                    np.copyto(views[i], state.caches[k])
            state.caches = None  # the interpreter holds them now
            self._bound = state
        return views

    def decode(self, token: int, position: int, state: LiteRTState) -> np.ndarray:
        views = self._bind(state)
        views[self._token][...] = token
        views[self._position][...] = position
        self._w.Invoke(self._sub)
        for new, old in self._feedback:  # this step's caches become the next step's inputs
            np.copyto(views[old], views[new])
        return self._w.GetTensor(self._out_index[self._logits], self._sub).reshape(-1)
