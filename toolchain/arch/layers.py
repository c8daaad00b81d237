"""The building blocks every family's encode/decode programs are made of (the contract they
fill is toolchain/split.py's ``Seq2SeqParts``).

Ops, in the forms that lower into ExecuTorch's XNNPACK delegate (seen there, see NOTES.md):
batch is fixed at 1 and attention runs as 3D ``torch.bmm`` over heads (a 4D matmul lowers to an
``expand_copy`` that stays on portable kernels); the decode cache's slots, updates and
one-query attention are in toolchain/arch/cache.py; RMSNorm and LayerNorm take their means with
a one-output ``F.linear`` (a [1, D] row of 1/D, the epsilon as its bias: one fully-connected
operator, where XNNPACK's ``mean`` needs a 4D view, two transposes and a pooling); a step reads
its row of a constant table (position bias, causal mask, learned positions, RoPE cos/sin) with
``F.linear(onehot(position), table)`` (a matmul) instead of a gather; masks use -1e9, not -inf,
so an all-masked row can never produce NaN (cache.NEG).

Operators per decode step matter as much as bytes: a delegate sets up and dispatches every
operator on every call (~1 us each with 2 threads), and a t5-small-sized step reads only
~30 MB of weights. So the decode step fuses its self-attention's q/k/v into one projection
and shares the cache-slot masks across layers (``SlotMasks``).

Layers: ``SelfAttention`` (a whole sequence, encoders), ``CachedSelfAttention`` (one decoder
step; owns the one-slot cache update), ``CrossAttention`` (one step over the encoder's
precomputed K/V), ``FeedForward`` (plain or gated), and ``EncoderLayer`` / ``DecoderLayer``,
which place the norms the way the family does (pre-norm, post-norm, or Gemma's "sandwich").
The programs built from them are in toolchain/arch/programs.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .cache import NEG, SlotMasks, attend_with_step, update_cache
from .rel_attention import rel_attention

Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), broadcastable to [H, S, Dh]


def _mean_row(module: nn.Module, dim: int, eps: float) -> None:
    """Buffers of a norm's mean as one fully-connected operator: `mean_w` [1, D] of 1/D, so
    F.linear(x, mean_w) is x's mean over its last dim ([.., 1]), and `eps` [1] its bias."""
    module.register_buffer("mean_w", torch.full((1, dim), 1.0 / dim))
    module.register_buffer("eps", torch.tensor([eps], dtype=torch.float32))


class RMSNorm(nn.Module):
    """T5-style RMSNorm (no mean subtraction, no bias) in an XNNPACK-friendly form."""

    mean_w: torch.Tensor
    eps: torch.Tensor

    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().float(), requires_grad=False)
        _mean_row(self, self.weight.shape[0], eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [1, S, D]; mean(x^2) + eps as one matmul with bias -> [1, S, 1].
        return x * torch.rsqrt(F.linear(x * x, self.mean_w, self.eps)) * self.weight


class LayerNorm(nn.Module):
    """A detached fp32 LayerNorm over the last dim (weight and bias)."""

    mean_w: torch.Tensor
    eps: torch.Tensor

    def __init__(self, ln: nn.LayerNorm):
        super().__init__()
        self.weight = nn.Parameter(ln.weight.detach().clone().float(), requires_grad=False)
        self.bias = nn.Parameter(ln.bias.detach().clone().float(), requires_grad=False)
        _mean_row(self, self.weight.shape[0], ln.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written out with the means as one-output matmuls (aten.native_layer_norm would stay
        # on portable kernels): x [1, S, D] -> mean [1, S, 1], variance + eps [1, S, 1].
        xc = x - F.linear(x, self.mean_w)
        return xc * torch.rsqrt(F.linear(xc * xc, self.mean_w, self.eps)) * self.weight + self.bias


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # transformers' "gelu_new": the tanh approximation, written with ops XNNPACK has.
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


Activation = Callable[[torch.Tensor], torch.Tensor]
ACTIVATIONS: dict[str, Activation] = {
    "relu": F.relu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu": F.gelu,
    "silu": F.silu,
}


def activation(name: str) -> Activation:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; supported: {', '.join(sorted(ACTIVATIONS))}") from None


def frozen_linear(lin: nn.Linear) -> nn.Linear:
    """A detached fp32 copy of a Linear (the split never shares modules with the source)."""
    out = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
    out.weight = nn.Parameter(lin.weight.detach().clone().float(), requires_grad=False)
    if lin.bias is not None:
        out.bias = nn.Parameter(lin.bias.detach().clone().float(), requires_grad=False)
    return out


def frozen_embedding(weight: torch.Tensor) -> nn.Embedding:
    emb = nn.Embedding(weight.shape[0], weight.shape[1])
    emb.weight = nn.Parameter(weight.detach().clone().float(), requires_grad=False)
    return emb


def heads_first(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[1, S, H*Dh] -> [H, S, Dh]."""
    _, s, hd = x.shape
    return x.reshape(s, heads, hd // heads).transpose(0, 1)


def heads_last(x: torch.Tensor) -> torch.Tensor:
    """[H, S, Dh] -> [1, S, H*Dh]."""
    h, s, dh = x.shape
    return x.transpose(0, 1).reshape(1, s, h * dh)


class ToeplitzBias(NamedTuple):
    """An encoder self-attention bias handed to the fused kernel (arch/rel_attention.py) instead
    of as an [H, S, S] table: its diagonals [H, 2S-1] and the key mask [S]."""

    diagonals: torch.Tensor
    key_bias: torch.Tensor


def toeplitz_diagonals(full: torch.Tensor) -> torch.Tensor:
    """bias [H, S, S] -> its [H, 2S-1] diagonals, diagonals[h, S-1 + j - i] = bias[h, i, j]
    where the bias is Toeplitz: its first column (going up), then its first row."""
    return torch.cat([full[:, 1:, 0].flip(1), full[:, 0, :]], dim=1)


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


def optional_buffer(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    """Register `value` as a buffer, or set the attribute to None: a registered None buffer
    shifts torch.export's buffer inputs (seen with torch 2.13: an IndexError in export)."""
    if value is None:
        setattr(module, name, None)
    else:
        module.register_buffer(name, value)


def causal_mask(length: int) -> torch.Tensor:
    """[T(q), T(k)]: 0 where the key is at or before the query, NEG after it."""
    return torch.triu(torch.full((length, length), NEG), diagonal=1)


def step_table(bias: torch.Tensor) -> torch.Tensor:
    """A self-attention bias [R, T(q), T(k)] (R = heads, or 1 when shared) -> the table
    [R*T(k), T(q)] whose column p is the flattened [R, T] bias row of query position p, so a
    step takes its row with F.linear(onehot(position), table) -> [1, R*T] (no gather)."""
    r, t, _ = bias.shape
    return bias.permute(0, 2, 1).reshape(r * t, t).contiguous()


def rotate_half_matrix(dim: int) -> torch.Tensor:
    """R [Dh, Dh] with F.linear(x, R) == rotate_half(x) == cat(-x[half:], x[:half]): RoPE's
    rotation as a tiny matmul (slices + cat would leave the XNNPACK delegate)."""
    half = dim // 2
    r = torch.zeros(dim, dim)
    r[:half, half:] = -torch.eye(half)
    r[half:, :half] = torch.eye(half)
    return r


class FeedForward(nn.Module):
    """down(act(up(x))), or gated (T5 v1.1, Gemma): down(act(gate(x)) * up(x))."""

    def __init__(self, up: nn.Linear, down: nn.Linear, act: str, gate: nn.Linear | None = None):
        super().__init__()
        self.gate, self.up, self.down = gate, up, down
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.up(x)) if self.gate is None else self.act(self.gate(x)) * self.up(x)
        return self.down(h)


def fused_linear(*parts: nn.Linear) -> nn.Linear:
    """One Linear computing several that read the same input: out = cat(p(x) for p in parts),
    weights stacked by rows [sum(out), in] (a missing bias is zeros). Rows are independent,
    so per-row and per-group weight quantization are the same as quantizing each part, and
    the input is quantized once where activations are quantized dynamically."""
    fused = nn.Linear(parts[0].in_features, sum(p.out_features for p in parts),
                      bias=any(p.bias is not None for p in parts))
    fused.weight = nn.Parameter(torch.cat([p.weight.detach() for p in parts]).float(), requires_grad=False)
    if fused.bias is not None:
        fused.bias = nn.Parameter(torch.cat([p.bias.detach() if p.bias is not None else torch.zeros(p.out_features)
                                             for p in parts]).float(), requires_grad=False)
    return fused


class Attention(nn.Module):
    """What self-attentions share: the output projection `o`, heads, the score scale (T5: 1.0,
    no scaling), the soft-cap, and RoPE. The q/k/v projections are the subclasses' (K/V
    already laid out for all H query heads: grouped-query families expand them when
    building); with `rope`, queries and keys are rotated by the (cos, sin) the caller passes."""

    rot: torch.Tensor | None

    def __init__(self, o: nn.Linear, heads: int, head_dim: int, scale: float = 1.0, softcap: float | None = None,
                 rope: bool = False):
        super().__init__()
        self.o = o
        self.heads, self.head_dim, self.scale, self.softcap = heads, head_dim, scale, softcap
        optional_buffer(self, "rot", rotate_half_matrix(head_dim) if rope else None)

    def rotate(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        """RoPE on x [H, S, Dh] with cos/sin [S, Dh]: x * cos + rotate_half(x) * sin."""
        assert self.rot is not None, "built without rope"
        cos, sin = rope
        return x * cos + F.linear(x, self.rot) * sin


class SelfAttention(Attention):
    """Self-attention over a whole sequence (encoders): x [1, S, D] -> [1, S, D]."""

    def __init__(self, q: nn.Linear, k: nn.Linear, v: nn.Linear, o: nn.Linear, heads: int, head_dim: int,
                 scale: float = 1.0, softcap: float | None = None, rope: bool = False):
        super().__init__(o, heads, head_dim, scale, softcap, rope)
        self.q, self.k, self.v = q, k, v

    def forward(self, x: torch.Tensor, bias: torch.Tensor | ToeplitzBias | None,
                rope: Rope | None = None) -> torch.Tensor:
        if isinstance(bias, ToeplitzBias):  # one fused op; EncoderStack.fuse_relative_attention checked the rest
            # q, k, v [1, S, H*Dh] as the projections give them: no transposes, and no reshapes
            # either (a reshape at the delegate's edge is a copy there)
            q, k, v = (p(x) for p in (self.q, self.k, self.v))
            return self.o(rel_attention(q, k, v, bias.diagonals, bias.key_bias, self.heads))
        q, k, v = (heads_first(p(x), self.heads) for p in (self.q, self.k, self.v))  # [H, S, Dh]
        if rope is not None:
            q, k = self.rotate(q, rope), self.rotate(k, rope)
        return self.o(heads_last(attend(q, k.transpose(1, 2), v, bias, self.scale, self.softcap)))


class CachedSelfAttention(Attention):
    """One decoder step of self-attention over the cache; owns the one-slot cache update.

    q, k and v are one fused projection `qkv` (fused_linear): y [1, 1, D] -> [1, 1, 3*H*Dh],
    viewed as [3H, 1, Dh] and sliced into q, k, v [H, 1, Dh] (one operator each, where three
    projections would each need their own input quantization and reshape). The step's key
    goes in as a column of the transposed key cache [H, Dh, T] and its value as a row of the
    value cache [H, T, Dh], at the slot `slots` (SlotMasks) marks. "buffer" mode updates the
    cache tensors in place (they are the module's buffers), "io" only returns the updated
    copies: (output [1, 1, D], keys [H, Dh, T], values [H, T, Dh]).

    "slot" mode leaves the caches alone: the step attends over the cache as it was (`bias`
    [R, 1, T+1]: the cache's T slots with this step's own slot masked, then this step's key)
    plus its own k/v, and returns (output, k [H, Dh, 1], v [H, 1, Dh]) for the caller to
    write into the slot after the whole step (write_slot).
    """

    def __init__(self, q: nn.Linear, k: nn.Linear, v: nn.Linear, o: nn.Linear, heads: int, head_dim: int,
                 scale: float = 1.0, softcap: float | None = None, rope: bool = False):
        super().__init__(o, heads, head_dim, scale, softcap, rope)
        self.qkv = fused_linear(q, k, v)

    def forward(self, y: torch.Tensor, slots: SlotMasks | None, bias: torch.Tensor, rope: Rope | None,
                cache_k: torch.Tensor, cache_v: torch.Tensor, mode: str) -> tuple[torch.Tensor, ...]:
        h, dh = self.heads, self.head_dim
        qkv = self.qkv(y).reshape(3 * h, 1, dh)
        q, k, v_new = qkv[:h], qkv[h: 2 * h], qkv[2 * h:]  # [H, 1, Dh] each
        if rope is not None:
            q, k = self.rotate(q, rope), self.rotate(k, rope)
        k_new = k.reshape(h, dh, 1)  # a key column of the [H, Dh, T] layout
        if mode == "slot":
            ctx = attend_with_step(q, cache_k, cache_v, k_new, v_new, bias, self.scale, self.softcap)
            return self.o(ctx.reshape(1, 1, h * dh)), k_new, v_new
        assert slots is not None, "buffer and io modes blend at the step's SlotMasks"
        in_place = mode == "buffer"
        k_all = update_cache(cache_k, k_new, slots.onehot_k, slots.keep_k, in_place)  # [H, Dh, T]
        v_all = update_cache(cache_v, v_new, slots.onehot_v, slots.keep_v, in_place)  # [H, T, Dh]
        out = self.o(attend(q, k_all, v_all, bias, self.scale, self.softcap).reshape(1, 1, h * dh))
        return out, k_all, v_all


# The two self-attentions, built alike by the family files: cls(q, k, v, o, heads, head_dim, ...).
AttentionT = TypeVar("AttentionT", SelfAttention, CachedSelfAttention)


class CrossAttention(nn.Module):
    """One decoder step's attention over the encoder's precomputed K/V (the encode program's
    cross_k [H, Dh, S], cross_v [H, S, Dh]); only the query and output projections run
    per step. `bias` is the encoder's key mask cross_bias [1, 1, S] (None: no mask)."""

    def __init__(self, q: nn.Linear, o: nn.Linear, heads: int, head_dim: int, scale: float = 1.0,
                 softcap: float | None = None):
        super().__init__()
        self.q, self.o = q, o
        self.heads, self.head_dim, self.scale, self.softcap = heads, head_dim, scale, softcap

    def forward(self, y: torch.Tensor, ck: torch.Tensor, cv: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        h, dh = self.heads, self.head_dim
        q = self.q(y).reshape(h, 1, dh)
        ctx = attend(q, ck, cv, bias, self.scale, self.softcap)
        return self.o(ctx.reshape(1, 1, h * dh))


class _Sublayers(nn.Module):
    """A layer's residual sub-blocks (attention, [cross-attention,] FFN) and where its norms go,
    one norm per sub-block:

    * "pre" (T5, mBART, Whisper): x + block(norm(x))
    * "post" (BART, Marian): norm(x + block(x))
    * "sandwich" (Gemma): x + post_norm(block(norm(x))), a second norm per sub-block
    """

    post_norms: nn.ModuleList | None

    def __init__(self, placement: str, norms: Sequence[nn.Module], post_norms: Sequence[nn.Module] = ()):
        super().__init__()
        if placement not in ("pre", "post", "sandwich") or (placement == "sandwich") != bool(post_norms):
            raise ValueError(f"norm placement {placement!r} with {len(post_norms)} post norms")
        self.post_norm = placement == "post"
        self.norms = nn.ModuleList(norms)
        self.post_norms = nn.ModuleList(post_norms) if post_norms else None

    def enter(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """What sub-block i reads."""
        return x if self.post_norm else self.norms[i](x)

    def leave(self, i: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The residual stream after sub-block i returned y."""
        if self.post_norm:
            return self.norms[i](x + y)
        if self.post_norms is not None:
            y = self.post_norms[i](y)
        return x + y


class EncoderLayer(_Sublayers):
    """Self-attention then FFN over the whole sequence x [1, S, D]."""

    def __init__(self, attn: SelfAttention, ff: nn.Module, placement: str, norms: Sequence[nn.Module],
                 post_norms: Sequence[nn.Module] = ()):
        super().__init__(placement, norms, post_norms)
        self.attn, self.ff = attn, ff

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None, rope: Rope | None) -> torch.Tensor:
        x = self.leave(0, x, self.attn(self.enter(0, x), bias, rope))
        return self.leave(1, x, self.ff(self.enter(1, x)))


class DecoderLayer(_Sublayers):
    """One step of one decoder layer: cached self-attention, cross-attention, FFN, on x [1, 1, D].
    Returns (x, this layer's updated key cache, value cache), or in "slot" mode (x, the step's
    key [H, Dh, 1], value [H, 1, Dh]) (CachedSelfAttention)."""

    def __init__(self, attn: CachedSelfAttention, cross: CrossAttention, ff: nn.Module, placement: str,
                 norms: Sequence[nn.Module], post_norms: Sequence[nn.Module] = ()):
        super().__init__(placement, norms, post_norms)
        self.attn, self.cross, self.ff = attn, cross, ff

    def forward(self, x: torch.Tensor, slots: SlotMasks | None, self_bias: torch.Tensor, rope: Rope | None,
                cross_bias: torch.Tensor | None, ck: torch.Tensor, cv: torch.Tensor, cache_k: torch.Tensor,
                cache_v: torch.Tensor, mode: str) -> tuple[torch.Tensor, ...]:
        y, k_all, v_all = self.attn(self.enter(0, x), slots, self_bias, rope, cache_k, cache_v, mode)
        x = self.leave(0, x, y)
        x = self.leave(1, x, self.cross(self.enter(1, x), ck, cv, cross_bias))
        return self.leave(2, x, self.ff(self.enter(2, x))), k_all, v_all
