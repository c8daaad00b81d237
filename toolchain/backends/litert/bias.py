"""T5's encoder position bias built in the LiteRT program by row lookups, instead of the
[H, S, S] fp32 constant (8.4 MB at t5-small's 8 heads and 512 tokens).

Why not arch/t5.RelativeBias as it is: its broadcast-multiply / reshape / slice runs on
ExecuTorch in ~1 ms, but TFLite runs SLICE on those shapes element by element (~30 ms at
512 tokens). TFLite's EMBEDDING_LOOKUP copies whole rows (one memcpy per index), so this
module builds the same table from lookups of contiguous chunks (2-core EPYC: about the cost
of writing the [H, S, S] tensor once).

The bias is Toeplitz per head: bias[h, i, j] = diagonals[h, S-1 + j - i]. Cut each row into
S/B chunks of B columns (B divides S). Chunk (h, i, c) holds columns cB..cB+B-1, i.e. the B
consecutive diagonals from o = S-1 - i + cB, so with a chunk table

    chunks [H*N, B], N = 2S - B:  row h*N + o = diagonals[h, o : o+B]

the bias viewed as [H, S, S/B, B] is one lookup of rows idx[h, i, c] = h*N + (S-1 - i) + cB,
in the output's own layout (no transpose). The index grid [H, S, S/B] is a broadcast sum of
three int32 vectors [H], [S], [S/B] computed in the program; the chunk table is stored:
B x the diagonals, 258 KB at 8 heads x 512 tokens with B = 8, against the 8.4 MB table.
Building it in the program instead (one lookup per value, from the diagonals) saved those
bytes but cost ~0.8 ms more per 512-token encode: TFLite's per-row overhead dominates
4-byte rows. Measured (2026-12-03, int8 t5-small, 512 tokens, interleaved): encode +1.1 ms
against the stored table (~31 ms), file 61.7 MB against 69.8 MB.

Converters fold every operator whose inputs are all constants (litert-torch folds the index
grid, the lookups and all, back into an [H, S, S] constant), so each index vector first gets
a runtime zero added: clamp(anchor, 0, 0) of a value of the key mask (finite: 0 or NEG)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...arch.t5 import computed_or_constant, toeplitz_diagonals

# Largest chunk: B is the largest divisor of S up to this (512 tokens: 8). Lookups copy B
# floats each: a smaller B means more of them, a larger one a larger stored chunk table
# (B = 16 was no faster at 512 tokens and stores twice the bytes).
CHUNK_MAX = 8


def _int32(values: torch.Tensor) -> torch.Tensor:
    return values.to(torch.int32).contiguous()


class GatheredBias(nn.Module):
    """bias [H, S, S] from its [H, 2S-1] diagonals by one EMBEDDING_LOOKUP (module docstring)."""

    chunks: torch.Tensor
    head_rows: torch.Tensor
    first: torch.Tensor
    chunk_cols: torch.Tensor

    def __init__(self, diagonals: torch.Tensor):
        super().__init__()
        h, w = diagonals.shape
        s = (w + 1) // 2
        b = max(k for k in range(1, min(CHUNK_MAX, s) + 1) if s % k == 0)
        n = 2 * s - b
        self.heads, self.length, self.chunk = h, s, b
        # [H, N, B] -> [H*N, B]: row h*N + o = diagonals[h, o : o+B]
        table = torch.stack([diagonals[:, k:k + n] for k in range(b)], dim=2)
        self.register_buffer("chunks", table.reshape(h * n, b).contiguous())
        # The bias's chunks: rows h*N + (S-1 - i) + cB.
        self.register_buffer("head_rows", _int32(torch.arange(h) * n))  # [H]
        self.register_buffer("first", _int32(torch.arange(s - 1, -1, -1)))  # [S]: S-1 - i
        self.register_buffer("chunk_cols", _int32(torch.arange(0, s, b)))  # [S/B]: cB

    def forward(self, anchor: torch.Tensor | None = None) -> torch.Tensor:
        h, s = self.heads, self.length
        if anchor is None:  # nothing to depend on: correct, but a converter folds it to a constant
            zero = torch.zeros(1, dtype=torch.int32)
        else:
            zero = anchor.reshape(-1)[:1].clamp(0, 0).to(torch.int32)  # [1]
        # Each vector gets the zero before any sum, so no sum has two constant operands.
        idx = ((self.head_rows + zero)[:, None, None] + (self.first + zero)[None, :, None]
               + (self.chunk_cols + zero)[None, None, :])  # [H, S, S/B]
        return F.embedding(idx, self.chunks).reshape(h, s, s)  # [H, S, S/B, B] -> [H, S, S]

    @staticmethod
    def of(full: torch.Tensor) -> GatheredBias:
        """From a bias [H, S, S] (t5.toeplitz_diagonals)."""
        return GatheredBias(toeplitz_diagonals(full))


def gathered_or_constant(full: torch.Tensor) -> torch.Tensor | nn.Module:
    """`full` [H, S, S] as a GatheredBias when that builds it bit-equal, else `full` itself,
    stored (t5.computed_or_constant)."""
    return computed_or_constant(full, GatheredBias)
