"""Input codecs: one per input kind (the manifest's `input.kind`, the parts' `input["kind"]`).

A codec is everything edgeseq knows about one modality, so no other module tests a kind:
  * `manifest_spec`   at export: the parts' input description -> the manifest's "input"
                      (text: as is; log_mel: the checkpoint's feature-extractor settings);
  * `read`            a user's input (a text; a WAV path or "synthetic:NAME") -> `Encoded`,
                      what generate.greedy takes; `encode_arrays`: that (or a calibration
                      item) as the encode program's arrays;
  * `builtin_rows`    the eval/calibration rows when there is no eval set (evalset.py);
  * `eager_kwargs`, `reference`  the same input for the eager transformers model, and how its
                      `generate` is called and read (verify's reference side);
  * `calibration`     static-quantization inputs (token id lists, or encode arrays);
  * `probe_length`, `probe_input`  the fixed input a latency probe runs;
  * `metric`          the task metric "auto" means for this kind (metrics.choose).
Callers pick the codec once: `codec_for(kind)`.

Adding a modality (an image encoder, say) = one module here named after its kind, defining
`CODEC`, plus the family adapter whose parts declare `input={"kind": NAME, ...}`.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError

KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")


@dataclass(frozen=True)
class Encoded:
    """One input ready for generate.greedy: token ids (text; greedy right-pads them to the
    encode length with their mask) or the encode program's arrays in declared order (audio:
    input_features float32 [1, n_mels, frames])."""

    ids: list[int] | None = None
    arrays: tuple[np.ndarray, ...] | None = None


@dataclass
class Context:
    """What reading an input takes: the manifest's input spec (kind and settings), the recipe's
    max_input_len and, for tokenized kinds, the tokenizer (or a function loading it on first use)."""

    spec: Mapping[str, Any]
    max_input_len: int
    tokenizer_loader: Callable[[], Any] | None = None
    _tokenizer: Any = field(default=None, repr=False)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None and self.tokenizer_loader is not None:
            self._tokenizer = self.tokenizer_loader()
        return self._tokenizer


class Codec(ABC):
    kind: ClassVar[str]
    metric: ClassVar[str]  # the task metric "auto" stands for (toolchain.metrics)
    builtin_source: ClassVar[str]  # how verify names the built-in rows it fell back to
    # Right-padded token inputs, so a shorter encode program (recipe encode_lengths) can serve them.
    padded: ClassVar[bool] = False
    # Whether a forced decoder prompt counts as generated output (a text family's forced BOS does,
    # for transformers' max_new_tokens; Whisper's start/language/task prompt is decoder input).
    prompt_is_output: ClassVar[bool] = False

    @abstractmethod
    def manifest_spec(self, checkpoint: Path, parts_input: Mapping[str, Any]) -> dict[str, Any]:
        """The manifest's "input" (kind first) for parts whose `input` is `parts_input`."""

    @abstractmethod
    def check_spec(self, spec: Mapping[str, Any], where: str) -> None:
        """A manifest's "input" as this codec reads it (settings types); one-line InputError else."""

    @abstractmethod
    def builtin_rows(self) -> list[dict[str, str]]:
        """Eval rows ({"input": ...}) for when there is no eval set."""

    @abstractmethod
    def read(self, value: str, ctx: Context, *, base: Path | None = None, truncate: bool = False,
             allow_unknown: bool = True) -> Encoded:
        """A user's input -> Encoded; relative paths resolve against `base` (the eval file's
        folder). Too long: an InputError unless `truncate`."""

    @abstractmethod
    def encode_arrays(self, item: Any, max_input_len: int, pad_id: int) -> tuple[np.ndarray, ...]:
        """A calibration item (what `calibration` gives) or Encoded -> the encode program's arrays
        in declared order."""

    @abstractmethod
    def eager_kwargs(self, encoded: Encoded) -> dict[str, Any]:
        """The same input as keyword arguments of the transformers model (torch tensors)."""

    @abstractmethod
    def reference(self, model: Any, kwargs: dict[str, Any], tokens: Any, max_output_len: int,
                  prompt: Sequence[int | None], choice: Mapping[str, str] | None = None,
                  use_cache: bool = True) -> tuple[list[int] | None, list[int]]:
        """transformers' greedy `generate` as a user runs it: (the forced prompt as generate feeds
        it, or None where it cannot be read; the tokens after it, EOS and what follows cut off).
        `tokens`: the manifest's typed tokens section (manifest.Tokens); `prompt`: the artifact's
        prompt for this input (None = a language to detect); `choice`: generate's `language`/`task`
        keywords for it (Whisper)."""

    @abstractmethod
    def calibration(self, rows: Sequence[Mapping[str, Any]], ctx: Context, base: Path | None,
                    limit: int) -> list[Any]:
        """Static-quantization inputs from eval rows, at most `limit`: what calibrate.trace takes."""

    def probe_length(self, spec: Mapping[str, Any], requested: int) -> int:
        """The input length a probe reports running (text: what was asked, within max_input_len)."""
        return requested

    @abstractmethod
    def probe_input(self, ctx: Context, tokens: Any, length: int) -> Encoded:
        """The fixed (seeded) input a latency probe runs, `length` long."""

    def describe(self, spec: Mapping[str, Any]) -> str | None:
        """A line for `inspect`, or None when there is nothing to say (text)."""
        return None


def kinds() -> list[str]:
    """The input kinds this edgeseq reads: the codec modules in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if KIND_RE.fullmatch(m.name))


def codec_for(kind: str | None) -> Codec:
    """The codec for an input kind (None: text, what artifacts without an "input" hold)."""
    kind = "text" if kind is None else kind
    module = None
    if isinstance(kind, str) and KIND_RE.fullmatch(kind):
        try:
            module = importlib.import_module(f"{__name__}.{kind}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{kind}":
                raise
    codec = getattr(module, "CODEC", None)
    if not isinstance(codec, Codec):
        raise InputError(f"unknown input kind {kind!r}; this edgeseq reads: {', '.join(kinds())}")
    return codec
