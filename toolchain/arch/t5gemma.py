"""T5Gemma family: a Gemma-2-style encoder-decoder with rotary positions (RoPE).

What differs from T5 (toolchain/arch/t5.py), all implemented exactly (none switched off):

* Rotary position embeddings (default rope, ``rope_theta``) on queries and keys of the
  self-attention. Positions are fixed (encoder 0..S-1, decoder step p), so cos/sin are
  constants: encoder ``rope_cos``/``rope_sin`` [S, Dh]; decoder tables [Dh, T] read per step
  with ``F.linear(onehot(position), table)`` -> [1, Dh] (a matmul, no gather).
  rotate_half(x) = (-x2, x1) is the constant matrix ``rot`` [Dh, Dh] applied with
  ``F.linear`` (slices + cat would leave portable kernels).
* Gemma RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + w), i.e. split.RMSNorm with weight 1 + w;
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
import torch.nn.functional as F
from torch import nn

from . import register, text_generation
from ..errors import InputError
from ..split import (NEG, RMSNorm, Seq2SeqParts, activation, attend, cross_kv_outputs, decode_step,
                     frozen_embedding, frozen_linear, heads_first, heads_last, register_cache,
                     update_cache)


def _norm(norm: nn.Module) -> RMSNorm:
    return RMSNorm(1.0 + norm.weight.detach().float(), norm.eps)


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


def _rope(cfg, length: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def _rotation(dim: int) -> torch.Tensor:
    """R [Dh, Dh] with F.linear(x, R) == rotate_half(x) == cat(-x[half:], x[:half])."""
    half = dim // 2
    r = torch.zeros(dim, dim)
    r[:half, half:] = -torch.eye(half)
    r[half:, :half] = torch.eye(half)
    return r


def _window_ok(q: torch.Tensor, k: torch.Tensor, kind: str, window: int | None, causal: bool) -> torch.Tensor:
    ok = k <= q if causal else torch.ones_like(q, dtype=torch.bool)
    if kind == "sliding_attention" and window is not None:
        ok = ok & ((k > q - window) if causal else ((q - k).abs() <= window))
    return ok


class _Attention(nn.Module):
    """Self-attention projections (K/V expanded to H heads) with RoPE applied on [H, S, Dh]."""

    def __init__(self, attn: nn.Module, cfg):
        super().__init__()
        self.heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        rep = cfg.num_attention_heads // cfg.num_key_value_heads
        self.q, self.o = frozen_linear(attn.q_proj), frozen_linear(attn.o_proj)
        self.k = _expanded(attn.k_proj, cfg.num_key_value_heads, rep)
        self.v = _expanded(attn.v_proj, cfg.num_key_value_heads, rep)
        self.scale = cfg.query_pre_attn_scalar ** -0.5
        self.softcap = cfg.attn_logit_softcapping
        self.register_buffer("rot", _rotation(cfg.head_dim))  # F.linear(x, rot) == rotate_half(x)

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x [H, S, Dh]; cos/sin [S, Dh]: x * cos + rotate_half(x) * sin
        return x * cos + F.linear(x, self.rot) * sin


class _GatedMLP(nn.Module):
    """Gemma's feed-forward: down(act(gate(x)) * up(x))."""

    def __init__(self, mlp: nn.Module, act: str):
        super().__init__()
        self.gate, self.up, self.down = (frozen_linear(mlp.gate_proj), frozen_linear(mlp.up_proj),
                                         frozen_linear(mlp.down_proj))
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


class _EncoderLayer(nn.Module):
    def __init__(self, layer: nn.Module, cfg):
        super().__init__()
        self.attn = _Attention(layer.self_attn, cfg)
        self.pre_attn, self.post_attn = _norm(layer.pre_self_attn_layernorm), _norm(layer.post_self_attn_layernorm)
        self.pre_ff, self.post_ff = _norm(layer.pre_feedforward_layernorm), _norm(layer.post_feedforward_layernorm)
        self.mlp = _GatedMLP(layer.mlp, cfg.hidden_activation)

    def forward(self, x, bias, cos, sin):
        a = self.attn
        h = self.pre_attn(x)  # [1, S, D]
        q = a.rope(heads_first(a.q(h), a.heads), cos, sin)
        k = a.rope(heads_first(a.k(h), a.heads), cos, sin)
        v = heads_first(a.v(h), a.heads)
        x = x + self.post_attn(a.o(heads_last(attend(q, k.transpose(1, 2), v, bias, a.scale, a.softcap))))
        h = self.pre_ff(x)
        return x + self.post_ff(self.mlp(h))


class T5GemmaEncode(nn.Module):
    """input_ids/attention_mask [1, S] -> cross_bias [1, 1, S], per-layer cross K/V (H heads)."""

    def __init__(self, model: nn.Module, max_input_len: int):
        super().__init__()
        enc, dec = model.model.encoder, model.model.decoder
        ecfg, dcfg = enc.config, dec.config
        s = max_input_len
        self.heads, self.head_dim = dcfg.num_attention_heads, dcfg.head_dim
        self.embed = frozen_embedding(enc.embed_tokens.weight)
        self.embed_scale = ecfg.hidden_size ** 0.5
        self.layers = nn.ModuleList(_EncoderLayer(l, ecfg) for l in enc.layers)
        self.kinds = list(ecfg.layer_types[: len(self.layers)])
        self.final_norm = _norm(enc.norm)
        cos, sin = _rope(ecfg, s)
        self.register_buffer("rope_cos", cos)  # [S, Dh]
        self.register_buffer("rope_sin", sin)
        pos = torch.arange(s)
        for kind in sorted(set(self.kinds)):  # bidirectional window masks, one per layer type
            ok = _window_ok(pos[:, None], pos[None, :], kind, ecfg.sliding_window, causal=False)
            self.register_buffer(f"mask_{kind}", torch.where(ok, 0.0, NEG))  # [S(q), S(k)]
        rep = dcfg.num_attention_heads // dcfg.num_key_value_heads
        self.cross_k = nn.ModuleList(_expanded(l.cross_attn.k_proj, dcfg.num_key_value_heads, rep) for l in dec.layers)
        self.cross_v = nn.ModuleList(_expanded(l.cross_attn.v_proj, dcfg.num_key_value_heads, rep) for l in dec.layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        s = input_ids.shape[1]
        cross_bias = ((1.0 - attention_mask.to(torch.float32)) * NEG).reshape(1, 1, s)
        x = self.embed(input_ids) * self.embed_scale
        masks = {kind: (getattr(self, f"mask_{kind}") + cross_bias) for kind in set(self.kinds)}  # [1, S, S]
        for layer, kind in zip(self.layers, self.kinds):
            x = layer(x, masks[kind], self.rope_cos, self.rope_sin)
        x = self.final_norm(x)
        return cross_kv_outputs(x, cross_bias, self.cross_k, self.cross_v, self.heads, self.head_dim)


class _DecoderLayer(nn.Module):
    def __init__(self, layer: nn.Module, cfg):
        super().__init__()
        self.attn = _Attention(layer.self_attn, cfg)
        self.pre_attn, self.post_attn = _norm(layer.pre_self_attn_layernorm), _norm(layer.post_self_attn_layernorm)
        ca = layer.cross_attn
        self.cq, self.co = frozen_linear(ca.q_proj), frozen_linear(ca.o_proj)
        self.pre_cross, self.post_cross = _norm(layer.pre_cross_attn_layernorm), _norm(layer.post_cross_attn_layernorm)
        self.pre_ff, self.post_ff = _norm(layer.pre_feedforward_layernorm), _norm(layer.post_feedforward_layernorm)
        self.mlp = _GatedMLP(layer.mlp, cfg.hidden_activation)

    def forward(self, x, onehot, self_bias, cos, sin, cross_bias, ck, cv, cache_k, cache_v, in_place: bool):
        a = self.attn
        h, dh = a.heads, a.head_dim
        t = cache_k.shape[-1]
        y = self.pre_attn(x)  # [1, 1, D]
        q = a.rope(a.q(y).reshape(h, 1, dh), cos, sin)
        k_new = a.rope(a.k(y).reshape(h, 1, dh), cos, sin).reshape(h, dh, 1)
        k_all = update_cache(cache_k, k_new, onehot.reshape(1, 1, t), in_place)  # [H, Dh, T]
        v_all = update_cache(cache_v, a.v(y).reshape(h, 1, dh), onehot.reshape(1, t, 1), in_place)  # [H, T, Dh]
        x = x + self.post_attn(a.o(attend(q, k_all, v_all, self_bias, a.scale, a.softcap).reshape(1, 1, h * dh)))
        q = self.cq(self.pre_cross(x)).reshape(h, 1, dh)
        ctx = attend(q, ck.reshape(ck.shape[1:]), cv.reshape(cv.shape[1:]), cross_bias, a.scale, a.softcap)
        x = x + self.post_cross(self.co(ctx.reshape(1, 1, h * dh)))
        y = self.pre_ff(x)
        return x + self.post_ff(self.mlp(y)), k_all, v_all


class T5GemmaDecode(nn.Module):
    """One decoder step: token [1,1], position [1], cross_bias, cross K/V -> logits [1, V] (cache modes as T5Decode)."""

    def __init__(self, model: nn.Module, max_output_len: int, cache_mode: str = "buffer"):
        super().__init__()
        dec = model.model.decoder
        cfg = dec.config
        h, dh, t = cfg.num_attention_heads, cfg.head_dim, max_output_len
        self.heads, self.max_output_len, self.cache_mode = h, t, cache_mode
        self.embed = frozen_embedding(dec.embed_tokens.weight)
        self.embed_scale = cfg.hidden_size ** 0.5
        self.layers = nn.ModuleList(_DecoderLayer(l, cfg) for l in dec.layers)
        self.kinds = list(cfg.layer_types[: len(self.layers)])
        self.final_norm = _norm(dec.norm)
        head = model.get_output_embeddings()
        tied = head.weight.data_ptr() == dec.embed_tokens.weight.data_ptr()
        self.lm_head = None if tied else frozen_linear(head)
        self.final_softcap = cfg.final_logit_softcapping
        cos, sin = _rope(cfg, t)
        self.register_buffer("rope_cos_table", cos.T.contiguous())  # [Dh, T]: column p = position p
        self.register_buffer("rope_sin_table", sin.T.contiguous())
        pos = torch.arange(t)
        for kind in sorted(set(self.kinds)):  # causal (+ window) masks: [T(k), T(q)], a step takes column p
            ok = _window_ok(pos[:, None], pos[None, :], kind, cfg.sliding_window, causal=True)  # [T(q), T(k)]
            self.register_buffer(f"mask_{kind}", torch.where(ok, 0.0, NEG).T.contiguous())
        register_cache(self, len(self.layers), h, dh, t, cache_mode)

    def forward(self, token, position, cross_bias, *rest):
        t = self.max_output_len
        cross_kv, caches, onehot = decode_step(self, position, rest)  # onehot [1, T]
        cos, sin = F.linear(onehot, self.rope_cos_table), F.linear(onehot, self.rope_sin_table)  # [1, Dh]
        biases = {kind: F.linear(onehot, getattr(self, f"mask_{kind}")).reshape(1, 1, t) for kind in set(self.kinds)}
        x = self.embed(token) * self.embed_scale  # [1, 1, D]
        new_caches = []
        for i, (layer, kind) in enumerate(zip(self.layers, self.kinds)):
            x, k_all, v_all = layer(x, onehot, biases[kind], cos, sin, cross_bias, cross_kv[2 * i],
                                    cross_kv[2 * i + 1], caches[2 * i], caches[2 * i + 1], self.cache_mode == "buffer")
            new_caches += [k_all, v_all]
        x = self.final_norm(x).reshape(1, -1)
        logits = F.linear(x, self.embed.weight) if self.lm_head is None else self.lm_head(x)
        if self.final_softcap is not None:
            logits = torch.tanh(logits * (1.0 / self.final_softcap)) * self.final_softcap
        return logits if self.cache_mode == "buffer" else (logits, *new_caches)


class T5GemmaAdapter:
    family = "t5gemma"
    model_types = ("t5gemma",)
    tolerance = {"eager": 1e-4, "executorch": 1e-3}

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

    def build(self, model: nn.Module, max_input_len: int, max_output_len: int,
              cache_mode: str = "buffer") -> Seq2SeqParts:
        cfg, dcfg = model.config, model.config.decoder
        for side, c in (("encoder", cfg.encoder), ("decoder", dcfg)):
            if c.num_attention_heads % c.num_key_value_heads:
                raise InputError(f"t5gemma {side}: num_attention_heads must be a multiple of num_key_value_heads")
        enc = T5GemmaEncode(model, max_input_len).eval()
        dec = T5GemmaDecode(model, max_output_len, cache_mode).eval()
        gen = model.generation_config
        start = next((v for v in (gen.decoder_start_token_id, getattr(cfg, "decoder_start_token_id", None),
                                  gen.bos_token_id, dcfg.bos_token_id) if v is not None), 0)
        eos = gen.eos_token_id if gen.eos_token_id is not None else dcfg.eos_token_id
        pad = gen.pad_token_id if gen.pad_token_id is not None else dcfg.pad_token_id
        return Seq2SeqParts(
            encode=enc, decode=dec, num_layers=len(dec.layers), num_heads=dcfg.num_attention_heads,
            head_dim=dcfg.head_dim, vocab_size=dcfg.vocab_size, max_input_len=max_input_len,
            max_output_len=max_output_len, decoder_start_token_id=int(start),
            eos_token_id=int(eos[0] if isinstance(eos, (list, tuple)) else eos),
            pad_token_id=int(pad if pad is not None else 0), cache_mode=cache_mode, tolerance=dict(self.tolerance),
            **text_generation(model))

    def tiny_config(self, variant: str = "t5gemma", **overrides: Any):
        """A tiny random T5Gemma: 2+2 layers (one sliding-window, one full), GQA 4 query / 2 KV heads,
        a 4-token window and soft-capping on, so every feature is exercised."""
        from transformers import T5GemmaConfig

        if variant != "t5gemma":
            raise ValueError(f"unknown T5Gemma variant {variant!r}; choose from t5gemma")
        vocab = overrides.pop("vocab_size", 64)
        module = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                      sliding_window=4, max_position_embeddings=128, pad_token_id=0, eos_token_id=1,
                      bos_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                      attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
        module.update(overrides.pop("module", {}))
        return T5GemmaConfig(encoder=dict(module), decoder=dict(module), vocab_size=vocab, tie_word_embeddings=True,
                             dropout_rate=0.0, attention_dropout=0.0, **overrides)


register(T5GemmaAdapter())
