"""The two programs of the split (toolchain/split.py's contract), built from arch/layers.py.

A family file fills these with its weights and constants; what differs between families is
data, passed in when building:

* token input: embedding, ``embed_scale`` (BART with scale_embedding, Gemma), learned or
  sinusoidal positions (``pos_table``: encoder [S, D] added as is; decoder [D, T], a step
  takes its column with ``F.linear(onehot, table)``), a norm on the embeddings (BART);
* self-attention bias per layer kind (``self_bias``): encoder [R, S, S] added to the key mask
  (T5's relative-position bias, Gemma's window masks; none: the key mask alone); decoder
  step tables [R*T, T] (``layers.step_table``: T5's bias with the causal mask, the causal
  mask, Gemma's causal window masks). ``kinds`` gives each layer's kind (Gemma alternates
  sliding-window and full layers; others have one kind);
* RoPE cos/sin (Gemma): encoder [S, Dh], decoder tables [Dh, T];
* output: final norm, ``out_scale`` (tied T5), tied or own head (``lm_head`` None = the
  embedding matrix, stored once), ``logits_bias`` (BART), ``final_softcap`` (Gemma).

Cross-attention comes in two modes (the recipe's ``cross_attention``): "kv", encode projects
its final states into every decoder layer's cross K/V (cross_kv_outputs); "memory",
``Seq2SeqParts.with_memory_cross`` moves those projections into decode (``to_memory`` on
both programs; arch/memory.py) and encode returns the states once.

Attribute names are part of the contract: both programs expose the token embedding as
``.embed`` and decode its head as ``.lm_head`` (toolchain/quantize.py and the backends read them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .cache import position_onehot, register_cache, slot_bias, slot_masks, write_slot
from .layers import (
    NEG,
    CrossAttention,
    DecoderLayer,
    EncoderLayer,
    Rope,
    SelfAttention,
    ToeplitzBias,
    heads_first,
    optional_buffer,
    toeplitz_diagonals,
)
from .memory import MemoryCrossAttention, memory_outputs
from .rel_attention import toeplitz_table

DEFAULT_KIND = "full"


def cross_kv_outputs(x: torch.Tensor, cross_bias: torch.Tensor | None, cross_k: nn.ModuleList,
                     cross_v: nn.ModuleList, heads: int, head_dim: int) -> tuple[torch.Tensor, ...]:
    """The encode program's outputs from the final encoder states x [1, S, D]:
    (cross_bias [1, 1, S] unless None, then per decoder layer cross_k [H, Dh, S]
    (pre-transposed) and cross_v [H, S, Dh]), all contiguous (runtimes take them back as
    inputs). Three dims, as decode's batched matmuls read them: a leading batch dim of 1
    would cost decode two reshape operators per layer per step."""
    s = x.shape[1]
    outs = [] if cross_bias is None else [cross_bias.contiguous()]
    for pk, pv in zip(cross_k, cross_v, strict=True):
        k = heads_first(pk(x), heads)  # [H, S, Dh]
        v = heads_first(pv(x), heads)
        outs += [k.transpose(1, 2).reshape(heads, head_dim, s).contiguous(),
                 v.reshape(heads, s, head_dim).contiguous()]
    return tuple(outs)


def replace_computed_biases(program: nn.Module,
                            replace: Callable[[torch.Tensor], torch.Tensor | nn.Module]) -> None:
    """`program`'s computed position biases replaced by ``replace(the table they compute)``: a
    constant (``lambda table: table``), or another module computing the same table (a runtime's
    own construction: litert/bias.py); nothing for programs without any (Whisper's encoder,
    wrapped programs)."""
    if isinstance(program, _Program):
        program.replace_computed_biases(replace)


class _Program(nn.Module):
    """What encode and decode share: the layer stack with a bias kind per layer, and the token input."""

    embed: nn.Embedding
    pos_table: torch.Tensor | None
    norm_embed: nn.Module | None

    def __init__(self, layers: Sequence[nn.Module], kinds: Sequence[str] | None,
                 self_bias: Mapping[str, torch.Tensor | nn.Module], final_norm: nn.Module | None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.kinds = list(kinds) if kinds is not None else [DEFAULT_KIND] * len(self.layers)
        self.bias_kinds = sorted(set(self.kinds))
        for kind, table in self_bias.items():
            if isinstance(table, nn.Module):  # computed in the program (t5.RelativeBias)
                self.add_module(f"self_bias_{kind}", table)
            else:
                self.register_buffer(f"self_bias_{kind}", table)
        self.final_norm = final_norm

    def replace_computed_biases(self, replace: Callable[[torch.Tensor], torch.Tensor | nn.Module]) -> None:
        """Replace every bias computed in the program (t5.RelativeBias) with ``replace(the table
        it computes)``."""
        for kind in self.bias_kinds:
            t = getattr(self, f"self_bias_{kind}", None)
            if isinstance(t, nn.Module):
                with torch.no_grad():
                    new = replace(t().contiguous())
                delattr(self, f"self_bias_{kind}")
                if isinstance(new, nn.Module):
                    self.add_module(f"self_bias_{kind}", new)
                else:
                    self.register_buffer(f"self_bias_{kind}", new)

    def table(self, kind: str, anchor: torch.Tensor | None = None) -> torch.Tensor | None:
        """The self-attention bias table of a layer kind (None: no bias beyond the key mask);
        a module in its place computes it (once per call of the program), given `anchor`, a
        tensor computed from the program's inputs (encode: the key mask), which it may make
        its result depend on (by a zero) so a converter cannot fold it back into a constant."""
        t = getattr(self, f"self_bias_{kind}", None)
        if isinstance(t, nn.Module):
            return t(anchor)
        return t if isinstance(t, torch.Tensor) else None

    def _token_input(self, embed: nn.Embedding, embed_scale: float, pos_table: torch.Tensor | None,
                     norm_embed: nn.Module | None) -> None:
        self.embed, self.embed_scale, self.norm_embed = embed, embed_scale, norm_embed
        optional_buffer(self, "pos_table", pos_table)

    def tokens(self, ids: torch.Tensor, onehot: torch.Tensor | None = None) -> torch.Tensor:
        """ids [1, S] -> [1, S, D]; `onehot` [1, T] (decode): the position row is the step's column."""
        x = self.embed(ids)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        if self.pos_table is not None:
            x = x + (self.pos_table if onehot is None else F.linear(onehot, self.pos_table).reshape(1, 1, -1))
        if self.norm_embed is not None:
            x = self.norm_embed(x)
        return x


class EncoderStack(_Program):
    """Encoder layers, final norm, and the decoder layers' cross K/V projections (they run here,
    once per input): states x [1, S, D] -> the encode program's outputs (see cross_kv_outputs)."""

    rope_cos: torch.Tensor | None
    rope_sin: torch.Tensor | None

    def __init__(self, layers: Sequence[EncoderLayer], final_norm: nn.Module | None, cross_k: Sequence[nn.Linear],
                 cross_v: Sequence[nn.Linear], heads: int, head_dim: int, *, kinds: Sequence[str] | None = None,
                 self_bias: Mapping[str, torch.Tensor | nn.Module] | None = None, rope: Rope | None = None):
        super().__init__(layers, kinds, self_bias or {}, final_norm)
        self.heads, self.head_dim = heads, head_dim  # the decoder's: cross K/V are laid out for it
        self.cross_k, self.cross_v = nn.ModuleList(cross_k), nn.ModuleList(cross_v)
        self.memory_out = False  # to_memory(): encode returns the states, not per-layer K/V
        optional_buffer(self, "rope_cos", None if rope is None else rope[0])  # [S, Dh]
        optional_buffer(self, "rope_sin", None if rope is None else rope[1])

    def encode(self, x: torch.Tensor, cross_bias: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        biases: dict[str, torch.Tensor | ToeplitzBias | None] = {}
        for kind in self.bias_kinds:  # per layer kind: [R, S, S] + the key mask [1, 1, S]
            diagonals = getattr(self, f"fused_diagonals_{kind}", None)
            if diagonals is not None:  # fuse_relative_attention; no key mask: every key counts
                biases[kind] = ToeplitzBias(diagonals, x.new_zeros(x.shape[1]) if cross_bias is None
                                            else cross_bias.reshape(-1))
                continue
            table = self.table(kind, cross_bias)
            biases[kind] = table if cross_bias is None else cross_bias if table is None else table + cross_bias
        rope = None if self.rope_cos is None or self.rope_sin is None else (self.rope_cos, self.rope_sin)
        for layer, kind in zip(self.layers, self.kinds, strict=True):
            x = layer(x, biases[kind], rope)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if self.memory_out:
            return memory_outputs(x, cross_bias)
        return cross_kv_outputs(x, cross_bias, self.cross_k, self.cross_v, self.heads, self.head_dim)

    def fuse_relative_attention(self) -> None:
        """The recipe's ``encoder_attention: fused``: every self-attention layer becomes one
        ``edgeseq::rel_attention`` op (arch/rel_attention.py) fed the bias table's [H, 2S-1]
        diagonals and the key mask, so the [H, S, S] table is neither stored nor computed. Only
        for what the op computes exactly: one [H, S, S] Toeplitz table per layer kind (T5's
        relative-position bias), no scale, softcap or RoPE; anything else is an InputError."""
        from ..errors import InputError

        def refuse(why: str) -> InputError:
            return InputError(f"encoder_attention: fused computes T5-style relative-position attention only: {why}")

        if self.rope_cos is not None:
            raise refuse("rotary positions")
        for i, layer in enumerate(self.layers):
            a = getattr(layer, "attn", None)
            if type(a) is not SelfAttention or a.scale != 1.0 or a.softcap is not None:
                raise refuse(f"layer {i}'s attention is {type(a).__name__}, scale {getattr(a, 'scale', None)}, "
                             f"softcap {getattr(a, 'softcap', None)}")
        diagonals = {}
        for kind in self.bias_kinds:
            with torch.no_grad():
                table = self.table(kind)
                if table is None or table.dim() != 3:
                    raise refuse(f"layer kind {kind!r} has no position-bias table")
                diagonals[kind] = toeplitz_diagonals(table).contiguous()
                if not torch.equal(toeplitz_table(diagonals[kind]), table):
                    raise refuse(f"layer kind {kind!r}'s bias table is not Toeplitz")
        for kind, d in diagonals.items():
            delattr(self, f"self_bias_{kind}")
            self.register_buffer(f"fused_diagonals_{kind}", d)

    def to_memory(self) -> tuple[list[nn.Linear], list[nn.Linear]]:
        """Memory mode (arch/memory.py): encode returns its final states instead of the cross
        K/V. Hands over the decoder layers' K/V projections (they move into decode)."""
        ks = [m for m in self.cross_k if isinstance(m, nn.Linear)]
        vs = [m for m in self.cross_v if isinstance(m, nn.Linear)]
        self.cross_k, self.cross_v = nn.ModuleList(), nn.ModuleList()
        self.memory_out = True
        return ks, vs


class TextEncoder(EncoderStack):
    """input_ids/attention_mask int64[1, S] -> cross_bias [1, 1, S] (0 for real tokens, NEG for
    padding), then per decoder layer cross_k [H, Dh, S] and cross_v [H, S, Dh]."""

    def __init__(self, embed: nn.Embedding, layers: Sequence[EncoderLayer], final_norm: nn.Module | None,
                 cross_k: Sequence[nn.Linear], cross_v: Sequence[nn.Linear], heads: int, head_dim: int, *,
                 kinds: Sequence[str] | None = None, self_bias: Mapping[str, torch.Tensor | nn.Module] | None = None,
                 rope: Rope | None = None, embed_scale: float = 1.0, pos_table: torch.Tensor | None = None,
                 norm_embed: nn.Module | None = None):
        super().__init__(layers, final_norm, cross_k, cross_v, heads, head_dim, kinds=kinds, self_bias=self_bias,
                         rope=rope)
        self._token_input(embed, embed_scale, pos_table, norm_embed)  # pos_table [S, D]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = input_ids.shape[1]
        cross_bias = ((1.0 - attention_mask.to(torch.float32)) * NEG).reshape(1, 1, s)
        return self.encode(self.tokens(input_ids), cross_bias)


class DecoderStep(_Program):
    """The decode program's base, one decoder step: token int64[1, 1], position int64[1],
    cross_bias [1, 1, S], per layer cross_k/cross_v (memory mode: memory_t and memory, once),
    ["io": the caches] [, token_bias] -> logits [1, V] [, the updated caches] [, next_token].

    cache_mode "buffer": the self-attention cache is registered buffers updated in place
    (runtimes with mutable state). "slot": buffers too, but the step attends over the cache as
    it was plus its own k/v, and writes its slot at the end (index_put in place: ExecuTorch;
    arch/cache.py). "io": the caches are extra inputs after the cross K/V (cache_k_0,
    cache_v_0, ...) and the updated caches extra outputs after the logits (runtimes without
    state: TFLite, ONNX). ``Decoder`` takes the encoder's key mask cross_bias;
    ``UnmaskedDecoder`` is for families without one (Whisper).

    ``next_token`` (set by ``Seq2SeqParts.with_next_token``): greedy's choice is made in the
    program. The last input is ``token_bias`` float[1, V] (0, or -1e9 for a token the
    caller's rules forbid at this step: suppressed ids, EOS before min_new_tokens, all but a
    forced EOS) and the last output ``next_token`` int64[1] = argmax(logits + token_bias),
    the first maximum as numpy's argmax takes it. A runtime then hands the caller one integer
    per step and copies the [1, V] logits out only when they are asked for (verify).
    """

    next_token = False
    memory_cross = False  # to_memory(): cross-attention over the encoder states (arch/memory.py)

    positions: torch.Tensor
    rope_cos_table: torch.Tensor | None
    rope_sin_table: torch.Tensor | None
    logits_bias: torch.Tensor | None

    def __init__(self, embed: nn.Embedding, layers: Sequence[DecoderLayer], final_norm: nn.Module | None,
                 lm_head: nn.Linear | None, heads: int, head_dim: int, max_output_len: int, cache_mode: str, *,
                 kinds: Sequence[str] | None = None, self_bias: dict[str, torch.Tensor] | None = None,
                 rope_tables: Rope | None = None, embed_scale: float = 1.0, pos_table: torch.Tensor | None = None,
                 norm_embed: nn.Module | None = None, out_scale: float = 1.0,
                 logits_bias: torch.Tensor | None = None, final_softcap: float | None = None):
        super().__init__(layers, kinds, self_bias or {}, final_norm)
        self._token_input(embed, embed_scale, pos_table, norm_embed)  # pos_table [D, T]
        self.heads, self.head_dim, self.max_output_len, self.cache_mode = heads, head_dim, max_output_len, cache_mode
        self.lm_head = lm_head  # None: tied, the logits read the embedding matrix (one tensor, stored once)
        optional_buffer(self, "rope_cos_table", None if rope_tables is None else rope_tables[0])  # [Dh, T]
        optional_buffer(self, "rope_sin_table", None if rope_tables is None else rope_tables[1])
        self.out_scale, self.final_softcap = out_scale, final_softcap
        optional_buffer(self, "logits_bias", logits_bias)  # [1, V]
        register_cache(self, len(self.layers), heads, head_dim, max_output_len, cache_mode)

    def to_memory(self, ks: Sequence[nn.Linear], vs: Sequence[nn.Linear]) -> None:
        """Memory mode: every layer's cross-attention takes the encoder states and the K/V
        projections encode handed over (EncoderStack.to_memory)."""
        for layer, k, v in zip(self.layers, ks, vs, strict=True):
            cross = layer.cross
            if not isinstance(cross, CrossAttention):
                raise TypeError(f"{type(cross).__name__} is not a CrossAttention over per-layer K/V")
            layer.cross = MemoryCrossAttention(cross, k, v)
        self.memory_cross = True

    @property
    def vocab_size(self) -> int:
        return self.embed.num_embeddings if self.lm_head is None else self.lm_head.out_features

    def step(self, token: torch.Tensor, position: torch.Tensor, cross_bias: torch.Tensor | None,
             rest: tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """`rest`: decode's inputs after the cross_bias (cross K/V per layer, then "io" caches)."""
        t, n = self.max_output_len, len(self.layers)
        if self.next_token:
            rest, token_bias = rest[:-1], rest[-1]
        onehot = position_onehot(position, t, self.positions)  # [1, T]
        # the cache slot, once per step for every layer's blends ("slot" mode blends nothing)
        slots = slot_masks(onehot) if self.cache_mode != "slot" else None
        # Per layer (keys-like, values-like): its own cross K/V, or in memory mode the encoder
        # states (memory_t, memory) that every layer reads.
        n_cross = 2 if self.memory_cross else 2 * n
        cross_kv = [rest[j % n_cross] for j in range(2 * n)]
        mode = self.cache_mode
        stateful = mode != "io"
        caches = [getattr(self, f"cache_{kv}_{i}") for i in range(n) for kv in "kv"] if stateful else rest[n_cross:]
        rope = None
        if self.rope_cos_table is not None and self.rope_sin_table is not None:
            rope = F.linear(onehot, self.rope_cos_table), F.linear(onehot, self.rope_sin_table)  # [1, Dh]
        biases = {}
        for kind in self.bias_kinds:  # the step's row of each kind's table: [R, 1, T]
            table = self.table(kind)
            if table is None:
                raise ValueError(f"decode has no self-attention bias table for layer kind {kind!r}")
            row = F.linear(onehot, table).reshape(table.shape[0] // t, 1, t)
            biases[kind] = slot_bias(row, onehot) if mode == "slot" else row  # slot: [R, 1, T+1]
        x = self.tokens(token, onehot)  # [1, 1, D]
        new_caches: list[torch.Tensor] = []
        for i, (layer, kind) in enumerate(zip(self.layers, self.kinds, strict=True)):
            x, k_all, v_all = layer(x, slots, biases[kind], rope, cross_bias, cross_kv[2 * i], cross_kv[2 * i + 1],
                                    caches[2 * i], caches[2 * i + 1], mode)
            new_caches += [k_all, v_all]
        logits = self.logits(x)
        if mode == "slot":  # the steps' k/v into their slots, after every layer has read the caches
            for i in range(n):
                write_slot(caches[2 * i], caches[2 * i + 1], new_caches[2 * i], new_caches[2 * i + 1], position)
        if not self.next_token:
            return logits if stateful else (logits, *new_caches)
        next_token = torch.argmax(logits + token_bias, dim=-1)  # [1] int64
        return (logits, next_token) if stateful else (logits, *new_caches, next_token)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [1, 1, D] -> [1, V]: final norm, output scale, head, logits bias, soft-cap."""
        if self.final_norm is not None:
            x = self.final_norm(x)
        x = x.reshape(1, -1)
        if self.out_scale != 1.0:
            x = x * self.out_scale
        logits = F.linear(x, self.embed.weight) if self.lm_head is None else self.lm_head(x)
        if self.logits_bias is not None:
            logits = logits + self.logits_bias
        if self.final_softcap is not None:
            logits = torch.tanh(logits * (1.0 / self.final_softcap)) * self.final_softcap
        return logits


class Decoder(DecoderStep):
    """The decoder step of families with an encoder key mask: token, position, cross_bias,
    cross K/V per layer ["io": caches]."""

    def forward(self, token: torch.Tensor, position: torch.Tensor, cross_bias: torch.Tensor,
                *rest: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.step(token, position, cross_bias, rest)


class UnmaskedDecoder(DecoderStep):
    """A decoder whose encoder has no key mask: token, position, cross K/V (no cross_bias)."""

    def forward(self, token: torch.Tensor, position: torch.Tensor,
                *rest: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.step(token, position, None, rest)
