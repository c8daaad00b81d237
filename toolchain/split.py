"""The encode/decode split: shared building blocks and the `Seq2SeqParts` contract.

An architecture adapter (``toolchain/arch/``) builds two ``nn.Module``s from a
transformers model:

* ``encode(*inputs)``: the inputs are what ``Seq2SeqParts.encode_spec`` declares
  (name, dtype, shape; the manifest records them, so run/verify/probe know what to
  feed). Text families take ``input_ids int64[1, S]`` and ``attention_mask int64[1, S]``
  with S fixed to ``recipe.max_input_len`` (shorter inputs are right-padded; the mask
  hides the padding); audio families (Whisper) take ``input_features float32[1,
  n_mels, frames]`` (log-mel, see toolchain/audio.py). It returns ``cross_bias
  float[1, 1, S]`` (0 for real tokens, -1e9 for padding; omitted when the family has
  no encoder mask, ``cross_bias=False``) and, for every decoder layer l, the
  cross-attention keys and values (S = ``cross_len``, the encoder's output length):

      cross_k_l  float[1, H, Dh, S]   keys pre-transposed, so decode does q @ K
                                      with a plain bmm and no per-step transpose
      cross_v_l  float[1, H, S, Dh]

* ``decode(token int64[1, 1], position int64[1], [cross_bias,] cross_k_0,
  cross_v_0, ...)`` returns ``logits float[1, V]``. It never sees the encoder's
  hidden states. Its self-attention cache is a pair of tensors per layer
  (``cache_k_l`` ``[H, Dh, T]``, ``cache_v_l`` ``[H, T, Dh]``, T =
  ``recipe.max_output_len``), updated at ``position``. ``cache_mode="buffer"``:
  registered buffers updated in place, the cache lives in the program (ExecuTorch).
  ``cache_mode="io"``: the caches are inputs after the cross K/V and the updated
  caches are outputs after the logits (runtimes without state: TFLite, ONNX).

Why these shapes (seen on ExecuTorch/XNNPACK, see NOTES.md): batch is fixed at 1
and attention runs as 3D ``torch.bmm`` over heads (a 4D matmul lowers to an
``expand_copy`` that stays on portable kernels); the cache is updated with a
one-hot mask (``cache * (1 - onehot) + new * onehot``) instead of ``index_copy_``;
RMSNorm reduces a 4D view over dims [2, 3], the only ``mean`` XNNPACK takes;
masks use -1e9, not -inf, so an all-masked row can never produce NaN.

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
import torch.nn.functional as F
from torch import nn

from .schemes import Component

NEG = -1e9


class RMSNorm(nn.Module):
    """T5-style RMSNorm (no mean subtraction, no bias) in an XNNPACK-friendly form."""

    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().float(), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [1, S, D] -> view [1, S, 1, D] so the mean is over dims [2, 3] with keepdim.
        b, s, d = x.shape
        x4 = x.reshape(b, s, 1, d)
        var = (x4 * x4).mean(dim=[2, 3], keepdim=True)
        return (x4 * torch.rsqrt(var + self.eps)).reshape(b, s, d) * self.weight


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # transformers' "gelu_new": the tanh approximation, written with ops XNNPACK has.
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


ACTIVATIONS = {
    "relu": F.relu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu": F.gelu,
    "silu": F.silu,
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; supported: {', '.join(sorted(ACTIVATIONS))}")


def frozen_linear(lin: nn.Linear) -> nn.Linear:
    """A detached fp32 copy of a Linear (the split never shares modules with the source)."""
    out = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
    out.weight = nn.Parameter(lin.weight.detach().clone().float(), requires_grad=False)
    if lin.bias is not None:
        out.bias = nn.Parameter(lin.bias.detach().clone().float(), requires_grad=False)
    return out


def heads_first(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[1, S, H*Dh] -> [H, S, Dh]."""
    _, s, hd = x.shape
    return x.reshape(s, heads, hd // heads).transpose(0, 1)


def heads_last(x: torch.Tensor) -> torch.Tensor:
    """[H, S, Dh] -> [1, S, H*Dh]."""
    h, s, dh = x.shape
    return x.transpose(0, 1).reshape(1, s, h * dh)


def attend(q: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float,
           softcap: float | None = None) -> torch.Tensor:
    """Scaled dot-product attention over heads as 3D bmm.

    q [H, Sq, Dh], k_t [H, Dh, Sk] (keys transposed), v [H, Sk, Dh], bias broadcastable
    to [H, Sq, Sk] (None: no mask) -> [H, Sq, Dh]. Softmax in fp32. `softcap` (Gemma):
    scores become cap * tanh(scores / cap) before the bias is added.
    """
    scores = torch.bmm(q, k_t)
    if scale != 1.0:
        scores = scores * scale
    if softcap is not None:
        scores = torch.tanh(scores * (1.0 / softcap)) * softcap
    probs = torch.softmax(scores if bias is None else scores + bias, dim=-1)
    return torch.bmm(probs, v)


def position_onehot(position: torch.Tensor, length: int, arange: torch.Tensor) -> torch.Tensor:
    """position int64[1] -> float[1, T] with a single 1 at `position`."""
    return (arange == position).to(torch.float32).reshape(1, length)


def update_cache(cache: torch.Tensor, new: torch.Tensor, onehot: torch.Tensor, in_place: bool = True) -> torch.Tensor:
    """Write `new` into one slot of `cache` (in place if asked) and return the updated cache.

    cache [H, T, Dh] with new [H, 1, Dh] and onehot [1, T, 1], or (keys, transposed)
    cache [H, Dh, T] with new [H, Dh, 1] and onehot [1, 1, T]. A masked blend rather
    than index_copy_ keeps the whole update inside the XNNPACK delegate.
    """
    updated = cache * (1.0 - onehot) + new * onehot
    if in_place:
        cache.copy_(updated)
    return updated


def register_cache(module: nn.Module, layers: int, heads: int, head_dim: int, length: int, cache_mode: str) -> None:
    """Give a decode module its cache slots: `positions` (int64 [T], what a step's position
    is compared with to pick its slot, see decode_step) and, in "buffer" mode, the per-layer
    self-attention cache buffers (cache_k_l [H, Dh, T], cache_v_l [H, T, Dh], zero-initialised)."""
    if cache_mode not in ("buffer", "io"):
        raise ValueError(f"cache_mode must be 'buffer' or 'io', got {cache_mode!r}")
    module.register_buffer("positions", torch.arange(length, dtype=torch.long))
    if cache_mode == "buffer":
        for i in range(layers):
            module.register_buffer(f"cache_k_{i}", torch.zeros(heads, head_dim, length))
            module.register_buffer(f"cache_v_{i}", torch.zeros(heads, length, head_dim))


def decode_step(module: nn.Module, position: torch.Tensor, rest: tuple) -> tuple[tuple, list[torch.Tensor], torch.Tensor]:
    """What every decode step starts from: (cross K/V per layer, self-attention caches, the
    position's one-hot [1, T]). `rest` is decode's inputs after the cross_bias; the caches are
    the module's buffers ("buffer" mode) or the inputs after the cross K/V ("io")."""
    layers = len(module.layers)
    onehot = position_onehot(position, module.positions.shape[0], module.positions)
    cross_kv = rest[: 2 * layers]
    if module.cache_mode == "buffer":
        return cross_kv, [getattr(module, f"cache_{kv}_{i}") for i in range(layers) for kv in "kv"], onehot
    return cross_kv, list(rest[2 * layers:]), onehot


def cross_kv_outputs(x: torch.Tensor, cross_bias: torch.Tensor | None, cross_k, cross_v, heads: int,
                     head_dim: int) -> tuple[torch.Tensor, ...]:
    """The encode program's outputs from the final encoder states x [1, S, D]:
    (cross_bias [1, 1, S] unless None, then per decoder layer cross_k [1, H, Dh, S]
    (pre-transposed) and cross_v [1, H, S, Dh]), all contiguous (runtimes take them back
    as inputs)."""
    s = x.shape[1]
    outs = [] if cross_bias is None else [cross_bias.contiguous()]
    for pk, pv in zip(cross_k, cross_v):
        k = heads_first(pk(x), heads)  # [H, S, Dh]
        v = heads_first(pv(x), heads)
        outs += [k.transpose(1, 2).reshape(1, heads, head_dim, s).contiguous(),
                 v.reshape(1, heads, s, head_dim).contiguous()]
    return tuple(outs)


class LayerNorm(nn.Module):
    """A detached fp32 LayerNorm over the last dim (weight and bias)."""

    def __init__(self, ln: nn.LayerNorm):
        super().__init__()
        self.weight = nn.Parameter(ln.weight.detach().clone().float(), requires_grad=False)
        self.bias = nn.Parameter(ln.bias.detach().clone().float(), requires_grad=False)
        self.eps = ln.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written out over a 4D view [1, S, 1, D] reduced on dims [2, 3]: the only `mean`
        # XNNPACK takes (aten.native_layer_norm would stay on portable kernels).
        b, s, d = x.shape
        x4 = x.reshape(b, s, 1, d)
        xc = x4 - x4.mean(dim=[2, 3], keepdim=True)
        var = (xc * xc).mean(dim=[2, 3], keepdim=True)
        return (xc * torch.rsqrt(var + self.eps)).reshape(b, s, d) * self.weight + self.bias


def frozen_embedding(weight: torch.Tensor) -> nn.Embedding:
    emb = nn.Embedding(weight.shape[0], weight.shape[1])
    emb.weight = nn.Parameter(weight.detach().clone().float(), requires_grad=False)
    return emb


class PaddedEncode(nn.Module):
    """A text family's encode program built for `length` input positions, with its outputs
    padded to the `full` (max_input_len) shapes decode takes, so one decode serves every
    encode length: cross_bias [1, 1, L] -> [1, 1, S] with NEG on positions L..S-1 (decode's
    cross-attention gives them zero weight), cross_k [1, H, Dh, L] -> [1, H, Dh, S] and
    cross_v [1, H, L, Dh] -> [1, H, S, Dh] with zeros. Inputs: input_ids and
    attention_mask int64[1, L]. Exact for any input of at most L tokens: the encoder only
    ever attends among the real tokens (a padded position is masked either way)."""

    def __init__(self, inner: nn.Module, length: int, full: int):
        super().__init__()
        self.inner, self.length, self.full = inner, length, full

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        cross_bias, *kv = self.inner(input_ids, attention_mask)
        pad = self.full - self.length
        out = [F.pad(cross_bias, (0, pad), value=NEG)]
        for i, t in enumerate(kv):  # even: keys [.., Dh, L] pad the last dim; odd: values [.., L, Dh]
            out.append(F.pad(t, (0, pad)) if i % 2 == 0 else F.pad(t, (0, 0, 0, pad)))
        return tuple(out)


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
    cache_mode: str = "buffer"  # "buffer": cache inside decode; "io": cache in/out tensors
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
    # Shorter encode programs (recipe encode_lengths): length L -> PaddedEncode taking
    # [1, L] inputs and returning the max_input_len shapes; filled by export.build_parts.
    encode_buckets: dict[int, nn.Module] = field(default_factory=dict)

    def __post_init__(self):
        if not self.encode_spec:
            self.encode_spec = text_inputs(self.max_input_len)
        if not self.cross_len:
            self.cross_len = self.max_input_len

    # -- program signatures (names are what the manifest records) --------------
    def encode_inputs(self) -> tuple[torch.Tensor, ...]:
        return tuple(t.example() for t in self.encode_spec)

    def encode_input_names(self) -> list[str]:
        return [t.name for t in self.encode_spec]

    def encode_output_names(self) -> list[str]:
        names = ["cross_bias"] if self.cross_bias else []
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
        for _ in range(self.num_layers):
            kv += [torch.zeros(1, h, dh, s), torch.zeros(1, h, s, dh)]
        io_cache = self.empty_cache() if self.cache_mode == "io" else []
        return (torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long), *kv, *io_cache)

    def decode_input_names(self) -> list[str]:
        io_cache = self.cache_names() if self.cache_mode == "io" else []
        return ["token", "position"] + self.encode_output_names() + io_cache

    def decode_output_names(self) -> list[str]:
        io_cache = [f"new_{n}" for n in self.cache_names()] if self.cache_mode == "io" else []
        return ["logits"] + io_cache

    def generation(self) -> dict[str, Any]:
        """The manifest's generation facts (besides start/eos/pad)."""
        return {"decoder_prompt": list(self.decoder_prompt), "language_token_ids": list(self.language_token_ids),
                "suppress_tokens": list(self.suppress_tokens),
                "begin_suppress_tokens": list(self.begin_suppress_tokens),
                "forced_eos_token_id": self.forced_eos_token_id}

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
                    for n, t in zip(names, tensors)]

        with torch.no_grad():
            enc_out = self.encode(*self.encode_inputs())
            dec_out = self.decode(*self.decode_inputs())
        self.reset_cache()
        if self.cache_mode == "buffer":
            dec_out = [dec_out]
        cache = [{"name": n, "shape": list(s), "dtype": "float32"}
                 for n, s in zip(self.cache_names(), self.cache_shapes())]
        return {
            "encode": {"inputs": spec(self.encode_input_names(), self.encode_inputs()),
                       "outputs": spec(self.encode_output_names(), enc_out)},
            "decode": {"inputs": spec(self.decode_input_names(), self.decode_inputs()),
                       "outputs": spec(self.decode_output_names(), dec_out),
                       "cache_mode": self.cache_mode, "cache": cache},
        }
