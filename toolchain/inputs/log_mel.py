"""Log-mel audio input (Whisper): a WAV file, or "synthetic:NAME" (a deterministic test signal),
-> input_features float32 [1, n_mels, frames] with the feature-extractor settings the manifest
carries (toolchain.audio computes them in numpy, as transformers' WhisperFeatureExtractor)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np

from .. import audio
from ..schema import AtLeast
from . import Codec, Context, Encoded
from .text import until_eos

if TYPE_CHECKING:
    from ..manifest import Tokens

Positive = Annotated[int, AtLeast(1)]


@dataclass(frozen=True)
class Settings:
    """The manifest's "input" for log_mel: the kind and audio.load_settings' settings."""

    kind: str
    feature_size: Positive  # mel bins
    sampling_rate: Positive
    hop_length: Positive
    chunk_length: Positive  # seconds per input
    n_fft: Positive
    padding_value: float
    n_samples: Positive  # chunk_length x sampling_rate
    frames: Positive  # n_samples // hop_length: the encoder's input length


class LogMelCodec(Codec):
    kind = "log_mel"
    metric = "wer"
    builtin_source = "built-in synthetic audio"

    def manifest_spec(self, checkpoint: Path, parts_input: Mapping[str, Any]) -> dict[str, Any]:
        return {"kind": self.kind, **audio.load_settings(checkpoint, parts_input["n_mels"], parts_input["frames"])}

    def check_spec(self, spec: Mapping[str, Any], where: str) -> None:
        from .. import schema

        schema.load(Settings, dict(spec), where, key="input")

    def builtin_rows(self) -> list[dict[str, str]]:
        return [{"input": f"synthetic:{k}"} for k in audio.SYNTHETIC]

    def read(self, value: str, ctx: Context, *, base: Path | None = None, truncate: bool = False,
             allow_unknown: bool = True) -> Encoded:
        settings = dict(ctx.spec)
        if value.startswith("synthetic:"):
            return Encoded(arrays=(audio.log_mel(audio.synthetic(value.split(":", 1)[1], settings), settings),))
        path = Path(value)
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        return Encoded(arrays=(audio.wav_features(path, settings, truncate=truncate),))

    def encode_arrays(self, item: Any, max_input_len: int, pad_id: int) -> tuple[np.ndarray, ...]:
        # input_features float32 [1, n_mels, frames]: already the program's input.
        return tuple((item.arrays or ()) if isinstance(item, Encoded) else item)

    def eager_kwargs(self, encoded: Encoded) -> dict[str, Any]:
        import torch

        assert encoded.arrays is not None
        return {"input_features": torch.from_numpy(encoded.arrays[0])}

    def reference(self, model: Any, kwargs: dict[str, Any], tokens: Tokens, max_output_len: int,
                  prompt: Sequence[int | None], choice: Mapping[str, str] | None = None,
                  use_cache: bool = True) -> tuple[list[int] | None, list[int]]:
        # Whisper's generate builds the prompt from the generation config and `choice` (language,
        # task), feeds it as decoder input ids and returns only what follows, so max_new_tokens
        # excludes it. The prompt it fed: the artifact's (built as generate builds it, tested
        # against its _retrieve_init_tokens) with a language to detect as its detect_language says.
        choice = {k: v for k, v in (choice or {}).items() if v is not None}
        seq = model.generate(**kwargs, max_new_tokens=max_output_len - len(prompt), do_sample=False,
                             num_beams=1, use_cache=use_cache, **choice)[0].tolist()
        if seq[:1] == [tokens.decoder_start_token_id]:  # a version that returns the prompt too
            return seq[1: 1 + len(prompt)], until_eos(seq[1 + len(prompt):], tokens.eos_token_id)
        fed: list[int] = []
        for t in prompt:
            fed.append(int(model.detect_language(input_features=kwargs["input_features"])[0]) if t is None else t)
        return fed, until_eos(seq, tokens.eos_token_id)

    def calibration(self, rows: Sequence[Mapping[str, Any]], ctx: Context, base: Path | None,
                    limit: int) -> list[Any]:
        # The encode arrays themselves: (input_features,) per row.
        return [self.read(r["input"], ctx, base=base).arrays for r in rows[:limit]]

    def probe_length(self, spec: Mapping[str, Any], requested: int) -> int:
        return int(spec["frames"])  # the encoder's input is always the full window

    def probe_input(self, ctx: Context, tokens: Tokens, length: int) -> Encoded:
        return self.read("synthetic:chirp", ctx)

    def describe(self, spec: Mapping[str, Any]) -> str | None:
        return (f"WAV audio -> log-mel [1, {spec['feature_size']}, {spec['frames']}] "
                f"({spec['sampling_rate']} Hz, {spec['chunk_length']} s per input)")


CODEC = LogMelCodec()
