"""The memory roofline of one decode step: bytes that must be read per generated token
(the weights the step multiplies by, plus the K/V it attends over) divided by this
machine's measured memory bandwidth. A step cannot be faster than that unless the
bytes sit in cache (the demo's 3.7 MB do: its bound says little).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

# Read bandwidth noted on this machine kind when idle (~15 GB/s; this method has read up to
# 24 GB/s on a quiet moment): used as a second, tighter bound only when a run on a busy
# machine measures less (a shared machine only ever lowers the samples).
IDLE_GBS = 15.0

# The recipes' group_size for the 4-bit schemes.
GROUP = 32


def weight_bytes(rows: int, cols: int, bits: int, group: int = GROUP) -> float:
    """Bytes of a [rows, cols] weight at 32 (fp32), 8 (8da8w) or 4 (8da4w) bits, scales
    included, as the XNNPACK artifact stores them (the toolchain's own estimate)."""
    from toolchain.backends.executorch.quantize import stored_bytes
    from toolchain.schemes import QuantScheme

    scheme = {32: QuantScheme.NONE, 8: QuantScheme.W8A8_DYNAMIC, 4: QuantScheme.W4A8_DYNAMIC}.get(bits)
    if scheme is None:
        raise ValueError(bits)
    return float(stored_bytes(rows, cols, scheme, group))


# Row precision -> (bits of the decoder's linears, bits of the lm head).
PRECISION = {"fp32": (32, 32), "int8": (8, 8), "int4": (4, 8), "mixed": (4, 8)}


def precision_of(recipe: str) -> str:
    """Map a row's recipe name (fp32, int8-in512, int8-dynamic, mixed-in512, ...) to PRECISION."""
    for p in ("mixed", "int4", "int8", "fp32"):
        if recipe.startswith(p):
            return p
    raise ValueError(recipe)


def t5_decode_bytes(config: dict, precision: str, enc_len: int, out_len: int, cross: str = "kv") -> float:
    """Bytes read by one T5 decoder step: every decoder linear (self q/k/v/o, cross q/o, FF),
    the lm head, the cross K/V of `enc_len` positions and the self-attention K/V of the
    average generated length (fp32 K/V). `cross` is the recipe's cross_attention: "memory"
    reads the cross k/v projections' weights per step and the encoder states (memory_t and
    memory, fp32, shared by every layer: once) instead of each layer's cross K/V."""
    d, h, dh, dff = config["d_model"], config["num_heads"], config["d_kv"], config["d_ff"]
    layers = config.get("num_decoder_layers") or config["num_layers"]
    inner = h * dh
    ff = 3 if str(config.get("feed_forward_proj", "relu")).startswith("gated") else 2
    lin_bits, head_bits = PRECISION[precision]
    per_layer = (6 * weight_bytes(inner, d, lin_bits)  # self q,k,v,o + cross q,o (cross k,v: in encode)
                 + ff * weight_bytes(dff, d, lin_bits))
    head = weight_bytes(config["vocab_size"], d, head_bits)
    if cross == "memory":
        per_layer += 2 * weight_bytes(inner, d, lin_bits)
    return layers * per_layer + head + t5_kv_bytes(config, enc_len, out_len, cross)


def t5_kv_bytes(config: dict, enc_len: int, out_len: int, cross: str = "kv") -> float:
    """The fp32 K/V (or encoder states) one T5 decoder step reads (see t5_decode_bytes)."""
    d, inner = config["d_model"], config["num_heads"] * config["d_kv"]
    layers = config.get("num_decoder_layers") or config["num_layers"]
    self_kv = layers * 2 * inner * (out_len + 1) / 2 * 4
    if cross == "memory":
        return 2 * d * enc_len * 4 + self_kv
    return layers * 2 * inner * enc_len * 4 + self_kv


def llama_decode_bytes(config: dict, precision: str, prompt_len: int, out_len: int) -> float:
    """Bytes read by one decoder-only step: every layer's q/k/v/o and SwiGLU, the lm head,
    and the K/V of the prompt plus the average generated length."""
    d, layers, dff = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    inner = config["num_attention_heads"] * config.get("head_dim", d // config["num_attention_heads"])
    kv_inner = config["num_key_value_heads"] * config.get("head_dim", d // config["num_attention_heads"])
    lin_bits, head_bits = PRECISION[precision]
    per_layer = (2 * weight_bytes(inner, d, lin_bits) + 2 * weight_bytes(kv_inner, d, lin_bits)
                 + 3 * weight_bytes(dff, d, lin_bits))
    head = weight_bytes(config["vocab_size"], d, head_bits)
    kv = layers * 2 * kv_inner * (prompt_len + (out_len + 1) / 2) * 4
    return layers * per_layer + head + kv


def read_config(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "config.json").read_text())


def measure_bandwidth(threads: int = 2, mbytes: int = 512, repeats: int = 7) -> dict[str, float]:
    """Sustained read bandwidth (GB/s) with `threads` threads: the best of `repeats` full
    reductions (torch's vectorized, multi-threaded sum and dot) over a buffer far larger than
    the last-level cache, and copy bandwidth (read + write counted) for reference."""
    import torch

    torch.set_num_threads(threads)
    n = mbytes * (1 << 20) // 4
    x = torch.ones(n, dtype=torch.float32)
    y = torch.empty_like(x)
    best_read = best_copy = float("inf")
    for _ in range(repeats):
        for read in (x.sum, lambda: torch.dot(x, x)):  # whichever streams faster
            t = time.perf_counter()
            read()
            best_read = min(best_read, time.perf_counter() - t)
        t = time.perf_counter()
        y.copy_(x)
        best_copy = min(best_copy, time.perf_counter() - t)
    nbytes = n * 4
    return {"read_gbs": nbytes / best_read / 1e9, "copy_gbs": 2 * nbytes / best_copy / 1e9,
            "buffer_mb": mbytes, "threads": threads}
