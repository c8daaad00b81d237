"""Calibration inputs for static quantization: the split's fp32 modules run greedily over the
recipe's calibration set, every program input recorded on the way.

Decode's inputs (cross K/V, the caches at each position) exist only as encode/decode outputs,
so they come from running the model; this runs the same greedy loop as `run` and `verify`
(generate.greedy, with the forced decoder prompt, language detection and suppressed tokens
of the family) over an `EagerSession`, the split's torch modules behind the Session contract.
Every backend that calibrates (ONNX static-int8, the Ethos-U int8 programs) takes its samples
from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .backends.base import CacheMode, Session
from .backends.inputs import encode_arrays

MAX_DECODE_SAMPLES = 256


class EagerSession(Session):
    """The split's fp32 torch modules as a Session. State: the cross K/V tuple and, in io
    cache mode, the caches (decode returns them updated); in buffer mode the caches are the
    decode module's buffers, zeroed at each encode."""

    def __init__(self, parts: Any) -> None:
        self.parts = parts
        self._inputs = [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in parts.encode_spec]
        self.next_token, self.vocab_size = parts.next_token, parts.vocab_size

    def encode(self, *inputs: np.ndarray | dict[str, np.ndarray]) -> dict[str, Any]:
        args = tuple(torch.from_numpy(a) for a in encode_arrays(self._inputs, inputs))
        with torch.no_grad():
            cross = tuple(self.parts.encode(*args))
        self.on_encode(args)
        io = self.parts.cache_mode == CacheMode.IO
        if not io:
            self.parts.reset_cache()
        return {"cross": cross, "cache": self.parts.empty_cache() if io else []}

    def decode(self, token: int, position: int, state: dict[str, Any]) -> np.ndarray:
        bias = np.zeros((1, self.vocab_size), np.float32) if self.next_token else None
        return self._run(token, position, state, bias)[1]

    def step(self, token: int, position: int, state: dict[str, Any], token_bias: np.ndarray,
             want_logits: bool) -> tuple[int, np.ndarray | None]:
        chosen, logits = self._run(token, position, state, token_bias)
        assert chosen is not None, "step() on parts without next_token"
        return chosen, logits if want_logits else None

    def _run(self, token: int, position: int, state: dict[str, Any],
             token_bias: np.ndarray | None) -> tuple[int | None, np.ndarray]:
        """One decode call: (next_token if the program chooses it, logits [V])."""
        bias = () if token_bias is None else (torch.from_numpy(token_bias),)
        step = (torch.tensor([[token]]), torch.tensor([position]), *state["cross"], *state["cache"], *bias)
        self.on_decode(step)
        with torch.no_grad():
            out = self.parts.decode(*step)
        out = list(out) if isinstance(out, tuple) else [out]  # logits [, caches (io)] [, next_token]
        chosen = int(out.pop()) if self.next_token else None
        logits, *caches = out
        if self.parts.cache_mode == CacheMode.IO:
            state["cache"] = caches
        return chosen, logits.reshape(-1).float().numpy()

    # Hooks: what a recording session keeps.
    def on_encode(self, args: tuple[torch.Tensor, ...]) -> None: ...

    def on_decode(self, step: tuple[torch.Tensor, ...]) -> None: ...


@dataclass
class Samples:
    """Recorded program inputs, as torch tensors in the programs' declared input order."""

    encode: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    decode: list[tuple[torch.Tensor, ...]] = field(default_factory=list)

    def feeds(self, program: str, names: list[str]) -> list[dict[str, np.ndarray]]:
        """One name -> array dict per sample (ONNX Runtime's calibration readers)."""
        return [{n: t.numpy() for n, t in zip(names, s, strict=True)} for s in getattr(self, program)]


class _Recorder(EagerSession):
    def __init__(self, parts: Any, samples: Samples) -> None:
        super().__init__(parts)
        self.samples = samples

    def on_encode(self, args: tuple[torch.Tensor, ...]) -> None:
        self.samples.encode.append(args)

    def on_decode(self, step: tuple[torch.Tensor, ...]) -> None:
        self.samples.decode.append(tuple(t.clone() for t in step))


def trace(parts: Any, calibration: list[Any], max_decode: int = MAX_DECODE_SAMPLES) -> Samples:
    """Both programs' inputs over `calibration`: the input codec's calibration items (text:
    token id lists, cut to max_input_len and padded; audio: the encode arrays). At most `max_decode` decode steps
    are kept, spread evenly over all positions (not the first sentences only)."""
    from .generate import greedy
    from .inputs import codec_for

    samples = Samples()
    session = _Recorder(parts, samples)
    kw = {"max_input_len": parts.max_input_len, "max_output_len": parts.max_output_len,
          "start_id": parts.decoder_start_token_id, "eos_id": parts.eos_token_id, "pad_id": parts.pad_token_id,
          "prompt": list(parts.decoder_prompt), "language_ids": list(parts.language_token_ids),
          "suppress": list(parts.suppress_tokens), "begin_suppress": list(parts.begin_suppress_tokens)}
    codec = codec_for(parts.input["kind"])  # token ids -> padded arrays (text); audio: the arrays as given
    for item in calibration:
        greedy(session, None, inputs=codec.encode_arrays(item, parts.max_input_len, parts.pad_token_id), **kw)
    if len(samples.decode) > max_decode:
        keep = np.linspace(0, len(samples.decode) - 1, max_decode).round().astype(int)
        samples.decode = [samples.decode[i] for i in keep]
    return samples
