"""BART family (BART, mBART, Marian): transformers with biased linears and LayerNorm.

What differs from T5 (toolchain/arch/t5.py; same contract and layouts, so the backends need
nothing new):

* LayerNorm with bias (mean subtraction), applied *after* each residual add
  (post-norm: BART, Marian) or before each block with the residual added after it
  and a final LayerNorm on both stacks (pre-norm: mBART). BART and mBART also
  normalise the embeddings (``layernorm_embedding``); Marian does not.
* Every linear has a bias; attention scores are scaled by 1/sqrt(Dh).
* Absolute positions instead of a relative bias: learned (BART, rows offset by 2,
  a quirk of fairseq) or sinusoidal (Marian, a fixed table). Positions depend only
  on the fixed lengths, so the rows for 0..S-1 and 0..T-1 are stored as constants:
    encoder  pos_table  [S, D], added to the embedded input
    decoder  pos_table  [D, T]: column p is position p's row, so a step takes it with
             F.linear(onehot(position), pos_table) -> [1, D] (a matmul, no gather)
* The decoder self-attention bias is only the causal mask, stored like T5's step
  table: self_bias_full [T(k), T(q)], F.linear(onehot, table) -> [1, T] = the mask
  row of the current query (keys after `position` -> NEG).
* Token embeddings are multiplied by ``embed_scale`` (sqrt(d_model) when
  ``config.scale_embedding``), and the logits get ``final_logits_bias`` added.
  The lm head is tied to the decoder embedding in both families by default.
* ``forced_bos_token_id`` (BART summarisers: 0; mBART: the target language code) is
  the decoder prompt, ``forced_eos_token_id`` is forced at the last allowed step
  (``base.text_generation``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InputError
from . import layers
from .base import Adapter, Model, register, tied_head
from .layers import frozen_embedding, frozen_linear
from .programs import DEFAULT_KIND, Decoder, TextEncoder

# transformers' ACT2FN names -> the shared activation table's names.
_ACT_ALIASES = {"swish": "silu"}


def _position_rows(stack: Any, length: int) -> torch.Tensor:
    """Rows of `stack.embed_positions` for positions 0..length-1 -> [length, D]."""
    table = stack.embed_positions
    offset = getattr(table, "offset", 0)  # BartLearnedPositionalEmbedding: 2; Marian sinusoidal: 0
    rows = table.weight.shape[0] - offset
    if length > rows:
        raise InputError(f"length {length} exceeds the model's {rows} position embeddings "
                         f"(config max_position_embeddings); lower the recipe's max lengths")
    return table.weight[offset: offset + length].detach().clone().float()


# BART-style transformers layers (also Whisper's): self_attn and encoder_attn (q_proj, k_proj,
# v_proj, out_proj; scores scaled by 1/sqrt(Dh)), fc1/fc2, a LayerNorm per sub-block.

def attention(cls: type[layers.AttentionT], sa: Any, heads: int) -> layers.AttentionT:
    return cls(frozen_linear(sa.q_proj), frozen_linear(sa.k_proj), frozen_linear(sa.v_proj),
               frozen_linear(sa.out_proj), heads, sa.head_dim, scale=sa.head_dim ** -0.5)


def cross_attention(ca: Any, heads: int) -> layers.CrossAttention:
    return layers.CrossAttention(frozen_linear(ca.q_proj), frozen_linear(ca.out_proj), heads, ca.head_dim,
                                 scale=ca.head_dim ** -0.5)


def feed_forward(layer: Any, act: str) -> layers.FeedForward:
    return layers.FeedForward(frozen_linear(layer.fc1), frozen_linear(layer.fc2), _ACT_ALIASES.get(act, act))


def encoder_layer(layer: Any, heads: int, act: str, placement: str) -> layers.EncoderLayer:
    norms = (layer.self_attn_layer_norm, layer.final_layer_norm)
    return layers.EncoderLayer(attention(layers.SelfAttention, layer.self_attn, heads), feed_forward(layer, act),
                               placement, [layers.LayerNorm(n) for n in norms])


def decoder_layer(layer: Any, heads: int, act: str, placement: str) -> layers.DecoderLayer:
    norms = (layer.self_attn_layer_norm, layer.encoder_attn_layer_norm, layer.final_layer_norm)
    return layers.DecoderLayer(attention(layers.CachedSelfAttention, layer.self_attn, heads),
                               cross_attention(layer.encoder_attn, heads), feed_forward(layer, act), placement,
                               [layers.LayerNorm(n) for n in norms])


def causal_table(length: int) -> dict[str, torch.Tensor]:
    """The decoder's only self-attention bias: the causal mask as a step table [T(k), T(q)]."""
    return {DEFAULT_KIND: layers.step_table(layers.causal_mask(length)[None])}


@register
class Bart(Adapter):
    family = "bart"
    model_types = ("bart", "mbart", "marian")
    default_eos = 2

    def describe(self, cfg: dict[str, Any]) -> dict[str, Any]:
        d, heads = cfg.get("d_model"), cfg.get("decoder_attention_heads")
        marian = cfg.get("model_type") == "marian"
        return {
            "family": self.family, "variant": cfg.get("model_type"),
            "encoder_layers": cfg.get("encoder_layers"), "decoder_layers": cfg.get("decoder_layers"),
            "heads": heads, "d_model": d, "d_ff": cfg.get("decoder_ffn_dim"),
            "head_dim": d // heads if d and heads else None,
            "vocab_size": cfg.get("decoder_vocab_size") or cfg.get("vocab_size") if marian else cfg.get("vocab_size"),
            "activation": cfg.get("activation_function"),
            "positions": "sinusoidal" if marian else "learned",
            "norm": "pre-norm" if cfg.get("model_type") == "mbart" else "post-norm",
            "max_positions": cfg.get("max_position_embeddings"),
        }

    def unsupported(self, model: Model) -> str | None:
        cfg = model.config
        if getattr(cfg, "normalize_before", False) or getattr(cfg, "add_final_layer_norm", False):
            return f"{cfg.model_type}: pre-norm variants (normalize_before) are not supported"
        return None

    def programs(self, model: Model, max_input_len: int, max_output_len: int,
                 cache_mode: str) -> tuple[TextEncoder, Decoder]:
        cfg = model.config
        enc, dec = model.model.encoder, model.model.decoder
        h, act, t = cfg.decoder_attention_heads, cfg.activation_function, max_output_len
        # mBART normalises before each block and at the end of both stacks; BART and Marian after.
        pre = cfg.model_type == "mbart"
        placement = "pre" if pre else "post"
        scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        dec_emb = frozen_embedding(dec.embed_tokens.weight)
        # Shared encoder/decoder embeddings (BART, most Marian): one module in both programs.
        enc_w = enc.embed_tokens.weight
        enc_emb = dec_emb if enc_w.data_ptr() == dec.embed_tokens.weight.data_ptr() else frozen_embedding(enc_w)

        def norm_embed(stack: Any) -> layers.LayerNorm | None:
            ln = getattr(stack, "layernorm_embedding", None)  # BART, mBART
            return layers.LayerNorm(ln) if ln is not None else None

        def final_norm(stack: Any) -> layers.LayerNorm | None:
            return layers.LayerNorm(stack.layer_norm) if pre else None

        encode = TextEncoder(
            enc_emb, [encoder_layer(layer, cfg.encoder_attention_heads, act, placement) for layer in enc.layers],
            final_norm(enc), [frozen_linear(layer.encoder_attn.k_proj) for layer in dec.layers],
            [frozen_linear(layer.encoder_attn.v_proj) for layer in dec.layers], h, cfg.d_model // h,
            embed_scale=scale, pos_table=_position_rows(enc, max_input_len), norm_embed=norm_embed(enc))
        decode = Decoder(
            dec_emb, [decoder_layer(layer, h, act, placement) for layer in dec.layers], final_norm(dec),
            tied_head(model, dec.embed_tokens.weight), h, cfg.d_model // h, t, cache_mode,
            self_bias=causal_table(t), embed_scale=scale, pos_table=_position_rows(dec, t).T.contiguous(),
            norm_embed=norm_embed(dec), logits_bias=model.final_logits_bias.detach().clone().float().reshape(1, -1))
        return encode, decode

