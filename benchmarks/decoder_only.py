"""A decoder-only model through the same ExecuTorch/XNNPACK lowering as edgeseq's T5 split,
for the "Return of the Encoder" comparison in compare.py (edgeseq itself only takes
encoder-decoder checkpoints).

The model is a Llama-architecture config (RMSNorm, RoPE, SwiGLU, tied embeddings) with
random weights whose parameter count matches the t5-small-sized T5 (60.3M vs 60.5M):
12 layers (= T5's 6 + 6), d_model 512, 8 heads of 64, d_ff 1696 (a multiple of 32 so
int4 groups fit), vocab 32128. It is written with save_pretrained, read back, and split
into two programs built from toolchain/arch/layers.py's blocks (3D bmm attention, XNNPACK-form
RMSNorm, one-hot cache update, -1e9 masks):

  prefill(input_ids int64[1, S]) -> logits float[1, V] of the last position (the first
          generated token), and per layer the prompt's keys k_l [1, H, Dh, S] (RoPE applied,
          pre-transposed) and values v_l [1, H, S, Dh]
  decode(token int64[1, 1], position int64[1], k_0, v_0, ...) -> logits [1, V]; the
          generated tokens' keys/values live in mutable buffers cache_k_l [H, Dh, T] and
          cache_v_l [H, T, Dh] updated at `position` (absolute position S + position).

Attention of a decode step runs over the prompt's K/V (inputs, like T5's cross K/V) and the
generated-token cache: the two score rows are concatenated before one softmax, so this is
exactly one static KV cache of S + T slots, read once per step, with no per-step copy of
the prompt's part. Lowering is edgeseq's own: the executorch backend's lower (the
two programs appear there as methods `encode` = prefill and `decode`), quantized by
toolchain.backends.executorch.quantize with the same recipes.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import input_ids  # noqa: F401  (re-exported for the worker)
from torch import nn

LLAMA_60M = dict(vocab_size=32128, hidden_size=512, intermediate_size=1696, num_hidden_layers=12,
                 num_attention_heads=8, num_key_value_heads=8, head_dim=64, max_position_embeddings=4096,
                 rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1,
                 eos_token_id=2, pad_token_id=0)


def llama_random(path: Path) -> Path:
    """The matched-size Llama checkpoint, random weights, written once with save_pretrained."""
    if (path / "config.json").is_file():
        return path
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**LLAMA_60M)).eval().save_pretrained(path, safe_serialization=True)
    return path


def _rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [P, Dh] as transformers' Llama computes them (halves repeated)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    freqs = positions.to(torch.float64)[:, None] * inv[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().float(), emb.sin().float()


class _Layer(nn.Module):
    def __init__(self, block, heads: int, head_dim: int, eps: float):
        super().__init__()
        from toolchain.arch.layers import RMSNorm, frozen_linear

        a, m = block.self_attn, block.mlp
        self.heads, self.head_dim = heads, head_dim
        self.norm1 = RMSNorm(block.input_layernorm.weight, eps)
        self.q, self.k, self.v, self.o = (frozen_linear(a.q_proj), frozen_linear(a.k_proj),
                                          frozen_linear(a.v_proj), frozen_linear(a.o_proj))
        self.norm2 = RMSNorm(block.post_attention_layernorm.weight, eps)
        self.gate, self.up, self.down = frozen_linear(m.gate_proj), frozen_linear(m.up_proj), frozen_linear(m.down_proj)

    def mlp(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Prefill(nn.Module):
    """input_ids [1, S] -> (logits [1, V] of the last position, k_0 [1,H,Dh,S], v_0 [1,H,S,Dh], ...)."""

    def __init__(self, layers: nn.ModuleList, embed: nn.Embedding, norm: nn.Module, lm_head: nn.Linear,
                 seq: int, head_dim: int, theta: float):
        super().__init__()
        self.layers, self.embed, self.final_norm, self.lm_head = layers, embed, norm, lm_head
        cos, sin = _rope_tables(torch.arange(seq), head_dim, theta)
        self.register_buffer("cos", cos)  # [S, Dh], broadcast over heads
        self.register_buffer("sin", sin)
        from toolchain.arch.layers import NEG, rotate_half_matrix

        self.register_buffer("rot", rotate_half_matrix(head_dim))  # F.linear(x, rot) == rotate_half(x)
        self.register_buffer("causal", torch.triu(torch.full((seq, seq), NEG), diagonal=1).reshape(1, seq, seq))
        last = torch.zeros(1, 1, seq)
        last[0, 0, seq - 1] = 1.0
        self.register_buffer("last", last)  # picks the last position with a bmm, not a gather

    def forward(self, ids: torch.Tensor):
        from toolchain.arch.layers import attend, heads_first, heads_last

        x = self.embed(ids)  # [1, S, D]
        outs = []
        for layer in self.layers:
            h = layer.norm1(x)
            q, k, v = (heads_first(p(h), layer.heads) for p in (layer.q, layer.k, layer.v))  # [H, S, Dh]
            q = q * self.cos + F.linear(q, self.rot) * self.sin
            k = k * self.cos + F.linear(k, self.rot) * self.sin
            x = x + layer.o(heads_last(attend(q, k.transpose(1, 2), v, self.causal, 1.0 / math.sqrt(layer.head_dim))))
            x = x + layer.mlp(layer.norm2(x))
            hh, s, dh = k.shape
            outs += [k.transpose(1, 2).reshape(1, hh, dh, s).contiguous(), v.reshape(1, hh, s, dh).contiguous()]
        x = torch.bmm(self.last, self.final_norm(x)).reshape(1, -1)  # [1, D]
        return (self.lm_head(x), *outs)


class Decode(nn.Module):
    """token [1,1], position [1], prompt k_l/v_l -> logits [1, V]; generated K/V in buffers."""

    def __init__(self, layers: nn.ModuleList, embed: nn.Embedding, norm: nn.Module, lm_head: nn.Linear,
                 seq: int, out_len: int, heads: int, head_dim: int, theta: float):
        super().__init__()
        from toolchain.arch.cache import register_cache
        from toolchain.arch.layers import NEG, rotate_half_matrix

        self.layers, self.embed, self.final_norm, self.lm_head = layers, embed, norm, lm_head
        self.seq, self.T, self.cache_mode = seq, out_len, "slot"
        cos, sin = _rope_tables(torch.arange(seq, seq + out_len), head_dim, theta)  # absolute positions S..S+T-1
        self.register_buffer("cos_table", cos.t().contiguous())  # [Dh, T]: F.linear(onehot, table) -> [1, Dh]
        self.register_buffer("sin_table", sin.t().contiguous())
        self.register_buffer("rot", rotate_half_matrix(head_dim))
        self.register_buffer("mask_table", torch.triu(torch.full((out_len, out_len), NEG), diagonal=1).t().contiguous())
        register_cache(self, len(layers), heads, head_dim, out_len, "slot")

    def forward(self, token, position, *prompt_kv):
        from toolchain.arch.cache import position_onehot, slot_bias, write_slot

        t, s = self.T, self.seq
        onehot = position_onehot(position, t, self.positions)  # [1, T]
        cos, sin = F.linear(onehot, self.cos_table), F.linear(onehot, self.sin_table)  # [1, Dh]
        # As edgeseq's decode step does (cache mode "slot"): the generated slots after and at
        # `position` masked, then the step's own key; its k/v written into the caches at the end.
        bias = slot_bias(F.linear(onehot, self.mask_table).reshape(1, 1, t), onehot)  # [1, 1, T+1]
        new_kv = []
        x = self.embed(token)  # [1, 1, D]
        for i, layer in enumerate(self.layers):
            h, dh = layer.heads, layer.head_dim
            y = layer.norm1(x)
            q = layer.q(y).reshape(h, 1, dh)
            k = layer.k(y).reshape(h, 1, dh)
            v_new = layer.v(y).reshape(h, 1, dh)
            q = q * cos + F.linear(q, self.rot) * sin
            k = k * cos + F.linear(k, self.rot) * sin
            ck, cv = getattr(self, f"cache_k_{i}"), getattr(self, f"cache_v_{i}")  # [H, Dh, T], [H, T, Dh]
            k_new = k.reshape(h, dh, 1)
            pk, pv = prompt_kv[2 * i].reshape(h, dh, s), prompt_kv[2 * i + 1].reshape(h, s, dh)
            scale = 1.0 / math.sqrt(dh)
            scores = torch.cat([torch.bmm(q, pk) * scale,  # [H, 1, S + T + 1]: prompt, generated, this step
                                (torch.cat([torch.bmm(q, ck), torch.bmm(q, k_new)], dim=-1) * scale + bias)], dim=-1)
            p = torch.softmax(scores, dim=-1)
            att = torch.bmm(p[:, :, :s], pv) + torch.bmm(p[:, :, s:s + t], cv) + p[:, :, s + t:] * v_new  # [H, 1, Dh]
            x = x + layer.o(att.reshape(1, 1, h * dh))
            x = x + layer.mlp(layer.norm2(x))
            new_kv.append((ck, cv, k_new, v_new))
        logits = self.lm_head(self.final_norm(x).reshape(1, -1))
        for ck, cv, k_new, v_new in new_kv:
            write_slot(ck, cv, k_new, v_new, position)
        return logits


def build_parts(model, seq: int, out_len: int):
    """The two programs as a Seq2SeqParts, so edgeseq's quantizer and ExecuTorch lowering take them
    unchanged (prefill in the `encode` slot). The layers, embedding and lm_head are shared modules:
    one set of weights, quantized once."""
    from toolchain.arch.layers import RMSNorm, frozen_linear
    from toolchain.split import Seq2SeqParts

    cfg = model.config
    h, dh = cfg.num_attention_heads, cfg.head_dim
    embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
    embed.weight = nn.Parameter(model.model.embed_tokens.weight.detach().clone().float(), requires_grad=False)
    # An explicit head (same values as the tied embedding): quantize.py then treats it as `lm_head`
    # and both programs use the one module. fp32 exports store the equal tensors once (.ptd dedup).
    head = frozen_linear(model.lm_head)
    layers = nn.ModuleList(_Layer(b, h, dh, cfg.rms_norm_eps) for b in model.model.layers)
    norm = RMSNorm(model.model.norm.weight, cfg.rms_norm_eps)
    theta = getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 1e4)
    prefill = Prefill(layers, embed, norm, head, seq, dh, theta).eval()
    decode = Decode(layers, embed, norm, head, seq, out_len, h, dh, theta).eval()
    n = len(layers)

    class Parts(Seq2SeqParts):
        def encode_inputs(self):
            return (torch.zeros(1, seq, dtype=torch.long),)

        def encode_input_names(self):
            return ["input_ids"]

        def encode_output_names(self):
            return ["logits"] + [f"{kv}_{i}" for i in range(n) for kv in "kv"]

        def decode_inputs(self):
            kv = []
            for _ in range(n):
                kv += [torch.zeros(1, h, dh, seq), torch.zeros(1, h, seq, dh)]
            return (torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long), *kv)

        def decode_input_names(self):
            return ["token", "position"] + self.encode_output_names()[1:]

    return Parts(encode=prefill, decode=decode, num_layers=n, num_heads=h, head_dim=dh, vocab_size=cfg.vocab_size,
                 max_input_len=seq, max_output_len=out_len, decoder_start_token_id=cfg.bos_token_id,
                 eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id, cache_mode="slot")


def _check_parity(model, parts, seq: int) -> float:
    """Eager split vs transformers' Llama: logits of the prompt's last position and of two
    decode steps. Returns the max abs difference (raises if it is not small)."""
    ids = torch.tensor([input_ids(model.config.vocab_size, seq, model.config.eos_token_id)])
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits[0]  # [S, V]
        out = parts.encode(ids)
        diff = (out[0][0] - ref[-1]).abs().max().item()
        toks = [int(out[0][0].argmax())]
        for p in range(2):
            logits = parts.decode(torch.tensor([[toks[-1]]]), torch.tensor([p]), *out[1:])[0]
            full = model(torch.cat([ids, torch.tensor([toks])], dim=1), use_cache=False).logits[0, -1]
            diff = max(diff, (logits - full).abs().max().item())
            toks.append(int(logits.argmax()))
    parts.reset_cache()
    if diff > 1e-3:
        raise AssertionError(f"decoder-only split differs from transformers' Llama by {diff:.3g}")
    return diff


def export(ckpt: Path, recipe, out: Path) -> dict:
    """Prefill/decode at recipe.max_input_len/max_output_len through edgeseq's ExecuTorch lowering.
    Writes model.pte + weights.ptd + info.json into `out` (skipped if an info.json written by
    this toolchain source exists)."""
    from toolchain import source_digest

    if (out / "info.json").is_file():
        info = json.loads((out / "info.json").read_text())
        if info.get("edgeseq_source") == source_digest():
            return info
        shutil.rmtree(out)  # lowered by other toolchain code: export again
    from transformers import LlamaForCausalLM

    from toolchain import backends
    from toolchain.specs import load_target

    t0 = time.time()
    model = LlamaForCausalLM.from_pretrained(ckpt, local_files_only=True).eval()
    params = sum(p.numel() for p in model.parameters())
    parts = build_parts(model, recipe.max_input_len, recipe.max_output_len)
    diff = _check_parity(model, parts, recipe.max_input_len)
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    lowered = backends.get("executorch").lower(parts, recipe, load_target("executorch-xnnpack"), tmp)
    info = {"params": params, "recipe": recipe.name, "max_input_len": recipe.max_input_len,
            "max_output_len": recipe.max_output_len, "eager_parity_max_abs_diff": diff,
            "model_bytes": sum((tmp / f).stat().st_size for f in lowered.files),
            "delegation": lowered.report.get("delegation"), "export_seconds": round(time.time() - t0, 1),
            "vocab_size": model.config.vocab_size, "eos_token_id": model.config.eos_token_id,
            "edgeseq_source": source_digest()}
    (tmp / "info.json").write_text(json.dumps(info, indent=1))
    tmp.rename(out)
    return info


class DecoderOnlyRunner:
    """Greedy generation on the lowered prefill/decode programs: TTFT = prefill (it yields the
    first token), then one decode call per further token."""

    def __init__(self, path: Path, output_len: int, threads: int = 2):
        import executorch.kernels.quantized  # noqa: F401  (embedding_byte for int8 embeddings)
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        if portable_lib._threadpool_get_thread_count() != threads:
            portable_lib._unsafe_reset_threadpool(threads)
        self.info = json.loads((path / "info.json").read_text())
        program = Runtime.get().load_program(path / "model.pte", data_path=path / "weights.ptd")
        self.prefill, self.decode = program.load_method("encode"), program.load_method("decode")
        self.T = output_len
        self.ids = torch.tensor([input_ids(self.info["vocab_size"], self.info["max_input_len"],
                                           self.info["eos_token_id"])])
        self.mb = self.info["model_bytes"] / 1e6
        self.tok, self.pos = torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long)

    def once(self) -> tuple[float, list[float]]:
        eos = self.info["eos_token_id"]
        t0 = time.perf_counter()
        out = list(self.prefill.execute([self.ids]))
        logits = out[0].reshape(-1)
        logits[eos] = -float("inf")  # forced length, as everywhere else
        token = int(logits.argmax())
        ttft = time.perf_counter() - t0
        steps, kv = [], out[1:]
        for p in range(self.T - 1):
            t = time.perf_counter()
            self.tok[0, 0], self.pos[0] = token, p
            logits = self.decode.execute([self.tok, self.pos, *kv])[0].reshape(-1)
            logits[eos] = -float("inf")
            token = int(logits.argmax())
            steps.append(time.perf_counter() - t)
        return ttft, steps
