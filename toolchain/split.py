"""The encode/decode split: the `Seq2SeqParts` contract between the architecture adapters
and the backends.

An architecture adapter (``toolchain/arch/``, built from ``arch/layers.py``) builds two
``nn.Module``s from a transformers model:

* ``encode(*inputs)``: the inputs are what ``Seq2SeqParts.encode_spec`` declares
  (name, dtype, shape; the manifest records them, so run/verify/probe know what to
  feed). Text families take ``input_ids int64[1, S]`` and ``attention_mask int64[1, S]``
  with S fixed to ``recipe.max_input_len`` (shorter inputs are right-padded; the mask
  hides the padding); audio families (Whisper) take ``input_features float32[1,
  n_mels, frames]`` (log-mel, see toolchain/audio.py). It returns ``cross_bias
  float[1, 1, S]`` (0 for real tokens, -1e9 for padding; omitted when the family has
  no encoder mask, ``cross_bias=False``) and, for every decoder layer l, the
  cross-attention keys and values (S = ``cross_len``, the encoder's output length):

      cross_k_l  float[H, Dh, S]      keys pre-transposed, so decode does q @ K
                                      with a plain bmm and no per-step transpose
      cross_v_l  float[H, S, Dh]

* ``decode(token int64[1, 1], position int64[1], [cross_bias,] cross_k_0,
  cross_v_0, ...)`` returns ``logits float[1, V]``. It never sees the encoder's
  hidden states. Its self-attention cache is a pair of tensors per layer
  (``cache_k_l`` ``[H, Dh, T]``, ``cache_v_l`` ``[H, T, Dh]``, T =
  ``recipe.max_output_len``), updated at ``position``. ``cache_mode="buffer"``:
  registered buffers updated in place, the cache lives in the program (ExecuTorch).
  ``cache_mode="io"``: the caches are inputs after the cross K/V and the updated
  caches are outputs after the logits (runtimes without state: TFLite, ONNX).
  With ``next_token`` (a backend's ``Capabilities.next_token``, see ``with_next_token``)
  decode also takes ``token_bias float[1, V]`` last and returns ``next_token int64[1]``
  last: greedy's argmax made in the program (toolchain/arch/programs.py's DecoderStep).

Why these shapes (batch 1, keys pre-transposed, one-hot cache updates, -1e9 masks): see
``toolchain/arch/layers.py``. Shorter encode programs (recipe ``encode_lengths``) are
``toolchain/padded_encode.py``'s ``PaddedEncode``.

Generation facts that are not tensors travel with the parts into the manifest:
``decoder_prompt`` (tokens forced after the start token: Whisper's language/task/
notimestamps, BART's forced BOS; ``None`` = the language detected from the first
step's logits over ``language_token_ids``), ``suppress_tokens`` (never generated),
``begin_suppress_tokens`` (not as the first generated token) and ``forced_eos_token_id``
(forced at the last step the output length allows), as transformers' logits processors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .schemes import Component


@dataclass(frozen=True)
class TensorSpec:
    """One input of the encode program: name, dtype, static shape, and the value example
    inputs are filled with (export traces with them; a mask of ones keeps every key)."""

    name: str
    dtype: str  # "int64" | "float32"
    shape: tuple[int, ...]
    fill: int = 0

    def example(self) -> torch.Tensor:
        return torch.full(self.shape, self.fill, dtype=getattr(torch, self.dtype))


def text_inputs(length: int) -> list[TensorSpec]:
    """The encode inputs of text families: right-padded ids and their mask, int64[1, S]."""
    return [TensorSpec("input_ids", "int64", (1, length)), TensorSpec("attention_mask", "int64", (1, length), 1)]


@dataclass
class Seq2SeqParts:
    """What an architecture adapter hands to the exporters: the two programs' modules."""

    encode: nn.Module
    decode: nn.Module
    num_layers: int
    num_heads: int
    head_dim: int
    vocab_size: int
    max_input_len: int
    max_output_len: int
    decoder_start_token_id: int
    eos_token_id: int
    pad_token_id: int
    cache_mode: str = "buffer"  # "buffer"/"slot": cache inside decode (CacheMode); "io": cache in/out tensors
    tolerance: dict[str, float] = field(default_factory=dict)
    # What encode takes; default: text (input_ids, attention_mask [1, max_input_len]).
    encode_spec: list[TensorSpec] = field(default_factory=list)
    # How a caller turns user input into encode_spec's tensors: {"kind": "text"} or
    # {"kind": "log_mel", "n_mels", "frames"} (export completes it with the checkpoint's
    # feature extractor settings into the manifest's "input").
    input: dict[str, Any] = field(default_factory=lambda: {"kind": "text"})
    cross_len: int = 0  # encoder output length S of the cross K/V; default max_input_len
    cross_bias: bool = True  # encode returns a key mask, decode takes it (False: no encoder mask)
    # Generation facts (see the module docstring).
    decoder_prompt: list[int | None] = field(default_factory=list)
    language_token_ids: list[int] = field(default_factory=list)
    suppress_tokens: list[int] = field(default_factory=list)
    begin_suppress_tokens: list[int] = field(default_factory=list)
    forced_eos_token_id: int | None = None  # forced at the last allowed step (transformers' forced_eos)
    # Whisper: what building the prompt for another language/task at run time takes (prompt.TaskPrompt).
    task_prompt: dict[str, Any] | None = None
    # "kv": encode returns each decoder layer's cross K/V; "memory": the encoder states, shared
    # by every layer (arch/memory.py; with_memory_cross sets it, memory_dim is their width D).
    cross_mode: str = "kv"
    memory_dim: int = 0
    # decode chooses greedy's next token itself (token_bias in, next_token out); with_next_token sets it.
    next_token: bool = False
    # Shorter encode programs (recipe encode_lengths): length L -> padded_encode.PaddedEncode
    # taking [1, L] inputs and returning the max_input_len shapes; filled by export.build_parts.
    encode_buckets: dict[int, nn.Module] = field(default_factory=dict)

    def __post_init__(self):
        if not self.encode_spec:
            self.encode_spec = text_inputs(self.max_input_len)
        if not self.cross_len:
            self.cross_len = self.max_input_len

    def with_next_token(self) -> Seq2SeqParts:
        """Make decode choose greedy's next token in the program (DecoderStep.next_token)."""
        from .arch.programs import DecoderStep

        if not isinstance(self.decode, DecoderStep):
            raise ValueError(f"{type(self.decode).__name__} cannot choose the next token in the program")
        self.decode.next_token = self.next_token = True
        return self

    def with_memory_cross(self) -> Seq2SeqParts:
        """Switch the split to memory mode (the recipe's ``cross_attention: memory``): encode
        returns the encoder states [1, D, S] and [1, S, D] once, and decode's cross-attention
        applies the K/V projections per step (arch/memory.py says why and when it pays)."""
        from .arch.programs import DecoderStep, EncoderStack

        if not isinstance(self.encode, EncoderStack) or not isinstance(self.decode, DecoderStep):
            raise ValueError(f"{type(self.encode).__name__} cannot return its states for memory cross-attention")
        ks, vs = self.encode.to_memory()
        self.decode.to_memory(ks, vs)
        self.cross_mode, self.memory_dim = "memory", ks[0].in_features
        return self

    # -- program signatures (names are what the manifest records) --------------
    def encode_inputs(self) -> tuple[torch.Tensor, ...]:
        return tuple(t.example() for t in self.encode_spec)

    def encode_input_names(self) -> list[str]:
        return [t.name for t in self.encode_spec]

    def encode_output_names(self) -> list[str]:
        names = ["cross_bias"] if self.cross_bias else []
        if self.cross_mode == "memory":
            return [*names, "memory_t", "memory"]
        for i in range(self.num_layers):
            names += [f"cross_k_{i}", f"cross_v_{i}"]
        return names

    def cache_shapes(self) -> list[tuple[int, ...]]:
        """Self-attention cache per layer: keys [H, Dh, T] (transposed), values [H, T, Dh]."""
        h, dh, t = self.num_heads, self.head_dim, self.max_output_len
        return [(h, dh, t), (h, t, dh)] * self.num_layers

    def cache_names(self) -> list[str]:
        return [f"cache_{kv}_{i}" for i in range(self.num_layers) for kv in "kv"]

    def empty_cache(self) -> list[torch.Tensor]:
        return [torch.zeros(s) for s in self.cache_shapes()]

    def decode_inputs(self) -> tuple[torch.Tensor, ...]:
        h, dh, s = self.num_heads, self.head_dim, self.cross_len
        kv = [torch.zeros(1, 1, s)] if self.cross_bias else []
        if self.cross_mode == "memory":
            kv += [torch.zeros(1, self.memory_dim, s), torch.zeros(1, s, self.memory_dim)]
        else:  # distinct tensors per layer: torch.export would take one object passed twice as one input
            kv += [t for _ in range(self.num_layers) for t in (torch.zeros(h, dh, s), torch.zeros(h, s, dh))]
        io_cache = self.empty_cache() if self.cache_mode == "io" else []
        bias = [torch.zeros(1, self.vocab_size)] if self.next_token else []
        return (torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long), *kv, *io_cache, *bias)

    def decode_input_names(self) -> list[str]:
        io_cache = self.cache_names() if self.cache_mode == "io" else []
        bias = ["token_bias"] if self.next_token else []
        return ["token", "position"] + self.encode_output_names() + io_cache + bias

    def decode_output_names(self) -> list[str]:
        io_cache = [f"new_{n}" for n in self.cache_names()] if self.cache_mode == "io" else []
        return ["logits"] + io_cache + (["next_token"] if self.next_token else [])

    def generation(self) -> dict[str, Any]:
        """The manifest's generation facts (besides start/eos/pad)."""
        return {"decoder_prompt": list(self.decoder_prompt), "language_token_ids": list(self.language_token_ids),
                "suppress_tokens": list(self.suppress_tokens),
                "begin_suppress_tokens": list(self.begin_suppress_tokens),
                "forced_eos_token_id": self.forced_eos_token_id,
                **({} if self.task_prompt is None else {"task_prompt": self.task_prompt})}

    def weight_components(self, buckets: bool = False) -> dict[str, dict[str, Component]]:
        """Per program ("encode", "decode"; with `buckets` also "encode_<L>", the shorter encode
        programs): qualified name of each quantizable weight -> its recipe Component. Computed
        here once for every backend. Linears: encoder in encode programs (the decoder layers'
        cross K/V projections included: they run once per input, there), decoder in decode,
        lm_head for decode's own head; token embeddings: embeddings (a tied head reads that same
        table). Buffers (position-bias tables) are never listed, so never quantized."""
        head = getattr(self.decode, "lm_head", None)
        programs = {"encode": self.encode, "decode": self.decode}
        if buckets:
            programs.update({f"encode_{n}": b for n, b in self.encode_buckets.items()})
        out: dict[str, dict[str, Component]] = {}
        for prog, module in programs.items():
            linear = Component.DECODER if prog == "decode" else Component.ENCODER
            names: dict[str, Component] = {}
            for name, mod in module.named_modules():
                if isinstance(mod, nn.Linear):
                    names[f"{name}.weight"] = Component.LM_HEAD if head is not None and mod is head else linear
                elif isinstance(mod, nn.Embedding):
                    names[f"{name}.weight"] = Component.EMBEDDINGS
            out[prog] = names
        return out

    def reset_cache(self) -> None:
        for name, buf in self.decode.named_buffers():
            if name.startswith("cache_"):
                buf.zero_()

    def describe(self) -> dict[str, Any]:
        """Shapes and dtypes of both programs, for the manifest."""
        def spec(names, tensors):
            return [{"name": n, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                    for n, t in zip(names, tensors, strict=True)]

        with torch.no_grad():
            enc_out = self.encode(*self.encode_inputs())
            dec_out = self.decode(*self.decode_inputs())
        self.reset_cache()
        if not isinstance(dec_out, tuple):  # "buffer" mode without next_token: the logits alone
            dec_out = [dec_out]
        cache = [{"name": n, "shape": list(s), "dtype": "float32"}
                 for n, s in zip(self.cache_names(), self.cache_shapes(), strict=True)]
        return {
            "encode": {"inputs": spec(self.encode_input_names(), self.encode_inputs()),
                       "outputs": spec(self.encode_output_names(), enc_out)},
            "decode": {"inputs": spec(self.decode_input_names(), self.decode_inputs()),
                       "outputs": spec(self.decode_output_names(), dec_out),
                       "cache_mode": self.cache_mode, "cache": cache},
        }
