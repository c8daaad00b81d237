"""Quantization applied per component to the split programs, before lowering (torchao).

Components (the recipe's `quantization` keys) and what they select in the split:
  encoder     every nn.Linear of the encode program (encoder layers *and* the decoder
              layers' cross-attention K/V projections: they run once per input, in encode)
  decoder     every nn.Linear of the decode program except the lm head (runs per token)
  embeddings  the token embedding (`.embed` of both programs: one module, shared)
  lm_head     the output projection (`decode.lm_head`; a tied head is untied first)

Adapters follow the convention this relies on: both program modules expose the
embedding as `.embed`, and the decode module exposes `.lm_head` (None when tied, in
which case it computes `F.linear(x, embed.weight)`).

Schemes (names from specs.QUANT_SCHEMES) for the ExecuTorch/XNNPACK target:
  linears:    8da8w (int8 per-channel weights, int8 dynamic per-token activations),
              8da4w (int4 weights in groups of `group_size`, int8 dynamic activations).
              Both lower fully into XNNPACK. Weight-only linears are not offered:
              XNNPACK runs them on portable kernels, i.e. slower than fp32.
  embeddings: int8-weight (int8 rows, per-row scale), int4-weight (int4 in groups):
              ExecuTorch's quantized embedding kernels (embedding_byte / embedding_4bit).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import InputError

LINEAR_SCHEMES = {"8da8w": 8, "8da4w": 4}
EMBEDDING_SCHEMES = {"int8-weight": 8, "int4-weight": 4}


def _config(scheme: str, group_size: int):
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == "8da8w":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    if scheme == "8da4w":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size))
    if scheme == "int8-weight":
        return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    if scheme == "int4-weight":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    raise AssertionError(scheme)


def _linears(module: nn.Module, exclude: set[int]) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear) and id(m) not in exclude]


def _untie_head(parts) -> None:
    """Give decode its own lm_head Linear (a copy of the embedding), so the two can be
    quantized differently and torchao never sees one module under two names."""
    dec = parts.decode
    if dec.lm_head is None:
        emb = dec.embed
        head = nn.Linear(emb.embedding_dim, emb.num_embeddings, bias=False)
        head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
        dec.lm_head = head


def components(parts, buckets: bool = False) -> dict[str, list[tuple[str, nn.Module]]]:
    """Each component's modules; `buckets`: the shorter encode programs' linears count as
    encoder too (quantized alike, so the weights file stores each tensor once)."""
    head = parts.decode.lm_head
    skip = {id(head)} if head is not None else set()
    extra = [(f"encode_{n}.{k}", m) for n, b in parts.encode_buckets.items()
             for k, m in _linears(b, skip)] if buckets else []
    return {
        "encoder": [(f"encode.{n}", m) for n, m in _linears(parts.encode, skip)] + extra,
        "decoder": [(f"decode.{n}", m) for n, m in _linears(parts.decode, skip)],
        "embeddings": [("embed", parts.decode.embed)],
        "lm_head": [("decode.lm_head", head)] if head is not None else [],
    }


def _check_groups(name: str, module: nn.Module, scheme: str, group_size: int) -> None:
    if scheme in ("8da4w", "int4-weight"):
        dim = module.weight.shape[1]
        if dim % group_size:
            raise InputError(f"group_size {group_size} does not divide the input dim {dim} of {name} "
                             f"({scheme}); choose a group_size that divides it")


def _weight_bytes(module: nn.Module, scheme: str, group_size: int) -> int:
    """Stored bytes of one weight under a scheme: values plus fp32 scales (estimate of the layout
    XNNPACK / the quantized kernels serialize; the artifact's files give the exact total)."""
    rows, cols = module.weight.shape
    n = rows * cols
    if scheme in ("none", ""):
        return n * 4
    bits = LINEAR_SCHEMES.get(scheme) or EMBEDDING_SCHEMES[scheme]
    groups = rows * (cols // group_size) if bits == 4 else rows
    return n * bits // 8 + groups * 4


def apply(parts, recipe) -> dict[str, Any]:
    """Quantize `parts` in place as the recipe says. Returns the per-component report for
    the manifest: scheme, number of tensors, fp32 bytes and estimated stored bytes."""
    q = {c: s for c, s in recipe.quantization.items() if s != "none"}
    if "lm_head" in q or "embeddings" in q:
        _untie_head(parts)
    comps = components(parts, buckets=True)
    plan: list[tuple[str, str, nn.Module]] = []
    for comp, scheme in q.items():
        allowed = EMBEDDING_SCHEMES if comp == "embeddings" else LINEAR_SCHEMES
        if scheme not in allowed:
            raise InputError(f"recipe {recipe.name}: {comp}={scheme} is not supported by executorch-xnnpack; "
                             f"{comp} supports: {', '.join(allowed)}")
        for name, module in comps[comp]:
            _check_groups(name, module, scheme, recipe.group_size)
            plan.append((comp, scheme, module))
    report = {}
    for comp, mods in components(parts).items():  # the report counts each weight once
        scheme = q.get(comp, "none")
        report[comp] = {"scheme": scheme, "tensors": len(mods),
                        "fp32_bytes": sum(m.weight.numel() * 4 for _, m in mods),
                        "estimated_bytes": sum(_weight_bytes(m, scheme, recipe.group_size) for _, m in mods)}
    if not plan:
        return report
    from torchao.quantization import quantize_

    done: set[int] = set()
    for comp, scheme, module in plan:
        if id(module) in done:
            continue
        done.add(id(module))
        # quantize_ on the leaf module itself: its weight becomes a torchao tensor subclass.
        quantize_(module, _config(scheme, recipe.group_size), filter_fn=lambda m, fqn, mod=module: m is mod)
    return report


def program_schemes(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Which scheme each program's weights use, for the manifest's `programs` entries."""
    return {
        "encode": {"linears": report["encoder"]["scheme"], "embeddings": report["embeddings"]["scheme"]},
        "decode": {"linears": report["decoder"]["scheme"], "embeddings": report["embeddings"]["scheme"],
                   "lm_head": report["lm_head"]["scheme"] if report["lm_head"]["tensors"]
                   else f"tied to embeddings ({report['embeddings']['scheme']})"},
    }
