"""BART family (BART, mBART, Marian): transformers with biased linears and LayerNorm.

What differs from T5 (toolchain/arch/t5.py, whose contract and layouts this follows
exactly, so the backends need nothing new):

* LayerNorm with bias (mean subtraction), applied *after* each residual add
  (post-norm: BART, Marian) or before each block with the residual added after it
  and a final LayerNorm on both stacks (pre-norm: mBART). BART and mBART also
  normalise the embeddings (``layernorm_embedding``); Marian does not.
* Every linear has a bias; attention scores are scaled by 1/sqrt(Dh).
* Absolute positions instead of a relative bias: learned (BART, rows offset by 2,
  a quirk of fairseq) or sinusoidal (Marian, a fixed table). Positions depend only
  on the fixed lengths, so the rows for 0..S-1 and 0..T-1 are stored as constants:
    encoder  enc_pos        [S, D], added to the embedded input
    decoder  dec_pos_table  [D, T]: column p is position p's row, so a step takes it with
             F.linear(onehot(position), dec_pos_table) -> [1, D] (a matmul, no gather)
* The decoder self-attention bias is only the causal mask, stored like T5's step
  table: causal_table [T(k), T(q)], F.linear(onehot, causal_table) -> [1, T] = the
  mask row of the current query (keys after `position` -> NEG).
* Token embeddings are multiplied by ``embed_scale`` (sqrt(d_model) when
  ``config.scale_embedding``), and the logits get ``final_logits_bias`` added.
  The lm head is tied to the decoder embedding in both families by default.
* ``forced_bos_token_id`` (BART summarisers: 0; mBART: the target language code) is
  the decoder prompt, ``forced_eos_token_id`` is forced at the last allowed step
  (``arch.text_generation``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import register, text_generation
from ..errors import InputError
from ..split import (NEG, LayerNorm, Seq2SeqParts, activation, attend, cross_kv_outputs, decode_step,
                     frozen_embedding, frozen_linear, heads_first, heads_last, register_cache,
                     update_cache)

# transformers' ACT2FN names -> the shared activation table's names.
_ACT_ALIASES = {"swish": "silu"}


def _act(name: str):
    return activation(_ACT_ALIASES.get(name, name))


def _position_rows(stack: nn.Module, length: int) -> torch.Tensor:
    """Rows of `stack.embed_positions` for positions 0..length-1 -> [length, D]."""
    table = stack.embed_positions
    offset = getattr(table, "offset", 0)  # BartLearnedPositionalEmbedding: 2; Marian sinusoidal: 0
    rows = table.weight.shape[0] - offset
    if length > rows:
        raise InputError(f"length {length} exceeds the model's {rows} position embeddings "
                         f"(config max_position_embeddings); lower the recipe's max lengths")
    return table.weight[offset: offset + length].detach().clone().float()


class _EncoderLayer(nn.Module):
    def __init__(self, layer: nn.Module, heads: int, act: str, pre_norm: bool):
        super().__init__()
        sa = layer.self_attn
        self.heads, self.pre_norm = heads, pre_norm
        self.scale = sa.head_dim ** -0.5
        self.q, self.k, self.v, self.o = (frozen_linear(sa.q_proj), frozen_linear(sa.k_proj),
                                          frozen_linear(sa.v_proj), frozen_linear(sa.out_proj))
        self.norm1 = LayerNorm(layer.self_attn_layer_norm)
        self.fc1, self.fc2 = frozen_linear(layer.fc1), frozen_linear(layer.fc2)
        self.norm2 = LayerNorm(layer.final_layer_norm)
        self.act = _act(act)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # x [1, S, D]; post-norm: residual add first, then LayerNorm. Pre-norm: LayerNorm, block, add.
        h = self.norm1(x) if self.pre_norm else x
        q, k, v = (heads_first(p(h), self.heads) for p in (self.q, self.k, self.v))  # [H, S, Dh]
        x = x + self.o(heads_last(attend(q, k.transpose(1, 2), v, bias, self.scale)))
        if self.pre_norm:
            return x + self.fc2(self.act(self.fc1(self.norm2(x))))
        x = self.norm1(x)
        return self.norm2(x + self.fc2(self.act(self.fc1(x))))


class BartEncode(nn.Module):
    """input_ids/attention_mask [1, S] -> cross_bias [1, 1, S], per-layer cross K/V."""

    def __init__(self, model: nn.Module, embed: nn.Embedding, max_input_len: int):
        super().__init__()
        cfg = model.config
        enc, dec = model.model.encoder, model.model.decoder
        self.heads = cfg.decoder_attention_heads  # cross K/V are laid out for the decoder's heads
        self.head_dim = cfg.d_model // cfg.decoder_attention_heads
        self.embed = embed
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.register_buffer("enc_pos", _position_rows(enc, max_input_len))  # [S, D]
        ln = getattr(enc, "layernorm_embedding", None)  # BART, mBART
        self.norm_embed = LayerNorm(ln) if ln is not None else None
        pre_norm = _pre_norm(cfg)
        self.layers = nn.ModuleList(_EncoderLayer(l, cfg.encoder_attention_heads, cfg.activation_function, pre_norm)
                                    for l in enc.layers)
        self.final_norm = LayerNorm(enc.layer_norm) if pre_norm else None
        # Cross-attention projections of every decoder layer run here, once per input.
        self.cross_k = nn.ModuleList(frozen_linear(l.encoder_attn.k_proj) for l in dec.layers)
        self.cross_v = nn.ModuleList(frozen_linear(l.encoder_attn.v_proj) for l in dec.layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        s = input_ids.shape[1]
        cross_bias = ((1.0 - attention_mask.to(torch.float32)) * NEG).reshape(1, 1, s)
        x = self.embed(input_ids)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        x = x + self.enc_pos  # [1, S, D] + [S, D]
        if self.norm_embed is not None:
            x = self.norm_embed(x)
        for layer in self.layers:
            x = layer(x, cross_bias)  # [1, 1, S] broadcasts over heads and queries
        if self.final_norm is not None:
            x = self.final_norm(x)
        return cross_kv_outputs(x, cross_bias, self.cross_k, self.cross_v, self.heads, self.head_dim)


class _DecoderLayer(nn.Module):
    def __init__(self, layer: nn.Module, heads: int, act: str, pre_norm: bool):
        super().__init__()
        sa, ca = layer.self_attn, layer.encoder_attn
        self.heads, self.head_dim, self.pre_norm = heads, sa.head_dim, pre_norm
        self.scale = sa.head_dim ** -0.5
        self.q, self.k, self.v, self.o = (frozen_linear(sa.q_proj), frozen_linear(sa.k_proj),
                                          frozen_linear(sa.v_proj), frozen_linear(sa.out_proj))
        self.norm1 = LayerNorm(layer.self_attn_layer_norm)
        self.cq, self.co = frozen_linear(ca.q_proj), frozen_linear(ca.out_proj)
        self.norm2 = LayerNorm(layer.encoder_attn_layer_norm)
        self.fc1, self.fc2 = frozen_linear(layer.fc1), frozen_linear(layer.fc2)
        self.norm3 = LayerNorm(layer.final_layer_norm)
        self.act = _act(act)

    def forward(self, x, onehot, self_bias, cross_bias, ck, cv, cache_k, cache_v, in_place: bool):
        h, dh = self.heads, self.head_dim
        t = cache_k.shape[-1]
        pre = self.pre_norm
        # x [1, 1, D]; the new key goes in as a column of the transposed key cache.
        y = self.norm1(x) if pre else x
        q = self.q(y).reshape(h, 1, dh)
        k_new = self.k(y).reshape(h, dh, 1)
        v_new = self.v(y).reshape(h, 1, dh)
        k_all = update_cache(cache_k, k_new, onehot.reshape(1, 1, t), in_place)  # [H, Dh, T]
        v_all = update_cache(cache_v, v_new, onehot.reshape(1, t, 1), in_place)  # [H, T, Dh]
        x = x + self.o(attend(q, k_all, v_all, self_bias, self.scale).reshape(1, 1, h * dh))
        x = x if pre else self.norm1(x)
        q = self.cq(self.norm2(x) if pre else x).reshape(h, 1, dh)
        ctx = attend(q, ck.reshape(ck.shape[1:]), cv.reshape(cv.shape[1:]), cross_bias, self.scale)
        x = x + self.co(ctx.reshape(1, 1, h * dh))
        if pre:
            return x + self.fc2(self.act(self.fc1(self.norm3(x)))), k_all, v_all
        x = self.norm2(x)
        return self.norm3(x + self.fc2(self.act(self.fc1(x)))), k_all, v_all


class BartDecode(nn.Module):
    """One decoder step: token [1,1], position [1], cross_bias, cross K/V -> logits [1, V].

    Cache modes as in T5Decode: "buffer" keeps the self-attention cache in registered
    buffers updated in place; "io" takes the caches as inputs after the cross K/V and
    returns the updated caches after the logits.
    """

    def __init__(self, model: nn.Module, embed: nn.Embedding, max_output_len: int, cache_mode: str = "buffer"):
        super().__init__()
        cfg = model.config
        dec = model.model.decoder
        h, t = cfg.decoder_attention_heads, max_output_len
        dh = cfg.d_model // h
        self.heads, self.max_output_len, self.cache_mode = h, t, cache_mode
        self.embed = embed
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.register_buffer("dec_pos_table", _position_rows(dec, t).T.contiguous())  # [D, T]
        ln = getattr(dec, "layernorm_embedding", None)  # BART, mBART
        self.norm_embed = LayerNorm(ln) if ln is not None else None
        pre_norm = _pre_norm(cfg)
        self.layers = nn.ModuleList(_DecoderLayer(l, h, cfg.activation_function, pre_norm) for l in dec.layers)
        self.final_norm = LayerNorm(dec.layer_norm) if pre_norm else None
        head = model.get_output_embeddings()
        tied = head.weight.data_ptr() == dec.embed_tokens.weight.data_ptr()
        # A tied head reuses the embedding Parameter: one tensor, stored once.
        self.lm_head = None if tied else frozen_linear(head)
        self.register_buffer("final_logits_bias", model.final_logits_bias.detach().clone().float().reshape(1, -1))
        causal = torch.triu(torch.full((t, t), NEG), diagonal=1)  # [T(q), T(k)]: key after query -> masked
        self.register_buffer("causal_table", causal.T.contiguous())  # [T(k), T(q)]
        register_cache(self, len(self.layers), h, dh, t, cache_mode)

    def forward(self, token, position, cross_bias, *rest):
        t = self.max_output_len
        cross_kv, caches, onehot = decode_step(self, position, rest)  # onehot [1, T]
        self_bias = F.linear(onehot, self.causal_table).reshape(1, 1, t)  # broadcasts over heads
        x = self.embed(token)  # [1, 1, D]
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        x = x + F.linear(onehot, self.dec_pos_table).reshape(1, 1, -1)
        if self.norm_embed is not None:
            x = self.norm_embed(x)
        new_caches = []
        for i, layer in enumerate(self.layers):
            x, k_all, v_all = layer(x, onehot, self_bias, cross_bias, cross_kv[2 * i], cross_kv[2 * i + 1],
                                    caches[2 * i], caches[2 * i + 1], self.cache_mode == "buffer")
            new_caches += [k_all, v_all]
        if self.final_norm is not None:
            x = self.final_norm(x)
        x = x.reshape(1, -1)
        logits = F.linear(x, self.embed.weight) if self.lm_head is None else self.lm_head(x)
        logits = logits + self.final_logits_bias
        return logits if self.cache_mode == "buffer" else (logits, *new_caches)


def _pre_norm(cfg) -> bool:
    """mBART normalises before each block and at the end of both stacks; BART and Marian after."""
    return cfg.model_type == "mbart"


class BartAdapter:
    family = "bart"
    model_types = ("bart", "mbart", "marian")
    # Parity tolerance on logits, eager split vs transformers, per runtime (fp32).
    tolerance = {"eager": 1e-4, "executorch": 1e-3}

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

    def build(self, model: nn.Module, max_input_len: int, max_output_len: int,
              cache_mode: str = "buffer") -> Seq2SeqParts:
        cfg = model.config
        if getattr(cfg, "normalize_before", False) or getattr(cfg, "add_final_layer_norm", False):
            raise InputError(f"{cfg.model_type}: pre-norm variants (normalize_before) are not supported")
        enc_w = model.model.encoder.embed_tokens.weight
        dec_w = model.model.decoder.embed_tokens.weight
        dec_emb = frozen_embedding(dec_w)
        # Shared encoder/decoder embeddings (BART, most Marian): one module in both programs.
        enc_emb = dec_emb if enc_w.data_ptr() == dec_w.data_ptr() else frozen_embedding(enc_w)
        enc = BartEncode(model, enc_emb, max_input_len).eval()
        dec = BartDecode(model, dec_emb, max_output_len, cache_mode).eval()
        gen = getattr(model, "generation_config", None)
        start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else cfg.pad_token_id
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else getattr(gen, "eos_token_id", 2)
        h = cfg.decoder_attention_heads
        return Seq2SeqParts(
            encode=enc, decode=dec, num_layers=len(dec.layers), num_heads=h, head_dim=cfg.d_model // h,
            vocab_size=dec.final_logits_bias.shape[-1], max_input_len=max_input_len,
            max_output_len=max_output_len, decoder_start_token_id=int(start if start is not None else 0),
            eos_token_id=int(eos[0] if isinstance(eos, (list, tuple)) else eos),
            pad_token_id=int(cfg.pad_token_id if cfg.pad_token_id is not None else 0),
            cache_mode=cache_mode, tolerance=dict(self.tolerance), **text_generation(model))

    def tiny_config(self, variant: str = "bart", **overrides: Any):
        """Tiny random configs: "bart" (learned positions, gelu, layernorm_embedding), "mbart"
        (pre-norm, final norms, scaled embeddings) and "marian" (sinusoidal positions, swish,
        scaled embeddings)."""
        from transformers import BartConfig, MarianConfig, MBartConfig

        base = dict(vocab_size=45, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                    decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                    dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=0, eos_token_id=1,
                    bos_token_id=None, decoder_start_token_id=0, forced_eos_token_id=None, tie_word_embeddings=True)
        kinds = {
            "bart": (BartConfig, dict(activation_function="gelu", scale_embedding=False, forced_bos_token_id=None)),
            "marian": (MarianConfig, dict(activation_function="swish", scale_embedding=True)),
            "mbart": (MBartConfig, dict(activation_function="gelu", scale_embedding=True)),
        }
        if variant not in kinds:
            raise ValueError(f"unknown BART variant {variant!r}; choose from {', '.join(kinds)}")
        cls, extra = kinds[variant]
        cfg = {**base, **extra, **overrides}
        if variant == "marian":
            cfg.setdefault("decoder_vocab_size", cfg["vocab_size"])
        return cls(**cfg)


register(BartAdapter())
