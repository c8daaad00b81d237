"""T5Gemma family: a Gemma-2-style encoder-decoder with rotary positions (RoPE).

What differs from T5 (toolchain/arch/t5.py), all implemented exactly (none switched off):

* Rotary position embeddings (default rope, ``rope_theta``) on queries and keys of the
  self-attention. Positions are fixed (encoder 0..S-1, decoder step p), so cos/sin are
  constants: encoder ``rope_cos``/``rope_sin`` [S, Dh]; decoder tables [Dh, T] read per step
  with ``F.linear(onehot(position), table)`` -> [1, Dh] (a matmul, no gather).
  rotate_half(x) = (-x2, x1) is the constant matrix ``rot`` [Dh, Dh] applied with
  ``F.linear`` (slices + cat would leave portable kernels).
* Gemma RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + w), i.e. layers.RMSNorm with weight 1 + w;
  "sandwich" norms: each sub-layer is norm -> block -> norm, then the residual add.
* Embeddings scaled by sqrt(hidden_size); attention scores by query_pre_attn_scalar**-0.5.
* Attention logit soft-capping (cap * tanh(scores / cap), before the mask) and final logit
  soft-capping on the output logits.
* Sliding-window layers (``layer_types``): the encoder's bidirectional window
  (|q - k| <= window) and the decoder's causal window (k > q - window) are constant masks
  at fixed lengths, one per layer type. Cross-attention is always full.
* Grouped-query attention: each of the H query heads reads KV head h // (H / H_kv). The
  split's contract has H heads in the cross K/V and the caches, so the key/value
  projections are expanded to H heads (rows repeated) when the parts are built: exact,
  at the cost of H / H_kv times the K/V compute and cache memory.
* Separate encoder and decoder token embeddings; the head is tied to the decoder's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InputError
from . import layers
from .base import Adapter, Model, SpecialTokens, first_id, register, tied_head
from .layers import frozen_embedding, frozen_linear
from .programs import Decoder, TextEncoder


def _norm(norm: Any) -> layers.RMSNorm:
    return layers.RMSNorm(1.0 + norm.weight.detach().float(), norm.eps)


def _expanded(lin: nn.Linear, kv_heads: int, rep: int) -> nn.Linear:
    """A K/V projection for H = kv_heads * rep heads: KV head j's rows serve heads j*rep .. j*rep+rep-1
    (transformers' repeat_kv)."""
    out = frozen_linear(lin)
    if rep == 1:
        return out
    w = out.weight.detach()
    d_in = w.shape[1]
    expanded = nn.Linear(d_in, w.shape[0] * rep, bias=lin.bias is not None)
    expanded.weight = nn.Parameter(w.reshape(kv_heads, -1, d_in).repeat_interleave(rep, 0).reshape(-1, d_in),
                                   requires_grad=False)
    if lin.bias is not None:
        expanded.bias = nn.Parameter(out.bias.detach().reshape(kv_heads, -1).repeat_interleave(rep, 0).reshape(-1),
                                     requires_grad=False)
    return expanded


def _rope(cfg: Any, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [length, Dh] for positions 0..length-1 (default rope; others are refused)."""
    params = cfg.rope_parameters or {}
    kind = params.get("rope_type", "default")
    if kind != "default":
        raise InputError(f"t5gemma: rope_type {kind!r} is not supported (default only)")
    dim = cfg.head_dim
    inv_freq = 1.0 / (params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    freqs = torch.arange(length).float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _masks(cfg: Any, kinds: list[str], length: int, causal: bool) -> dict[str, torch.Tensor]:
    """One mask [L(q), L(k)] per layer type: 0 where a query may attend a key, NEG elsewhere.
    Encoder: bidirectional, a sliding layer sees |q - k| <= window. Decoder: causal, a sliding
    layer sees k > q - window."""
    q, k = torch.arange(length)[:, None], torch.arange(length)[None, :]
    out = {}
    for kind in sorted(set(kinds)):
        ok = k <= q if causal else torch.ones_like(q, dtype=torch.bool)  # [L, 1]: broadcasts over keys
        if kind == "sliding_attention" and cfg.sliding_window is not None:
            ok = ok & ((k > q - cfg.sliding_window) if causal else ((q - k).abs() <= cfg.sliding_window))
        out[kind] = torch.where(ok, 0.0, layers.NEG)
    return out


def _attention(cls: type[layers.AttentionT], attn: Any, cfg: Any) -> layers.AttentionT:
    """Self-attention with K/V expanded to H heads, RoPE, query_pre_attn_scalar scale, soft-capping."""
    rep = cfg.num_attention_heads // cfg.num_key_value_heads
    return cls(frozen_linear(attn.q_proj), _expanded(attn.k_proj, cfg.num_key_value_heads, rep),
               _expanded(attn.v_proj, cfg.num_key_value_heads, rep), frozen_linear(attn.o_proj),
               cfg.num_attention_heads, cfg.head_dim, scale=cfg.query_pre_attn_scalar ** -0.5,
               softcap=cfg.attn_logit_softcapping, rope=True)


def _ff(layer: Any, cfg: Any) -> layers.FeedForward:
    """Gemma's feed-forward: down(act(gate(x)) * up(x))."""
    mlp = layer.mlp
    return layers.FeedForward(frozen_linear(mlp.up_proj), frozen_linear(mlp.down_proj), cfg.hidden_activation,
                              gate=frozen_linear(mlp.gate_proj))


def _encoder_layer(layer: Any, cfg: Any) -> layers.EncoderLayer:
    # "sandwich" norms: each sub-layer is norm -> block -> norm, then the residual add.
    return layers.EncoderLayer(_attention(layers.SelfAttention, layer.self_attn, cfg), _ff(layer, cfg), "sandwich",
                               [_norm(layer.pre_self_attn_layernorm), _norm(layer.pre_feedforward_layernorm)],
                               [_norm(layer.post_self_attn_layernorm), _norm(layer.post_feedforward_layernorm)])


def _decoder_layer(layer: Any, cfg: Any) -> layers.DecoderLayer:
    attn = _attention(layers.CachedSelfAttention, layer.self_attn, cfg)
    ca = layer.cross_attn  # its scores are scaled and capped like the self-attention's
    cross = layers.CrossAttention(frozen_linear(ca.q_proj), frozen_linear(ca.o_proj), attn.heads, attn.head_dim,
                                  scale=attn.scale, softcap=attn.softcap)
    blocks = ("self_attn", "cross_attn", "feedforward")
    return layers.DecoderLayer(attn, cross, _ff(layer, cfg), "sandwich",
                               [_norm(getattr(layer, f"pre_{b}_layernorm")) for b in blocks],
                               [_norm(getattr(layer, f"post_{b}_layernorm")) for b in blocks])


@register
class T5Gemma(Adapter):
    family = "t5gemma"
    model_types = ("t5gemma",)

    def describe(self, cfg: dict[str, Any]) -> dict[str, Any]:
        enc, dec = cfg.get("encoder") or {}, cfg.get("decoder") or {}
        return {
            "family": self.family, "variant": "t5gemma (RoPE, GQA, sliding window, soft-capping)",
            "encoder_layers": enc.get("num_hidden_layers"), "decoder_layers": dec.get("num_hidden_layers"),
            "heads": dec.get("num_attention_heads"), "kv_heads": dec.get("num_key_value_heads"),
            "d_model": dec.get("hidden_size"), "d_ff": dec.get("intermediate_size"), "head_dim": dec.get("head_dim"),
            "vocab_size": dec.get("vocab_size") or cfg.get("vocab_size"), "activation": dec.get("hidden_activation"),
            "positions": "rope", "sliding_window": dec.get("sliding_window"),
        }

    def unsupported(self, model: Model) -> str | None:
        cfg = model.config
        for side, c in (("encoder", cfg.encoder), ("decoder", cfg.decoder)):
            if c.num_attention_heads % c.num_key_value_heads:
                return f"t5gemma {side}: num_attention_heads must be a multiple of num_key_value_heads"
        return None

    def programs(self, model: Model, max_input_len: int, max_output_len: int,
                 cache_mode: str) -> tuple[TextEncoder, Decoder]:
        enc, dec = model.model.encoder, model.model.decoder
        ecfg, dcfg = enc.config, dec.config
        s, t, h, dh = max_input_len, max_output_len, dcfg.num_attention_heads, dcfg.head_dim
        h_kv = dcfg.num_key_value_heads
        rep = h // h_kv
        enc_kinds = list(ecfg.layer_types[: len(enc.layers)])
        encode = TextEncoder(
            frozen_embedding(enc.embed_tokens.weight), [_encoder_layer(layer, ecfg) for layer in enc.layers],
            _norm(enc.norm), [_expanded(layer.cross_attn.k_proj, h_kv, rep) for layer in dec.layers],
            [_expanded(layer.cross_attn.v_proj, h_kv, rep) for layer in dec.layers], h, dh,
            kinds=enc_kinds, self_bias=_masks(ecfg, enc_kinds, s, causal=False), rope=_rope(ecfg, s),
            embed_scale=ecfg.hidden_size ** 0.5)
        dec_kinds = list(dcfg.layer_types[: len(dec.layers)])
        cos, sin = _rope(dcfg, t)
        decode = Decoder(
            frozen_embedding(dec.embed_tokens.weight), [_decoder_layer(layer, dcfg) for layer in dec.layers],
            _norm(dec.norm), tied_head(model, dec.embed_tokens.weight), h, dh, t, cache_mode, kinds=dec_kinds,
            self_bias={kind: layers.step_table(m[None]) for kind, m in _masks(dcfg, dec_kinds, t, causal=True).items()},
            rope_tables=(cos.T.contiguous(), sin.T.contiguous()), embed_scale=dcfg.hidden_size ** 0.5,
            final_softcap=dcfg.final_logit_softcapping)
        return encode, decode

    def tokens(self, model: Model) -> SpecialTokens:
        gen, cfg, dcfg = model.generation_config, model.config, model.config.decoder
        return SpecialTokens(
            first_id("decoder_start_token_id", gen.decoder_start_token_id, getattr(cfg, "decoder_start_token_id", None),
                     gen.bos_token_id, dcfg.bos_token_id, 0),
            first_id("eos_token_id", gen.eos_token_id, dcfg.eos_token_id),
            first_id("pad_token_id", gen.pad_token_id, dcfg.pad_token_id, 0))
