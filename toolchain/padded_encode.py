"""Shorter encode programs (recipe ``encode_lengths``) behind the full-length contract."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .arch.layers import NEG


class PaddedEncode(nn.Module):
    """A text family's encode program built for `length` input positions, with its outputs
    padded to the `full` (max_input_len) shapes decode takes, so one decode serves every
    encode length: cross_bias [1, 1, L] -> [1, 1, S] with NEG on positions L..S-1 (decode's
    cross-attention gives them zero weight), cross_k [H, Dh, L] -> [H, Dh, S] and
    cross_v [H, L, Dh] -> [H, S, Dh] with zeros. Inputs: input_ids and
    attention_mask int64[1, L]. Exact for any input of at most L tokens: the encoder only
    ever attends among the real tokens (a padded position is masked either way)."""

    def __init__(self, inner: nn.Module, length: int, full: int):
        super().__init__()
        self.inner, self.length, self.full = inner, length, full

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cross_bias, *kv = self.inner(input_ids, attention_mask)
        pad = self.full - self.length
        out = [F.pad(cross_bias, (0, pad), value=NEG)]
        for i, t in enumerate(kv):  # even: keys [.., Dh, L] pad the last dim; odd: values [.., L, Dh]
            out.append(F.pad(t, (0, pad)) if i % 2 == 0 else F.pad(t, (0, 0, 0, pad)))
        return tuple(out)
