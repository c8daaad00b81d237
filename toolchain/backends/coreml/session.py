"""The Core ML runtime side (macOS 15+): both functions of the package as MLModels, the
decode KV cache as a Core ML state made per input."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..base import Session
from ..inputs import encode_arrays
from . import BACKENDS

if TYPE_CHECKING:
    from ...artifact import Artifact


class CoreMLState:
    """One input's decode feeds (cross_bias and cross K/V from encode) and its Core ML state."""

    def __init__(self, feeds: dict[str, np.ndarray], state: Any):
        self.feeds = feeds
        self.state = state


class CoreMLSession(Session):
    """encode/decode over the package's two functions. Float tensors are fed in the model's
    runtime dtype (fp16 on the fp16-compute targets), ids as int32 (Core ML has no int64)."""

    def __init__(self, artifact: Artifact, threads: int | None = None):
        import coremltools as ct

        from ...errors import InputError
        from . import BACKEND

        ok, why = BACKEND.can_execute()
        if not ok:
            raise InputError(why)
        progs = artifact.manifest["programs"]
        units = getattr(ct.ComputeUnit, BACKENDS[artifact.target.backend][0])
        path = str(artifact.file(progs["encode"]["file"]))
        # threads: Core ML schedules its own work; there is no thread-count knob.
        self._enc = ct.models.MLModel(path, compute_units=units, function_name=progs["encode"]["function"])
        self._dec = ct.models.MLModel(path, compute_units=units, function_name=progs["decode"]["function"])
        self._dtypes = {e["name"]: np.dtype(e["runtime_dtype"])
                        for p in progs.values() for e in p["inputs"]}
        self._cross = [e["name"] for e in progs["encode"]["outputs"]]
        self._enc_spec = progs["encode"]["inputs"]
        self._zeros = {s["name"]: np.zeros(s["shape"], dtype=np.dtype(s["dtype"])) for s in progs["decode"]["states"]}

    def encode(self, *inputs: np.ndarray | dict[str, np.ndarray]) -> CoreMLState:
        d = self._dtypes
        arrays = encode_arrays(self._enc_spec, inputs)
        out = self._enc.predict({e["name"]: np.ascontiguousarray(a, dtype=d[e["name"]])
                                 for e, a in zip(self._enc_spec, arrays, strict=True)})
        feeds = {n: np.asarray(out[n], dtype=d[n]) for n in self._cross}
        state = self._dec.make_state()
        # A new state's contents are not specified; the masked cache update needs zeros (NaN * 0 = NaN).
        for name, zeros in self._zeros.items():
            state.write_state(name, zeros)
        return CoreMLState(feeds, state)

    def decode(self, token: int, position: int, state: CoreMLState) -> np.ndarray:
        feeds = dict(state.feeds)
        feeds["token"] = np.array([[token]], dtype=self._dtypes["token"])
        feeds["position"] = np.array([position], dtype=self._dtypes["position"])
        out = self._dec.predict(feeds, state=state.state)
        return np.asarray(out["logits"], dtype=np.float32).reshape(-1)
