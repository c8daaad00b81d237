"""A decode step's self-attention cache: which slot a step writes, how it is written, and the
attention of one query over it.

Layouts: keys transposed, cache_k_l [H, Dh, T] (scores are bmm(q [H, 1, Dh], cache_k)), values
cache_v_l [H, T, Dh]; T = recipe.max_output_len slots, a step's `position` int64[1] picks one.

Cache modes (CacheMode in backends/base.py has the same values):

* "buffer": the caches are the decode module's buffers, blended in place
  (``cache * keep + new * onehot``, ``keep = 1 - onehot`` made once per step and shared by
  every layer: SlotMasks). Every op stays inside a delegate; Core ML states take it.
* "io": the same blend on caches that are decode's inputs, returned as outputs (runtimes
  without state: TFLite, ONNX).
* "slot": buffers, but a step attends over the cache as it was plus its own k/v
  (attend_with_step, with slot_bias), and its k/v are written into the slot after the whole
  step (write_slot: index_put, which ExecuTorch's reinplace pass makes an in-place write). A
  blend reads and rewrites every layer's whole cache per step, and its write-back into the
  buffer is one more whole-cache copy outside the delegate; on a t5-small-sized decoder
  with 32 slots that was ~3 MB of traffic and 48 operators per token (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

NEG = -1e9  # masks use -1e9, not -inf, so an all-masked row can never produce NaN


# Where decode's self-attention cache lives (backends.base.CacheMode holds the same values):
# "buffer" state blended in place, "slot" state whose one slot is written after the step,
# "io" explicit inputs and outputs.
CACHE_MODES = ("buffer", "slot", "io")


def register_cache(module: nn.Module, layers: int, heads: int, head_dim: int, length: int, cache_mode: str) -> None:
    """Give a decode module its cache slots: `positions` (int64 [T], what a step's position
    is compared with to pick its slot) and, in "buffer" and "slot" mode, the per-layer
    self-attention cache buffers (cache_k_l [H, Dh, T], cache_v_l [H, T, Dh], zero-initialised)."""
    if cache_mode not in CACHE_MODES:
        raise ValueError(f"cache_mode must be one of {', '.join(CACHE_MODES)}, got {cache_mode!r}")
    module.register_buffer("positions", torch.arange(length, dtype=torch.long))
    if cache_mode != "io":
        for i in range(layers):
            module.register_buffer(f"cache_k_{i}", torch.zeros(heads, head_dim, length))
            module.register_buffer(f"cache_v_{i}", torch.zeros(heads, length, head_dim))


def position_onehot(position: torch.Tensor, length: int, arange: torch.Tensor) -> torch.Tensor:
    """position int64[1] -> float[1, T] with a single 1 at `position`."""
    return (arange == position).to(torch.float32).reshape(1, length)


class SlotMasks(NamedTuple):
    """A decode step's cache slot in the two layouts the caches broadcast it in, made once per
    step and shared by every layer: keys [H, Dh, T] take (onehot_k, keep_k) [1, 1, T], values
    [H, T, Dh] take (onehot_v, keep_v) [1, T, 1]; keep = 1 - onehot."""

    onehot_k: torch.Tensor
    keep_k: torch.Tensor
    onehot_v: torch.Tensor
    keep_v: torch.Tensor


def slot_masks(onehot: torch.Tensor) -> SlotMasks:
    """onehot float[1, T] (position_onehot) -> the step's SlotMasks."""
    t = onehot.shape[-1]
    k, v = onehot.reshape(1, 1, t), onehot.reshape(1, t, 1)
    return SlotMasks(k, 1.0 - k, v, 1.0 - v)


def update_cache(cache: torch.Tensor, new: torch.Tensor, onehot: torch.Tensor, keep: torch.Tensor,
                 in_place: bool = True) -> torch.Tensor:
    """Write `new` into one slot of `cache` (in place if asked) and return the updated cache.

    cache [H, T, Dh] with new [H, 1, Dh] and onehot/keep [1, T, 1], or (keys, transposed)
    cache [H, Dh, T] with new [H, Dh, 1] and onehot/keep [1, 1, T]. A masked blend rather
    than index_copy_ keeps the whole update inside the XNNPACK delegate (three operators).
    """
    updated = cache * keep + new * onehot
    if in_place:
        cache.copy_(updated)
    return updated


def slot_bias(row: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """A step's bias row [R, 1, T] (its row of the self-attention table: relative bias and
    causal mask) -> the [R, 1, T+1] bias attend_with_step takes: the cache's slots with the
    step's own slot masked (it holds an older step, or zeros), then the bias the row gives
    the step's own position. onehot float[1, T] marks the slot. Once per step and layer kind."""
    r, _, t = row.shape
    # row[:, :, position] as a batch-1 bmm (a linear whose weight is computed leaves the delegate)
    own = torch.bmm(row.reshape(1, r, t), onehot.reshape(1, t, 1)).reshape(r, 1, 1)
    return torch.cat([row + onehot.reshape(1, 1, t) * NEG, own], dim=-1)


def attend_with_step(q: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor, k_new_t: torch.Tensor,
                     v_new: torch.Tensor, bias: torch.Tensor, scale: float,
                     softcap: float | None = None) -> torch.Tensor:
    """One query's attention over a cache that does not hold this step yet, plus the step.

    q [H, 1, Dh], k_t [H, Dh, T] and v [H, T, Dh] (the cache), k_new_t [H, Dh, 1] and v_new
    [H, 1, Dh] (this step), bias [R, 1, T+1] (the cache's slots, then the step's own key)
    -> [H, 1, Dh]. The same as `attend` over the cache with the step written into its slot,
    without reading and rewriting the cache: only the [H, 1, T+1] scores are concatenated.
    """
    t = k_t.shape[-1]
    scores = torch.cat([torch.bmm(q, k_t), torch.bmm(q, k_new_t)], dim=-1)  # [H, 1, T+1]
    if scale != 1.0:
        scores = scores * scale
    if softcap is not None:
        scores = torch.tanh(scores * (1.0 / softcap)) * softcap
    probs = torch.softmax(scores + bias, dim=-1)
    return torch.bmm(probs[:, :, :t], v) + probs[:, :, t:] * v_new


def write_slot(cache_k: torch.Tensor, cache_v: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
               position: torch.Tensor) -> None:
    """Write one step's key column k_new [H, Dh, 1] into cache_k [H, Dh, T] and its value row
    v_new [H, 1, Dh] into cache_v [H, T, Dh] at `position` (int64[1]), in place. Exported as
    index_put; ExecuTorch's reinplace pass makes it write the buffer in place (no copy)."""
    cache_k[:, :, position] = k_new
    cache_v[:, position, :] = v_new
