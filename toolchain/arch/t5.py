"""T5 family (T5 v1.0 ReLU, v1.1/Flan gated-GELU, tied or untied heads, mT5).

What is T5-specific: RMSNorm without bias before each sub-block (pre-norm), no 1/sqrt(Dh)
attention scale, a learned relative-position bias (layer 0's table, shared by all layers of
a stack), and the decoder output scaled by d_model**-0.5 when the head is tied
(``config.scale_decoder_outputs`` in transformers 5; mT5 never scales).

Relative-position bias is a function of positions only, so it is computed here, once, for
the recipe's fixed lengths and stored as constants:
  encoder  self_bias_full [H, S, S], added to the key mask; past 256 KiB (8 heads: S > 90)
           the program computes it from its 2S-1 diagonals instead (RelativeBias)
  decoder  self_bias_full [H*T, T] (layers.step_table of the bias plus the causal mask):
           a step takes its row with F.linear(onehot(position), table) -> [1, H*T]
           (a matmul XNNPACK runs) instead of a gather.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import layers
from .base import Adapter, Model, register, tied_head
from .layers import frozen_embedding, frozen_linear, toeplitz_diagonals
from .programs import DEFAULT_KIND, Decoder, TextEncoder

# Largest encoder bias stored as a constant (t5-small's 8 heads: up to 90 tokens; the demo's
# 4 heads x 64 tokens: 64 KiB). Past it the program computes the bias: both the stored bytes
# and the cost of computing it grow with S^2, and at t5-small's 512 tokens the stored
# [8, 512, 512] fp32 table is 8.4 MB (14% of the int8 file) while computing it costs ~1 ms of
# a ~28 ms encode (bit-equal; measured on a 2-core EPYC, 2026-12-03).
STORED_BIAS_MAX_BYTES = 256 << 10


class RelativeBias(nn.Module):
    """T5's encoder self-attention bias computed in the program from its diagonals: bias
    [H, S(q), S(k)] is Toeplitz per head, bias[h, i, j] = diagonals[h, S-1 + j - i], so the
    [H, 2S-1] diagonals (32 KB at t5-small's 8 heads and 512 tokens) hold all of it.

    How, with ops every runtime delegates (broadcast multiply, reshape, slice; no gather, no
    strides): pad the diagonals to P = 2S columns and repeat them down S rows ([H, S, P]);
    read the first S*(P-1) values of each head back as rows of P-1: element (r, c) sits at
    flat r*(P-1) + c, which holds column (c - r) mod P of the padded diagonals, so each row
    starts one column earlier. Columns S-1..2S-2 are exactly diagonals[S-1 + c' - r] (no
    wrap-around). Cost: ~2.5 passes over an [H, S, S] tensor per encode, no weights."""

    diagonals: torch.Tensor
    rows: torch.Tensor

    def __init__(self, diagonals: torch.Tensor):
        super().__init__()
        self.length = (diagonals.shape[1] + 1) // 2
        self.register_buffer("diagonals", F.pad(diagonals, (0, 1))[:, None, :].contiguous())  # [H, 1, P]
        self.register_buffer("rows", torch.ones(1, self.length, 1))  # the repeat, as a broadcast multiply

    def forward(self, anchor: torch.Tensor | None = None) -> torch.Tensor:  # anchor: unused (_Program.table)
        s = self.length
        h, _, p = self.diagonals.shape
        repeated = (self.diagonals * self.rows).reshape(h, s * p)  # [H, S*P]
        return repeated[:, : s * (p - 1)].reshape(h, s, p - 1)[:, :, s - 1:]

    @staticmethod
    def of(full: torch.Tensor) -> RelativeBias:
        """From a stored-form bias [H, S, S] (toeplitz_diagonals)."""
        return RelativeBias(toeplitz_diagonals(full))


def computed_or_constant(full: torch.Tensor, build: Callable[[torch.Tensor], nn.Module]) -> torch.Tensor | nn.Module:
    """``build(toeplitz_diagonals(full))``, a module computing `full` [H, S, S] in the program,
    when it computes it bit-equal (checked here, at build time); else `full` itself, stored
    (a table that is not Toeplitz is never approximated)."""
    computed = build(toeplitz_diagonals(full))
    with torch.no_grad():
        return computed if torch.equal(computed(), full) else full


def encoder_bias(full: torch.Tensor) -> torch.Tensor | nn.Module:
    """The encoder's [H, S, S] bias as a constant, or past STORED_BIAS_MAX_BYTES as a
    RelativeBias (computed_or_constant)."""
    if full.numel() * full.element_size() <= STORED_BIAS_MAX_BYTES:
        return full
    return computed_or_constant(full, RelativeBias)


def _ff(hf_ff: Any, act: str) -> layers.FeedForward:
    """v1.0: wo(act(wi(x))); gated v1.1/mT5: wo(act(wi_0(x)) * wi_1(x))."""
    if hasattr(hf_ff, "wi_0"):
        return layers.FeedForward(frozen_linear(hf_ff.wi_1), frozen_linear(hf_ff.wo), act,
                                  gate=frozen_linear(hf_ff.wi_0))
    return layers.FeedForward(frozen_linear(hf_ff.wi), frozen_linear(hf_ff.wo), act)


def _variant(cfg: dict[str, Any]) -> str:
    if cfg.get("model_type") == "mt5":
        return "mt5"
    return "v1.1 (gated-gelu)" if str(cfg.get("feed_forward_proj", "relu")).startswith("gated") else "v1.0 (relu)"


@register
class T5(Adapter):
    family = "t5"
    model_types = ("t5", "mt5")
    default_eos = 1

    def describe(self, cfg: dict[str, Any]) -> dict[str, Any]:
        return {
            "family": self.family, "variant": _variant(cfg),
            "encoder_layers": cfg.get("num_layers"),
            "decoder_layers": cfg.get("num_decoder_layers") or cfg.get("num_layers"),
            "heads": cfg.get("num_heads"), "d_model": cfg.get("d_model"), "d_ff": cfg.get("d_ff"),
            "head_dim": cfg.get("d_kv"), "vocab_size": cfg.get("vocab_size"),
            "activation": cfg.get("feed_forward_proj", "relu"),
        }

    def programs(self, model: Model, max_input_len: int, max_output_len: int,
                 cache_mode: str) -> tuple[TextEncoder, Decoder]:
        cfg = model.config
        h, dh, t, act = cfg.num_heads, cfg.d_kv, max_output_len, cfg.dense_act_fn
        embed = frozen_embedding(model.shared.weight)  # one module in both programs

        def norm(weight: Any) -> layers.RMSNorm:
            return layers.RMSNorm(weight, cfg.layer_norm_epsilon)

        def attn(cls: type[layers.AttentionT], a: Any) -> layers.AttentionT:
            return cls(frozen_linear(a.q), frozen_linear(a.k), frozen_linear(a.v), frozen_linear(a.o), h, dh)

        def rel_bias(stack: Any, length: int) -> torch.Tensor:  # [H, L(q), L(k)]
            with torch.no_grad():
                return stack.block[0].layer[0].SelfAttention.compute_bias(length, length)[0].detach().clone().float()

        # A T5 block: layer[0] self-attention, [layer[1] cross-attention,] then the feed-forward,
        # each with its own RMSNorm in front.
        def encoder_layer(b: Any) -> layers.EncoderLayer:
            return layers.EncoderLayer(attn(layers.SelfAttention, b.layer[0].SelfAttention),
                                       _ff(b.layer[1].DenseReluDense, act), "pre",
                                       [norm(sub.layer_norm.weight) for sub in b.layer[:2]])

        def decoder_layer(b: Any) -> layers.DecoderLayer:
            ca = b.layer[1].EncDecAttention
            return layers.DecoderLayer(attn(layers.CachedSelfAttention, b.layer[0].SelfAttention),
                                       layers.CrossAttention(frozen_linear(ca.q), frozen_linear(ca.o), h, dh),
                                       _ff(b.layer[2].DenseReluDense, act), "pre",
                                       [norm(sub.layer_norm.weight) for sub in b.layer[:3]])

        enc, dec = model.encoder, model.decoder
        encode = TextEncoder(
            embed, [encoder_layer(b) for b in enc.block], norm(enc.final_layer_norm.weight),
            [frozen_linear(b.layer[1].EncDecAttention.k) for b in dec.block],
            [frozen_linear(b.layer[1].EncDecAttention.v) for b in dec.block], h, dh,
            self_bias={DEFAULT_KIND: encoder_bias(rel_bias(enc, max_input_len))})
        # transformers 5: T5 records it as scale_decoder_outputs; mT5 never scales.
        scale = getattr(cfg, "scale_decoder_outputs", cfg.model_type != "mt5")
        decode = Decoder(embed, [decoder_layer(b) for b in dec.block], norm(dec.final_layer_norm.weight),
                         tied_head(model, model.shared.weight), h, dh, t, cache_mode,
                         self_bias={DEFAULT_KIND: layers.step_table(rel_bias(dec, t) + layers.causal_mask(t))},
                         out_scale=cfg.d_model ** -0.5 if scale else 1.0)
        return encode, decode
