"""``edgeseq::rel_attention``: one encoder self-attention layer as one graph op (the recipe's
``encoder_attention: fused``), for relative-position biases that are Toeplitz per head (T5).

q, k, v [S, H*Dh] or [1, S, H*Dh] (token-major: the projections' outputs, no head transposes), diagonals
[H, 2S-1] (bias[h, i, j] = diagonals[h, S-1 + j - i], so the [H, S, S] table is never built),
key_bias [S] (the key mask: 0 for tokens, NEG for padding) -> softmax(q k^T + bias) v per head,
q's shape. Defined here for torch (export traces it; eager runs the fp32 reference below); the
ExecuTorch kernel is C++ (backends/executorch/csrc, loaded by backends/executorch/kernels.py).
"""

from __future__ import annotations

import torch

_SCHEMA = "(Tensor q, Tensor k, Tensor v, Tensor diagonals, Tensor key_bias, int heads)"

_lib = torch.library.Library("edgeseq", "DEF")  # noqa: TOR901 (a plain op library: no autograd)
_lib.define(f"rel_attention{_SCHEMA} -> Tensor")
_lib.define(f"rel_attention.out{_SCHEMA[:-1]}, *, Tensor(a!) out) -> Tensor(a!)")


def toeplitz_table(diagonals: torch.Tensor) -> torch.Tensor:
    """diagonals [H, 2S-1] -> the bias [H, S, S] they stand for: bias[h, i, j] = diagonals[h, S-1 + j - i]."""
    s = (diagonals.shape[-1] + 1) // 2
    i = torch.arange(s, device=diagonals.device)
    return diagonals[:, (s - 1) + i[None, :] - i[:, None]]


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, diagonals: torch.Tensor, key_bias: torch.Tensor,
              heads: int) -> torch.Tensor:
    """The op in fp32 torch: what eager runs and what the kernel is tested against."""
    s, hd = q.shape[-2], q.shape[-1]
    dh = hd // heads

    def split(x: torch.Tensor) -> torch.Tensor:  # [.., S, H*Dh] -> [H, S, Dh]
        return x.reshape(s, heads, dh).transpose(0, 1)

    bias = toeplitz_table(diagonals.reshape(heads, 2 * s - 1))  # [H, S, S]
    scores = torch.bmm(split(q), split(k).transpose(1, 2)) + bias + key_bias.reshape(1, 1, s)
    return torch.bmm(torch.softmax(scores, dim=-1), split(v)).transpose(0, 1).reshape(q.shape)


T = torch.Tensor


def _functional(q: T, k: T, v: T, diagonals: T, key_bias: T, heads: int) -> T:
    return reference(q, k, v, diagonals, key_bias, heads)


def _out(q: T, k: T, v: T, diagonals: T, key_bias: T, heads: int, *, out: T) -> T:
    out.resize_(q.shape)
    return out.copy_(reference(q, k, v, diagonals, key_bias, heads))


def _meta(q: T, k: T, v: T, diagonals: T, key_bias: T, heads: int) -> T:
    return torch.empty_like(q)


_lib.impl("rel_attention", _functional, "CompositeExplicitAutograd")
_lib.impl("rel_attention", _meta, "Meta")
_lib.impl("rel_attention.out", _out, "CompositeExplicitAutograd")


def rel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, diagonals: torch.Tensor,
                  key_bias: torch.Tensor, heads: int) -> torch.Tensor:
    return torch.ops.edgeseq.rel_attention(q, k, v, diagonals, key_bias, heads)
