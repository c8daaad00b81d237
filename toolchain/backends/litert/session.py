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
        self._token, self._token_dtype = dec_in["token"]
        self._position, self._position_dtype = dec_in["position"]
        # encode output i -> the decode input of the same name (cross_bias, cross_k_l, cross_v_l)
        self._cross = [(t, dec_in[e["name"]][0]) for e, t in zip(enc["outputs"], self._enc_out, strict=True)]
        self._caches = [(dec_in[c["name"]][0], np.zeros(c["shape"], dtype=np.float32)) for c in dec["cache"]]
        outs = {e["name"]: e["tensor"] for e in dec["outputs"]}
        self._logits = outs["logits"]
        # decode output tensor -> the decode input it feeds at the next step
        self._feedback = [(outs[f"new_{c['name']}"], dec_in[c["name"]][0]) for c in dec["cache"]]

    def encode(self, *inputs: np.ndarray | dict[str, np.ndarray]) -> LiteRTState:
        # Our dtypes first (shape checks), then the flatbuffer's (int64 ids are int32 there).
        arrays = encode_arrays(self._enc_spec, inputs)
        out = self._enc(**{self._enc_in[e["name"]][0]: np.ascontiguousarray(a, dtype=self._enc_in[e["name"]][1])
                           for e, a in zip(self._enc_spec, arrays, strict=True)})
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
