"""T5 family (T5 v1.0 ReLU, v1.1/Flan gated-GELU, tied or untied heads, mT5).

What is T5-specific: RMSNorm without bias, no 1/sqrt(Dh) attention scale, a
learned relative-position bias (layer 0's table, shared by all layers of a
stack), and the decoder output scaled by d_model**-0.5 when the head is tied
(``config.scale_decoder_outputs`` in transformers 5).

Relative-position bias is a function of positions only, so it is computed here,
once, for the recipe's fixed lengths and stored as constants:
  encoder  enc_bias  [H, S, S]
  decoder  step_bias_table [H*T, T]: column p is the flattened [H, T] bias row of query
           position p (causal mask included), so a step selects its row with
           F.linear(onehot(position), step_bias_table) -> [1, H*T] (a matmul XNNPACK runs)
           instead of a gather.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import register, text_generation
from ..split import (NEG, RMSNorm, Seq2SeqParts, activation, attend, cross_kv_outputs, decode_step,
                     frozen_linear, heads_first, heads_last, register_cache, update_cache)


class _FeedForward(nn.Module):
    def __init__(self, hf_ff: nn.Module, act_name: str):
        super().__init__()
        self.gated = hasattr(hf_ff, "wi_0")
        if self.gated:
            self.wi_0, self.wi_1 = frozen_linear(hf_ff.wi_0), frozen_linear(hf_ff.wi_1)
        else:
            self.wi = frozen_linear(hf_ff.wi)
        self.wo = frozen_linear(hf_ff.wo)
        self.act = activation(act_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(h)


class _EncoderLayer(nn.Module):
    def __init__(self, block: nn.Module, heads: int, act: str, eps: float):
        super().__init__()
        sa = block.layer[0].SelfAttention
        self.heads = heads
        self.norm1 = RMSNorm(block.layer[0].layer_norm.weight, eps)
        self.q, self.k, self.v, self.o = (frozen_linear(sa.q), frozen_linear(sa.k),
                                          frozen_linear(sa.v), frozen_linear(sa.o))
        self.norm2 = RMSNorm(block.layer[1].layer_norm.weight, eps)
        self.ff = _FeedForward(block.layer[1].DenseReluDense, act)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        q, k, v = (heads_first(p(h), self.heads) for p in (self.q, self.k, self.v))
        x = x + self.o(heads_last(attend(q, k.transpose(1, 2), v, bias, 1.0)))
        return x + self.ff(self.norm2(x))


class T5Encode(nn.Module):
    """input_ids/attention_mask [1, S] -> cross_bias [1, 1, S], per-layer cross K/V."""

    def __init__(self, model: nn.Module, embed: nn.Embedding, max_input_len: int):
        super().__init__()
        cfg = model.config
        self.heads, self.head_dim = cfg.num_heads, cfg.d_kv
        self.embed = embed
        self.layers = nn.ModuleList(_EncoderLayer(b, cfg.num_heads, cfg.dense_act_fn, cfg.layer_norm_epsilon)
                                    for b in model.encoder.block)
        self.final_norm = RMSNorm(model.encoder.final_layer_norm.weight, cfg.layer_norm_epsilon)
        with torch.no_grad():
            rel = model.encoder.block[0].layer[0].SelfAttention.compute_bias(max_input_len, max_input_len)
        self.register_buffer("enc_bias", rel[0].detach().clone().float())  # [H, S, S]
        # Cross-attention projections of every decoder layer run here, once per input.
        self.cross_k = nn.ModuleList(frozen_linear(b.layer[1].EncDecAttention.k) for b in model.decoder.block)
        self.cross_v = nn.ModuleList(frozen_linear(b.layer[1].EncDecAttention.v) for b in model.decoder.block)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        s = input_ids.shape[1]
        cross_bias = ((1.0 - attention_mask.to(torch.float32)) * NEG).reshape(1, 1, s)
        x = self.embed(input_ids)
        bias = self.enc_bias + cross_bias  # [H, S, S]: keys at padded positions masked
        for layer in self.layers:
            x = layer(x, bias)
        x = self.final_norm(x)
        return cross_kv_outputs(x, cross_bias, self.cross_k, self.cross_v, self.heads, self.head_dim)


class _DecoderLayer(nn.Module):
    def __init__(self, block: nn.Module, heads: int, head_dim: int, max_output_len: int, act: str, eps: float):
        super().__init__()
        sa, ca = block.layer[0].SelfAttention, block.layer[1].EncDecAttention
        self.heads, self.head_dim = heads, head_dim
        self.norm1 = RMSNorm(block.layer[0].layer_norm.weight, eps)
        self.q, self.k, self.v, self.o = (frozen_linear(sa.q), frozen_linear(sa.k),
                                          frozen_linear(sa.v), frozen_linear(sa.o))
        self.norm2 = RMSNorm(block.layer[1].layer_norm.weight, eps)
        self.cq, self.co = frozen_linear(ca.q), frozen_linear(ca.o)
        self.norm3 = RMSNorm(block.layer[2].layer_norm.weight, eps)
        self.ff = _FeedForward(block.layer[2].DenseReluDense, act)

    def forward(self, x, onehot, self_bias, cross_bias, ck, cv, cache_k, cache_v, in_place: bool):
        h, dh = self.heads, self.head_dim
        t = cache_k.shape[-1]
        y = self.norm1(x)  # [1, 1, D]
        q = self.q(y).reshape(h, 1, dh)
        k_new = self.k(y).reshape(h, dh, 1)
        v_new = self.v(y).reshape(h, 1, dh)
        k_all = update_cache(cache_k, k_new, onehot.reshape(1, 1, t), in_place)  # [H, Dh, T]
        v_all = update_cache(cache_v, v_new, onehot.reshape(1, t, 1), in_place)  # [H, T, Dh]
        x = x + self.o(attend(q, k_all, v_all, self_bias, 1.0).reshape(1, 1, h * dh))
        q = self.cq(self.norm2(x)).reshape(h, 1, dh)
        x = x + self.co(attend(q, ck.reshape(ck.shape[1:]), cv.reshape(cv.shape[1:]), cross_bias, 1.0).reshape(1, 1, h * dh))
        return x + self.ff(self.norm3(x)), k_all, v_all


class T5Decode(nn.Module):
    """One decoder step: token [1,1], position [1], cross_bias, cross K/V -> logits [1, V].

    cache_mode "buffer": the self-attention cache is registered buffers updated in
    place (runtimes with mutable state). cache_mode "io": the caches are extra
    inputs after the cross K/V (cache_k_0, cache_v_0, ...) and the updated caches
    are extra outputs after the logits (runtimes without state: TFLite, ONNX).
    """

    def __init__(self, model: nn.Module, embed: nn.Embedding, max_output_len: int, cache_mode: str = "buffer"):
        super().__init__()
        cfg = model.config
        h, dh, t = cfg.num_heads, cfg.d_kv, max_output_len
        self.heads, self.max_output_len, self.cache_mode = h, t, cache_mode
        self.embed = embed
        self.layers = nn.ModuleList(_DecoderLayer(b, h, dh, t, cfg.dense_act_fn, cfg.layer_norm_epsilon)
                                    for b in model.decoder.block)
        self.final_norm = RMSNorm(model.decoder.final_layer_norm.weight, cfg.layer_norm_epsilon)
        tied = model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()
        # A tied head reuses the embedding Parameter: one tensor, stored once.
        self.lm_head = None if tied else frozen_linear(model.lm_head)
        # transformers 5: T5 records it as scale_decoder_outputs; mT5 never scales.
        scale = getattr(cfg, "scale_decoder_outputs", cfg.model_type != "mt5")
        self.out_scale = cfg.d_model ** -0.5 if scale else 1.0
        with torch.no_grad():
            rel = model.decoder.block[0].layer[0].SelfAttention.compute_bias(t, t)[0].float()  # [H, T(q), T(k)]
        causal = torch.triu(torch.full((t, t), NEG), diagonal=1)  # key after query -> masked
        full = rel + causal
        self.register_buffer("step_bias_table", full.permute(0, 2, 1).reshape(h * t, t).contiguous())
        register_cache(self, len(self.layers), h, dh, t, cache_mode)

    def forward(self, token, position, cross_bias, *rest):
        t, h = self.max_output_len, self.heads
        cross_kv, caches, onehot = decode_step(self, position, rest)  # onehot [1, T]
        self_bias = F.linear(onehot, self.step_bias_table).reshape(h, 1, t)
        x = self.embed(token)  # [1, 1, D]
        new_caches = []
        for i, layer in enumerate(self.layers):
            x, k_all, v_all = layer(x, onehot, self_bias, cross_bias, cross_kv[2 * i], cross_kv[2 * i + 1],
                                    caches[2 * i], caches[2 * i + 1], self.cache_mode == "buffer")
            new_caches += [k_all, v_all]
        x = self.final_norm(x).reshape(1, -1)
        if self.out_scale != 1.0:
            x = x * self.out_scale
        logits = F.linear(x, self.embed.weight) if self.lm_head is None else self.lm_head(x)
        return logits if self.cache_mode == "buffer" else (logits, *new_caches)


def _variant(cfg: dict[str, Any]) -> str:
    if cfg.get("model_type") == "mt5":
        return "mt5"
    return "v1.1 (gated-gelu)" if str(cfg.get("feed_forward_proj", "relu")).startswith("gated") else "v1.0 (relu)"


class T5Adapter:
    family = "t5"
    model_types = ("t5", "mt5")
    # Parity tolerance on logits, eager split vs transformers, per runtime (fp32).
    tolerance = {"eager": 1e-4, "executorch": 1e-3}

    def describe(self, cfg: dict[str, Any]) -> dict[str, Any]:
        return {
            "family": self.family, "variant": _variant(cfg),
            "encoder_layers": cfg.get("num_layers"), "decoder_layers": cfg.get("num_decoder_layers") or cfg.get("num_layers"),
            "heads": cfg.get("num_heads"), "d_model": cfg.get("d_model"), "d_ff": cfg.get("d_ff"),
            "head_dim": cfg.get("d_kv"), "vocab_size": cfg.get("vocab_size"),
            "activation": cfg.get("feed_forward_proj", "relu"),
        }

    def build(self, model: nn.Module, max_input_len: int, max_output_len: int,
              cache_mode: str = "buffer") -> Seq2SeqParts:
        cfg = model.config
        emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        emb.weight = nn.Parameter(model.shared.weight.detach().clone().float(), requires_grad=False)
        enc = T5Encode(model, emb, max_input_len).eval()
        dec = T5Decode(model, emb, max_output_len, cache_mode).eval()
        gen = getattr(model, "generation_config", None)
        start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else cfg.pad_token_id
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else getattr(gen, "eos_token_id", 1)
        return Seq2SeqParts(
            encode=enc, decode=dec, num_layers=len(dec.layers), num_heads=cfg.num_heads, head_dim=cfg.d_kv,
            vocab_size=cfg.vocab_size, max_input_len=max_input_len, max_output_len=max_output_len,
            decoder_start_token_id=int(start if start is not None else 0),
            eos_token_id=int(eos[0] if isinstance(eos, (list, tuple)) else eos),
            pad_token_id=int(cfg.pad_token_id if cfg.pad_token_id is not None else 0),
            cache_mode=cache_mode, tolerance=dict(self.tolerance), **text_generation(model))

    def tiny_config(self, variant: str = "v1.0", **overrides: Any):
        """Tiny random configs of each variant the tests cover."""
        from transformers import MT5Config, T5Config

        base = dict(vocab_size=96, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2,
                    num_decoder_layers=2, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                    dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        kinds = {
            "v1.0": (T5Config, dict(feed_forward_proj="relu", tie_word_embeddings=True)),
            "v1.1": (T5Config, dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
            "mt5": (MT5Config, dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
        }
        if variant not in kinds:
            raise ValueError(f"unknown T5 variant {variant!r}; choose from {', '.join(kinds)}")
        cls, extra = kinds[variant]
        return cls(**{**base, **extra, **overrides})


register(T5Adapter())
