"""Cross-attention over the encoder's states ("memory") instead of per-layer K/V: the
recipe's ``cross_attention: memory`` (toolchain/split.py ``Seq2SeqParts.with_memory_cross``).

By default encode projects the final encoder states x [S, D] into every decoder layer's
cross keys and values (2 * L projections of S rows each) and decode reads them. For a long
input that projection is a large part of encode: at 512 tokens on a t5-small-sized model it is
1.6 of encode's 11.3 GMAC, and its 12 MB of outputs are copied out and read back every step.

The projections are linear, so they can move to the other side of the attention products
(the query-absorption trick): per head h, with K_h = x Wk_h^T + bk_h and V_h = x Wv_h^T + bv_h,

    scores_h = q_h K_h^T = (q_h Wk_h) x^T + q_h . bk_h    (the second term is the same for every
                                                           key position: softmax drops it)
    out_h    = p_h V_h   = (p_h x) Wv_h^T + bv_h           (p_h sums to 1)

Encode then returns x once ([1, D, S] and [1, S, D], shared by every layer) and a step does,
per layer, two extra projections of H rows: q_h Wk_h for all heads at once is one linear with
weight Wk^T [D, H*Dh] over the queries laid out block-diagonally [H, H*Dh] (row h holds q_h in
head h's columns, zeros elsewhere), and (p_h x) Wv_h^T is the value linear over ctx [H, D]
whose row h keeps head h's columns. Per step this reads the two projections' weights (what
the decoder's scheme stores) instead of the layer's K/V (fp32, 2 * S * H * Dh values), and does
H times the attention products over x; it pays off for long inputs, not short ones.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import CrossAttention, frozen_linear


def head_blocks(heads: int, head_dim: int) -> torch.Tensor:
    """[1, H, H*Dh]: row h is 1 on head h's Dh columns, 0 elsewhere."""
    return torch.kron(torch.eye(heads), torch.ones(1, head_dim)).reshape(1, heads, heads * head_dim)


class MemoryCrossAttention(nn.Module):
    """One decoder step's cross-attention over the encoder states: memory_t [1, D, S] and
    memory [1, S, D] (the encode program's outputs), `bias` the key mask [1, 1, S] (None: no
    mask). Same call as CrossAttention, whose cross_k/cross_v places these take."""

    blocks: torch.Tensor
    ones: torch.Tensor

    def __init__(self, cross: CrossAttention, k: nn.Linear, v: nn.Linear):
        super().__init__()
        h, dh = cross.heads, cross.head_dim
        self.q, self.o = cross.q, cross.o
        self.heads, self.head_dim, self.scale, self.softcap = h, dh, cross.scale, cross.softcap
        # q_h Wk_h for every head: a linear [H*Dh] -> [D] with weight Wk^T. The key bias is
        # dropped (constant over key positions, see the module docstring).
        self.k_abs = nn.Linear(k.out_features, k.in_features, bias=False)
        self.k_abs.weight = nn.Parameter(k.weight.detach().t().contiguous().float(), requires_grad=False)
        self.v_abs = frozen_linear(v)  # ctx [H, D] -> [H, H*Dh], row h's head-h columns kept
        self.register_buffer("blocks", head_blocks(h, dh))
        self.register_buffer("ones", torch.ones(1, 1, h))  # sums the H rows: [1, 1, H] @ [1, H, H*Dh]

    def forward(self, y: torch.Tensor, memory_t: torch.Tensor, memory: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        q = self.q(y)  # [1, 1, H*Dh]
        qp = self.k_abs(q * self.blocks)  # [1, H, H*Dh] block-diagonal -> [1, H, D]
        scores = torch.bmm(qp, memory_t)  # [1, H, S]
        if self.scale != 1.0:
            scores = scores * self.scale
        if self.softcap is not None:
            scores = torch.tanh(scores * (1.0 / self.softcap)) * self.softcap
        probs = torch.softmax(scores if bias is None else scores + bias, dim=-1)
        ctx = torch.bmm(probs, memory)  # [1, H, D]
        out = torch.bmm(self.ones, self.v_abs(ctx) * self.blocks)  # [1, 1, H*Dh]
        return self.o(out)


def memory_outputs(x: torch.Tensor, cross_bias: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """encode's outputs in memory mode, from the final encoder states x [1, S, D]:
    (cross_bias [1, 1, S] unless None, memory_t [1, D, S], memory [1, S, D])."""
    outs = [] if cross_bias is None else [cross_bias.contiguous()]
    return (*outs, x.transpose(1, 2).contiguous(), x.contiguous())
