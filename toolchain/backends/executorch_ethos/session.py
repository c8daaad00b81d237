"""The host reference Session of an Ethos-U artifact: ``host_reference.pte`` (the quantized
graphs, undelegated) on ExecuTorch's CPU kernels, the decode cache carried as I/O."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..base import Session
from ..executorch.session import load_program
from ..inputs import encode_arrays

if TYPE_CHECKING:
    from ...artifact import Artifact


class EthosHostSession(Session):
    """State: {"cross": encode's outputs, "cache": the per-layer caches}; decode takes the
    caches as inputs (cache_k [H, Dh, T], cache_v [H, T, Dh], zeros at encode) and returns
    them updated after the logits."""

    def __init__(self, artifact: Artifact, threads: int | None = None) -> None:
        import torch

        self._torch = torch
        progs = artifact.manifest["programs"]
        program = load_program(artifact.file(progs["encode"]["host_reference"]), threads=threads)
        self._encode = program.load_method("encode")
        self._decode = program.load_method("decode")
        self._encode_inputs = progs["encode"]["inputs"]
        self._cache_shapes = [tuple(c["shape"]) for c in progs["decode"]["cache"]]

    def encode(self, *inputs: np.ndarray | dict[str, np.ndarray]) -> dict[str, Any]:
        t = self._torch
        cross = list(self._encode.execute([t.from_numpy(a) for a in encode_arrays(self._encode_inputs, inputs)]))
        return {"cross": cross, "cache": [t.zeros(s) for s in self._cache_shapes]}

    def decode(self, token: int, position: int, state: dict[str, Any]) -> np.ndarray:
        t = self._torch
        logits, *cache = self._decode.execute([t.tensor([[token]], dtype=t.long), t.tensor([position], dtype=t.long),
                                               *state["cross"], *state["cache"]])
        state["cache"] = list(cache)
        return logits.reshape(-1).float().numpy()
